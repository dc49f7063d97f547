"""``--ipc container:X``, ``--pid container:X`` and ``UTSMode: container:X``: a container in
another one's namespaces (the last one a silobox extension: Docker's UTSMode knows only
``host``; the CRI's pods need it, their containers share the pod's hostname namespace).

Windows containers share nothing but a network compartment; on Linux Docker lets a container
join the IPC or PID namespace of a running one (compose's ``ipc: service:x`` and
``pid: service:x``). At create the reference is resolved to the target's id, as dockerd
stores it; at each start the target must run, and the new silo joins its namespaces through
``/proc/<pid>/ns/…``.

POSIX shared memory is a tmpfs at ``/dev/shm``, not part of the IPC namespace. As on Docker, a
container started with ``--ipc shareable`` gets that tmpfs mounted by silod on the host
(``<container dir>/shm``), so a container joining its IPC namespace can be given the same
``/dev/shm``; joining a container that is not shareable is refused with Docker's message. The
host mount goes when the donor stops (a joiner keeps its own reference until it exits).
"""

from __future__ import annotations

import os
from typing import Any

from silobox.engine.hooks import ContainerHook
from silobox.engine.host import Host
from silobox.errors import Conflict, InvalidArgument

_SHARED = (("IpcMode", "ipc", "IPC"), ("PidMode", "pid", "PID"), ("UTSMode", "uts", "UTS"))


class NamespaceSharingHook(ContainerHook):
    """``--ipc``/``--pid container:NAME``: join the namespaces of another running container."""

    def __init__(self, store: Any, containers_dir: str, host: Host) -> None:
        self.store = store
        self.containers_dir = containers_dir
        self.host = host

    def on_create(self, c: Any, body: dict[str, Any]) -> None:
        hc = c.host_config
        for field, _, _ in _SHARED:
            mode = hc.get(field) or ""
            if not mode.startswith("container:"):
                continue
            ref = mode.split(":", 1)[1]
            if not ref:
                raise InvalidArgument(f"invalid {field} {mode!r}: no container named")
            target = self.store.find(ref)
            if target.id == c.id:
                raise InvalidArgument(f"invalid {field}: a container cannot join itself")
            hc[field] = f"container:{target.id}"

    async def on_start(self, c: Any, document: dict[str, Any]) -> None:
        lx = document["Container"]["Linux"]
        for field, ns, label in _SHARED:
            mode = c.host_config.get(field) or ""
            if not mode.startswith("container:"):
                continue
            tid = mode.split(":", 1)[1]
            target = self.store.get(tid)
            if target is None or not target.running or not target.state.get("Pid"):
                raise Conflict(f"cannot join {label} of a non running container: {tid}")
            if (target.host_config.get("Isolation") or "").lower() == "hyperv":
                # its Pid is the guest's: /proc/<Pid> on the host is some other process
                raise Conflict(f"cannot join {label} of container {tid}: it runs in a utility "
                               "VM (--isolation hyperv)")
            if ns == "ipc":
                if target.host_config.get("IpcMode") != "shareable":
                    raise InvalidArgument("non-shareable IPC (hint: use IpcMode:shareable for "
                                          "the donor container)")
                document["Container"].setdefault("MappedDirectories", []).append(
                    {"HostPath": self._shm(target), "ContainerPath": "/dev/shm"})
            pid = target.state["Pid"]
            lx.setdefault("JoinNamespaces", {})[ns] = f"/proc/{pid}/ns/{ns}"
        if c.host_config.get("IpcMode") == "shareable":
            path = self._shm(c)
            size = c.host_config.get("ShmSize") or 64 * 1024 * 1024
            self.host.mount_tmpfs(path, f"mode=1777,size={size}")
            document["Container"].setdefault("MappedDirectories", []).append(
                {"HostPath": path, "ContainerPath": "/dev/shm"})

    def _shm(self, c: Any) -> str:
        return os.path.join(self.containers_dir, c.id, "shm")

    async def on_stop(self, c: Any) -> None:
        self.host.unmount(self._shm(c))

    async def on_remove(self, c: Any) -> None:
        await self.on_stop(c)
