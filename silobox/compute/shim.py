"""The per-container shim (containerd-shim-runhcs on Windows).

One shim per running compute system. It is a fork of the spawner (no interpreter start-up), it
detaches into its own session, enters a fresh PID namespace for its children, builds the
container's first process (parked before exec until Start), and then owns everything that must
outlive silod: the stdio pipes or pty, the json-file log, the exit status, exec'd processes.
silod talks to it on ``shim.sock``; a silod restart only drops those connections.

Control protocol on ``shim.sock``: the client sends one JSON line ``{"op": ...}``; the shim answers
one JSON line. ``attach`` and ``exec`` then turn the connection into a stream: output goes out in
Docker's 8-byte stdcopy frames (stream 1 stdout, 2 stderr, 3 a final JSON exit record), and bytes
from the client are the process's stdin; the client's half-close closes stdin.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import os
import selectors
import signal
import socket
import struct
import termios
import time
from dataclasses import dataclass, field

from silobox.atomic import atomic_write_json
from silobox.compute import monitor
from silobox.timeutil import now_iso as rfc3339
from silobox.kernel import entry, libc
from silobox.kernel.silo import SiloSpec
from silobox.kernel.spawn import (ProcessSpec, child_exec, child_init, child_pooled,
                                  parse_messages, read_messages)

STDOUT, STDERR, EXIT = 1, 2, 3
_FRAME = struct.Struct(">BxxxI")
# How long a process may take from fork to execve (or to parking, for a first process). A
# container can stop a process that entered its PID namespace; past this the shim kills it and
# fails the exec or start instead of waiting.
ENTRY_TIMEOUT = float(os.environ.get("SILOBOX_ENTRY_TIMEOUT") or 30)
_NS_ORDER = (("ipc", libc.CLONE_NEWIPC), ("uts", libc.CLONE_NEWUTS), ("net", libc.CLONE_NEWNET),
             ("cgroup", libc.CLONE_NEWCGROUP), ("mnt", libc.CLONE_NEWNS))


def frame(stream: int, data: bytes) -> bytes:
    return _FRAME.pack(stream, len(data)) + data




def set_winsize(fd: int, height: int, width: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


@dataclass
class _Proc:
    """A process the shim watches: the init or an exec."""

    key: str
    pid: int
    tty: bool
    stdin_fd: int | None
    out_fds: dict[int, int]                    # fd → stream
    subscribers: list["_Conn"] = field(default_factory=list)
    stdin_buf: bytearray = field(default_factory=bytearray)
    status: int | None = None
    close_stdin_on_detach: bool = False
    stdin_eof: bool = False                    # closed by the client: close once written

    @property
    def done(self) -> bool:
        return self.status is not None and not self.out_fds


@dataclass
class _PendingExec:
    """An exec between fork and execve: its sync pipe is read by the event loop."""

    conn: "_Conn"
    key: str
    tty: bool
    child: int                                 # the shim's fork (host PID namespace)
    sync_fd: int
    deadline: float
    stdin_fd: int | None
    out: dict[int, int]
    con_parent: socket.socket | None
    want_stdin: bool
    rest: bytes = b""                          # client bytes after the request: stdin
    buf: bytes = b""
    pid: int = 0                               # the helper's fork in the container
    error: dict | None = None


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.proc: _Proc | None = None     # set once the connection is a stream
        self.stdin = False
        self.waiting = False


class Shim:
    def __init__(self, cfg: dict, report: socket.socket) -> None:
        self.cfg = cfg
        self.report = report
        self.id: str = cfg["id"]
        self.state_dir: str = cfg["state_dir"]
        self.sel = selectors.DefaultSelector()
        self.procs: dict[str, _Proc] = {}
        self.pid_to_proc: dict[int, _Proc] = {}
        self.init: _Proc | None = None
        self.log_fd: int | None = None
        self.log_size = 0
        self.partial: dict[int, bytes] = {STDOUT: b"", STDERR: b""}
        self.waiters: list[_Conn] = []
        self.start_w: int | None = None
        self.sync_r: int | None = None
        self.listener: socket.socket | None = None
        self.exit_record: dict | None = None
        self.ns_fds: list[tuple[int, int]] = []
        self.root_fd: int | None = None
        self.pidns_fd: int | None = None
        self.started_at = ""
        self.pty_master: int | None = None
        self.pending: dict[int, _PendingExec] = {}       # sync fd → exec being entered
        self.unclaimed: dict[int, int] = {}              # reaped before their exec settled

    # ----- set-up -------------------------------------------------------------------------
    def _detach(self) -> None:
        """Own session and name; survive the signals aimed at silod; wake the loop on SIGCHLD;
        and make the next fork the first process of a new PID namespace (unless --pid host)."""
        os.setsid()
        libc.set_process_name("silobox-shim")
        # An exec's entry helper forks into the container and exits: its child is ours to reap.
        libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_IGN)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        if self.cfg.get("pid_namespace"):   # --pid container:X: X's PID namespace
            fd = os.open(self.cfg["pid_namespace"], os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc.setns(fd, libc.CLONE_NEWPID)
            finally:
                os.close(fd)
        elif not self.cfg.get("host_pid"):   # --pid host: the container's processes are host's
            libc.unshare(libc.CLONE_NEWPID)

    def run(self) -> None:
        self._detach()
        try:
            self._create_init()
        except Exception as e:  # report and leave nothing behind
            self._report({"t": "error", "stage": getattr(e, "stage", "shim"),
                          "errno": getattr(e, "errno", 0) or 0, "msg": str(e)})
            self._cleanup_job()
            os._exit(1)
        self._serve()

    def _report(self, msg: dict) -> None:
        try:
            self.report.sendall((json.dumps(msg) + "\n").encode())
        except OSError:
            pass

    def _create_init(self) -> None:
        """Cold start: make the stdio, fork the init and let it join the job object itself."""
        cfg = self.cfg
        if cfg.get("pool"):
            # silod asked for a warm shim and the pool was empty: make the job object here.
            from silobox.kernel.jobobject import JobLimits, JobObject
            JobObject(cfg["job"]["name"], cfg["job"]["parent"]).create(
                JobLimits(**cfg.get("limits", {})))
        proc = ProcessSpec.from_dict(cfg["process"])
        silo = SiloSpec.from_dict(cfg["silo"])
        child_close: list[int] = []
        parent_close: list[int] = []
        console_size = tuple(cfg.get("console_size") or (24, 80))
        con_parent, con_child, stdio, stdin_fd, out = _stdio_for(
            proc.tty, bool(cfg.get("open_stdin")), child_close, parent_close)
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        start_r, start_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            child_init(silo, proc, cfg["procs_files"], sync_w, start_r, stdio,
                       con_child.fileno() if con_child else None, console_size)  # type: ignore[arg-type]
        for fd in parent_close + [sync_w, start_r]:
            os.close(fd)
        if con_child is not None:
            con_child.close()
        self._adopt_init(pid, proc, silo, out, stdin_fd, con_parent, sync_r, start_w)

    def _adopt_init(self, pid: int, proc: ProcessSpec, silo: SiloSpec, out: dict[int, int],
                    stdin_fd: int | None, con_parent: socket.socket | None, sync_r: int,
                    start_w: int) -> None:
        """Wait for the init to park before exec, then open for business and report ready."""
        cfg = self.cfg
        msgs = read_messages(sync_r, ENTRY_TIMEOUT)
        last = msgs[-1] if msgs else {"t": "error", "stage": "init", "errno": 0,
                                      "msg": "container init exited before it was ready"}
        if last.get("t") != "ready":
            if last.get("stage") == "timeout":
                _kill(pid)
            os.waitpid(pid, 0)
            err = RuntimeError(last.get("msg", "init failed"))
            err.stage = last.get("stage", "init")  # type: ignore[attr-defined]
            err.errno = last.get("errno", 0)  # type: ignore[attr-defined]
            raise err
        if con_parent is not None:
            master = _recv_master(con_parent)
            out = {master: STDOUT}
            stdin_fd = master if cfg.get("open_stdin") else None
            self.pty_master = master
        self.sync_r, self.start_w = sync_r, start_w
        self.init = _Proc("init", pid, proc.tty, stdin_fd, dict(out),
                          close_stdin_on_detach=bool(cfg.get("stdin_once")))
        self.procs["init"] = self.init
        self.pid_to_proc[pid] = self.init
        for fd in out:
            self.sel.register(fd, selectors.EVENT_READ, ("out", self.init))
        log_path = cfg.get("log_path")
        if log_path:
            self.log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                  0o640)
            self.log_size = os.fstat(self.log_fd).st_size
        # Namespace handles for exec: opened now, while the init surely exists.
        for name, flag in _NS_ORDER:
            if name in silo.namespaces or (name == "net" and silo.netns_path):
                self.ns_fds.append((os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC),
                                    flag))
        self.pidns_fd = self._exec_pid_namespace(pid)
        sock_path = os.path.join(self.state_dir, "shim.sock")
        try:
            os.unlink(sock_path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.listener.bind(sock_path)
        os.chmod(sock_path, 0o600)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, ("accept", None))
        self.sel.register(self.wake_r, selectors.EVENT_READ, ("signal", None))
        atomic_write_json(os.path.join(self.state_dir, "shim.json"),
                          {"ShimPid": os.getpid(), "Pid": pid}, durable=False)   # runtime state
        if cfg.get("autostart"):
            result = self._start()
            self._report({"t": "ready", "pid": pid, "shim_pid": os.getpid(), **result})
        else:
            self._report({"t": "ready", "pid": pid, "shim_pid": os.getpid()})
        self.report.close()

    def _exec_pid_namespace(self, pid: int) -> int | None:
        """The init's PID namespace, for exec helpers to join; from now on the shim's own forks
        stay in the shim's namespace, where the container cannot see them. None: the init is
        in the shim's namespace (--pid host)."""
        ours = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        theirs = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        if os.fstat(ours).st_ino == os.fstat(theirs).st_ino:
            os.close(ours)
            os.close(theirs)
            return None
        try:
            libc.setns(ours, libc.CLONE_NEWPID)
        finally:
            os.close(ours)
        return theirs

    # ----- the warm pool --------------------------------------------------------------------
    def run_pooled(self, spawner: socket.socket, parent: str, pool_name: str,
                   procs_files: list[str]) -> None:
        """A warm shim: everything up to the parked init is done before any container asks.

        The init is forked and joined to a pool job object (made by the spawner) now; when the
        spawner hands over a container's configuration it has already renamed that job object to
        the container's id (cgroupfs keeps the members) and set its limits, and the init
        continues with the silo. The job-object work stays in the spawner so that this process
        touches, and so copies, as few of the pages it shares with its siblings as it can.
        """
        self._detach()
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        con_parent, con_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cfg_r, cfg_w = os.pipe2(os.O_CLOEXEC)
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        start_r, start_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            child_pooled(procs_files, cfg_r, sync_w, start_r, (in_r, out_w, err_w),
                         con_child.fileno())
        for fd in (in_r, out_w, err_w, cfg_r, sync_w, start_r):
            os.close(fd)
        con_child.close()
        # Ready for a container only once the init is inside the pool job object: the spawner
        # renames that job object at hand-over.
        joined = _read_line(sync_r)
        try:
            if joined.get("t") != "pooled":
                raise OSError("the pooled init could not join its job object")
            spawner.send(b"ready")
            msg, fds, _f, _a = socket.recv_fds(spawner, 1 << 20, 4)
        except OSError:
            msg, fds = b"", []
        spawner.close()
        if not msg or not fds:
            # Drained: the parked init sees EOF on its configuration and exits.
            from silobox.kernel.jobobject import JobObject
            os.close(cfg_w)
            os.waitpid(pid, 0)
            JobObject(pool_name, parent).delete()
            os._exit(0)
        self.cfg = cfg = json.loads(msg)
        self.id = cfg["id"]
        self.state_dir = cfg["state_dir"]
        self.report = socket.socket(fileno=fds[0])
        try:
            proc = ProcessSpec.from_dict(cfg["process"])
            silo = SiloSpec.from_dict(cfg["silo"])
            payload = json.dumps({"silo": cfg["silo"], "process": cfg["process"],
                                  "open_stdin": cfg.get("open_stdin"),
                                  "console_size": cfg.get("console_size")}).encode()
            view = memoryview(payload)
            while view:
                view = view[os.write(cfg_w, view):]
            os.close(cfg_w)
            out: dict[int, int] = {}
            stdin_fd: int | None = None
            if proc.tty:
                for fd in (in_w, out_r, err_r):
                    os.close(fd)
                con: socket.socket | None = con_parent
            else:
                con_parent.close()
                con = None
                for fd in (out_r, err_r):
                    os.set_blocking(fd, False)
                out = {out_r: STDOUT, err_r: STDERR}
                if cfg.get("open_stdin"):
                    os.set_blocking(in_w, False)
                    stdin_fd = in_w
                else:
                    os.close(in_w)
            self._adopt_init(pid, proc, silo, out, stdin_fd, con, sync_r, start_w)
        except Exception as e:
            self._report({"t": "error", "stage": getattr(e, "stage", "shim"),
                          "errno": getattr(e, "errno", 0) or 0, "msg": str(e)})
            self._cleanup_job()
            os._exit(1)
        self._serve()

    def _start(self) -> dict:
        """Release the parked init to exec (HCS Start); answer whether exec succeeded."""
        if self.start_w is None:
            return {"ok": True, "already": True}
        os.write(self.start_w, b"1")
        os.close(self.start_w)
        self.start_w = None
        msgs = read_messages(self.sync_r, ENTRY_TIMEOUT) if self.sync_r is not None else []
        if msgs and msgs[-1].get("stage") == "timeout" and self.init is not None:
            _kill(self.init.pid)
        if self.sync_r is not None:
            os.close(self.sync_r)
            self.sync_r = None
        self.started_at = rfc3339()
        if msgs and msgs[-1].get("t") == "error":
            m = msgs[-1]
            return {"ok": False, "stage": m.get("stage"), "errno": m.get("errno", 0),
                    "msg": m.get("msg", "")}
        return {"ok": True, "started_at": self.started_at}

    # ----- hand-over to the native monitor -------------------------------------------------
    def _serve(self) -> None:
        """From here on the container needs only its monitor: exec the native one with every
        fd it must keep (same pid: still the parent and subreaper of the container), or, when
        none is loaded, serve with this process's own loop."""
        fd = monitor.monitor_fd()
        if fd is not None:
            try:
                argv, keep = self._monitor_argv()
                for k in keep:
                    os.set_inheritable(k, True)
                os.execve(fd, argv, {})
            except Exception:   # keep serving in Python, and say why
                self._note_error()
        self._loop()

    def _monitor_argv(self) -> tuple[list[str], list[int]]:
        """The monitor's arguments (key=value words, see monitor.c) and the fds it inherits."""
        assert self.init is not None and self.listener is not None
        cfg, init = self.cfg, self.init
        keep = [self.listener.fileno(), entry.helper_fd()]
        args = [monitor.NAME, f"listen={keep[0]}", f"helper={keep[1]}", f"init={init.pid}",
                f"tty={int(init.tty)}", f"stdin_once={int(init.close_stdin_on_detach)}",
                f"state_dir={self.state_dir}", f"entry_timeout={ENTRY_TIMEOUT:g}"]
        if init.stdin_fd is not None:
            args.append(f"stdin={init.stdin_fd}")
            keep.append(init.stdin_fd)
        for fd, stream in init.out_fds.items():
            args.append(f"out={fd}:{stream}")
            keep.append(fd)
        if self.start_w is not None and self.sync_r is not None:
            args += [f"start={self.start_w}", f"sync={self.sync_r}"]
            keep += [self.start_w, self.sync_r]
        if self.started_at:
            args.append(f"started_at={self.started_at}")
        if self.log_fd is not None:
            args += [f"log={self.log_fd}", f"log_path={cfg['log_path']}",
                     f"log_max_size={int(cfg.get('log_max_size') or 0)}",
                     f"log_max_files={int(cfg.get('log_max_files') or 1)}"]
            keep.append(self.log_fd)
        if cfg.get("exit_path"):
            args.append(f"exit_path={cfg['exit_path']}")
        for fd, flag in self.ns_fds:
            args.append(f"ns={fd}:{flag}")
            keep.append(fd)
        if self.pidns_fd is not None:
            args.append(f"pidns={self.pidns_fd}")
            keep.append(self.pidns_fd)
        args += [f"procs={p}" for p in cfg.get("procs_files") or []]
        job = cfg.get("job")
        if job:
            from silobox.kernel.jobobject import JobObject
            for d in JobObject(job["name"], job["parent"]).directories:
                args.append(f"cg={d}")
                if os.path.exists(os.path.join(d, "freezer.state")):
                    args.append(f"freezer={d}")
                for name in ("memory.oom_control", "memory.events"):
                    if os.path.exists(os.path.join(d, name)):
                        args.append(f"oom={os.path.join(d, name)}")
                        break
                if os.path.exists(os.path.join(d, "cgroup.kill")):
                    args.append(f"cg_kill={os.path.join(d, 'cgroup.kill')}")
        return args, keep

    def _note_error(self) -> None:
        """The traceback into shim.err (removed with the container) and silod's stderr."""
        import sys
        import traceback
        try:
            traceback.print_exc(file=sys.stderr)
            with open(os.path.join(self.state_dir, "shim.err"), "a") as f:
                traceback.print_exc(file=f)
        except (OSError, ValueError):
            pass

    # ----- event loop ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            timeout = 1.0
            if self.pending:
                soonest = min(p.deadline for p in self.pending.values())
                timeout = min(timeout, max(soonest - time.monotonic(), 0))
            for key, mask in self.sel.select(timeout=timeout):
                kind, obj = key.data
                if kind == "sync":
                    self._on_sync(obj)
                elif kind == "accept":
                    self._accept()
                elif kind == "signal":
                    self._on_signal()
                elif kind == "out":
                    self._on_output(key.fd, obj)
                elif kind == "conn":
                    self._on_conn(obj)
                elif kind == "stdin":
                    self._flush_stdin(obj)
            self._reap()
            if self.pending:
                self._expire_pending()
            if self.init is not None and self.init.done and self.exit_record is None:
                self._finish()
                return

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(True)
        sock.settimeout(10)
        conn = _Conn(sock)
        self.sel.register(sock, selectors.EVENT_READ, ("conn", conn))

    def _on_signal(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.pid_to_proc.pop(pid, None)
            if proc is None:
                if self.pending:   # an exec's process that ended before its exec settled
                    self.unclaimed[pid] = os.waitstatus_to_exitcode(status)
                continue
            proc.status = os.waitstatus_to_exitcode(status)
            if proc is self.init:
                # The kernel kills the rest of the PID namespace now; their output ends with them.
                self._init_exited()
            self._maybe_proc_done(proc)

    def _init_exited(self) -> None:
        # No exec can enter the container any more: its namespaces go with its last process
        # (its mounts, and with them its sandbox disk), not with this monitor, and before
        # anyone is told it exited.
        for fd, _flag in self.ns_fds:
            os.close(fd)
        self.ns_fds = []
        if self.pidns_fd is not None:
            os.close(self.pidns_fd)
            self.pidns_fd = None
        for p in self.procs.values():
            if p is not self.init and p.status is None and p.pid in self.pid_to_proc:
                _kill(p.pid)
        for pe in list(self.pending.values()):
            self._settle(pe, {"t": "error", "stage": "exec", "errno": 0,
                              "msg": "container is not running"}, kill=True)
        if self.init and self.init.tty and self.pty_master is not None:
            # A pty master keeps returning EIO after the last slave closes: drain now.
            self._drain_pty(self.init)

    def _drain_pty(self, proc: _Proc) -> None:
        for fd in list(proc.out_fds):
            while True:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    self._close_out(proc, fd)
                    break
                self._emit(proc, STDOUT, data)

    def _on_output(self, fd: int, proc: _Proc) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self._close_out(proc, fd)
            self._maybe_proc_done(proc)
            return
        self._emit(proc, proc.out_fds[fd], data)

    def _close_out(self, proc: _Proc, fd: int) -> None:
        if fd in proc.out_fds:
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass
            del proc.out_fds[fd]
            if fd != proc.stdin_fd:
                os.close(fd)

    def _emit(self, proc: _Proc, stream: int, data: bytes) -> None:
        if proc is self.init:
            self._log(stream, data)
        payload = frame(stream, data)
        for conn in list(proc.subscribers):
            try:
                conn.sock.sendall(payload)
            except OSError:
                self._drop(conn)

    def _log(self, stream: int, data: bytes) -> None:
        """Append json-file log records, one per line, as Docker's json-file driver does."""
        if self.log_fd is None:
            return
        buf = self.partial[stream] + data
        lines = buf.split(b"\n")
        self.partial[stream] = lines.pop()
        if len(self.partial[stream]) > 16384:
            lines.append(self.partial[stream])
            self.partial[stream] = b""
            partial_tail = True
        else:
            partial_tail = False
        if not lines:
            return
        name = "stdout" if stream == STDOUT else "stderr"
        now = rfc3339()
        out = []
        for i, line in enumerate(lines):
            end = "" if partial_tail and i == len(lines) - 1 else "\n"
            text = line.decode("utf-8", "replace") + end
            out.append(json.dumps({"log": text, "stream": name, "time": now}) + "\n")
        if self.cfg.get("log_max_size"):
            for record in out:           # rotation happens between records, as json-file's
                self._write_log(record.encode())
        else:
            self._write_log("".join(out).encode())

    def _write_log(self, data: bytes) -> None:
        """Append to the log, rotating it first when it would pass ``max-size`` (json-file's
        max-size/max-file: <log>.1 is the newest rotated file, <log>.N-1 the oldest kept)."""
        assert self.log_fd is not None
        limit = self.cfg.get("log_max_size") or 0
        if limit and self.log_size and self.log_size + len(data) > limit:
            path = self.cfg["log_path"]
            keep = max(int(self.cfg.get("log_max_files") or 1), 1)
            os.close(self.log_fd)
            if keep == 1:
                os.truncate(path, 0)
            else:
                for i in range(keep - 1, 0, -1):
                    src = path if i == 1 else f"{path}.{i - 1}"
                    try:
                        os.rename(src, f"{path}.{i}")
                    except FileNotFoundError:
                        pass
            self.log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                  0o640)
            self.log_size = 0
        os.write(self.log_fd, data)
        self.log_size += len(data)

    def _flush_log_partials(self) -> None:
        if self.log_fd is None:
            return
        for stream, rest in self.partial.items():
            if rest:
                name = "stdout" if stream == STDOUT else "stderr"
                rec = {"log": rest.decode("utf-8", "replace"), "stream": name, "time": rfc3339()}
                self._write_log((json.dumps(rec) + "\n").encode())
                self.partial[stream] = b""

    def _maybe_proc_done(self, proc: _Proc) -> None:
        if proc is self.init or not proc.done:
            return
        record = {"ExitCode": proc.status if proc.status >= 0 else 128 - proc.status}  # type: ignore[operator]
        for conn in list(proc.subscribers):
            try:
                conn.sock.sendall(frame(EXIT, json.dumps(record).encode()))
            except OSError:
                pass
            self._drop(conn)
        if proc.stdin_fd is not None:
            self._close_stdin(proc, force=True)
        self.procs.pop(proc.key, None)

    # ----- connections ----------------------------------------------------------------------
    def _drop(self, conn: _Conn) -> None:
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        if conn.proc is not None and conn in conn.proc.subscribers:
            conn.proc.subscribers.remove(conn)
            if conn.stdin and conn.proc.close_stdin_on_detach:
                self._close_stdin(conn.proc)
        if conn in self.waiters:
            self.waiters.remove(conn)
        conn.sock.close()

    def _on_conn(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if conn.proc is not None:  # streaming: bytes are stdin
            if not data:
                if conn.stdin:
                    self._close_stdin(conn.proc)
                    conn.stdin = False
                # keep the connection for output; stop reading from it
                try:
                    self.sel.unregister(conn.sock)
                except (KeyError, ValueError):
                    pass
                return
            if conn.stdin:
                self._write_stdin(conn.proc, data)
            return
        if not data:
            self._drop(conn)
            return
        conn.inbuf += data
        if b"\n" not in conn.inbuf:
            return
        line, rest = conn.inbuf.split(b"\n", 1)
        conn.inbuf = b""
        try:
            req = json.loads(line)
            reply = self._exec(conn, req, rest) if req.get("op") == "exec" else \
                self._handle(conn, req)
        except Exception as e:  # a bad request must not take the container down
            reply = {"ok": False, "msg": f"{type(e).__name__}: {e}"}
        if reply is not None:
            try:
                conn.sock.sendall((json.dumps(reply) + "\n").encode())
            except OSError:
                self._drop(conn)
                return
        if conn.proc is not None and rest and conn.stdin:
            self._write_stdin(conn.proc, rest)

    def _handle(self, conn: _Conn, req: dict) -> dict | None:
        op = req.get("op")
        if op == "start":
            return self._start()
        if op == "state":
            return {"ok": True, "pid": self.init.pid if self.init else 0,
                    "started": self.start_w is None, "started_at": self.started_at,
                    "execs": {k: p.pid for k, p in self.procs.items() if k != "init"}}
        if op == "attach":
            proc = self.procs.get(req.get("target") or "init")
            if proc is None:
                return {"ok": False, "msg": "no such process"}
            conn.proc = proc
            conn.stdin = bool(req.get("stdin")) and proc.stdin_fd is not None
            proc.subscribers.append(conn)
            return {"ok": True}
        if op == "wait":
            self.waiters.append(conn)
            return None
        if op == "signal":
            proc = self.procs.get(req.get("target") or "init")
            if proc is None or proc.status is not None:
                return {"ok": False, "msg": "process is not running"}
            os.kill(proc.pid, int(req["signal"]))
            return {"ok": True}
        if op == "resize":
            proc = self.procs.get(req.get("target") or "init")
            if proc is None or not proc.tty or proc.stdin_fd is None and not proc.out_fds:
                return {"ok": False, "msg": "process has no console"}
            fd = proc.stdin_fd if proc.stdin_fd is not None else next(iter(proc.out_fds))
            set_winsize(fd, int(req["height"]), int(req["width"]))
            return {"ok": True}
        if op == "close_stdin":
            proc = self.procs.get(req.get("target") or "init")
            if proc is not None:
                self._close_stdin(proc)
            return {"ok": True}
        return {"ok": False, "msg": f"unknown op {op!r}"}

    # ----- stdin ----------------------------------------------------------------------------
    def _write_stdin(self, proc: _Proc, data: bytes) -> None:
        if proc.stdin_fd is None:
            return
        proc.stdin_buf += data
        self._flush_stdin(proc)

    def _flush_stdin(self, proc: _Proc) -> None:
        fd = proc.stdin_fd
        if fd is None:
            return
        while proc.stdin_buf:
            try:
                n = os.write(fd, proc.stdin_buf)
            except BlockingIOError:
                break
            except OSError:
                proc.stdin_buf.clear()
                break
            del proc.stdin_buf[:n]
        if proc.stdin_eof and not proc.stdin_buf:
            self._close_stdin(proc)
            return
        if fd in proc.out_fds:  # pty master: readable and writable on one fd
            return
        try:
            if proc.stdin_buf:
                self.sel.register(fd, selectors.EVENT_WRITE, ("stdin", proc))
            else:
                self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def _close_stdin(self, proc: _Proc, force: bool = False) -> None:
        fd = proc.stdin_fd
        if fd is None:
            return
        if proc.tty and not force:
            # A terminal has no half-close, and a client leaving (detach keys, a dropped
            # connection) must not end the shell it leaves behind: keep the terminal open.
            return
        if not force and proc.stdin_buf:   # what the client sent before its EOF goes first
            proc.stdin_eof = True
            return
        proc.stdin_fd = None
        if fd in proc.out_fds:        # a pty master still being read: _close_out closes it
            return
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        os.close(fd)

    # ----- exec -----------------------------------------------------------------------------
    def _exec(self, conn: _Conn, req: dict, rest: bytes) -> dict | None:
        """Fork a process that enters the container; the reply waits for its sync pipe."""
        if self.init is None or self.init.status is not None:
            return {"ok": False, "msg": "container is not running"}
        proc_spec = ProcessSpec.from_dict(req["process"])
        key = req["id"]
        parent_close: list[int] = []
        con_parent, con_child, stdio, stdin_fd, out = _stdio_for(
            proc_spec.tty, bool(req.get("stdin")), [], parent_close)
        root_fd = os.open(f"/proc/{self.init.pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError as e:
            for fd in parent_close + [root_fd, sync_r, sync_w, *out]:
                os.close(fd)
            if stdin_fd is not None:
                os.close(stdin_fd)
            for s in (con_parent, con_child):
                if s is not None:
                    s.close()
            return {"ok": False, "msg": f"cannot create process: {e.strerror}"}
        if pid == 0:
            child_exec(self.ns_fds, self.pidns_fd, root_fd, proc_spec, self.cfg["procs_files"],
                       sync_w, stdio, con_child.fileno() if con_child else None,
                       tuple(req.get("console_size") or (24, 80)))  # type: ignore[arg-type]
        for fd in parent_close + [root_fd, sync_w]:
            os.close(fd)
        if con_child is not None:
            con_child.close()
        os.set_blocking(sync_r, False)
        pe = _PendingExec(conn, key, proc_spec.tty, pid, sync_r, time.monotonic() + ENTRY_TIMEOUT,
                          stdin_fd, out, con_parent, bool(req.get("stdin")), rest)
        self.pending[sync_r] = pe
        self.sel.register(sync_r, selectors.EVENT_READ, ("sync", pe))
        try:   # nothing more from the client until the exec settled; its stdin waits
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        return None

    def _on_sync(self, pe: _PendingExec) -> None:
        try:
            chunk = os.read(pe.sync_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if chunk:
            msgs, pe.buf = parse_messages(pe.buf + chunk)
            for m in msgs:
                if m.get("t") == "pid":
                    pe.pid = int(m.get("pid") or 0)
                elif m.get("t") == "error" and pe.error is None:
                    pe.error = m
            return
        self._settle(pe, pe.error)

    def _expire_pending(self) -> None:
        now = time.monotonic()
        for pe in list(self.pending.values()):
            if pe.deadline <= now:
                self._settle(pe, {"t": "error", "stage": "timeout", "errno": errno.ETIMEDOUT,
                                  "msg": f"the process did not enter the container within "
                                         f"{ENTRY_TIMEOUT:g}s"}, kill=True)

    def _settle(self, pe: _PendingExec, error: dict | None, kill: bool = False) -> None:
        """The exec either execve'd (EOF, no error), failed or timed out: make its _Proc,
        answer the client and turn its connection into the process's stream."""
        self.pending.pop(pe.sync_fd, None)
        try:
            self.sel.unregister(pe.sync_fd)
        except (KeyError, ValueError):
            pass
        os.close(pe.sync_fd)
        pid = pe.pid or pe.child
        if kill:
            for p in {pe.pid, pe.child} - {0}:
                _kill(p)
        if pid != pe.child:   # the helper's first half, which exits once it forked
            self.unclaimed.pop(pe.child, None)
        out, stdin_fd = pe.out, pe.stdin_fd
        if pe.con_parent is not None:
            master = _recv_master(pe.con_parent)
            if master >= 0:
                out = {master: STDOUT}
                stdin_fd = master if pe.want_stdin else None
        proc = _Proc(pe.key, pid, pe.tty, stdin_fd, dict(out))
        self.procs[pe.key] = proc
        if pid in self.unclaimed:
            proc.status = self.unclaimed.pop(pid)
        else:
            self.pid_to_proc[pid] = proc
        if not self.pending:
            self.unclaimed.clear()
        for fd in out:
            self.sel.register(fd, selectors.EVENT_READ, ("out", proc))
        conn = pe.conn
        conn.proc = proc
        conn.stdin = stdin_fd is not None
        proc.subscribers.append(conn)
        if error is not None:
            reply = {"ok": False, "pid": pid, "stage": error.get("stage"),
                     "errno": error.get("errno", 0), "msg": error.get("msg", "")}
        else:
            reply = {"ok": True, "pid": pid}
        try:
            conn.sock.sendall((json.dumps(reply) + "\n").encode())
            self.sel.register(conn.sock, selectors.EVENT_READ, ("conn", conn))
        except (OSError, ValueError, KeyError):
            self._drop(conn)
            return
        if pe.rest and conn.stdin:
            self._write_stdin(proc, pe.rest)
        self._maybe_proc_done(proc)

    # ----- exit -----------------------------------------------------------------------------
    def _cleanup_job(self) -> None:
        from silobox.kernel.jobobject import JobObject
        job = self.cfg.get("job")
        if not job:
            return
        jo = JobObject(job["name"], job["parent"])
        oom = False
        try:
            oom = jo.oom_killed()
        except Exception:
            pass
        try:
            jo.kill_all()
        except Exception:
            pass
        try:
            jo.delete()
        except Exception:
            pass
        return oom  # type: ignore[return-value]

    def _finish(self) -> None:
        assert self.init is not None and self.init.status is not None
        status = self.init.status
        code = status if status >= 0 else 128 - status
        self._flush_log_partials()
        oom = bool(self._cleanup_job())
        started = self.start_w is None
        self.exit_record = {"ExitCode": code, "OOMKilled": oom, "FinishedAt": rfc3339(),
                            "Pid": self.init.pid, "Started": started,
                            "StartedAt": self.started_at}
        if self.cfg.get("exit_path"):
            atomic_write_json(self.cfg["exit_path"], self.exit_record)
        payload = json.dumps(self.exit_record).encode()
        for conn in list(self.init.subscribers):
            try:
                conn.sock.sendall(frame(EXIT, payload))
            except OSError:
                pass
            self._drop(conn)
        for conn in list(self.waiters):
            try:
                conn.sock.sendall(payload + b"\n")
            except OSError:
                pass
            self._drop(conn)
        try:
            os.unlink(os.path.join(self.state_dir, "shim.sock"))
        except FileNotFoundError:
            pass
        if self.log_fd is not None:
            os.close(self.log_fd)


def _stdio_for(tty: bool, open_stdin: bool, child_close: list[int], parent_close: list[int]
               ) -> tuple[socket.socket | None, socket.socket | None,
                          tuple[int, int, int] | None, int | None, dict[int, int]]:
    """The stdio of a new process: a console socket (the child opens the pty inside the silo)
    or pipes. Returns (console parent end, console child end, child stdio, our stdin end, our
    output ends → stream); fds each side must close after the fork are appended to the lists."""
    if tty:
        con_parent, con_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_close.append(con_parent.fileno())
        return con_parent, con_child, None, None, {}
    stdin_fd = None
    if open_stdin:
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(in_w, False)
        stdin_fd = in_w
        child_close.append(in_w)
    else:
        in_r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    for fd in (out_r, err_r):
        os.set_blocking(fd, False)
    child_close += [out_r, err_r]
    parent_close += [in_r, out_w, err_w]
    return None, None, (in_r, out_w, err_w), stdin_fd, {out_r: STDOUT, err_r: STDERR}


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_line(fd: int) -> dict:
    """One JSON message from a child's sync pipe, read byte by byte so nothing after it is lost."""
    buf = b""
    while not buf.endswith(b"\n"):
        try:
            ch = os.read(fd, 1)
        except InterruptedError:
            continue
        if not ch:
            return {}
        buf += ch
    try:
        return json.loads(buf)
    except ValueError:
        return {}


def _recv_master(sock: socket.socket) -> int:
    """The pty master the child opened inside the silo; -1 if the child died before sending."""
    try:
        sock.setblocking(False)
        _msg, fds, _f, _a = socket.recv_fds(sock, 16, 1)
    except (BlockingIOError, OSError):
        fds = []
    sock.close()
    if not fds:
        return -1
    os.set_blocking(fds[0], False)
    os.set_inheritable(fds[0], False)
    return fds[0]


def run_pooled_shim(spawner_fd: int, parent: str, pool_name: str,
                    procs_files: list[str]) -> None:
    """Entry point of a warm shim forked into the spawner's pool; never returns."""
    code = 0
    gc.disable()
    try:
        Shim({"id": "", "state_dir": "/nonexistent"}, None).run_pooled(  # type: ignore[arg-type]
            socket.socket(fileno=spawner_fd), parent, pool_name, procs_files)
    except BaseException:
        code = 1
    os._exit(code)


def run_shim(cfg: dict, report_fd: int) -> None:
    """Entry point inside the forked shim process; never returns."""
    code = 0
    # Every page the shim writes stops being shared with the spawner and its sibling shims; the
    # collector would write to every object it scans, so it stays off (the shim makes no cycles
    # that matter: a few per connection, freed when the shim exits).
    gc.disable()
    try:
        report = socket.socket(fileno=report_fd)
        Shim(cfg, report).run()
    except BaseException:
        code = 1
        import traceback
        try:
            with open(os.path.join(cfg.get("state_dir", "/tmp"), "shim.err"), "a") as f:
                traceback.print_exc(file=f)
        except OSError:
            pass
    os._exit(code)
