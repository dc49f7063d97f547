"""Container output in the CRI log format, at the path the kubelet chose.

The shim writes each container's json-file log; a ``LogCopier`` per started container follows
it through the engine (``container_logs``) and appends every record to the kubelet's file as
``<RFC 3339 nano time> <stdout|stderr> <F|P> <text>``: ``F`` ends a line, ``P`` is a piece of a
line that goes on in the next record. ``reopen()`` is ``ReopenContainerLog``: the kubelet renamed
the file to rotate it and wants a new one. After a silod restart the copier resumes after the
time of the last record the file holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from silobox.errors import SiloboxError
from silobox.timeutil import parse_iso

log = logging.getLogger("silod.cri")

STDERR = 2


def cri_line(stamp: str, stream: int, text: bytes) -> bytes:
    """One record of the CRI log format."""
    name = b"stderr" if stream == STDERR else b"stdout"
    if text.endswith(b"\n"):
        return stamp.encode() + b" " + name + b" F " + text
    return stamp.encode() + b" " + name + b" P " + text + b"\n"


def last_stamp(path: str) -> str:
    """The time of the last complete record in an existing CRI log, or ''."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read()
    except OSError:
        return ""
    for line in reversed(tail.splitlines()):
        stamp = line.split(b" ", 1)[0].decode(errors="replace")
        if parse_iso(stamp):
            return stamp
    return ""


class LogCopier:
    """Copies one container's output into its CRI log until the container's output ends."""

    def __init__(self, backend: Any, container_id: str, path: str) -> None:
        self.backend = backend
        self.container_id = container_id
        self.path = path
        self._fd: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Open the file now (the kubelet may read it as soon as the start returns), then copy."""
        self._open()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _open(self) -> None:
        os.makedirs(os.path.dirname(self.path) or "/", mode=0o755, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                           0o640)

    def reopen(self) -> None:
        old, self._fd = self._fd, None
        if old is not None:
            os.close(old)
        self._open()

    async def _run(self) -> None:
        since = last_stamp(self.path)
        skip_until = parse_iso(since) if since else 0.0
        try:
            _, chunks = await self.backend.container_logs(
                self.container_id, follow=True, timestamps=True, since=skip_until)
            async for stream, data in chunks:
                stamp, _, text = data.partition(b" ")
                if skip_until and parse_iso(stamp.decode(errors="replace")) <= skip_until:
                    continue   # written before the restart
                if self._fd is not None:
                    os.write(self._fd, cri_line(stamp.decode(errors="replace"), stream, text))
        except asyncio.CancelledError:
            raise
        except (SiloboxError, OSError) as e:
            log.warning("CRI log of %s into %s stopped: %s", self.container_id[:12], self.path, e)
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    async def wait(self, timeout: float) -> None:
        """Let the copy catch up with output already written (a container that just exited)."""
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                pass

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
