"""The child side of a container start or exec: named stages between fork and exec.

This is what vmcompute's container init does on Windows. A freshly forked child walks through
named stages (stdio, job object, silo, rootfs, sandbox, exec) doing nothing but syscalls. Each
failure is reported to the parent as one typed message on the sync pipe; a successful ``execve``
closes the CLOEXEC pipe, which the parent sees as EOF (the ``subprocess`` errpipe idea).

Messages are single JSON lines: ``{"t": "ready"}`` when the child is parked waiting for the
start signal, ``{"t": "error", "stage": ..., "errno": ..., "msg": ...}`` on failure.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import signal
import socket
import struct
import termios
from dataclasses import dataclass, field
from typing import NoReturn

from silobox.kernel import libc
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


def _stdio(stdio: tuple[int, int, int], tty: bool) -> None:
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


def _sandbox(proc: ProcessSpec, seccomp_done: bool) -> None:
    """OOM score, rlimits, capabilities, user, working directory, no_new_privs and (last)
    seccomp."""
    stage = "oom_score_adj"
    try:
        if proc.oom_score_adj is not None:
            # While still root with every capability: lowering the score needs CAP_SYS_RESOURCE.
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(proc.oom_score_adj).encode())
            finally:
                os.close(fd)
        stage = "rlimits"
        for res, soft, hard in proc.rlimits:
            resource.setrlimit(res, (soft, hard))
        stage = "seccomp"
        if proc.seccomp and not proc.no_new_privs and not seccomp_done:
            # Without no_new_privs the kernel only accepts a filter while we hold CAP_SYS_ADMIN,
            # so it goes in before the capability drop (as runc does).
            libc.seccomp_load(proc.seccomp)
        stage = "capabilities"
        for cap in range(proc.last_cap + 1):
            if not proc.capabilities & (1 << cap):
                try:
                    libc.prctl(libc.PR_CAPBSET_DROP, cap)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
        libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
        stage = "user"
        # Keep the permitted set across setuid so the capability step below still works; a
        # non-root user then ends with empty sets, as on Docker.
        libc.prctl(libc.PR_SET_KEEPCAPS, 1)
        os.setgroups(proc.groups)
        os.setgid(proc.gid)
        os.setuid(proc.uid)
        libc.prctl(libc.PR_SET_KEEPCAPS, 0)
        stage = "capabilities"
        caps = proc.capabilities if proc.uid == 0 else 0
        libc.capset(caps, caps, 0)
        stage = "cwd"
        os.chdir(proc.cwd)
        os.umask(proc.umask)
        if proc.no_new_privs:
            stage = "no_new_privs"
            libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
            if proc.seccomp:
                stage = "seccomp"
                libc.seccomp_load(proc.seccomp)
    except OSError as e:
        raise _StageError(stage, e) from None


def _exec(path: str, proc: ProcessSpec) -> NoReturn:
    try:
        os.execve(path, proc.argv, dict(_split_env(proc.env)))
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise _StageError("exec", OSError(errno.ENOENT, f'exec: "{proc.argv[0]}": '
                                              "no such file or directory")) from None
        raise _StageError("exec", OSError(e.errno, f'exec: "{proc.argv[0]}": '
                                          f"{os.strerror(e.errno or errno.EACCES).lower()}")) from None


def _split_env(env: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in env:
        k, _, v = item.partition("=")
        out.append((k, v))
    return out


def _wait_start(start_fd: int) -> None:
    """Park until the shim says go (HCS Start after Create); EOF means the start was abandoned."""
    while True:
        try:
            data = os.read(start_fd, 1)
            break
        except InterruptedError:
            continue
    if not data:
        os._exit(EXIT_CANNOT_INVOKE)
    os.close(start_fd)


def child_init(silo: SiloSpec, proc: ProcessSpec, procs_files: list[str], sync_fd: int,
               start_fd: int, stdio: tuple[int, int, int] | None, close_fds: list[int],
               console_fd: int | None = None,
               console_size: tuple[int, int] | None = None) -> NoReturn:
    """Stages of a container's first process: it becomes PID 1 of the silo."""
    try:
        _prelude(close_fds, stdio, procs_files)
        _silo_stages(silo, proc, sync_fd, start_fd, console_fd, console_size)
    except _StageError as e:
        _fail(sync_fd, e)
    except BaseException as e:  # anything else is a bug; still tell the parent why
        _fail(sync_fd, _StageError("internal", f"{type(e).__name__}: {e}"))


def child_pooled(procs_files: list[str], config_fd: int, sync_fd: int, start_fd: int,
                 pipes: tuple[int, int, int], console_fd: int,
                 close_fds: list[int]) -> NoReturn:
    """A container's first process made ahead of time, for a pool of warm shims.

    It joins a pool job object and parks until its configuration arrives on ``config_fd``
    (JSON: silo, process, open_stdin, console_size). The forks and the cgroup attach, whose RCU
    grace period dominates a cold start on cgroup v1, are then off the start path.
    """
    try:
        _prelude(close_fds, None, procs_files)
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
        except OSError as e:
            raise _StageError(stage, e) from None
        size = cfg.get("console_size")
        _silo_stages(silo, proc, sync_fd, start_fd, console,
                     (int(size[0]), int(size[1])) if size else None)
    except _StageError as e:
        _fail(sync_fd, e)
    except BaseException as e:
        _fail(sync_fd, _StageError("internal", f"{type(e).__name__}: {e}"))


def _prelude(close_fds: list[int], stdio: tuple[int, int, int] | None,
             procs_files: list[str]) -> None:
    """First stages of every child: drop the parent's fds, clean signals, stdio, job object."""
    stage = "signals"
    try:
        for fd in close_fds:
            os.close(fd)
        _default_signals()
        if stdio is not None:
            stage = "stdio"
            _stdio(stdio, False)
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
    _report(sync_fd, {"t": "ready"})
    _wait_start(start_fd)
    _sandbox(proc, seccomp_done=False)
    _exec(path, proc)


def child_exec(init_pid: int, ns_fds: list[tuple[int, int]], root_fd: int, proc: ProcessSpec,
               procs_files: list[str], sync_fd: int, stdio: tuple[int, int, int] | None,
               close_fds: list[int], console_fd: int | None = None,
               console_size: tuple[int, int] | None = None) -> NoReturn:
    """Stages of a process joining a running silo (``docker exec``, HCS CreateProcess)."""
    try:
        _prelude(close_fds, stdio, procs_files)
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
                _stdio((slave, slave, slave), True)
        except OSError as e:
            raise _StageError(stage, e) from None
        path = resolve_executable(proc.argv[0], proc.env, proc.cwd)
        _sandbox(proc, seccomp_done=False)
        _exec(path, proc)
    except _StageError as e:
        _fail(sync_fd, e)
    except BaseException as e:
        _fail(sync_fd, _StageError("internal", f"{type(e).__name__}: {e}"))


def read_messages(sync_fd: int) -> list[dict]:
    """Parent side: read the child's messages until EOF (exec done) or a 'ready' (parked)."""
    buf = b""
    msgs: list[dict] = []
    while True:
        try:
            chunk = os.read(sync_fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            msg = json.loads(line)
            msgs.append(msg)
            if msg.get("t") in ("ready", "error"):
                return msgs
    return msgs
