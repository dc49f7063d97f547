"""A small Docker Engine API client: HTTP/1.1 over a unix (or TCP) socket.

http.client costs ~20 ms to import here, more than a whole docker round trip, and cannot hand
over its socket cleanly after a ``101 Switching Protocols``; attach and exec need exactly that.
So this speaks the little HTTP the API needs by hand: keep-alive, Content-Length, chunked
bodies, streamed responses, and the hijack used by attach/exec. Docker's multiplexed stdout/
stderr framing (stdcopy) is decoded by :class:`StdDemux`.
"""

from __future__ import annotations

import os
# The C module directly: the socket.py wrapper costs ~5 ms of enum set-up at start.
import _socket as socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs start-up time
    from typing import Any, Iterator

from silobox import API_VERSION, __version__

DEFAULT_SOCKET = "/run/silobox/silod.sock"
DEFAULT_HOST = "unix://" + DEFAULT_SOCKET
USER_AGENT = f"silo/{__version__}"

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW_STREAM = "application/vnd.docker.raw-stream"
EXEC_STREAM = "application/vnd.silobox.exec-stream"   # stdcopy frames + an exit-status frame
EXIT_STATUS_FRAME = 0x80


class APIError(Exception):
    """The daemon answered with an error status; ``message`` is its ``{"message": …}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"Error response from daemon: {self.message}"


class ConnectError(Exception):
    """The daemon cannot be reached (and could not be started)."""

    def __init__(self, host: str, detail: str = "") -> None:
        super().__init__(host)
        self.host = host
        self.detail = detail

    def __str__(self) -> str:
        msg = f"Cannot connect to the silobox daemon at {self.host}. Is silod running?"
        return f"{msg}\n{self.detail}" if self.detail else msg


class ProtocolError(Exception):
    """The daemon's answer is not the HTTP we expect."""


def parse_host(host: str) -> tuple[int, Any, str]:
    """``unix:///path``, ``/path`` or ``tcp://h:p`` → (family, address, canonical host string)."""
    if host.startswith("unix://"):
        path = host[len("unix://"):]
        return socket.AF_UNIX, path, host
    if host.startswith("/"):
        return socket.AF_UNIX, host, "unix://" + host
    if host.startswith(("tcp://", "http://")):
        rest = host.split("://", 1)[1].rstrip("/")
        hostname, _, port = rest.rpartition(":")
        if not hostname:
            hostname, port = rest, "2375"
        hostname = hostname.strip("[]")
        family = socket.AF_INET6 if ":" in hostname else socket.AF_INET
        return family, (hostname, int(port)), host
    raise ValueError(f"unsupported host {host!r}: use unix:///path or tcp://host:port")


_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def quote(value: str, safe: str = "") -> str:
    """Percent-encode like urllib.parse.quote without importing urllib."""
    ok = _SAFE | frozenset(safe.encode())
    return "".join(chr(b) if b in ok else f"%{b:02X}" for b in value.encode())


def query_string(params: dict[str, Any] | None) -> str:
    """Encode query parameters; ``None`` is left out, booleans become 1/0 as docker sends them."""
    if not params:
        return ""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "1" if value else "0"
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            parts.append(f"{quote(str(key))}={quote(str(v))}")
    return ("?" + "&".join(parts)) if parts else ""


class Connection:
    """One socket to the daemon with its own read buffer, reusable for sequential requests."""

    def __init__(self, family: int, address: Any) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.connect(address)
        except BaseException:
            self.sock.close()
            raise
        self.buf = bytearray()
        self.closed = False
        self.reusable = True
        self.used = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def readline(self) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > 1 << 20:
                raise ProtocolError("header line too long")
            if not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ProtocolError("connection closed in the middle of a response")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_some(self, limit: int = 65536) -> bytes:
        """Whatever is buffered or arrives next (b'' at EOF)."""
        if not self.buf and not self._fill():
            return b""
        data = bytes(self.buf[:limit])
        del self.buf[:limit]
        return data

    def send_request(self, method: str, path: str, body: bytes | None = None,
                     headers: dict[str, str] | None = None) -> None:
        self.used = True
        lines = [f"{method} {path} HTTP/1.1", "Host: docker", f"User-Agent: {USER_AGENT}"]
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
            hdrs["Content-Length"] = str(len(body))
        elif method in ("POST", "PUT"):
            hdrs["Content-Length"] = "0"
        lines.extend(f"{k}: {v}" for k, v in hdrs.items())
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.sock.sendall(head + body if body and len(body) < 65536 else head)
        if body and len(body) >= 65536:
            self.sock.sendall(body)

    def read_response(self, method: str = "GET") -> "Response":
        line = self.readline()
        if not line:
            raise ConnectionResetError("the daemon closed the connection")
        try:
            version, status_s, *reason = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            status = int(status_s)
        except ValueError:
            raise ProtocolError(f"bad status line {line!r}") from None
        if not version.startswith("HTTP/"):
            raise ProtocolError(f"bad status line {line!r}")
        headers: dict[str, str] = {}
        while True:
            h = self.readline()
            if h in (b"\r\n", b"\n"):
                break
            if not h:
                raise ProtocolError("connection closed in the response headers")
            k, _, v = h.decode("latin-1").partition(":")
            key = k.strip().lower()
            val = v.strip()
            headers[key] = f"{headers[key]}, {val}" if key in headers else val
        return Response(self, method, status, reason[0] if reason else "", headers, version)


class Response:
    """A response whose body is read on demand, so log and event streams are not buffered."""

    def __init__(self, conn: Connection, method: str, status: int, reason: str,
                 headers: dict[str, str], version: str) -> None:
        self.conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.done = False
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._chunk_left = 0
        self._length: int | None = None
        if status in (101, 204, 304) or 100 <= status < 200 or method == "HEAD":
            self._length = 0
        elif not self._chunked and "content-length" in headers:
            self._length = int(headers["content-length"])
        connection = headers.get("connection", "").lower()
        if "close" in connection or version == "HTTP/1.0" or \
                (self._length is None and not self._chunked):
            conn.reusable = False
        if self._length == 0 and status != 101:
            self.done = True

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def read_some(self) -> bytes:
        """The next piece of the body, b'' at its end."""
        if self.done:
            return b""
        c = self.conn
        if self._chunked:
            if self._chunk_left == 0:
                size_line = c.readline()
                if not size_line:
                    raise ProtocolError("connection closed in a chunked body")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while c.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    self.done = True
                    return b""
                self._chunk_left = size
            data = c.read_some(self._chunk_left)
            if not data:
                raise ProtocolError("connection closed in a chunked body")
            self._chunk_left -= len(data)
            if self._chunk_left == 0:
                c.read_exact(2)
            return data
        if self._length is not None:
            if self._length == 0:
                self.done = True
                return b""
            data = c.read_some(self._length)
            if not data:
                raise ProtocolError("connection closed in the middle of a response")
            self._length -= len(data)
            if self._length == 0:
                self.done = True
            return data
        data = c.read_some()
        if not data:
            self.done = True
        return data

    def read(self) -> bytes:
        """The whole remaining body."""
        parts: list[bytes] = []
        while True:
            d = self.read_some()
            if not d:
                return b"".join(parts)
            parts.append(d)

    def iter_lines(self) -> Iterator[bytes]:
        """Newline-delimited pieces of a streamed body (JSON message streams)."""
        pending = b""
        while True:
            d = self.read_some()
            if not d:
                if pending.strip():
                    yield pending
                return
            pending += d
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield line

    def json(self) -> Any:
        import json

        data = self.read()
        return json.loads(data) if data.strip() else None


def error_message(status: int, body: bytes) -> str:
    """Docker errors are ``{"message": …}``; anything else is shown as text."""
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        import json

        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and "message" in doc:
            return str(doc["message"])
    return text or f"HTTP {status}"


class Hijacked:
    """The raw, bidirectional stream left once the daemon switched protocols (attach, exec)."""

    def __init__(self, conn: Connection, content_type: str,
                 headers: dict[str, str] | None = None) -> None:
        self.sock = conn.sock
        self.headers = headers or {}
        self.pending = bytes(conn.buf)  # bytes that arrived with the 101 headers
        conn.buf.clear()
        self.content_type = content_type
        self._conn = conn

    def recv(self, n: int = 65536) -> bytes:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        return self.sock.recv(n)

    def close_write(self) -> None:
        """Half-close: the container sees EOF on stdin while output keeps flowing."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._conn.close()


class StdDemux:
    """Incremental decoder of docker's stdcopy frames: [stream, 0, 0, 0, size(be32)] + payload.

    Stream 0 is stdin (echoed), 1 stdout, 2 stderr, 3 a system error from the daemon.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        b = self._buf
        pos = 0
        while len(b) - pos >= 8:
            stream = b[pos]
            size = int.from_bytes(b[pos + 4:pos + 8], "big")
            if len(b) - pos - 8 < size:
                break
            out.append((stream, bytes(b[pos + 8:pos + 8 + size])))
            pos += 8 + size
        del b[:pos]
        return out

    @property
    def leftover(self) -> bytes:
        return bytes(self._buf)


def demux_all(data: bytes) -> list[tuple[int, bytes]]:
    """Decode a complete multiplexed buffer (pure helper for tests and small outputs)."""
    d = StdDemux()
    frames = d.feed(data)
    if d.leftover:
        raise ProtocolError("truncated stdcopy frame")
    return frames


class Client:
    """The API as used by one ``silo`` invocation: one keep-alive connection, plus extra ones
    only where the protocol needs them (a hijacked attach, a pending wait)."""

    def __init__(self, host: str | None = None, debug: bool = False,
                 autostart: bool = True) -> None:
        self.host = host or DEFAULT_HOST
        self.family, self.address, self.display = parse_host(self.host)
        self.debug = debug
        self.autostart = autostart
        self.prefix = f"/v{API_VERSION}"
        self._idle: Connection | None = None
        self._started = False

    # -- connections
    def connect(self) -> Connection:
        """A fresh connection; starts silod first when the default socket has nobody behind it."""
        try:
            return Connection(self.family, self.address)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            if self.family != socket.AF_UNIX or not self.autostart or self._started:
                raise ConnectError(self.display) from e
            from silobox.cli import daemon

            self._started = True
            if not daemon.may_autostart(self.address, self.address == DEFAULT_SOCKET):
                raise ConnectError(self.display) from e
            try:
                daemon.start(self.address, debug=self.debug)
            except daemon.StartError as se:
                raise ConnectError(self.display, f"starting silod failed: {se}") from None
            try:
                return Connection(self.family, self.address)
            except OSError as e2:
                raise ConnectError(self.display) from e2
        except PermissionError as e:
            raise ConnectError(self.display, f"permission denied on {self.address}") from e
        except OSError as e:
            raise ConnectError(self.display, str(e)) from e

    def _take(self) -> Connection:
        conn, self._idle = self._idle, None
        return conn if conn is not None else self.connect()

    def _release(self, conn: Connection) -> None:
        if conn.reusable and not conn.closed and self._idle is None:
            self._idle = conn
        elif conn is not self._idle:
            conn.close()

    def close(self) -> None:
        if self._idle:
            self._idle.close()
            self._idle = None

    def url(self, path: str, params: dict[str, Any] | None = None) -> str:
        return self.prefix + path + query_string(params)

    def log_request(self, method: str, url: str) -> None:
        if self.debug:
            sys.stderr.write(f"silo: {method} {url}\n")

    # -- requests
    def send(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: Any = None, headers: dict[str, str] | None = None,
             conn: Connection | None = None, raw: bytes | None = None) -> Response:
        """Send one request and return its response with headers read and body pending.

        A reused keep-alive connection the daemon closed meanwhile is retried once on a new one.
        """
        url = self.url(path, params)
        self.log_request(method, url)
        data = raw
        if body is not None:
            import json

            data = json.dumps(body, separators=(",", ":")).encode()
        own = conn is None
        c = self._take() if own else conn
        assert c is not None
        reused = c.used
        try:
            c.send_request(method, url, data, headers)
            return c.read_response(method)
        except (BrokenPipeError, ConnectionResetError) as e:
            c.close()
            if not (own and reused):
                raise ConnectError(self.display, f"the daemon closed the connection: {e}") from e
            c = self.connect()
            c.send_request(method, url, data, headers)
            return c.read_response(method)

    def upload(self, method: str, path: str, params: dict[str, Any] | None, body: Any,
               size: int | None, headers: dict[str, str] | None = None) -> Response:
        """Send ``body`` (a binary file) as an ``application/x-tar`` request body without
        holding it in memory: ``size`` bytes with a Content-Length, or with ``size`` None
        chunked as it is read (stdin, a pipe). Raises :class:`APIError` for 4xx/5xx; the
        response stream is left to the caller. Build contexts, ``load`` and ``import`` use it."""
        conn = self.connect()
        url = self.url(path, params)
        self.log_request(method, url)
        head = f"{method} {url} HTTP/1.1\r\nHost: docker\r\nUser-Agent: silo\r\n" \
               "Content-Type: application/x-tar\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        if size is None:
            conn.sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode("latin-1"))
            while True:
                chunk = body.read1(1 << 20) if hasattr(body, "read1") else body.read(1 << 20)
                if not chunk:
                    break
                conn.sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            conn.sock.sendall(b"0\r\n\r\n")
        else:
            conn.sock.sendall((head + f"Content-Length: {size}\r\n\r\n").encode("latin-1"))
            while chunk := body.read(1 << 20):
                conn.sock.sendall(chunk)
        resp = conn.read_response(method)
        if resp.status >= 400:
            data = resp.read()
            resp.conn.close()
            raise APIError(resp.status, error_message(resp.status, data))
        return resp

    def request(self, method: str, path: str, params: dict[str, Any] | None = None,
                body: Any = None, headers: dict[str, str] | None = None,
                raw: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
        """A complete request; raises :class:`APIError` for 4xx/5xx."""
        resp = self.send(method, path, params, body, headers, raw=raw)
        data = resp.read()
        self._release(resp.conn)
        if resp.status >= 400:
            raise APIError(resp.status, error_message(resp.status, data))
        return resp.status, data, resp.headers

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: Any = None) -> Any:
        """A request whose answer is JSON (or empty → None)."""
        _, data, _ = self.request(method, path, params, body)
        if not data.strip():
            return None
        import json

        return json.loads(data)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.call("GET", path, params)

    def post(self, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        return self.call("POST", path, params, body)

    def stream(self, method: str, path: str, params: dict[str, Any] | None = None,
               body: Any = None, own_connection: bool = False,
               headers: dict[str, str] | None = None, raw: bytes | None = None) -> Response:
        """A request whose body the caller reads incrementally (logs -f, stats, waits).

        With ``own_connection`` it uses a connection of its own, leaving the keep-alive one free.
        """
        conn = self.connect() if own_connection else None
        resp = self.send(method, path, params, body, headers, conn=conn, raw=raw)
        if resp.status >= 400:
            data = resp.read()
            resp.conn.close()
            raise APIError(resp.status, error_message(resp.status, data))
        return resp

    def finish(self, resp: Response) -> None:
        """Hand a fully read streamed response's connection back for reuse."""
        if resp.done:
            self._release(resp.conn)
        else:
            resp.conn.close()

    def hijack(self, method: str, path: str, params: dict[str, Any] | None = None,
               body: Any = None, created: bool = False) -> Any:
        """Upgrade a request (attach, exec start) to a raw stream; the connection is consumed.

        ``created``: a 201 is an answer too (a daemon that ignored silod's ``exec?start=1``
        created the exec only); its JSON is returned instead of a stream."""
        headers = {"Connection": "Upgrade", "Upgrade": "tcp"}
        resp = self.send(method, path, params, body, headers)
        if resp.status >= 400 or (created and resp.status == 201):
            data = resp.read()
            resp.conn.close()
            if resp.status == 201:
                import json

                return json.loads(data)
            raise APIError(resp.status, error_message(resp.status, data))
        if resp.status not in (101, 200):
            resp.conn.close()
            raise ProtocolError(f"unable to upgrade to tcp, received {resp.status}")
        return Hijacked(resp.conn, resp.content_type, resp.headers)


def default_host() -> str:
    """SILOBOX_HOST, else DOCKER_HOST (tools that drive any docker-compatible CLI set only that),
    else silod's default socket."""
    return os.environ.get("SILOBOX_HOST") or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
