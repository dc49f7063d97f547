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

from silobox.errors import Conflict, InvalidArgument, SiloboxError, SystemFailure, Unavailable
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
POOL_TARGET = 3                # ready disks (each an attached loop device) a daemon keeps
DEFAULT_SIZE = 20 * 1024 ** 3  # the Windows platform default for a container's C:
BLOCK_SIZE = 4096
MKFS = "mkfs.ext4"
# Lazy init: the inode tables and journal of a file-backed ext4 are discarded (holes) by mke2fs,
# so nothing is written later. No reserved blocks: the container may use its whole size.
MKFS_ARGS = ["-F", "-q", "-b", str(BLOCK_SIZE), "-m", "0", "-O", "^has_journal"]
MKFS_EXTENDED = "lazy_itable_init=1,lazy_journal_init=1"
# Group descriptor blocks reserved for growing the mounted filesystem, up to this many times
# its size. mke2fs's default (1024 times) writes ~4 MiB of them into a 20 GB image, 90% of its
# data, copied for every container; 8 times leaves ~0.4 MiB. Growing a stopped container's disk
# further still works (resize2fs moves what it needs offline).
ONLINE_GROWTH = 8
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
                _attached.remember(_file_key(ffd), dev)
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


class _AttachedIndex:
    """The loop devices each image file (by device and inode: a pool disk is renamed while
    attached) was attached to, as far as this process knows: seeded by one scan of every
    device (those attached before it started), then kept by ``attach``. ``attached_loops``
    reads only the recorded devices' backing files, so a start or a removal costs the same
    with 1,000 containers as with one (a scan reads a sysfs file per device)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._devices: dict[tuple[int, int], set[str]] | None = None

    def remember(self, key: tuple[int, int], device: str) -> None:
        with self._lock:
            if self._devices is not None:
                self._devices.setdefault(key, set()).add(device)

    def devices(self, key: tuple[int, int]) -> list[str]:
        with self._lock:
            if self._devices is None:
                seeded: dict[tuple[int, int], set[str]] = {}
                for d in loop_devices():
                    k = _path_key(d.backing_file)
                    if k is not None:
                        seeded.setdefault(k, set()).add(d.path)
                self._devices = seeded
            return sorted(self._devices.get(key, ()))

    def forget(self, key: tuple[int, int], device: str) -> None:
        with self._lock:
            devs = (self._devices or {}).get(key)
            if devs is not None:
                devs.discard(device)
                if not devs:
                    del self._devices[key]   # type: ignore[index]


_attached = _AttachedIndex()


def _file_key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _path_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _backing_file(device: str) -> str:
    try:
        with open(f"/sys/block/{os.path.basename(device)}/loop/backing_file") as f:
            backing = f.read().rstrip("\n")
    except OSError:
        return ""
    return backing[:-len(" (deleted)")] if backing.endswith(" (deleted)") else backing


def loops_of(image: str) -> list[str]:
    """The loop devices ``image`` is attached to now, whoever attached them (a full scan)."""
    image = os.path.realpath(image)
    return [d.path for d in loop_devices() if d.backing_file == image]


def attached_loops(image: str) -> list[str]:
    """``loops_of`` for the daemon's own disks, without a scan: the devices this process
    attached (or found attached when it first asked) that still hold ``image``."""
    image = os.path.realpath(image)
    key = _path_key(image)
    if key is None:
        return []
    out = []
    for dev in _attached.devices(key):
        if _backing_file(dev) == image:
            out.append(dev)
        else:   # detached (AUTOCLEAR) or reused for another file since
            _attached.forget(key, dev)
    return out


def wait_detached(image: str, timeout: float = 2.0, scan: bool = False) -> bool:
    """Wait for an AUTOCLEAR device of ``image`` to go once its last mount is gone (a container
    that just exited keeps its mount namespace a moment longer); True when none is left.
    ``scan``: look at every device (``loops_of``), for a process that did not attach them
    (this process's index knows only its own and those found at its first look)."""
    deadline = time.monotonic() + timeout
    while (loops_of if scan else attached_loops)(image):
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
        reserve = min(size // BLOCK_SIZE * ONLINE_GROWTH, 2 ** 32 - 1)
        res = subprocess.run([*_NICE, MKFS, *MKFS_ARGS, "-E",
                              f"{MKFS_EXTENDED},resize={reserve}", "-d", _skeleton(work_dir),
                              tmp],
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


def _open_attached(image: str, readonly: bool) -> tuple[int, str] | None:
    """An open fd on the loop device ``image`` is attached to already, and that device; None
    when it is not attached (any more).

    A disk stays attached while any mount of it lives, in any mount namespace: a container
    that is going away, or the copy a namespace made elsewhere on the host (another tool's,
    a service's private /tmp) kept after we unmounted. Mounting that same device again gives
    the filesystem instance still alive on it (the kernel keeps one superblock per block
    device), so it is shared, never doubled; only a second device on one image would make a
    second instance. The fd, held until the mount is made, keeps AUTOCLEAR from detaching
    the device meanwhile; the device is checked to still be this image's once it is held."""
    for _ in range(8):
        found = attached_loops(image)
        if not found:
            return None
        if len(found) > 1:
            raise Conflict(f"the sandbox disk {image} is in use (attached to "
                           f"{', '.join(found)})",
                           operation="storage::SandboxDisk::Mount", object_id=image)
        dev = found[0]
        try:
            fd = os.open(dev, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENOENT) and wait_detached(image):
                return None   # it was detaching itself
            raise Conflict(f"the sandbox disk {image} is in use (attached to {dev}"
                           f"{', read-only' if e.errno == errno.EROFS else ''})",
                           operation="storage::SandboxDisk::Mount", object_id=image) from None
        if _backing_file(dev) == os.path.realpath(image):
            return fd, dev
        os.close(fd)   # detached and given to another image between the look and the open
    raise Conflict(f"the sandbox disk {image} keeps changing loop devices",
                   operation="storage::SandboxDisk::Mount", object_id=image)


def mount_image(image: str, target: str, readonly: bool = False,
                root: str | None = None, flags: int = 0) -> str:
    """Attach and mount ``image`` on ``target``; returns the loop device. An image attached
    already is mounted through that device (see :func:`_open_attached`): ext4 must never be
    mounted from two devices at once. ``flags`` are added to the mount's
    (``MS_NOSUID|MS_NODEV|MS_NOEXEC`` for a mount on the host).

    With ``root`` (the daemon's storage root), a device the pool attached ahead of time for
    this image is used (read-write) or let go (read-only)."""
    pool = pool_of(root) if root else None
    spare = None
    if pool is not None:
        if readonly:
            if pool.release(image):
                wait_detached(image)
        else:
            spare = pool.claim(image)
    if spare is not None:
        fd, dev = spare.fd, spare.device   # a fresh disk from the pool: clean, never mounted
    else:
        held = _open_attached(image, readonly)
        if held is not None:
            fd, dev = held   # its filesystem may be alive: never checked (e2fsck) under it
        else:
            if not readonly and not read_superblock(image).clean:
                check(image)   # no journal: a disk that was mounted when the host went down
            fd, dev = attach(image, readonly=readonly)
    try:
        flags |= libc.MS_NOATIME | (libc.MS_RDONLY if readonly else 0)
        data = "noload" if readonly else MOUNT_DATA
        libc.mount(dev, target, "ext4", flags, data or None)
    except OSError as e:
        if e.errno == errno.EBUSY:   # alive elsewhere, read-write, and asked read-only here
            raise Conflict(f"the sandbox disk {image} is in use (mounted read-write through "
                           f"{dev})", operation="storage::SandboxDisk::Mount",
                           object_id=image) from None
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
    thread deletes it in a quiet moment: freeing the extents of a file costs a journal commit),
    deleted at once otherwise. A device the pool still holds for it is let go first."""
    pool = pool_of(root)
    if pool is not None:
        pool.release(image)
    trash = pool_dir(root)
    if os.path.isdir(trash):
        try:
            os.rename(image, os.path.join(trash, f"trash-{uuid.uuid4().hex[:12]}.img"))
            if pool is not None:
                pool.wake()
            return
        except OSError:
            pass
    os.unlink(image)


def clone_sparse(template: str, path: str, flush: bool = True) -> None:
    """Copy an image's data extents only (SEEK_DATA/SEEK_HOLE + copy_file_range): under a MiB
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
            # Written back here, in the pool's thread: a direct-I/O loop device would flush
            # these dirty pages at attach time (~3 ms on the start path), and a later fsync
            # on the create path would wait for them in the host's journal commit.
            if flush:
                os.fdatasync(dst)
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


def _warm(image: str, device_fd: int) -> None:
    """Read the image's data extents (its metadata) through the attached device: they stay in
    the device's page cache while the pool holds it open, so the mount reads no disk."""
    src = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src).st_size
        offset = 0
        while offset < size:
            try:
                data = os.lseek(src, offset, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(src, data, os.SEEK_HOLE)
            while data < hole:
                got = len(os.pread(device_fd, min(hole - data, 1 << 20), data))
                if not got:
                    break
                data += got
            offset = hole
    finally:
        os.close(src)


# -- the pool ----------------------------------------------------------------------------------

@dataclass
class Spare:
    """A formatted image attached to a loop device whose only opener is the pool's ``fd``.

    The device has AUTOCLEAR: when the fd is closed (by the pool, or by the kernel when the
    daemon dies, even with SIGKILL) and nothing mounted it, the device detaches itself."""

    path: str
    device: str
    fd: int
    since: float = 0.0


_POOLS: dict[str, "DiskPool"] = {}
_POOLS_LOCK = threading.Lock()


def pool_of(root: str) -> "DiskPool | None":
    """The pool of the daemon in this process whose storage root is ``root``, if any."""
    with _POOLS_LOCK:
        return _POOLS.get(os.path.realpath(pool_dir(root)))


class DiskPool:
    """Pre-formatted sandbox disks of the default size, kept ready by a background thread.

    Each ready disk is already copied from the template, written back, attached to a loop
    device (direct I/O, AUTOCLEAR) held open by the pool, and its metadata read through that
    device (it stays in the device's page cache), so that nothing of it is left for the start
    path: ``take`` (at create) is a ``rename`` and ``claim`` (at start) hands over the attached
    device, leaving only the ext4 mount, which then reads nothing from the disk. Configuring a
    direct-I/O loop device costs ~3 ms here (the kernel syncs the backing file), which is why
    attaching happens here.

    The thread does its work in quiet moments (``quiet`` seconds after the last container
    operation announced with :meth:`busy`), so its writes and journal commits do not delay the
    fsyncs of a create or start; when no disk is ready it works at once. A taken disk's device
    is held until the container starts, is removed, or ``hold`` seconds pass (a created
    container that is never started does not keep a loop device).
    """

    def __init__(self, directory: str, size: int = DEFAULT_SIZE, target: int = 2,
                 quiet: float = 0.010, hold: float = 60.0, attach_spares: bool = True) -> None:
        self.directory = directory
        self.size = size - size % BLOCK_SIZE
        self.target = target
        self.quiet = quiet
        self.hold = hold
        self.attach_spares = attach_spares
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready: list[Spare | str] = []        # Spare, or a path when not attached
        self._held: dict[str, Spare] = {}          # taken images whose device is still held
        self._last_busy = 0.0
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # What an earlier daemon left: half-written copies, trash, ready disks (their devices
        # went with that daemon's fds), templates of another size. The template stays.
        for name in os.listdir(directory):
            if name != f"template-{self.size}.img" and name != "skeleton":
                try:
                    os.unlink(os.path.join(directory, name))
                except IsADirectoryError:
                    shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
                except OSError:
                    pass
        with _POOLS_LOCK:
            _POOLS[os.path.realpath(directory)] = self

    # -- the start path ------------------------------------------------------------------------

    def busy(self) -> None:
        """A container operation is under way: keep the pool's I/O out of its way a moment."""
        self._last_busy = time.monotonic()

    def wake(self) -> None:
        """There is work for the thread (trash to delete, a disk to make)."""
        self._wake.set()

    def take(self, dest: str, size: int | None = None) -> None:
        """Put a formatted image of ``size`` bytes (default: the pool's) at ``dest``."""
        self.busy()
        size = self.size if size is None else size - size % BLOCK_SIZE
        if size != self.size:
            log.debug("sandbox disk pool: formatting a disk of %d bytes now", size)
            format_image(dest, size, self.directory)
            return
        with self._lock:
            spare = self._ready.pop(0) if self._ready else None
        self._wake.set()
        if spare is None:
            # Empty (a burst of creates): a copy of the template is ~2 ms, a mkfs ~12 ms.
            log.debug("sandbox disk pool: empty, copying the template now")
            clone_sparse(self.template(), dest, flush=False)
            return
        path = spare.path if isinstance(spare, Spare) else spare
        try:
            os.rename(path, dest)
        except OSError:
            if isinstance(spare, Spare):
                os.close(spare.fd)
            raise
        if isinstance(spare, Spare):
            spare.path, spare.since = dest, time.monotonic()
            with self._lock:
                self._held[dest] = spare

    def claim(self, image: str) -> Spare | None:
        """The attached device the pool holds for ``image`` (taken, not yet started), now the
        caller's: it mounts ``Spare.device`` and closes ``Spare.fd``."""
        with self._lock:
            spare = self._held.pop(image, None)
        if spare is None:
            return None
        try:
            with open(f"/sys/block/{os.path.basename(spare.device)}/loop/backing_file") as f:
                backing = f.read().rstrip("\n")
        except OSError:
            backing = ""
        if backing != os.path.realpath(image):   # cannot happen unless someone detached it
            os.close(spare.fd)
            return None
        return spare

    def holds(self, image: str) -> bool:
        with self._lock:
            return image in self._held

    def release(self, image: str) -> bool:
        """Let go of the device held for ``image`` (it detaches itself); True if there was one."""
        with self._lock:
            spare = self._held.pop(image, None)
        if spare is None:
            return False
        os.close(spare.fd)
        return True

    # -- the background work -------------------------------------------------------------------

    def ready(self) -> list[str]:
        """The ready disks' paths."""
        with self._lock:
            return [s.path if isinstance(s, Spare) else s for s in self._ready]

    def template(self) -> str:
        """The pool's ``blank.vhdx``: formatted once, then copied for every pool entry."""
        path = os.path.join(self.directory, f"template-{self.size}.img")
        if not os.path.exists(path):
            format_image(path, self.size, self.directory)
        return path

    def fill_one(self) -> None:
        """Copy, write back and attach one more ready disk."""
        path = os.path.join(self.directory, f"ready-{uuid.uuid4().hex[:12]}-{self.size}.img")
        clone_sparse(self.template(), path)
        entry: Spare | str = path
        if self.attach_spares:
            try:
                fd, dev = attach(path)
            except SiloboxError:
                os.unlink(path)
                raise
            _warm(path, fd)
            entry = Spare(path, dev, fd)
        with self._lock:
            self._ready.append(entry)

    def fill_once(self) -> int:
        """Fill the pool up to its target now; returns how many disks were made."""
        made = 0
        while len(self.ready()) < self.target and not self._stop.is_set():
            self.fill_one()
            made += 1
        return made

    def empty_trash(self) -> None:
        """Delete the images of removed containers (``discard`` only renames them here, so
        freeing a file's extents stays off the rm path)."""
        for name in self._trash():
            try:
                os.unlink(os.path.join(self.directory, name))
            except OSError:
                pass

    def _trash(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.directory) if n.startswith("trash-")]
        except FileNotFoundError:
            return []

    def _expire_held(self) -> None:
        now = time.monotonic()
        with self._lock:
            old = [k for k, s in self._held.items() if now - s.since > self.hold]
        for image in old:
            self.release(image)

    def work_once(self) -> bool:
        """One unit of background work in a quiet moment; False when there is nothing to do."""
        self._expire_held()
        trash = self._trash()
        needed = len(self.ready()) < self.target
        if not trash and not needed:
            return False
        if self.ready() or not needed:   # the start path is not waiting for a disk: wait
            idle = time.monotonic() - self._last_busy
            if idle < self.quiet:
                self._stop.wait(self.quiet - idle)
                return True
        if needed:
            self.fill_one()
        else:
            try:
                os.unlink(os.path.join(self.directory, trash[0]))
            except OSError:
                pass
        return True

    def start(self) -> None:
        """Begin filling in the background (a thread: its work is syscalls, nothing to await)."""
        if self._thread is not None:
            return

        def run() -> None:
            while not self._stop.is_set():
                try:
                    if self.work_once():
                        continue
                except Exception as e:  # keep serving: take() copies the template on demand
                    log.warning("sandbox disk pool: %s", e)
                    self._stop.wait(5)
                self._wake.wait(min(self.hold, 30.0))
                self._wake.clear()

        self._stop.clear()
        self._thread = threading.Thread(target=run, name="sandbox-disk-pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, detach every device the pool holds, delete the ready disks."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.clear()
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for spare in held:
            os.close(spare.fd)
        self.empty_trash()
        with _POOLS_LOCK:
            if _POOLS.get(os.path.realpath(self.directory)) is self:
                del _POOLS[os.path.realpath(self.directory)]

    def clear(self) -> None:
        """Drop the ready disks (their devices detach as their fds close)."""
        with self._lock:
            ready, self._ready = self._ready, []
        for entry in ready:
            if isinstance(entry, Spare):
                os.close(entry.fd)
                path = entry.path
            else:
                path = entry
            try:
                os.unlink(path)
            except OSError:
                pass
