"""One utility VM: QEMU on a ``microvm`` machine, its virtiofsd, its disk, its control channel.

Resources of a VM live in one directory (``<state>/<id>/``): the virtiofsd and control sockets,
the sparse ext4 disk image (unless the VM is given one that outlives it, ``VMConfig.disk``),
the logs and ``owner.json``. :meth:`UtilityVM.stop` removes all of it. :mod:`.launch` starts
virtiofsd and becomes QEMU; virtiofsd die with QEMU, and QEMU with the process that started it
(``PR_SET_PDEATHSIG``) unless the VM outlives its owner (a hyperv container's, adopted by the
next silod through its control socket, :meth:`UtilityVM.adopt`).
:func:`cleanup_stale` removes directories whose owner died without stopping its VMs.

The share is read-only on the host side, not only in the guest: virtiofsd runs in a mount
namespace of its own where a tmpfs holds read-only bind mounts of the shared host trees (the
guest's kernel could remount a virtiofs mount read-write, but not the host's bind mounts).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from silobox.atomic import atomic_write_json
from silobox.compute.uvm.accel import Accelerator, detect_accelerator, kernel_args
from silobox.compute.uvm.assets import BootAssets, boot_assets
from silobox.errors import InvalidArgument, NotFound, SystemFailure, Unavailable
from silobox.kernel import libc, mountns

QEMU = "qemu-system-x86_64"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
STATE_DIR = os.environ.get("SILOBOX_UVM_STATE") or "/var/lib/silobox/uvm"


@dataclass
class NetworkAdapter:
    """A network card of the VM: a tap on the HNS switch (an endpoint's port, made by the
    networking service in its vSwitch namespace ``switch_netns``), addressed in the guest as the
    endpoint says (HCS: a VM's NetworkAdapter with its EndpointId)."""

    tap: str
    switch_netns: str
    mac: str
    ifname: str = "eth0"
    address: str = ""          # "10.0.0.2/24"
    gateway: str = ""
    mtu: int = 0
    address6: str = ""
    gateway6: str = ""

    def kernel_arg(self) -> str:
        """How the guest's init learns it (init.sh: ``sbx.nic=``)."""
        fields = [self.mac, self.ifname, self.address, self.gateway or "-", str(self.mtu or 0)]
        if self.address6:
            fields += [self.address6, self.gateway6 or "-"]
        return "sbx.nic=" + ",".join(fields)


def in_netns(netns: str, fn, *args):
    """``fn(*args)`` in the network namespace bound at ``netns``: a short-lived thread enters it
    (namespaces are per thread) and ends; what it opened stays in that namespace."""
    result: list = []

    def run() -> None:
        try:
            ns = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc.setns(ns, libc.CLONE_NEWNET)
            finally:
                os.close(ns)
            result.append(fn(*args))
        except BaseException as e:
            result.append(e)

    thread = threading.Thread(target=run, name="uvm-netns")
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(),
                                               IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_tap(switch_netns: str, name: str) -> int:
    """An fd of the existing tap ``name`` in the network namespace bound at ``switch_netns``,
    for QEMU (``-netdev tap,fd=``): a tap is found by name in the namespace that opens
    /dev/net/tun; the fd works from anywhere."""
    try:
        return in_netns(switch_netns, _open_tun, name)
    except OSError as e:
        raise SystemFailure(f"cannot open the tap {name} of the HNS switch: {e}",
                            operation="start", cause=e) from None


def _udp_to(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.connect((address, port))
    return sock


TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


@dataclass
class VMConfig:
    """Size and shares of a VM. ``shares`` maps a name under the guest's ``/host`` to a host
    directory; the guest's init bind-mounts ``usr``, ``opt/silobox`` and ``src`` from there."""

    memory_mib: int = 512
    cpus: int = 1
    disk_mib: int = 4096
    shares: dict[str, str] = field(default_factory=dict)
    writable: dict[str, str] = field(default_factory=dict)
    """Guest path → host directory shared read-write, at that path in the guest (a container's
    sandbox, state and log directories)."""
    read_only: dict[str, str] = field(default_factory=dict)
    """Guest path → host directory shared read-only at that path (a container's image layers)."""
    disk: str = ""
    """A disk image that outlives the VM (a hyperv container's writable disk): made and
    formatted on the host when missing, used as it is when present. "" gives the VM a scratch
    disk in its own directory, gone with it."""
    nics: list[NetworkAdapter] = field(default_factory=list)
    dns: dict = field(default_factory=dict)
    """The container's embedded DNS: ``Namespace`` (the vSwitch's), ``Address``, ``Port`` of
    the host's server socket, which the guest's 127.0.0.11:53 is relayed to."""
    outlives_owner: bool = False
    """The VM keeps running when the process that started it dies (a hyperv container's, as
    process containers outlive silod); the next owner adopts it (:meth:`UtilityVM.adopt`)."""
    owner_ref: str = ""
    """A directory whose existence keeps an ownerless VM worth adopting (the container's
    state directory); once it is gone, :func:`cleanup_stale` removes the VM."""
    accel: str | None = None  # "kvm" or "tcg"; None detects
    boot_timeout: float = 60.0


def default_shares(source: str | None = None) -> dict[str, str]:
    """The host's /usr, silobox's venv, a silobox source tree (this one by default) and the
    host's package database."""
    import sys
    here = source or os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    shares = {"usr": "/usr", "src": here}
    if os.path.isdir("/var/lib/dpkg"):   # what is installed: the built-in busybox image asks dpkg
        shares["var/lib/dpkg"] = "/var/lib/dpkg"
    if sys.prefix != sys.base_prefix:
        shares["opt/silobox"] = sys.prefix
    return shares


_SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def _config_json(config: VMConfig) -> dict:
    from dataclasses import asdict
    return asdict(config)


def _config_from(data: dict) -> VMConfig:
    data = dict(data)
    nics = [NetworkAdapter(**n) for n in data.pop("nics", None) or []]
    known = {f for f in VMConfig.__dataclass_fields__}
    return VMConfig(nics=nics, **{k: v for k, v in data.items() if k in known})


def new_disk(path: str, mib: int) -> None:
    """A sparse ext4 image of ``mib`` MiB at ``path``, formatted on the host (nothing of the
    guest's is read here) and put in place whole: a half-made image is never used."""
    tmp = f"{path}.new"
    with open(tmp, "wb") as f:
        f.truncate(mib << 20)
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1",
                        "-L", "silobox-uvm", tmp], check=True, capture_output=True)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _share_tree(root: str, shares: dict[str, str], readonly: bool = True) -> None:
    """In the calling process's new mount namespace: a tmpfs at ``root`` with (read-only) bind
    mounts of ``shares``, and of the host's mounts only what virtiofsd uses until it pivots
    into ``root``. Runs between fork and exec of virtiofsd.

    The namespace's copy of the host's mount table would otherwise keep every container
    sandbox disk mounted at this moment (anyone's, on this host) attached until virtiofsd has
    set up its own sandbox: a container stopping meanwhile could not start again."""
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    mountns.unshare_private()
    libc.mount("silobox-uvm", root, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=755")
    for name, source in shares.items():
        target = os.path.join(root, name)
        os.makedirs(target, exist_ok=True)
        if not readonly:   # a sandbox's rootfs is a mount below its directory
            libc.mount(source, target, None, libc.MS_BIND | libc.MS_REC)
            continue
        libc.mount(source, target, None, libc.MS_BIND)
        libc.mount(None, target, None,
                   libc.MS_REMOUNT | libc.MS_BIND | libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV)
    libc.mount(None, root, None, libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV)
    # virtiofsd: its binary and libraries, /proc and /dev, its pid-file directory, and the
    # VM's directory (its socket), which holds ``root``
    mountns.detach_unneeded([root, "/proc", "/dev"],
                            [VIRTIOFSD, "/usr/lib", "/lib", "/lib64", "/etc", "/sys",
                             "/run/virtiofsd", "/var/run/virtiofsd"])


class GuestProcess:
    """A process inside the VM; output arrives as ``(fd, bytes)`` items, then ``(None, status)``."""

    def __init__(self, vm: "UtilityVM", ident: int) -> None:
        self.vm = vm
        self.ident = ident
        self.events: queue.Queue = queue.Queue()
        self.pid = 0
        self.status: int | None = None

    def write(self, data: bytes) -> None:
        self.vm._send({"op": "stdin", "id": self.ident, "data": base64.b64encode(data).decode()})

    def close_stdin(self) -> None:
        self.vm._send({"op": "stdin", "id": self.ident, "eof": True})

    def signal(self, sig: int) -> None:
        self.vm._send({"op": "signal", "id": self.ident, "sig": int(sig)})

    def output(self, timeout: float | None = None):
        """Yield ``(fd, data)`` until the process exits; sets :attr:`status`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.status is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                fd, data = self.events.get(timeout=left)
            except queue.Empty:
                raise TimeoutError(f"guest process {self.ident} still running after {timeout}s")
            if fd is None:
                self.status = data
            else:
                yield fd, data

    def communicate(self, timeout: float | None = None) -> tuple[int, bytes, bytes]:
        out, err = bytearray(), bytearray()
        for fd, data in self.output(timeout):
            (out if fd == 1 else err).extend(data)
        assert self.status is not None
        return self.status, bytes(out), bytes(err)


class UtilityVM:
    """Boot, use and tear down one utility VM. Use as a context manager, or start()/stop()."""

    def __init__(self, vm_id: str, config: VMConfig | None = None, *, state_dir: str = STATE_DIR,
                 assets: BootAssets | None = None) -> None:
        if not vm_id or "/" in vm_id or vm_id.startswith("."):
            raise InvalidArgument(f"invalid utility VM id {vm_id!r}")
        self.id = vm_id
        self.config = config or VMConfig(shares=default_shares())
        if "usr" not in self.config.shares:
            raise InvalidArgument("a utility VM needs the host's /usr shared as 'usr'")
        self.assets = assets
        self.dir = os.path.join(state_dir, vm_id)
        self.accel: Accelerator | None = None
        self.kernel_release = ""
        self.boot_seconds = 0.0
        self._qemu: subprocess.Popen | None = None
        self._qemu_pid = 0
        self._qemu_start = -1       # QEMU of an adopted VM (not our child) is known by these
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._procs: dict[int, GuestProcess] = {}
        self._streams: dict[int, socket.socket] = {}     # host ends of forwarded connections
        self._listeners: list[socket.socket] = []
        self._relays: dict[int, tuple[socket.socket, dict]] = {}
        self._pending: dict[int, queue.Queue] = {}
        self._next_id = 1 + secrets.randbelow(1 << 30)   # an adopted agent may know old ids
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._made_dir = False

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> "UtilityVM":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        t0 = time.monotonic()
        assets = self.assets or boot_assets()
        # QEMU gets the initramfs as an open file: the cache may replace it meanwhile (another
        # silobox of a different version builds its own image and removes older ones).
        for _ in range(3):
            try:
                initrd = os.open(assets.initramfs, os.O_RDONLY | os.O_CLOEXEC)
                break
            except FileNotFoundError:
                assets = self.assets or boot_assets()
        else:
            raise SystemFailure(f"the utility VM's initramfs {assets.initramfs} keeps vanishing",
                                object_id=self.id)
        try:
            self._boot(assets, initrd, t0)
        finally:
            os.close(initrd)

    def _boot(self, assets: BootAssets, initrd: int, t0: float) -> None:
        self.accel = (Accelerator(self.config.accel, "requested") if self.config.accel
                      else detect_accelerator(assets))
        os.makedirs(self.dir)   # fails for an id in use: that VM's files are not ours
        self._made_dir = True
        self._write_owner()
        shares = dict(self.config.shares)
        for i, host in enumerate(self.config.read_only.values()):
            shares[f"ro/{i}"] = host
        virtiofsd = [self._virtiofsd("host", shares, readonly=True)]
        if self.config.writable:
            virtiofsd.append(self._virtiofsd(
                "rw", {str(i): host for i, host in enumerate(self.config.writable.values())},
                readonly=False))
        disk = self.config.disk or os.path.join(self.dir, "disk.img")
        if not os.path.exists(disk):
            new_disk(disk, self.config.disk_mib)
        mem = self.config.memory_mib
        cmdline = (f"{os.environ.get('SILOBOX_UVM_KERNEL_ARGS', 'quiet')} console=ttyS0 reboot=t "
                   f"panic=-1 {kernel_args(self.accel.name)} sbx.mode=agent")
        net_args: list[str] = []
        tap_fds: list[int] = []
        try:
            for i, nic in enumerate(self.config.nics):
                tap_fds.append(open_tap(nic.switch_netns, nic.tap))
                net_args += ["-netdev", f"tap,id=net{i},fd={tap_fds[-1]},vhost=off",
                             "-device", f"virtio-net-device,netdev=net{i},mac={nic.mac}"]
                cmdline += " " + nic.kernel_arg()
            # The control channel is a socket QEMU listens on: a restarted owner dials it again.
            ctl = os.path.join(self.dir, "ctl.sock")
            argv = [QEMU, "-M", "microvm,memory-backend=mem,rtc=on", "-accel", self.accel.name,
                    "-cpu", "host" if self.accel.name == "kvm" else "max",
                    "-m", f"{mem}M", "-smp", str(self.config.cpus),
                    "-object", f"memory-backend-memfd,id=mem,size={mem}M,share=on",
                    "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                    "-global", "virtio-mmio.force-legacy=false",  # vhost-user needs virtio 1.0
                    "-kernel", assets.kernel, "-initrd", f"/proc/self/fd/{initrd}",
                    "-append", cmdline]
            for d in virtiofsd:
                argv += ["-chardev", f"socket,id={d['tag']},path={d['socket']}",
                         "-device", f"vhost-user-fs-device,chardev={d['tag']},tag={d['tag']},"
                         "queue-size=1024"]
            # A disk that outlives the VM honours the guest's flushes (a host crash then
            # loses no more than the guest's unsynced writes); a scratch disk need not.
            cache = "writeback" if self.config.disk else "unsafe"
            argv += ["-drive", f"file={disk},if=none,id=disk,format=raw,cache={cache},"
                     "discard=unmap",
                     "-device", "virtio-blk-device,drive=disk", *net_args,
                     "-device", "virtio-serial-device,max_ports=2",
                     "-chardev", f"socket,id=ctl,path={ctl},server=on,wait=off",
                     "-device", "virtserialport,chardev=ctl,name=silobox.ctl",
                     "-serial", f"file:{os.path.join(self.dir, 'console.log')}"]
            atomic_write_json(os.path.join(self.dir, "launch.json"), {
                "qemu": argv, "virtiofsd": virtiofsd, "parent": os.getpid(),
                "die_with_parent": not self.config.outlives_owner})
            path = os.pathsep.join(filter(None, [_SOURCE, os.environ.get("PYTHONPATH")]))
            with open(os.path.join(self.dir, "qemu.log"), "wb") as log:
                # No preexec_fn: the launcher does its own set-up (see launch.py).
                self._qemu = subprocess.Popen(
                    [sys.executable, "-m", "silobox.compute.uvm.launch", self.dir],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(initrd, *tap_fds),
                    env={**os.environ, "PYTHONPATH": path})
        finally:
            for fd in tap_fds:
                os.close(fd)
        self._qemu_pid = self._qemu.pid
        self._qemu_start = _start_time(self._qemu_pid)
        self._write_owner()
        self._sock = self._dial(ctl)
        self._reader = threading.Thread(target=self._read_events, name=f"uvm-{self.id}",
                                        daemon=True)
        self._reader.start()
        if not self._ready.wait(self.config.boot_timeout) or self._closed.is_set():
            raise SystemFailure(f"utility VM {self.id} did not boot within "
                                f"{self.config.boot_timeout:.0f}s ({self.accel.name}): "
                                f"{self._log('console.log')} {self._log('qemu.log')}",
                                object_id=self.id)
        binds = [(f"/host/ro/{i}", path) for i, path in enumerate(self.config.read_only)]
        binds += [(f"/rw/{i}", path) for i, path in enumerate(self.config.writable)]
        if binds:   # one shell for all: each process start costs under emulation
            script = "; ".join(f"mkdir -p {shlex.quote(dst)} && mount --rbind {src} "
                               f"{shlex.quote(dst)} || exit 1" for src, dst in binds)
            status, _, err = self.run(["/.sbx/busybox", "sh", "-c", script], timeout=60)
            if status != 0:
                raise SystemFailure(f"utility VM {self.id}: cannot mount its shares: "
                                    f"{err.decode(errors='replace').strip()}", object_id=self.id)
        self.boot_seconds = time.monotonic() - t0
        self._write_owner()

    def _virtiofsd(self, tag: str, shares: dict[str, str], readonly: bool) -> dict:
        """How the launcher starts the virtiofsd serving ``shares`` as tag ``tag``."""
        root = os.path.join(self.dir, f"share-{tag}")
        os.mkdir(root)
        sock = os.path.join(self.dir, f"{tag}.sock")
        argv = [VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={root}",
                "-o", "cache=always" if readonly else "cache=auto", "-o", "sandbox=namespace",
                "-o", "log_level=err", *([] if readonly else ["-o", "announce_submounts",
                                                               "-o", "xattr"])]
        return {"tag": tag, "socket": sock, "root": root, "shares": shares, "readonly": readonly,
                "argv": argv, "log": os.path.join(self.dir, f"virtiofsd-{tag}.log")}

    def _write_owner(self) -> None:
        """``owner.json``: who owns the VM, its QEMU, and what keeps it adoptable."""
        atomic_write_json(os.path.join(self.dir, "owner.json"), {
            "pid": os.getpid(), "start": _start_time(os.getpid()),
            "qemu": self._qemu_pid, "qemu_start": _start_time(self._qemu_pid)
            if self._qemu_pid else -1,
            "outlives_owner": self.config.outlives_owner, "ref": self.config.owner_ref,
            "kernel": self.kernel_release, "accel": self.accel.name if self.accel else "",
            "boot_seconds": self.boot_seconds, "config": _config_json(self.config)})

    def _dial(self, path: str) -> socket.socket:
        """Connect to QEMU's control socket once it listens (or fail if QEMU is gone)."""
        deadline = time.monotonic() + 30.0
        while True:
            if self._qemu is not None and self._qemu.poll() is not None:
                raise SystemFailure(f"utility VM {self.id}: QEMU exited: {self._log('qemu.log')}"
                                    f" {self._log('virtiofsd-host.log')}", object_id=self.id)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(path)
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise SystemFailure(f"utility VM {self.id}: no control socket after 30s: "
                                        f"{self._log('qemu.log')}", object_id=self.id) from None
                time.sleep(0.01)

    def _log(self, name: str) -> str:
        try:
            with open(os.path.join(self.dir, name), "rb") as f:
                return f.read()[-2000:].decode(errors="replace").strip()
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the guest down, end QEMU (its virtiofsd die with it), remove every file of
        the VM."""
        if self._qemu_alive() and self._ready.is_set() and not self._closed.is_set():
            try:
                self._send({"op": "shutdown"})
                self._qemu_wait(timeout)
            except (OSError, SystemFailure):
                pass
        if self._qemu_alive():
            self._qemu_kill()
            self._qemu_wait(10.0)
        self.detach(timeout)
        if self._made_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def detach(self, timeout: float = 5.0) -> None:
        """Let go of a VM that keeps running (its owner stops): the control channel and the
        forwarded sockets close; the next owner adopts the VM."""
        for listener in self._listeners:
            try:
                os.unlink(listener.getsockname())
            except (OSError, TypeError):   # (a relay's UDP socket has no path)
                pass
            try:
                listener.shutdown(socket.SHUT_RDWR)   # wakes the accept loop
            except OSError:
                pass
            listener.close()
        for conn in list(self._streams.values()):
            conn.close()
        self._streams.clear()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout)
        self._listeners.clear()

    def _qemu_alive(self) -> bool:
        if self._qemu is not None:
            return self._qemu.poll() is None
        return bool(self._qemu_pid) and _start_time(self._qemu_pid) == self._qemu_start

    def _qemu_wait(self, timeout: float) -> None:
        if self._qemu is not None:
            try:
                self._qemu.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            return
        deadline = time.monotonic() + timeout
        while self._qemu_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _qemu_kill(self) -> None:
        if self._qemu is not None:
            self._qemu.kill()
        elif self._qemu_alive():
            try:
                os.kill(self._qemu_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @classmethod
    def adopt(cls, vm_id: str, *, state_dir: str = STATE_DIR,
              timeout: float = 30.0) -> "UtilityVM":
        """Take over a running VM that outlived its owner: dial its control channel again
        and make this process its owner. Raises NotFound if the VM is gone."""
        path = os.path.join(state_dir, vm_id)
        try:
            with open(os.path.join(path, "owner.json")) as f:
                owner = json.load(f)
        except (OSError, ValueError):
            raise NotFound(f"utility VM {vm_id} does not exist", object_id=vm_id) from None
        vm = cls(vm_id, _config_from(owner.get("config") or {}), state_dir=state_dir)
        vm._qemu_pid = int(owner.get("qemu") or 0)
        vm._qemu_start = owner.get("qemu_start", -1)
        vm.kernel_release = owner.get("kernel", "")
        vm.accel = Accelerator(owner.get("accel") or "tcg", "adopted")
        vm.boot_seconds = float(owner.get("boot_seconds") or 0.0)
        vm._made_dir = True
        if not vm._qemu_alive():
            raise NotFound(f"utility VM {vm_id} is not running", object_id=vm_id)
        vm._sock = vm._dial(os.path.join(path, "ctl.sock"))
        vm._reader = threading.Thread(target=vm._read_events, name=f"uvm-{vm_id}", daemon=True)
        vm._reader.start()
        if not vm._ready.wait(timeout) or vm._closed.is_set():
            vm.detach()
            raise SystemFailure(f"utility VM {vm_id}: its agent did not answer again within "
                                f"{timeout:.0f}s", object_id=vm_id)
        vm._write_owner()
        return vm

    @property
    def qemu_pid(self) -> int:
        return self._qemu_pid

    @property
    def running(self) -> bool:
        return self._qemu_alive() and not self._closed.is_set()

    # -- channel ----------------------------------------------------------------------------------

    def _send(self, message: dict) -> None:
        if self._sock is None or self._closed.is_set():
            raise SystemFailure(f"utility VM {self.id} is not running", object_id=self.id)
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        with self._send_lock:
            self._sock.sendall(data)

    def _read_events(self) -> None:
        assert self._sock is not None
        buf = b""
        try:
            while True:
                chunk = self._sock.recv(262144)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    self._dispatch(json.loads(line))
        except OSError:
            pass
        finally:
            self._closed.set()
            self._ready.set()
            # QEMU is gone (or the owner let go): the host ends of forwarded connections see
            # the end, so a shim client learns that its shim went with the VM.
            for ident in list(self._streams):
                self._close_stream(ident)
            for proc in list(self._procs.values()):
                proc.events.put((None, 255))
            for waiter in list(self._pending.values()):
                waiter.put({"ev": "error", "message": "the utility VM stopped"})

    def _dispatch(self, event: dict) -> None:
        kind = event.get("ev")
        if kind == "ready":
            self.kernel_release = event.get("kernel", "")
            self._ready.set()
            return
        ident = event.get("id")
        if kind == "data" and ident in self._streams:
            try:
                self._streams[ident].sendall(base64.b64decode(event["data"]))
            except OSError:
                self._send_quiet({"op": "close", "id": ident})
            return
        if kind == "dgram" and ident in self._relays:
            sock, peers = self._relays[ident]
            data = base64.b64decode(event["data"])
            if len(peers) > 256:   # queries nobody answered
                peers.clear()
            peers[data[:2]] = event["peer"]
            try:
                sock.send(data)
            except OSError:
                pass
            return
        if kind == "closed":
            self._close_stream(ident)
            return
        if kind in ("spawned", "connected", "error", "pong"):
            waiter = self._pending.pop(ident, None)
            if waiter is not None:
                waiter.put(event)
            return
        proc = self._procs.get(ident)
        if proc is None:
            return
        if kind == "out":
            proc.events.put((event["fd"], base64.b64decode(event["data"])))
        elif kind == "exit":
            self._procs.pop(ident, None)
            proc.events.put((None, event["status"]))

    def _close_stream(self, ident: int) -> None:
        """The host end of a forwarded connection sees the end (its guest end is gone)."""
        conn = self._streams.pop(ident, None)
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _send_quiet(self, message: dict) -> None:
        try:
            self._send(message)
        except (OSError, SystemFailure):
            pass

    def _new_id(self) -> int:
        with self._send_lock:
            ident = self._next_id
            self._next_id += 1
        return ident

    def guest_socket_listens(self, guest_path: str, timeout: float = 30.0) -> bool:
        """Whether a unix socket in the guest takes connections (a shim still serving)."""
        ident = self._new_id()
        waiter: queue.Queue = queue.Queue()
        self._pending[ident] = waiter
        try:
            self._send({"op": "connect", "id": ident, "path": guest_path})
            reply = waiter.get(timeout=timeout)
        except (OSError, SystemFailure, queue.Empty):
            return False
        finally:
            self._pending.pop(ident, None)
        if reply.get("ev") == "connected":
            self._send_quiet({"op": "close", "id": ident})
            return True
        return False

    def relay_dns(self, guest: tuple[str, int] = ("127.0.0.11", 53)) -> None:
        """Relay the guest's UDP ``guest`` address to the host's DNS server of ``config.dns``
        (queries are told apart by their ids, as a resolver's are)."""
        dns = self.config.dns
        sock = in_netns(dns["Namespace"], _udp_to, dns["Address"], int(dns["Port"]))
        ident = self._new_id()
        waiter: queue.Queue = queue.Queue()
        self._pending[ident] = waiter
        self._send({"op": "udp_listen", "id": ident, "address": guest[0], "port": guest[1]})
        try:
            reply = waiter.get(timeout=30)
        except queue.Empty:
            reply = {"message": "no answer"}
        if reply.get("ev") != "connected":
            sock.close()
            raise SystemFailure(f"utility VM {self.id}: no DNS relay: {reply.get('message')}",
                                object_id=self.id)
        self._relays[ident] = (sock, {})
        self._listeners.append(sock)   # closed by detach()
        threading.Thread(target=self._relay_replies, args=(ident,), daemon=True,
                         name=f"uvm-{self.id}-dns").start()

    def _relay_replies(self, ident: int) -> None:
        sock, peers = self._relays[ident]
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:   # shut down by detach()
                return
            peer = peers.pop(data[:2], None)
            if peer is not None:
                self._send_quiet({"op": "dgram", "id": ident, "peer": peer,
                                  "data": base64.b64encode(data).decode()})

    def forward_unix(self, host_path: str, guest_path: str) -> None:
        """Listen at ``host_path``; each connection becomes a byte stream to the unix socket
        ``guest_path`` in the guest (how the host's shim client reaches a shim in the VM)."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            os.unlink(host_path)
        except FileNotFoundError:
            pass
        listener.bind(host_path)
        os.chmod(host_path, 0o600)
        listener.listen(16)
        self._listeners.append(listener)
        threading.Thread(target=self._accept_loop, args=(listener, guest_path),
                         name=f"uvm-{self.id}-fwd", daemon=True).start()

    def _accept_loop(self, listener: socket.socket, guest_path: str) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return   # closed by stop()
            ident = self._new_id()
            waiter: queue.Queue = queue.Queue()
            self._pending[ident] = waiter
            try:
                self._send({"op": "connect", "id": ident, "path": guest_path})
                reply = waiter.get(timeout=30)
            except (OSError, SystemFailure, queue.Empty):
                reply = {"ev": "error"}
            if reply.get("ev") != "connected":
                _close_read(conn)
                continue
            self._streams[ident] = conn
            threading.Thread(target=self._pump, args=(ident, conn), daemon=True).start()

    def _pump(self, ident: int, conn: socket.socket) -> None:
        """Host connection → guest, until the host side closes."""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._send_quiet({"op": "data", "id": ident, "eof": True})
                return
            self._send_quiet({"op": "data", "id": ident,
                              "data": base64.b64encode(data).decode()})

    def spawn(self, argv: list[str], env: dict[str, str] | None = None, cwd: str = "/",
              timeout: float = 30.0) -> GuestProcess:
        """Start ``argv`` in the guest (outside any container): stdin, stdout, stderr are pipes."""
        ident = self._new_id()
        proc = GuestProcess(self, ident)
        waiter: queue.Queue = queue.Queue()
        self._procs[ident] = proc
        self._pending[ident] = waiter
        self._send({"op": "spawn", "id": ident, "argv": list(argv), "env": env, "cwd": cwd})
        try:
            reply = waiter.get(timeout=timeout)
        except queue.Empty:
            raise SystemFailure(f"utility VM {self.id} did not answer a spawn in {timeout}s",
                                object_id=self.id)
        if reply.get("ev") != "spawned":
            self._procs.pop(ident, None)
            raise Unavailable(f"cannot start {argv[0]} in utility VM {self.id}: "
                              f"{reply.get('message')}", object_id=self.id)
        proc.pid = reply["pid"]
        return proc

    def run(self, argv: list[str], env: dict[str, str] | None = None, cwd: str = "/",
            stdin: bytes = b"", timeout: float | None = None) -> tuple[int, bytes, bytes]:
        proc = self.spawn(argv, env, cwd)
        if stdin:
            proc.write(stdin)
        proc.close_stdin()
        return proc.communicate(timeout)


def _close_read(conn: socket.socket) -> None:
    """Close after reading what the peer sent: a unix socket closed with unread data makes
    the peer's read fail with ECONNRESET instead of seeing the end (a shim that is gone)."""
    conn.setblocking(False)
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass
    conn.close()


def _start_time(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return -1


def cleanup_stale(state_dir: str = STATE_DIR) -> list[str]:
    """Remove VM directories whose owning process is gone (its QEMU died with it, by
    PR_SET_PDEATHSIG; one still found is killed after checking it is that VM's, and its
    virtiofsd die with it). A VM that outlives its owner is kept while its QEMU runs and its
    ``ref`` (the container's state directory) exists: the next silod adopts it."""
    removed = []
    try:
        names = os.listdir(state_dir)
    except FileNotFoundError:
        return removed
    for name in names:
        path = os.path.join(state_dir, name)
        try:
            with open(os.path.join(path, "owner.json")) as f:
                owner = json.load(f)
        except (OSError, ValueError):
            owner = {}
            try:
                if time.time() - os.stat(path).st_mtime < 60:
                    continue   # being created right now: owner.json comes next
            except FileNotFoundError:
                continue
        if owner and _start_time(owner.get("pid", -1)) == owner.get("start"):
            continue
        qemu = owner.get("qemu") or 0
        qemu_alive = bool(qemu) and _start_time(qemu) == owner.get("qemu_start")
        if qemu_alive and owner.get("outlives_owner") and owner.get("ref") and \
                os.path.isdir(owner["ref"]):
            continue
        if qemu_alive:
            try:
                os.kill(qemu, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(path, ignore_errors=True)
        removed.append(name)
    return removed
