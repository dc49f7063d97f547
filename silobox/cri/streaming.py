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

The same URLs also take the SPDY/3.1 upgrade (``spdy.py``), which crictl and the kubelet's
clients of v1.28 use: the client opens one SPDY stream per channel (``streamType`` error, stdin,
stdout, stderr, resize; for port forwarding a data and an error stream per ``requestID`` and
``port``) and the status goes on the error stream as above (``v4.channel.k8s.io``) or as a bare
message when the command failed (older versions).
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

from silobox.cri import spdy
from silobox.cri.runtime import _kill_exec
from silobox.errors import InvalidArgument, SiloboxError

log = logging.getLogger("silod.cri")

TOKEN_TTL = 60.0
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io",
             "v2.channel.k8s.io", "channel.k8s.io")
PF_PROTOCOLS = ("v4.channel.k8s.io", "portforward.k8s.io", "channel.k8s.io")
SPDY_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io",
                  "channel.k8s.io")


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
        for path, handler in (("/exec/{token}", self._exec), ("/attach/{token}", self._attach),
                              ("/portforward/{token}", self._port_forward)):
            app.router.add_get(path, handler)     # WebSocket upgrades
            app.router.add_post(path, handler)    # SPDY upgrades
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
        if _wants_spdy(request):
            return await self._spdy_exec(request, r, "exec")
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

        if not await self._pump(ws, sess, r, resize):
            # the client went away: nobody can read the command's output or give it input
            # any more, so it does not outlive the session (as the kubelet's runtimes do)
            await _kill_exec(sess)
            return ws
        code = (await self.backend.exec_inspect(ex["Id"])).get("ExitCode")
        await ws.send_bytes(bytes([ERROR]) + _status(int(code if code is not None else 126)))
        await ws.close()
        return ws

    async def _attach(self, request: web.Request) -> web.StreamResponse:
        r = self._take("attach", request.match_info["token"])
        if _wants_spdy(request):
            return await self._spdy_exec(request, r, "attach")
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
        doc = await self.backend.container_inspect(r["id"])
        pid = int(doc["State"].get("Pid") or 0)
        if not pid:
            raise web.HTTPBadRequest(text="pod sandbox is not running")
        if _wants_spdy(request):   # each stream names its port
            return await self._spdy_port_forward(request, r, pid)
        try:
            ports = [int(p) for p in request.query.getall("port", [])] or r["ports"]
        except ValueError:
            raise web.HTTPBadRequest(text="invalid port") from None
        if not ports or any(not 0 < p < 65536 for p in ports):
            raise web.HTTPBadRequest(text="port forwarding needs ports 1-65535")
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


    # ----- SPDY -------------------------------------------------------------------------------
    async def _spdy_upgrade(self, request: web.Request, supported: tuple[str, ...]
                            ) -> tuple[spdy.Session, str, web.StreamResponse]:
        offered = [p.strip() for h in request.headers.getall("X-Stream-Protocol-Version", [])
                   for p in h.split(",")]
        proto = next((p for p in supported if p in offered), "")
        if offered and not proto:
            raise web.HTTPForbidden(text=f"none of the stream protocols {offered} is supported; "
                                         f"use one of {list(supported)}")
        resp = web.StreamResponse(status=101, headers={
            "Connection": "Upgrade", "Upgrade": "SPDY/3.1",
            **({"X-Stream-Protocol-Version": proto} if proto else {})})
        await resp.prepare(request)
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("the client went away")
        session = spdy.Session(transport)
        request.protocol.set_parser(session)  # type: ignore[arg-type]
        return session, proto, resp

    async def _spdy_exec(self, request: web.Request, r: dict[str, Any],
                         kind: str) -> web.StreamResponse:
        session, proto, resp = await self._spdy_upgrade(request, SPDY_PROTOCOLS)
        want = {"error"} | {n for n in ("stdin", "stdout") if r[n]}
        if r["stderr"] and not r["tty"]:
            want.add("stderr")
        if r["tty"] and proto in ("v4.channel.k8s.io", "v3.channel.k8s.io"):
            want.add("resize")
        streams: dict[str, spdy.Stream] = {}
        deadline = time.monotonic() + 30
        while not want <= set(streams) and time.monotonic() < deadline:
            st = await session.accept(deadline - time.monotonic())
            if st is None:
                break
            streams[st.headers.get("streamtype", "")] = st
        try:
            if not want <= set(streams):
                return resp
            code, message = await self._spdy_run(r, kind, streams)
            for name in ("stdout", "stderr"):
                if name in streams:
                    streams[name].close()
            err = streams["error"]
            if proto == "v4.channel.k8s.io":
                err.write(_status(code, message))
            elif code != 0 or message:
                err.write((message or f"command terminated with non-zero exit code: "
                           f"{code}").encode())
            err.close()
            await asyncio.sleep(0)
            return resp
        finally:
            session.end()

    async def _spdy_run(self, r: dict[str, Any], kind: str, streams: dict[str, spdy.Stream]
                        ) -> tuple[int | None, str]:
        """Run the exec (or attach) with its stdio on SPDY streams → (exit code, error)."""
        if kind == "exec":
            ex = await self.backend.exec_create(r["id"], {
                "Cmd": r["cmd"], "Tty": r["tty"], "AttachStdin": r["stdin"],
                "AttachStdout": r["stdout"], "AttachStderr": r["stderr"]})
            try:
                sess = await self.backend.exec_start(ex["Id"])
            except SiloboxError as e:
                return None, str(e)

            async def resize(h: int, w: int) -> None:
                await self.backend.exec_resize(ex["Id"], h, w)
        else:
            sess = await self.backend.container_attach(
                r["id"], stdin=r["stdin"], stdout=r["stdout"], stderr=r["stderr"],
                logs=False, stream=True)

            async def resize(h: int, w: int) -> None:
                await self.backend.container_resize(r["id"], h, w)

        async def output() -> None:
            while True:
                item = await sess.read()
                if item is None:
                    return
                stream, data = item
                name = "stderr" if stream == 2 and "stderr" in streams else "stdout"
                if name in streams:
                    streams[name].write(data)

        async def stdin() -> None:
            src = streams["stdin"]
            while data := await src.read():
                await sess.write(data)
            await sess.close_stdin()

        async def resizes() -> None:
            buf, dec = "", json.JSONDecoder()
            src = streams["resize"]
            while data := await src.read():
                buf += data.decode(errors="replace")
                while buf.strip():
                    try:
                        size, end = dec.raw_decode(buf.lstrip())
                    except ValueError:
                        break
                    buf = buf.lstrip()[end:]
                    try:
                        await resize(int(size.get("Height") or 0), int(size.get("Width") or 0))
                    except (AttributeError, ValueError, SiloboxError):
                        pass

        helpers = [asyncio.ensure_future(stdin())] if "stdin" in streams else []
        if "resize" in streams:
            helpers.append(asyncio.ensure_future(resizes()))
        out = asyncio.ensure_future(output())
        lost = asyncio.ensure_future(_session_lost(streams["error"]))
        try:
            done, _ = await asyncio.wait({out, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (*helpers, lost):
                t.cancel()
        if out not in done:
            out.cancel()
            if kind == "exec":   # its output has no reader any more: end it
                await _kill_exec(sess)
            await sess.close()
            return None, "the client went away"
        if kind == "exec":
            code = (await self.backend.exec_inspect(ex["Id"])).get("ExitCode")
            return int(code if code is not None else 126), ""
        doc = await self.backend.container_inspect(r["id"])
        return int(doc["State"].get("ExitCode") or 0), ""

    async def _spdy_port_forward(self, request: web.Request, r: dict[str, Any],
                                 pid: int) -> web.StreamResponse:
        session, _, resp = await self._spdy_upgrade(request, ("portforward.k8s.io",))
        loop = asyncio.get_running_loop()
        pairs: dict[str, dict[str, spdy.Stream]] = {}
        tasks: list[asyncio.Future[Any]] = []

        async def forward(data: spdy.Stream, err: spdy.Stream | None, port: int) -> None:
            try:
                sock = await loop.run_in_executor(None, _socket_in_netns, pid)
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", port))
                reader, writer = await asyncio.open_connection(sock=sock)
            except OSError as e:
                if err is not None:
                    err.write(f"failed to connect to localhost:{port} in pod "
                              f"{r['id'][:12]}: {e.strerror}".encode())
                    err.close()
                data.close()
                return

            async def inbound() -> None:
                while chunk := await data.read():
                    writer.write(chunk)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()

            t = asyncio.ensure_future(inbound())
            try:
                while chunk := await reader.read(65536):
                    data.write(chunk)
            finally:
                t.cancel()
                writer.close()
                data.close()
                if err is not None:
                    err.close()

        try:
            while True:
                st = await session.accept(3600)
                if st is None:
                    break
                rid = st.headers.get("requestid", "")
                kind = st.headers.get("streamtype", "")
                pair = pairs.setdefault(rid, {})
                pair[kind] = st
                if kind == "data":
                    try:
                        port = int(st.headers.get("port", ""))
                    except ValueError:
                        port = 0
                    if not 0 < port < 65536:
                        st.close()
                        continue
                    tasks.append(asyncio.ensure_future(forward(st, pair.get("error"), port)))
        finally:
            for t in tasks:
                t.cancel()
            session.end()
        return resp


async def _session_lost(stream: spdy.Stream) -> None:
    """Returns when the SPDY session behind ``stream`` has ended."""
    while not stream.session.closed:
        await asyncio.sleep(0.2)


def _wants_spdy(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower().startswith("spdy/")


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
