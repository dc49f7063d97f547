"""Programs inside see their limits: the container's own cgroup view at /sys/fs/cgroup.

Containers carry the run's id and are removed even when a test fails.
"""

from __future__ import annotations

from typing import Any

from silobox.kernel.features import cgroup_layout

V2 = cgroup_layout().mode == "v2"

READ_LIMITS = (
    "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max /sys/fs/cgroup/pids.max" if V2 else
    "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us "
    "/sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/pids/pids.max")
EXPECTED = (["67108864", "50000 100000", "20"] if V2 else
            ["67108864", "50000", "100000", "20"])


def run(silod: Any, made: list[str], script: str, **hc: Any) -> tuple[int, str]:
    status, body = silod.request("POST", "/containers/create",
                                 {"Image": "busybox", "Cmd": ["sh", "-c", script],
                                  "HostConfig": hc})
    assert status == 201, body
    made.append(body["Id"])
    api = silod.client
    api.start(body["Id"])
    code = api.wait(body["Id"], timeout=30)["StatusCode"]
    return code, api.logs(body["Id"]).decode()


LIMITS = {"Memory": 64 << 20, "NanoCpus": 500_000_000, "PidsLimit": 20}


def test_limits_read_from_sys_fs_cgroup_read_only(silod: Any, made: list[str]) -> None:
    script = (f"{READ_LIMITS}; grep ' /sys/fs/cgroup' /proc/self/mounts | head -3; "
              "touch /sys/fs/cgroup/x 2>&1; echo 1 > /sys/fs/cgroup/"
              + ("pids.max" if V2 else "pids/pids.max") + " 2>&1; true")
    code, out = run(silod, made, script, **LIMITS)
    lines = out.splitlines()
    assert code == 0 and lines[:len(EXPECTED)] == EXPECTED, out
    assert "Read-only file system" in out, out
    mounts = [l for l in lines if len(l.split()) == 6 and l.split()[1].startswith("/sys/fs/")]
    assert mounts and all(" ro," in l for l in mounts), mounts


def test_docker_cli_run_reads_its_limits(silod: Any) -> None:
    """The issue's own check: ``docker run -m 64m --cpus 0.5 --pids-limit 20``."""
    import os
    import subprocess
    env = {**os.environ, "DOCKER_HOST": f"unix://{silod.socket}"}
    r = subprocess.run(["/usr/local/bin/docker", "run", "--rm", "-m", "64m", "--cpus", "0.5",
                        "--pids-limit", "20", "busybox", "sh", "-c", READ_LIMITS], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.splitlines() == EXPECTED, (r.stdout, r.stderr)


def test_docker_layout_and_cgroupns(silod: Any, made: list[str]) -> None:
    if V2:
        code, out = run(silod, made, "cat /proc/self/cgroup; ls /sys/fs/cgroup/memory.max",
                        **LIMITS)
        assert code == 0 and "0::/" in out, out
        return
    import os

    from silobox.kernel.jobobject.v1 import CONTROLLERS
    # the host's controller hierarchies and their links; not name=systemd nor hybrid's unified
    dirs = {os.path.basename(m) for c, m in cgroup_layout().v1_mounts.items()
            if c in CONTROLLERS}
    host = sorted(dirs | {e for e in os.listdir("/sys/fs/cgroup")
                          if os.path.islink(f"/sys/fs/cgroup/{e}")
                          and os.readlink(f"/sys/fs/cgroup/{e}") in dirs})
    code, out = run(silod, made, "ls /sys/fs/cgroup; cat /sys/fs/cgroup/memory/cgroup.procs",
                    **LIMITS)
    lines = out.split()
    assert code == 0 and lines[:len(host)] == host, (out, host)
    assert lines[len(host):] == ["1"], out    # the container's own group: only its processes
    # --cgroupns host: the container's directory is bound, with the same limits
    code, out = run(silod, made, f"{READ_LIMITS}; cat /sys/fs/cgroup/memory/cgroup.procs",
                    CgroupnsMode="host", **LIMITS)
    assert code == 0 and out.splitlines()[:len(EXPECTED)] == EXPECTED, out
    assert out.split()[len(EXPECTED):] == ["1"], out


def test_privileged_view_is_writable(silod: Any, made: list[str]) -> None:
    path = "/sys/fs/cgroup/pids.max" if V2 else "/sys/fs/cgroup/pids/pids.max"
    code, out = run(silod, made, f"echo 30 > {path} && cat {path}", Privileged=True, **LIMITS)
    assert code == 0 and out.strip() == "30", out
