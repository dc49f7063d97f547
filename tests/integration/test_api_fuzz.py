"""Property-based fuzzing of the API: malformed requests get Docker's 4xx error shape and change
nothing. Bounded in examples and time so that it fits in CI."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
