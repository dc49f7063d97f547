"""Docker's stream formats: the 8-byte stdcopy frames and the hijacked attach/exec connection.

A hijack turns an HTTP request into a bidirectional byte stream, as moby's attach and exec-start
routes do: the client's further bytes are the process's stdin and the response body carries its
output, framed with an 8-byte header per chunk unless the process has a tty.

aiohttp has no public hijack. We take the connection's inbound bytes through the protocol's
parser hook (``set_parser``, the way ``WebSocketResponse`` reads frames), which also receives
bytes the client sent in the same packet as the request because ``server.py`` installs a request
parser that treats ``Upgrade: tcp`` as a protocol switch. Output goes through the response writer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import socket
import struct
import termios
from typing import Any, Awaitable, Callable

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from silobox.api.backend import STDERR, STDIN, STDOUT, StreamSession
from silobox.errors import InvalidArgument, SiloboxError

log = logging.getLogger("silobox.api")

MEDIA_RAW = "application/vnd.docker.raw-stream"
MEDIA_MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
MULTIPLEXED_MEDIA_SINCE = (1, 42)
"""Before API 1.42 a multiplexed stream was still labelled raw-stream."""

SYSTEMERR = 3
"""stdcopy's fourth stream: an error from the daemon, shown by Docker's clients as such."""

MEDIA_EXEC_RUN = "application/vnd.silobox.exec-stream"
"""silobox's one-request exec (``POST /containers/{id}/exec?start=1``): stdcopy frames for
output whether or not the process has a tty, ended by one ``EXIT_STATUS`` frame."""
EXIT_STATUS = 0x80
"""A frame only that stream carries: ``{"Id": ..., "ExitCode": ...}`` once the process ended."""

_HEADER = struct.Struct(">BxxxL")
_MAX_FRAME = 2**32 - 1

DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p, ctrl-q

HIJACKED_KEY = web.RequestKey("hijacked", bool)
"""Set on a request whose connection was taken over: any response on it must close it."""

CLIENT_GONE = (ConnectionResetError, BrokenPipeError, ClientConnectionResetError)


# --- stdcopy ---------------------------------------------------------------------------------

def frame(stream: int, data: bytes) -> bytes:
    """One stdcopy frame: stream id, three zero bytes, big-endian payload length, payload."""
    if stream not in (STDIN, STDOUT, STDERR, SYSTEMERR, EXIT_STATUS):
        raise ValueError(f"unknown stream {stream}")
    if len(data) > _MAX_FRAME:
        raise ValueError("frame payload longer than 4 GiB")
    return _HEADER.pack(stream, len(data)) + data


def read_frames(buffer: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split complete stdcopy frames off ``buffer``; returns (frames, incomplete remainder)."""
    frames: list[tuple[int, bytes]] = []
    offset = 0
    while len(buffer) - offset >= _HEADER.size:
        stream, size = _HEADER.unpack_from(buffer, offset)
        end = offset + _HEADER.size + size
        if end > len(buffer):
            break
        frames.append((stream, bytes(buffer[offset + _HEADER.size:end])))
        offset = end
    return frames, bytes(buffer[offset:])


def stream_media_type(tty: bool, api_version: tuple[int, ...]) -> str:
    """Content type of an attach/exec/logs stream for this client."""
    if not tty and api_version >= MULTIPLEXED_MEDIA_SINCE:
        return MEDIA_MULTIPLEXED
    return MEDIA_RAW


# --- detach keys -----------------------------------------------------------------------------

_CTRL_NAMES = ["ctrl-@"] + [f"ctrl-{chr(c)}" for c in range(ord("a"), ord("z") + 1)] + [
    "ctrl-[", "ctrl-\\", "ctrl-]", "ctrl-^", "ctrl-_"]
_CTRL_CODES = {name: code for code, name in enumerate(_CTRL_NAMES)}


def parse_detach_keys(spec: str | None) -> bytes:
    """Docker's detach-key syntax (``ctrl-p,ctrl-q``, ``a``, ``DEL``) to the bytes to watch for.

    Empty means the default, ctrl-p ctrl-q.
    """
    if not spec:
        return DEFAULT_DETACH_KEYS
    codes = bytearray()
    for key in spec.split(","):
        if len(key) == 1 and key.isascii():
            codes.append(ord(key))
        elif key in _CTRL_CODES:
            codes.append(_CTRL_CODES[key])
        elif key == "DEL":
            codes.append(127)
        else:
            raise InvalidArgument(f"Invalid detach keys ({spec}) provided")
    return bytes(codes)


class DetachScanner:
    """Watches stdin for the detach sequence, holding back a partial match until it resolves.

    Bytes that turn out not to be the sequence are passed on unchanged; the sequence itself
    never reaches the process.
    """

    def __init__(self, keys: bytes) -> None:
        if not keys:
            raise ValueError("empty detach sequence")
        self._keys = keys
        self._pending = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """→ (bytes to forward now, whether the full sequence was typed)."""
        out = bytearray()
        keys = self._keys
        for byte in data:
            candidate = self._pending + bytes((byte,))
            if keys.startswith(candidate):
                if len(candidate) == len(keys):
                    self._pending = b""
                    return bytes(out), True
                self._pending = candidate
                continue
            # Keep the longest tail of the candidate that can still start the sequence.
            keep = next(n for n in range(len(candidate) - 1, -1, -1)
                        if keys.startswith(candidate[len(candidate) - n:]))
            out += candidate[:len(candidate) - keep]
            self._pending = candidate[len(candidate) - keep:] if keep else b""
        return bytes(out), False

    def flush(self) -> bytes:
        """Bytes held back for a partial match (to send when stdin ends)."""
        pending, self._pending = self._pending, b""
        return pending


# --- the client's side of a hijacked connection ------------------------------------------------

class StdinFeed:
    """Receives the client's bytes once the connection is hijacked (aiohttp's parser hook).

    Reading pauses the transport when the process does not keep up, so a fast client cannot
    grow the daemon's memory.
    """

    HIGH_WATER = 256 * 1024
    LOW_WATER = 64 * 1024

    def __init__(self, transport: asyncio.BaseTransport | None) -> None:
        self._transport = transport
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    # Parser interface used by aiohttp's RequestHandler.data_received / connection_lost.
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if data and not self._eof:
            self._chunks.append(bytes(data))
            self._size += len(data)
            if self._size > self.HIGH_WATER and not self._paused:
                self._set_reading(False)
            self._wake()
        return False, b""

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    async def read(self) -> bytes | None:
        """Everything received so far, waiting for some; None once the client stopped sending."""
        while not self._chunks:
            if self._eof:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        if self._paused:
            self._set_reading(True)
        return data

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _set_reading(self, on: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(AttributeError, NotImplementedError, RuntimeError):
            if on:
                transport.resume_reading()  # type: ignore[attr-defined]
            else:
                transport.pause_reading()  # type: ignore[attr-defined]
            self._paused = not on


class RawStreamResponse(web.StreamResponse):
    """A 200 whose body is the raw connection: no Content-Length, no chunking, closed at the end.

    That is what moby answers to an attach without ``Upgrade``; clients read until EOF.
    """

    _length_check = False


class Hijack:
    """Takes over a request's connection for an attach or exec stream.

    Create it as soon as the request body has been read, before asking the backend for the
    session: from then on the client's bytes are buffered for stdin instead of being parsed as
    HTTP. If the backend refuses, the route answers with an ordinary error response, which
    closes the connection.
    """

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.feed = StdinFeed(request.transport)
        request[HIJACKED_KEY] = True
        protocol: Any = request.protocol
        protocol.set_parser(self.feed)
        if getattr(protocol, "peer_eof", False):
            self.feed.feed_eof()

    @property
    def upgrade(self) -> bool:
        """Whether the client asked to upgrade (moby checks only that the header is present)."""
        return "Upgrade" in self._request.headers

    async def run(self, session: StreamSession, *, detach_keys: bytes,
                  api_version: tuple[int, ...],
                  trailer: Callable[[], Awaitable[bytes | None]] | None = None,
                  headers: dict[str, str] | None = None) -> web.StreamResponse:
        """Answer 101 (or 200 without Upgrade) and pump both directions until the stream ends.

        The stream ends when the process's output ends, when the client types the detach
        sequence (tty sessions only, as in Docker) or when the client goes away. The session is
        closed in every case.

        ``trailer``: silobox's one-request exec: output is framed even with a tty
        (``MEDIA_EXEC_RUN``) and, once the output has ended, the frame ``trailer()`` returns
        (if any) is the stream's last.
        """
        request = self._request
        framed = trailer is not None
        if self.upgrade:
            response: web.StreamResponse = web.StreamResponse(status=101, reason="UPGRADED")
            response.headers["Content-Type"] = MEDIA_EXEC_RUN if framed else \
                stream_media_type(session.tty, api_version)
            response.headers["Connection"] = "Upgrade"
            response.headers["Upgrade"] = "tcp"
        else:
            response = RawStreamResponse(status=200)
            response.headers["Content-Type"] = MEDIA_EXEC_RUN if framed else MEDIA_RAW
        response.headers.update(headers or {})
        response.force_close()
        tasks: list[asyncio.Task[Any]] = []
        try:
            await response.prepare(request)
            detached = asyncio.Event()
            scanner = DetachScanner(detach_keys) if session.tty and detach_keys else None
            tasks = [
                asyncio.create_task(_copy_output(session, response, request.transport,
                                                 framed)),
                asyncio.create_task(detached.wait()),
                asyncio.create_task(_copy_stdin(self.feed, session, scanner, detached)),
            ]
            await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
            if detached.is_set():
                log.debug("%s: client detached", request.path)
            elif trailer is not None and tasks[0].done() and (last := await trailer()) is not None:
                await response.write(last)
        except CLIENT_GONE:
            log.debug("%s: client went away", request.path)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await _close_quietly(session)
        return response


async def _copy_output(session: StreamSession, response: web.StreamResponse,
                       transport: asyncio.BaseTransport | None, framed: bool = False) -> None:
    """Process output → client, framed unless tty, until the output ends or the client leaves."""
    tty = session.tty and not framed
    first = True
    try:
        while True:
            chunk = await session.read()
            if chunk is None:
                return
            stream, data = chunk
            if data:
                if first:
                    first = False
                    await wait_until_peer_read(transport)
                await response.write(data if tty else frame(stream, data))
    except CLIENT_GONE:
        return
    except SiloboxError as exc:
        log.debug("stream output failed: %s", exc)
        await report_in_band(response, tty, exc.message)
    except Exception as exc:  # a bug below us: keep the daemon up, tell the client
        log.error("stream output failed", exc_info=exc)
        await report_in_band(response, tty, str(exc) or type(exc).__name__)


async def _copy_stdin(feed: StdinFeed, session: StreamSession, scanner: DetachScanner | None,
                      detached: asyncio.Event) -> None:
    """Client → process stdin. EOF from the client half-closes stdin; output keeps flowing."""
    try:
        while True:
            data = await feed.read()
            if data is None:
                if scanner is not None and (rest := scanner.flush()):
                    await session.write(rest)
                await session.close_stdin()
                return
            if scanner is not None:
                data, detach = scanner.feed(data)
                if data:
                    await session.write(data)
                if detach:
                    detached.set()
                    return
            else:
                await session.write(data)
    except SiloboxError as exc:
        # The process may have exited or closed its stdin; its output still matters.
        log.debug("stream input stopped: %s", exc)
    except Exception as exc:  # a bug below us: stop reading stdin, keep the output flowing
        log.error("stream input failed", exc_info=exc)


HEADERS_READ_TIMEOUT = 0.25


async def wait_until_peer_read(transport: asyncio.BaseTransport | None,
                               timeout: float = HEADERS_READ_TIMEOUT) -> None:
    """Wait (briefly) until the client has read everything sent so far, i.e. the 101 headers.

    docker-py reads the status line through a buffered file and then reads the stream from the
    raw socket: output that arrived together with the headers would be swallowed by that
    buffer. On a unix socket, SIOCOUTQ counts the bytes the peer has not consumed yet.
    """
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            unread = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                                    b"\0\0\0\0"))[0]
        except OSError:
            return
        if unread == 0:
            return
        await asyncio.sleep(0.001)


async def report_in_band(response: web.StreamResponse, tty: bool, message: str) -> None:
    """After the status line is out an error can only travel in the stream itself."""
    data = message.encode("utf-8", "replace") + b"\r\n"
    with contextlib.suppress(*CLIENT_GONE):
        await response.write(data if tty else frame(SYSTEMERR, data))


async def _close_quietly(session: StreamSession) -> None:
    try:
        await session.close()
    except Exception as exc:  # closing must not turn a finished stream into an error
        log.debug("closing stream session failed: %s", exc)
