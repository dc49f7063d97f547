"""A container's changes and file trees as tar streams (wclayer ExportLayer and the cp/export side).

Windows produces a layer from a scratch disk by walking its changes (``NewLayerReader``, deletions
as tombstones). Here the scratch is an overlay upper directory: a deleted entry is a 0:0
character device, a directory whose lower contents are hidden carries ``trusted.overlay.opaque``.
This module turns such a tree into an OCI layer tar (``.wh.<name>`` and ``.wh..wh..opq``), lists
the changes Docker's ``GET /containers/{id}/changes`` reports, and writes and reads plain trees
for ``export`` and ``cp``. Tar headers are built from ``lstat`` only: no user database is read
(the tree may be a container's, and its NSS modules must never be loaded into the daemon).

Run as ``python -m silobox.storage.changes`` it is the helper that does ``cp`` and ``export``
inside a container's root: it chroots into the container's view (a running container's
``/proc/<pid>/root``, or a private overlay mount of a stopped one) so no symlink can lead out.
"""

from __future__ import annotations

import base64
import datetime
import errno
import json
import os
import stat
import sys
import tarfile
from typing import BinaryIO, Iterable, Iterator, NamedTuple, Union

from silobox.kernel.saferoot import SafeRoot

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
KIND_MODIFIED, KIND_ADDED, KIND_DELETED = 0, 1, 2
_CHUNK = 1 << 20
_BLOCK = 512

# What the runtime puts in every container's root (Docker's "init" layer): not the user's change.
INIT_PATHS = frozenset({"etc/hosts", "etc/hostname", "etc/resolv.conf", "etc/mtab", "dev",
                        "proc", "sys", ".dockerenv", "sbin/docker-init"})


def is_whiteout(st: os.stat_result) -> bool:
    """Overlay's mark of a deleted entry: a 0/0 character device."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class TreeFile(NamedTuple):
    """An entry of an untrusted tree: its name, resolved inside the tree whenever it is read
    (:class:`SafeRoot`), so nothing swapped in it meanwhile can lead outside the tree."""

    tree: SafeRoot
    rel: str


Source = Union[TreeFile, str]   # a str: a path of ours (image layer trees, downloads)


def _getxattr(src: Source, key: str) -> bytes:
    if isinstance(src, TreeFile):
        return src.tree.getxattr(src.rel, key)
    return os.getxattr(src, key, follow_symlinks=False)


def _listxattr(src: Source) -> list[str]:
    if isinstance(src, TreeFile):
        return src.tree.listxattr(src.rel)
    return os.listxattr(src, follow_symlinks=False)


def xattr_names_of(src: Source) -> list[str]:
    """The entry's own xattr names ([] where it has none or cannot have any)."""
    try:
        return _listxattr(src)
    except OSError:
        return []


def read_link(src: Source) -> str:
    return src.tree.readlink(src.rel) if isinstance(src, TreeFile) else os.readlink(src)


def is_opaque(path: Source, names: list[str] | None = None) -> bool:
    """Whether overlay hides the lower copies of this directory (its opaque xattr is set);
    ``names``: its xattr names if listed already (one lookup, not one per name)."""
    for name in OPAQUE_XATTRS:
        if names is not None and name not in names:
            continue
        try:
            if _getxattr(path, name) == b"y":
                return True
        except OSError:
            continue
    return False


def is_init_path(rel: str) -> bool:
    """Whether ``rel`` is something the runtime put in the container's root (INIT_PATHS and
    the contents of /dev, /proc, /sys), not a change of the user's."""
    return rel in INIT_PATHS or rel.startswith(("dev/", "proc/", "sys/"))


# -- tar writing -------------------------------------------------------------------------------


class TarWriter:
    """Builds a tar stream entry by entry from ``lstat`` results (PAX format, like Docker)."""

    def __init__(self) -> None:
        self._links: dict[tuple[int, int], str] = {}

    def header(self, name: str, st: os.stat_result, path: Source | None,
               xattrs: bool = True, xattr_names: list[str] | None = None,
               xattr_fd: int | None = None) -> tuple[tarfile.TarInfo, bool]:
        """The entry for ``name``; the flag says whether file content follows
        (``xattr_names``: the entry's xattr names when the caller listed them already)."""
        info = tarfile.TarInfo(name)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = int(st.st_mtime)
        content = False
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            if not info.name.endswith("/"):
                info.name += "/"
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = read_link(path) if path else ""
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self._links:
                info.type = tarfile.LNKTYPE
                info.linkname = self._links[key]
            else:
                if st.st_nlink > 1:
                    self._links[key] = name
                info.type = tarfile.REGTYPE
                info.size = st.st_size
                content = True
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        else:
            raise ValueError(f"{name}: sockets cannot be archived")
        if xattrs and path is not None:
            names = xattr_names if xattr_names is not None else xattr_names_of(path)
            for key in names:
                if key.startswith(("trusted.overlay.", "user.overlay.")):
                    continue
                try:
                    value = os.getxattr(xattr_fd, key) if xattr_fd is not None and \
                        xattr_fd >= 0 else _getxattr(path, key)
                except OSError:
                    continue
                info.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
        return info, content

    def prepare(self, name: str, st: os.stat_result, path: Source,
                xattr_names: list[str] | None = None
                ) -> tuple[tarfile.TarInfo, int | None, list[str]]:
        """(header, fd of the content or None, xattr names) of one entry of a tree.

        A regular file of an untrusted tree is opened once (:func:`open_regular`) and its
        xattrs and content read through that fd; the fd is -1 when the entry is no longer the
        file walked (its content is then zeros). Raises before anything is written when the
        entry cannot be archived (ValueError: a socket) or is gone (OSError)."""
        fd: int | None = None
        if stat.S_ISREG(st.st_mode) and isinstance(path, TreeFile):
            fd = open_regular(path, st)
            if xattr_names is None:
                try:
                    xattr_names = os.listxattr(fd) if fd >= 0 else []
                except OSError:
                    xattr_names = []
        elif xattr_names is None:
            xattr_names = xattr_names_of(path)
        try:
            info, content = self.header(name, st, path, xattr_names=xattr_names, xattr_fd=fd)
            if content and fd is None:
                fd = open_regular(path, st)
        except BaseException:
            if fd is not None and fd >= 0:
                os.close(fd)
            raise
        if not content and fd is not None:
            if fd >= 0:
                os.close(fd)
            fd = None
        return info, fd, xattr_names

    def member(self, info: tarfile.TarInfo, fd: int | None) -> Iterator[bytes]:
        """What :meth:`prepare` made, as tar bytes: the header, then any content."""
        yield self.entry(info)
        if fd is not None:
            yield from _read_all(fd, info.size)
            if info.size % _BLOCK:
                yield bytes(_BLOCK - info.size % _BLOCK)

    def entry(self, info: tarfile.TarInfo) -> bytes:
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def file(self, info: tarfile.TarInfo, path: Source,
             st: os.stat_result | None = None) -> Iterator[bytes]:
        """The header, the content (exactly ``info.size`` bytes) and the padding.

        An entry of an untrusted tree is opened without following it and read only if it is
        still the regular file ``st`` that was walked (else zeros: the header promised a size);
        a fifo or device swapped in meanwhile is never opened for reading."""
        yield self.entry(info)
        yield from _read_all(open_regular(path, st), info.size)
        if info.size % _BLOCK:
            yield bytes(_BLOCK - info.size % _BLOCK)

    @staticmethod
    def end() -> bytes:
        return bytes(2 * _BLOCK * 5)   # two zero blocks, padded to a 10 KiB record


def open_regular(path: Source, st: os.stat_result | None) -> int:
    """A readable fd of the regular file at ``path``, or -1 if it is not that file any more."""
    if not isinstance(path, TreeFile):
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        ref = path.tree.open(path.rel, os.O_PATH, follow=False)
    except OSError:
        return -1
    try:
        now = os.fstat(ref)
        if not stat.S_ISREG(now.st_mode) or (st is not None and (now.st_dev, now.st_ino) !=
                                             (st.st_dev, st.st_ino)):
            return -1
        # reopened through procfs: exactly this inode, never a path lookup again
        return os.open(f"/proc/self/fd/{ref}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:   # unreadable (a write-only kernel file): archived as zeros, as it shrank
        return -1
    finally:
        os.close(ref)


def _read_all(fd: int, left: int) -> Iterator[bytes]:
    try:
        while left > 0:
            try:
                chunk = os.read(fd, min(left, _CHUNK)) if fd >= 0 else b""
            except OSError:
                chunk = b""
            if not chunk:   # the file shrank while read: pad, the header promised the size
                chunk = bytes(min(left, _CHUNK))
            left -= len(chunk)
            yield chunk
    finally:
        if fd >= 0:
            os.close(fd)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def walk_tree(tree: SafeRoot, one_fs: bool = False, under: str = ""
              ) -> Iterator[tuple[str, TreeFile, os.stat_result]]:
    """(relative name, entry, lstat) for everything under ``tree`` (or its directory ``under``,
    names then relative to it), sorted, never following.

    Each directory is listed through its own fd, opened inside ``tree`` with no symlink allowed
    anywhere on its path (openat2 ``RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS``): a running
    container that swaps a directory for a symlink while we walk makes that subtree vanish
    from the walk, never leads it elsewhere. One directory fd is open at a time, however wide
    or deep the tree; reads of an entry resolve it inside ``tree`` again.
    """
    prefix = under.strip("/") + "/" if under.strip("/") else ""
    top = tree.open(under, os.O_RDONLY | os.O_DIRECTORY, follow=not under)
    root_dev = os.fstat(top).st_dev
    stack: list[tuple[str, int | None]] = [("", top)]
    while stack:
        rel_dir, fd = stack.pop()
        if fd is None:
            try:
                fd = tree.open(prefix + rel_dir, _DIR_FLAGS, follow=False, symlinks=False)
            except OSError:
                continue   # gone, swapped for a link meanwhile, or beyond PATH_MAX
        subdirs: list[str] = []
        try:
            try:
                with os.scandir(fd) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:   # gone meanwhile, or a kernel directory that refuses us
                entries = []
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                yield rel, TreeFile(tree, prefix + rel), st
                # one_fs: /proc, /sys, /dev and volumes are other filesystems, listed but not
                # entered (overlay reports its own device for directories only)
                if stat.S_ISDIR(st.st_mode) and not (one_fs and st.st_dev != root_dev):
                    subdirs.append(rel)
        finally:
            os.close(fd)
        stack.extend((sub, None) for sub in reversed(subdirs))


def tree_bytes(root: str, hard_links_once: bool = True) -> int:
    """The apparent size of everything but directories under ``root`` (a tree a container
    writes to: walked through directory fds, so a swapped-in link never leads elsewhere)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    try:
        tree = SafeRoot(root)
    except FileNotFoundError:
        return 0
    with tree:
        for _rel, _src, st in walk_tree(tree):
            if stat.S_ISDIR(st.st_mode):
                continue
            if hard_links_once and st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def tar_overlay_dir(root: str | SafeRoot, skip_init: bool = False) -> Iterator[bytes]:
    """An overlay upper (or layer) directory as an OCI layer tar (see :func:`layer_tar`)."""
    tree = SafeRoot(root) if isinstance(root, str) else root
    try:
        yield from layer_tar((rel, path, st) for rel, path, st in walk_tree(tree)
                             if not (skip_init and is_init_path(rel)))
    finally:
        if tree is not root:
            tree.close()


def layer_tar(entries: Iterable[tuple[str, Source, os.stat_result]]) -> Iterator[bytes]:
    """Entries of an overlay tree (as :func:`walk_tree` yields them) as an OCI layer tar:
    whiteouts become ``.wh.`` entries and opaque directories get a ``.wh..wh..opq`` entry after
    their own. Shared by ``commit``/``diff`` and the builder's RUN layers, which choose the
    entries but must encode them the same way."""
    writer = TarWriter()
    for rel, path, st in entries:
        parent, _, base = rel.rpartition("/")
        if is_whiteout(st):
            info = tarfile.TarInfo(f"{parent}/{WHITEOUT_PREFIX}{base}" if parent
                                   else f"{WHITEOUT_PREFIX}{base}")
            info.mtime = int(st.st_mtime)
            info.uname = info.gname = ""
            yield writer.entry(info)
            continue
        try:
            info, fd, names = writer.prepare(rel, st, path)
        except FileNotFoundError:
            continue   # removed by the running container since it was listed
        try:
            _check_self_contained(names, rel)
        except BaseException:
            if fd is not None and fd >= 0:
                os.close(fd)
            raise
        yield from writer.member(info, fd)
        if stat.S_ISDIR(st.st_mode) and is_opaque(path, names):
            marker = tarfile.TarInfo(f"{rel}/{OPAQUE_MARKER}")
            marker.mtime = int(st.st_mtime)
            marker.uname = marker.gname = ""
            yield writer.entry(marker)
    yield writer.end()


def _check_self_contained(names: list[str], rel: str) -> None:
    """An upper dir written with overlay's redirect_dir or metacopy features holds references
    into the lower layers instead of the data; such a tree cannot become a layer by itself."""
    for name in ("trusted.overlay.redirect", "trusted.overlay.metacopy"):
        if name not in names:
            continue
        raise ValueError(f"{rel}: the overlay wrote it with {name.rsplit('.', 1)[1]} "
                         "(redirect_dir/metacopy are on): it cannot be made into a layer; "
                         "mount container roots with redirect_dir=off,metacopy=off")


def open_entry(tree: SafeRoot, rel: str) -> tuple[SafeRoot, str, os.stat_result]:
    """``rel`` of ``tree`` (symlinks on the way followed inside the tree, the last one not) as
    (a tree holding it, its name there, its lstat): a directory becomes a tree of its own
    (name ""), opened without following, so a later swap of a parent changes nothing."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts:
        fd = tree.open("", os.O_RDONLY | os.O_DIRECTORY)
    else:
        pfd, name = tree.parent(rel)
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                return SafeRoot(pfd), name, st
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        finally:
            os.close(pfd)
    try:
        return SafeRoot(fd), "", os.fstat(fd)
    finally:
        os.close(fd)


def tar_path(tree: SafeRoot, rel: str, name: str, one_fs: bool = False) -> Iterator[bytes]:
    """A plain tree (``export``, ``cp`` from a container): ``rel`` of ``tree`` archived as
    ``name`` (empty ``name``: its contents at the top, Docker's ``path/.``)."""
    writer = TarWriter()
    top, last, st = open_entry(tree, rel)
    with top:
        src = TreeFile(top, last)
        if name:
            info, fd, _ = writer.prepare(name, st, src)
            yield from writer.member(info, fd)
        if stat.S_ISDIR(st.st_mode):
            for sub_rel, sub, sub_st in walk_tree(top, one_fs):
                full = f"{name}/{sub_rel}" if name else sub_rel
                if one_fs and not stat.S_ISDIR(sub_st.st_mode) and sub_rel in INIT_PATHS:
                    continue   # the runtime's bind-mounted files (hosts, resolv.conf)
                try:
                    info, fd, _ = writer.prepare(full, sub_st, sub)
                except (ValueError, OSError):
                    continue   # a socket; gone since it was listed; a kernel file we may
                    # not read the link of (/proc/self, /proc/1/exe)
                yield from writer.member(info, fd)
    yield writer.end()


# -- changes -----------------------------------------------------------------------------------


def list_changes(upper: str, lower_dirs: list[str]) -> list[dict[str, object]]:
    """Docker's change list of a container: ``{"Path": "/x", "Kind": 0|1|2}``, sorted by path.

    A whiteout is a deletion; an entry that exists in some lower layer is a modification (a
    directory shows as modified when something below it changed, as in Docker); anything else
    was added.
    """
    out: list[dict[str, object]] = []
    lowers = [SafeRoot(lower) for lower in lower_dirs]
    try:
        with SafeRoot(upper) as tree:
            for rel, _path, st in walk_tree(tree):
                if is_init_path(rel):
                    continue
                if is_whiteout(st):
                    kind = KIND_DELETED
                elif any(_in_layer(lower, rel) for lower in lowers):
                    kind = KIND_MODIFIED
                else:
                    kind = KIND_ADDED
                out.append({"Path": "/" + rel, "Kind": kind, "dir": stat.S_ISDIR(st.st_mode)})
    finally:
        for lower in lowers:
            lower.close()
    # A directory the container did not touch itself shows up in upper only because the
    # runtime put its mount points there (/etc/hosts…): report it when something under it is.
    below: set[str] = set()
    for c in out:
        if not (c["dir"] and c["Kind"] == KIND_MODIFIED):
            path = str(c["Path"])
            while (path := path.rpartition("/")[0]) and path not in below:
                below.add(path)
    kept = [c for c in out if not (c["dir"] and c["Kind"] == KIND_MODIFIED)
            or c["Path"] in below]
    kept.sort(key=lambda c: str(c["Path"]))
    return [{"Path": c["Path"], "Kind": c["Kind"]} for c in kept]


def _in_layer(layer: SafeRoot, rel: str) -> bool:
    """Whether a layer tree holds ``rel`` as overlay sees it: through directories, never
    through a symlink of the layer's."""
    try:
        os.close(layer.open(rel, os.O_PATH, follow=False, symlinks=False))
        return True
    except OSError:
        return False


# -- cp: stat header ---------------------------------------------------------------------------

_GO_DIR, _GO_SYMLINK, _GO_DEVICE, _GO_PIPE = 1 << 31, 1 << 27, 1 << 26, 1 << 25
_GO_SOCKET, _GO_SETUID, _GO_SETGID, _GO_CHARDEV, _GO_STICKY = 1 << 24, 1 << 23, 1 << 22, \
    1 << 21, 1 << 20


def go_file_mode(mode: int) -> int:
    """A Unix mode as Go's ``os.FileMode`` bits, which ``X-Docker-Container-Path-Stat`` uses."""
    out = stat.S_IMODE(mode) & 0o777
    if stat.S_ISDIR(mode):
        out |= _GO_DIR
    elif stat.S_ISLNK(mode):
        out |= _GO_SYMLINK
    elif stat.S_ISBLK(mode):
        out |= _GO_DEVICE
    elif stat.S_ISCHR(mode):
        out |= _GO_DEVICE | _GO_CHARDEV
    elif stat.S_ISFIFO(mode):
        out |= _GO_PIPE
    elif stat.S_ISSOCK(mode):
        out |= _GO_SOCKET
    if mode & stat.S_ISUID:
        out |= _GO_SETUID
    if mode & stat.S_ISGID:
        out |= _GO_SETGID
    if mode & stat.S_ISVTX:
        out |= _GO_STICKY
    return out


def path_stat(tree: SafeRoot, rel: str, shown: str) -> dict[str, object]:
    """The ``X-Docker-Container-Path-Stat`` document of ``rel`` (not following a last link)."""
    top, last, st = open_entry(tree, rel)
    with top:
        link = top.readlink(last) if stat.S_ISLNK(st.st_mode) else ""
    mtime = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)
    return {"name": os.path.basename(shown.rstrip("/")) or "/", "size": st.st_size,
            "mode": go_file_mode(st.st_mode),
            "mtime": mtime.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "linkTarget": link}


def encode_stat(doc: dict[str, object]) -> str:
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


# -- the helper process ------------------------------------------------------------------------


def _container_root(args: dict[str, object]) -> str:
    """The container's view of its filesystem, as a path in this process's mount namespace.

    A running container: its ``/proc/<pid>/root``. A stopped one: a private mount namespace
    with the overlay of its sandbox mounted on its ``rootfs/``, gone when this process exits;
    or, for a path under one of its volumes or binds, that mount's source tree (``tree``).
    """
    from silobox.kernel import libc
    if args.get("pid"):
        return f"/proc/{int(args['pid'])}/root"
    if args.get("tree"):
        return str(args["tree"])
    else:
        from silobox.kernel import mountns
        from silobox.storage.sandbox import Sandbox
        sandbox = Sandbox(str(args["root"]), str(args["cid"]))
        mountns.unshare_private()
        # Of the host's mounts, only what this helper uses: the copy of any other sandbox
        # disk mounted right now would keep that disk attached until this helper exits.
        lowers = _overlay_lowers(str(args["options"]))
        mountns.detach_unneeded([sandbox.folder, "/proc", "/dev"],
                                [*lowers, "/sys", *_python_paths(), *_TOOL_DIRS])
        import time
        deadline = time.monotonic() + 5
        while True:   # a just-stopped container's disk detaches itself a moment later
            try:
                sandbox.activate()   # a sandbox disk, mounted in this namespace only
                break
            except Exception as e:
                if e.__class__.__name__ != "Conflict" or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if not sandbox.exists():
            raise FileNotFoundError(errno.ENOENT, "the container has no writable layer")
        root = str(args["rootfs"])
        flags = libc.MS_RDONLY if args.get("readonly") else 0
        libc.mount("overlay", root, "overlay", flags, str(args["options"]))
        return root


def _overlay_lowers(options: str) -> list[str]:
    """The ``lowerdir`` trees named in overlay mount data (kernel.overlay.options refuses
    ``,``, ``:`` and ``\\`` in a path, so they need no unescaping)."""
    for opt in options.split(","):
        if opt.startswith("lowerdir="):
            return [p for p in opt[len("lowerdir="):].split(":") if p]
    return []


_TOOL_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/lib", "/lib", "/lib64", "/etc")
"""What the helper may run (e2fsck on a disk left unclean) needs."""


def _python_paths() -> list[str]:
    """Where this interpreter finds its modules (imports go on after the namespace is made)."""
    return [p for p in {*sys.path, sys.prefix, sys.base_prefix, sys.exec_prefix}
            if p and os.path.isabs(p)]


class OwnerLookupError(ValueError):
    """The container's user or group is not in its /etc/passwd or /etc/group."""


def _id_or_name(text: str) -> tuple[int, str]:
    if text.isdigit() and int(text) <= 2**31 - 1:
        return int(text), ""
    return 0, text


_PASSWD_LIMIT = 4 << 20


def _entries(path: str, tree: object = None) -> list[list[str]]:
    """The lines of a passwd-style file; with ``tree`` (a SafeRoot) resolved inside it, and
    only if it is a regular file (a fifo or ``/dev/zero`` planted there must not hang or fill
    the helper), read up to 4 MiB."""
    try:
        if tree is not None:
            # looked at through O_PATH first: a device node planted there is never opened
            pfd = tree.open(path, os.O_PATH)   # type: ignore[attr-defined]
            try:
                if not stat.S_ISREG(os.fstat(pfd).st_mode):
                    return []
                fd = os.open(f"/proc/self/fd/{pfd}",
                             os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            finally:
                os.close(pfd)
            f = os.fdopen(fd, errors="replace")
        else:
            f = open(path, errors="replace")
        with f:
            text = f.read(_PASSWD_LIMIT)
    except OSError as e:   # missing, or behind a magic link: no entries, as moby reads it
        if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES,
                           errno.EISDIR, errno.ENXIO):
            raise
        return []
    return [line.split(":") for line in text.splitlines()
            if line.strip() and not line.startswith("#")]


def _owner(args: dict[str, object], tree: object) -> tuple[int, int]:
    """cp -a's owner, from the container's passwd and group: in ``tree`` itself unless that is
    one of its volumes or binds (``tree`` in args), whose files are not the container's."""
    if not args.get("tree"):
        return _owner_in_root(str(args["user"]), tree)
    from silobox.kernel.saferoot import SafeRoot
    with SafeRoot(_container_root({k: v for k, v in args.items() if k != "tree"})) as root:
        return _owner_in_root(str(args["user"]), root)


def _owner_in_root(spec: str, tree: object = None) -> tuple[int, int]:
    """``copyUIDGID``: the uid and gid of the container's ``Config.User`` (``user[:group]``,
    names or ids), read from the container's own /etc/passwd and /etc/group as moby's
    ``getUIDGID``: a uid not in passwd is used as is with gid 0; an unknown name is an error."""
    user, _, group = spec.partition(":")
    uid = gid = 0
    if user:
        num, name = _id_or_name(user)
        found = [e for e in _entries("/etc/passwd", tree) if len(e) >= 4 and
                 (e[0] == name if name else e[2] == str(num))]
        if found:
            uid, gid = int(found[0][2]), int(found[0][3])
        elif name:
            raise OwnerLookupError(f"failed to look up user {json.dumps(name)} in container: "
                                   "no matching entries in passwd file")
        else:
            uid = num
    if group:
        num, name = _id_or_name(group)
        if name:
            found = [e for e in _entries("/etc/group", tree) if len(e) >= 3 and
                     e[0] == name]
            if not found:
                raise OwnerLookupError(f"failed to look up group {json.dumps(group)} in "
                                       "container: no matching entries in group file")
            gid = int(found[0][2])
        else:
            gid = num
    return uid, gid


def _helper(args: dict[str, object], stdin: BinaryIO, stdout: BinaryIO) -> int:
    warm = tarfile.open(fileobj=__import__("io").BytesIO(TarWriter.end()), mode="r|")
    warm.close()
    op = args["op"]
    path = "/" + os.path.normpath("/" + str(args.get("path") or "/")).lstrip("/")
    # the path as the client gave it: differs from ``path`` inside a mount's ``tree``
    given = str(args.get("shown") or args.get("path") or "/")
    shown = "/" + os.path.normpath("/" + given).lstrip("/")
    try:
        if op == "put":
            return _put(args, path, stdin, shown)
        if op in ("stat", "get"):
            return _get(args, path, op, stdout, given, shown)
    except FileNotFoundError:
        sys.stderr.write(json.dumps({"kind": "notfound", "message": "no such file"}))
        return 2
    except Exception as e:   # reported to silod as the operation's failure
        invalid = isinstance(e, (tarfile.TarError, ValueError, OverflowError)) \
            or e.__class__.__name__ == "InvalidArgument"
        sys.stderr.write(json.dumps({"kind": "invalid" if invalid else "failure",
                                     "message": str(e)}))
        return 4
    return 1


def _get(args: dict[str, object], path: str, op: object, stdout: BinaryIO, given: str,
         shown: str) -> int:
    """Stat ``path`` of the container, and for ``get`` stream it as a tar.

    No chroot: the container's root is opened from this process's own mount namespace and
    ``path`` resolved inside it (symlinks as the container sees them, magic links such as a
    ``--pid host`` container's ``/proc/1/root`` never); the tree is walked through directory
    fds and each file read only if it is still the regular file walked."""
    with SafeRoot(_container_root(args)) as tree:
        try:
            doc = path_stat(tree, path, given)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV, errno.EACCES):
                raise
            raise FileNotFoundError(e.errno, "cannot be resolved inside the container") from e
        if op == "stat":
            stdout.write(json.dumps(doc).encode())
            return 0
        stdout.write((json.dumps(doc) + "\n").encode())
        contents_only = given.endswith("/.")
        name = "" if contents_only or shown == "/" else os.path.basename(shown)
        for chunk in tar_path(tree, path, name, one_fs=bool(args.get("one_fs"))):
            stdout.write(chunk)
    return 0


def _put(args: dict[str, object], path: str, stdin: BinaryIO, shown: str) -> int:
    """Extract the tar on ``stdin`` into directory ``path`` of the container.

    No chroot: the container's root is opened from this process's own mount namespace (where
    ``/proc`` is ours, not the container's) and every name below it, ``path`` and the tar's
    entries alike, is resolved inside it by openat2 (silobox.kernel.saferoot). Symlinks in
    ``path`` are followed as the container sees them, magic links (a ``--pid host``
    container's ``/proc/1/root``) never; entries are never written through a symlink; and a
    running container that swaps a directory for a link while we write cannot lead us out.
    """
    from silobox.kernel.saferoot import SafeRoot
    from silobox.storage import layers
    with SafeRoot(_container_root(args)) as tree:
        try:
            fd = tree.open_dir(path)
        except NotADirectoryError:
            sys.stderr.write(json.dumps({"kind": "invalid",
                                         "message": "extraction point is not a directory"}))
            return 3
        except OSError as e:   # a magic link (refused, or not ours to follow) on the way
            if e.errno not in (errno.ELOOP, errno.EACCES, errno.EPERM, errno.EXDEV):
                raise
            sys.stderr.write(json.dumps({"kind": "invalid", "message": "extraction point "
                                         "cannot be resolved inside the container"}))
            return 3
        with SafeRoot(fd) as dest:
            os.close(fd)
            options = layers.ExtractOptions(
                no_overwrite_dir_non_dir=bool(args.get("no_overwrite_dir_non_dir")),
                owner=_owner(args, tree) if args.get("user") else None,
                shown_dest=shown, whiteouts=False)
            try:
                layers.extract(stdin, dest, options)
            except layers.OverwriteRefused as e:
                sys.stderr.write(json.dumps({"kind": "refused", "message": str(e)}))
                return 5
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_helper(json.loads(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer))
    except OSError as e:
        if e.errno == errno.EPIPE:
            sys.exit(0)
        sys.stderr.write(json.dumps({"kind": "failure", "message": str(e)}))
        sys.exit(4)
