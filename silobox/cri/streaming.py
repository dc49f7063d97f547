"""The streaming server the CRI's Exec, Attach and PortForward URLs point at.

``Exec``/``Attach``/``PortForward`` answer with a one-time URL (``/exec/<token>``,
``/attach/<token>``, ``/portforward/<token>``) on this HTTP server; the request behind a token
is kept for a minute and used once. The client upgrades to a WebSocket and speaks Kubernetes'
channel protocol (subprotocols ``v4.channel.k8s.io`` … ``channel.k8s.io``; port forwarding also
``portforward.k8s.io``): every binary message starts with a channel byte (0 stdin, 1 stdout,
2 stderr, 3 error, 4 resize; v5 adds 255, "close this channel"). The error channel carries the
final status as JSON, with the exit code of a failed command as its cause, as the kubelet's
clients read it. For port forwarding, port *i* of the request has data channel 2i and error
channel 2i+1, and the first message on each names the port (2 bytes, little-endian); the
connection is made to localhost inside the pod's network namespace.

SPDY, the other upgrade the kubelet's clients know, is not served: a client must use WebSocket.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import secrets
import socket
import struct
import time
from typing import Any

from aiohttp import WSMsgType, web

from silobox.errors import InvalidArgument, SiloboxError

log = logging.getLogger("silod.cri")

TOKEN_TTL = 60.0
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io",
             "v2.channel.k8s.io", "channel.k8s.io")
PF_PROTOCOLS = ("v4.channel.k8s.io", "portforward.k8s.io", "channel.k8s.io")


def _status(exit_code: int | None, message: str = "") -> bytes:
    """The final status of a stream, as Kubernetes' metav1.Status."""
    if exit_code == 0 and not message:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    if exit_code is None:
        return json.dumps({"metadata": {}, "status": "Failure", "message": message,
                           "reason": "InternalError"}).encode()
    return json.dumps({
        "metadata": {}, "status": "Failure",
        "message": message or f"command terminated with non-zero exit code: {exit_code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]}}).encode()


class StreamingServer:
    def __init__(self, backend: Any, runtime: Any, address: str) -> None:
        self.backend = backend
        self.runtime = runtime
        host, _, port = address.rpartition(":")
        self.host = host or "127.0.0.1"
        self.port = int(port or 0)
        self.pending: dict[str, tuple[str, float, dict[str, Any]]] = {}
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/exec/{token}", self._exec)
        app.router.add_get("/attach/{token}", self._attach)
        app.router.add_get("/portforward/{token}", self._port_forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.port = sock.getsockname()[1]
        self.base_url = f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # ----- tokens -----------------------------------------------------------------------------
    def _issue(self, kind: str, request: dict[str, Any]) -> str:
        now = time.monotonic()
        for tok, (_, born, _) in list(self.pending.items()):
            if now - born > TOKEN_TTL:
                del self.pending[tok]
        token = secrets.token_urlsafe(24)
        self.pending[token] = (kind, now, request)
        return f"{self.base_url}/{kind}/{token}"

    def _take(self, kind: str, token: str) -> dict[str, Any]:
        entry = self.pending.pop(token, None)
        if entry is None or entry[0] != kind or time.monotonic() - entry[1] > TOKEN_TTL:
            raise web.HTTPNotFound(text="unknown or expired streaming token")
        return entry[2]

    async def exec_url(self, req: Any) -> str:
        doc = await self.runtime._resolve(req.container_id, "container")
        if not doc["State"].get("Running"):
            raise InvalidArgument(f"container {doc['Id']} is not running")
        if not req.cmd:
            raise InvalidArgument("exec needs a command")
        if not (req.stdin or req.stdout or req.stderr):
            raise InvalidArgument("one of stdin, stdout or stderr must be set")
        if req.tty and req.stderr:
            raise InvalidArgument("tty and stderr cannot both be set")
        return self._issue("exec", {"id": doc["Id"], "cmd": list(req.cmd), "tty": req.tty,
                                    "stdin": req.stdin, "stdout": req.stdout,
                                    "stderr": req.stderr})

    async def attach_url(self, req: Any) -> str:
        doc = await self.runtime._resolve(req.container_id, "container")
        if not doc["State"].get("Running"):
            raise InvalidArgument(f"container {doc['Id']} is not running")
        if not (req.stdin or req.stdout or req.stderr):
            raise InvalidArgument("one of stdin, stdout or stderr must be set")
        return self._issue("attach", {"id": doc["Id"], "tty": req.tty, "stdin": req.stdin,
                                      "stdout": req.stdout, "stderr": req.stderr})

    async def port_forward_url(self, req: Any) -> str:
        doc = await self.runtime._resolve(req.pod_sandbox_id, "sandbox")
        if not doc["State"].get("Running"):
            raise InvalidArgument(f"pod sandbox {doc['Id']} is not ready")
        return self._issue("portforward", {"id": doc["Id"], "ports": list(req.port)})

    # ----- exec and attach --------------------------------------------------------------------
    async def _open_ws(self, request: web.Request, protocols: tuple[str, ...]
                       ) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=protocols, max_msg_size=1 << 20)
        await ws.prepare(request)
        return ws

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        r = self._take("exec", request.match_info["token"])
        ex = await self.backend.exec_create(r["id"], {
            "Cmd": r["cmd"], "Tty": r["tty"], "AttachStdin": r["stdin"],
            "AttachStdout": r["stdout"], "AttachStderr": r["stderr"]})
        ws = await self._open_ws(request, PROTOCOLS)
        try:
            sess = await self.backend.exec_start(ex["Id"])
        except SiloboxError as e:
            await ws.send_bytes(bytes([ERROR]) + _status(None, str(e)))
            await ws.close()
            return ws

        async def resize(h: int, w: int) -> None:
            await self.backend.exec_resize(ex["Id"], h, w)

        await self._pump(ws, sess, r, resize)
        code = (await self.backend.exec_inspect(ex["Id"])).get("ExitCode")
        await ws.send_bytes(bytes([ERROR]) + _status(int(code if code is not None else 126)))
        await ws.close()
        return ws

    async def _attach(self, request: web.Request) -> web.StreamResponse:
        r = self._take("attach", request.match_info["token"])
        ws = await self._open_ws(request, PROTOCOLS)
        sess = await self.backend.container_attach(r["id"], stdin=r["stdin"], stdout=r["stdout"],
                                                   stderr=r["stderr"], logs=False, stream=True)

        async def resize(h: int, w: int) -> None:
            await self.backend.container_resize(r["id"], h, w)

        ended = await self._pump(ws, sess, r, resize)
        if ended:
            doc = await self.backend.container_inspect(r["id"])
            await ws.send_bytes(bytes([ERROR]) + _status(int(doc["State"].get("ExitCode") or 0)))
        await ws.close()
        return ws

    async def _pump(self, ws: web.WebSocketResponse, sess: Any, r: dict[str, Any],
                    resize: Any) -> bool:
        """Copy between the socket and the session; True when the process's output ended,
        False when the client went away first."""
        for ch in (STDIN, STDOUT, STDERR, ERROR) if r["stdin"] else (STDOUT, STDERR, ERROR):
            await ws.send_bytes(bytes([ch]))   # each channel announced by an empty frame

        async def output() -> None:
            while True:
                item = await sess.read()
                if item is None:
                    return
                stream, data = item
                ch = STDERR if stream == 2 and not r["tty"] else STDOUT
                await ws.send_bytes(bytes([ch]) + data)

        async def inbound() -> None:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    data = msg.data
                elif msg.type == WSMsgType.TEXT:
                    data = msg.data.encode()
                else:
                    break
                if not data:
                    continue
                ch, payload = data[0], data[1:]
                if ch == STDIN and payload:
                    await sess.write(payload)
                elif ch == RESIZE:
                    try:
                        size = json.loads(payload)
                        await resize(int(size.get("Height") or 0), int(size.get("Width") or 0))
                    except (ValueError, AttributeError, SiloboxError):
                        pass
                elif ch == CLOSE and payload[:1] == bytes([STDIN]):
                    await sess.close_stdin()

        out = asyncio.ensure_future(output())
        inn = asyncio.ensure_future(inbound())
        try:
            done, _ = await asyncio.wait({out, inn}, return_when=asyncio.FIRST_COMPLETED)
            if out in done:
                out.result()
                return True
            return False
        finally:
            for t in (out, inn):
                t.cancel()
            if not out.done() or inn.done():
                await sess.close()

    # ----- port forwarding --------------------------------------------------------------------
    async def _port_forward(self, request: web.Request) -> web.StreamResponse:
        r = self._take("portforward", request.match_info["token"])
        ports = [int(p) for p in request.query.getall("port", [])] or r["ports"]
        if not ports or any(not 0 < p < 65536 for p in ports):
            raise web.HTTPBadRequest(text="port forwarding needs ports 1-65535")
        doc = await self.backend.container_inspect(r["id"])
        pid = int(doc["State"].get("Pid") or 0)
        if not pid:
            raise web.HTTPBadRequest(text="pod sandbox is not running")
        ws = await self._open_ws(request, PF_PROTOCOLS)
        loop = asyncio.get_running_loop()
        conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        tasks = []
        for i, port in enumerate(ports):
            data_ch, err_ch = 2 * i, 2 * i + 1
            await ws.send_bytes(bytes([data_ch]) + struct.pack("<H", port))
            await ws.send_bytes(bytes([err_ch]) + struct.pack("<H", port))
            try:
                sock = await loop.run_in_executor(None, _socket_in_netns, pid)
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", port))
                reader, writer = await asyncio.open_connection(sock=sock)
            except OSError as e:
                await ws.send_bytes(bytes([err_ch]) + f"failed to connect to localhost:{port} "
                                    f"in pod {r['id'][:12]}: {e.strerror}".encode())
                continue
            conns[data_ch] = (reader, writer)

            async def copy_out(ch: int = data_ch, rd: asyncio.StreamReader = reader) -> None:
                while chunk := await rd.read(65536):
                    await ws.send_bytes(bytes([ch]) + chunk)

            tasks.append(asyncio.ensure_future(copy_out()))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY or not msg.data:
                    continue
                ch, payload = msg.data[0], msg.data[1:]
                if ch in conns and payload:
                    w = conns[ch][1]
                    w.write(payload)
                    await w.drain()
        finally:
            for t in tasks:
                t.cancel()
            for _, w in conns.values():
                w.close()
            await ws.close()
        return ws


def _socket_in_netns(pid: int) -> socket.socket:
    """A TCP socket created in the network namespace of ``pid``: this executor thread enters
    it for the ``socket()`` call only (a socket keeps the namespace it was made in)."""
    from silobox.kernel import libc
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        os.close(own)
        raise OSError(errno.ESRCH, "the pod's process is gone") from None
    try:
        libc.setns(target, libc.CLONE_NEWNET)
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            libc.setns(own, libc.CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)
