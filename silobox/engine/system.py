"""Version, info and the compute-service views (``silo hcs``) of the daemon."""

from __future__ import annotations

import os
import platform
import socket
import time
from typing import Any, Callable

import silobox
from silobox.engine.state import Status, status
from silobox.timeutil import iso


class SystemService:
    """``version``, ``info``, ``system df`` and the compute systems' own views.

    ``summary`` is the container service's ``ps`` line of a container, ``volume_users`` the
    volume service's users of a volume, ``registry_config`` the distribution service's view."""

    def __init__(self, config: Any, daemon_id: str, store: Any, images: Any, layers: Any,
                 volumes: Any, hns: Any, compute: Any, *,
                 summary: Callable[[Any, bool], dict[str, Any]],
                 volume_users: Callable[[str], list[str]],
                 registry_config: Callable[[], dict[str, Any]]) -> None:
        self.config = config
        self.daemon_id = daemon_id
        self.store = store
        self.images = images
        self.layers = layers
        self.volumes = volumes
        self.hns = hns
        self.compute = compute
        self.summary = summary
        self.volume_users = volume_users
        self.registry_config = registry_config

    async def version(self) -> dict[str, Any]:
        uname = os.uname()
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(uname.machine, uname.machine)
        details = {"ApiVersion": silobox.API_VERSION, "MinAPIVersion": silobox.MIN_API_VERSION,
                   "Arch": arch, "Os": "linux", "KernelVersion": uname.release,
                   "GitCommit": "", "GoVersion": f"python{platform.python_version()}",
                   "BuildTime": "", "Experimental": "false"}
        return {
            "Platform": {"Name": f"silobox {silobox.__version__}"},
            "Components": [{"Name": "Engine", "Version": silobox.__version__,
                            "Details": details}],
            "Version": silobox.__version__, "ApiVersion": silobox.API_VERSION,
            "MinAPIVersion": silobox.MIN_API_VERSION, "GitCommit": "",
            "GoVersion": details["GoVersion"], "Os": "linux", "Arch": arch,
            "KernelVersion": uname.release, "BuildTime": "",
        }

    async def info(self) -> dict[str, Any]:
        from silobox.kernel.features import cgroup_layout
        cs = list(self.store.values())
        running = sum(1 for c in cs if status(c) is Status.RUNNING)
        paused = sum(1 for c in cs if status(c) is Status.PAUSED)
        layout = cgroup_layout()
        mode = getattr(layout, "mode", "v1")
        forwarding = self.hns.forwarding.report()
        with open("/proc/meminfo") as f:
            mem_total = int(f.readline().split()[1]) * 1024
        try:
            with open("/etc/os-release") as f:
                osr = dict(l.strip().split("=", 1) for l in f if "=" in l)
            os_name = osr.get("PRETTY_NAME", "Linux").strip('"')
            os_version = osr.get("VERSION_ID", "").strip('"')
        except OSError:
            os_name, os_version = "Linux", ""
        return {
            "ID": self.daemon_id, "Containers": len(cs), "ContainersRunning": running,
            "ContainersPaused": paused, "ContainersStopped": len(cs) - running - paused,
            "Images": len(self.images.list()), "Driver": "windowsfilter",
            "DriverStatus": [["Layer store", os.path.join(self.config.root, "layers")],
                             ["Sandbox", "overlay upper directory"]],
            "Plugins": {"Volume": [], "Network": ["none"], "Authorization": None,
                        "Log": ["json-file"]},
            "MemoryLimit": True, "SwapLimit": True, "KernelMemory": False,
            "CpuCfsPeriod": True, "CpuCfsQuota": True, "CPUShares": True, "CPUSet": True,
            "PidsLimit": True, "OomKillDisable": False,
            "IPv4Forwarding": forwarding["IPv4Forwarding"],
            "BridgeNfIptables": True, "BridgeNfIp6tables": True, "Debug": self.config.debug,
            "NFd": len(os.listdir("/proc/self/fd")), "NGoroutines": 0,
            "SystemTime": iso(time.time()), "LoggingDriver": "json-file",
            "CgroupDriver": "cgroupfs", "CgroupVersion": "2" if mode == "v2" else "1",
            "NEventsListener": 0, "KernelVersion": os.uname().release,
            "OperatingSystem": os_name, "OSVersion": os_version, "OSType": "linux",
            "Architecture": os.uname().machine,
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": self.registry_config(), "NCPU": os.cpu_count() or 1, "MemTotal": mem_total,
            "GenericResources": None, "DockerRootDir": self.config.root,
            "HttpProxy": "", "HttpsProxy": "", "NoProxy": "", "Name": socket.gethostname(),
            "Labels": [], "ExperimentalBuild": False, "ServerVersion": silobox.__version__,
            # runc: the name clients written for dockerd ask for, run by the same shim
            "Runtimes": {"silobox": {"path": "silobox-shim"}, "runc": {"path": "silobox-shim"}},
            "DefaultRuntime": "silobox",
            "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "",
                      "ControlAvailable": False, "Error": "", "RemoteManagers": None},
            "LiveRestoreEnabled": True, "Isolation": "process", "InitBinary": "tini",
            "ContainerdCommit": {"ID": ""}, "RuncCommit": {"ID": ""}, "InitCommit": {"ID": ""},
            "SecurityOptions": ["name=seccomp,profile=builtin", "name=cgroupns"],
            "CDISpecDirs": [], "Warnings": self.hns.forwarding.warnings(),
            "Silobox": {"CgroupParent": self.config.cgroup_parent, "CgroupMode": mode,
                        "ExecRoot": self.config.exec_root, "HostForwarding": forwarding,
                        "UtilityVM": await _utility_vm_status()},
        }

    async def system_df(self) -> dict[str, Any]:
        """GET /system/df: what images, containers and volumes take on disk."""
        import asyncio
        return await asyncio.get_running_loop().run_in_executor(None, self._disk_usage)

    def _disk_usage(self) -> dict[str, Any]:
        containers = list(self.store.values())
        uses: dict[str, int] = {}
        for c in containers:
            uses[c.image] = uses.get(c.image, 0) + 1
        images = []
        for image in self.images.list():
            doc = image.to_docker_summary()
            doc["Containers"] = uses.get(image.id, 0)
            images.append(doc)
        ctrs = []
        for c in containers:
            doc = self.summary(c, True)
            doc["SizeRootFs"] = doc.get("SizeRw", 0) + next(
                (i["Size"] for i in images if i["Id"] == c.image), 0)
            ctrs.append(doc)
        volumes = []
        for v in self.volumes.list():
            doc = v.to_docker()
            doc["UsageData"] = {"Size": self.volumes.size(v.name),
                                "RefCount": len(self.volume_users(v.name))}
            volumes.append(doc)
        layers = sum(l.size for l in self.layers.list())
        return {"LayersSize": layers, "Images": images, "Containers": ctrs, "Volumes": volumes,
                "BuildCache": []}

    async def compute_systems(self) -> list[dict[str, Any]]:
        return self.compute.enumerate()

    async def compute_system_properties(self, ref: str,
                                        types: list[str] | None = None) -> dict[str, Any]:
        from silobox.errors import NotFound
        try:
            system = self.compute.open(ref)
        except NotFound:
            matches = [s for s in self.compute.systems.values()
                       if s.id.startswith(ref)]
            if len(matches) != 1:
                try:
                    c = self.store.find(ref)
                    system = self.compute.open(c.id)
                except NotFound:
                    raise NotFound(f"compute system {ref} does not exist", object_id=ref) from None
            else:
                system = matches[0]
        return system.properties(types)


async def _utility_vm_status() -> dict[str, Any]:
    """The utility VM's kernel and accelerator (the first call may boot a probe VM)."""
    import asyncio
    from silobox.compute.uvm.status import utility_vm_status
    return await asyncio.get_running_loop().run_in_executor(None, utility_vm_status)
