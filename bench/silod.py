"""A private silod for the bench scripts: started on a temporary root, stopped at the end.

build.py, images.py and registry.py each started and stopped their own copy the same way;
they share this one (imported as a plain module: bench/ is the script's folder).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time


def answers(sock: str) -> bool:
    """Whether the daemon on the unix socket ``sock`` answers ``GET /_ping``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(sock)
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def start_silod(base: str, cgroup: str, extra: tuple[str, ...] = ()
                ) -> tuple[subprocess.Popen, str]:
    """silod on ``base`` (short folder names: container shim sockets live below it and a unix
    socket path has 108 bytes at most) in cgroup parent ``silobox/<cgroup>``; returns the
    process and its DOCKER_HOST once it answers. It runs this checkout's silobox (the working
    directory is the repository's root), not an installed copy."""
    sock = os.path.join(base, "r", "silod.sock")
    proc = subprocess.Popen([sys.executable, "-m", "silobox.daemon", "--root",
                             os.path.join(base, "d"), "--exec-root", os.path.join(base, "r"),
                             "--cgroup-parent", f"silobox/{cgroup}", "-H", f"unix://{sock}",
                             *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    deadline = time.time() + 20
    while not answers(sock):
        if time.time() > deadline or proc.poll() is not None:
            stop(proc)
            raise SystemExit("silod did not come up")
        time.sleep(0.05)
    return proc, f"unix://{sock}"


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM (silod removes what it made), SIGKILL after 15 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
