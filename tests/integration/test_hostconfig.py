"""HostConfig fields at create: applied (sysctls, masked paths), refused, or discarded.

Containers carry the run's id and are removed even when a test fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import Any

import pytest


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


def test_group_add_and_oom_score_adj_reach_init_and_exec(silod: Any, made: list[str]) -> None:
    status, body = create(silod, made, ["sleep", "60"], GroupAdd=["100", "wheel"],
                          OomScoreAdj=300)
    assert status == 201, body
    api = silod.client
    api.start(body["Id"])
    for pid in ("1", "self"):
        e = api.exec_create(body["Id"], ["sh", "-c", f"id -G; cat /proc/{pid}/oom_score_adj"])
        assert api.exec_start(e["Id"]).decode().split() == ["0", "10", "100", "300"]
    status, body = create(silod, made, ["true"], GroupAdd=["no-such-group"])
    assert status == 201
    status, err = silod.request("POST", f"/containers/{body['Id']}/start")
    assert status == 400 and "unable to find group no-such-group" in err["message"], err


def exit_and_logs(silod: Any, cid: str) -> tuple[int, str]:
    api = silod.client
    api.start(cid)
    return api.wait(cid, timeout=30)["StatusCode"], api.logs(cid).decode()


def test_devices_and_device_cgroup_rules(silod: Any, made: list[str]) -> None:
    # loop-control (10:237) is outside Docker's default device set: only a rule opens it, and
    # opening it does nothing. Only opens are tried here.
    script = ("ls -l /dev/myzero /dev/ro/lc; head -c 3 /dev/myzero | od -An -tx1; "
              ": < /dev/ro/lc && echo read-open; (: > /dev/ro/lc) 2>/dev/null || echo "
              "write-refused")
    status, body = create(silod, made, ["sh", "-c", script], Devices=[
        {"PathOnHost": "/dev/zero", "PathInContainer": "/dev/myzero", "CgroupPermissions": "rwm"},
        {"PathOnHost": "/dev/loop-control", "PathInContainer": "/dev/ro/lc",
         "CgroupPermissions": "r"}])
    assert status == 201, body
    code, text = exit_and_logs(silod, body["Id"])
    assert code == 0, text
    assert "1,   5" in text and "/dev/myzero" in text and "10, 237" in text, text
    assert " 00 00 00\n" in text and "read-open" in text and "write-refused" in text, text

    probe = ["sh", "-c", "mknod /tmp/lc c 10 237 && : < /tmp/lc && echo opened"]
    _, ruled = create(silod, made, probe, DeviceCgroupRules=["c 10:237 r"])
    assert exit_and_logs(silod, ruled["Id"]) == (0, "opened\n")
    # Without a rule the node can be made but not opened, as under Docker's default policy.
    _, plain = create(silod, made, probe)
    code, text = exit_and_logs(silod, plain["Id"])
    assert code != 0 and "Operation not permitted" in text, text


def test_a_missing_host_device_fails_the_start(silod: Any, made: list[str]) -> None:
    status, body = create(silod, made, ["true"], Devices=[
        {"PathOnHost": "/dev/sbx-no-such-device", "PathInContainer": "/dev/x",
         "CgroupPermissions": "rwm"}])
    assert status == 201
    status, err = silod.request("POST", f"/containers/{body['Id']}/start")
    assert (status, err) == (400, {"message": "error gathering device information while adding "
                                              "custom device '/dev/sbx-no-such-device': no "
                                              "such file or directory"})
    assert silod.client.inspect_container(body["Id"])["State"]["Status"] == "created"


def test_host_ipc_uts_and_cgroup_namespaces(silod: Any, made: list[str], run_id: str) -> None:
    mine = {n: os.readlink(f"/proc/self/ns/{n}") for n in ("ipc", "uts", "cgroup", "net")}
    probe = f"/dev/shm/sbx-{run_id}-probe"
    with open(probe, "w") as f:
        f.write("from the host\n")
    try:
        script = ("for n in ipc uts cgroup net; do readlink /proc/1/ns/$n; done; hostname; "
                  f"cat {probe}")
        status, body = create(silod, made, ["sh", "-c", script], IpcMode="host",
                              UTSMode="host", CgroupnsMode="host")
        assert status == 201, body
        lines = run_output(silod, body["Id"]).splitlines()
        assert lines[:3] == [mine["ipc"], mine["uts"], mine["cgroup"]], lines
        assert lines[3] != mine["net"]        # the network stays the container's own
        assert lines[4:] == [socket.gethostname(), "from the host"], lines
    finally:
        os.unlink(probe)
    status, err = silod.request("POST", "/containers/create", {
        "Image": "busybox", "Hostname": "mine", "HostConfig": {"UTSMode": "host"}})
    assert (status, err) == (400, {"message": "Conflicting options: hostname and the UTS mode"})


def test_host_pid_namespace(silod: Any, made: list[str]) -> None:
    """--pid host: the test's own process is visible, the container's is not PID 1; exec too."""
    me = os.getpid()
    script = f"readlink /proc/self/ns/pid; echo $$; test -d /proc/{me} && echo sees-host"
    status, body = create(silod, made, ["sh", "-c", script + "; exec sleep 60"],
                          PidMode="host")
    assert status == 201, body
    api = silod.client
    api.start(body["Id"])
    eventually_logs = ""
    for _ in range(100):
        eventually_logs = api.logs(body["Id"]).decode()
        if "sees-host" in eventually_logs:
            break
        time.sleep(0.05)
    ns, pid, seen = eventually_logs.split()
    assert ns == os.readlink("/proc/self/ns/pid") and int(pid) > 1 and seen == "sees-host"
    e = api.exec_create(body["Id"], ["sh", "-c", script])
    assert api.exec_start(e["Id"]).decode().split()[0] == ns
    api.stop(body["Id"], timeout=1)   # not PID 1: SIGTERM's default action ends it at once
    assert api.inspect_container(body["Id"])["State"]["ExitCode"] == 143


def test_masked_paths_from_the_create_body(silod: Any, made: list[str]) -> None:
    probe = ["sh", "-c", "test -c /proc/timer_list && echo masked || echo open"]
    _, default = create(silod, made, probe)
    _, unmasked = create(silod, made, probe, MaskedPaths=[], ReadonlyPaths=[])
    assert run_output(silod, default["Id"]).strip() == "masked"
    assert run_output(silod, unmasked["Id"]).strip() == "open"


@pytest.mark.parametrize("hc, message", [
    ({"UTSMode": "private"}, "invalid UTSMode 'private': use host or container:NAME"),
    ({"UTSMode": "container:no-such-one"}, "No such container: no-such-one"),
    ({"PidMode": "container:no-such-one"}, "No such container: no-such-one"),
    ({"OomScoreAdj": -1001}, "Invalid value -1001, range for oom score adj is [-1000, 1000]"),
    ({"Devices": [{"PathOnHost": "/dev/zero", "PathInContainer": "/dev/z",
                   "CgroupPermissions": "rx"}]}, "bad mode specified: rx"),
    ({"Devices": [{"PathOnHost": "/dev/zero", "PathInContainer": "dev/z",
                   "CgroupPermissions": "rw"}]}, "bad format for path: dev/z"),
    ({"DeviceCgroupRules": ["c 1:x rwm"]}, "malformed device numbers in rule 'c 1:x rwm'"),
    ({"Sysctls": {"vm.swappiness": "1"}},
     "sysctl 'vm.swappiness' is not allowed: it is not in a separate kernel namespace"),
    ({"Runtime": "kata"}, "Unknown runtime specified kata"),
])
def test_refused_fields_create_nothing(silod: Any, made: list[str], hc: dict,
                                       message: str) -> None:
    before = len(silod.client.containers(all=True))
    status = 404 if message.startswith("No such container") else 400
    assert create(silod, made, ["true"], **hc) == (status, {"message": message})
    assert len(silod.client.containers(all=True)) == before


def test_unenforced_resources_are_discarded_with_warnings(silod: Any, made: list[str]) -> None:
    status, body = create(silod, made, ["true"], MemorySwappiness=10)
    assert status == 201
    assert body["Warnings"] == [
        "silobox does not apply memory swappiness capabilities: MemorySwappiness discarded."]
    hc = silod.client.inspect_container(body["Id"])["HostConfig"]
    assert hc["MemorySwappiness"] == -1


def test_docker_cli_defaults_are_accepted(silod: Any, made: list[str]) -> None:
    """docker-py sends only what is set; the CLI sends every field with its zero value."""
    env = {**os.environ, "DOCKER_HOST": f"unix://{silod.socket}"}
    r = subprocess.run(["/usr/local/bin/docker", "create", "busybox", "true"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr, r.stderr
    made.append(r.stdout.strip())
    assert silod.client.inspect_container(r.stdout.strip())["State"]["Status"] == "created"


def test_ipc_and_pid_of_another_container(silod: Any, made: list[str]) -> None:
    api = silod.client
    status, donor = create(silod, made, ["sh", "-c", "echo shared > /dev/shm/x; exec sleep 60"],
                           IpcMode="shareable", ShmSize=8 * 1024 * 1024)
    assert status == 201
    _, private = create(silod, made, ["sleep", "60"])
    script = ("cat /dev/shm/x; readlink /proc/self/ns/ipc; readlink /proc/self/ns/pid; "
              "ps -o args | grep -c '^sleep 60$'")
    _, joiner = create(silod, made, ["sh", "-c", script], IpcMode=f"container:{donor['Id'][:12]}",
                       PidMode=f"container:{donor['Id'][:12]}")
    # Docker's 409 while the donor is not running; the joiner stays created.
    status, err = silod.request("POST", f"/containers/{joiner['Id']}/start")
    assert status == 409 and "of a non running container" in err["message"], err
    api.start(donor["Id"])
    api.start(private["Id"])
    time.sleep(0.3)
    assert api.inspect_container(joiner["Id"])["HostConfig"]["IpcMode"] == \
        f"container:{donor['Id']}"
    api.start(joiner["Id"])
    assert api.wait(joiner["Id"], timeout=30)["StatusCode"] == 0
    lines = api.logs(joiner["Id"]).decode().split()
    donor_ns = []
    for ns in ("ipc", "pid"):
        e = api.exec_create(donor["Id"], ["readlink", f"/proc/self/ns/{ns}"])
        donor_ns.append(api.exec_start(e["Id"]).decode().strip())
    # The donor's /dev/shm, IPC and PID namespaces; its sleep is among the joiner's processes.
    assert lines == ["shared", *donor_ns, "1"], lines
    _, other = create(silod, made, ["true"], IpcMode=f"container:{private['Id']}")
    status, err = silod.request("POST", f"/containers/{other['Id']}/start")
    assert (status, err) == (400, {"message": "non-shareable IPC (hint: use IpcMode:shareable "
                                              "for the donor container)"})
    shm = os.path.join(silod.root, "containers", donor["Id"], "shm")
    assert os.path.ismount(shm)
    api.stop(donor["Id"], timeout=0)
    assert not os.path.ismount(shm)


def test_uts_of_another_container(silod: Any, made: list[str]) -> None:
    """``UTSMode: container:X`` (a silobox extension the CRI's pods use): the joiner is in the
    donor's UTS namespace, sees its hostname, and does not set its own over it."""
    api = silod.client
    status, donor = create(silod, made, ["sleep", "60"])
    assert status == 201, donor
    api.start(donor["Id"])
    _, joiner = create(silod, made, ["sh", "-c", "hostname; readlink /proc/self/ns/uts"],
                       UTSMode=f"container:{donor['Id'][:12]}")
    api.start(joiner["Id"])
    assert api.wait(joiner["Id"], timeout=30)["StatusCode"] == 0
    e = api.exec_create(donor["Id"], ["readlink", "/proc/self/ns/uts"])
    donor_ns = api.exec_start(e["Id"]).decode().strip()
    assert api.logs(joiner["Id"]).decode().split() == [donor["Id"][:12], donor_ns]
    assert donor_ns != os.readlink("/proc/self/ns/uts")
