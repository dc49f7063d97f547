"""Pod sandboxes and containers on the engine's containers (CRI RuntimeService).

A **pod sandbox** is a compute system that holds the pod's namespaces: its network compartment
(one HNS endpoint on the pod network, ``nat`` unless configured), IPC, UTS (the pod's hostname,
hosts and resolv.conf) and, with ``pid = POD``, the PID namespace. No pause image is pulled:
its only process is silod's own holder program (``pause.c``, mapped read-only into it), which
waits and reaps what the pod's containers orphan; its root is the built-in busybox image, made
offline from the host's busybox-static. Port mappings, DNS, sysctls are the holder's.

A **container** of the pod joins the holder's namespaces the way ``--network container:X``,
``--ipc container:X`` and ``--pid container:X`` do (``engine/networks.py``, ``engine/sharing.py``).

Every fact the CRI reports later is written into the container's labels at create; ids are the
engine's own container ids.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, AsyncIterator, Callable

from google.protobuf import json_format

from silobox import __version__
from silobox.cri import api_pb2 as pb
from silobox.cri import pause
from silobox.cri.logs import LogCopier
from silobox.errors import Conflict, InvalidArgument, NotFound, NotModified, SiloboxError
from silobox.timeutil import parse_iso

KIND = "io.silobox.cri.kind"              # "sandbox" or "container"
META = "io.silobox.cri.metadata"          # the CRI metadata message, JSON
LABELS = "io.silobox.cri.labels"          # the CRI labels, JSON (kept apart from ours)
ANNOTATIONS = "io.silobox.cri.annotations"
SANDBOX_CONFIG = "io.silobox.cri.sandbox-config"   # the pod's PodSandboxConfig, JSON
CONTAINER_INFO = "io.silobox.cri.container"        # image spec, mounts, log path, JSON
POD_ID = "io.kubernetes.sandbox.id"
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"

HOLDER_IMAGE = "busybox"            # the built-in image, made offline (storage/builtin.py)
POD_NETWORK = os.environ.get("SILOBOX_CRI_POD_NETWORK", "nat")
EXEC_OUTPUT_LIMIT = 16 * 1024 * 1024   # the kubelet's own cap on an ExecSync answer
API_VERSION = "v1"
CRI_VERSION = "0.1.0"
_EVENTS = {"create": pb.CONTAINER_CREATED_EVENT, "start": pb.CONTAINER_STARTED_EVENT,
           "die": pb.CONTAINER_STOPPED_EVENT, "destroy": pb.CONTAINER_DELETED_EVENT}
"""The engine's container events → the CRI's."""
_CONTAINER_LABELS = ("container", "id", "pod", "namespace")
_NETWORK_LABELS = ("interface", "pod", "namespace")
_METRICS: dict[str, tuple[str, tuple[str, ...], int]] = {
    "container_cpu_usage_nanoseconds_total": (
        "CPU time the container used, in ns (its job object's)", _CONTAINER_LABELS, pb.COUNTER),
    "container_memory_usage_bytes": (
        "Memory the container uses, page cache included", _CONTAINER_LABELS, pb.GAUGE),
    "container_memory_working_set_bytes": (
        "Memory in use less inactive file pages", _CONTAINER_LABELS, pb.GAUGE),
    "container_memory_rss": ("Anonymous and swap cache memory", _CONTAINER_LABELS, pb.GAUGE),
    "container_network_receive_bytes_total": (
        "Bytes the pod received, per interface", _NETWORK_LABELS, pb.COUNTER),
    "container_network_transmit_bytes_total": (
        "Bytes the pod sent, per interface", _NETWORK_LABELS, pb.COUNTER),
    "container_network_receive_errors_total": (
        "Receive errors of the pod, per interface", _NETWORK_LABELS, pb.COUNTER),
    "container_network_transmit_errors_total": (
        "Transmit errors of the pod, per interface", _NETWORK_LABELS, pb.COUNTER),
}
"""ListMetricDescriptors: name → (help, label keys, type); cAdvisor's names where the unit is
the same (CPU is whole nanoseconds here: the CRI's values are integers)."""
_PROPAGATION = {pb.PROPAGATION_HOST_TO_CONTAINER: "rslave", pb.PROPAGATION_BIDIRECTIONAL: "rshared"}


def _ns(iso: str) -> int:
    t = parse_iso(iso or "")
    return int(t * 1e9) if t else 0


def _json(msg: Any) -> str:
    return json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=None)


def _parse(text: str, cls: Any) -> Any:
    msg = cls()
    if text:
        json_format.Parse(text, msg, ignore_unknown_fields=True)
    return msg


def _selected(labels: dict[str, str], selector: Any) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _docker_name(*parts: Any) -> str:
    return "k8s_" + "_".join(str(p) for p in parts)


class CriRuntime:
    """RuntimeService on the engine's ``ContainerBackend``/``NetworkBackend``."""

    def __init__(self, backend: Any, holder: str) -> None:
        self.backend = backend
        self.holder = holder   # the pod holder binary (pause.py)
        self.copiers: dict[str, LogCopier] = {}

    # ----- lookup ---------------------------------------------------------------------------
    async def _ours(self, kind: str) -> list[dict[str, Any]]:
        return await self.backend.container_list(all=True,
                                                 filters={"label": [f"{KIND}={kind}"]})

    async def _resolve(self, ref: str, kind: str) -> dict[str, Any]:
        """The inspect document of a pod or container by full id or unique id prefix."""
        if not ref:
            raise InvalidArgument(f"{kind} id must not be empty")
        found = [s for s in await self._ours(kind) if s["Id"].startswith(ref)]
        if len(found) > 1:
            raise InvalidArgument(f"{kind} id prefix {ref!r} is ambiguous")
        if not found:
            raise NotFound(f"{'pod sandbox' if kind == 'sandbox' else 'container'} "
                           f"{ref!r} not found")
        return await self.backend.container_inspect(found[0]["Id"])

    # ----- runtime ----------------------------------------------------------------------------
    async def version(self) -> pb.VersionResponse:
        return pb.VersionResponse(version=CRI_VERSION, runtime_name="silobox",
                                  runtime_version=__version__, runtime_api_version=API_VERSION)

    async def status(self) -> pb.StatusResponse:
        conds = [pb.RuntimeCondition(type="RuntimeReady", status=True)]
        try:
            await self.backend.network_inspect(POD_NETWORK)
            conds.append(pb.RuntimeCondition(type="NetworkReady", status=True))
        except SiloboxError as e:
            conds.append(pb.RuntimeCondition(type="NetworkReady", status=False,
                                             reason="NetworkPluginNotReady",
                                             message=f"pod network {POD_NETWORK}: {e}"))
        return pb.StatusResponse(status=pb.RuntimeStatus(conditions=conds))

    # ----- pod sandboxes ----------------------------------------------------------------------
    async def run_pod_sandbox(self, req: pb.RunPodSandboxRequest) -> str:
        cfg = req.config
        md = cfg.metadata
        if not md.name or not md.uid or not md.namespace:
            raise InvalidArgument("pod sandbox metadata needs name, uid and namespace")
        if req.runtime_handler not in ("", "silobox"):
            raise InvalidArgument(f"runtime handler {req.runtime_handler!r} is not served here")
        linux = cfg.linux
        nso = linux.security_context.namespace_options
        host_net = nso.network == pb.NODE
        hc: dict[str, Any] = {
            "NetworkMode": "host" if host_net else POD_NETWORK,
            "IpcMode": "host" if nso.ipc == pb.NODE else "shareable",
            "PidMode": "host" if nso.pid == pb.NODE else "",
            "Sysctls": dict(linux.sysctls),
            "RestartPolicy": {"Name": "no"},
            "Binds": [f"{self.holder}:{pause.CONTAINER_PATH}:ro"],
        }
        if linux.cgroup_parent:   # the kubelet's pod cgroup (cgroupfs driver)
            hc["CgroupParent"] = linux.cgroup_parent
        body: dict[str, Any] = {"Image": HOLDER_IMAGE, "Entrypoint": [pause.CONTAINER_PATH],
                                "Cmd": [], "HostConfig": hc}
        if host_net:
            hc["UTSMode"] = "host"
        else:
            if cfg.hostname:
                body["Hostname"] = cfg.hostname
            dns = cfg.dns_config
            if dns.servers:
                hc["Dns"] = list(dns.servers)
            if dns.searches:
                hc["DnsSearch"] = list(dns.searches)
            if dns.options:
                hc["DnsOptions"] = list(dns.options)
            ports: dict[str, list[dict[str, str]]] = {}
            for pm in cfg.port_mappings:
                if pm.host_port <= 0:
                    continue   # only exposed, nothing to publish
                proto = pb.Protocol.Name(pm.protocol).lower()
                ports.setdefault(f"{pm.container_port}/{proto}", []).append(
                    {"HostIp": pm.host_ip, "HostPort": str(pm.host_port)})
            if ports:
                hc["PortBindings"] = ports
                body["ExposedPorts"] = {k: {} for k in ports}
        body["Labels"] = {
            KIND: "sandbox", POD_NAME: md.name, POD_NAMESPACE: md.namespace, POD_UID: md.uid,
            META: _json(md), LABELS: json.dumps(dict(cfg.labels)),
            ANNOTATIONS: json.dumps(dict(cfg.annotations)), SANDBOX_CONFIG: _json(cfg),
        }
        name = _docker_name("POD", md.name, md.namespace, md.uid, md.attempt)
        created = await self.backend.container_create(name, body)
        pid = created["Id"]
        try:
            await self.backend.container_start(pid)
        except BaseException:
            await self._force_remove(pid)
            raise
        return pid

    async def _force_remove(self, cid: str) -> None:
        try:
            await self.backend.container_remove(cid, force=True)
        except NotFound:
            pass

    async def _pod_containers(self, pod_id: str) -> list[dict[str, Any]]:
        return await self.backend.container_list(
            all=True, filters={"label": [f"{KIND}=container", f"{POD_ID}={pod_id}"]})

    async def stop_pod_sandbox(self, ref: str) -> None:
        try:
            pod = await self._resolve(ref, "sandbox")
        except NotFound:
            return   # already gone: stopping is idempotent
        for c in await self._pod_containers(pod["Id"]):
            await self._stop(c["Id"], 0)
        await self._stop(pod["Id"], 0)

    async def remove_pod_sandbox(self, ref: str) -> None:
        try:
            pod = await self._resolve(ref, "sandbox")
        except NotFound:
            return
        for c in await self._pod_containers(pod["Id"]):
            await self.remove_container(c["Id"])
        await self._force_remove(pod["Id"])

    def _pod_ip(self, doc: dict[str, Any]) -> str:
        if not doc["State"].get("Running"):
            return ""
        nets = (doc.get("NetworkSettings") or {}).get("Networks") or {}
        for n in nets.values():
            if n.get("IPAddress"):
                return n["IPAddress"]
        return ""

    def _pod_status(self, doc: dict[str, Any]) -> pb.PodSandboxStatus:
        labels = doc["Config"].get("Labels") or {}
        cfg = _parse(labels.get(SANDBOX_CONFIG, ""), pb.PodSandboxConfig)
        nso = cfg.linux.security_context.namespace_options
        st = pb.PodSandboxStatus(
            id=doc["Id"], metadata=cfg.metadata,
            state=pb.SANDBOX_READY if doc["State"].get("Running") else pb.SANDBOX_NOTREADY,
            created_at=_ns(doc["Created"]),
            network=pb.PodSandboxNetworkStatus(ip=self._pod_ip(doc)),
            linux=pb.LinuxPodSandboxStatus(namespaces=pb.Namespace(options=pb.NamespaceOption(
                network=nso.network, pid=nso.pid, ipc=nso.ipc))),
            runtime_handler="")
        st.labels.update(json.loads(labels.get(LABELS) or "{}"))
        st.annotations.update(json.loads(labels.get(ANNOTATIONS) or "{}"))
        return st

    async def pod_sandbox_status(self, req: pb.PodSandboxStatusRequest
                                 ) -> pb.PodSandboxStatusResponse:
        doc = await self._resolve(req.pod_sandbox_id, "sandbox")
        out = pb.PodSandboxStatusResponse(status=self._pod_status(doc),
                                          timestamp=time.time_ns())
        if req.verbose:
            out.info["info"] = json.dumps({"pid": doc["State"].get("Pid") or 0,
                                           "image": HOLDER_IMAGE,
                                           "name": doc["Name"].lstrip("/")})
        return out

    async def list_pod_sandbox(self, req: pb.ListPodSandboxRequest) -> list[pb.PodSandbox]:
        f = req.filter
        out = []
        for s in await self._ours("sandbox"):
            if f.id and not s["Id"].startswith(f.id):
                continue
            doc = await self.backend.container_inspect(s["Id"])
            st = self._pod_status(doc)
            if f.HasField("state") and st.state != f.state.state:
                continue
            if not _selected(dict(st.labels), f.label_selector):
                continue
            out.append(pb.PodSandbox(id=st.id, metadata=st.metadata, state=st.state,
                                     created_at=st.created_at, labels=st.labels,
                                     annotations=st.annotations))
        return out

    # ----- containers -------------------------------------------------------------------------
    async def create_container(self, req: pb.CreateContainerRequest) -> str:
        pod = await self._resolve(req.pod_sandbox_id, "sandbox")
        if not pod["State"].get("Running"):
            raise Conflict(f"pod sandbox {pod['Id']} is not ready")
        pod_labels = pod["Config"].get("Labels") or {}
        pcfg = _parse(pod_labels.get(SANDBOX_CONFIG, ""), pb.PodSandboxConfig)
        cfg = req.config
        md = cfg.metadata
        if not md.name:
            raise InvalidArgument("container metadata needs a name")
        if not cfg.image.image:
            raise InvalidArgument("container config needs an image")
        pid = pod["Id"]
        sc = cfg.linux.security_context
        nso = sc.namespace_options
        pnso = pcfg.linux.security_context.namespace_options
        host_net = pnso.network == pb.NODE
        hc: dict[str, Any] = {"NetworkMode": "host" if host_net else f"container:{pid}",
                              "RestartPolicy": {"Name": "no"}}
        # the pod's UTS namespace (its hostname), as its network: the node's or the holder's
        hc["UTSMode"] = "host" if host_net else f"container:{pid}"
        if pcfg.linux.cgroup_parent:
            hc["CgroupParent"] = pcfg.linux.cgroup_parent
        if nso.ipc == pb.NODE:
            hc["IpcMode"] = "host"
        elif nso.ipc == pb.POD:
            hc["IpcMode"] = f"container:{pid}"
        if nso.pid == pb.NODE:
            hc["PidMode"] = "host"
        elif nso.pid == pb.POD:
            hc["PidMode"] = f"container:{pid}"
        elif nso.pid == pb.TARGET:
            target = await self._resolve(nso.target_id, "container")
            hc["PidMode"] = f"container:{target['Id']}"
        self._security(hc, sc)
        self._resources(hc, cfg.linux.resources)
        binds = []
        for m in cfg.mounts:
            if not m.host_path.startswith("/") or not m.container_path.startswith("/"):
                raise InvalidArgument(f"mount {m.host_path}:{m.container_path}: paths must be "
                                      "absolute")
            mode = "ro" if m.readonly else "rw"
            if m.propagation in _PROPAGATION:
                mode += "," + _PROPAGATION[m.propagation]
            binds.append(f"{m.host_path}:{m.container_path}:{mode}")
        if binds:
            hc["Binds"] = binds
        if cfg.devices:
            hc["Devices"] = [{"PathOnHost": d.host_path, "PathInContainer": d.container_path,
                              "CgroupPermissions": d.permissions or "rwm"} for d in cfg.devices]
        log_path = ""
        if cfg.log_path and pcfg.log_directory:
            log_path = os.path.join(pcfg.log_directory, cfg.log_path)
        info = {"image": cfg.image.image, "log_path": log_path,
                "mounts": [json.loads(_json(m)) for m in cfg.mounts]}
        body: dict[str, Any] = {
            "Image": cfg.image.image,
            "Env": [f"{kv.key}={kv.value}" for kv in cfg.envs],
            "WorkingDir": cfg.working_dir, "Tty": cfg.tty, "OpenStdin": cfg.stdin,
            "StdinOnce": cfg.stdin_once, "AttachStdin": cfg.stdin, "HostConfig": hc,
            "Labels": {
                KIND: "container", POD_ID: pid, CONTAINER_NAME: md.name,
                POD_NAME: pcfg.metadata.name, POD_NAMESPACE: pcfg.metadata.namespace,
                POD_UID: pcfg.metadata.uid, META: _json(md),
                LABELS: json.dumps(dict(cfg.labels)),
                ANNOTATIONS: json.dumps(dict(cfg.annotations)), CONTAINER_INFO: json.dumps(info),
            },
        }
        if cfg.command:
            body["Entrypoint"] = list(cfg.command)
        if cfg.args:
            body["Cmd"] = list(cfg.args)
        if sc.HasField("run_as_group") and not (sc.HasField("run_as_user")
                                                or sc.run_as_username):
            raise InvalidArgument("run_as_group needs run_as_user or run_as_username")
        if sc.HasField("run_as_user"):
            body["User"] = str(sc.run_as_user.value) + (
                f":{sc.run_as_group.value}" if sc.HasField("run_as_group") else "")
        elif sc.run_as_username:
            body["User"] = sc.run_as_username + (
                f":{sc.run_as_group.value}" if sc.HasField("run_as_group") else "")
        name = _docker_name(md.name, pcfg.metadata.name, pcfg.metadata.namespace,
                            pcfg.metadata.uid, md.attempt)
        created = await self.backend.container_create(name, body)
        return created["Id"]

    @staticmethod
    def _security(hc: dict[str, Any], sc: Any) -> None:
        def cap(c: str) -> str:
            c = c.upper()
            return c if c.startswith("CAP_") or c == "ALL" else "CAP_" + c
        if sc.capabilities.add_capabilities:
            hc["CapAdd"] = [cap(c) for c in sc.capabilities.add_capabilities]
        if sc.capabilities.drop_capabilities:
            hc["CapDrop"] = [cap(c) for c in sc.capabilities.drop_capabilities]
        hc["Privileged"] = sc.privileged
        hc["ReadonlyRootfs"] = sc.readonly_rootfs
        if sc.supplemental_groups:
            hc["GroupAdd"] = [str(g) for g in sc.supplemental_groups]
        opts = []
        if sc.no_new_privs:
            opts.append("no-new-privileges")
        prof = sc.seccomp
        if sc.HasField("seccomp"):
            if prof.profile_type == pb.SecurityProfile.Unconfined:
                opts.append("seccomp=unconfined")
            elif prof.profile_type == pb.SecurityProfile.Localhost:
                opts.append(f"seccomp={_localhost_profile(prof.localhost_ref)}")
        elif sc.seccomp_profile_path:
            path = sc.seccomp_profile_path
            if path == "unconfined":
                opts.append("seccomp=unconfined")
            elif path.startswith("localhost/"):
                opts.append(f"seccomp={_localhost_profile(path[len('localhost/'):])}")
        else:
            # The CRI's default is Unconfined when the kubelet says nothing.
            opts.append("seccomp=unconfined")
        if opts:
            hc["SecurityOpt"] = opts
        if not sc.privileged:
            if sc.masked_paths:
                hc["MaskedPaths"] = list(sc.masked_paths)
            if sc.readonly_paths:
                hc["ReadonlyPaths"] = list(sc.readonly_paths)

    @staticmethod
    def _resources(hc: dict[str, Any], r: Any) -> None:
        if r.cpu_period:
            hc["CpuPeriod"] = r.cpu_period
        if r.cpu_quota:
            hc["CpuQuota"] = r.cpu_quota
        if r.cpu_shares:
            hc["CpuShares"] = r.cpu_shares
        if r.memory_limit_in_bytes:
            hc["Memory"] = r.memory_limit_in_bytes
        if r.memory_swap_limit_in_bytes:
            hc["MemorySwap"] = r.memory_swap_limit_in_bytes
        if r.cpuset_cpus:
            hc["CpusetCpus"] = r.cpuset_cpus
        if r.cpuset_mems:
            hc["CpusetMems"] = r.cpuset_mems
        if r.oom_score_adj:
            hc["OomScoreAdj"] = r.oom_score_adj

    async def start_container(self, ref: str) -> None:
        doc = await self._resolve(ref, "container")
        cid = doc["Id"]
        pod_id = doc["Config"]["Labels"].get(POD_ID, "")
        pod = await self._resolve(pod_id, "sandbox")
        if not pod["State"].get("Running"):
            raise Conflict(f"pod sandbox {pod_id} is not ready")
        info = json.loads(doc["Config"]["Labels"].get(CONTAINER_INFO) or "{}")
        await self.backend.container_start(cid)
        if info.get("log_path"):
            self._copy_log(cid, info["log_path"])

    def _copy_log(self, cid: str, path: str) -> None:
        old = self.copiers.pop(cid, None)
        if old is not None:
            old.close()
        copier = LogCopier(self.backend, cid, path)
        self.copiers[cid] = copier
        copier.start()

    async def resume_logs(self) -> None:
        """After a restart: copy the output of containers started before it."""
        for s in await self._ours("container"):
            if s.get("State") != "running":
                continue
            doc = await self.backend.container_inspect(s["Id"])
            info = json.loads(doc["Config"]["Labels"].get(CONTAINER_INFO) or "{}")
            if info.get("log_path") and s["Id"] not in self.copiers:
                self._copy_log(s["Id"], info["log_path"])

    async def _stop(self, cid: str, timeout: int) -> None:
        try:
            await self.backend.container_stop(cid, timeout=max(0, timeout))
        except (NotModified, NotFound):
            pass

    async def stop_container(self, ref: str, timeout: int) -> None:
        doc = await self._resolve(ref, "container")
        await self._stop(doc["Id"], timeout)
        copier = self.copiers.get(doc["Id"])
        if copier is not None:
            await copier.wait(2.0)

    async def remove_container(self, ref: str) -> None:
        try:
            doc = await self._resolve(ref, "container")
        except NotFound:
            return
        copier = self.copiers.pop(doc["Id"], None)
        if copier is not None:
            copier.close()
        await self._force_remove(doc["Id"])

    def _container_state(self, doc: dict[str, Any]) -> int:
        st = doc["State"]["Status"]
        if st == "created":
            return pb.CONTAINER_CREATED
        if st in ("running", "paused", "restarting"):
            return pb.CONTAINER_RUNNING
        if st in ("exited", "dead"):
            return pb.CONTAINER_EXITED
        return pb.CONTAINER_UNKNOWN

    def _container_status(self, doc: dict[str, Any]) -> pb.ContainerStatus:
        labels = doc["Config"].get("Labels") or {}
        info = json.loads(labels.get(CONTAINER_INFO) or "{}")
        state = self._container_state(doc)
        s = doc["State"]
        reason, message = "", ""
        if state == pb.CONTAINER_EXITED:
            if s.get("OOMKilled"):
                reason = "OOMKilled"
            elif s.get("ExitCode") == 0:
                reason = "Completed"
            else:
                reason = "Error"
            message = s.get("Error") or ""
        elif state == pb.CONTAINER_CREATED and s.get("Error"):
            reason, message = "ContainerCannotRun", s["Error"]
        st = pb.ContainerStatus(
            id=doc["Id"], metadata=_parse(labels.get(META, ""), pb.ContainerMetadata),
            state=state, created_at=_ns(doc["Created"]),
            started_at=_ns(s.get("StartedAt", "")) if state != pb.CONTAINER_CREATED else 0,
            finished_at=_ns(s.get("FinishedAt", "")) if state == pb.CONTAINER_EXITED else 0,
            exit_code=int(s.get("ExitCode") or 0),
            image=pb.ImageSpec(image=info.get("image", "")), image_ref=doc.get("Image", ""),
            reason=reason, message=message, log_path=info.get("log_path", ""))
        st.labels.update(json.loads(labels.get(LABELS) or "{}"))
        st.annotations.update(json.loads(labels.get(ANNOTATIONS) or "{}"))
        for m in info.get("mounts") or []:
            st.mounts.append(json_format.ParseDict(m, pb.Mount(), ignore_unknown_fields=True))
        hc = doc.get("HostConfig") or {}
        st.resources.linux.CopyFrom(pb.LinuxContainerResources(
            cpu_period=hc.get("CpuPeriod") or 0, cpu_quota=hc.get("CpuQuota") or 0,
            cpu_shares=hc.get("CpuShares") or 0, memory_limit_in_bytes=hc.get("Memory") or 0,
            memory_swap_limit_in_bytes=hc.get("MemorySwap") or 0,
            cpuset_cpus=hc.get("CpusetCpus") or "", cpuset_mems=hc.get("CpusetMems") or "",
            oom_score_adj=hc.get("OomScoreAdj") or 0))
        return st

    async def container_status(self, req: pb.ContainerStatusRequest
                               ) -> pb.ContainerStatusResponse:
        doc = await self._resolve(req.container_id, "container")
        out = pb.ContainerStatusResponse(status=self._container_status(doc))
        if req.verbose:
            out.info["info"] = json.dumps({"pid": doc["State"].get("Pid") or 0,
                                           "sandboxID": doc["Config"]["Labels"].get(POD_ID, ""),
                                           "name": doc["Name"].lstrip("/")})
        return out

    async def list_containers(self, f: Any) -> list[pb.Container]:
        out = []
        for s in await self._ours("container"):
            labels = s.get("Labels") or {}
            if f.id and not s["Id"].startswith(f.id):
                continue
            if f.pod_sandbox_id and not labels.get(POD_ID, "").startswith(f.pod_sandbox_id):
                continue
            doc = await self.backend.container_inspect(s["Id"])
            st = self._container_status(doc)
            if f.HasField("state") and st.state != f.state.state:
                continue
            if not _selected(dict(st.labels), f.label_selector):
                continue
            out.append(pb.Container(id=st.id, pod_sandbox_id=labels.get(POD_ID, ""),
                                    metadata=st.metadata, image=st.image,
                                    image_ref=st.image_ref, state=st.state,
                                    created_at=st.created_at, labels=st.labels,
                                    annotations=st.annotations))
        return out

    async def update_container_resources(self, req: pb.UpdateContainerResourcesRequest) -> None:
        doc = await self._resolve(req.container_id, "container")
        hc: dict[str, Any] = {}
        self._resources(hc, req.linux)
        hc.pop("OomScoreAdj", None)   # fixed at start, as on Linux runtimes
        if hc:
            await self.backend.container_update(doc["Id"], hc)

    async def reopen_container_log(self, ref: str) -> None:
        doc = await self._resolve(ref, "container")
        if not doc["State"].get("Running"):
            raise Conflict(f"container {doc['Id']} is not running")
        copier = self.copiers.get(doc["Id"])
        if copier is None:
            raise Conflict(f"container {doc['Id']} has no log path")
        copier.reopen()

    # ----- exec -------------------------------------------------------------------------------
    async def exec_sync(self, req: pb.ExecSyncRequest) -> pb.ExecSyncResponse:
        doc = await self._resolve(req.container_id, "container")
        if not req.cmd:
            raise InvalidArgument("exec needs a command")
        ex = await self.backend.exec_create(doc["Id"], {"Cmd": list(req.cmd),
                                                        "AttachStdout": True,
                                                        "AttachStderr": True})
        sess = await self.backend.exec_start(ex["Id"])
        out, err = bytearray(), bytearray()

        async def drain() -> None:
            while True:
                item = await sess.read()
                if item is None:
                    return
                stream, data = item
                buf = err if stream == 2 else out
                room = EXEC_OUTPUT_LIMIT - len(out) - len(err)
                if room > 0:
                    buf += data[:room]

        try:
            if req.timeout > 0:
                await asyncio.wait_for(drain(), req.timeout)
            else:
                await drain()
        except asyncio.TimeoutError:
            await _kill_exec(sess)
            await sess.close()
            raise TimeoutError(f"command {list(req.cmd)!r} timed out after {req.timeout}s")
        code = (await self.backend.exec_inspect(ex["Id"])).get("ExitCode")
        return pb.ExecSyncResponse(stdout=bytes(out), stderr=bytes(err),
                                   exit_code=int(code if code is not None else 126))

    # ----- stats ------------------------------------------------------------------------------
    async def _one_stats(self, doc: dict[str, Any]) -> pb.ContainerStats:
        labels = doc["Config"].get("Labels") or {}
        now = time.time_ns()
        st = pb.ContainerStats(attributes=pb.ContainerAttributes(
            id=doc["Id"], metadata=_parse(labels.get(META, ""), pb.ContainerMetadata)))
        st.attributes.labels.update(json.loads(labels.get(LABELS) or "{}"))
        st.attributes.annotations.update(json.loads(labels.get(ANNOTATIONS) or "{}"))
        it = await self.backend.container_stats(doc["Id"], stream=False, one_shot=True)
        d = None
        async for d in it:
            break
        d = d or {}
        cpu = ((d.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage", 0)
        mem = d.get("memory_stats") or {}
        usage = int(mem.get("usage") or 0)
        inactive = int((mem.get("stats") or {}).get("total_inactive_file")
                       or (mem.get("stats") or {}).get("inactive_file") or 0)
        st.cpu.CopyFrom(pb.CpuUsage(timestamp=now,
                                    usage_core_nano_seconds=pb.UInt64Value(value=int(cpu))))
        st.memory.CopyFrom(pb.MemoryUsage(
            timestamp=now, usage_bytes=pb.UInt64Value(value=usage),
            working_set_bytes=pb.UInt64Value(value=max(0, usage - inactive)),
            rss_bytes=pb.UInt64Value(value=int((mem.get("stats") or {}).get("rss") or 0))))
        sized = await self.backend.container_inspect(doc["Id"], size=True)
        st.writable_layer.CopyFrom(pb.FilesystemUsage(
            timestamp=now, used_bytes=pb.UInt64Value(value=int(sized.get("SizeRw") or 0))))
        return st

    async def container_stats(self, ref: str) -> pb.ContainerStats:
        return await self._one_stats(await self._resolve(ref, "container"))

    async def list_container_stats(self, f: Any) -> list[pb.ContainerStats]:
        out = []
        for c in await self.list_containers(pb.ContainerFilter(
                id=f.id, pod_sandbox_id=f.pod_sandbox_id, label_selector=f.label_selector)):
            if c.state == pb.CONTAINER_RUNNING:
                out.append(await self._one_stats(await self.backend.container_inspect(c.id)))
        return out

    async def pod_stats(self, ref: str) -> pb.PodSandboxStats:
        doc = await self._resolve(ref, "sandbox")
        st = self._pod_status(doc)
        now = time.time_ns()
        out = pb.PodSandboxStats(attributes=pb.PodSandboxAttributes(
            id=st.id, metadata=st.metadata, labels=st.labels, annotations=st.annotations))
        cpu = mem = ws = 0
        procs = 0
        for c in await self.list_containers(pb.ContainerFilter(pod_sandbox_id=st.id)):
            if c.state != pb.CONTAINER_RUNNING:
                continue
            cs = await self._one_stats(await self.backend.container_inspect(c.id))
            out.linux.containers.append(cs)
            cpu += cs.cpu.usage_core_nano_seconds.value
            mem += cs.memory.usage_bytes.value
            ws += cs.memory.working_set_bytes.value
        if doc["State"].get("Running"):
            it = await self.backend.container_stats(doc["Id"], stream=False, one_shot=True)
            d: dict[str, Any] = {}
            async for d in it:
                break
            procs = int((d.get("pids_stats") or {}).get("current") or 0)
            nets = d.get("networks") or {}
            ifaces = [pb.NetworkInterfaceUsage(
                name=n, rx_bytes=pb.UInt64Value(value=v["rx_bytes"]),
                rx_errors=pb.UInt64Value(value=v["rx_errors"]),
                tx_bytes=pb.UInt64Value(value=v["tx_bytes"]),
                tx_errors=pb.UInt64Value(value=v["tx_errors"])) for n, v in nets.items()]
            net = out.linux.network
            net.timestamp = now
            if ifaces:
                net.default_interface.CopyFrom(ifaces[0])
                net.interfaces.extend(ifaces)
        out.linux.cpu.CopyFrom(pb.CpuUsage(timestamp=now,
                                           usage_core_nano_seconds=pb.UInt64Value(value=cpu)))
        out.linux.memory.CopyFrom(pb.MemoryUsage(timestamp=now,
                                                 usage_bytes=pb.UInt64Value(value=mem),
                                                 working_set_bytes=pb.UInt64Value(value=ws)))
        out.linux.process.CopyFrom(pb.ProcessUsage(timestamp=now,
                                                   process_count=pb.UInt64Value(value=procs)))
        return out

    async def list_pod_stats(self, f: Any) -> list[pb.PodSandboxStats]:
        out = []
        for p in await self.list_pod_sandbox(pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(
                id=f.id, label_selector=f.label_selector))):
            if p.state == pb.SANDBOX_READY:
                out.append(await self.pod_stats(p.id))
        return out

    # ----- events and metrics -----------------------------------------------------------------
    async def container_events(self) -> AsyncIterator[pb.ContainerEventResponse]:
        """Life-cycle changes of pods and their containers as they happen (the kubelet's
        evented PLEG), each with the pod's status and its containers' at that moment."""
        stream = await self.backend.events(filters={"type": ["container"], "label": [KIND]})
        async for ev in stream:
            kind = _EVENTS.get(ev["Action"])
            if kind is None:
                continue
            attrs = ev["Actor"]["Attributes"]
            cid = ev["Actor"]["ID"]
            pod_id = cid if attrs.get(KIND) == "sandbox" else attrs.get(POD_ID, "")
            out = pb.ContainerEventResponse(container_id=cid, container_event_type=kind,
                                            created_at=ev["timeNano"])
            try:
                out.pod_sandbox_status.CopyFrom(
                    self._pod_status(await self._resolve(pod_id, "sandbox")))
                for c in await self._pod_containers(pod_id):
                    try:
                        doc = await self.backend.container_inspect(c["Id"])
                    except NotFound:
                        continue
                    out.containers_statuses.append(self._container_status(doc))
            except NotFound:
                pass   # the pod is gone already (its removal's own events)
            yield out

    async def metric_descriptors(self) -> list[pb.MetricDescriptor]:
        return [pb.MetricDescriptor(name=name, help=help, label_keys=list(keys))
                for name, (help, keys, _kind) in _METRICS.items()]

    async def pod_metrics(self) -> list[pb.PodSandboxMetrics]:
        """The pods' stats (job objects, endpoints) as metrics named by :data:`_METRICS`."""
        out = []
        for st in await self.list_pod_stats(pb.PodSandboxStatsFilter()):
            md = st.attributes.metadata
            now = time.time_ns()

            def metric(name: str, value: int, *labels: str) -> pb.Metric:
                return pb.Metric(name=name, timestamp=now, metric_type=_METRICS[name][2],
                                 label_values=list(labels), value=pb.UInt64Value(value=value))
            pm = pb.PodSandboxMetrics(pod_sandbox_id=st.attributes.id)
            for iface in st.linux.network.interfaces:
                for name, value in (
                        ("container_network_receive_bytes_total", iface.rx_bytes.value),
                        ("container_network_transmit_bytes_total", iface.tx_bytes.value),
                        ("container_network_receive_errors_total", iface.rx_errors.value),
                        ("container_network_transmit_errors_total", iface.tx_errors.value)):
                    pm.metrics.append(metric(name, value, iface.name, md.name, md.namespace))
            for cs in st.linux.containers:
                labels = (cs.attributes.metadata.name, cs.attributes.id, md.name, md.namespace)
                cm = pb.ContainerMetrics(container_id=cs.attributes.id, metrics=[
                    metric("container_cpu_usage_nanoseconds_total",
                           cs.cpu.usage_core_nano_seconds.value, *labels),
                    metric("container_memory_usage_bytes", cs.memory.usage_bytes.value, *labels),
                    metric("container_memory_working_set_bytes",
                           cs.memory.working_set_bytes.value, *labels),
                    metric("container_memory_rss", cs.memory.rss_bytes.value, *labels)])
                pm.container_metrics.append(cm)
            out.append(pm)
        return out

    def close(self) -> None:
        for copier in self.copiers.values():
            copier.close()
        self.copiers.clear()


def _localhost_profile(ref: str) -> str:
    """A ``Localhost`` seccomp profile: the kubelet names a file on the node."""
    if not ref.startswith("/"):
        raise InvalidArgument(f"seccomp localhost profile {ref!r}: an absolute path is needed")
    try:
        with open(ref) as f:
            return f.read()
    except OSError as e:
        raise InvalidArgument(f"seccomp localhost profile {ref}: {e.strerror}") from None


async def _kill_exec(sess: Any) -> None:
    """Kill an exec whose ExecSync deadline passed. The API's StreamSession protocol has no
    kill; the engine's exec session exposes its compute process, which does."""
    proc = getattr(sess, "proc", None)
    signal_fn: Callable[..., Any] | None = getattr(proc, "signal", None)
    if signal_fn is not None:
        try:
            await signal_fn(9)
        except SiloboxError:
            pass
