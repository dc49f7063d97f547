"""The CRI v1 server through a Python gRPC client, as a kubelet drives it.

Pods are real compute systems with real namespaces; every test removes its pods, and the
module checks at the end that nothing of them is left (containers, netns, endpoints).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import time
import uuid
from typing import Any, Iterator

import pytest

grpc = pytest.importorskip("grpc")

from silobox.cri import protogen  # noqa: E402

protogen.ensure()
from silobox.cri import api_pb2 as pb  # noqa: E402
from silobox.cri import api_pb2_grpc as rpc  # noqa: E402

IMAGE = "busybox"
CRI_LINE = re.compile(rb"^(\S+) (stdout|stderr) ([FP]) (.*)$")


class Cri:
    def __init__(self, socket_path: str) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.rt = rpc.RuntimeServiceStub(self.channel)
        self.img = rpc.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(scope="module")
def cri(silod: Any) -> Iterator[Cri]:
    c = Cri(os.path.join(silod.exec_root, "cri.sock"))
    c.rt.Version(pb.VersionRequest(), wait_for_ready=True, timeout=30)   # up after the API
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def pods(cri: Cri) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for pid in made:
        cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pid))
        cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pid))


def pod_config(name: str, logdir: str = "", **kw: Any) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="default", uid=uuid.uuid4().hex,
                                       attempt=0),
        hostname=name, log_directory=logdir, labels={"app": name}, **kw)


def run_pod(cri: Cri, pods: list[str], cfg: pb.PodSandboxConfig) -> str:
    pid = cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
    pods.append(pid)
    return pid


def container(cri: Cri, pod: str, pcfg: pb.PodSandboxConfig, name: str, args: list[str],
              start: bool = True, **linux: Any) -> str:
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name),
                             image=pb.ImageSpec(image=IMAGE), args=args,
                             log_path=f"{name}/0.log", labels={"c": name})
    if linux:
        cfg.linux.CopyFrom(pb.LinuxContainerConfig(**linux))
    cid = cri.rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod, config=cfg, sandbox_config=pcfg)).container_id
    if start:
        cri.rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    return cid


def status(cri: Cri, cid: str) -> pb.ContainerStatus:
    return cri.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status


def wait_exited(cri: Cri, cid: str, timeout: float = 30) -> pb.ContainerStatus:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = status(cri, cid)
        if st.state == pb.CONTAINER_EXITED:
            return st
        time.sleep(0.1)
    raise AssertionError(f"container {cid} did not exit: {st}")


def test_version_and_status(cri: Cri) -> None:
    v = cri.rt.Version(pb.VersionRequest())
    assert (v.runtime_name, v.runtime_api_version) == ("silobox", "v1")
    conds = {c.type: c.status for c in cri.rt.Status(pb.StatusRequest()).status.conditions}
    assert conds == {"RuntimeReady": True, "NetworkReady": True}
    cfg = cri.rt.RuntimeConfig(pb.RuntimeConfigRequest())
    assert cfg.linux.cgroup_driver == pb.CGROUPFS


def test_pod_shares_network_logs_and_exec(cri: Cri, pods: list[str], silod: Any,
                                          tmp_path: Any) -> None:
    logdir = str(tmp_path / "pods")
    pcfg = pod_config("web", logdir, dns_config=pb.DNSConfig(servers=["10.0.0.53"],
                                                             searches=["svc.example"]))
    pid = run_pod(cri, pods, pcfg)
    st = cri.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pid)).status
    assert st.state == pb.SANDBOX_READY
    assert re.match(r"^\d+\.\d+\.\d+\.\d+$", st.network.ip), st.network
    assert st.metadata.name == "web" and st.labels["app"] == "web"

    server = container(cri, pid, pcfg, "server", [
        "sh", "-c", "mkdir /www && echo hello-pod > /www/index.html && "
                    "exec httpd -f -p 127.0.0.1:8080 -h /www"])
    client = container(cri, pid, pcfg, "client", [
        "sh", "-c", "for i in $(seq 50); do wget -qO- http://127.0.0.1:8080/ && exit 0; "
                    "sleep 0.1; done; exit 1"])
    done = wait_exited(cri, client)
    assert (done.exit_code, done.reason) == (0, "Completed")
    assert status(cri, server).state == pb.CONTAINER_RUNNING

    # the client's output, in the CRI format, where the kubelet asked for it
    path = os.path.join(logdir, "client/0.log")
    assert done.log_path == path
    deadline = time.time() + 10
    while time.time() < deadline and b"hello-pod" not in _read(path):
        time.sleep(0.1)
    lines = _read(path).splitlines()
    assert lines, "no CRI log written"
    m = CRI_LINE.match(lines[0])
    assert m and m.group(2) == b"stdout" and m.group(3) == b"F" and m.group(4) == b"hello-pod"

    # the pod's hostname and DNS, from inside a container
    r = cri.rt.ExecSync(pb.ExecSyncRequest(container_id=server, timeout=10,
                                           cmd=["sh", "-c", "hostname; cat /etc/resolv.conf"]))
    assert r.exit_code == 0
    assert r.stdout.split(b"\n")[0] == b"web"
    assert b"nameserver 10.0.0.53" in r.stdout and b"svc.example" in r.stdout
    r = cri.rt.ExecSync(pb.ExecSyncRequest(container_id=server, cmd=["sh", "-c", "echo e >&2; exit 3"]))
    assert (r.exit_code, r.stderr) == (3, b"e\n")
    t0 = time.time()
    with pytest.raises(grpc.RpcError) as e:
        cri.rt.ExecSync(pb.ExecSyncRequest(container_id=server, cmd=["sleep", "30"], timeout=1))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.time() - t0 < 10

    # docker's view: the pod's containers, named and labelled
    status_code, listed = silod.request("GET", "/containers/json?all=1")
    names = {c["Names"][0] for c in listed if c["Labels"].get("io.kubernetes.sandbox.id") == pid}
    assert any(n.startswith("/k8s_server_web_default_") for n in names), names
    assert any(n.startswith("/k8s_client_web_default_") for n in names), names

    listed_ids = {c.id for c in cri.rt.ListContainers(pb.ListContainersRequest(
        filter=pb.ContainerFilter(pod_sandbox_id=pid))).containers}
    assert listed_ids == {server, client}
    running = cri.rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(
        state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING)))).containers
    assert server in {c.id for c in running} and client not in {c.id for c in running}

    stats = cri.rt.ContainerStats(pb.ContainerStatsRequest(container_id=server)).stats
    assert stats.memory.usage_bytes.value > 0
    pstats = cri.rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pid)).stats
    assert pstats.linux.process.process_count.value >= 1

    # ReopenContainerLog: the kubelet renamed the file; a new one is started
    os.rename(os.path.join(logdir, "server/0.log"), os.path.join(logdir, "server/0.log.1"))
    cri.rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=server))
    assert os.path.exists(os.path.join(logdir, "server/0.log"))

    # stop with a timeout: httpd as PID 1 ignores SIGTERM, so SIGKILL ends it
    t0 = time.time()
    cri.rt.StopContainer(pb.StopContainerRequest(container_id=server, timeout=1))
    assert time.time() - t0 < 10
    assert status(cri, server).state == pb.CONTAINER_EXITED


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def test_oom_killed_reported(cri: Cri, pods: list[str]) -> None:
    pcfg = pod_config("oom")
    pid = run_pod(cri, pods, pcfg)
    cid = container(cri, pid, pcfg, "hog",
                    ["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
                    resources=pb.LinuxContainerResources(memory_limit_in_bytes=32 * 2**20))
    st = wait_exited(cri, cid, 60)
    assert (st.reason, st.exit_code) == ("OOMKilled", 137)
    assert st.resources.linux.memory_limit_in_bytes == 32 * 2**20


def test_failed_container_reports_error(cri: Cri, pods: list[str]) -> None:
    pcfg = pod_config("fail")
    pid = run_pod(cri, pods, pcfg)
    cid = container(cri, pid, pcfg, "bad", ["sh", "-c", "exit 2"])
    st = wait_exited(cri, cid)
    assert (st.reason, st.exit_code) == ("Error", 2)


def test_stop_and_remove_are_idempotent_and_leave_nothing(cri: Cri, silod: Any) -> None:
    pcfg = pod_config("gone")
    netns_dir = os.path.join(silod.exec_root, "netns")
    before = set(os.listdir(netns_dir))
    pid = cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pcfg)).pod_sandbox_id
    cid = container(cri, pid, pcfg, "sleeper", ["sleep", "600"])
    assert set(os.listdir(netns_dir)) != before   # the pod's compartment
    for _ in range(2):
        cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pid))
    st = cri.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pid)).status
    assert st.state == pb.SANDBOX_NOTREADY and st.network.ip == ""
    assert status(cri, cid).state == pb.CONTAINER_EXITED
    for _ in range(2):
        cri.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
        cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pid))
    with pytest.raises(grpc.RpcError) as e:
        cri.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pid))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert set(os.listdir(netns_dir)) == before
    _, listed = silod.request("GET", "/containers/json?all=1")
    assert not [c for c in listed if pid in (c["Id"], c["Labels"].get(
        "io.kubernetes.sandbox.id"))]
    _, endpoints = silod.request("GET", "/silobox/hns/endpoints")
    assert not [e for e in endpoints if pid[:12] in json.dumps(e)]


def test_images(cri: Cri) -> None:
    st = cri.img.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=IMAGE)))
    assert "docker.io/library/busybox:latest" in st.image.repo_tags
    assert st.image.uid.value == 0 or st.image.username == ""
    listed = cri.img.ListImages(pb.ListImagesRequest()).images
    assert st.image.id in {i.id for i in listed}
    absent = cri.img.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(
        image="127.0.0.1:1/no/such:image")))
    assert not absent.HasField("image")
    cri.img.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image="no-such-image:x")))
    fs = cri.img.ImageFsInfo(pb.ImageFsInfoRequest()).image_filesystems
    assert fs and fs[0].used_bytes.value > 0 and fs[0].fs_id.mountpoint


# ----- streaming --------------------------------------------------------------------------------
async def _ws_exec(url: str, stdin: bytes = b"") -> tuple[bytes, bytes, dict[str, Any]]:
    import aiohttp
    out, err, status_doc = b"", b"", {}
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url, protocols=("v5.channel.k8s.io", "v4.channel.k8s.io")) as ws:
            if stdin:
                await ws.send_bytes(b"\x00" + stdin)
                await ws.send_bytes(bytes([255, 0]))   # v5: close stdin
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                    break
                ch, data = msg.data[0], msg.data[1:]
                if ch == 1:
                    out += data
                elif ch == 2:
                    err += data
                elif ch == 3 and data:
                    status_doc = json.loads(data)
    return out, err, status_doc


async def _ws_forward(url: str, port: int, payload: bytes) -> bytes:
    import aiohttp
    got = b""
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{url}?port={port}", protocols=("v4.channel.k8s.io",)) as ws:
            headers = 0
            await ws.send_bytes(b"\x00" + payload)
            while True:
                msg = await asyncio.wait_for(ws.receive(), 10)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                ch, data = msg.data[0], msg.data[1:]
                if headers < 2:
                    assert struct.unpack("<H", data)[0] == port
                    headers += 1
                    continue
                assert ch == 0, data
                got += data
                if b"hello-fwd" in got:
                    break
    return got


def test_streaming_exec_and_port_forward(cri: Cri, pods: list[str]) -> None:
    pcfg = pod_config("stream")
    pid = run_pod(cri, pods, pcfg)
    cid = container(cri, pid, pcfg, "srv", [
        "sh", "-c", "mkdir /www && echo hello-fwd > /www/index.html && "
                    "exec httpd -f -p 127.0.0.1:8080 -h /www"])
    url = cri.rt.Exec(pb.ExecRequest(container_id=cid, cmd=["sh", "-c", "cat; echo err >&2; exit 4"],
                                     stdin=True, stdout=True, stderr=True)).url
    out, err, st = asyncio.run(_ws_exec(url, b"from-stdin\n"))
    assert out == b"from-stdin\n" and err == b"err\n"
    assert st["status"] == "Failure" and st["details"]["causes"][0]["message"] == "4"
    url = cri.rt.Exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True)).url
    assert asyncio.run(_ws_exec(url))[2]["status"] == "Success"
    # port forwarding reaches a server bound to the pod's own localhost
    url = cri.rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=pid, port=[8080])).url
    got = asyncio.run(_ws_forward(url, 8080, b"GET / HTTP/1.0\r\n\r\n"))
    assert b"200 OK" in got and b"hello-fwd" in got


def test_pod_survives_silod_kill(cri: Cri, pods: list[str], silod: Any,
                                    tmp_path: Any) -> None:
    logdir = str(tmp_path / "pods")
    pcfg = pod_config("durable", logdir)
    pid = run_pod(cri, pods, pcfg)
    cid = container(cri, pid, pcfg, "ticker", [
        "sh", "-c", "echo before; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo after; "
                    "exec sleep 600"])
    path = os.path.join(logdir, "ticker/0.log")
    deadline = time.time() + 10
    while time.time() < deadline and b"before" not in _read(path):
        time.sleep(0.1)
    silod.kill9()   # killed, not stopped: the pod runs on under its shims
    silod.start()
    cri.rt.Version(pb.VersionRequest(), wait_for_ready=True, timeout=30)
    st = cri.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pid)).status
    assert st.state == pb.SANDBOX_READY and st.network.ip
    assert status(cri, cid).state == pb.CONTAINER_RUNNING
    r = cri.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["touch", "/tmp/go"],
                                           timeout=10))
    assert r.exit_code == 0
    while time.time() < deadline + 10 and b"after" not in _read(path):
        time.sleep(0.1)
    kinds = [CRI_LINE.match(l).group(4) for l in _read(path).splitlines()]
    assert kinds == [b"before", b"after"], kinds


def test_port_mapping_and_sysctls(cri: Cri, pods: list[str]) -> None:
    import socket
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host_port = s.getsockname()[1]
    pcfg = pod_config("ports", port_mappings=[pb.PortMapping(
        protocol=pb.TCP, container_port=80, host_port=host_port, host_ip="127.0.0.1")],
        linux=pb.LinuxPodSandboxConfig(sysctls={"net.ipv4.ip_unprivileged_port_start": "80",
                                                "kernel.shm_rmid_forced": "1"}))
    pid = run_pod(cri, pods, pcfg)
    cid = container(cri, pid, pcfg, "web", [
        "sh", "-c", "mkdir /www && echo hello-port > /www/index.html && "
                    "exec httpd -f -p 80 -h /www"])
    body = b""
    deadline = time.time() + 15
    while time.time() < deadline and b"hello-port" not in body:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=2).read()
        except OSError:
            time.sleep(0.2)
    assert body == b"hello-port\n"
    r = cri.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, timeout=10, cmd=[
        "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start",
        "/proc/sys/kernel/shm_rmid_forced"]))
    assert r.stdout.split() == [b"80", b"1"]


def _inspect(silod: Any, cid: str) -> dict:
    code, doc = silod.request("GET", f"/containers/{cid}/json")
    assert code == 200, doc
    return doc


def test_pod_cgroup_parent_and_shared_uts(cri: Cri, pods: list[str], silod: Any) -> None:
    """The kubelet's pod cgroup (cgroupfs driver) holds the pod's job objects; the pod's
    containers share its UTS namespace; the groups silod made go with the pod."""
    from silobox.kernel.jobobject import missing_groups
    top = f"sbxcri-{uuid.uuid4().hex[:8]}"
    parent = f"/{top}/burstable/pod{uuid.uuid4().hex[:8]}"
    pcfg = pod_config("cg", linux=pb.LinuxPodSandboxConfig(cgroup_parent=parent))
    try:
        pid = run_pod(cri, pods, pcfg)
        cid = container(cri, pid, pcfg, "app", ["sleep", "60"])
        holder, ctr = (_inspect(silod, i)["State"]["Pid"] for i in (pid, cid))
        for who, p in ((pid, holder), (cid, ctr)):
            with open(f"/proc/{p}/cgroup") as f:
                paths = {line.rstrip("\n").split(":", 2)[2] for line in f}
            assert f"{parent}/{who}" in paths, (who, paths)
        assert os.readlink(f"/proc/{holder}/ns/uts") == os.readlink(f"/proc/{ctr}/ns/uts")
        assert os.readlink(f"/proc/{holder}/ns/uts") != os.readlink("/proc/self/ns/uts")
        r = cri.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, timeout=10, cmd=["hostname"]))
        assert r.stdout == b"cg\n"
        cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pid))
        cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pid))
        left = [d for d in missing_groups(parent[1:]) if os.path.isdir(d)]
        assert not left and len(missing_groups(top)) > 0   # every level of it is gone again
    finally:
        from silobox.kernel.jobobject import _parent_directories, remove_groups
        remove_groups([d for sub in ("", "/burstable", parent[len(top) + 1:])
                       for d in _parent_directories(top + sub, None)])


def test_mount_propagation_host_to_container(cri: Cri, pods: list[str], tmp_path: Any) -> None:
    """HOST_TO_CONTAINER (rslave): a mount the node makes under the source after the start
    is seen inside; the source is a shared mount of the test's own."""
    import subprocess
    src = str(tmp_path / "kubelet-dir")
    os.mkdir(src)
    subprocess.run(["mount", "--bind", src, src], check=True)
    try:
        subprocess.run(["mount", "--make-rshared", src], check=True)
        os.mkdir(os.path.join(src, "sub"))
        pcfg = pod_config("prop")
        pid = run_pod(cri, pods, pcfg)
        cfg = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="app2"), image=pb.ImageSpec(image=IMAGE),
            args=["sleep", "60"],
            mounts=[pb.Mount(container_path="/m", host_path=src,
                             propagation=pb.PROPAGATION_HOST_TO_CONTAINER)])
        cid = cri.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pid, config=cfg, sandbox_config=pcfg)).container_id
        cri.rt.StartContainer(pb.StartContainerRequest(container_id=cid))
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", os.path.join(src, "sub")], check=True)
        open(os.path.join(src, "sub", "marker"), "w").close()
        r = cri.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, timeout=10,
                                               cmd=["ls", "/m/sub"]))
        assert r.stdout == b"marker\n", r
    finally:
        for _ in range(4):
            subprocess.run(["umount", "-R", "-l", src], capture_output=True)


async def _ws_leave(url: str, marker: bytes) -> None:
    """Connect to an exec, read until ``marker`` is seen, then hang up."""
    import aiohttp
    seen = b""
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url, protocols=("v5.channel.k8s.io",)) as ws:
            while marker not in seen:
                msg = await asyncio.wait_for(ws.receive(), 10)
                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                seen += msg.data[1:]


def test_events_metrics_checkpoint_and_exec_ended_with_its_client(cri: Cri,
                                                                  pods: list[str]) -> None:
    import queue
    import threading
    got: "queue.Queue[pb.ContainerEventResponse]" = queue.Queue()
    stream = cri.rt.GetContainerEvents(pb.GetEventsRequest())

    def follow() -> None:
        try:
            for ev in stream:
                got.put(ev)
        except grpc.RpcError:
            pass   # cancelled at the end
    t = threading.Thread(target=follow, daemon=True)
    t.start()
    try:
        time.sleep(0.3)   # subscribed
        pcfg = pod_config("ev")
        pid = run_pod(cri, pods, pcfg)
        cid = container(cri, pid, pcfg, "app", ["sleep", "60"])
        seen: list[tuple[str, int]] = []
        deadline = time.time() + 20
        while (cid, pb.CONTAINER_STARTED_EVENT) not in seen and time.time() < deadline:
            try:
                ev = got.get(timeout=1)
            except queue.Empty:
                continue
            seen.append((ev.container_id, ev.container_event_type))
            if ev.container_id == cid and ev.container_event_type == pb.CONTAINER_STARTED_EVENT:
                assert ev.pod_sandbox_status.id == pid
                assert ev.pod_sandbox_status.state == pb.SANDBOX_READY
                assert [s.id for s in ev.containers_statuses] == [cid]
                assert ev.containers_statuses[0].state == pb.CONTAINER_RUNNING
        assert (pid, pb.CONTAINER_CREATED_EVENT) in seen and \
            (pid, pb.CONTAINER_STARTED_EVENT) in seen, seen
        assert (cid, pb.CONTAINER_CREATED_EVENT) in seen, seen
        assert (cid, pb.CONTAINER_STARTED_EVENT) in seen, seen

        # metrics from the job objects
        names = {d.name: list(d.label_keys) for d in cri.rt.ListMetricDescriptors(
            pb.ListMetricDescriptorsRequest()).descriptors}
        assert names["container_memory_usage_bytes"] == ["container", "id", "pod", "namespace"]
        pm = {m.pod_sandbox_id: m for m in cri.rt.ListPodSandboxMetrics(
            pb.ListPodSandboxMetricsRequest()).pod_metrics}[pid]
        cm = {c.container_id: c for c in pm.container_metrics}[cid]
        mem = {m.name: m for m in cm.metrics}["container_memory_usage_bytes"]
        assert mem.value.value > 0 and list(mem.label_values) == ["app", cid, "ev", "default"]
        assert all(m.name in names for m in pm.metrics)

        with pytest.raises(grpc.RpcError) as e:
            cri.rt.CheckpointContainer(pb.CheckpointContainerRequest(container_id=cid))
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED and "CRIU" in e.value.details()

        # an exec whose client hangs up is killed, not left running in the pod
        url = cri.rt.Exec(pb.ExecRequest(
            container_id=cid, cmd=["sh", "-c", "echo started; exec sleep 1234"],
            stdout=True)).url
        asyncio.run(_ws_leave(url, b"started"))
        deadline = time.time() + 10
        while time.time() < deadline:
            r = cri.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, timeout=10,
                                                   cmd=["ps", "-o", "args"]))
            if b"sleep 1234" not in r.stdout:
                break
            time.sleep(0.2)
        assert b"sleep 1234" not in r.stdout, r.stdout

        cri.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
        cri.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
        deadline = time.time() + 20
        while (cid, pb.CONTAINER_DELETED_EVENT) not in seen and time.time() < deadline:
            try:
                ev = got.get(timeout=1)
            except queue.Empty:
                continue
            seen.append((ev.container_id, ev.container_event_type))
        assert (cid, pb.CONTAINER_STOPPED_EVENT) in seen and \
            (cid, pb.CONTAINER_DELETED_EVENT) in seen, seen
    finally:
        stream.cancel()
        t.join(5)
