"""Block I/O limits and the Windows resource controls, applied to the job object and live.

Every container carries the run's id and is removed even when a test fails. Throttles are set
on the container's own cgroup only; the devices are the host's root disk (read only as a
number) and the container's sandbox disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import pytest

from silobox.kernel.features import cgroup_layout
from silobox.kernel.jobobject import io_support

V2 = cgroup_layout().mode == "v2"
IO = io_support()
DOCKER = "/usr/local/bin/docker"
needs_throttle = pytest.mark.skipif("throttle" not in IO,
                                    reason="this host's cgroups have no block I/O throttling")


def root_disk() -> tuple[str, int, int]:
    """A block device node of this host (the root filesystem's) and its numbers."""
    for name in sorted(os.listdir("/sys/block")):
        if name.startswith(("loop", "zram", "ram")):
            continue
        with open(f"/sys/block/{name}/dev") as f:
            major, minor = (int(x) for x in f.read().split(":"))
        if os.path.exists(f"/dev/{name}"):
            return f"/dev/{name}", major, minor
    pytest.skip("no block device node on this host")


def docker(silod: Any, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_HOST": f"unix://{silod.socket}"}
    return subprocess.run([DOCKER, *args], env=env, capture_output=True, text=True, timeout=60)


def silo_run(silod: Any, made: list[str], *args: str) -> tuple[str, str]:
    r = silod.silo("run", "-d", *args, "busybox", "sleep", "60")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.decode().strip()
    made.append(cid)
    return cid, r.stderr.decode()


def sh(silod: Any, cid: str, script: str) -> str:
    r = silod.silo("exec", cid, "sh", "-c", script)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout.decode()


def throttle_file(kind: str) -> str:
    return "/sys/fs/cgroup/io.max" if V2 else f"/sys/fs/cgroup/blkio/blkio.throttle.{kind}_device"


@needs_throttle
def test_device_throttles_through_the_docker_cli(silod: Any, made: list[str]) -> None:
    dev, major, minor = root_disk()
    r = docker(silod, "run", "-d", "--device-read-bps", f"{dev}:1mb", "--device-write-bps",
               f"{dev}:2mb", "--device-read-iops", f"{dev}:300", "--device-write-iops",
               f"{dev}:400", "busybox", "sleep", "60")
    assert r.returncode == 0 and "WARNING" not in r.stderr, r.stderr
    cid = r.stdout.strip()
    made.append(cid)
    hc = silod.client.inspect_container(cid)["HostConfig"]
    assert hc["BlkioDeviceReadBps"] == [{"Path": dev, "Rate": 1 << 20}]
    assert hc["BlkioDeviceWriteIOps"] == [{"Path": dev, "Rate": 400}]
    if V2:
        line = sh(silod, cid, "cat /sys/fs/cgroup/io.max").strip()
        assert line == f"{major}:{minor} rbps={1 << 20} wbps={2 << 20} riops=300 wiops=400"
    else:
        for kind, value in (("read_bps", 1 << 20), ("write_bps", 2 << 20), ("read_iops", 300),
                            ("write_iops", 400)):
            assert sh(silod, cid, f"cat {throttle_file(kind)}").strip() == \
                f"{major}:{minor} {value}", kind
    # a path that is not a block device is refused at create
    status, body = silod.request("POST", "/containers/create", {
        "Image": "busybox", "HostConfig": {"BlkioDeviceReadBps": [{"Path": "/dev/null",
                                                                   "Rate": 1}]}})
    assert status == 400 and "not a block device" in body["message"], body


def test_blkio_weight_applied_or_dropped_as_docker_does(silod: Any, made: list[str]) -> None:
    status, body = silod.request("POST", "/containers/create", {
        "Image": "busybox", "Cmd": ["sleep", "60"], "HostConfig": {"BlkioWeight": 300}})
    assert status == 201, body
    made.append(body["Id"])
    hc = silod.client.inspect_container(body["Id"])["HostConfig"]
    if "weight" in IO:
        assert body["Warnings"] in ([], None) and hc["BlkioWeight"] == 300
    else:
        assert body["Warnings"] == ["Your kernel does not support Block I/O weight or the "
                                    "cgroup is not mounted. Weight discarded."]
        assert hc["BlkioWeight"] == 0
    status, body = silod.request("POST", "/containers/create", {
        "Image": "busybox", "HostConfig": {"BlkioWeight": 5}})
    if "weight" in IO:
        assert (status, body) == (400, {"message": "Range of blkio weight is from 10 to 1000"})


def test_cpu_count_is_what_nproc_shows_and_updates_live(silod: Any, made: list[str]) -> None:
    ncpu = len(os.sched_getaffinity(0))
    cid, _ = silo_run(silod, made, "--cpu-count", "1")
    assert sh(silod, cid, "nproc").strip() == "1"
    props = json.loads(silod.silo("hcs", "inspect", cid).stdout)[0]
    assert props["Processor"]["Count"] == 1, props
    assert silod.client.inspect_container(cid)["HostConfig"]["CpuCount"] == 1
    if ncpu > 1:
        r = silod.silo("update", "--cpu-count", str(ncpu), cid)
        assert r.returncode == 0, r.stderr
        assert sh(silod, cid, "nproc").strip() == str(ncpu)
        assert json.loads(silod.silo("hcs", "inspect", cid).stdout)[0]["Processor"][
            "Count"] == ncpu
    status, body = silod.request("POST", "/containers/create", {
        "Image": "busybox", "HostConfig": {"CpuCount": 1, "CpusetCpus": "0"}})
    assert (status, body) == (400, {"message": "Conflicting options: CPU count and cpuset CPUs "
                                                "cannot both be set"})


def test_cpu_percent_is_a_quota_of_the_host(silod: Any, made: list[str]) -> None:
    ncpu = os.cpu_count() or 1
    cid, _ = silo_run(silod, made, "--cpu-percent", "50")
    quota = ("cat /sys/fs/cgroup/cpu.max" if V2 else
             "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us")
    want = 50 * ncpu * 1000
    assert sh(silod, cid, quota).split() == [str(want), "100000"]
    assert json.loads(silod.silo("hcs", "inspect", cid).stdout)[0]["Processor"][
        "Maximum"] == 5000
    r = silod.silo("update", "--cpu-percent", "25", cid)
    assert r.returncode == 0, r.stderr
    assert sh(silod, cid, quota).split()[0] == str(25 * ncpu * 1000)
    assert silod.client.inspect_container(cid)["HostConfig"]["CpuPercent"] == 25
    for hc, message in (({"CpuPercent": 101}, "Range of CPU percent is from 1 to 100"),
                        ({"CpuPercent": 10, "NanoCpus": 10**9},
                         "Conflicting options: Nano CPUs and CPU Percent cannot both be set")):
        status, body = silod.request("POST", "/containers/create",
                                     {"Image": "busybox", "HostConfig": hc})
        assert (status, body) == (400, {"message": message})
    # docker-py's cpu_count/cpu_percent reach the same fields; count wins over percent
    api = silod.client
    c = api.create_container("busybox", ["true"], host_config=api.create_host_config(
        cpu_count=1, cpu_percent=20))
    made.append(c["Id"])
    assert any("CPU count takes priority" in w for w in c["Warnings"] or []), c
    hc = api.inspect_container(c["Id"])["HostConfig"]
    assert (hc["CpuCount"], hc["CpuPercent"]) == (1, 0)


@needs_throttle
def test_io_maximums_throttle_the_sandbox_disk_live(silod: Any, made: list[str]) -> None:
    cid, warn = silo_run(silod, made, "--io-maxbandwidth", "1mb", "--io-maxiops", "500")
    info = silod.client.inspect_container(cid)
    if info["HostConfig"]["IOMaximumBandwidth"] == 0:
        assert "directory sandbox" in warn
        pytest.skip("this daemon's sandboxes are directories: no disk to throttle")
    st = os.stat(os.path.join(silod.root, "containers", cid, "sandbox"))
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    props = json.loads(silod.silo("hcs", "inspect", cid).stdout)[0]
    assert props["Storage"]["QoS"] == {"IopsMaximum": 500, "BandwidthMaximum": 1 << 20}
    if V2:
        assert f"{dev} rbps={1 << 20} wbps={1 << 20} riops=500 wiops=500" in \
            sh(silod, cid, "cat /sys/fs/cgroup/io.max")
    else:
        assert sh(silod, cid, f"cat {throttle_file('write_bps')}").strip() == f"{dev} {1 << 20}"
        assert sh(silod, cid, f"cat {throttle_file('read_iops')}").strip() == f"{dev} 500"
    # the throttle holds: 2 MiB written directly to the disk take at least about 1.5 s
    t0 = time.monotonic()
    sh(silod, cid, "dd if=/dev/zero of=/tmp/f bs=64k count=32 oflag=direct 2>/dev/null")
    assert time.monotonic() - t0 > 1.2
    r = silod.silo("update", "--io-maxbandwidth", "8mb", cid)
    assert r.returncode == 0, r.stderr
    if not V2:
        assert sh(silod, cid, f"cat {throttle_file('write_bps')}").strip() == f"{dev} {8 << 20}"
    assert json.loads(silod.silo("hcs", "inspect", cid).stdout)[0]["Storage"]["QoS"][
        "BandwidthMaximum"] == 8 << 20
