"""``--isolation hyperv``: a container in a utility VM of its own, driven as any container.

The end-to-end container runs a long command, and stdio, logs, exec, exit codes, the limits as
the VM's size and the HCS view are checked on it; it is stopped and started again (a second VM,
under TCG where KVM does not work about 16 s each) with its writable layer kept on its own
disk; then it is removed, and nothing of its VMs or its disk may remain.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from typing import Any, Iterator

import pytest

from silobox.compute.uvm.assets import installed_release
from silobox.compute.uvm.hyperv import DISK_ROOT
from silobox.compute.uvm.vm import STATE_DIR, _start_time

pytestmark = pytest.mark.skipif(
    installed_release() is None or not os.path.exists("/usr/lib/qemu/virtiofsd"),
    reason="no utility VM here (scripts/install.sh installs QEMU and the guest kernel)")


@pytest.fixture(autouse=True)
def no_vm_left(silod: Any) -> Iterator[None]:
    """After each test (and its containers' removal): no VM of this silod may remain. Those
    that do (a failed test, a silod that died) are killed, so no run leaves one running."""
    yield
    left = []
    for name in os.listdir(STATE_DIR) if os.path.isdir(STATE_DIR) else []:
        try:
            with open(os.path.join(STATE_DIR, name, "owner.json")) as f:
                owner = json.load(f)
        except (OSError, ValueError):
            continue
        if not str(owner.get("ref") or "").startswith(silod.exec_root + "/"):
            continue
        left.append(name)
        if owner.get("qemu") and _start_time(owner["qemu"]) == owner.get("qemu_start"):
            os.kill(owner["qemu"], 9)
        shutil.rmtree(os.path.join(STATE_DIR, name), ignore_errors=True)
    assert not left, f"utility VMs left behind: {left}"
    disks = []   # hyperv containers' disks, kept until rm
    for name in os.listdir(DISK_ROOT) if os.path.isdir(DISK_ROOT) else []:
        try:
            with open(os.path.join(DISK_ROOT, name, "ref.json")) as f:
                ref = json.load(f).get("ref") or ""
        except (OSError, ValueError):
            continue
        if ref.startswith(silod.root + "/"):
            disks.append(name)
            shutil.rmtree(os.path.join(DISK_ROOT, name), ignore_errors=True)
    assert not disks, f"hyperv container disks left behind: {disks}"


def test_disks_of_removed_containers_are_swept(tmp_path: Any, monkeypatch: Any) -> None:
    """A disk outlives its container only while the container's directory exists (a silod
    killed during rm leaves one; the next hyperv start removes it)."""
    from silobox.compute.uvm import hyperv
    monkeypatch.setattr(hyperv, "DISK_ROOT", str(tmp_path / "disks"))
    kept, gone = tmp_path / "containers" / "a", tmp_path / "containers" / "b"
    kept.mkdir(parents=True)
    for cid, ref in (("a", kept), ("b", gone)):
        os.makedirs(os.path.dirname(hyperv.container_disk(cid)))
        with open(os.path.join(os.path.dirname(hyperv.container_disk(cid)), "ref.json"), "w") as f:
            json.dump({"ref": str(ref)}, f)
    assert hyperv.cleanup_stale_disks() == ["b"]
    assert os.path.isdir(os.path.dirname(hyperv.container_disk("a")))
    hyperv.remove_container_disk("a")
    assert not os.path.exists(tmp_path / "disks" / "a")


def test_hyperv_container_end_to_end(silod: Any, made: list[str]) -> None:
    api = silod.client
    status, body = silod.request("POST", "/containers/create", {
        "Image": "busybox", "Cmd": ["sh", "-c", "echo out; echo err >&2; "
                                    "cat /sys/fs/cgroup/memory.max; sleep 600"],
        "HostConfig": {"Isolation": "hyperv", "Memory": 128 << 20, "NanoCpus": 10**9,
                       "NetworkMode": "none"}})
    assert status == 201, body
    cid = body["Id"]
    made.append(cid)
    api.start(cid)
    deadline = time.monotonic() + 120
    while "134217728" not in api.logs(cid).decode() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert api.logs(cid, stdout=True, stderr=False).decode().split() == ["out", "134217728"]
    assert api.logs(cid, stdout=False, stderr=True).decode().split() == ["err"]

    def exec_(cmd: list[str]) -> tuple[int, str]:
        ex = api.exec_create(cid, cmd)
        out = api.exec_start(ex["Id"]).decode()
        return api.exec_inspect(ex["Id"])["ExitCode"], out

    code, release = exec_(["uname", "-r"])
    vm = json.loads(silod.silo("hcs", "inspect", cid).stdout)[0]["HostingSystem"]
    assert code == 0 and release.strip() == vm["Kernel"] != os.uname().release
    assert vm["SystemType"] == "VirtualMachine" and vm["State"] == "Running"
    assert vm["MemoryMiB"] >= 128 + 256 and vm["ProcessorCount"] == 1
    assert exec_(["sh", "-c", "exit 3"])[0] == 3
    assert exec_(["cat", "/sys/fs/cgroup/cpu.max"])[1].strip() == "100000 100000"
    own = json.loads(silod.silo("hcs", "inspect", vm["Id"]).stdout)[0]
    assert own["SystemType"] == "VirtualMachine" and own["HostedContainer"] == cid
    listed = silod.silo("hcs", "ls").stdout.decode()
    assert vm["Id"] in listed and "VirtualMachine" in listed

    status, body = silod.request("POST", f"/containers/{cid}/pause")
    assert status == 400 and "hyperv" in body["message"]
    # Its Pid is the guest's: nothing may take /proc/<Pid> on the host for its root or its
    # namespaces (that is some other process of the host).
    # cp runs silobox's file helper in the guest, on the container's root there
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("copied-in")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    assert api.put_archive(cid, "/tmp", buf.getvalue())
    assert exec_(["cat", "/tmp/copied-in"]) == (0, "hello\n")
    stream, stat = api.get_archive(cid, "/tmp/copied-in")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        assert tar.extractfile("copied-in").read() == b"hello\n"
    assert stat["name"] == "copied-in" and stat["size"] == 6
    status, body = silod.request("GET", f"/containers/{cid}/archive?path=/nonexistent")
    assert status == 404, body
    assert {"Path": "/tmp/copied-in", "Kind": 1} in api.diff(cid)   # listed in the guest
    status, body = silod.request("POST", f"/commit?container={cid}&pause=0")
    assert status == 400 and "utility VM" in body["message"], body
    for mode in ({"NetworkMode": f"container:{cid}"}, {"PidMode": f"container:{cid}"}):
        status, body = silod.request("POST", "/containers/create", {
            "Image": "busybox", "Cmd": ["true"], "HostConfig": mode})
        assert status == 201, body
        made.append(body["Id"])
        status, err = silod.request("POST", f"/containers/{body['Id']}/start")
        assert status == 409 and "utility VM" in err["message"], (mode, err)
    # The writable layer is the container's, on a disk of its own: written without a sync,
    # it survives a stop and the next start (a new VM) has it, until rm.
    assert exec_(["sh", "-c", "echo kept > /kept; mkdir -p /d/e && echo deep > /d/e/f"])[0] == 0
    disk = vm["Disk"]
    assert disk and os.path.isfile(disk) and not disk.startswith(silod.exec_root + "/")
    api.stop(cid, timeout=1)
    assert api.wait(cid, timeout=60)["StatusCode"] == 137
    assert os.path.isfile(disk)
    stopped = json.loads(silod.silo("hcs", "inspect", cid).stdout)[0]["HostingSystem"]
    assert stopped["State"] == "Stopped" and stopped["Disk"] == disk
    # only its VM reads that disk: a stopped one's changes and files are refused, not faked
    for method, url in (("GET", "changes"), ("GET", "archive?path=/kept"), ("GET", "export")):
        status, body = silod.request(method, f"/containers/{cid}/{url}")
        assert status == 409 and "start it first" in body["message"], (url, body)
    api.start(cid)
    code, out = exec_(["cat", "/kept", "/d/e/f", "/tmp/copied-in"])
    assert (code, out) == (0, "kept\ndeep\nhello\n"), out
    again = json.loads(silod.silo("hcs", "inspect", cid).stdout)[0]["HostingSystem"]
    assert again["Id"] != vm["Id"] and again["Disk"] == disk
    assert {"Path": "/kept", "Kind": 1} in api.diff(cid)
    # QEMU dies without a shutdown: the next boot checks the disk, and what was synced is there
    assert exec_(["sh", "-c", "echo synced > /synced; sync"])[0] == 0
    os.kill(again["QemuPid"], 9)
    api.wait(cid, timeout=60)
    api.start(cid)
    assert exec_(["cat", "/kept", "/synced"]) == (0, "kept\nsynced\n")
    third = json.loads(silod.silo("hcs", "inspect", cid).stdout)[0]["HostingSystem"]
    api.stop(cid, timeout=1)
    assert api.wait(cid, timeout=60)["StatusCode"] == 137
    api.remove_container(cid)
    made.remove(cid)
    assert not os.path.exists(os.path.dirname(disk)), "the container's disk remains"
    deadline = time.monotonic() + 20
    while any(os.path.exists(os.path.join(STATE_DIR, v["Id"])) for v in (vm, again, third)) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    for v in (vm, again, third):
        assert not os.path.exists(os.path.join(STATE_DIR, v["Id"])), "the VM's files remain"
        assert not os.path.exists(f"/proc/{v['QemuPid']}") or \
            b"qemu" not in open(f"/proc/{v['QemuPid']}/cmdline", "rb").read()


def test_hyperv_refuses_what_a_vm_cannot_do(silod: Any) -> None:
    for hc, what in (({"NetworkMode": "host"}, "--network host"),
                     ({"Privileged": True}, "--privileged"), ({"PidMode": "host"}, "--pid host"),
                     ({"Binds": ["/etc/hostname:/h:ro"]}, "binding a file"),
                     ({"Mounts": [{"Type": "bind", "Source": "/etc/hostname", "Target": "/h"}]},
                      "binding a file")):
        status, body = silod.request("POST", "/containers/create", {
            "Image": "busybox", "Cmd": ["true"], "HostConfig": {"Isolation": "hyperv", **hc}})
        assert status == 400 and what in body["message"], (hc, body)
    status, body = silod.request("POST", "/containers/create", {
        "Image": "busybox", "Cmd": ["true"], "Tty": True, "HostConfig": {"Isolation": "hyperv"}})
    assert status == 400 and "terminal" in body["message"]


def _wait_log(api: Any, cid: str, text: str, timeout: float = 150) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = api.logs(cid).decode()
        if text in logs or api.inspect_container(cid)["State"]["Status"] != "running":
            return logs
        time.sleep(0.5)
    return api.logs(cid).decode()


@pytest.fixture
def network(silod: Any) -> Iterator[str]:
    name = f"hv{os.urandom(3).hex()}"
    silod.client.create_network(name, driver="nat")
    yield name
    silod.client.remove_network(name)


def test_hyperv_container_on_a_nat_network_survives_silod(silod: Any, network: str,
                                                          made: list[str]) -> None:
    """The VM's network card is a tap on a nat network's switch: a process container and the
    VM reach each other (by name: the embedded DNS is relayed into the VM) and a published port
    reaches the VM from the host's loopback. silod stops, later is killed: the VM keeps running
    and the next silod adopts it (ps, exec, logs, the port, DNS), and an exit while no silod
    runs is not lost. After rm neither the tap, the port's rule nor the VM remains."""
    api = silod.client
    srv_name = f"srv{os.urandom(3).hex()}"
    srv = api.create_container("busybox", ["sh", "-c", "echo from-proc | nc -l -p 7000; "
                                           "sleep 600"], name=srv_name,
                               host_config=api.create_host_config(network_mode=network))["Id"]
    made.append(srv)
    api.start(srv)
    status, body = silod.request("POST", "/containers/create", {
        "Image": "busybox", "ExposedPorts": {"8080/tcp": {}},
        "Cmd": ["sh", "-c", f"ping -c 1 -W 10 {srv_name} >/dev/null && echo ping-ok; "
                            f"nc {srv_name} 7000; "
                            "(while true; do echo from-vm | nc -l -p 8080; done) & "
                            "while [ ! -e /tmp/quit ]; do sleep 0.2; done; exit 7"],
        "HostConfig": {"Isolation": "hyperv", "NetworkMode": network,
                       "PortBindings": {"8080/tcp": [{"HostPort": ""}]}}})
    assert status == 201, body
    cid = body["Id"]
    made.append(cid)
    api.start(cid)
    info = api.inspect_container(cid)
    ip = info["NetworkSettings"]["Networks"][network]["IPAddress"]
    port = int(info["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
    assert ip
    logs = _wait_log(api, cid, "from-proc")
    assert logs.split()[:2] == ["ping-ok", "from-proc"], logs
    vm = json.loads(silod.silo("hcs", "inspect", cid).stdout)[0]["HostingSystem"]
    assert [a["IPAddress"] for a in vm["NetworkAdapters"]] == [ip]
    tap = vm["NetworkAdapters"][0]["Tap"]
    switch = os.path.join(silod.exec_root, "netns", "vswitch")

    def links() -> str:
        return subprocess.run(["nsenter", f"--net={switch}", "ip", "-o", "link"],
                              capture_output=True, text=True).stdout

    assert f" {tap}:" in links() and "master" in links()

    def reached_from_both() -> None:
        ex = api.exec_create(srv, ["nc", "-w", "10", ip, "8080"])
        assert api.exec_start(ex["Id"]).decode().strip() == "from-vm"
        got = b""
        for _ in range(40):   # the VM's loop listens again after each connection
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    got = s.recv(100)
            except ConnectionRefusedError:
                pass
            if got:
                break
            time.sleep(0.5)
        assert got.strip() == b"from-vm"

    reached_from_both()

    silod.stop()   # the VM outlives silod (stopped, here; killed below); the next adopts it
    silod.start()
    api = silod.client
    assert cid in [c["Id"] for c in api.containers()]
    ex = api.exec_create(cid, ["sh", "-c", f"uname -r; ping -c 1 -W 10 {srv_name} >/dev/null "
                                           "&& echo name-ok"])
    assert api.exec_start(ex["Id"]).decode().split() == [vm["Kernel"], "name-ok"]
    assert api.logs(cid).decode().split()[:2] == ["ping-ok", "from-proc"]
    again = json.loads(silod.silo("hcs", "inspect", cid).stdout)[0]["HostingSystem"]
    assert again["Id"] == vm["Id"] and again["QemuPid"] == vm["QemuPid"]
    reached_from_both()

    ex = api.exec_create(cid, ["sh", "-c", "sleep 3; touch /tmp/quit"])
    api.exec_start(ex["Id"], detach=True)
    silod.kill9()   # the container exits while no silod runs
    time.sleep(6)
    silod.start()
    api = silod.client
    assert api.wait(cid, timeout=60)["StatusCode"] == 7
    api.remove_container(cid)
    made.remove(cid)
    assert f" {tap}:" not in links()
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert f"dport {port} " not in rules and ip not in rules
    deadline = time.monotonic() + 20
    while os.path.exists(os.path.join(STATE_DIR, vm["Id"])) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(os.path.join(STATE_DIR, vm["Id"])), "the VM's files remain"
