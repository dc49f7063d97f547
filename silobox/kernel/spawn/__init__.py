"""The child side of a container start or exec: named stages between fork and exec.

This is what vmcompute's container init does on Windows. A freshly forked child walks through
named stages (stdio, job object, silo, rootfs, console) doing nothing but syscalls, then execs
the entry helper (``silobox.kernel.entry``) from its sealed memfd, which parks (a first
process), applies the sandbox and execs the container's program: the host's interpreter never
runs where the container can reach it (docs/security.md, "Entering a container"). Every child
is non-dumpable from its first step and closes every inherited fd it does not need before it
joins any namespace.

Each failure is reported to the parent as one typed message on the sync pipe; a successful
``execve`` closes the CLOEXEC pipe, which the parent sees as EOF (the ``subprocess`` errpipe
idea). Messages are single JSON lines: ``{"t": "ready"}`` when the first process is parked
waiting for the start signal, ``{"t": "pid", "pid": N}`` when an exec forked into the PID
namespace, ``{"t": "error", "stage": ..., "errno": ..., "msg": ...}`` on failure.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import time
import socket
import struct
import termios
from dataclasses import dataclass, field
from typing import NoReturn

from silobox.kernel import entry, libc
from silobox.kernel.silo import SiloSpec, build_rootfs, enter, make_workdir, set_sysctls

EXIT_CANNOT_INVOKE = 126
EXIT_NOT_FOUND = 127


@dataclass
class ProcessSpec:
    """A process to start inside a silo, fully resolved (the Linux side of HCS ProcessParameters)."""

    argv: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=list)
    capabilities: int = 0            # bounding/effective/permitted mask
    last_cap: int = 40
    no_new_privs: bool = False
    seccomp: bytes | None = None     # compiled classic BPF, None = unconfined
    rlimits: list[tuple[int, int, int]] = field(default_factory=list)
    tty: bool = False
    umask: int = 0o022
    oom_score_adj: int | None = None  # None: inherited from the shim

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["seccomp"] = self.seccomp.hex() if self.seccomp else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ProcessSpec":
        d = dict(d)
        d["seccomp"] = bytes.fromhex(d["seccomp"]) if d.get("seccomp") else None
        d["rlimits"] = [tuple(r) for r in d.get("rlimits", [])]
        return cls(**d)


class _StageError(Exception):
    def __init__(self, stage: str, err: OSError | str) -> None:
        self.stage = stage
        if isinstance(err, OSError):
            self.errno = err.errno or 0
            self.msg = f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")
        else:
            self.errno = 0
            self.msg = err


def _report(sync_fd: int, msg: dict) -> None:
    data = (json.dumps(msg) + "\n").encode()
    try:
        os.write(sync_fd, data)
    except OSError:
        pass


def _fail(sync_fd: int, e: _StageError) -> NoReturn:
    _report(sync_fd, {"t": "error", "stage": e.stage, "errno": e.errno, "msg": e.msg})
    code = EXIT_NOT_FOUND if e.errno == errno.ENOENT and e.stage == "exec" else EXIT_CANNOT_INVOKE
    os._exit(code)


def _stdio(stdio: tuple[int, int, int], tty: bool, session: bool = True) -> None:
    """fds 0-2; a first process also leads a new session (an exec's helper fork does that)."""
    if session:
        os.setsid()
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target, inheritable=True)
        else:
            os.set_inheritable(target, True)
    if tty:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _console(console_fd: int, size: tuple[int, int] | None, bind_console: bool) -> int:
    """Open the pty inside the silo's own devpts, hand the master to the shim, keep the slave.

    Opening it here (not in the shim) is what makes ``tty`` print ``/dev/pts/0`` in the
    container: the slave lives in the container's devpts instance.
    """
    master, slave = os.openpty()
    h, w = size or (24, 80)
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", h or 24, w or 80, 0, 0))
    sock = socket.socket(fileno=console_fd)
    socket.send_fds(sock, [b"pty"], [master])
    sock.close()
    os.close(master)
    if bind_console:
        console = "/dev/console"
        if not os.path.exists(console):
            os.close(os.open(console, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        libc.mount(os.ttyname(slave), console, None, libc.MS_BIND)
    return slave


def _default_signals() -> None:
    """Hand the process clean signal state: the shim ignores TERM/INT/HUP/PIPE and Python
    ignores PIPE/XFSZ, and ignored dispositions survive exec (a shell could not even trap them)."""
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _join_job(procs_files: list[str]) -> None:
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def _env_value(env: list[str], key: str) -> str | None:
    prefix = key + "="
    for item in env:
        if item.startswith(prefix):
            return item[len(prefix):]
    return None


def resolve_executable(argv0: str, env: list[str], cwd: str) -> str:
    """Find the program like exec.LookPath does, inside the (already entered) root."""
    if "/" in argv0:
        path = argv0 if argv0.startswith("/") else os.path.join(cwd, argv0)
        if not os.path.exists(path):
            raise _StageError("exec", OSError(errno.ENOENT, f'exec: "{argv0}": stat {argv0}: '
                                              "no such file or directory"))
        return path
    search = _env_value(env, "PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    for d in search.split(":"):
        cand = os.path.join(d or ".", argv0)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise _StageError("exec", OSError(errno.ENOENT,
                                      f'exec: "{argv0}": executable file not found in $PATH'))


def _enter_helper(proc: ProcessSpec, path: str, sync_fd: int, *, start_fd: int = -1,
                  pidns_fd: int = -1) -> NoReturn:
    """Hand the rest to the entry helper: park (first process) or fork into the PID namespace
    (exec), then rlimits, seccomp, capabilities, user, cwd, no_new_privs and execve."""
    mode = entry.MODE_PARK if start_fd >= 0 else entry.MODE_FORK
    spec = entry.encode_spec(
        mode=mode, sync_fd=sync_fd, start_fd=start_fd, pidns_fd=pidns_fd, path=path,
        argv=proc.argv, env=proc.env, cwd=proc.cwd, uid=proc.uid, gid=proc.gid,
        groups=proc.groups, capabilities=proc.capabilities, last_cap=proc.last_cap,
        no_new_privs=proc.no_new_privs, seccomp=proc.seccomp, rlimits=proc.rlimits,
        umask=proc.umask, oom_score_adj=proc.oom_score_adj, tty=proc.tty)
    try:
        entry.exec_helper(spec, [fd for fd in (sync_fd, start_fd, pidns_fd) if fd >= 0])
    except OSError as e:
        raise _StageError("entry", e) from None


def close_fds_except(keep: list[int]) -> None:
    """Close every fd above 2 not in ``keep`` (close_range over the gaps)."""
    lo = 3
    for fd in sorted(set(k for k in keep if k >= 3)):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 2**31 - 1)


def _no_dump() -> None:
    """First step of every child: no ptrace, no /proc/<pid>/{exe,fd,mem} for anyone else."""
    libc.prctl(libc.PR_SET_DUMPABLE, 0)


def child_init(silo: SiloSpec, proc: ProcessSpec, procs_files: list[str], sync_fd: int,
               start_fd: int, stdio: tuple[int, int, int] | None,
               console_fd: int | None = None,
               console_size: tuple[int, int] | None = None) -> NoReturn:
    """Stages of a container's first process: it becomes PID 1 of the silo."""
    try:
        keep = [sync_fd, start_fd, entry.helper_fd()]
        if console_fd is not None:
            keep.append(console_fd)
        _prelude(keep, stdio, procs_files)
        _silo_stages(silo, proc, sync_fd, start_fd, console_fd, console_size)
    except _StageError as e:
        _fail(sync_fd, e)
    except BaseException as e:  # anything else is a bug; still tell the parent why
        _fail(sync_fd, _StageError("internal", f"{type(e).__name__}: {e}"))


def child_pooled(procs_files: list[str], config_fd: int, sync_fd: int, start_fd: int,
                 pipes: tuple[int, int, int], console_fd: int) -> NoReturn:
    """A container's first process made ahead of time, for a pool of warm shims.

    It joins a pool job object and parks until its configuration arrives on ``config_fd``
    (JSON: silo, process, open_stdin, console_size). The forks and the cgroup attach, whose RCU
    grace period dominates a cold start on cgroup v1, are then off the start path.
    """
    try:
        _prelude([config_fd, sync_fd, start_fd, *pipes, console_fd, entry.helper_fd()], None,
                 procs_files)
        _report(sync_fd, {"t": "pooled"})
        try:
            stage = "config"
            chunks = []
            while True:
                try:
                    data = os.read(config_fd, 65536)
                except InterruptedError:
                    continue
                if not data:
                    break
                chunks.append(data)
            os.close(config_fd)
            if not chunks:
                os._exit(0)   # the pool was drained without using us
            cfg = json.loads(b"".join(chunks))
            silo = SiloSpec.from_dict(cfg["silo"])
            proc = ProcessSpec.from_dict(cfg["process"])
            stage = "stdio"
            in_r, out_w, err_w = pipes
            if proc.tty:
                for fd in pipes:
                    os.close(fd)
                console: int | None = console_fd
            else:
                os.close(console_fd)
                console = None
                if not cfg.get("open_stdin"):
                    os.close(in_r)
                    in_r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                _stdio((in_r, out_w, err_w), False)
            keep = [sync_fd, start_fd, entry.helper_fd()]
            if console is not None:
                keep.append(console)
            close_fds_except(keep)
        except OSError as e:
            raise _StageError(stage, e) from None
        size = cfg.get("console_size")
        _silo_stages(silo, proc, sync_fd, start_fd, console,
                     (int(size[0]), int(size[1])) if size else None)
    except _StageError as e:
        _fail(sync_fd, e)
    except BaseException as e:
        _fail(sync_fd, _StageError("internal", f"{type(e).__name__}: {e}"))


def _prelude(keep: list[int], stdio: tuple[int, int, int] | None,
             procs_files: list[str], session: bool = True) -> None:
    """First stages of every child: non-dumpable, stdio, every other fd of the shim closed
    (its log, sockets, epoll, other processes' pipes), clean signals, job object."""
    stage = "dumpable"
    try:
        _no_dump()
        if stdio is not None:
            stage = "stdio"
            _stdio(stdio, False, session)
        stage = "signals"
        _default_signals()     # first: the wakeup fd it clears is one of those closed next
        stage = "fds"
        close_fds_except(keep)
        stage = "jobobject"
        _join_job(procs_files)
    except OSError as e:
        raise _StageError(stage, e) from None


def _silo_stages(silo: SiloSpec, proc: ProcessSpec, sync_fd: int, start_fd: int,
                 console_fd: int | None, console_size: tuple[int, int] | None) -> NoReturn:
    """From the namespaces to exec: shared by cold and pooled starts."""
    try:
        stage = "namespaces"
        enter(silo)
        if silo.sysctls:
            stage = "sysctls"
            set_sysctls(silo.sysctls)
        stage = "rootfs"
        build_rootfs(silo)
        if console_fd is not None:
            stage = "console"
            slave = _console(console_fd, console_size, True)
            _stdio((slave, slave, slave), True)
        stage = "cwd"
        if proc.cwd != "/":
            make_workdir(proc.cwd)
    except OSError as e:
        raise _StageError(stage, e) from None
    path = resolve_executable(proc.argv[0], proc.env, proc.cwd)
    _enter_helper(proc, path, sync_fd, start_fd=start_fd)


def child_exec(ns_fds: list[tuple[int, int]], pidns_fd: int | None, root_fd: int,
               proc: ProcessSpec, procs_files: list[str], sync_fd: int,
               stdio: tuple[int, int, int] | None, console_fd: int | None = None,
               console_size: tuple[int, int] | None = None) -> NoReturn:
    """Stages of a process joining a running silo (``docker exec``, HCS CreateProcess).

    Forked in the shim's own PID namespace, this process is invisible to the container; it
    joins the other namespaces and the root, and only the entry helper it execs joins the
    container's PID namespace (and forks into it)."""
    try:
        keep = [sync_fd, root_fd, entry.helper_fd(), *(fd for fd, _ in ns_fds)]
        if pidns_fd is not None:
            keep.append(pidns_fd)
        if console_fd is not None:
            keep.append(console_fd)
        _prelude(keep, stdio, procs_files, session=False)
        try:
            stage = "namespaces"
            for fd, nstype in ns_fds:
                libc.setns(fd, nstype)
                os.close(fd)
            stage = "rootfs"
            os.fchdir(root_fd)
            os.chroot(".")
            os.close(root_fd)
            os.chdir("/")
            if console_fd is not None:
                stage = "console"
                slave = _console(console_fd, console_size, False)
                _stdio((slave, slave, slave), False, session=False)
        except OSError as e:
            raise _StageError(stage, e) from None
        path = resolve_executable(proc.argv[0], proc.env, proc.cwd)
        _enter_helper(proc, path, sync_fd, pidns_fd=-1 if pidns_fd is None else pidns_fd)
    except _StageError as e:
        _fail(sync_fd, e)
    except BaseException as e:
        _fail(sync_fd, _StageError("internal", f"{type(e).__name__}: {e}"))


def parse_messages(buf: bytes) -> tuple[list[dict], bytes]:
    """Complete JSON lines of a sync pipe; returns (messages, the unfinished rest)."""
    msgs = []
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        try:
            msgs.append(json.loads(line.decode("utf-8", "replace")))
        except ValueError:
            msgs.append({"t": "error", "stage": "entry", "errno": 0,
                         "msg": "garbled message from the entering process"})
    return msgs, buf


def read_messages(sync_fd: int, timeout: float | None = None) -> list[dict]:
    """Parent side: read the child's messages until EOF (exec done) or a 'ready' / 'error'.

    With ``timeout`` the wait is bounded: when it passes, the last message is an error of stage
    "timeout" (the caller kills the child)."""
    buf = b""
    msgs: list[dict] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    poller = select.poll()
    poller.register(sync_fd, select.POLLIN)
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            ready = poller.poll(max(int(left * 1000) + 1, 0)) if left > 0 else []
            if not ready:
                msgs.append({"t": "error", "stage": "timeout", "errno": errno.ETIMEDOUT,
                             "msg": f"the process did not enter the container within "
                                    f"{timeout:g}s"})
                return msgs
        try:
            chunk = os.read(sync_fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        buf += chunk
        new, buf = parse_messages(buf)
        for msg in new:
            msgs.append(msg)
            if msg.get("t") in ("ready", "error"):
                return msgs
    return msgs
