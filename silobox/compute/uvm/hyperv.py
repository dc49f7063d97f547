"""``--isolation hyperv``: a container in a utility VM of its own.

As on Windows, the container is the same container (the same document, the same shim, silo,
job object, seccomp and capabilities); only its host is a VM. The compute system boots a utility
VM sized by the container's limits (memory + the guest's own needs; CPUs from the quota or the
CPU set), shares the image's layers read-only and the sandbox, state and log directories
read-write at the same paths, gives it the container's own disk for the writable layer (kept
from stop to start until ``rm``), starts the shim in the guest (:mod:`.guest`) and forwards the
shim's socket to the host path where silod's shim client looks for it. stdio, exec, logs and
exit codes therefore work unchanged. The VM stops when the container exits.

Networks: each of the container's endpoints is a tap on the HNS switch that QEMU opens as a
virtio-net card; the guest's init gives the card the endpoint's MAC, addresses and routes, and
the container joins the guest's network namespace (the VM is the container's alone). Published
ports are the host's nftables DNAT to the endpoint's address, as for process containers.

What a VM here cannot do is refused by the engine before a VM is booted (the host's or another
container's network, devices, --privileged, host namespaces); pause is refused here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import shutil
import signal
import threading
import time
from typing import Any

from silobox.atomic import atomic_write_json
from silobox.compute.system import ComputeSystem, State
from silobox.compute.uvm.vm import (STATE_DIR, NetworkAdapter, UtilityVM, VMConfig,
                                    _start_time, cleanup_stale, default_shares)
from silobox.errors import InvalidArgument, NotRunning, SystemFailure, Unavailable

log = logging.getLogger("silobox.compute")

MiB = 1 << 20
GUEST_OVERHEAD_MIB = 256   # the guest kernel, the agent and the shim (both Python)
MIN_VM_MIB = 512
GUEST_STATE = "/run/silobox/shims"


def check_host_config(hc: dict[str, Any], tty: bool = False) -> None:
    """Refuse, before any VM boots, what a hyperv container cannot have here."""
    def refuse(what: str) -> None:
        raise InvalidArgument(f"--isolation hyperv: {what} is not supported for containers in "
                              "a utility VM")

    net = hc.get("NetworkMode") or "default"
    if net == "host" or net.startswith("container:"):
        refuse(f"--network {net}")
    if tty:
        refuse("a terminal (-t)")
    if hc.get("Privileged"):
        refuse("--privileged")
    if hc.get("Devices") or hc.get("DeviceRequests") or hc.get("DeviceCgroupRules"):
        refuse("giving host devices")
    for source in _bind_sources(hc):
        if os.path.exists(source) and not os.path.isdir(source):
            # a VM is given directories (virtiofs): a file's whole directory would be writable
            # by the guest, more than the bind grants
            refuse(f"binding a file ({source}; bind its directory)")
    for key, flag in (("PidMode", "--pid"), ("IpcMode", "--ipc"), ("UTSMode", "--uts"),
                      ("CgroupnsMode", "--cgroupns")):
        mode = hc.get(key) or ""
        if mode == "host" or mode.startswith("container:"):
            refuse(f"{flag} {mode}")
    from silobox.compute.uvm.status import utility_vm_status
    status = utility_vm_status()
    if not status.get("Available"):
        raise Unavailable(f"--isolation hyperv: no utility VM on this host: {status.get('Reason')}")


def _bind_sources(hc: dict[str, Any]) -> list[str]:
    """The host paths of the container's binds (``Binds`` and ``Mounts`` of type bind)."""
    found = [b.split(":", 1)[0] for b in hc.get("Binds") or [] if isinstance(b, str)]
    found += [m.get("Source") or "" for m in hc.get("Mounts") or []
              if isinstance(m, dict) and m.get("Type") == "bind"]
    return [p for p in found if p.startswith("/")]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_vm(vm_id: str) -> None:
    """The files of a VM that cannot be adopted; its QEMU, if it still runs, is killed."""
    path = os.path.join(STATE_DIR, vm_id)
    try:
        with open(os.path.join(path, "owner.json")) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        owner = {}
    qemu = owner.get("qemu") or 0
    if qemu and _start_time(qemu) == owner.get("qemu_start"):
        try:
            os.kill(qemu, signal.SIGKILL)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)


DISK_ROOT = STATE_DIR.rstrip("/") + "-disks"
"""``<id>/disk.img``: each hyperv container's writable disk, kept from stop to start until
``rm``. Not in the container's directory: the guest has that directory read-write (its log
and the files bound into it), and the guest must never choose which host file QEMU opens."""


_STOPPING: dict[str, list[threading.Event]] = {}
"""Container id → its VMs being stopped now (on executor threads): a start waits for them."""
_STOPPING_LOCK = threading.Lock()


def container_disk(cid: str) -> str:
    """Where the writable disk of the hyperv container ``cid`` is (whether or not it exists)."""
    if not cid or "/" in cid or cid.startswith("."):
        raise InvalidArgument(f"invalid container id {cid!r}")
    return os.path.join(DISK_ROOT, cid, "disk.img")


def remove_container_disk(cid: str) -> None:
    """At ``rm``: the container's writable disk goes with it."""
    shutil.rmtree(os.path.dirname(container_disk(cid)), ignore_errors=True)


def cleanup_stale_disks() -> list[str]:
    """Remove the disks of containers that are gone (a daemon killed during ``rm``): each
    disk's ``ref.json`` names its container's directory."""
    removed = []
    try:
        names = os.listdir(DISK_ROOT)
    except FileNotFoundError:
        return removed
    for name in names:
        path = os.path.join(DISK_ROOT, name)
        try:
            with open(os.path.join(path, "ref.json")) as f:
                ref = json.load(f).get("ref") or ""
        except (OSError, ValueError, AttributeError):
            ref = ""
            try:
                if time.time() - os.stat(path).st_mtime < 60:
                    continue   # being created right now: ref.json comes first, then the disk
            except FileNotFoundError:
                continue
        if ref and os.path.isdir(ref):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(name)
    return removed


def vm_size(resources: dict[str, Any]) -> tuple[int, int]:
    """(memory MiB, vCPUs) of a container's VM: the limits are the VM's size, as on Windows."""
    memory = resources.get("memory") or 0
    mib = max(MIN_VM_MIB, (memory // MiB) + GUEST_OVERHEAD_MIB) if memory > 0 else MIN_VM_MIB
    cpus = 1
    if resources.get("cpu_quota") and resources["cpu_quota"] > 0:
        cpus = math.ceil(resources["cpu_quota"] / (resources.get("cpu_period") or 100000))
    elif resources.get("cpuset_cpus"):
        cpus = len(_cpu_list(resources["cpuset_cpus"]))
    return mib, max(1, min(cpus, os.cpu_count() or 1))


def _cpu_list(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            out += range(int(lo), int(hi) + 1)
        elif part.strip():
            out.append(int(part))
    return out


class HypervComputeSystem(ComputeSystem):
    """A container whose host is a utility VM (HCS: a container with a HostingSystemId)."""

    in_vm = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vm: UtilityVM | None = None
        self.vm_id = f"c{self.id[:12]}-{secrets.token_hex(3)}"

    # -- start ------------------------------------------------------------------------------------

    async def _spawn_shim(self, cfg: dict) -> dict:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self._boot_and_spawn, cfg)
        except BaseException:
            await loop.run_in_executor(None, self._stop_vm)
            raise

    def _boot_and_spawn(self, cfg: dict) -> dict:
        resources = dict(cfg.get("limits") or {})
        memory_mib, cpus = vm_size(resources)
        silo = cfg["silo"]
        read_only: dict[str, str] = {path: path for path in silo.get("lower_dirs") or []}
        from silobox.kernel import entry   # the static entry helper, as the host built it
        helper_dir = os.path.dirname(entry.ensure_built())
        read_only[helper_dir] = helper_dir
        writable: dict[str, str] = {}

        def share(path: str | None) -> None:
            if path and os.path.isdir(path):
                writable.setdefault(path, path)

        share(self.state_dir)
        share(self.doc.sandbox_path)
        share(os.path.dirname(cfg["log_path"]) if cfg.get("log_path") else None)
        for bind in silo.get("binds") or []:
            source = bind["source"] if isinstance(bind, dict) else bind.source
            share(source if os.path.isdir(source) else os.path.dirname(source))
        shares = default_shares()
        cleanup_stale()   # VMs of a silod that was killed: their processes died with it
        cleanup_stale_disks()
        with _STOPPING_LOCK:   # the last VM may still be powering off: one VM per disk
            stopping = list(_STOPPING.get(self.id, []))
        for event in stopping:
            event.wait(30)
        # The writable layer's disk is the container's: kept while its directory (the one
        # holding its sandbox) exists. A system without a sandbox gets the VM's scratch disk.
        disk = container_disk(self.id) if self.doc.sandbox_path else ""
        if disk and not os.path.exists(disk):
            os.makedirs(os.path.dirname(disk), mode=0o700, exist_ok=True)
            atomic_write_json(os.path.join(os.path.dirname(disk), "ref.json"),
                              {"ref": os.path.dirname(self.doc.sandbox_path.rstrip("/"))})
        nics = self.network_adapters()
        net = (self.doc.raw.get("Container") or {}).get("Networking") or {}
        # The VM outlives silod, as a process container does: the next silod adopts it.
        self.vm = UtilityVM(self.vm_id, VMConfig(
            memory_mib=memory_mib, cpus=cpus, shares=shares, writable=writable,
            read_only=read_only, disk=disk, nics=nics, dns=net.get("Dns") or {}, boot_timeout=180,
            outlives_owner=True, owner_ref=self.state_dir))
        self.vm.start()
        if self.vm.config.dns:
            self.vm.relay_dns()
        guest = dict(cfg)
        guest["state_dir"] = f"{GUEST_STATE}/{self.id}"
        guest["pool"] = False
        # Inside the VM the whole VM is the container's: CPU sets and throttles of host
        # devices mean nothing there (the VM's size carries them).
        guest["limits"] = {k: v for k, v in resources.items()
                           if k in ("memory", "memory_swap", "memory_reservation", "cpu_quota",
                                    "cpu_period", "cpu_shares", "pids_limit")}
        # With network cards, the container joins the guest's own network namespace, where
        # init configured them; without, it gets a new, empty one.
        guest["silo"] = dict(silo, netns_path="/proc/1/ns/net" if nics else None)
        proc = self.vm.spawn(["/opt/silobox/bin/python", "-m", "silobox.compute.uvm.guest"],
                             cwd="/src")
        proc.write(json.dumps(guest).encode())
        proc.close_stdin()
        status, out, err = proc.communicate(180)
        line = out.decode(errors="replace").strip().splitlines()[:1]
        if status != 0 or not line:
            raise SystemFailure(f"the shim did not start in utility VM {self.vm_id}: "
                                f"{err.decode(errors='replace')[-1500:]}", operation="start",
                                object_id=self.id)
        report = json.loads(line[0])
        if report.get("t") == "ready":
            self.vm.forward_unix(os.path.join(self.state_dir, "shim.sock"),
                                 f"{guest['state_dir']}/shim.sock")
            # What a restarted silod finds the container by (the shim's own shim.json is in
            # the guest): its VM and the shim's guest pid.
            atomic_write_json(os.path.join(self.state_dir, "shim.json"),
                              {"ShimPid": report.get("shim_pid", 0), "HostingSystemId": self.vm_id,
                               "GuestStateDir": guest["state_dir"]})
        return report

    async def run_helper(self, argv: list[str]) -> "GuestHelper":
        """silobox's Python with ``argv`` in the guest, outside the container (the engine's
        file helper, on the container's ``/proc/<Pid>/root`` there), as an asyncio process."""
        vm = self.vm
        if vm is None:
            raise NotRunning(f"container {self.id[:12]} is not running", object_id=self.id)
        loop = asyncio.get_running_loop()
        proc = await loop.run_in_executor(
            None, vm.spawn, ["/opt/silobox/bin/python", *argv], None, "/src")
        return GuestHelper(proc, loop)

    # -- recovery after a silod restart -----------------------------------------------------------

    async def reattach(self) -> None:
        """Adopt the container's VM, which kept running (its control socket is dialled again
        and the shim's socket forwarded anew), then reattach to the shim as for any container.
        A VM that is gone leaves the exit the shim recorded on the shared state directory."""
        try:
            with open(os.path.join(self.state_dir, "shim.json")) as f:
                info = json.load(f)
        except (OSError, ValueError):
            info = {}
        if info.get("HostingSystemId"):
            self.vm_id = info["HostingSystemId"]
            loop = asyncio.get_running_loop()
            try:
                self.vm = await loop.run_in_executor(None, UtilityVM.adopt, self.vm_id)
                if self.vm.config.dns:
                    await loop.run_in_executor(None, self.vm.relay_dns)
                guest_sock = f"{info['GuestStateDir']}/shim.sock"
                if await loop.run_in_executor(None, self.vm.guest_socket_listens, guest_sock):
                    self.vm.forward_unix(os.path.join(self.state_dir, "shim.sock"), guest_sock)
                else:   # the container ended while no silod ran: its exit is on record
                    _unlink(os.path.join(self.state_dir, "shim.sock"))
            except Exception as e:   # one container's VM must not keep silod from starting
                log.warning("container %s: its utility VM cannot be adopted: %s", self.id[:12], e)
                if self.vm is not None:
                    await loop.run_in_executor(None, self._stop_vm)
                else:
                    await loop.run_in_executor(None, _remove_vm, self.vm_id)
                _unlink(os.path.join(self.state_dir, "shim.sock"))
        await super().reattach()

    def network_adapters(self) -> list[NetworkAdapter]:
        """The VM's network cards: the endpoints the engine attached as taps on the switch
        (``Container.Networking.NetworkAdapters``)."""
        net = (self.doc.raw.get("Container") or {}).get("Networking") or {}
        return [NetworkAdapter(tap=a["Tap"], switch_netns=a["SwitchNamespace"],
                               mac=a["MacAddress"], ifname=a.get("IfName") or f"eth{i}",
                               address=a["IPAddress"], gateway=a.get("Gateway") or "",
                               mtu=int(a.get("Mtu") or 0), address6=a.get("IPv6Address") or "",
                               gateway6=a.get("IPv6Gateway") or "")
                for i, a in enumerate(net.get("NetworkAdapters") or [])]

    # -- exit and teardown ------------------------------------------------------------------------

    def _stop_vm(self) -> None:
        self._finish_stop(*self._begin_stop())

    def _begin_stop(self) -> tuple[UtilityVM | None, threading.Event]:
        """Take the VM and mark it as stopping (at once, on the caller's thread: a start that
        comes before the stop itself runs must wait for it)."""
        vm, self.vm = self.vm, None
        done = threading.Event()
        if vm is None:
            done.set()
        else:
            with _STOPPING_LOCK:
                _STOPPING.setdefault(self.id, []).append(done)
        return vm, done

    def _finish_stop(self, vm: UtilityVM | None, done: threading.Event) -> None:
        if vm is None:
            return
        try:   # the guest syncs the container's disk and makes it read-only first
            vm.stop(timeout=10.0)
        finally:
            done.set()
            with _STOPPING_LOCK:
                left = [e for e in _STOPPING.get(self.id, []) if not e.is_set()]
                if left:
                    _STOPPING[self.id] = left
                else:
                    _STOPPING.pop(self.id, None)

    def _record_exit(self, record: dict | None) -> None:
        super()._record_exit(record)
        if self.vm is not None:
            asyncio.get_running_loop().run_in_executor(None, self._finish_stop,
                                                       *self._begin_stop())

    async def terminate(self) -> None:
        """SIGKILL to the container's init (its PID namespace goes with it); if the guest does
        not answer, the VM itself is stopped, which ends everything in it."""
        self._check("terminate")
        if self.pending is None:
            self.pending = "terminate"
        try:
            await self.shim.request({"op": "signal", "signal": 9}, timeout=10)
        except (NotRunning, SystemFailure, OSError):
            pass
        try:
            async with asyncio.timeout(10):
                await self._exited.wait()
                return
        except TimeoutError:
            pass
        await asyncio.get_running_loop().run_in_executor(None, self._stop_vm)
        async with asyncio.timeout(10):
            await self._exited.wait()

    async def pause(self) -> None:
        raise InvalidArgument(f"cannot pause container {self.id[:12]}: pausing a hyperv "
                              "container (freezing its utility VM) is not supported",
                              operation="pause", object_id=self.id)

    def modify(self, request: dict) -> None:
        raise InvalidArgument(f"cannot update container {self.id[:12]}: the limits of a hyperv "
                              "container are its utility VM's size, fixed at start",
                              operation="modify", object_id=self.id)

    def close(self) -> None:
        """silod stops (or the container is removed): a running container's VM keeps
        running for the next silod to adopt; a stopped one's goes."""
        super().close()
        if self.state in (State.RUNNING, State.PAUSED) and self.vm is not None:
            vm, self.vm = self.vm, None
            vm.detach()
        else:
            self._stop_vm()

    # -- inspection -------------------------------------------------------------------------------

    def vm_summary(self) -> dict[str, Any] | None:
        vm = self.vm
        if vm is None:
            return None
        return {"Id": vm.id, "SystemType": "VirtualMachine", "Name": vm.id,
                "Owner": self.doc.owner, "State": "Running" if vm.running else "Stopped",
                "RuntimeOsType": "Linux", "HostedContainer": self.id,
                "Kernel": vm.kernel_release, "Accelerator": vm.accel.name if vm.accel else "",
                "MemoryMiB": vm.config.memory_mib, "ProcessorCount": vm.config.cpus,
                "BootSeconds": round(vm.boot_seconds, 2), "QemuPid": vm.qemu_pid,
                "Disk": vm.config.disk,
                "NetworkAdapters": [{"Tap": n.tap, "MacAddress": n.mac, "IfName": n.ifname,
                                     "IPAddress": n.address.split("/")[0]}
                                    for n in vm.config.nics]}

    def vm_view(self) -> "UtilityVMView":
        return UtilityVMView(self)

    def properties(self, types: list[str] | None = None) -> dict[str, Any]:
        props = super().properties([t for t in (types or ["Memory"])
                                    if t not in ("Statistics", "ProcessList")])
        props["HostingSystemId"] = self.vm.id if self.vm else ""
        disk = container_disk(self.id)
        props["HostingSystem"] = self.vm_summary() or {
            "SystemType": "VirtualMachine", "State": "Stopped",
            "Disk": disk if os.path.exists(disk) else ""}
        props["JobObject"]["Host"] = "utility VM (guest cgroup v2)"
        return props


class GuestHelper:
    """A process in the guest as ``asyncio.subprocess.Process`` offers it: stdout and stderr
    readers fed by a thread that drains the agent's events, stdin written over the channel."""

    def __init__(self, proc: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.proc = proc
        self.stdout = asyncio.StreamReader(limit=1 << 20)
        self.stderr = asyncio.StreamReader(limit=1 << 20)
        self.stdin = _GuestStdin(proc, loop)
        self.returncode: int | None = None
        self._done = asyncio.Event()
        self._loop = loop
        import threading
        threading.Thread(target=self._drain, daemon=True, name="uvm-helper").start()

    def _drain(self) -> None:
        call = self._loop.call_soon_threadsafe
        try:
            for fd, data in self.proc.output():
                call((self.stdout if fd == 1 else self.stderr).feed_data, data)
            status = self.proc.status
        except Exception:
            status = 255
        call(self._finish, status)

    def _finish(self, status: int) -> None:
        self.stdout.feed_eof()
        self.stderr.feed_eof()
        self.returncode = status
        self._done.set()

    async def wait(self) -> int:
        await self._done.wait()
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        try:
            self.proc.signal(signal.SIGKILL)
        except Exception:
            pass


class _GuestStdin:
    """Writes are buffered and sent over the control channel by ``drain``, off the loop."""

    def __init__(self, proc: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.proc = proc
        self.loop = loop
        self.pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.pending.append(bytes(data))

    async def drain(self) -> None:
        data, self.pending = b"".join(self.pending), []
        if data:
            try:
                await self.loop.run_in_executor(None, self.proc.write, data)
            except SystemFailure as e:
                raise BrokenPipeError(str(e)) from None

    def close(self) -> None:
        try:
            if self.pending:
                self.proc.write(b"".join(self.pending))
            self.proc.close_stdin()
        except Exception:
            pass


class UtilityVMView:
    """The utility VM of a hyperv container as a compute system of its own (HcsOpenComputeSystem
    on the VM's id): it is inspected, not driven; the container's verbs drive it."""

    def __init__(self, container: HypervComputeSystem) -> None:
        self.container = container
        self.id = container.vm_id

    def properties(self, types: list[str] | None = None) -> dict[str, Any]:
        return self.container.vm_summary() or {"Id": self.id, "SystemType": "VirtualMachine",
                                               "State": "Stopped"}
