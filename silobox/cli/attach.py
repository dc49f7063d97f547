"""Copy stdio between the terminal and a hijacked attach/exec stream.

One ``select`` loop instead of threads: stdin → socket, socket → stdout/stderr (decoding docker's
stdcopy frames unless the stream is a tty), and signals via a wakeup pipe. On stdin EOF the
socket's write side is shut down, so the container sees EOF while its output keeps flowing,
which is what makes ``echo hi | silo run -i busybox cat`` terminate.
"""

from __future__ import annotations

import errno
import os
import select
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs start-up time
    from typing import Callable

from silobox.cli.client import (EXEC_STREAM, EXIT_STATUS_FRAME, MULTIPLEXED, RAW_STREAM,
                                Hijacked, StdDemux)
from silobox.cli.tty import SignalPipe

DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p ctrl-q


def parse_detach_keys(spec: str) -> bytes:
    """``ctrl-p,ctrl-q`` → b'\\x10\\x11' (docker's term.ToBytes)."""
    out = bytearray()
    for key in spec.split(","):
        k = key.strip().lower()
        if len(k) == 1:
            out.append(ord(k))
        elif k.startswith("ctrl-") and len(k) == 6:
            c = k[5]
            if "a" <= c <= "z":
                out.append(ord(c) - ord("a") + 1)
            elif c in "@[\\]^_":
                out.append({"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}[c])
            else:
                raise ValueError(f"Unknown character: '{key}'")
        else:
            raise ValueError(f"Unknown character: '{key}'")
    return bytes(out)


class _Out:
    """Unbuffered writes to an fd; a closed reader (EPIPE) silences it instead of failing."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.broken = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.broken:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                select.select([], [self.fd], [])
                continue
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.EBADF):
                    self.broken = True
                    return
                raise
            view = view[n:]


def pump(stream: Hijacked, *, tty: bool, use_stdin: bool,
         signals: SignalPipe | None = None,
         on_signal: Callable[[int], None] | None = None,
         detach_keys: bytes = DEFAULT_DETACH_KEYS,
         stdin_fd: int = 0, stdout_fd: int = 1, stderr_fd: int = 2,
         exit_status: dict | None = None) -> bool:
    """Run until the daemon closes the stream; True when the user detached (detach keys).

    ``exit_status`` receives the exit-status frame of silod's one-request exec stream."""
    if stream.content_type in (MULTIPLEXED, EXEC_STREAM):
        raw = False
    elif stream.content_type == RAW_STREAM:
        raw = True
    else:
        raw = tty
    out, err = _Out(stdout_fd), _Out(stderr_fd)
    demux = StdDemux()
    sock = stream.sock
    reading_stdin = use_stdin
    matched = 0
    detached_at: float | None = None

    def emit(data: bytes) -> None:
        if raw:
            out.write(data)
            return
        for kind, payload in demux.feed(data):
            if kind == 1:
                out.write(payload)
            elif kind in (2, 3):
                err.write(payload)
            elif kind == EXIT_STATUS_FRAME and exit_status is not None:
                import json

                exit_status.update(json.loads(payload))

    if stream.pending:
        emit(stream.recv())

    while True:
        rlist: list[int] = [sock.fileno()]
        if reading_stdin:
            rlist.append(stdin_fd)
        if signals is not None:
            rlist.append(signals.r)
        timeout = None
        if detached_at is not None:
            timeout = max(0.0, detached_at + 1.0 - time.monotonic())
        ready, _, _ = select.select(rlist, [], [], timeout)
        if not ready and detached_at is not None:
            break  # the daemon did not close the stream for the detach keys; leave anyway
        if signals is not None and signals.r in ready:
            for signum in signals.read():
                if on_signal is not None:
                    on_signal(signum)
        if sock.fileno() in ready:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                break
            emit(data)
        if reading_stdin and stdin_fd in ready:
            try:
                data = os.read(stdin_fd, 65536)
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    continue
                data = b""
            if not data:
                reading_stdin = False
                stream.close_write()
                continue
            if tty and detach_keys:
                for b in data:
                    if b == detach_keys[matched]:
                        matched += 1
                        if matched == len(detach_keys):
                            detached_at = time.monotonic()
                            matched = 0
                    else:
                        matched = 1 if b == detach_keys[0] else 0
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                reading_stdin = False
    return detached_at is not None
