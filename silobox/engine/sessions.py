"""Attached stdio sessions handed to the API layer (``api.backend.StreamSession``)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable

from silobox.compute.shimclient import ShimStream

STDOUT, STDERR = 1, 2


class AttachSession:
    """``docker attach`` to a container's init: may be opened before the container starts.

    Before Start the session is pending: stdin typed by the client is buffered and replayed once
    the shim exists, so nothing the process writes or reads is lost (HCS Create then Start).
    """

    def __init__(self, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
        self.tty = tty
        self.stdin = stdin
        self.want = {STDOUT: stdout, STDERR: stderr}
        self._preloaded: list[tuple[int, bytes]] = []
        self._stream: ShimStream | None = None
        self._ready = asyncio.Event()
        self._ended = False
        self._stdin_buf: list[bytes] = []
        self._stdin_closed = False

    async def preload(self, it: AsyncIterator[tuple[int, bytes]]) -> None:
        async for item in it:
            self._preloaded.append(item)

    async def bind_system(self, system: Any) -> None:
        self._stream = await system.attach(self.stdin)
        for data in self._stdin_buf:
            await self._stream.write(data)
        self._stdin_buf.clear()
        if self._stdin_closed:
            await self._stream.close_stdin()
        self._ready.set()

    def finish(self) -> None:
        self._ended = True
        self._ready.set()

    async def read(self) -> tuple[int, bytes] | None:
        if self._preloaded:
            return self._preloaded.pop(0)
        await self._ready.wait()
        if self._stream is None:
            return None
        while True:
            item = await self._stream.read()
            if item is None:
                return None
            if self.want.get(item[0], True):
                return item

    async def write(self, data: bytes) -> None:
        if not self.stdin:
            return
        if self._stream is None:
            self._stdin_buf.append(data)
        else:
            await self._stream.write(data)

    async def close_stdin(self) -> None:
        if self._stream is None:
            self._stdin_closed = True
        elif self.stdin:
            await self._stream.close_stdin()

    async def close(self) -> None:
        self.finish()
        if self._stream is not None:
            await self._stream.close()


class ExecSession:
    """The stdio of an exec process; records its exit code when its output ends."""

    def __init__(self, proc: Any, record: dict[str, Any], tty: bool, stdin: bool,
                 on_exit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.proc = proc
        self.record = record
        self.tty = tty
        self.stdin = stdin
        self.on_exit = on_exit    # called once, with the record, when the exit code is known

    def _finished(self) -> None:
        exit_rec = self.proc.stream.exit
        self.record["Running"] = False
        if self.record["ExitCode"] is None:
            self.record["ExitCode"] = exit_rec.get("ExitCode", 126) if exit_rec else 126
        on_exit, self.on_exit = self.on_exit, None
        if on_exit is not None:
            on_exit(self.record)

    async def read(self) -> tuple[int, bytes] | None:
        item = await self.proc.stream.read()
        if item is None:
            self._finished()
        return item

    async def write(self, data: bytes) -> None:
        if self.stdin:
            await self.proc.stream.write(data)

    async def close_stdin(self) -> None:
        if self.stdin:
            await self.proc.stream.close_stdin()

    async def close(self) -> None:
        # Detaching does not stop the process: keep draining to learn its exit code.
        asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        while await self.read() is not None:
            pass


class FailedExecStart:
    """An exec whose process could not start: its stream carries dockerd's in-band report
    (the error on stdout, CRLF-terminated) and ends; the exit code is on the record."""

    def __init__(self, message: str, tty: bool) -> None:
        self.tty = tty
        self.stdin = False
        self._pending: list[tuple[int, bytes]] = [(STDOUT, (message + "\r\n").encode())]

    async def read(self) -> tuple[int, bytes] | None:
        return self._pending.pop(0) if self._pending else None

    async def write(self, data: bytes) -> None:
        pass

    async def close_stdin(self) -> None:
        pass

    async def close(self) -> None:
        self._pending.clear()
