"""Start silod on demand, so ``silo run …`` works on a machine where nothing started it yet.

There is no service manager on many hosts silobox targets (no systemd in containers or microVMs),
so the CLI plays that part: when the default socket is missing or refuses connections it spawns
``silod`` detached in its own session, sends its output to a log file, and waits for ``/_ping``.
A socket somewhere else is someone else's daemon (a test instance, another root), so it is only
started when its directory is recognisably silod's own.
"""

from __future__ import annotations

import os
import socket
import sys
import time

LOG_DIR = "/var/log/silobox"
START_TIMEOUT = 10.0


class StartError(Exception):
    """silod could not be started or did not answer in time."""


def find_silod() -> str | None:
    """``silod`` next to the running interpreter (the venv's bin), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "silod")
    if os.access(here, os.X_OK):
        return here
    argv0 = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if argv0:
        beside = os.path.join(os.path.dirname(argv0), "silod")
        if os.access(beside, os.X_OK):
            return beside
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        cand = os.path.join(d or ".", "silod")
        if os.access(cand, os.X_OK) and not os.path.isdir(cand):
            return cand
    return None


def may_autostart(sock_path: str, is_default: bool) -> bool:
    """The default socket, or one in a directory named ``silobox`` that we own.

    A socket anywhere else (a test daemon's temporary exec root, for instance) belongs to a silod
    started with options we cannot know, such as its state root; starting a stand-in there could
    mix its state with the default daemon's, so that is left to whoever started it.
    """
    if is_default:
        return True
    d = os.path.dirname(os.path.abspath(sock_path))
    try:
        st = os.stat(d)
    except OSError:
        return False
    return os.path.basename(d) == "silobox" and st.st_uid == os.geteuid()


def ping(sock_path: str, timeout: float = 1.0) -> bool:
    """True when something on the socket answers ``GET /_ping`` with 200."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        return head.startswith(b"HTTP/1.") and head.split(b" ", 2)[1:2] == [b"200"]
    except OSError:
        return False
    finally:
        s.close()


def _open_log(exec_root: str) -> tuple[int, str]:
    for d in (LOG_DIR, exec_root):
        try:
            os.makedirs(d, mode=0o755, exist_ok=True)
            path = os.path.join(d, "silod.log")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            return fd, path
        except OSError:
            continue
    return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC), os.devnull


def silod_args(exe: str, sock_path: str, is_default: bool) -> list[str]:
    """The socket is always explicit (silod would otherwise read SILOBOX_HOST); another
    directory than the default one is also silod's exec root."""
    argv = [exe, "-H", "unix://" + sock_path]
    if not is_default:
        argv += ["--exec-root", os.path.dirname(os.path.abspath(sock_path))]
    return argv


def start(sock_path: str, debug: bool = False) -> None:
    """Spawn silod detached (new session, stdio to its log) and wait until it answers.

    A lock in the socket's directory serialises concurrent ``silo`` invocations so only one of
    them starts a daemon; the others find it answering once they get the lock.
    """
    import fcntl

    from silobox.cli.client import DEFAULT_SOCKET

    is_default = os.path.abspath(sock_path) == DEFAULT_SOCKET
    exec_root = os.path.dirname(os.path.abspath(sock_path))
    try:
        os.makedirs(exec_root, mode=0o711, exist_ok=True)
        lock_fd = os.open(os.path.join(exec_root, "silod.start.lock"),
                          os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StartError(f"cannot prepare {exec_root}: {e.strerror}") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if ping(sock_path):
            return
        exe = find_silod()
        if exe is None:
            raise StartError("silod is not installed next to silo nor on PATH")
        log_fd, log_path = _open_log(exec_root)
        argv = silod_args(exe, sock_path, is_default)
        if debug:
            sys.stderr.write(f"silo: starting {' '.join(argv)} (log: {log_path})\n")
        null_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            pid = os.posix_spawn(exe, argv, dict(os.environ), file_actions=[
                (os.POSIX_SPAWN_DUP2, null_fd, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ], setsid=True)
        except OSError as e:
            raise StartError(f"cannot run {exe}: {e.strerror}") from None
        finally:
            os.close(null_fd)
            os.close(log_fd)
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.005
        while time.monotonic() < deadline:
            if os.path.exists(sock_path) and ping(sock_path):
                return
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                code = os.waitstatus_to_exitcode(status) if status else 0
                raise StartError(f"silod exited with status {code}; see {log_path}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        raise StartError(f"silod did not answer within {START_TIMEOUT:.0f} s; see {log_path}")
    finally:
        os.close(lock_fd)
