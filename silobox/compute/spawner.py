"""The spawner: a small single-threaded process that forks shims for silod.

silod is an asyncio program with threads; forking container children from it risks deadlocks
(only the forking thread survives a fork). So before any thread exists silod forks this process,
with the kernel modules already imported, and asks it for every shim. A shim is a fork of the
spawner: no interpreter start-up, and its pages are shared copy-on-write.

The spawner holds the entry helper's sealed memfd (``silobox.kernel.entry``), loaded once
before it is forked; shims inherit it and every process that enters a container execs it.

Protocol: silod sends one SOCK_SEQPACKET message per shim, a JSON config plus, as SCM_RIGHTS, the
socket on which the new shim reports to silod directly. The spawner only forks and reaps.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket

from silobox.errors import SystemFailure, Unavailable


POOL_SIZE = 2
# Refill the pool only once requests pause this long. The refill's cgroup attach holds the
# kernel's cgroup_mutex through an RCU grace period (~8 ms here), stalling every cgroup
# operation meanwhile, such as the removal of a short-lived container that just started.
REFILL_DELAY = 0.012


def _reap(*_: object) -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class _Pool:
    """Warm shims: forked, PID namespace entered, init parked in a pool job object.

    Filled after each request, not at start-up, so silod's reconciliation at start (which removes
    job objects no container owns) never races with a fresh pool.
    """

    def __init__(self, parent: str, size: int) -> None:
        self.parent = parent
        self.size = size
        self.warm: list[tuple[int, socket.socket, str]] = []
        self.ready: set[int] = set()

    def sockets(self) -> list[socket.socket]:
        return [s for _, s, _ in self.warm]

    def take(self) -> tuple[int, socket.socket, str] | None:
        """A warm shim whose init already joined its pool job object; None if none is."""
        for entry in list(self.warm):
            pid, sock, _name = entry
            if pid not in self.ready:
                try:
                    word = sock.recv(16, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue           # still starting: leave it for the next request
                except OSError:
                    word = b""
                if word != b"ready":   # it died: forget it
                    self.warm.remove(entry)
                    sock.close()
                    continue
                self.ready.add(pid)
            self.warm.remove(entry)
            self.ready.discard(pid)
            return entry
        return None

    def hand_over(self, warm: tuple[int, socket.socket, str], msg: bytes, cfg: dict,
                  report_fd: int) -> bool:
        """Give a warm shim a container: its job object gets the id and limits, then the config."""
        from silobox.kernel.jobobject import JobLimits, JobObject
        _pid, sock, name = warm
        try:
            job = JobObject(name, self.parent).rename(cfg["job"]["name"])
            job.set_limits(JobLimits(**cfg.get("limits", {})))
            socket.send_fds(sock, [msg], [report_fd])
            return True
        except Exception:
            return False
        finally:
            sock.close()

    def fill(self, silod: socket.socket) -> None:
        from silobox.compute.shim import run_pooled_shim
        from silobox.kernel.jobobject import JobLimits, JobObject
        while len(self.warm) < self.size:
            name = f"pool-{os.urandom(6).hex()}"
            try:
                job = JobObject(name, self.parent)
                job.create(JobLimits())
            except Exception:
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                pid = os.fork()
            except OSError:
                ours.close()
                theirs.close()
                JobObject(name, self.parent).delete()
                return
            if pid == 0:
                silod.close()
                ours.close()
                for s in self.sockets():
                    s.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                run_pooled_shim(theirs.detach(), self.parent, name, job.procs_files())
            theirs.close()
            self.warm.append((pid, ours, name))

    def drain(self) -> None:
        """Tell every warm shim to go (EOF) and wait until they removed their job objects."""
        pids = [pid for pid, _, _ in self.warm]
        for _, sock, _ in self.warm:
            sock.close()
        self.warm.clear()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _serve(sock: socket.socket, parent: str, pool_size: int) -> None:
    from silobox.compute.shim import run_shim
    from silobox.kernel import libc
    import silobox.kernel.jobobject  # noqa: F401  (imported once here, shared by every shim)

    libc.set_process_name("silobox-spawner")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, _reap)
    gc.collect()
    gc.freeze()  # keep shared pages shared across shim forks
    pool = _Pool(parent, pool_size)
    want_fill = False
    while True:
        sock.settimeout(REFILL_DELAY if want_fill else None)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 4)
        except TimeoutError:
            pool.fill(sock)
            want_fill = False
            continue
        except InterruptedError:
            continue
        except OSError:
            break
        if not msg:
            break  # silod is gone: shims keep running on their own
        try:
            cfg = json.loads(msg)
        except ValueError:
            for fd in fds:
                os.close(fd)
            continue
        warm = pool.take() if cfg.get("pool") and fds else None
        if warm is not None:
            if pool.hand_over(warm, msg, cfg, fds[0]):
                for fd in fds:
                    os.close(fd)
                want_fill = True
                continue
        try:
            pid = os.fork()
        except OSError as e:
            for fd in fds:
                try:
                    os.write(fd, (json.dumps({"t": "error", "stage": "fork", "errno": e.errno,
                                              "msg": f"cannot fork shim: {e.strerror}"}) + "\n").encode())
                except OSError:
                    pass
                os.close(fd)
            continue
        if pid == 0:
            sock.close()
            for s in pool.sockets():
                s.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            run_shim(cfg, fds[0])
        for fd in fds:
            os.close(fd)
        if cfg.get("pool"):
            want_fill = True
    pool.drain()
    os._exit(0)


class Spawner:
    """silod's handle on the spawner process."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    @classmethod
    def fork(cls, cgroup_parent: str = "silobox", pool_size: int = POOL_SIZE) -> "Spawner":
        """Start the spawner; call before any thread exists in the daemon.

        The entry helper is loaded into its sealed memfd first: every shim inherits that fd, and
        a daemon that cannot enter containers refuses to start (EntryHelperMissing). The native
        monitor is opened here too: each shim execs it once its container is set up."""
        from silobox.compute import monitor
        from silobox.kernel import entry
        entry.load(entry.ensure_built())
        if monitor.enabled():
            monitor.load(monitor.ensure_built())
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            try:
                _serve(theirs, cgroup_parent, pool_size)
            finally:
                os._exit(0)
        theirs.close()
        return cls(pid, ours)

    async def spawn_shim(self, cfg: dict, timeout: float = 30.0) -> tuple[dict, socket.socket]:
        """Ask for a shim and wait for its first report; returns (report, report socket)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                socket.send_fds(self.sock, [json.dumps(cfg).encode()], [theirs.fileno()])
            except OSError as e:
                raise Unavailable(f"the spawner is not running: {e.strerror}",
                                  operation="start", object_id=cfg.get("id", "")) from e
        finally:
            theirs.close()
        mine.setblocking(False)
        loop = asyncio.get_running_loop()
        buf = b""
        try:
            async with asyncio.timeout(timeout):
                while b"\n" not in buf:
                    chunk = await loop.sock_recv(mine, 65536)
                    if not chunk:
                        break
                    buf += chunk
        except TimeoutError:
            mine.close()
            raise SystemFailure("timed out waiting for the container shim",
                                operation="start", object_id=cfg.get("id", "")) from None
        if not buf.strip():
            mine.close()
            raise SystemFailure("the container shim exited before reporting",
                                operation="start", object_id=cfg.get("id", ""))
        return json.loads(buf.split(b"\n", 1)[0]), mine

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
