"""The utility VM's boot assets: a guest kernel taken from Debian's package, and an initramfs.

The kernel is Debian's ``linux-image-cloud-amd64`` (made for virtual machines), unpacked at install
time, never installed: ``scripts/install.sh`` fetches the ``.deb`` with apt and hands the unpacked
tree to :func:`install_kernel`, which keeps an uncompressed ``vmlinux`` (QEMU's ``microvm``
machine boots it directly, skipping the decompressor) and the few modules the guest needs.

The initramfs is small and built on demand into ``/var/cache/silobox/uvm/<hash>/``: busybox, those
modules and :file:`init.sh`. Everything else the guest runs (Python, silobox) comes read-only
from the host over virtiofs, so the image never goes stale against the host.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass

from silobox.atomic import atomic_write
from silobox.errors import InvalidArgument, Unavailable

ASSET_DIR = os.environ.get("SILOBOX_UVM_DIR") or os.path.join(sys.prefix, "uvm")
"""Where install.sh puts the guest kernel: ``vmlinux``, ``release`` and ``modules/``."""
CACHE_DIR = os.environ.get("SILOBOX_UVM_CACHE") or "/var/cache/silobox/uvm"
BUSYBOX = "/bin/busybox"  # busybox-static: the initramfs runs before any shared library exists

GUEST_MODULES = ("virtio_mmio", "virtio_blk", "virtio_console", "virtiofs", "overlay")
"""What the guest loads at boot (dependencies follow from each module's ``depends=``): the
virtio-mmio transport of ``microvm``, the writable disk, the control channel, the host share,
and overlayfs for a container's root. The guest has no modprobe of its own, so nothing loads
later; each module costs boot time under emulation, so only these."""

NET_MODULES = ("virtio_net",)
"""Loaded only by a VM that has a network card (a hyperv container on a network): the
virtio-mmio network device and what it depends on."""

_LZ4_LEGACY = b"\x02\x21\x4c\x18"
_INIT = os.path.join(os.path.dirname(__file__), "init.sh")


@dataclass(frozen=True)
class BootAssets:
    kernel: str
    initramfs: str
    release: str


def _modinfo_field(data: bytes, name: str) -> str:
    m = re.search(rb"(?:^|\x00)" + name.encode() + rb"=([^\x00]*)\x00", data)
    return m.group(1).decode() if m else ""


def _module_closure(modules_root: str, wanted: tuple[str, ...]) -> list[str]:
    """Paths of ``wanted`` and everything they depend on, dependencies first."""
    index: dict[str, str] = {}
    for path in glob.glob(os.path.join(modules_root, "**", "*.ko"), recursive=True):
        index[os.path.basename(path)[:-3].replace("-", "_")] = path
    ordered: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if index.get(key) in ordered:
            return
        if key not in index:
            raise Unavailable(f"the guest kernel has no module {name} (needed by {chain or 'boot'})")
        with open(index[key], "rb") as f:
            depends = _modinfo_field(f.read(), "depends")
        for dep in filter(None, depends.split(",")):
            visit(dep, chain + (name,))
        ordered.append(index[key])

    for name in wanted:
        visit(name, ())
    return ordered


def extract_vmlinux(vmlinuz: str) -> bytes:
    """The uncompressed kernel inside a bzImage (Debian compresses its kernels with LZ4)."""
    with open(vmlinuz, "rb") as f:
        image = f.read()
    start = image.find(_LZ4_LEGACY)
    while start >= 0:
        # The compressed payload is followed by the rest of the setup code; lz4 reports that as
        # trailing garbage after it has written the whole kernel, so the ELF check decides.
        r = subprocess.run(["lz4", "-dc"], input=image[start:], capture_output=True)
        if r.stdout[:4] == b"\x7fELF":
            return r.stdout
        start = image.find(_LZ4_LEGACY, start + 1)
    raise InvalidArgument(f"{vmlinuz}: no LZ4-compressed ELF kernel inside")


def install_kernel(unpacked: str, dest: str = ASSET_DIR) -> str:
    """Keep the kernel and guest modules of an unpacked linux-image .deb in ``dest``."""
    kernels = sorted(glob.glob(os.path.join(unpacked, "boot", "vmlinuz-*")))
    if not kernels:
        raise InvalidArgument(f"{unpacked}: no boot/vmlinuz-* (not an unpacked linux-image package)")
    release = os.path.basename(kernels[-1])[len("vmlinuz-"):]
    modules = _module_closure(os.path.join(unpacked, "lib", "modules", release), GUEST_MODULES)
    try:
        net_modules = [path for path in _module_closure(
            os.path.join(unpacked, "lib", "modules", release), NET_MODULES) if path not in modules]
    except Unavailable:   # built into this kernel
        net_modules = []
    staging = dest + ".new"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(os.path.join(staging, "modules"))
    with open(os.path.join(staging, "vmlinux"), "wb") as f:
        f.write(extract_vmlinux(kernels[-1]))
    order = []
    for path in modules:
        name = os.path.basename(path)
        shutil.copyfile(path, os.path.join(staging, "modules", name))
        order.append(name)
    with open(os.path.join(staging, "modules", "order"), "w") as f:
        f.write("\n".join(order) + "\n")
    for path in net_modules:
        shutil.copyfile(path, os.path.join(staging, "modules", os.path.basename(path)))
    with open(os.path.join(staging, "modules", "net.order"), "w") as f:
        f.write("".join(os.path.basename(path) + "\n" for path in net_modules))
    with open(os.path.join(staging, "release"), "w") as f:
        f.write(release + "\n")
    old = dest + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(dest):
        os.rename(dest, old)
    os.rename(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
    return release


def installed_release(asset_dir: str = ASSET_DIR) -> str | None:
    try:
        with open(os.path.join(asset_dir, "release")) as f:
            release = f.read().strip()
    except OSError:
        return None
    return release if os.path.exists(os.path.join(asset_dir, "vmlinux")) else None


# -- initramfs (newc cpio, uncompressed: the kernel unpacks it fastest that way) ------------------

class _Cpio:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        encoded = name.encode() + b"\x00"
        header = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0))
        self.ino += 1
        self.buf.write(header.encode() + encoded)
        self.buf.write(b"\x00" * (-(110 + len(encoded)) % 4))
        self.buf.write(data)
        self.buf.write(b"\x00" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.buf.write(b"\x00" * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def _initramfs_inputs(asset_dir: str) -> list[tuple[str, str]]:
    modules_dir = os.path.join(asset_dir, "modules")
    lists = [name for name in ("order", "net.order")
             if os.path.exists(os.path.join(modules_dir, name))]
    order = []
    for name in lists:
        with open(os.path.join(modules_dir, name)) as f:
            order += f.read().split()
    return ([("init", _INIT), (".sbx/busybox", BUSYBOX)]
            + [(f".sbx/modules/{name}", os.path.join(modules_dir, name)) for name in order]
            + [(f".sbx/modules/{name}", os.path.join(modules_dir, name)) for name in lists])


def build_initramfs(asset_dir: str = ASSET_DIR, cache_dir: str = CACHE_DIR) -> str:
    """Path of the initramfs for these assets, built if the cache has none for their hash."""
    if installed_release(asset_dir) is None:
        raise Unavailable(f"no utility VM kernel in {asset_dir}: run scripts/install.sh")
    if not os.path.exists(BUSYBOX):
        raise Unavailable(f"{BUSYBOX} is missing: install busybox-static")
    inputs = _initramfs_inputs(asset_dir)
    digest = hashlib.sha256()
    contents = []
    for name, path in inputs:
        with open(path, "rb") as f:
            data = f.read()
        digest.update(name.encode() + b"\x00" + hashlib.sha256(data).digest())
        contents.append((name, data))
    target = os.path.join(cache_dir, digest.hexdigest()[:16], "initramfs.cpio")
    if os.path.exists(target):
        return target
    cpio = _Cpio()
    for d in ("dev", "proc", "sys", "usr", "host", "run", "tmp", "etc", "var", "root", "src",
              "scratch", "opt", "opt/silobox", ".sbx", ".sbx/modules", "mnt"):
        cpio.directory(d)
    for link in ("bin", "sbin", "lib", "lib64"):
        cpio.symlink(link, f"usr/{link}")
    cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    cpio.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    cpio.file("etc/hostname", b"silobox-uvm\n")
    cpio.file("etc/hosts", b"127.0.0.1 localhost silobox-uvm\n")
    for name, data in contents:
        cpio.file(name, data, 0o755 if name in ("init", ".sbx/busybox") else 0o644)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    atomic_write(target, cpio.finish())
    # Images of earlier kernels or init scripts (a VM about to boot holds its image open).
    for stale in os.listdir(cache_dir):
        if stale != os.path.basename(os.path.dirname(target)):
            shutil.rmtree(os.path.join(cache_dir, stale), ignore_errors=True)
    return target


def boot_assets(asset_dir: str = ASSET_DIR, cache_dir: str = CACHE_DIR) -> BootAssets:
    release = installed_release(asset_dir)
    if release is None:
        raise Unavailable(f"no utility VM kernel in {asset_dir}: run scripts/install.sh "
                          "(it unpacks Debian's linux-image-cloud-amd64 there)")
    return BootAssets(os.path.join(asset_dir, "vmlinux"), build_initramfs(asset_dir, cache_dir),
                      release)
