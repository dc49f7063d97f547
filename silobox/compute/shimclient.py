"""silod's side of the shim protocol (see ``shim.py``): requests, waits and stdio streams."""

from __future__ import annotations

import asyncio
import json
import os
import struct

from silobox.errors import NotRunning, SystemFailure

STDOUT, STDERR, EXIT = 1, 2, 3
_HEADER = struct.Struct(">BxxxI")


class ShimStream:
    """A stdio stream of the init or an exec process, relayed by the shim."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.exit: dict | None = None

    async def read(self) -> tuple[int, bytes] | None:
        """Next (stream, data); None at the end. The exit record is kept in ``self.exit``."""
        while True:
            try:
                header = await self.reader.readexactly(8)
                stream, size = _HEADER.unpack(header)
                data = await self.reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if stream == EXIT:
                try:
                    self.exit = json.loads(data)
                except ValueError:
                    self.exit = None
                continue
            return stream, data

    async def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError:
            pass

    async def close_stdin(self) -> None:
        if not self.writer.is_closing() and self.writer.can_write_eof():
            try:
                self.writer.write_eof()
            except OSError:
                pass

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


class ShimClient:
    def __init__(self, state_dir: str, object_id: str = "") -> None:
        self.state_dir = state_dir
        self.sock_path = os.path.join(state_dir, "shim.sock")
        self.object_id = object_id

    def alive(self) -> bool:
        return os.path.exists(self.sock_path)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(self.sock_path, limit=1 << 20)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise NotRunning(f"container {self.object_id[:12]} is not running",
                             object_id=self.object_id, cause=e) from None

    async def request(self, req: dict, timeout: float = 15.0) -> dict:
        reader, writer = await self._open()
        try:
            writer.write((json.dumps(req) + "\n").encode())
            async with asyncio.timeout(timeout):
                line = await reader.readline()
        except TimeoutError:
            raise SystemFailure(f"the shim did not answer {req.get('op')!r}",
                                object_id=self.object_id) from None
        finally:
            writer.close()
        if not line:
            raise NotRunning(f"container {self.object_id[:12]} is not running",
                             object_id=self.object_id)
        return json.loads(line)

    async def stream(self, req: dict) -> tuple[dict, ShimStream]:
        """Open an attach or exec stream; returns the shim's answer and the stream."""
        reader, writer = await self._open()
        writer.write((json.dumps(req) + "\n").encode())
        line = await reader.readline()
        if not line:
            writer.close()
            raise NotRunning(f"container {self.object_id[:12]} is not running",
                             object_id=self.object_id)
        return json.loads(line), ShimStream(reader, writer)

    async def wait(self) -> dict | None:
        """Block until the init exits; None if the shim went away without saying."""
        try:
            reader, writer = await self._open()
        except NotRunning:
            return None
        try:
            writer.write(b'{"op": "wait"}\n')
            line = await reader.readline()
        except ConnectionError:
            line = b""
        finally:
            writer.close()
        if not line:
            return None
        try:
            return json.loads(line)
        except ValueError:
            return None
