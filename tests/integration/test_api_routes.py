"""The Docker Engine API of a real silod, through raw HTTP and through docker-py.

These pin the wire behaviour docker's clients rely on: status codes and error shape, headers,
early status lines for wait, stream framing, hijacked attach/exec with stdin, version prefixes.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import uuid
from typing import Any, Iterator

import docker
import pytest

IMAGE = "busybox"
TIMEOUT = 30.0


# --- raw HTTP over the unix socket ---------------------------------------------------------

class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self._path)


Reply = tuple[int, http.client.HTTPMessage, bytes]


def http_request(silod: Any, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Reply:
    conn = _UnixConnection(silod.socket)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def post_json(silod: Any, path: str, doc: Any) -> Reply:
    return http_request(silod, "POST", path, json.dumps(doc).encode(),
                        {"Content-Type": "application/json"})


def raw_socket(silod: Any) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(silod.socket)
    return sock


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before the headers: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def header(head: bytes, name: str) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.decode().partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def split_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    frames, offset = [], 0
    while len(data) - offset >= 8:
        stream, size = struct.unpack(">BxxxL", data[offset:offset + 8])
        if len(data) - offset - 8 < size:
            break
        frames.append((stream, data[offset + 8:offset + 8 + size]))
        offset += 8 + size
    return frames, data[offset:]


def read_until_closed(sock: socket.socket, data: bytes = b"") -> bytes:
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2:]
    return out


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture
def client(silod: Any) -> docker.APIClient:
    return silod.client


@pytest.fixture
def make(silod: Any, run_id: str) -> Iterator[Any]:
    """Create containers named with the run's prefix; all removed after the test."""
    created: list[str] = []

    def create(cmd: list[str], **kwargs: Any) -> str:
        name = f"t{run_id}-api-{uuid.uuid4().hex[:8]}"
        created.append(name)  # registered before creation: removal is attempted regardless
        return silod.client.create_container(IMAGE, cmd, name=name, **kwargs)["Id"]

    yield create
    for name in created:
        try:
            silod.client.remove_container(name, force=True)
        except docker.errors.NotFound:
            pass


def container_count(silod: Any) -> int:
    return len(silod.client.containers(all=True))


# --- system and versions -------------------------------------------------------------------

def test_ping_headers(silod: Any) -> None:
    status, headers, body = http_request(silod, "GET", "/_ping")
    assert (status, body) == (200, b"OK")
    assert headers["API-Version"] == "1.47"
    assert headers["OSType"] == "linux"
    assert headers["Docker-Experimental"] == "false"
    assert headers["Builder-Version"] == "1"
    assert "no-cache" in headers["Cache-Control"] and headers["Pragma"] == "no-cache"
    assert headers["Server"].startswith("silobox/")
    status, headers, body = http_request(silod, "HEAD", "/_ping")
    assert (status, body) == (200, b"") and headers["API-Version"] == "1.47"


def test_version(silod: Any, client: docker.APIClient) -> None:
    doc = client.version()
    assert doc["ApiVersion"] == "1.47" and doc["MinAPIVersion"] == "1.24"
    status, headers, body = http_request(silod, "GET", "/v1.41/version")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["ApiVersion"] == "1.47"


def test_version_prefix(silod: Any) -> None:
    assert http_request(silod, "GET", "/v1.41/_ping")[:1] == (200,)
    status, headers, body = http_request(silod, "GET", "/v1.99/_ping")
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "message": "client version 1.99 is too new. Maximum supported API version is 1.47"}
    status, _, body = http_request(silod, "GET", "/v1.12/")
    assert status == 400
    assert json.loads(body)["message"].startswith("client version 1.12 is too old")


def test_unknown_route_is_page_not_found(silod: Any) -> None:
    for method, path in [("GET", "/nope"), ("DELETE", "/_ping"), ("GET", "/v1.41/nope")]:
        status, _, body = http_request(silod, method, path)
        assert (status, json.loads(body)) == (404, {"message": "page not found"})


# --- create, errors ------------------------------------------------------------------------

def test_create_with_bad_name_is_400(silod: Any, client: docker.APIClient) -> None:
    before = container_count(silod)
    status, headers, body = post_json(silod, "/containers/create?name=bad%20name",
                                      {"Image": IMAGE, "Cmd": ["true"]})
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"message": "Invalid container name (bad name), only "
                                           "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"}
    with pytest.raises(docker.errors.APIError) as info:
        client.create_container(IMAGE, ["true"], name="-leading-dash")
    assert info.value.status_code == 400
    assert container_count(silod) == before


def test_create_with_malformed_json_is_400_and_changes_nothing(silod: Any) -> None:
    before = container_count(silod)
    for raw in [b'{"Image": "busybox", ', b"[]", b"", b'{"Image": "busybox", "Tty": "yes"}']:
        status, _, body = http_request(silod, "POST", "/containers/create", raw,
                                       {"Content-Type": "application/json"})
        assert status == 400, raw
        message = json.loads(body)["message"]
        assert message.startswith("invalid JSON"), message
    assert container_count(silod) == before


def test_unknown_container_is_404_in_docker_shape(silod: Any, client: docker.APIClient) -> None:
    status, headers, body = http_request(silod, "GET", "/containers/doesnotexist/json")
    assert status == 404 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert list(doc) == ["message"] and "doesnotexist" in doc["message"]
    for method, path in [("POST", "/containers/doesnotexist/start"),
                         ("POST", "/containers/doesnotexist/stop"),
                         ("DELETE", "/containers/doesnotexist"),
                         ("POST", "/containers/doesnotexist/wait")]:
        assert http_request(silod, method, path)[0] == 404, path
    with pytest.raises(docker.errors.NotFound):
        client.inspect_container("doesnotexist")


def test_start_twice_is_304(silod: Any, make: Any) -> None:
    cid = make(["sleep", "30"])
    assert http_request(silod, "POST", f"/containers/{cid}/start")[0] == 204
    status, _, body = http_request(silod, "POST", f"/containers/{cid}/start")
    assert (status, body) == (304, b"")
    assert http_request(silod, "POST", f"/containers/{cid}/stop?t=1")[0] == 204
    assert http_request(silod, "POST", f"/containers/{cid}/stop?t=1")[0] == 304


# --- wait, logs, stats ---------------------------------------------------------------------

def test_wait_headers_arrive_before_the_exit(silod: Any, client: docker.APIClient,
                                             make: Any) -> None:
    cid = make(["sleep", "30"])
    client.start(cid)
    sock = raw_socket(silod)
    try:
        sock.sendall(f"POST /v1.47/containers/{cid}/wait HTTP/1.1\r\nHost: docker\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200")
        assert client.inspect_container(cid)["State"]["Running"]
        client.kill(cid)
        body = rest
        while b"0\r\n\r\n" not in body:
            chunk = sock.recv(4096)
            assert chunk, body
            body += chunk
        result = json.loads(dechunk(body) if header(head, "Transfer-Encoding") else body)
        assert result["StatusCode"] == 137
    finally:
        sock.close()


def test_logs_are_multiplexed_without_tty_and_raw_with_tty(silod: Any, client: docker.APIClient,
                                                           make: Any) -> None:
    cid = make(["sh", "-c", "echo out; echo err >&2"])
    client.start(cid)
    assert client.wait(cid, timeout=TIMEOUT)["StatusCode"] == 0
    status, headers, body = http_request(silod, "GET",
                                         f"/containers/{cid}/logs?stdout=1&stderr=1")
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.docker.multiplexed-stream"
    frames, rest = split_frames(body)
    assert rest == b""
    assert b"".join(d for s, d in frames if s == 1) == b"out\n"
    assert b"".join(d for s, d in frames if s == 2) == b"err\n"
    _, headers, _ = http_request(silod, "GET", f"/v1.41/containers/{cid}/logs?stdout=1")
    assert headers["Content-Type"] == "application/vnd.docker.raw-stream"
    assert client.logs(cid, stdout=True, stderr=False) == b"out\n"
    assert http_request(silod, "GET", f"/containers/{cid}/logs")[0] == 400

    tty = make(["echo", "hello"], tty=True)
    client.start(tty)
    client.wait(tty, timeout=TIMEOUT)
    status, headers, body = http_request(silod, "GET", f"/containers/{tty}/logs?stdout=1")
    assert headers["Content-Type"] == "application/vnd.docker.raw-stream"
    assert body.replace(b"\r\n", b"\n") == b"hello\n"


def test_stats_one_shot_shape(silod: Any, client: docker.APIClient, make: Any) -> None:
    cid = make(["sleep", "30"])
    client.start(cid)
    status, headers, body = http_request(silod, "GET",
                                         f"/containers/{cid}/stats?stream=false&one-shot=true")
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    for key in ("read", "cpu_stats", "precpu_stats", "memory_stats", "pids_stats"):
        assert key in doc, key
    assert isinstance(doc["memory_stats"], dict)
    assert http_request(silod, "GET", f"/containers/{cid}/stats?stream=1&one-shot=1")[0] == 400
    assert client.stats(cid, stream=False, one_shot=True)["read"]


# --- hijacked streams ----------------------------------------------------------------------

def _attach(cid: str, early: bytes = b"") -> bytes:
    return (f"POST /v1.47/containers/{cid}/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\n"
            "Host: docker\r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
            ).encode() + early


def test_attach_hijack_echoes_stdin_through_cat(silod: Any, client: docker.APIClient,
                                                make: Any) -> None:
    cid = make(["cat"], stdin_open=True)  # docker-py sets StdinOnce with it
    sock = raw_socket(silod)
    try:
        sock.sendall(_attach(cid))
        head, data = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101")
        assert header(head, "Content-Type") == "application/vnd.docker.multiplexed-stream"
        assert header(head, "Upgrade") == "tcp"
        client.start(cid)
        sock.sendall(b"hello\n")
        while not split_frames(data)[0]:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        assert split_frames(data)[0][0] == (1, b"hello\n")
        sock.shutdown(socket.SHUT_WR)          # stdin EOF: cat exits, the stream ends
        rest = read_until_closed(sock, split_frames(data)[1])
        assert split_frames(rest) == ([], b"")
        assert client.wait(cid, timeout=TIMEOUT)["StatusCode"] == 0
    finally:
        sock.close()


def test_attach_stdin_sent_with_the_request(silod: Any, client: docker.APIClient,
                                            make: Any) -> None:
    cid = make(["cat"], stdin_open=True)  # docker-py sets StdinOnce with it
    client.start(cid)
    sock = raw_socket(silod)
    try:
        sock.sendall(_attach(cid, early=b"early\n"))  # one packet: request + stdin
        head, data = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101")
        while not split_frames(data)[0]:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        assert split_frames(data)[0][0] == (1, b"early\n")
    finally:
        sock.close()


def test_attach_socket_with_docker_py(client: docker.APIClient, make: Any) -> None:
    from docker.utils.socket import frames_iter
    cid = make(["cat"], stdin_open=True)  # docker-py sets StdinOnce with it
    sock = client.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stream": 1})
    try:
        client.start(cid)
        sock._sock.sendall(b"ping\n")
        sock._sock.shutdown(socket.SHUT_WR)
        assert b"".join(d for _, d in frames_iter(sock, tty=False)) == b"ping\n"
    finally:
        sock.close()


def test_exec_create_with_empty_cmd_is_400(silod: Any, client: docker.APIClient,
                                           make: Any) -> None:
    cid = make(["sleep", "30"])
    client.start(cid)
    for doc in [{"Cmd": []}, {}, {"Cmd": "ls"}, {"Cmd": ["ls", 1]}]:
        status, _, body = post_json(silod, f"/containers/{cid}/exec", doc)
        assert status == 400, doc
        assert json.loads(body)["message"]


def test_exec_into_stopped_container_is_409(silod: Any, client: docker.APIClient,
                                            make: Any) -> None:
    cid = make(["true"])
    status, _, body = post_json(silod, f"/containers/{cid}/exec", {"Cmd": ["ls"]})
    assert status == 409 and json.loads(body)["message"]
    client.start(cid)
    client.wait(cid, timeout=TIMEOUT)
    with pytest.raises(docker.errors.APIError) as info:
        client.exec_create(cid, ["ls"])
    assert info.value.status_code == 409


def test_exec_start_streams_and_stdin(silod: Any, client: docker.APIClient, make: Any) -> None:
    cid = make(["sleep", "30"])
    client.start(cid)
    exec_id = client.exec_create(cid, ["sh", "-c", "echo out; echo err >&2"])["Id"]
    assert client.exec_start(exec_id, demux=True) == (b"out\n", b"err\n")
    assert client.exec_inspect(exec_id)["ExitCode"] == 0

    exec_id = client.exec_create(cid, ["cat"], stdin=True)["Id"]
    sock = raw_socket(silod)
    try:
        body = b'{"Detach":false,"Tty":false}'
        sock.sendall(f"POST /v1.47/exec/{exec_id}/start HTTP/1.1\r\nHost: docker\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode() + body)
        head, data = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101")
        sock.sendall(b"via exec\n")
        sock.shutdown(socket.SHUT_WR)
        frames, rest = split_frames(read_until_closed(sock, data))
        assert (frames, rest) == ([(1, b"via exec\n")], b"")
    finally:
        sock.close()
    status, _, _ = post_json(silod, "/exec/doesnotexist/start", {"Detach": False})
    assert status == 404
