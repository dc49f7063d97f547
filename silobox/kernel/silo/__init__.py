"""Silos: the namespaces and root filesystem of a container (Windows server silos, on Linux).

A Windows server silo gives its processes their own object-manager root, registry and network
compartment. On Linux the same isolation is a set of namespaces (mnt, uts, ipc, net, cgroup; pid
is entered by the shim) plus a private root filesystem reached with ``pivot_root``.

``SiloSpec`` is plain data built by the daemon; ``enter`` and ``build_rootfs`` run in the
container's first process between fork and exec, so they do nothing but syscalls and raise
``OSError`` (the spawn stage turns that into a typed message for the parent).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import struct
from dataclasses import dataclass, field

from silobox.kernel import libc
from silobox.kernel.silo.cgroupfs import mount_cgroupfs

# (name, type, major, minor, mode): what every container's /dev holds.
DEFAULT_DEVICES: tuple[tuple[str, str, int, int, int], ...] = (
    ("null", "c", 1, 3, 0o666), ("zero", "c", 1, 5, 0o666), ("full", "c", 1, 7, 0o666),
    ("random", "c", 1, 8, 0o666), ("urandom", "c", 1, 9, 0o666), ("tty", "c", 5, 0, 0o666),
)
DEV_SYMLINKS: tuple[tuple[str, str], ...] = (
    ("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"), ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"), ("pts/ptmx", "ptmx"),
)


@dataclass
class BindMount:
    """A host file or directory made visible inside the silo (HCS MappedDirectories)."""

    source: str
    target: str
    readonly: bool = False


@dataclass
class SiloSpec:
    """Everything the child needs to build the silo, resolved in the daemon."""

    rootfs: str                                   # mount point of the container's root
    lower_dirs: list[str] = field(default_factory=list)   # image layers, top first
    upper_dir: str = ""                           # sandbox upper/work; empty: rootfs is a plain dir
    work_dir: str = ""
    namespaces: list[str] = field(default_factory=lambda: ["mnt", "uts", "ipc", "net", "cgroup"])
    netns_path: str | None = None                 # join this network compartment instead of a new one
    hostname: str = ""
    domainname: str = ""
    binds: list[BindMount] = field(default_factory=list)
    masked_paths: list[str] = field(default_factory=list)
    readonly_paths: list[str] = field(default_factory=list)
    readonly_rootfs: bool = False
    privileged: bool = False
    shm_size: int = 64 * 1024 * 1024
    # tmpfs mounts: [target, mount flags, data] each (see tmpfs_options); JSON-friendly lists
    tmpfs: list = field(default_factory=list)
    # namespaced kernel parameters (net.*, IPC's kernel.* and fs.mqueue.*), checked by the daemon
    sysctls: dict = field(default_factory=dict)
    # host devices: [path inside, host path, "c"|"b", major, minor, mode, uid, gid] each
    devices: list = field(default_factory=list)
    # namespaces joined instead of unshared: {"ipc": "/proc/<pid>/ns/ipc"} (--ipc container:X)
    join: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "SiloSpec":
        d = dict(d)
        d["binds"] = [BindMount(**b) for b in d.get("binds", [])]
        return cls(**d)


_TMPFS_FLAGS = {"ro": (libc.MS_RDONLY, True), "rw": (libc.MS_RDONLY, False),
                "nosuid": (libc.MS_NOSUID, True), "suid": (libc.MS_NOSUID, False),
                "nodev": (libc.MS_NODEV, True), "dev": (libc.MS_NODEV, False),
                "noexec": (libc.MS_NOEXEC, True), "exec": (libc.MS_NOEXEC, False),
                "noatime": (libc.MS_NOATIME, True), "atime": (libc.MS_NOATIME, False),
                "strictatime": (libc.MS_STRICTATIME, True)}
_TMPFS_DATA = ("size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "huge", "mpol")
_PROPAGATION = ("private", "rprivate", "shared", "rshared", "slave", "rslave", "bind", "rbind")


def tmpfs_options(options: str, defaults: int = 0) -> tuple[int, str]:
    """Docker's tmpfs option string (``rw,noexec,size=64m,mode=1777``) → (flags, data).

    Runs in the daemon; a bad option is a ValueError naming it."""
    flags = defaults
    data = []
    for opt in (o.strip() for o in options.split(",")):
        if not opt or opt in _PROPAGATION:
            continue
        key, eq, _value = opt.partition("=")
        if not eq and key in _TMPFS_FLAGS:
            bit, on = _TMPFS_FLAGS[key]
            flags = flags | bit if on else flags & ~bit
        elif eq and key in _TMPFS_DATA:
            data.append(opt)
        else:
            raise ValueError(f"invalid tmpfs option {opt!r}")
    return flags, ",".join(data)


def namespace_flags(names: list[str]) -> int:
    flags = 0
    for n in names:
        flags |= libc.NAMESPACE_FLAGS[n]
    return flags


def enter(spec: SiloSpec) -> None:
    """Unshare the silo's namespaces (or join the given network compartment) and raise lo."""
    names = list(spec.namespaces)
    if spec.netns_path:
        fd = os.open(spec.netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(fd, libc.CLONE_NEWNET)
        finally:
            os.close(fd)
        names = [n for n in names if n != "net"]
    for name, path in spec.join.items():
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(fd, namespace_flags([name]))
        finally:
            os.close(fd)
        names = [n for n in names if n != name]
    libc.unshare(namespace_flags(names))
    if "net" in names:
        _loopback_up()


def set_sysctls(sysctls: dict) -> None:
    """Write the silo's sysctls once its namespaces exist: /proc/sys resolves a namespaced
    parameter (net.*, kernel.shm*, fs.mqueue.*) in the writer's own namespace, so the host's
    /proc still mounted here reaches the silo's copy (runc writes them the same way)."""
    for key, value in sysctls.items():
        fd = os.open("/proc/sys/" + key.replace(".", "/"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def _loopback_up() -> None:
    """A new network namespace starts with lo down; bring it up with one ioctl (no netlink)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | _IFF_UP))
    finally:
        s.close()


def _mkdirs(path: str, mode: int = 0o755) -> None:
    try:
        os.makedirs(path, mode, exist_ok=True)
    except FileExistsError:
        pass


def _ensure_target(target: str, is_dir: bool) -> None:
    """Create the mount point of a bind inside the rootfs (a file for a file, a dir for a dir)."""
    if os.path.lexists(target):
        return
    _mkdirs(os.path.dirname(target))
    if is_dir:
        os.mkdir(target, 0o755)
    else:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def _inside(root: str, path: str) -> str:
    """Resolve ``path`` (container-absolute) below ``root`` without following symlinks out of it."""
    parts = [p for p in path.split("/") if p and p != "."]
    cur = root
    for i, part in enumerate(parts):
        if part == "..":
            cur = os.path.dirname(cur) if cur != root else root
            continue
        nxt = os.path.join(cur, part)
        if os.path.islink(nxt):
            link = os.readlink(nxt)
            rest = "/".join(parts[i + 1:])
            base = link if link.startswith("/") else os.path.join(cur[len(root):] or "/", link)
            return _inside(root, os.path.join(base, rest))
        cur = nxt
    return cur


def _mount_dev(root: str, spec: SiloSpec) -> None:
    dev = os.path.join(root, "dev")
    _mkdirs(dev)
    libc.mount("tmpfs", dev, "tmpfs", libc.MS_NOSUID | libc.MS_STRICTATIME, "mode=755,size=65536k")
    old = os.umask(0)
    try:
        for name, kind, major, minor, mode in DEFAULT_DEVICES:
            os.mknod(os.path.join(dev, name), mode | (stat.S_IFCHR if kind == "c" else stat.S_IFBLK),
                     os.makedev(major, minor))
    finally:
        os.umask(old)
    for src, name in DEV_SYMLINKS:
        os.symlink(src, os.path.join(dev, name))
    for device in spec.devices:
        _add_device(root, *device)
    if os.path.exists("/proc/kcore"):
        os.symlink("/proc/kcore", os.path.join(dev, "core"))
    pts = os.path.join(dev, "pts")
    os.mkdir(pts, 0o755)
    libc.mount("devpts", pts, "devpts", libc.MS_NOSUID | libc.MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=0620,gid=5")
    shm = os.path.join(dev, "shm")
    os.mkdir(shm, 0o1777)
    libc.mount("shm", shm, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
               f"mode=1777,size={spec.shm_size}")
    mq = os.path.join(dev, "mqueue")
    os.mkdir(mq, 0o755)
    libc.mount("mqueue", mq, "mqueue", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)


def _add_device(root: str, inside: str, host: str, kind: str, major: int, minor: int,
                mode: int, uid: int, gid: int) -> None:
    """A host device in the silo: mknod where the job object allows it, else (no ``m`` in
    its rule) a bind mount of the host's node, as runc falls back to."""
    target = _inside(root, inside)
    _mkdirs(os.path.dirname(target))
    if os.path.lexists(target):
        os.unlink(target)
    old = os.umask(0)
    try:
        os.mknod(target, mode | (stat.S_IFCHR if kind == "c" else stat.S_IFBLK),
                 os.makedev(major, minor))
        os.chown(target, uid, gid)
    except PermissionError:
        fd = os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        os.close(fd)
        libc.mount(host, target, None, libc.MS_BIND)
    finally:
        os.umask(old)


def build_rootfs(spec: SiloSpec) -> None:
    """Mount the root filesystem, /proc, /sys, /dev and binds, then ``pivot_root`` into it.

    Everything is mounted inside the silo's own mount namespace, so when the last process of the
    container exits the kernel tears the mounts down and nothing is left on the host.
    """
    root = spec.rootfs
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    if spec.upper_dir:
        opts = (f"lowerdir={':'.join(spec.lower_dirs)},upperdir={spec.upper_dir},"
                f"workdir={spec.work_dir}")
        libc.mount("overlay", root, "overlay", 0, opts)
    elif spec.lower_dirs and len(spec.lower_dirs) > 1:
        libc.mount("overlay", root, "overlay", 0, f"lowerdir={':'.join(spec.lower_dirs)}")
    else:
        src = spec.lower_dirs[0] if spec.lower_dirs else root
        libc.mount(src, root, None, libc.MS_BIND | libc.MS_REC)

    proc = os.path.join(root, "proc")
    _mkdirs(proc)
    libc.mount("proc", proc, "proc", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
    sys_dir = os.path.join(root, "sys")
    _mkdirs(sys_dir)
    sys_flags = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    if not spec.privileged:
        sys_flags |= libc.MS_RDONLY
    try:
        libc.mount("sysfs", sys_dir, "sysfs", sys_flags)
    except OSError as e:
        # Sharing the host's network namespace forbids a new sysfs instance: bind the host's.
        if e.errno not in (errno.EPERM, errno.EBUSY):
            raise
        libc.mount("/sys", sys_dir, None, libc.MS_BIND | libc.MS_REC)
        if not spec.privileged:
            libc.mount(None, sys_dir, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | sys_flags)
    _mount_dev(root, spec)
    mount_cgroupfs(root, "cgroup" in spec.namespaces or "cgroup" in spec.join, spec.privileged)

    # Binds and tmpfs mounts together, parents before what is mounted inside them.
    mounts: list = [*spec.binds, *spec.tmpfs]
    mounts.sort(key=lambda m: len([p for p in (m.target if isinstance(m, BindMount)
                                               else m[0]).split("/") if p]))
    for m in mounts:
        if not isinstance(m, BindMount):
            target = _inside(root, m[0])
            _ensure_target(target, True)
            libc.mount("tmpfs", target, "tmpfs", int(m[1]), m[2] or None)
            continue
        target = _inside(root, m.target)
        is_dir = os.path.isdir(m.source)
        _ensure_target(target, is_dir)
        libc.mount(m.source, target, None, libc.MS_BIND | libc.MS_REC)
        if m.readonly:
            libc.mount(None, target, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY)

    os.chdir(root)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")

    if not spec.privileged:
        for path in spec.masked_paths:
            _mask(path)
        for path in spec.readonly_paths:
            _readonly(path)
    if spec.readonly_rootfs:
        libc.mount(None, "/", None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY)
    if spec.hostname and "uts" in spec.namespaces:
        libc.sethostname(spec.hostname)
    if spec.domainname and "uts" in spec.namespaces:
        libc.setdomainname(spec.domainname)


def _mask(path: str) -> None:
    """Hide a path: /dev/null over a file, an empty read-only tmpfs over a directory."""
    try:
        st = os.stat(path)
    except OSError:
        return  # absent on this kernel (e.g. /proc/kcore): nothing to hide
    if stat.S_ISDIR(st.st_mode):
        libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY, None)
    else:
        libc.mount("/dev/null", path, None, libc.MS_BIND)


def _readonly(path: str) -> None:
    if not os.path.exists(path):
        return
    libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
    libc.mount(None, path, None,
               libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV
               | libc.MS_NOEXEC)
