"""Property-based fuzzing of the API: malformed and hostile requests get Docker's 4xx error shape,
change nothing, never crash silod, and leave its RSS within 20 MB of where it started. Bodies
are generated from the routers' own field descriptions (``check_fields`` specs). Bounded in
examples and time so that it fits in CI; ``SILOBOX_FUZZ_SCALE=N`` runs N times as many fresh
examples."""

from __future__ import annotations

import json
import os
import string
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tarutil import tar_of

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                    st.floats(allow_nan=False), st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12)

CREATE_KEYS = ["Image", "Cmd", "Entrypoint", "Env", "User", "WorkingDir", "Tty", "OpenStdin",
               "Labels", "HostConfig", "StopSignal", "StopTimeout", "Healthcheck", "Hostname"]
HOST_KEYS = ["Memory", "MemorySwap", "NanoCpus", "CpuShares", "CpusetCpus", "PidsLimit",
             "CapAdd", "CapDrop", "Privileged", "SecurityOpt", "Ulimits", "Binds",
             "RestartPolicy", "AutoRemove", "Isolation", "LogConfig", "NetworkMode",
             "PortBindings", "Mounts", "Tmpfs", "StorageOpt"]


def _mutated_create_body():
    """A create body built from real field names with wrong-typed or odd values."""
    host = st.dictionaries(st.sampled_from(HOST_KEYS), json_values, max_size=3)
    return st.fixed_dictionaries({}, optional={
        **{k: json_values for k in CREATE_KEYS if k != "HostConfig"},
        "HostConfig": host,
    })


def _count(silod) -> int:
    status, items = silod.request("GET", "/containers/json?all=1")
    assert status == 200
    return len(items)


def _is_docker_error(status: int, body) -> bool:
    return 400 <= status < 500 and isinstance(body, dict) and isinstance(body.get("message"), str)


@pytest.fixture(scope="module")
def baseline(silod):
    return _count(silod)


@SETTINGS
@given(body=_mutated_create_body())
def test_create_with_odd_bodies(silod, baseline, body):
    status, answer = silod.request("POST", "/containers/create", body)
    assert status < 500, (body, status, answer)
    if status == 201:
        # a body that happens to be valid: it must be a usable container; remove it again
        assert silod.request("DELETE", f"/containers/{answer['Id']}?force=1")[0] == 204
    else:
        assert _is_docker_error(status, answer), (body, status, answer)
    assert _count(silod) == baseline


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_create_with_garbage_bytes(silod, baseline, raw):
    status, answer = silod.request("POST", "/containers/create", raw=raw)
    assert status < 500, (raw, status, answer)
    if status != 201:
        assert _is_docker_error(status, answer), (raw, status, answer)
    else:
        silod.request("DELETE", f"/containers/{answer['Id']}?force=1")
    assert _count(silod) == baseline


ROUTES = [("GET", "/containers/{id}/json"), ("POST", "/containers/{id}/start"),
          ("POST", "/containers/{id}/stop"), ("POST", "/containers/{id}/kill"),
          ("GET", "/containers/{id}/logs"), ("GET", "/containers/{id}/top"),
          ("POST", "/containers/{id}/rename"), ("DELETE", "/containers/{id}"),
          ("POST", "/containers/{id}/exec"), ("GET", "/exec/{id}/json"),
          ("GET", "/images/{id}/json"), ("GET", "/networks/{id}"), ("GET", "/volumes/{id}")]
ids = st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=30)


@SETTINGS
@given(route=st.sampled_from(ROUTES), ident=ids)
def test_unknown_ids_are_404(silod, baseline, route, ident):
    method, path = route
    ident = "nosuch" + ident
    status, answer = silod.request(method, path.replace("{id}", ident),
                                   {} if method == "POST" else None)
    assert status in (400, 404), (route, ident, status, answer)
    assert _is_docker_error(status, answer)
    assert _count(silod) == baseline


LISTS = ["/containers/json", "/images/json", "/networks", "/volumes", "/events"]


@SETTINGS
@given(route=st.sampled_from(LISTS), filters=json_values)
def test_bad_filters_are_400(silod, baseline, route, filters):
    from urllib.parse import quote
    query = f"?filters={quote(json.dumps(filters))}"
    if route == "/events":
        query += "&since=1&until=2"
    status, answer = silod.request("GET", route + query)
    assert status in (200, 400), (route, filters, status, answer)
    if status == 400:
        assert _is_docker_error(status, answer)


def test_huge_body_is_refused(silod, baseline):
    status, answer = silod.request("POST", "/containers/create",
                                   raw=b'{"Image": "' + b"x" * (64 * 1024 * 1024) + b'"}')
    assert 400 <= status < 500 and _count(silod) == baseline


# -- hostile bodies and queries on the routes that write: generated from the routers' own
#    descriptions of their bodies (the same field specs the API checks bodies against) ----------

from silobox.api.routers.containers import CREATE_BODY, UPDATE_BODY  # noqa: E402
from silobox.api.routers.networks import CONNECT_BODY, CREATE_BODY as NETWORK_BODY  # noqa: E402
from silobox.api.routers.volumes import CREATE_BODY as VOLUME_BODY  # noqa: E402

FUZZ_SCALE = int(os.environ.get("SILOBOX_FUZZ_SCALE", "1"))
"""CI runs a fixed, small sample; SILOBOX_FUZZ_SCALE=10 runs ten times as many fresh examples."""
HOSTILE_SETTINGS = settings(SETTINGS, max_examples=60 * FUZZ_SCALE,
                            derandomize=FUZZ_SCALE == 1)


def _nested(depth: int):
    doc: object = 1
    for _ in range(depth):
        doc = [doc]
    return doc


HOSTILE = [
    2**63 - 1, -(2**63), 2**64 - 1, -1, 0, 10**15, 1.5e308, -0.0, True, None, "", [], {},
    "9" * 5000, "0-99999999999", "0-4095", "0,4096", "4096", "x" * 5000, "../../../etc/passwd",
    "/proc/self/exe", "\x00", "\u202e\ud7ff", " ", "-1", "1e400", "a=b=c", "tcp", "host",
    "container:nosuch", _nested(90), [_nested(50)], {"a": _nested(80)}, ["x"] * 2000,
    {f"k{i}": "v" for i in range(2000)},
]
hostile = st.sampled_from(HOSTILE)
hostile_keys = st.sampled_from(["9" * 5000 + "/tcp", "80/tcp", "x/udp", "70000/tcp", "", "/",
                                "a" * 300, "../x", "\x00", "max-file", "max-size"])


def from_spec(spec, depth: int = 0):
    """Values for a field described as the routers describe them (``check_fields``): mostly of
    the right type, often hostile (wrong types, extreme integers, deep nesting, huge strings)."""
    if isinstance(spec, str):
        good = {"bool": st.booleans(), "str": st.text(max_size=24),
                "int": st.integers(-2**63, 2**64 - 1) | st.integers(-10, 10**10),
                "num": st.floats(allow_nan=False, allow_infinity=False),
                "strslice": st.text(max_size=12) | st.lists(st.text(max_size=12), max_size=3),
                "object": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
                "any": json_values}[spec]
    elif isinstance(spec, list):
        good = st.lists(from_spec(spec[0], depth + 1), max_size=3)
    elif "*" in spec:
        good = st.dictionaries(st.text(max_size=12) | hostile_keys, from_spec(spec["*"], depth + 1),
                               max_size=3)
    else:
        keys = sorted(spec)
        good = st.lists(st.sampled_from(keys), max_size=4, unique=True).flatmap(
            lambda chosen: st.fixed_dictionaries(
                {k: from_spec(spec[k], depth + 1) for k in chosen}))
    return st.one_of(good, good, hostile) if depth < 4 else st.one_of(good, hostile)


def _alive(silod) -> None:
    assert silod.proc.poll() is None, f"silod died:\n{silod.log()}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 600 else text[:600] + f"... ({len(text)} characters)"


def _check(silod, status: int, answer, what) -> None:
    _alive(silod)
    assert status < 500, _short((what, status, answer))
    if status >= 400:
        assert _is_docker_error(status, answer), _short((what, status, answer))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def rss_start(silod, baseline):
    # warm up every route family first, so lazily imported modules and caches are counted
    silod.request("POST", "/containers/create", {"Image": "busybox", "HostConfig": 5})
    silod.request("POST", "/volumes/create", {"Name": 5})
    silod.request("POST", "/networks/create", {"Name": 5})
    return _rss_kib(silod.proc.pid)


@pytest.fixture(scope="module")
def target(silod, rss_start):
    """A created container and a user network for the update, archive and connect routes."""
    status, made = silod.request("POST", "/containers/create",
                                 {"Image": "busybox", "Cmd": ["sleep", "1000"]})
    assert status == 201, made
    status, net = silod.request("POST", "/networks/create", {"Name": "fuzznet"})
    assert status == 201, net
    yield made["Id"], net["Id"]
    silod.request("DELETE", f"/containers/{made['Id']}?force=1")
    silod.request("DELETE", f"/networks/{net['Id']}")


@HOSTILE_SETTINGS
@given(body=from_spec(CREATE_BODY))
def test_create_with_hostile_bodies(silod, baseline, rss_start, body):
    body = {"Image": "busybox", **body} if isinstance(body, dict) else body
    status, answer = silod.request("POST", "/containers/create", body)
    _check(silod, status, answer, body)
    if status == 201:
        assert silod.request("DELETE", f"/containers/{answer['Id']}?force=1&v=1")[0] == 204
    assert _count(silod) == baseline


@HOSTILE_SETTINGS
@given(body=from_spec(UPDATE_BODY))
def test_update_with_hostile_bodies(silod, target, body):
    status, answer = silod.request("POST", f"/containers/{target[0]}/update", body)
    _check(silod, status, answer, body)


@HOSTILE_SETTINGS
@given(body=from_spec(VOLUME_BODY))
def test_volume_create_with_hostile_bodies(silod, rss_start, body):
    status, answer = silod.request("POST", "/volumes/create", body)
    _check(silod, status, answer, body)
    if status == 201:
        assert silod.request("DELETE", f"/volumes/{answer['Name']}")[0] == 204


@HOSTILE_SETTINGS
@given(body=from_spec(NETWORK_BODY))
def test_network_create_with_hostile_bodies(silod, rss_start, body):
    status, answer = silod.request("POST", "/networks/create", body)
    _check(silod, status, answer, body)
    if status == 201:
        assert silod.request("DELETE", f"/networks/{answer['Id']}")[0] == 204


@HOSTILE_SETTINGS
@given(body=from_spec(CONNECT_BODY), disconnect=st.booleans())
def test_network_connect_with_hostile_bodies(silod, target, body, disconnect):
    if isinstance(body, dict) and body.get("Container") == "":
        body["Container"] = target[0]
    route = "disconnect" if disconnect else "connect"
    status, answer = silod.request("POST", f"/networks/{target[1]}/{route}", body)
    _check(silod, status, answer, body)
    if status == 200 and not disconnect:
        silod.request("POST", f"/networks/{target[1]}/disconnect",
                      {"Container": target[0], "Force": True})


def _query_value():
    return st.one_of(st.text(max_size=16), st.sampled_from(
        [str(v) for v in HOSTILE if isinstance(v, (int, float, str))] + ["[" * 3000, "{}"]))


BUILD_PARAMS = ["t", "dockerfile", "buildargs", "labels", "memory", "memswap", "cpushares",
                "cpuperiod", "cpuquota", "shmsize", "cpusetcpus", "extrahosts", "networkmode",
                "platform", "target", "q", "rm", "nocache"]
FUZZ_LABEL = "silobox.test.fuzz"


def _remove_fuzz_images(silod) -> None:
    from urllib.parse import quote
    status, images = silod.request(
        "GET", "/images/json?filters=" + quote(json.dumps({"label": [FUZZ_LABEL]})))
    for image in images if status == 200 else []:
        silod.request("DELETE", f"/images/{image['Id']}?force=1")
    silod.request("POST", "/build/prune")


@pytest.fixture(scope="module", autouse=True)
def _fuzz_images_removed(silod):
    """The images the build fuzzing made go at the end, whichever tests ran."""
    yield
    _remove_fuzz_images(silod)


@settings(HOSTILE_SETTINGS, max_examples=40 * FUZZ_SCALE)
@given(params=st.dictionaries(st.sampled_from(BUILD_PARAMS), _query_value(), max_size=4),
       body=st.sampled_from(["plain", "run", "garbage", "empty", "nested"]))
def test_build_with_hostile_queries(silod, rss_start, params, body):
    from urllib.parse import urlencode
    dockerfile = f"FROM busybox\nLABEL {FUZZ_LABEL}=1\n"
    raw = {"plain": tar_of({"Dockerfile": dockerfile.encode()}),
           "run": tar_of({"Dockerfile": (dockerfile + "RUN true\n").encode()}),
           "garbage": b"\x00garbage" * 100, "empty": b"",
           "nested": tar_of({"Dockerfile": dockerfile.encode(),
                           "a/" * 60 + "f": b"x"})}[body]
    url = "/build?" + urlencode(params)
    try:
        status, answer = silod.request("POST", url, raw=raw,
                                       headers={"Content-Type": "application/x-tar"})
    except (BrokenPipeError, ConnectionResetError):
        # A request line beyond the server's 8 KiB limit is answered (400) and the connection
        # closed while the client is still sending its body.
        assert len(url) > 8000, url[:200]
        _alive(silod)
        return
    _check(silod, status, answer, (params, body))


MAX_REQUEST_LINE = 8190   # aiohttp's HTTP parser's limit for the request line


@HOSTILE_SETTINGS
@given(method=st.sampled_from(["HEAD", "GET", "PUT"]), path=_query_value(),
       body=st.sampled_from(["tar", "garbage", "empty"]))
def test_archive_with_hostile_paths_and_bodies(silod, target, method, path, body):
    from urllib.parse import quote
    raw = {"tar": tar_of({"f": b"data"}), "garbage": b"\x01" * 700, "empty": b""}[body]
    url = f"/containers/{target[0]}/archive?path={quote(path)}"
    try:
        status, answer = silod.request(method, url, raw=raw if method == "PUT" else None,
                                       headers={"Content-Type": "application/x-tar"})
    except (BrokenPipeError, ConnectionResetError):
        # A request line past the HTTP parser's limit is answered 400 and the connection
        # closed before the body is read: a client still sending it may see the close first.
        assert len(url) > MAX_REQUEST_LINE, url[:200]
        _alive(silod)
        return
    _alive(silod)
    assert status < 500, _short((method, path, body, status, answer))


def test_deep_and_huge_documents_on_every_body_route(silod, target):
    deep = b"[" * 200_000 + b"]" * 200_000
    huge_int = b'{"Name": ' + b"9" * 5000 + b"}"
    routes = ["/containers/create", f"/containers/{target[0]}/update", "/volumes/create",
              "/networks/create", f"/networks/{target[1]}/connect", f"/containers/{target[0]}/exec",
              f"/commit?container={target[0]}"]
    for route in routes:
        for raw in (deep, huge_int):
            status, answer = silod.request("POST", route, raw=raw)
            assert status == 400 and _is_docker_error(status, answer), (route, status, answer)
    for query in ("/containers/{id}/stop?t=", "/containers/json?limit=", "/events?since=",
                  "/containers/{id}/logs?stdout=1&tail=", "/containers/{id}/resize?w=1&h="):
        status, answer = silod.request("GET" if "json" in query or "logs" in query
                                       or "events" in query else "POST",
                                       query.replace("{id}", target[0]) + "9" * 5000)
        assert status == 400 and _is_docker_error(status, answer), (query, status, answer)
    _alive(silod)


NEAR_LIMIT = {
    "ints": b'{"Image": "busybox", "Cmd": [' + b"1," * 7_000_000 + b"1]}",
    "strings": b'{"Image": "busybox", "Env": [' + b'"a",' * 3_500_000 + b'"a"]}',
    "deep": b'{"Image": "busybox", "Labels": ' + b"[" * 7_000_000 + b"]" * 7_000_000 + b"}",
    "one string": b'{"Image": 5, "Labels": {"a": "' + b"[,:" * 5_000_000 + b'"}}',
}


@pytest.mark.parametrize("shape", NEAR_LIMIT)
def test_bodies_near_the_size_limit_cost_no_memory(silod, rss_start, shape):
    """15 MB bodies whose decoding would take gigabytes are refused from their text."""
    status, answer = silod.request("POST", "/containers/create", raw=NEAR_LIMIT[shape])
    assert status == 400 and _is_docker_error(status, answer), (shape, status, answer)
    assert _rss_kib(silod.proc.pid) - rss_start < 64 * 1024, shape
    _alive(silod)


@pytest.mark.parametrize("raw", [
    b"GET /containers/json?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /_ping HTTP/1.1\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
    b"POST /containers/create HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    b"\x16\x03\x01 not http at all\r\n\r\n",
])
def test_unparsable_http_gets_docker_error_shape(silod, raw):
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(silod.socket)
        sock.sendall(raw)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, reply[:300]
    assert b"application/json" in head.lower(), reply[:300]
    assert isinstance(json.loads(body)["message"], str)
    _alive(silod)


def test_rss_is_back_near_where_it_started(silod, rss_start):
    """No request above kept memory: silod's RSS is within 20 MB of where it started."""
    _remove_fuzz_images(silod)
    deadline = time.monotonic() + 10
    while True:
        grown = _rss_kib(silod.proc.pid) - rss_start
        if grown < 20 * 1024 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert grown < 20 * 1024, f"silod's RSS grew by {grown} KiB"
