"""The guest agent: PID 1 of the utility VM, serving the host over the virtio-serial port.

The protocol is one JSON object per line in each direction (see :mod:`.channel`). The host asks
the agent to ``spawn`` processes (argv, env, cwd), feeds their ``stdin``, sends them ``signal``s
and finally ``shutdown``s the VM; the agent streams ``out`` (fd 1/2, base64) and ``exit`` events
back. An ``exit`` follows the last output of its process. As PID 1 it also reaps every orphan.

The host end of the port is a socket QEMU listens on, so the host may go away and come back (a
silod restart): reading the port then returns end-of-file. The agent closes the streams the
host had open, drops what it would send, and looks for the host again every tenth of a second;
each time the host (re)connects it says ``ready`` first.

Only the standard library is used here: this runs on the host's Python, shared into the guest.
"""

from __future__ import annotations

import base64
import fcntl
import glob
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

PORT_NAME = "silobox.ctl"


def find_port() -> str:
    for name_file in glob.glob("/sys/class/virtio-ports/*/name"):
        with open(name_file) as f:
            if f.read().strip() == PORT_NAME:
                return "/dev/" + os.path.basename(os.path.dirname(name_file))
    raise SystemExit(f"no virtio-serial port named {PORT_NAME}")


class Child:
    def __init__(self, ident: int, proc: subprocess.Popen) -> None:
        self.ident = ident
        self.proc = proc
        self.open_streams = 2
        self.status: int | None = None


class Agent:
    def __init__(self, port_fd: int) -> None:
        self.port = port_fd
        self.sel = selectors.DefaultSelector()
        self.children: dict[int, Child] = {}  # by pid
        self.by_id: dict[int, Child] = {}
        self.conns: dict[int, socket.socket] = {}   # streams to guest unix sockets, by id
        self.relays: dict[tuple[str, int], socket.socket] = {}   # UDP relays by address
        self.relay_ids: dict[tuple[str, int], int] = {}
        self.inbuf = b""
        self.connected = False
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wakeup = r
        signal.set_wakeup_fd(w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self.wakeup, selectors.EVENT_READ, "signal")

    def send(self, message: dict) -> None:
        if not self.connected:
            return
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        while data:
            try:
                n = os.write(self.port, data)
            except InterruptedError:
                continue
            except BlockingIOError:
                # Full, or the host is gone (the port takes no writes then): a read tells.
                if not self._poll_port():
                    return
                selectors.DefaultSelector().select(0.01)
                continue
            data = data[n:]

    def _poll_port(self) -> bool:
        """Read what the host sent (kept for the main loop); False once the host is gone."""
        try:
            data = os.read(self.port, 65536)
        except (BlockingIOError, InterruptedError):
            return True
        if not data:
            self._host_gone()
            return False
        self.inbuf += data
        return True

    def _host_gone(self) -> None:
        if not self.connected:
            return
        self.connected = False
        self.sel.unregister(self.port)
        self.inbuf = b""
        for ident in list(self.conns):
            conn = self.conns.pop(ident)
            self.sel.unregister(conn.fileno())
            conn.close()

    def _look_for_host(self) -> None:
        """While disconnected: a read that would block means the host is back."""
        try:
            data = os.read(self.port, 65536)
        except (BlockingIOError, InterruptedError):
            data = None
        if data == b"":
            return
        self.connected = True
        self.sel.register(self.port, selectors.EVENT_READ, "port")
        self.inbuf = data or b""
        self.send({"ev": "ready", "kernel": os.uname().release})

    # -- requests ---------------------------------------------------------------------------------

    def spawn(self, req: dict) -> None:
        ident = req["id"]
        try:
            proc = subprocess.Popen(
                req["argv"], env=req.get("env") or dict(os.environ), cwd=req.get("cwd") or "/",
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, close_fds=True)
        except OSError as e:
            self.send({"ev": "error", "id": ident, "errno": e.errno,
                       "message": f"{req['argv'][0]}: {e.strerror}"})
            return
        child = Child(ident, proc)
        self.children[proc.pid] = child
        self.by_id[ident] = child
        for fd, stream in ((1, proc.stdout), (2, proc.stderr)):
            os.set_blocking(stream.fileno(), False)
            self.sel.register(stream.fileno(), selectors.EVENT_READ, (child, fd, stream))
        self.send({"ev": "spawned", "id": ident, "pid": proc.pid})
        self._reap()  # a child that died at once may have raised SIGCHLD before it was known

    def stdin(self, req: dict) -> None:
        child = self.by_id.get(req["id"])
        if child is None or child.proc.stdin is None:
            return
        try:
            if req.get("data"):
                child.proc.stdin.write(base64.b64decode(req["data"]))
                child.proc.stdin.flush()
            if req.get("eof"):
                child.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    def kill(self, req: dict) -> None:
        child = self.by_id.get(req["id"])
        if child is not None and child.status is None:
            try:
                os.killpg(child.proc.pid, req.get("sig", signal.SIGKILL))
            except ProcessLookupError:
                pass

    def connect(self, req: dict) -> None:
        """A byte stream to a unix socket in the guest (the host forwards one of its own)."""
        ident = req["id"]
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            conn.connect(req["path"])
        except OSError as e:
            conn.close()
            self.send({"ev": "error", "id": ident, "errno": e.errno,
                       "message": f"{req['path']}: {e.strerror}"})
            return
        self.conns[ident] = conn
        self.sel.register(conn.fileno(), selectors.EVENT_READ, ("conn", ident))
        self.send({"ev": "connected", "id": ident})

    def udp_listen(self, req: dict) -> None:
        """A UDP port in the guest whose datagrams go to the host as ``dgram`` events (the
        embedded DNS at 127.0.0.11:53); it stays bound across host reconnections."""
        key = (req["address"], int(req["port"]))
        if key not in self.relays:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.bind(key)
            except OSError as e:
                sock.close()
                self.send({"ev": "error", "id": req["id"], "errno": e.errno,
                           "message": f"{key[0]}:{key[1]}: {e.strerror}"})
                return
            sock.setblocking(False)
            self.relays[key] = sock
            self.sel.register(sock.fileno(), selectors.EVENT_READ, ("udp", key))
        self.relay_ids[key] = req["id"]
        self.send({"ev": "connected", "id": req["id"]})

    def _read_udp(self, key: tuple[str, int]) -> None:
        try:
            data, peer = self.relays[key].recvfrom(65536)
        except OSError:
            return
        self.send({"ev": "dgram", "id": self.relay_ids[key], "peer": list(peer),
                   "data": base64.b64encode(data).decode()})

    def dgram(self, req: dict) -> None:
        for key, ident in self.relay_ids.items():
            if ident == req["id"]:
                try:
                    self.relays[key].sendto(base64.b64decode(req["data"]), tuple(req["peer"]))
                except OSError:
                    pass

    def conn_data(self, req: dict) -> None:
        conn = self.conns.get(req["id"])
        if conn is None:
            return
        try:
            if req.get("data"):
                conn.sendall(base64.b64decode(req["data"]))
            if req.get("eof"):
                conn.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop_conn(req["id"])

    def _drop_conn(self, ident: int) -> None:
        conn = self.conns.pop(ident, None)
        if conn is not None:
            self.sel.unregister(conn.fileno())
            conn.close()
            self.send({"ev": "closed", "id": ident})

    def _read_conn(self, ident: int) -> None:
        conn = self.conns.get(ident)
        if conn is None:
            return
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if data:
            self.send({"ev": "data", "id": ident, "data": base64.b64encode(data).decode()})
        else:
            self._drop_conn(ident)

    def handle(self, req: dict) -> None:
        op = req.get("op")
        if op == "spawn":
            self.spawn(req)
        elif op == "stdin":
            self.stdin(req)
        elif op == "signal":
            self.kill(req)
        elif op == "connect":
            self.connect(req)
        elif op == "data":
            self.conn_data(req)
        elif op == "close":
            self._drop_conn(req["id"])
        elif op == "udp_listen":
            self.udp_listen(req)
        elif op == "dgram":
            self.dgram(req)
        elif op == "ping":
            self.send({"ev": "pong", "id": req.get("id")})
        elif op == "shutdown":
            self.shutdown()

    # -- events -----------------------------------------------------------------------------------

    def _finish(self, child: Child) -> None:
        if child.open_streams == 0 and child.status is not None:
            self.send({"ev": "exit", "id": child.ident, "status": child.status})
            self.children.pop(child.proc.pid, None)
            self.by_id.pop(child.ident, None)
            if child.proc.stdin is not None:
                try:
                    child.proc.stdin.close()
                except OSError:
                    pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.get(pid)
            if child is None:
                continue  # an orphan re-parented to us
            child.proc.returncode = os.waitstatus_to_exitcode(status)
            code = child.proc.returncode
            child.status = code if code >= 0 else 128 - code
            self._finish(child)

    def _read_stream(self, child: Child, fd: int, stream) -> None:
        try:
            data = os.read(stream.fileno(), 65536)
        except BlockingIOError:
            return
        if data:
            self.send({"ev": "out", "id": child.ident, "fd": fd,
                       "data": base64.b64encode(data).decode()})
            return
        self.sel.unregister(stream.fileno())
        stream.close()
        child.open_streams -= 1
        self._finish(child)

    def _read_port(self) -> None:
        if not self._poll_port():
            return
        self._handle_input()

    def _handle_input(self) -> None:
        while self.connected and b"\n" in self.inbuf:
            line, _, self.inbuf = self.inbuf.partition(b"\n")
            if line.strip():
                self.handle(json.loads(line))

    def shutdown(self) -> None:
        """Power off with the disk clean: every other process ends (the container's mount
        namespaces, whose overlays hold the disk, go with their last process), then the disk
        is synced and unmounted (read-only if something still holds it). A hyperv container's
        disk outlives the VM and is used again at its next start."""
        try:
            os.kill(-1, signal.SIGKILL)   # from PID 1: all processes but this one
        except OSError:
            pass
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    time.sleep(0.02)
            except ChildProcessError:
                break   # no process left
        os.sync()
        if os.path.ismount("/scratch"):
            # read-only rather than unmounted: the shares are mounted below its /var
            done = subprocess.run(["/.sbx/busybox", "mount", "-o", "remount,ro", "/scratch"],
                                  capture_output=True)
            if done.returncode != 0:
                print("silobox-uvm agent: the disk stays writable: "
                      f"{done.stderr.decode(errors='replace').strip()}", file=sys.stderr,
                      flush=True)
        os.sync()
        os.execv("/.sbx/busybox", ["reboot", "-f"])

    def serve(self) -> None:
        while True:
            if not self.connected:
                self._look_for_host()
            elif self.inbuf:
                self._handle_input()   # read while a send waited
            for key, _ in self.sel.select(None if self.connected else 0.1):
                if key.data == "port":
                    self._read_port()
                elif key.data == "signal":
                    try:
                        os.read(self.wakeup, 512)
                    except BlockingIOError:
                        pass
                    self._reap()
                elif key.data[0] == "conn":
                    self._read_conn(key.data[1])
                elif key.data[0] == "udp":
                    self._read_udp(key.data[1])
                else:
                    self._read_stream(*key.data)


def main() -> None:
    fd = os.open(find_port(), os.O_RDWR | os.O_CLOEXEC)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        Agent(fd).serve()
    except BaseException as e:  # PID 1 must not return: say why, then reset the machine
        print(f"silobox-uvm agent: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os.execv("/.sbx/busybox", ["reboot", "-f"])


if __name__ == "__main__":
    main()
