"""HostConfig fields at create: applied (sysctls, masked paths), refused, or discarded.

Containers carry the run's id and are removed even when a test fails.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Iterator

import pytest


@pytest.fixture
def made(silod: Any) -> Iterator[list[str]]:
    ids: list[str] = []
    try:
        yield ids
    finally:
        for cid in ids:
            silod.request("DELETE", f"/containers/{cid}?force=1")


def create(silod: Any, made: list[str], cmd: list[str], **hc: Any) -> tuple[int, Any]:
    status, body = silod.request("POST", "/containers/create",
                                 {"Image": "busybox", "Cmd": cmd, "HostConfig": hc})
    if status == 201:
        made.append(body["Id"])
    return status, body


def run_output(silod: Any, cid: str) -> str:
    api = silod.client
    api.start(cid)
    assert api.wait(cid, timeout=30)["StatusCode"] == 0, api.logs(cid)
    return api.logs(cid).decode()


def read_host(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def test_sysctls_apply_inside_only(silod: Any, made: list[str]) -> None:
    host = (read_host("/proc/sys/net/core/somaxconn"), read_host("/proc/sys/kernel/shmmni"))
    inside = ("1000", "1234") if host != ("1000", "1234") else ("999", "1233")
    status, body = create(silod, made, ["cat", "/proc/sys/net/core/somaxconn",
                                        "/proc/sys/kernel/shmmni"],
                          Sysctls={"net.core.somaxconn": inside[0], "kernel.shmmni": inside[1]})
    assert status == 201, body
    assert run_output(silod, body["Id"]).split() == list(inside)
    assert (read_host("/proc/sys/net/core/somaxconn"), read_host("/proc/sys/kernel/shmmni")) \
        == host


def test_a_sysctl_the_kernel_lacks_fails_the_start_cleanly(silod: Any, made: list[str]) -> None:
    status, body = create(silod, made, ["true"], Sysctls={"net.ipv4.no_such_knob": "1"})
    assert status == 201
    status, err = silod.request("POST", f"/containers/{body['Id']}/start")
    assert status >= 400 and "stage sysctls" in err["message"] \
        and "/proc/sys/net/ipv4/no_such_knob" in err["message"], err
    assert silod.client.inspect_container(body["Id"])["State"]["Status"] == "created"
    _, eps = silod.request("GET", "/silobox/hns/endpoints")
    assert not [e for e in eps if body["Id"] in (e.get("SharedContainers") or [])]


def test_masked_paths_from_the_create_body(silod: Any, made: list[str]) -> None:
    probe = ["sh", "-c", "test -c /proc/timer_list && echo masked || echo open"]
    _, default = create(silod, made, probe)
    _, unmasked = create(silod, made, probe, MaskedPaths=[], ReadonlyPaths=[])
    assert run_output(silod, default["Id"]).strip() == "masked"
    assert run_output(silod, unmasked["Id"]).strip() == "open"


@pytest.mark.parametrize("hc, message", [
    ({"PidMode": "host"}, "invalid PidMode 'host': every container has its own PID namespace"),
    ({"GroupAdd": ["100"]}, "invalid HostConfig.GroupAdd: supplementary groups (--group-add) "
                            "are not supported by silobox"),
    ({"Devices": [{"PathOnHost": "/dev/zero", "PathInContainer": "/dev/z",
                   "CgroupPermissions": "rwm"}]},
     "invalid HostConfig.Devices: adding host devices (--device) is not supported by silobox"),
    ({"Sysctls": {"vm.swappiness": "1"}},
     "sysctl 'vm.swappiness' is not allowed: it is not in a separate kernel namespace"),
    ({"Runtime": "kata"}, "Unknown runtime specified kata"),
])
def test_refused_fields_create_nothing(silod: Any, made: list[str], hc: dict,
                                       message: str) -> None:
    before = len(silod.client.containers(all=True))
    assert create(silod, made, ["true"], **hc) == (400, {"message": message})
    assert len(silod.client.containers(all=True)) == before


def test_unenforced_resources_are_discarded_with_warnings(silod: Any, made: list[str]) -> None:
    status, body = create(silod, made, ["true"], BlkioWeight=300, MemorySwappiness=10)
    assert status == 201
    assert body["Warnings"] == [
        "silobox does not apply Block I/O weight: BlkioWeight discarded.",
        "silobox does not apply memory swappiness capabilities: MemorySwappiness discarded."]
    hc = silod.client.inspect_container(body["Id"])["HostConfig"]
    assert (hc["BlkioWeight"], hc["MemorySwappiness"]) == (0, -1)


def test_docker_cli_defaults_are_accepted(silod: Any, made: list[str]) -> None:
    """docker-py sends only what is set; the CLI sends every field with its zero value."""
    env = {**os.environ, "DOCKER_HOST": f"unix://{silod.socket}"}
    r = subprocess.run(["/usr/local/bin/docker", "create", "busybox", "true"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr, r.stderr
    made.append(r.stdout.strip())
    assert silod.client.inspect_container(r.stdout.strip())["State"]["Status"] == "created"
