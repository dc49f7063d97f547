"""The CLI's HTTP client: stdcopy demultiplexing, body framing, keep-alive, hijack, errors.

A scripted fake server on a unix socket stands in for silod; no daemon is involved.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest

from silobox.cli.client import (APIError, Client, Connection, ConnectError, StdDemux, demux_all,
                                error_message, parse_host, query_string, quote)


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


# --------------------------------------------------------------------------- stdcopy

def test_demux_frames() -> None:
    data = frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"")
    assert demux_all(data) == [(1, b"out\n"), (2, b"err\n"), (1, b"")]


def test_demux_split_across_reads() -> None:
    data = frame(1, b"hello") + frame(2, b"x" * 70000) + frame(1, b"bye")
    d = StdDemux()
    got = []
    for i in range(0, len(data), 7):  # headers and payloads cut at arbitrary points
        got += d.feed(data[i:i + 7])
    assert got == [(1, b"hello"), (2, b"x" * 70000), (1, b"bye")]
    assert d.leftover == b""


def test_demux_keeps_partial_frame() -> None:
    d = StdDemux()
    assert d.feed(frame(1, b"abc")[:6]) == []
    assert d.leftover == frame(1, b"abc")[:6]
    with pytest.raises(Exception):
        demux_all(frame(1, b"abc")[:9])


# --------------------------------------------------------------------------- small helpers

def test_query_string() -> None:
    assert query_string(None) == ""
    assert query_string({"a": None}) == ""
    assert query_string({"all": True, "force": False, "t": 5}) == "?all=1&force=0&t=5"
    assert query_string({"filters": '{"name":["a b"]}'}) == \
        "?filters=%7B%22name%22%3A%5B%22a%20b%22%5D%7D"
    assert query_string({"changes": ["A", "B"]}) == "?changes=A&changes=B"


def test_quote() -> None:
    assert quote("web") == "web"
    assert quote("a/b:c", safe="/:@") == "a/b:c"
    assert quote("a/b") == "a%2Fb"
    assert quote("é") == "%C3%A9"


def test_parse_host() -> None:
    assert parse_host("unix:///run/x.sock")[1] == "/run/x.sock"
    assert parse_host("/run/x.sock")[2] == "unix:///run/x.sock"
    fam, addr, _ = parse_host("tcp://127.0.0.1:2375")
    assert fam == socket.AF_INET and addr == ("127.0.0.1", 2375)
    fam, addr, _ = parse_host("tcp://[::1]:2375")
    assert fam == socket.AF_INET6 and addr == ("::1", 2375)
    with pytest.raises(ValueError):
        parse_host("ssh://host")


def test_error_message() -> None:
    assert error_message(404, b'{"message":"No such container: x"}') == "No such container: x"
    assert error_message(500, b"plain text\n") == "plain text"
    assert error_message(502, b"") == "HTTP 502"
    assert str(APIError(404, "No such container: x")) == \
        "Error response from daemon: No such container: x"


# --------------------------------------------------------------------------- a scripted server

class FakeServer:
    """Accepts connections; for each request calls ``handler(method, path, body, conn)``."""

    def __init__(self, path: str, handler) -> None:
        self.path = path
        self.handler = handler
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.connections = 0
        self.requests: list[tuple[str, str, bytes]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        f = c.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                headers = {}
                while True:
                    h = f.readline()
                    if h in (b"\r\n", b""):
                        break
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = f.read(int(headers.get("content-length", "0")))
                self.requests.append((method, path, body))
                if self.handler(method, path, body, c, headers) == "close":
                    c.close()
                    return
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(tmp_path):
    servers = []

    def make(handler):
        s = FakeServer(str(tmp_path / "d.sock"), handler)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def respond(c: socket.socket, status: str, body: bytes = b"", headers: str = "") -> None:
    c.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode()
              + body)


def test_keep_alive_reuses_one_connection(server) -> None:
    def handler(method, path, body, c, headers):
        if path.endswith("/containers/json"):
            respond(c, "200 OK", b'[{"Id":"a"}]', "Content-Type: application/json\r\n")
        else:
            respond(c, "204 No Content")

    s = server(handler)
    client = Client("unix://" + s.path, autostart=False)
    assert client.get("/containers/json") == [{"Id": "a"}]
    assert client.post("/containers/a/start") is None
    assert client.get("/containers/json") == [{"Id": "a"}]
    client.close()
    assert s.connections == 1
    assert [r[1] for r in s.requests] == ["/v1.47/containers/json", "/v1.47/containers/a/start",
                                          "/v1.47/containers/json"]


def test_json_body_and_error_shape(server) -> None:
    def handler(method, path, body, c, headers):
        assert headers["content-type"] == "application/json"
        respond(c, "404 Not Found", b'{"message":"No such image: nosuch:latest"}')

    s = server(handler)
    client = Client(s.path, autostart=False)
    with pytest.raises(APIError) as ei:
        client.post("/containers/create", {"name": "x"}, {"Image": "nosuch"})
    assert ei.value.status == 404 and ei.value.message == "No such image: nosuch:latest"
    assert s.requests[0][1] == "/v1.47/containers/create?name=x"
    assert s.requests[0][2] == b'{"Image":"nosuch"}'


def test_chunked_stream(server) -> None:
    def handler(method, path, body, c, headers):
        c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: application/json\r\n\r\n")
        for piece in (b'{"status":"a"}\n', b'{"status":', b'"b"}\n'):
            c.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        c.sendall(b"0\r\n\r\n")

    s = server(handler)
    client = Client(s.path, autostart=False)
    resp = client.stream("GET", "/events")
    assert list(resp.iter_lines()) == [b'{"status":"a"}', b'{"status":"b"}']
    assert resp.done and resp.conn.reusable


def test_close_delimited_body(server) -> None:
    def handler(method, path, body, c, headers):
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome logs\nmore\n")
        return "close"

    s = server(handler)
    client = Client(s.path, autostart=False)
    status, data, _ = client.request("GET", "/containers/x/logs")
    assert status == 200 and data == b"some logs\nmore\n"


def test_reused_connection_closed_by_daemon_is_retried(server) -> None:
    def handler(method, path, body, c, headers):
        respond(c, "200 OK", b"OK")
        return "close"  # the daemon drops keep-alive connections after each answer

    s = server(handler)
    client = Client(s.path, autostart=False)
    # the first answer has no "Connection: close", so the client believes it may reuse it
    assert client.request("GET", "/_ping")[1] == b"OK"
    assert client.request("GET", "/_ping")[1] == b"OK"
    assert s.connections == 2


def test_hijack_hands_over_early_bytes(server) -> None:
    def handler(method, path, body, c, headers):
        assert headers["connection"] == "Upgrade" and headers["upgrade"] == "tcp"
        # the 101 and the first output frame arrive in one segment
        c.sendall(b"HTTP/1.1 101 UPGRADED\r\nContent-Type: "
                  b"application/vnd.docker.multiplexed-stream\r\nConnection: Upgrade\r\n"
                  b"Upgrade: tcp\r\n\r\n" + frame(1, b"early\n"))
        data = c.recv(100)  # echo stdin back as stdout until EOF (half-close)
        while data:
            c.sendall(frame(1, data))
            data = c.recv(100)
        c.sendall(frame(2, b"eof seen\n"))
        return "close"

    s = server(handler)
    client = Client(s.path, autostart=False)
    h = client.hijack("POST", "/containers/x/attach", {"stream": 1, "stdin": 1})
    assert h.content_type == "application/vnd.docker.multiplexed-stream"
    h.sock.sendall(b"typed")
    h.close_write()
    buf = b""
    while True:
        d = h.recv()
        if not d:
            break
        buf += d
    h.close()
    assert demux_all(buf) == [(1, b"early\n"), (1, b"typed"), (2, b"eof seen\n")]


def test_hijack_error_is_api_error(server) -> None:
    def handler(method, path, body, c, headers):
        respond(c, "409 Conflict", b'{"message":"container is not running"}')

    s = server(handler)
    client = Client(s.path, autostart=False)
    with pytest.raises(APIError) as ei:
        client.hijack("POST", "/exec/x/start", body={"Detach": False})
    assert ei.value.status == 409


def test_connect_error_without_autostart(tmp_path) -> None:
    client = Client("unix://" + str(tmp_path / "nobody.sock"), autostart=False)
    with pytest.raises(ConnectError) as ei:
        client.get("/_ping")
    assert "Cannot connect to the silobox daemon at unix://" in str(ei.value)


def test_no_autostart_for_foreign_socket(tmp_path) -> None:
    from silobox.cli import daemon

    assert daemon.may_autostart("/run/silobox/silod.sock", True)
    assert not daemon.may_autostart(str(tmp_path / "run" / "silod.sock"), False)
    own = tmp_path / "silobox"
    own.mkdir()
    assert daemon.may_autostart(str(own / "silod.sock"), False) == (os.geteuid() == own.stat().st_uid)
    # with autostart enabled, a foreign socket still fails instead of starting a daemon
    client = Client("unix://" + str(tmp_path / "run" / "silod.sock"))
    with pytest.raises(ConnectError):
        client.get("/_ping")


def test_silod_args() -> None:
    from silobox.cli import daemon

    assert daemon.silod_args("/x/silod", "/run/silobox/silod.sock", True) == \
        ["/x/silod", "-H", "unix:///run/silobox/silod.sock"]
    assert daemon.silod_args("/x/silod", "/srv/silobox/s.sock", False) == \
        ["/x/silod", "-H", "unix:///srv/silobox/s.sock", "--exec-root", "/srv/silobox"]


def test_connection_reads_split_headers() -> None:
    a, b = socket.socketpair()
    conn = Connection.__new__(Connection)
    conn.sock, conn.buf, conn.closed, conn.reusable, conn.used = a, bytearray(), False, True, True
    b.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
    b.sendall(b"ngth: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhel")
    b.sendall(b"lo")
    resp = conn.read_response()
    assert resp.headers["x-a"] == "1, 2"
    assert resp.read() == b"hello" and resp.done
    a.close()
    b.close()
