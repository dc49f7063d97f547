"""Request bodies and archives between the event loop and worker threads.

Blocking work (layer extraction, archive writing) runs in executor threads; request bodies
arrive as async chunk iterators. These adapters let each side read the other's chunks.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Iterator

Progress = Callable[[dict[str, Any]], None]
_BATCH = 256 * 1024


class _Buffered:
    """A read() over chunks from ``_next()``; consumed bytes are dropped once per new chunk, so
    many small reads of a large chunk cost no repeated copying."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    def _next(self) -> bytes:
        raise NotImplementedError

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._buf) - self._pos < size):
            chunk = self._next()
            if not chunk:
                self._eof = True
                break
            if self._pos:
                del self._buf[:self._pos]
                self._pos = 0
            self._buf += chunk
        end = len(self._buf) if size < 0 else min(len(self._buf), self._pos + size)
        data = bytes(self._buf[self._pos:end])
        self._pos = end
        return data


class ThreadReader(_Buffered):
    """A blocking ``read()`` over an async chunk iterator, for code running in a worker thread."""

    def __init__(self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._chunks = chunks
        self._loop = loop

    def _next(self) -> bytes:
        async def step() -> bytes:
            try:
                return await self._chunks.__anext__()
            except StopAsyncIteration:
                return b""
        return asyncio.run_coroutine_threadsafe(step(), self._loop).result()


class IteratorReader(_Buffered):
    """A blocking ``read()`` over a sync chunk iterator (a tar being generated)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks

    def _next(self) -> bytes:
        for chunk in self._chunks:
            if chunk:
                return chunk
        return b""


async def iterate_in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Run a blocking generator in a worker thread, handing its output over in batches."""
    loop = asyncio.get_running_loop()

    def batch() -> bytes | None:
        out = bytearray()
        for chunk in chunks:
            out += chunk
            if len(out) >= _BATCH:
                break
        return bytes(out) if out else None

    while True:
        data = await loop.run_in_executor(None, batch)
        if data is None:
            return
        yield data


def threadsafe(progress: Progress | None,
                loop: asyncio.AbstractEventLoop) -> Callable[[dict[str, Any]], None]:
    if progress is None:
        return lambda _: None
    return lambda msg: loop.call_soon_threadsafe(progress, msg)
