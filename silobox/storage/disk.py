"""Sandbox disks: the Linux form of windowsfilter's per-container ``sandbox.vhdx``.

A sandbox disk is a sparse ext4 image file. Like the VHDX that ``CreateSandboxLayer`` copies from
``blank.vhdx``, it is formatted ahead of time: a :class:`DiskPool` keeps a few pre-formatted
images of the daemon's default size ready, so creating a container is a ``rename`` and starting
one costs only the attach (a loop device, the counterpart of ``attach vdisk``) and the mount.

Loop devices are set up with ioctls (``LOOP_CTL_GET_FREE`` + ``LOOP_CONFIGURE``) rather than the
``losetup`` binary, always with ``LO_FLAGS_AUTOCLEAR``: the device detaches itself when its last
user (the mount) goes away, so an unmount is the whole cleanup and a crashed daemon leaves no
attached device behind once the mount is gone.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass

from silobox.errors import Conflict, InvalidArgument, SystemFailure, Unavailable
from silobox.kernel import libc

log = logging.getLogger("silobox.storage")

# linux/loop.h
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LOOP_SET_CAPACITY = 0x4C07
LOOP_SET_DIRECT_IO = 0x4C08
LOOP_SET_BLOCK_SIZE = 0x4C09
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
LO_NAME_SIZE = 64
# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
_LOOP_INFO64 = "QQQQQIIII64s64s32sQQ"
_LOOP_CONFIG = "=II" + _LOOP_INFO64 + "8Q"
_INFO_FLAGS_INDEX = 8          # lo_flags within loop_info64

MIN_SIZE = 16 * 1024 * 1024
DEFAULT_SIZE = 20 * 1024 ** 3  # the Windows platform default for a container's C:
BLOCK_SIZE = 4096
MKFS = "mkfs.ext4"
# Lazy init: the inode tables and journal of a file-backed ext4 are discarded (holes) by mke2fs,
# so nothing is written later. No reserved blocks: the container may use its whole size.
MKFS_ARGS = ["-F", "-q", "-b", str(BLOCK_SIZE), "-m", "0", "-E",
             "lazy_itable_init=1,lazy_journal_init=1", "-O", "^has_journal"]
MOUNT_DATA = ""
_NICE = ["nice", "-n", "19"] if shutil.which("nice") else []


# -- sizes -------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024 ** 2, "mb": 1024 ** 2,
          "mib": 1024 ** 2, "g": 1024 ** 3, "gb": 1024 ** 3, "gib": 1024 ** 3,
          "t": 1024 ** 4, "tb": 1024 ** 4, "tib": 1024 ** 4}


def parse_size(text: str, what: str = "size") -> int:
    """``20G``, ``512m``, ``1.5GB``, ``1073741824`` → bytes (Docker's RAMInBytes units)."""
    s = str(text).strip().lower()
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        raise InvalidArgument(f"invalid {what}: '{text}'") from None
    if unit not in _UNITS or value < 0:
        raise InvalidArgument(f"invalid {what}: '{text}'")
    return int(value * _UNITS[unit])


def human_size(n: int) -> str:
    """Bytes in Docker's binary units, e.g. ``20GiB``, ``4.2MiB``."""
    for unit, scale in (("TiB", 1024 ** 4), ("GiB", 1024 ** 3), ("MiB", 1024 ** 2),
                        ("KiB", 1024)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.1f}{unit}"
    return f"{n}B"


# -- loop devices ------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoopDevice:
    path: str          # /dev/loopN
    backing_file: str


def loop_supported() -> str:
    """"" when sandbox disks work here, else the reason they do not (probed once per daemon)."""
    if not os.path.exists("/dev/loop-control"):
        return "/dev/loop-control is missing (modprobe loop)"
    if shutil.which(MKFS) is None:
        return f"{MKFS} is missing (apt-get install e2fsprogs)"
    try:
        with open("/proc/filesystems") as f:
            if "\text4\n" not in f.read():
                return "the kernel has no ext4 filesystem"
    except OSError as e:
        return f"cannot read /proc/filesystems: {e}"
    try:
        fd = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"cannot open /dev/loop-control: {e.strerror}"
    try:
        fcntl.ioctl(fd, LOOP_CTL_GET_FREE)
    except OSError as e:
        return f"no free loop device: {e.strerror}"
    finally:
        os.close(fd)
    return ""


DIRECT_IO = os.environ.get("SILOBOX_LOOP_DIRECT_IO", "1") != "0"


def attach(image: str, readonly: bool = False, direct_io: bool | None = None) -> tuple[int, str]:
    """Attach ``image`` to a free loop device with AUTOCLEAR; returns (open fd, device path).

    The caller mounts the device and then closes the fd: from then on the mount alone keeps the
    device, and unmounting detaches it. Closing the fd without mounting detaches it at once.
    """
    # Direct I/O skips the double page cache (ext4's and the backing file's). Asked for in
    # LOOP_CONFIGURE it is free; a later LOOP_SET_DIRECT_IO freezes the queue (~13 ms here).
    direct_io = DIRECT_IO if direct_io is None else direct_io
    flags = (LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if readonly else 0)
             | (LO_FLAGS_DIRECT_IO if direct_io else 0))
    ffd = os.open(image, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(64):   # another process may take the free device first
                n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                dev = f"/dev/loop{n}"
                try:
                    lfd = os.open(dev, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
                except FileNotFoundError:
                    time.sleep(0.001)   # udev/devtmpfs has not made the node yet
                    lfd = os.open(dev, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
                name = os.path.basename(image).encode()[:LO_NAME_SIZE - 1]
                cfg = struct.pack(_LOOP_CONFIG, ffd, BLOCK_SIZE, 0, 0, 0, 0, 0, 0, 0, 0, flags,
                                  name, b"", b"", 0, 0, *([0] * 8))
                try:
                    fcntl.ioctl(lfd, LOOP_CONFIGURE, cfg)
                except OSError as e:
                    os.close(lfd)
                    if e.errno == errno.EBUSY:
                        continue
                    raise
                return lfd, dev
            raise SystemFailure("no free loop device after 64 attempts",
                                operation="storage::SandboxDisk::Attach", object_id=image)
        finally:
            os.close(ctl)
    except OSError as e:
        raise SystemFailure(f"cannot attach {image} to a loop device: {e.strerror}",
                            operation="storage::SandboxDisk::Attach", object_id=image,
                            cause=e) from e
    finally:
        os.close(ffd)


def loop_devices() -> list[LoopDevice]:
    """Every attached loop device and its backing file (from sysfs, full paths)."""
    out = []
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return out
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                backing = f.read().rstrip("\n")
        except OSError:
            continue
        if backing.endswith(" (deleted)"):
            backing = backing[:-len(" (deleted)")]
        out.append(LoopDevice(f"/dev/{name}", backing))
    return out


def loops_of(image: str) -> list[str]:
    image = os.path.realpath(image)
    return [d.path for d in loop_devices() if d.backing_file == image]


def wait_detached(image: str, timeout: float = 2.0) -> bool:
    """Wait for an AUTOCLEAR device of ``image`` to go once its last mount is gone (a container
    that just exited keeps its mount namespace a moment longer); True when none is left."""
    deadline = time.monotonic() + timeout
    while loops_of(image):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def detach(device: str) -> None:
    """LOOP_CLR_FD; on a device still in use the kernel turns it into a deferred AUTOCLEAR."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)
    except OSError as e:
        if e.errno != errno.ENXIO:   # ENXIO: not attached (any more)
            raise
    finally:
        os.close(fd)


def set_capacity(device: str) -> None:
    """Make an attached device see its grown backing file (for an online expand)."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, LOOP_SET_CAPACITY)
    finally:
        os.close(fd)


# -- images ------------------------------------------------------------------------------------

def _skeleton(base: str) -> str:
    """A directory tree ``mke2fs -d`` copies into every new disk: upper/, work/, rootfs/."""
    skel = os.path.join(base, "skeleton")
    if not os.path.isdir(os.path.join(skel, "rootfs")):
        tmp = f"{skel}.{uuid.uuid4().hex[:8]}"
        os.makedirs(tmp)
        os.chmod(tmp, 0o755)
        for name, mode in (("upper", 0o755), ("work", 0o700), ("rootfs", 0o755)):
            os.mkdir(os.path.join(tmp, name))
            os.chmod(os.path.join(tmp, name), mode)
        try:
            os.rename(tmp, skel)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return skel


def format_image(path: str, size: int, work_dir: str) -> None:
    """Make a sparse ext4 image of ``size`` bytes at ``path`` (the ``blank.vhdx`` of Windows)."""
    if size < MIN_SIZE:
        raise InvalidArgument(f"sandbox size {human_size(size)} is below the minimum of "
                              f"{human_size(MIN_SIZE)}")
    size -= size % BLOCK_SIZE
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.truncate(size)
        # At the lowest CPU priority: the pool formats in the background, beside starts.
        res = subprocess.run([*_NICE, MKFS, *MKFS_ARGS, "-d", _skeleton(work_dir), tmp],
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        if res.returncode != 0:
            raise SystemFailure(f"{MKFS} failed: {res.stderr.decode(errors='replace').strip()}",
                                operation="storage::SandboxDisk::Format", object_id=path)
        # No fsync: it would force a host journal commit that every fsync on the create path
        # then waits for. (An image lost in a host crash is only a pool entry; a taken one is
        # checked at its first mount.)
        os.rename(tmp, path)
    except OSError as e:
        raise SystemFailure(f"cannot create the sandbox disk {path}: {e.strerror}",
                            operation="storage::SandboxDisk::Format", object_id=path,
                            cause=e) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass
class Superblock:
    block_size: int
    blocks: int
    free_blocks: int
    clean: bool

    @property
    def size(self) -> int:
        return self.blocks * self.block_size

    @property
    def used(self) -> int:
        return (self.blocks - self.free_blocks) * self.block_size


def read_superblock(image: str) -> Superblock:
    """The ext4 superblock's counts, read straight from the image (no tool, no mount).

    Exact for an unmounted disk; a mounted ext4 updates these counters only lazily."""
    try:
        with open(image, "rb") as f:
            f.seek(1024)
            sb = f.read(1024)
    except OSError as e:
        raise SystemFailure(f"cannot read {image}: {e.strerror}", cause=e,
                            operation="storage::SandboxDisk") from e
    if len(sb) < 0x160 or struct.unpack_from("<H", sb, 0x38)[0] != 0xEF53:
        raise SystemFailure(f"{image} is not an ext4 image", operation="storage::SandboxDisk")
    blocks_lo, _r, free_lo = struct.unpack_from("<III", sb, 0x4)
    log_bs, = struct.unpack_from("<I", sb, 0x18)
    state, = struct.unpack_from("<H", sb, 0x3A)
    incompat, = struct.unpack_from("<I", sb, 0x60)
    blocks_hi = free_hi = 0
    if incompat & 0x80:   # 64bit
        blocks_hi, _rh, free_hi = struct.unpack_from("<III", sb, 0x150)
    return Superblock(1024 << log_bs, blocks_lo | blocks_hi << 32, free_lo | free_hi << 32,
                      bool(state & 1))


def grow_image(image: str, size: int, device: str | None = None) -> None:
    """ExpandSandboxSize: grow the file, then the filesystem (online through ``device`` when
    the disk is mounted, offline otherwise). Never shrinks."""
    current = os.stat(image).st_size
    size -= size % BLOCK_SIZE
    if size < current:
        raise InvalidArgument(f"cannot shrink a sandbox disk from {human_size(current)} to "
                              f"{human_size(size)}", operation="storage::SandboxDisk::Expand")
    if device and not _has_capability(24):   # CAP_SYS_RESOURCE: EXT4_IOC_RESIZE_FS needs it
        raise Unavailable("growing a mounted sandbox disk is not permitted here (the daemon "
                          "lacks CAP_SYS_RESOURCE): stop the container, then expand it",
                          operation="storage::SandboxDisk::Expand", object_id=image)
    if size == current and (device or read_superblock(image).size >= size):
        return
    os.truncate(image, size)
    target = image
    if device:
        set_capacity(device)
        target = device
    else:
        fsck = subprocess.run(["e2fsck", "-f", "-p", image], capture_output=True, timeout=300)
        if fsck.returncode not in (0, 1):
            raise SystemFailure(f"e2fsck before resize failed: "
                                f"{fsck.stdout.decode(errors='replace').strip()}",
                                operation="storage::SandboxDisk::Expand", object_id=image)
    res = subprocess.run(["resize2fs", target], capture_output=True, timeout=300)
    if res.returncode != 0:
        raise SystemFailure(f"resize2fs failed: {res.stderr.decode(errors='replace').strip()}",
                            operation="storage::SandboxDisk::Expand", object_id=image)


def check(image: str) -> None:
    """``e2fsck -p`` (safe automatic repair) of an unmounted image."""
    log.warning("sandbox disk %s was not unmounted cleanly: checking it", image)
    res = subprocess.run(["e2fsck", "-f", "-p", image], capture_output=True, timeout=600)
    if res.returncode not in (0, 1, 2):
        raise SystemFailure(f"the sandbox disk {image} is damaged and e2fsck could not repair "
                            f"it: {res.stdout.decode(errors='replace').strip()}",
                            operation="storage::SandboxDisk::Check", object_id=image)


def _has_capability(cap: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << cap))
    except OSError:
        pass
    return False


def mount_image(image: str, target: str, readonly: bool = False) -> str:
    """Attach and mount ``image`` on ``target``; returns the loop device. Refuses an image that is
    attached already: ext4 must never be mounted twice from two devices."""
    if loops_of(image):
        raise Conflict(f"the sandbox disk {image} is in use (attached to "
                       f"{', '.join(loops_of(image))})", operation="storage::SandboxDisk::Mount",
                       object_id=image)
    if not readonly and not read_superblock(image).clean:
        check(image)   # no journal: a disk that was mounted when the host went down
    fd, dev = attach(image, readonly=readonly)
    try:
        flags = libc.MS_NOATIME | (libc.MS_RDONLY if readonly else 0)
        data = "noload" if readonly else MOUNT_DATA
        libc.mount(dev, target, "ext4", flags, data or None)
    except OSError as e:
        raise SystemFailure(f"cannot mount the sandbox disk {image} on {target}: {e.strerror}",
                            operation="storage::SandboxDisk::Mount", object_id=image,
                            cause=e) from e
    finally:
        os.close(fd)   # AUTOCLEAR: the mount keeps the device; without it, it is gone
    return dev


def pool_dir(root: str) -> str:
    """Where a daemon with storage root ``root`` keeps its pool (and its trash)."""
    return os.path.join(root, "sandbox-pool")


def discard(image: str, root: str) -> None:
    """Remove a sandbox disk image: moved to the pool's trash when there is one (the pool's
    thread deletes it), deleted at once otherwise."""
    trash = pool_dir(root)
    if os.path.isdir(trash):
        try:
            os.rename(image, os.path.join(trash, f"trash-{uuid.uuid4().hex[:12]}.img"))
            return
        except OSError:
            pass
    os.unlink(image)


def clone_sparse(template: str, path: str) -> None:
    """Copy an image's data extents only (SEEK_DATA/SEEK_HOLE + copy_file_range): a few MiB
    in the kernel instead of a mkfs process, like copying ``blank.vhdx`` on Windows."""
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    src = os.open(template, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(src).st_size
            os.ftruncate(dst, size)
            offset = 0
            while offset < size:
                try:
                    data = os.lseek(src, offset, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:   # only a hole is left
                        break
                    raise
                hole = os.lseek(src, data, os.SEEK_HOLE)
                done = 0
                while done < hole - data:
                    n = os.copy_file_range(src, dst, hole - data - done, data + done,
                                           data + done)
                    if n == 0:
                        break
                    done += n
                offset = hole
        finally:
            os.close(dst)
        os.rename(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise SystemFailure(f"cannot copy the sandbox disk template: {e.strerror}",
                            operation="storage::SandboxDisk::Create", object_id=path,
                            cause=e) from e
    finally:
        os.close(src)


# -- the pool ----------------------------------------------------------------------------------

class DiskPool:
    """Pre-formatted sandbox disks of the default size, kept filled by a background thread.

    ``take`` moves a ready image into place with ``rename`` (same filesystem); when the pool is
    empty or the size differs it formats one on the spot.
    """

    def __init__(self, directory: str, size: int = DEFAULT_SIZE, target: int = 2) -> None:
        self.directory = directory
        self.size = size - size % BLOCK_SIZE
        self.target = target
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        os.makedirs(directory, mode=0o700, exist_ok=True)
        for name in os.listdir(directory):   # half-written images of an earlier run
            if name.endswith(".tmp") or name.startswith("trash-") or (
                    name.startswith(("ready-", "template-")) and
                    not name.endswith(f"-{self.size}.img")):
                try:
                    os.unlink(os.path.join(directory, name))
                except OSError:
                    pass

    def empty_trash(self) -> None:
        """Delete the images of removed containers (``Sandbox.remove`` only renames them here,
        so freeing a 20 GB file's extents stays off the rm path)."""
        for name in os.listdir(self.directory):
            if name.startswith("trash-"):
                try:
                    os.unlink(os.path.join(self.directory, name))
                except OSError:
                    pass

    def ready(self) -> list[str]:
        suffix = f"-{self.size}.img"
        try:
            return sorted(os.path.join(self.directory, n) for n in os.listdir(self.directory)
                          if n.startswith("ready-") and n.endswith(suffix))
        except FileNotFoundError:
            return []

    def template(self) -> str:
        """The pool's ``blank.vhdx``: formatted once, then copied for every pool entry."""
        path = os.path.join(self.directory, f"template-{self.size}.img")
        if not os.path.exists(path):
            format_image(path, self.size, self.directory)
        return path

    def fill_once(self) -> int:
        made = 0
        while len(self.ready()) < self.target and not self._stop.is_set():
            name = f"ready-{uuid.uuid4().hex[:12]}-{self.size}.img"
            clone_sparse(self.template(), os.path.join(self.directory, name))
            made += 1
        return made

    def start(self) -> None:
        """Begin filling in the background (a thread: mkfs is a subprocess, nothing to await)."""
        if self._thread is not None:
            return

        def run() -> None:
            while not self._stop.is_set():
                try:
                    self.empty_trash()
                    self.fill_once()
                except Exception as e:  # keep serving: take() formats on demand
                    log.warning("sandbox disk pool: %s", e)
                    self._stop.wait(5)
                self._wake.wait(30)
                self._wake.clear()

        self._thread = threading.Thread(target=run, name="sandbox-disk-pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def take(self, dest: str, size: int | None = None) -> None:
        """Put a formatted image of ``size`` bytes (default: the pool's) at ``dest``."""
        size = self.size if size is None else size - size % BLOCK_SIZE
        if size == self.size:
            with self._lock:
                for image in self.ready():
                    try:
                        os.rename(image, dest)
                    except FileNotFoundError:
                        continue
                    self._wake.set()
                    return
        self._wake.set()
        log.debug("sandbox disk pool: no ready image of %d bytes, formatting one now", size)
        format_image(dest, size, self.directory)

    def clear(self) -> None:
        for image in self.ready():
            try:
                os.unlink(image)
            except OSError:
                pass
