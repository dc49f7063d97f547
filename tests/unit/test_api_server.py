"""The API application on a real unix socket, over an in-memory backend.

No privileges and no engine: the backend below implements the protocols with dictionaries and
queues, so these tests pin down the HTTP behaviour (status codes, headers, framing, hijacking)
that docker's clients depend on.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import stat
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any, AsyncIterator, Iterator

import docker
import pytest

from silobox.api.app import create_app
from silobox.api.backend import STDERR, STDOUT
from silobox.api.server import serve, shutdown
from silobox.api.streams import read_frames
from silobox.errors import AlreadyExists, Conflict, NotFound, NotModified

TIMEOUT = 5.0


# --- an in-memory backend ----------------------------------------------------------------

class EchoSession:
    """Like ``cat``: stdin comes back on stdout; stdin EOF ends the output."""

    def __init__(self, tty: bool, prelude: list[tuple[int, bytes]] | None = None) -> None:
        self.tty = tty
        self.output: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        for item in prelude or []:
            self.output.put_nowait(item)
        self.written = bytearray()
        self.stdin_closed = False
        self.closed = False

    async def read(self) -> tuple[int, bytes] | None:
        return await self.output.get()

    async def write(self, data: bytes) -> None:
        self.written += data
        await self.output.put((STDOUT, data))

    async def close_stdin(self) -> None:
        self.stdin_closed = True
        await self.output.put(None)

    async def close(self) -> None:
        self.closed = True


class FakeBackend:
    def __init__(self) -> None:
        self.containers: dict[str, dict[str, Any]] = {}
        self.execs: dict[str, dict[str, Any]] = {}
        self.sessions: list[EchoSession] = []
        self.exits: dict[str, list[asyncio.Future[int]]] = {}
        self.calls: list[tuple[str, Any]] = []

    def _get(self, ref: str) -> dict[str, Any]:
        for c in self.containers.values():
            if ref in (c["Id"], c["Name"]) or (len(ref) >= 4 and c["Id"].startswith(ref)):
                return c
        raise NotFound(f"No such container: {ref}")

    # system
    async def version(self) -> dict[str, Any]:
        return {"Version": "0.1.0", "Os": "linux"}

    async def info(self) -> dict[str, Any]:
        return {"Containers": len(self.containers)}

    async def compute_systems(self) -> list[dict[str, Any]]:
        return [{"Id": c["Id"], "SystemType": "Container"} for c in self.containers.values()]

    async def compute_system_properties(self, ref: str, types: list[str] | None = None):
        return {"Id": self._get(ref)["Id"], "types": types}

    # containers
    async def container_create(self, name: str | None, body: dict[str, Any]) -> dict[str, Any]:
        if name and any(c["Name"] == name for c in self.containers.values()):
            raise AlreadyExists(f"Conflict. The container name \"/{name}\" is already in use")
        cid = uuid.uuid4().hex * 2
        self.containers[cid] = {"Id": cid, "Name": name or cid[:12], "Running": False,
                                "Tty": bool(body.get("Tty")), "Body": body}
        return {"Id": cid, "Warnings": []}

    async def container_start(self, ref: str) -> None:
        c = self._get(ref)
        if c["Running"]:
            raise NotModified("container already started")
        c["Running"] = True

    async def container_stop(self, ref: str, timeout: int | None = None,
                             signal: str | None = None) -> None:
        c = self._get(ref)
        self.calls.append(("stop", (timeout, signal)))
        if not c["Running"]:
            raise NotModified("container already stopped")
        c["Running"] = False
        self._exit(c["Id"], 0)

    async def container_restart(self, ref, timeout=None, signal=None) -> None:
        self._get(ref)["Running"] = True

    async def container_kill(self, ref: str, signal: str = "SIGKILL") -> None:
        c = self._get(ref)
        self.calls.append(("kill", signal))
        if not c["Running"]:
            raise Conflict(f"Container {c['Id']} is not running")
        c["Running"] = False
        self._exit(c["Id"], 137)

    def _exit(self, cid: str, code: int) -> None:
        for future in self.exits.pop(cid, []):
            if not future.done():
                future.set_result(code)

    async def container_wait(self, ref: str, condition: str = "not-running") -> dict[str, Any]:
        c = self._get(ref)
        if not c["Running"] and condition == "not-running":
            return {"StatusCode": 0, "Error": None}
        future = asyncio.get_running_loop().create_future()
        self.exits.setdefault(c["Id"], []).append(future)
        try:
            return {"StatusCode": await future, "Error": None}
        except asyncio.CancelledError:
            self.calls.append(("wait cancelled", c["Id"]))
            raise

    async def container_remove(self, ref: str, force: bool = False, volumes: bool = False):
        c = self._get(ref)
        if c["Running"] and not force:
            raise Conflict("You cannot remove a running container")
        del self.containers[c["Id"]]

    async def container_pause(self, ref: str) -> None:
        self._get(ref)

    async def container_unpause(self, ref: str) -> None:
        self._get(ref)

    async def container_rename(self, ref: str, new_name: str) -> None:
        self._get(ref)["Name"] = new_name

    async def container_inspect(self, ref: str, size: bool = False) -> dict[str, Any]:
        c = self._get(ref)
        return {"Id": c["Id"], "Name": "/" + c["Name"], "State": {"Running": c["Running"]},
                "Config": {"Tty": c["Tty"]}}

    async def container_list(self, all=False, limit=-1, size=False, filters=None):
        self.calls.append(("list", (all, limit, size, filters)))
        return [{"Id": c["Id"]} for c in self.containers.values() if all or c["Running"]]

    async def container_logs(self, ref: str, **options: Any):
        c = self._get(ref)
        self.calls.append(("logs", options))

        async def chunks() -> AsyncIterator[tuple[int, bytes]]:
            yield STDOUT, b"out line\n"
            yield STDERR, b"err line\n"

        return c["Tty"], chunks()

    async def container_top(self, ref: str, ps_args: str | None = None) -> dict[str, Any]:
        self._get(ref)
        return {"Titles": ["PID", "CMD"], "Processes": [["1", "sh"]], "args": ps_args}

    async def container_stats(self, ref: str, stream: bool = True, one_shot: bool = False):
        self._get(ref)
        for n in range(3 if stream else 1):
            yield {"read": f"sample-{n}", "cpu_stats": {}, "memory_stats": {}, "one_shot": one_shot}

    async def container_attach(self, ref: str, *, stdin: bool, stdout: bool, stderr: bool,
                               logs: bool, stream: bool) -> EchoSession:
        c = self._get(ref)
        session = EchoSession(c["Tty"])
        self.sessions.append(session)
        return session

    async def container_resize(self, ref: str, height: int, width: int) -> None:
        self._get(ref)
        self.calls.append(("resize", (height, width)))

    async def exec_create(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        c = self._get(ref)
        if not c["Running"]:
            raise Conflict(f"Container {c['Id']} is not running")
        eid = uuid.uuid4().hex * 2
        self.execs[eid] = {"ID": eid, "Body": body, "DetachKeys": body.get("DetachKeys") or ""}
        return {"Id": eid}

    async def exec_start(self, exec_id: str, detach: bool = False, tty: bool | None = None):
        if exec_id not in self.execs:
            raise NotFound(f"No such exec instance: {exec_id}")
        body = self.execs[exec_id]["Body"]
        if detach:
            return None
        session = EchoSession(bool(body.get("Tty")),
                              prelude=[(STDOUT, b"out"), (STDERR, b"err")])
        if body.get("Cmd") == ["true"]:
            session.output.put_nowait(None)
        self.sessions.append(session)
        return session

    async def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        if exec_id not in self.execs:
            raise NotFound(f"No such exec instance: {exec_id}")
        return {k: v for k, v in self.execs[exec_id].items() if k != "Body"}

    async def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        self.calls.append(("exec_resize", (height, width)))

    async def image_list(self, all: bool = False, filters=None) -> list[dict[str, Any]]:
        return [{"Id": "sha256:1", "filters": filters}]

    async def image_inspect(self, ref: str) -> dict[str, Any]:
        if ref.startswith("missing"):
            raise NotFound(f"No such image: {ref}")
        if ref == "boom":
            raise ValueError("unexpected failure")
        return {"Id": "sha256:1", "ref": ref}


# --- a server on a temporary socket --------------------------------------------------------

@pytest.fixture
def api(tmp_path) -> Iterator[SimpleNamespace]:
    backend = FakeBackend()
    loop = asyncio.new_event_loop()
    path = str(tmp_path / "api.sock")
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            runner = loop.run_until_complete(serve(create_app(backend), path))
        except BaseException as exc:  # surface start-up errors in the test
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(shutdown(runner))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(TIMEOUT)
    if failure:
        raise failure[0]

    def call(coro_fn) -> Any:
        return asyncio.run_coroutine_threadsafe(coro_fn(), loop).result(TIMEOUT)

    yield SimpleNamespace(socket=path, backend=backend, loop=loop, call=call)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(TIMEOUT)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self._path)


def request(api: SimpleNamespace, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = UnixHTTPConnection(api.socket)
    headers = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response.headers, data


def raw_connect(api: SimpleNamespace) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(api.socket)
    return sock


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read up to the end of the response headers; returns (head, bytes already past it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed before headers: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def read_all(sock: socket.socket, initial: bytes = b"") -> bytes:
    data = initial
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def header(head: bytes, name: str) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.decode().partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def create(api: SimpleNamespace, name: str | None = None, **body: Any) -> str:
    path = "/containers/create" + (f"?name={name}" if name else "")
    status, _, data = request(api, "POST", path, {"Image": "busybox", **body})
    assert status == 201, data
    return json.loads(data)["Id"]


# --- system --------------------------------------------------------------------------------

def test_ping_headers(api) -> None:
    status, headers, body = request(api, "GET", "/_ping")
    assert (status, body) == (200, b"OK")
    assert headers["API-Version"] == "1.47"
    assert headers["OSType"] == "linux"
    assert headers["Docker-Experimental"] == "false"
    assert headers["Builder-Version"] == "1"
    assert "no-cache" in headers["Cache-Control"]
    assert headers["Pragma"] == "no-cache"
    assert headers["Server"].startswith("silobox/")
    assert headers["Content-Type"].startswith("text/plain")
    status, headers, body = request(api, "HEAD", "/_ping")
    assert (status, body) == (200, b"")
    assert headers["API-Version"] == "1.47"


def test_server_header_on_every_response(api) -> None:
    for method, path in [("GET", "/version"), ("GET", "/nope"), ("GET", "/containers/x/json")]:
        _, headers, _ = request(api, method, path)
        assert headers["Server"].startswith("silobox/")
        assert headers["API-Version"] == "1.47"


def test_version_document_carries_api_range(api) -> None:
    status, headers, body = request(api, "GET", "/version")
    doc = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert doc["ApiVersion"] == "1.47" and doc["MinAPIVersion"] == "1.24"
    assert doc["Version"] == "0.1.0"


def test_version_prefix(api) -> None:
    assert request(api, "GET", "/v1.41/_ping")[0] == 200
    assert request(api, "GET", "/v1.24/_ping")[0] == 200
    status, headers, body = request(api, "GET", "/v1.99/_ping")
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"message": "client version 1.99 is too new. Maximum supported "
                                           "API version is 1.47"}
    status, _, body = request(api, "GET", "/v1.12/")
    assert status == 400
    assert json.loads(body)["message"].startswith("client version 1.12 is too old")
    status, _, body = request(api, "GET", "/v1.12/_ping")
    assert status == 400


def test_unknown_route_and_method_are_page_not_found(api) -> None:
    for method, path in [("GET", "/nope"), ("DELETE", "/_ping"), ("GET", "/v1.41/nope"),
                         ("PUT", "/containers/create")]:
        status, headers, body = request(api, method, path)
        assert status == 404, (method, path)
        assert json.loads(body) == {"message": "page not found"}


def test_options_succeeds(api) -> None:
    assert request(api, "OPTIONS", "/containers/json")[0] == 200


# --- containers ----------------------------------------------------------------------------

def test_create_validates_name_and_body(api) -> None:
    status, _, body = request(api, "POST", "/containers/create?name=bad%20name", {"Image": "x"})
    assert status == 400
    assert json.loads(body) == {"message": "Invalid container name (bad name), only "
                                           "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"}
    status, _, body = request(api, "POST", "/containers/create", b'{"Image": ',
                              {"Content-Type": "application/json"})
    assert status == 400 and json.loads(body)["message"].startswith("invalid JSON")
    status, _, body = request(api, "POST", "/containers/create", {"Image": "x", "Tty": "yes"})
    assert status == 400 and "'Tty' must be a boolean" in json.loads(body)["message"]
    status, _, body = request(api, "POST", "/containers/create", b"",
                              {"Content-Type": "application/json"})
    assert status == 400 and "EOF" in json.loads(body)["message"]
    status, _, body = request(api, "POST", "/containers/create", b'{"Image":"x"}',
                              {"Content-Type": "text/plain"})
    assert status == 400 and "Content-Type" in json.loads(body)["message"]
    assert api.backend.containers == {}
    cid = create(api, name="web")
    assert len(cid) == 64
    status, _, body = request(api, "POST", "/containers/create?name=web", {"Image": "x"})
    assert status == 409 and "already in use" in json.loads(body)["message"]


def test_unknown_container_is_404_in_docker_shape(api) -> None:
    status, headers, body = request(api, "GET", "/containers/nothere/json")
    assert status == 404
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"message": "No such container: nothere"}


def test_start_twice_is_304_without_body(api) -> None:
    cid = create(api)
    assert request(api, "POST", f"/containers/{cid}/start")[:1] == (204,)
    status, _, body = request(api, "POST", f"/containers/{cid}/start")
    assert (status, body) == (304, b"")
    status, _, body = request(api, "POST", f"/containers/{cid}/start", {"Binds": ["/a:/b"]})
    assert status == 400 and "removed in v1.24" in json.loads(body)["message"]


def test_stop_kill_remove_and_query_types(api) -> None:
    cid = create(api)
    request(api, "POST", f"/containers/{cid}/start")
    assert request(api, "POST", f"/containers/{cid}/stop?t=abc")[0] == 400
    assert request(api, "POST", f"/containers/{cid}/stop?t=3&signal=SIGINT")[0] == 204
    assert api.backend.calls[-1] == ("stop", (3, "SIGINT"))
    assert request(api, "POST", f"/v1.41/containers/{cid}/stop")[0] == 304
    assert api.backend.calls[-1] == ("stop", (None, None))  # signal is API >= 1.42
    status, _, body = request(api, "POST", f"/containers/{cid}/kill")
    assert status == 409 and "is not running" in json.loads(body)["message"]
    assert api.backend.calls[-1] == ("kill", "SIGKILL")
    assert request(api, "DELETE", f"/containers/{cid}?force=banana")[0] == 400
    assert request(api, "DELETE", f"/containers/{cid}?force=1&v=0")[0] == 204
    assert request(api, "DELETE", f"/containers/{cid}")[0] == 404


def test_list_filters_and_limit(api) -> None:
    status, _, body = request(api, "GET", "/containers/json?all=1&limit=3&filters="
                              + '%7B%22status%22%3A%7B%22running%22%3Atrue%7D%7D')
    assert status == 200 and json.loads(body) == []
    assert api.backend.calls[-1] == ("list", (True, 3, False, {"status": ["running"]}))
    request(api, "GET", "/containers/json?limit=0")
    assert api.backend.calls[-1][1][1] == -1
    status, _, body = request(api, "GET", "/containers/json?filters=%7Bbad")
    assert status == 400 and json.loads(body)["message"].startswith("invalid filter")
    assert request(api, "GET", "/containers/json?limit=x")[0] == 400


def test_rename_resize_top(api) -> None:
    cid = create(api)
    assert request(api, "POST", f"/containers/{cid}/rename")[0] == 400
    assert request(api, "POST", f"/containers/{cid}/rename?name=-x")[0] == 400
    assert request(api, "POST", f"/containers/{cid}/rename?name=new1")[0] == 204
    assert request(api, "POST", f"/containers/new1/resize?h=24")[0] == 400
    assert request(api, "POST", f"/containers/new1/resize?h=24&w=80")[0] == 200
    assert api.backend.calls[-1] == ("resize", (24, 80))
    status, _, body = request(api, "GET", f"/containers/new1/top?ps_args=aux")
    assert status == 200 and json.loads(body)["args"] == "aux"


def test_wait_sends_headers_before_the_result(api) -> None:
    cid = create(api)
    request(api, "POST", f"/containers/{cid}/start")
    sock = raw_connect(api)
    sock.sendall(f"POST /v1.47/containers/{cid}/wait?condition=next-exit HTTP/1.1\r\n"
                 "Host: docker\r\nContent-Length: 0\r\n\r\n".encode())
    head, rest = read_head(sock)  # arrives while the container is still running
    assert head.startswith(b"HTTP/1.1 200")
    assert header(head, "Content-Type") == "application/json"
    assert api.backend.containers[cid]["Running"]
    request(api, "POST", f"/containers/{cid}/kill")
    data = rest
    while b"0\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    assert b'{"StatusCode":137,"Error":null}' in data
    sock.close()


def test_wait_is_abandoned_when_the_client_leaves(api) -> None:
    cid = create(api)
    request(api, "POST", f"/containers/{cid}/start")
    sock = raw_connect(api)
    sock.sendall(f"POST /containers/{cid}/wait HTTP/1.1\r\nHost: docker\r\n"
                 "Content-Length: 0\r\n\r\n".encode())
    read_head(sock)
    sock.close()
    deadline = time.monotonic() + TIMEOUT
    while ("wait cancelled", cid) not in api.backend.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ("wait cancelled", cid) in api.backend.calls
    assert api.backend.containers[cid]["Running"]


def test_wait_unknown_container_is_404_and_bad_condition_400(api) -> None:
    assert request(api, "POST", "/containers/nothere/wait")[0] == 404
    cid = create(api)
    assert request(api, "POST", f"/containers/{cid}/wait?condition=exited")[0] == 400
    status, _, body = request(api, "POST", f"/containers/{cid}/wait")
    assert status == 200 and json.loads(body) == {"StatusCode": 0, "Error": None}


def test_logs_are_framed_unless_tty(api) -> None:
    cid = create(api)
    status, headers, body = request(api, "GET", f"/containers/{cid}/logs?stdout=1&stderr=1"
                                                "&since=1700000000.5&tail=10&timestamps=true")
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.docker.multiplexed-stream"
    assert headers["Transfer-Encoding"] == "chunked"
    frames, rest = read_frames(body)
    assert frames == [(1, b"out line\n"), (2, b"err line\n")] and rest == b""
    options = api.backend.calls[-1][1]
    assert options["since"] == pytest.approx(1700000000.5)
    assert options["tail"] == "10" and options["timestamps"] is True
    _, headers, _ = request(api, "GET", f"/v1.41/containers/{cid}/logs?stdout=1")
    assert headers["Content-Type"] == "application/vnd.docker.raw-stream"
    tty = create(api, Tty=True)
    status, headers, body = request(api, "GET", f"/containers/{tty}/logs?stdout=1")
    assert headers["Content-Type"] == "application/vnd.docker.raw-stream"
    assert body == b"out line\nerr line\n"
    assert request(api, "GET", f"/containers/{cid}/logs")[0] == 400
    assert request(api, "GET", f"/containers/{cid}/logs?stdout=1&since=yesterday")[0] == 400
    assert request(api, "GET", "/containers/nothere/logs?stdout=1")[0] == 404


def test_stats_one_shot_and_stream(api) -> None:
    cid = create(api)
    status, headers, body = request(api, "GET", f"/containers/{cid}/stats?stream=false&one-shot=1")
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["read"] == "sample-0" and doc["one_shot"] is True
    status, _, body = request(api, "GET", f"/containers/{cid}/stats")
    lines = body.decode().splitlines()
    assert [json.loads(line)["read"] for line in lines] == ["sample-0", "sample-1", "sample-2"]
    assert request(api, "GET", f"/containers/{cid}/stats?stream=1&one-shot=1")[0] == 400
    assert request(api, "GET", "/containers/nothere/stats?stream=0")[0] == 404


# --- attach and exec: hijacked connections --------------------------------------------------

def _attach_request(cid: str, extra: bytes = b"", upgrade: bool = True, query: str = "") -> bytes:
    q = query or "stream=1&stdin=1&stdout=1&stderr=1"
    head = (f"POST /v1.47/containers/{cid}/attach?{q} HTTP/1.1\r\nHost: docker\r\n"
            "Content-Length: 0\r\n")
    if upgrade:
        head += "Connection: Upgrade\r\nUpgrade: tcp\r\n"
    return head.encode() + b"\r\n" + extra


def test_attach_hijack_echo_and_half_close(api) -> None:
    cid = create(api, OpenStdin=True)
    sock = raw_connect(api)
    sock.sendall(_attach_request(cid))
    head, rest = read_head(sock)
    assert head.startswith(b"HTTP/1.1 101")
    assert header(head, "Content-Type") == "application/vnd.docker.multiplexed-stream"
    assert header(head, "Upgrade") == "tcp" and header(head, "Connection") == "Upgrade"
    assert header(head, "Server").startswith("silobox/")
    sock.sendall(b"hello\n")
    data = rest
    while len(read_frames(data)[0]) < 1:
        data += sock.recv(4096)
    assert read_frames(data)[0] == [(1, b"hello\n")]
    sock.shutdown(socket.SHUT_WR)          # stdin EOF: the output must still arrive, then EOF
    assert read_all(sock, read_frames(data)[1]) == b""
    session = api.backend.sessions[-1]
    assert session.stdin_closed and session.closed
    sock.close()


def test_attach_early_bytes_in_the_request_packet(api) -> None:
    cid = create(api)
    sock = raw_connect(api)
    sock.sendall(_attach_request(cid, extra=b"early\n"))
    head, rest = read_head(sock)
    assert head.startswith(b"HTTP/1.1 101")
    data = rest
    while not read_frames(data)[0]:
        data += sock.recv(4096)
    assert read_frames(data)[0][0] == (1, b"early\n")
    sock.close()


def test_attach_tty_raw_and_detach_keys(api) -> None:
    cid = create(api, Tty=True, OpenStdin=True)
    sock = raw_connect(api)
    sock.sendall(_attach_request(cid, query="stream=1&stdin=1&stdout=1&detachKeys=ctrl-a,x"))
    head, rest = read_head(sock)
    assert header(head, "Content-Type") == "application/vnd.docker.raw-stream"
    sock.sendall(b"ab\x01")
    data = rest
    while data != b"ab":
        data += sock.recv(4096)
    sock.sendall(b"x")                    # completes ctrl-a,x: detach, connection closes
    assert read_all(sock) == b""
    session = api.backend.sessions[-1]
    assert session.written == b"ab" and session.closed and not session.stdin_closed
    sock.close()


def test_attach_bad_detach_keys_and_unknown_container(api) -> None:
    cid = create(api)
    status, _, body = request(api, "POST", f"/containers/{cid}/attach?stream=1&detachKeys=ctrl-")
    assert status == 400 and json.loads(body) == {"message": "Invalid detach keys (ctrl-) provided"}
    sock = raw_connect(api)
    sock.sendall(_attach_request("nothere"))
    head, rest = read_head(sock)
    assert head.startswith(b"HTTP/1.1 404")
    body = read_all(sock, rest)            # the connection is not reused after a refused hijack
    assert json.loads(body) == {"message": "No such container: nothere"}


def test_attach_without_upgrade_streams_raw_on_200(api) -> None:
    cid = create(api)
    sock = raw_connect(api)
    sock.sendall(_attach_request(cid, upgrade=False))
    head, rest = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200")
    assert header(head, "Content-Type") == "application/vnd.docker.raw-stream"
    assert header(head, "Transfer-Encoding") is None and header(head, "Content-Length") is None
    sock.sendall(b"hi\n")
    sock.shutdown(socket.SHUT_WR)
    assert read_frames(read_all(sock, rest)) == ([(1, b"hi\n")], b"")
    sock.close()


def test_attach_client_disconnect_closes_session(api) -> None:
    cid = create(api, Tty=True)
    sock = raw_connect(api)
    sock.sendall(_attach_request(cid))
    read_head(sock)
    sock.close()
    deadline = time.monotonic() + TIMEOUT
    session = api.backend.sessions[-1]
    while not session.closed and time.monotonic() < deadline:
        # the disconnect is noticed on EOF (stdin closes) and on the next write
        api.call(lambda: session.output.put((STDOUT, b"x")))
        time.sleep(0.05)
    assert session.closed


def test_docker_py_attach_socket(api) -> None:
    client = docker.APIClient(base_url="unix://" + api.socket, version="1.47", timeout=TIMEOUT)
    cid = create(api, OpenStdin=True)
    sock = client.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stream": 1})
    raw = sock._sock
    raw.sendall(b"ping\n")
    raw.shutdown(socket.SHUT_WR)
    from docker.utils.socket import frames_iter
    assert list(frames_iter(sock, tty=False)) == [(1, b"ping\n")]
    sock.close()
    client.close()


def test_exec_create_validation_and_conflict(api) -> None:
    cid = create(api)
    status, _, body = request(api, "POST", f"/containers/{cid}/exec", {"Cmd": []})
    assert status == 400 and json.loads(body) == {"message": "No exec command specified"}
    status, _, body = request(api, "POST", f"/containers/{cid}/exec", {"Cmd": "ls"})
    assert status == 400 and "'Cmd' must be an array" in json.loads(body)["message"]
    status, _, body = request(api, "POST", f"/containers/{cid}/exec", {"Cmd": ["ls"]})
    assert status == 409 and "is not running" in json.loads(body)["message"]
    assert request(api, "POST", "/containers/nothere/exec", {"Cmd": ["ls"]})[0] == 404


def test_exec_through_docker_py(api) -> None:
    client = docker.APIClient(base_url="unix://" + api.socket, version="1.47", timeout=TIMEOUT)
    cid = create(api)
    client.start(cid)
    exec_id = client.exec_create(cid, ["true"])["Id"]
    assert client.exec_start(exec_id, demux=True) == (b"out", b"err")
    assert client.exec_inspect(exec_id)["ID"] == exec_id
    detached = client.exec_create(cid, ["sleep", "1"])["Id"]
    assert client.exec_start(detached, detach=True) == ""
    with pytest.raises(docker.errors.NotFound):
        client.exec_start("nothere")
    client.exec_resize(exec_id, height=10, width=20)
    assert api.backend.calls[-1] == ("exec_resize", (10, 20))
    client.close()


def test_exec_start_console_size_applied(api) -> None:
    cid = create(api)
    request(api, "POST", f"/containers/{cid}/start")
    _, _, body = request(api, "POST", f"/containers/{cid}/exec", {"Cmd": ["true"], "Tty": True})
    exec_id = json.loads(body)["Id"]
    status, _, _ = request(api, "POST", f"/exec/{exec_id}/start",
                           {"Detach": True, "Tty": True, "ConsoleSize": [30, 100]})
    assert status == 200
    assert api.backend.calls[-1] == ("exec_resize", (30, 100))
    status, _, body = request(api, "POST", f"/exec/{exec_id}/start", {"Detach": "no"})
    assert status == 400 and "'Detach' must be a boolean" in json.loads(body)["message"]


def test_docker_py_high_level_flow(api) -> None:
    client = docker.DockerClient(base_url="unix://" + api.socket, timeout=TIMEOUT)
    assert client.ping() is True
    assert client.version()["ApiVersion"] == "1.47"
    cid = create(api, name="hl")
    container = client.containers.get("hl")
    assert container.id == cid
    container.start()
    assert container.logs(stdout=True, stderr=True) == b"out line\nerr line\n"
    stats = container.stats(stream=False)
    assert stats["read"] == "sample-0"
    with pytest.raises(docker.errors.NotFound):
        client.containers.get("nothere")
    with pytest.raises(docker.errors.APIError) as info:
        client.api.create_container("busybox", name="bad name")
    assert info.value.status_code == 400
    client.close()


# --- images, compute, errors ----------------------------------------------------------------

def test_images_names_with_slashes_and_colons(api) -> None:
    status, _, body = request(api, "GET", "/images/registry:5000/library/busybox:1.36/json")
    assert status == 200 and json.loads(body)["ref"] == "registry:5000/library/busybox:1.36"
    status, _, body = request(api, "GET", "/v1.41/images/busybox/json")
    assert status == 200 and json.loads(body)["ref"] == "busybox"
    status, _, body = request(api, "GET", "/images/missing:latest/json")
    assert status == 404 and json.loads(body) == {"message": "No such image: missing:latest"}
    status, _, body = request(api, "GET", '/images/json?filters={"dangling":["true"]}'
                              .replace('"', "%22").replace("{", "%7B").replace("}", "%7D"))
    assert status == 200 and json.loads(body)[0]["filters"] == {"dangling": ["true"]}


def test_unexpected_exception_is_500_with_message(api) -> None:
    status, headers, body = request(api, "GET", "/images/boom/json")
    assert status == 500 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"message": "unexpected failure"}


def test_compute_systems(api) -> None:
    cid = create(api)
    status, _, body = request(api, "GET", "/silobox/compute-systems")
    assert status == 200 and json.loads(body) == [{"Id": cid, "SystemType": "Container"}]
    status, _, body = request(api, "GET",
                              f"/silobox/compute-systems/{cid}?types=Statistics,ProcessList")
    assert json.loads(body)["types"] == ["Statistics", "ProcessList"]


# --- the socket -----------------------------------------------------------------------------

def test_socket_mode_and_stale_replacement(tmp_path) -> None:
    path = str(tmp_path / "run" / "silod.sock")
    os.makedirs(os.path.dirname(path))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()                              # a socket file nobody listens on

    async def scenario() -> None:
        runner = await serve(create_app(FakeBackend()), path)
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            with pytest.raises(AlreadyExists, match="another daemon"):
                await serve(create_app(FakeBackend()), path)
            assert os.path.exists(path)         # the live daemon's socket is untouched
        finally:
            await shutdown(runner)
        assert not os.path.exists(path)
        assert os.listdir(os.path.dirname(path)) == []

    asyncio.run(scenario())


def test_refuses_to_replace_a_regular_file(tmp_path) -> None:
    path = tmp_path / "silod.sock"
    path.write_text("not a socket")

    async def scenario() -> None:
        with pytest.raises(AlreadyExists, match="not a socket"):
            await serve(create_app(FakeBackend()), str(path))

    asyncio.run(scenario())
    assert path.read_text() == "not a socket"
