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

from silobox.kernel import libc, overlay
from silobox.kernel.saferoot import SafeRoot
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
    propagation: str = ""          # Docker's words: "" and rprivate, private, rslave, rshared...


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
BIND_PROPAGATION = {"": libc.MS_PRIVATE | libc.MS_REC, "rprivate": libc.MS_PRIVATE | libc.MS_REC,
                    "private": libc.MS_PRIVATE, "rslave": libc.MS_SLAVE | libc.MS_REC,
                    "slave": libc.MS_SLAVE, "rshared": libc.MS_SHARED | libc.MS_REC,
                    "shared": libc.MS_SHARED}
"""A bind's propagation (``-v src:dst:rslave``, CRI's HOST_TO_CONTAINER = rslave and
BIDIRECTIONAL = rshared) → the flags that set it on the container's copy."""


def mount_of(path: str) -> tuple[str, set[str]]:
    """The mount point holding ``path`` on this host and its propagation tags (``shared``,
    ``master``; none for a private mount), from mountinfo: the last mount at the longest
    mount point that is a prefix of the path wins (a later mount hides an earlier one)."""
    from silobox.kernel.features import _unescape
    real = os.path.realpath(path)
    best, tags = "/", set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" - ", 1)[0].split()
            point = _unescape(fields[4])
            if real == point or real.startswith(point.rstrip("/") + "/"):
                if len(point) >= len(best):
                    best = point
                    tags = {t.split(":")[0] for t in fields[6:]}
    return best, tags


def root_propagation(binds: list["BindMount"]) -> int:
    """What the silo's copy of the host's mounts starts as: private unless a bind has to stay
    linked to the host (a shared bind joins its source's peer group only if the copies are
    still peers; a slave one needs them to be at least slaves)."""
    props = {b.propagation for b in binds}
    if props & {"shared", "rshared"}:
        return libc.MS_SHARED
    if props & {"slave", "rslave"}:
        return libc.MS_SLAVE
    return libc.MS_PRIVATE


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


_NULL_DEVICE = os.makedev(1, 3)


def _remount(root: SafeRoot, rel: str, source_st: os.stat_result, flags: int) -> None:
    """Change the flags of the mount just made at ``rel``: a bind takes none at first. The
    mount's root is opened afresh and must be the source that was bound."""
    fd = root.open(rel, os.O_PATH)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (source_st.st_dev, source_st.st_ino):
            raise OSError(errno.EXDEV, f"{rel}: changed while it was mounted")
        libc.mount(None, root.mount_path(fd), None, libc.MS_BIND | libc.MS_REMOUNT | flags)
    finally:
        os.close(fd)


def _mount_dev(root: SafeRoot, spec: SiloSpec) -> int:
    """A fresh tmpfs on /dev with the default nodes; returns an O_PATH fd of its ``null``,
    kept to mask paths with later (whatever is mounted over /dev afterwards)."""
    target = root.open_dir("dev", create=True, follow=False)
    try:
        libc.mount("tmpfs", root.mount_path(target), "tmpfs",
                   libc.MS_NOSUID | libc.MS_STRICTATIME, "mode=755,size=65536k")
    finally:
        os.close(target)
    dev = root.open_dir("dev", follow=False)   # the new tmpfs: empty, nothing of the image
    try:
        old = os.umask(0)
        try:
            for name, kind, major, minor, mode in DEFAULT_DEVICES:
                os.mknod(name, mode | (stat.S_IFCHR if kind == "c" else stat.S_IFBLK),
                         os.makedev(major, minor), dir_fd=dev)
        finally:
            os.umask(old)
        null = os.open("null", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dev)
        for src, name in DEV_SYMLINKS:
            os.symlink(src, name, dir_fd=dev)
        for device in spec.devices:
            _add_device(root, *device)
        if os.path.exists("/proc/kcore"):
            os.symlink("/proc/kcore", "core", dir_fd=dev)
        for name, mode, fstype, flags, data in (
                ("pts", 0o755, "devpts", libc.MS_NOSUID | libc.MS_NOEXEC,
                 "newinstance,ptmxmode=0666,mode=0620,gid=5"),
                ("shm", 0o1777, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
                 f"mode=1777,size={spec.shm_size}"),
                ("mqueue", 0o755, "mqueue", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
                 None)):
            os.mkdir(name, mode, dir_fd=dev)
            fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=dev)
            try:
                libc.mount(name if name != "pts" else "devpts", root.mount_path(fd), fstype,
                           flags, data)
            finally:
                os.close(fd)
    finally:
        os.close(dev)
    return null


def _add_device(root: SafeRoot, inside: str, host: str, kind: str, major: int, minor: int,
                mode: int, uid: int, gid: int) -> None:
    """A host device in the silo: mknod where the job object allows it, else (no ``m`` in
    its rule) a bind mount of the host's node, as runc falls back to."""
    parent, name = root.parent(inside, create=True)
    try:
        try:
            os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        old = os.umask(0)
        try:
            os.mknod(name, mode | (stat.S_IFCHR if kind == "c" else stat.S_IFBLK),
                     os.makedev(major, minor), dir_fd=parent)
            os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
        except PermissionError:
            fd = os.open(name, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=parent)
            os.close(fd)
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                libc.mount(host, root.mount_path(fd), None, libc.MS_BIND)
            finally:
                os.close(fd)
        finally:
            os.umask(old)
    finally:
        os.close(parent)


def build_rootfs(spec: SiloSpec) -> None:
    """Mount the root filesystem, /proc, /sys, /dev and binds, then ``pivot_root`` into it.

    Everything is mounted inside the silo's own mount namespace, so when the last process of the
    container exits the kernel tears the mounts down and nothing is left on the host. Every
    target inside the rootfs is the image's to shape (a symlink, a planted file): each is opened
    inside the rootfs (:class:`SafeRoot`) and mounted onto through its fd.
    """
    root_flag = root_propagation(spec.binds)
    libc.mount(None, "/", None, libc.MS_REC | root_flag)
    if root_flag == libc.MS_SHARED:
        # Everything mounted from here on must stay in the silo: the mount holding the rootfs
        # is made private (pivot_root refuses a shared parent anyway), so the root, /proc,
        # /dev... are private; only the shared binds, peers of their sources, reach the host.
        libc.mount(None, mount_of(spec.rootfs)[0], None, libc.MS_PRIVATE)
    if spec.upper_dir:
        libc.mount("overlay", spec.rootfs, "overlay", 0,
                   overlay.options(spec.lower_dirs, spec.upper_dir, spec.work_dir))
    elif spec.lower_dirs and len(spec.lower_dirs) > 1:
        libc.mount("overlay", spec.rootfs, "overlay", 0, overlay.options(spec.lower_dirs))
    else:
        src = spec.lower_dirs[0] if spec.lower_dirs else spec.rootfs
        libc.mount(src, spec.rootfs, None, libc.MS_BIND | libc.MS_REC)

    with SafeRoot(spec.rootfs) as root:
        null = _build_tree(root, spec)
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC) \
        if root_flag == libc.MS_SHARED else -1
    try:
        os.chdir(spec.rootfs)
        libc.pivot_root(".", ".")
        if old_root >= 0:
            # the old root's mounts are peers of the host's: detaching them would unmount the
            # host's too. Made slaves (from the old root itself, stacked on ".") they send
            # nothing.
            os.fchdir(old_root)
            libc.mount(None, ".", None, libc.MS_SLAVE | libc.MS_REC)
        libc.umount2(".", libc.MNT_DETACH)
        os.chdir("/")
        if not spec.privileged:
            with SafeRoot("/") as root:
                for path in spec.masked_paths:
                    _mask(root, path, null)
                for path in spec.readonly_paths:
                    _readonly(root, path)
    finally:
        os.close(null)
        if old_root >= 0:
            os.close(old_root)
    if spec.readonly_rootfs:
        libc.mount(None, "/", None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY)
    own_uts = "uts" in spec.namespaces and "uts" not in spec.join   # a joined one is set
    if spec.hostname and own_uts:
        libc.sethostname(spec.hostname)
    if spec.domainname and own_uts:
        libc.setdomainname(spec.domainname)


def _build_tree(root: SafeRoot, spec: SiloSpec) -> int:
    """/proc, /sys, /dev, then binds and tmpfs mounts, all onto fds resolved in ``root``.
    Returns an O_PATH fd of the silo's own /dev/null, for masking after ``pivot_root``."""
    # /proc, /sys and /dev must be the rootfs' own directories, not links elsewhere in it:
    # procfs mounted where an image link points could be hidden under another mount and
    # escape its masks and read-only paths (runc refuses the same)
    proc = root.open_dir("proc", create=True, follow=False)
    try:
        libc.mount("proc", root.mount_path(proc), "proc",
                   libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
    finally:
        os.close(proc)
    sys_fd = root.open_dir("sys", create=True, follow=False)
    sys_flags = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    if not spec.privileged:
        sys_flags |= libc.MS_RDONLY
    try:
        libc.mount("sysfs", root.mount_path(sys_fd), "sysfs", sys_flags)
    except OSError as e:
        # Sharing the host's network namespace forbids a new sysfs instance: bind the host's.
        if e.errno not in (errno.EPERM, errno.EBUSY):
            raise
        libc.mount("/sys", root.mount_path(sys_fd), None, libc.MS_BIND | libc.MS_REC)
        # the host's copy may still be a peer of the host's /sys (a silo with a shared bind):
        # what is mounted below it here (the cgroup view) must not reach the host
        libc.mount(None, root.mount_path(sys_fd), None, libc.MS_PRIVATE | libc.MS_REC)
        if not spec.privileged:
            _remount(root, "sys", os.stat("/sys"), libc.MS_RDONLY | sys_flags)
    finally:
        os.close(sys_fd)
    null = _mount_dev(root, spec)
    # /sys is the sysfs mounted just above, so the view's path is the kernel's, not the image's
    mount_cgroupfs(spec.rootfs, "cgroup" in spec.namespaces or "cgroup" in spec.join,
                   spec.privileged)

    # Binds and tmpfs mounts together, parents before what is mounted inside them.
    linked = root_propagation(spec.binds) != libc.MS_PRIVATE
    mounts: list = [*spec.binds, *spec.tmpfs]
    mounts.sort(key=lambda m: len([p for p in (m.target if isinstance(m, BindMount)
                                               else m[0]).split("/") if p]))
    for m in mounts:
        if not isinstance(m, BindMount):
            target = root.make(m[0], True)
            try:
                libc.mount("tmpfs", root.mount_path(target), "tmpfs", int(m[1]), m[2] or None)
            finally:
                os.close(target)
            continue
        source = os.open(m.source, os.O_PATH | os.O_CLOEXEC)
        try:
            source_st = os.fstat(source)
            target = root.make(m.target, stat.S_ISDIR(source_st.st_mode))
            try:
                libc.mount(f"/proc/self/fd/{source}", root.mount_path(target), None,
                           libc.MS_BIND | libc.MS_REC)
            finally:
                os.close(target)
        finally:
            os.close(source)
        if m.readonly:
            _remount(root, m.target, source_st, libc.MS_RDONLY)
        if linked:
            _propagate(root, m.target, BIND_PROPAGATION[m.propagation])
    return null


def _propagate(root: SafeRoot, rel: str, flags: int) -> None:
    """Set the propagation of the bind just made at ``rel`` (every bind, also a private one:
    in a silo with a shared bind the copies start shared)."""
    fd = root.open(rel, os.O_PATH)
    try:
        libc.mount(None, root.mount_path(fd), None, flags)
    finally:
        os.close(fd)


def make_workdir(path: str) -> None:
    """Make the working directory (the image's WORKDIR: untrusted) inside the entered root,
    its links followed inside it only, and check that the path the process will ``chdir`` to
    names that same directory: a ``--pid host`` container's ``/proc/1/root/...`` would lead
    to the host's root instead."""
    with SafeRoot("/") as root:
        fd = root.make(path, True)
    try:
        made = os.fstat(fd)
    finally:
        os.close(fd)
    plain = os.stat(path)
    if (plain.st_dev, plain.st_ino) != (made.st_dev, made.st_ino):
        raise OSError(errno.ELOOP, f"working directory {path} leads outside the container")


def _mask(root: SafeRoot, path: str, null: int) -> None:
    """Hide a path: the silo's own /dev/null over a file, an empty read-only tmpfs over a
    directory. The null is checked to be the null character device (1:3) before it is
    bound: a regular file or a link to a host file there would make the mask a window."""
    try:
        fd = root.open(path, os.O_PATH, follow=False)
    except FileNotFoundError:
        return  # absent on this kernel (e.g. /proc/kcore): nothing to hide
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            libc.mount("tmpfs", root.mount_path(fd), "tmpfs", libc.MS_RDONLY, None)
            return
        null_st = os.fstat(null)
        if not stat.S_ISCHR(null_st.st_mode) or null_st.st_rdev != _NULL_DEVICE:
            raise OSError(errno.EPERM, f"cannot mask {path}: /dev/null is not the null device")
        libc.mount(f"/proc/self/fd/{null}", root.mount_path(fd), None, libc.MS_BIND)
    finally:
        os.close(fd)


def _readonly(root: SafeRoot, path: str) -> None:
    try:
        fd = root.open(path, os.O_PATH, follow=False)
    except FileNotFoundError:
        return
    try:
        st = os.fstat(fd)
        libc.mount(root.mount_path(fd), root.mount_path(fd), None, libc.MS_BIND | libc.MS_REC)
    finally:
        os.close(fd)
    _remount(root, path, st, libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
