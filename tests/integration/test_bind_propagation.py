"""Bind mount propagation through the Docker API: ``-v src:dst:rslave|rshared`` and
``Mounts[].BindOptions.Propagation``, on real mounts.

Each test makes its own mount points inside its tmp directory (a bind of the directory onto
itself, made shared or private) and unmounts everything under it at the end.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Iterator

import docker
import pytest
from docker.types import Mount

IMAGE = "busybox"


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _umount_all(path: str) -> None:
    for _ in range(8):   # mounts stacked on the path: one layer a time
        if not _mounted(path):
            return
        subprocess.run(["umount", "-R", "-l", path], capture_output=True)


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


@pytest.fixture
def host_dir(tmp_path) -> Iterator:
    """``make(kind)``: a directory bound onto itself, its mount made ``kind`` (rshared,
    rprivate...). Everything mounted under them is unmounted afterwards."""
    made: list[str] = []

    def make(kind: str) -> str:
        d = str(tmp_path / f"{kind}-{len(made)}")
        os.mkdir(d)
        made.append(d)
        _mount("--bind", d, d)
        _mount(f"--make-{kind}", d)
        return d

    yield make
    for d in reversed(made):
        _umount_all(d)
        assert not _mounted(d)


@pytest.fixture
def api(silod):
    return silod.client


def _wait(predicate, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _start(api, cmd: str, **hc) -> str:
    c = api.create_container(IMAGE, ["sh", "-c", cmd],
                             host_config=api.create_host_config(**hc))
    api.start(c)
    return c["Id"]


def test_rslave_bind_sees_host_mounts_made_after_start(api, host_dir):
    src = host_dir("rshared")
    os.mkdir(os.path.join(src, "sub"))
    cid = _start(api, "for i in $(seq 200); do [ -e /m/sub/marker ] && exec echo seen; "
                      "sleep 0.1; done; echo missing; exit 1",
                 binds=[f"{src}:/m:rslave"])
    try:
        _mount("-t", "tmpfs", "tmpfs", os.path.join(src, "sub"))
        open(os.path.join(src, "sub", "marker"), "w").close()
        assert api.wait(cid, timeout=60)["StatusCode"] == 0, api.logs(cid)
        mounts = api.inspect_container(cid)["Mounts"]
        assert [m["Propagation"] for m in mounts if m["Destination"] == "/m"] == ["rslave"]
    finally:
        api.remove_container(cid, force=True)


def test_rshared_bind_propagates_both_ways(api, host_dir):
    src = host_dir("rshared")
    os.mkdir(os.path.join(src, "fromhost"))
    os.mkdir(os.path.join(src, "fromctr"))
    # the container mounts a tmpfs under the bind; then waits for the host's mount
    cmd = ("mount -t tmpfs ctr /m/fromctr && touch /m/fromctr/inside && "
           "for i in $(seq 200); do [ -e /m/fromhost/marker ] && exec sleep 30; "
           "sleep 0.1; done; exit 1")
    cid = _start(api, cmd, privileged=True,
                 mounts=[Mount("/m", src, type="bind", propagation="rshared")])
    try:
        inside = os.path.join(src, "fromctr", "inside")
        assert _wait(lambda: os.path.exists(inside)), api.logs(cid)
        assert _mounted(os.path.join(src, "fromctr"))
        _mount("-t", "tmpfs", "tmpfs", os.path.join(src, "fromhost"))
        open(os.path.join(src, "fromhost", "marker"), "w").close()
        time.sleep(0.5)
        out = api.exec_start(api.exec_create(cid, ["cat", "/proc/self/mountinfo"]))
        assert b" /m/fromhost " in out and b" /m/fromctr " in out, out
        assert api.inspect_container(cid)["State"]["Running"]
    finally:
        api.remove_container(cid, force=True)


def test_private_bind_stays_private(api, host_dir):
    """The default: a mount made on the host under the source after start is not seen."""
    src = host_dir("rshared")
    os.mkdir(os.path.join(src, "sub"))
    cid = _start(api, "sleep 30", binds=[f"{src}:/m"])
    try:
        _mount("-t", "tmpfs", "tmpfs", os.path.join(src, "sub"))
        out = api.exec_start(api.exec_create(cid, ["cat", "/proc/self/mountinfo"]))
        assert b" /m/sub " not in out
    finally:
        api.remove_container(cid, force=True)


def test_propagation_needs_a_linked_source(api, host_dir):
    private = host_dir("private")
    for spec, msg in ((f"{private}:/m:rshared", "is not a shared mount"),
                      (f"{private}:/m:rslave", "is not a shared or slave mount"),
                      (f"{private}:/m:rshared,rslave", "invalid mode"),
                      (f"{private}:/m:rsharedx", "invalid mode")):
        with pytest.raises(docker.errors.APIError) as e:
            api.create_container(IMAGE, ["true"],
                                 host_config=api.create_host_config(binds=[spec]))
        assert e.value.status_code == 400 and msg in str(e.value), (spec, str(e.value))
    with pytest.raises(docker.errors.APIError) as e:
        api.create_container(IMAGE, ["true"], host_config=api.create_host_config(
            mounts=[Mount("/m", private, type="bind", propagation="rshared")]))
    assert e.value.status_code == 400 and "not a shared mount" in str(e.value)
    # a slave source is enough for rslave: a bind of a shared mount, made its slave
    master = host_dir("rshared")
    slave = host_dir("rprivate")
    _mount("--bind", master, slave)
    _mount("--make-rslave", slave)
    c = api.create_container(IMAGE, ["true"],
                             host_config=api.create_host_config(binds=[f"{slave}:/m:rslave"]))
    api.remove_container(c, force=True)
