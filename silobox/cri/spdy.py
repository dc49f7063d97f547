"""A server-side SPDY/3.1 session, the upgrade the kubelet's clients (crictl, kubectl through
the API server) use for exec, attach and port forwarding.

Only what those clients use: the peer opens streams (SYN_STREAM with a ``streamType`` header),
we accept each (SYN_REPLY), data flows both ways on them, a FIN half-closes; PINGs are echoed;
GOAWAY ends the session. Header blocks are zlib-compressed with SPDY/3's preset dictionary, one
compression context per direction for the session's life. The peer (Go's spdystream) does no
flow control, so neither do we. The session plugs into aiohttp as the connection's parser after
the 101 answer (``feed_data``/``feed_eof``) and writes to the connection's transport.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from typing import Any

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = \
    1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
MAX_FRAME = 1 << 24

# SPDY/3's header-compression dictionary: these header names and values, each preceded by its
# 32-bit big-endian length, then the literal text below (SPDY draft 3, section 2.6.10.1).
_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language "
    "accept-ranges age allow authorization cache-control connection content-base "
    "content-encoding content-language content-length content-location content-md5 "
    "content-range content-type date etag expect expires from host if-match if-modified-since "
    "if-none-match if-range if-unmodified-since last-modified location max-forwards pragma "
    "proxy-authenticate proxy-authorization range referer retry-after server te trailer "
    "transfer-encoding upgrade user-agent vary via warning www-authenticate method get status"
).split() + ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive",
             "origin"]
_TAIL = (
    b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502504"
    b"505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    b"401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    b"503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, "
    b"Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    b"application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    b"gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL


class ProtocolError(Exception):
    pass


class Stream:
    """One SPDY stream: what the peer sends arrives in ``read``; ``write``/``close`` send."""

    def __init__(self, session: Session, stream_id: int, headers: dict[str, str]) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.remote_closed = False
        self.local_closed = False

    def _feed(self, data: bytes) -> None:
        if data:
            self._queue.put_nowait(data)

    def _feed_eof(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            self._queue.put_nowait(b"")

    async def read(self) -> bytes:
        """The next piece of data; b'' once the peer half-closed (or the session ended)."""
        if self.remote_closed and self._queue.empty():
            return b""
        return await self._queue.get()

    def write(self, data: bytes) -> None:
        if self.local_closed or not data:
            return
        for i in range(0, len(data), 1 << 16):
            self.session._data(self.id, data[i:i + (1 << 16)], 0)

    def close(self) -> None:
        if not self.local_closed:
            self.local_closed = True
            self.session._data(self.id, b"", FLAG_FIN)


class Session:
    """The server side of one SPDY/3.1 connection."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(level=9, zdict=DICTIONARY)
        self._buf = bytearray()
        self.streams: dict[int, Stream] = {}
        self.new_streams: asyncio.Queue[Stream | None] = asyncio.Queue()
        self.closed = False
        self._last_id = 0

    # ----- aiohttp's parser interface ---------------------------------------------------------
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._buf += data
        try:
            self._parse()
        except (ProtocolError, zlib.error, struct.error):
            self.end()
        return False, b""

    def feed_eof(self) -> None:
        self._lost()

    # ----- frames in ------------------------------------------------------------------------
    def _headers(self, block: bytes) -> dict[str, str]:
        raw = self._inflate.decompress(block)
        if len(raw) < 4:
            raise ProtocolError("short header block")
        n, = struct.unpack_from(">I", raw, 0)
        pos, out = 4, {}
        for _ in range(n):
            ln, = struct.unpack_from(">I", raw, pos)
            name = raw[pos + 4:pos + 4 + ln].decode("latin-1")
            pos += 4 + ln
            lv, = struct.unpack_from(">I", raw, pos)
            out[name.lower()] = raw[pos + 4:pos + 4 + lv].decode("latin-1")
            pos += 4 + lv
        return out

    def _parse(self) -> None:
        buf = self._buf
        while len(buf) >= 8:
            length = int.from_bytes(buf[5:8], "big")
            if len(buf) < 8 + length:
                return
            head, payload = bytes(buf[:8]), bytes(buf[8:8 + length])
            del buf[:8 + length]
            flags = head[4]
            if not head[0] & 0x80:   # a data frame
                sid = int.from_bytes(head[:4], "big") & 0x7FFFFFFF
                stream = self.streams.get(sid)
                if stream is not None:
                    stream._feed(payload)
                    if flags & FLAG_FIN:
                        stream._feed_eof()
                continue
            version = int.from_bytes(head[:2], "big") & 0x7FFF
            kind = int.from_bytes(head[2:4], "big")
            if version != VERSION:
                raise ProtocolError(f"SPDY version {version}")
            if kind == SYN_STREAM:
                sid = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                stream = Stream(self, sid, self._headers(payload[10:]))
                self.streams[sid] = stream
                self._last_id = max(self._last_id, sid)
                if flags & FLAG_FIN:
                    stream._feed_eof()
                self.new_streams.put_nowait(stream)
            elif kind in (SYN_REPLY, HEADERS):
                self._headers(payload[4:])   # keeps the compression context in step
            elif kind == RST_STREAM:
                sid = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                stream = self.streams.get(sid)
                if stream is not None:
                    stream.local_closed = True
                    stream._feed_eof()
            elif kind == PING:
                self._write(head + payload)
            elif kind == GOAWAY:
                self._lost()
            # SETTINGS, WINDOW_UPDATE and unknown kinds need nothing from us

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        for s in self.streams.values():
            s._feed_eof()
        self.new_streams.put_nowait(None)

    # ----- frames out -----------------------------------------------------------------------
    def _write(self, frame: bytes) -> None:
        if not self.closed and not self.transport.is_closing():
            self.transport.write(frame)

    def _control(self, kind: int, flags: int, payload: bytes) -> None:
        self._write(struct.pack(">HHI", 0x8000 | VERSION, kind,
                                (flags << 24) | len(payload)) + payload)

    def _data(self, sid: int, data: bytes, flags: int) -> None:
        self._write(struct.pack(">II", sid, (flags << 24) | len(data)) + data)

    def reply(self, stream: Stream) -> None:
        """Accept a stream the peer opened (an empty header block)."""
        block = self._deflate.compress(struct.pack(">I", 0)) + self._deflate.flush(
            zlib.Z_SYNC_FLUSH)
        self._control(SYN_REPLY, 0, struct.pack(">I", stream.id) + block)

    def end(self) -> None:
        """GOAWAY, then close the connection."""
        if not self.closed:
            self._control(GOAWAY, 0, struct.pack(">II", self._last_id, 0))
        self._lost()
        if not self.transport.is_closing():
            self.transport.close()

    async def accept(self, timeout: float) -> Stream | None:
        """The next stream the peer opens, accepted; None when the session ended or the
        peer opened nothing within ``timeout``."""
        try:
            stream = await asyncio.wait_for(self.new_streams.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if stream is not None:
            self.reply(stream)
        return stream
