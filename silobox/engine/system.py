"""Version, info and the compute-service views (``silo hcs``) of the daemon."""

from __future__ import annotations

import os
import platform
import socket
import time
from typing import Any

import silobox
from silobox.engine.state import Status, status
from silobox.timeutil import iso


class SystemService:
    config: Any
    started: float

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
        cs = list(self.containers.values())  # type: ignore[attr-defined]
        running = sum(1 for c in cs if status(c) is Status.RUNNING)
        paused = sum(1 for c in cs if status(c) is Status.PAUSED)
        layout = cgroup_layout()
        mode = getattr(layout, "mode", "v1")
        forwarding = self.hns.forwarding.report()  # type: ignore[attr-defined]
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
            "CDISpecDirs": [], "Warnings": self.hns.forwarding.warnings(),  # type: ignore
            "Silobox": {"CgroupParent": self.config.cgroup_parent, "CgroupMode": mode,
                        "ExecRoot": self.config.exec_root, "HostForwarding": forwarding,
                        "UtilityVM": await _utility_vm_status()},
        }

    async def system_df(self) -> dict[str, Any]:
        """GET /system/df: what images, containers and volumes take on disk."""
        import asyncio
        return await asyncio.get_running_loop().run_in_executor(None, self._disk_usage)

    def _disk_usage(self) -> dict[str, Any]:
        containers = list(self.containers.values())  # type: ignore[attr-defined]
        uses: dict[str, int] = {}
        for c in containers:
            uses[c.data["Image"]] = uses.get(c.data["Image"], 0) + 1
        images = []
        for image in self.images.list():  # type: ignore[attr-defined]
            doc = image.to_docker_summary()
            doc["Containers"] = uses.get(image.id, 0)
            images.append(doc)
        ctrs = []
        for c in containers:
            doc = self._summary(c, True)  # type: ignore[attr-defined]
            doc["SizeRootFs"] = doc.get("SizeRw", 0) + next(
                (i["Size"] for i in images if i["Id"] == c.data["Image"]), 0)
            ctrs.append(doc)
        volumes = []
        for v in self.volumes.list():  # type: ignore[attr-defined]
            doc = v.to_docker()
            doc["UsageData"] = {"Size": self.volumes.size(v.name),  # type: ignore[attr-defined]
                                "RefCount": len(self._volume_users(v.name))}  # type: ignore[attr-defined]
            volumes.append(doc)
        layers = sum(l.size for l in self.layers.list())  # type: ignore[attr-defined]
        return {"LayersSize": layers, "Images": images, "Containers": ctrs, "Volumes": volumes,
                "BuildCache": []}

    async def compute_systems(self) -> list[dict[str, Any]]:
        return self.compute.enumerate()  # type: ignore[attr-defined]

    async def compute_system_properties(self, ref: str,
                                        types: list[str] | None = None) -> dict[str, Any]:
        from silobox.errors import NotFound
        try:
            system = self.compute.open(ref)  # type: ignore[attr-defined]
        except NotFound:
            matches = [s for s in self.compute.systems.values()  # type: ignore[attr-defined]
                       if s.id.startswith(ref)]
            if len(matches) != 1:
                try:
                    c = self._find(ref)  # type: ignore[attr-defined]
                    system = self.compute.open(c.id)  # type: ignore[attr-defined]
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
