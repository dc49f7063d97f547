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
from typing import BinaryIO, Iterable, Iterator

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


def is_opaque(path: str) -> bool:
    """Whether overlay hides the lower copies of this directory (its opaque xattr is set)."""
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
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

    def header(self, name: str, st: os.stat_result, path: str | None,
               xattrs: bool = True) -> tuple[tarfile.TarInfo, bool]:
        """The entry for ``name``; the flag says whether file content follows."""
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
            info.linkname = os.readlink(path) if path else ""
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
            try:
                names = os.listxattr(path, follow_symlinks=False)
            except OSError:
                names = []
            for key in names:
                if key.startswith(("trusted.overlay.", "user.overlay.")):
                    continue
                try:
                    value = os.getxattr(path, key, follow_symlinks=False)
                except OSError:
                    continue
                info.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
        return info, content

    def entry(self, info: tarfile.TarInfo) -> bytes:
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def file(self, info: tarfile.TarInfo, path: str) -> Iterator[bytes]:
        """The header, the content (exactly ``info.size`` bytes) and the padding."""
        yield self.entry(info)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        left = info.size
        try:
            while left > 0:
                chunk = os.read(fd, min(left, _CHUNK))
                if not chunk:   # the file shrank while read: pad, the header promised the size
                    chunk = bytes(min(left, _CHUNK))
                left -= len(chunk)
                yield chunk
        finally:
            os.close(fd)
        if info.size % _BLOCK:
            yield bytes(_BLOCK - info.size % _BLOCK)

    @staticmethod
    def end() -> bytes:
        return bytes(2 * _BLOCK * 5)   # two zero blocks, padded to a 10 KiB record


def walk_tree(root: str, one_fs: bool = False) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative name, path, lstat) for everything under ``root``, sorted, never following."""
    root_dev = os.lstat(root).st_dev
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        here = os.path.join(root, rel_dir) if rel_dir else root
        try:
            names = sorted(os.listdir(here))
        except FileNotFoundError:
            continue
        subdirs = []
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = os.path.join(here, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            yield rel, path, st
            # one_fs: /proc, /sys, /dev and volumes are other filesystems, listed but not
            # entered (overlay reports its own device for directories only)
            if stat.S_ISDIR(st.st_mode) and not (one_fs and st.st_dev != root_dev):
                subdirs.append(rel)
        stack.extend(reversed(subdirs))


def tar_overlay_dir(root: str, skip_init: bool = False) -> Iterator[bytes]:
    """An overlay upper (or layer) directory as an OCI layer tar (see :func:`layer_tar`)."""
    yield from layer_tar((rel, path, st) for rel, path, st in walk_tree(root)
                         if not (skip_init and is_init_path(rel)))


def layer_tar(entries: Iterable[tuple[str, str, os.stat_result]]) -> Iterator[bytes]:
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
        _check_self_contained(path, rel)
        info, content = writer.header(rel, st, path)
        if content:
            yield from writer.file(info, path)
        else:
            yield writer.entry(info)
        if stat.S_ISDIR(st.st_mode) and is_opaque(path):
            marker = tarfile.TarInfo(f"{rel}/{OPAQUE_MARKER}")
            marker.mtime = int(st.st_mtime)
            marker.uname = marker.gname = ""
            yield writer.entry(marker)
    yield writer.end()


def _check_self_contained(path: str, rel: str) -> None:
    """An upper dir written with overlay's redirect_dir or metacopy features holds references
    into the lower layers instead of the data; such a tree cannot become a layer by itself."""
    for name in ("trusted.overlay.redirect", "trusted.overlay.metacopy"):
        try:
            os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        raise ValueError(f"{rel}: the overlay wrote it with {name.rsplit('.', 1)[1]} "
                         "(redirect_dir/metacopy are on): it cannot be made into a layer; "
                         "mount container roots with redirect_dir=off,metacopy=off")


def tar_path(path: str, name: str, one_fs: bool = False) -> Iterator[bytes]:
    """A plain tree (``export``, ``cp`` from a container): ``path`` archived as ``name``
    (empty ``name``: its contents at the top, Docker's ``path/.``)."""
    writer = TarWriter()
    st = os.lstat(path)
    if name:
        info, content = writer.header(name, st, path)
        yield from (writer.file(info, path) if content else [writer.entry(info)])
    if stat.S_ISDIR(st.st_mode):
        for rel, sub, sub_st in walk_tree(path, one_fs):
            full = f"{name}/{rel}" if name else rel
            if one_fs and not stat.S_ISDIR(sub_st.st_mode) and rel in INIT_PATHS:
                continue   # the runtime's bind-mounted files (hosts, resolv.conf)
            try:
                info, content = writer.header(full, sub_st, sub)
            except ValueError:
                continue
            yield from (writer.file(info, sub) if content else [writer.entry(info)])
    yield writer.end()


# -- changes -----------------------------------------------------------------------------------


def list_changes(upper: str, lower_dirs: list[str]) -> list[dict[str, object]]:
    """Docker's change list of a container: ``{"Path": "/x", "Kind": 0|1|2}``, sorted by path.

    A whiteout is a deletion; an entry that exists in some lower layer is a modification (a
    directory shows as modified when something below it changed, as in Docker); anything else
    was added.
    """
    out: list[dict[str, object]] = []
    for rel, path, st in walk_tree(upper):
        if is_init_path(rel):
            continue
        if is_whiteout(st):
            kind = KIND_DELETED
        elif any(os.path.lexists(os.path.join(lower, rel)) for lower in lower_dirs):
            kind = KIND_MODIFIED
        else:
            kind = KIND_ADDED
        out.append({"Path": "/" + rel, "Kind": kind, "dir": stat.S_ISDIR(st.st_mode)})
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


def path_stat(path: str, shown: str) -> dict[str, object]:
    """The ``X-Docker-Container-Path-Stat`` document of ``path`` (not following a last link)."""
    st = os.lstat(path)
    mtime = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)
    return {"name": os.path.basename(shown.rstrip("/")) or "/", "size": st.st_size,
            "mode": go_file_mode(st.st_mode),
            "mtime": mtime.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "linkTarget": os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""}


def encode_stat(doc: dict[str, object]) -> str:
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


# -- the helper process ------------------------------------------------------------------------


def _enter(args: dict[str, object]) -> None:
    """Chroot into the container's view of its filesystem.

    A running container: its ``/proc/<pid>/root``. A stopped one: a private mount namespace
    with the overlay of its sandbox mounted on its ``rootfs/``, gone when this process exits;
    or, for a path under one of its volumes or binds, that mount's source tree (``tree``).
    """
    from silobox.kernel import libc
    if args.get("pid"):
        root = f"/proc/{int(args['pid'])}/root"
    elif args.get("tree"):
        root = str(args["tree"])
    else:
        libc.unshare(libc.CLONE_NEWNS)
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE, None)
        from silobox.storage.sandbox import Sandbox
        sandbox = Sandbox(str(args["root"]), str(args["cid"]))
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
    os.chdir(root)
    os.chroot(".")
    os.chdir("/")
    sys.path[:] = []   # nothing may be imported from the container's tree from here on


class OwnerLookupError(ValueError):
    """The container's user or group is not in its /etc/passwd or /etc/group."""


def _id_or_name(text: str) -> tuple[int, str]:
    if text.isdigit() and int(text) <= 2**31 - 1:
        return int(text), ""
    return 0, text


def _entries(path: str) -> list[list[str]]:
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f
                    if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return []


def _owner_in_root(spec: str) -> tuple[int, int]:
    """``copyUIDGID``: the uid and gid of the container's ``Config.User`` (``user[:group]``,
    names or ids), read from the container's own /etc/passwd and /etc/group as moby's
    ``getUIDGID``: a uid not in passwd is used as is with gid 0; an unknown name is an error."""
    user, _, group = spec.partition(":")
    uid = gid = 0
    if user:
        num, name = _id_or_name(user)
        found = [e for e in _entries("/etc/passwd") if len(e) >= 4 and
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
            found = [e for e in _entries("/etc/group") if len(e) >= 3 and e[0] == name]
            if not found:
                raise OwnerLookupError(f"failed to look up group {json.dumps(group)} in "
                                       "container: no matching entries in group file")
            gid = int(found[0][2])
        else:
            gid = num
    return uid, gid


def _helper(args: dict[str, object], stdin: BinaryIO, stdout: BinaryIO) -> int:
    from silobox.storage import layers   # imported before the chroot, with its dependencies
    warm = tarfile.open(fileobj=__import__("io").BytesIO(TarWriter.end()), mode="r|")
    warm.close()
    op = args["op"]
    path = "/" + os.path.normpath("/" + str(args.get("path") or "/")).lstrip("/")
    # the path as the client gave it: differs from ``path`` inside a mount's ``tree``
    given = str(args.get("shown") or args.get("path") or "/")
    shown = "/" + os.path.normpath("/" + given).lstrip("/")
    try:
        _enter(args)
        if op in ("stat", "get"):
            doc = path_stat(path, given)
            if op == "stat":
                stdout.write(json.dumps(doc).encode())
                return 0
            stdout.write((json.dumps(doc) + "\n").encode())
            contents_only = given.endswith("/.")
            name = "" if contents_only or shown == "/" else os.path.basename(shown)
            for chunk in tar_path(path, name, one_fs=bool(args.get("one_fs"))):
                stdout.write(chunk)
            return 0
        if op == "put":
            st = os.stat(path)
            if not stat.S_ISDIR(st.st_mode):
                sys.stderr.write(json.dumps({"kind": "invalid",
                                             "message": "extraction point is not a directory"}))
                return 3
            options = layers.ExtractOptions(
                no_overwrite_dir_non_dir=bool(args.get("no_overwrite_dir_non_dir")),
                owner=_owner_in_root(str(args["user"])) if args.get("user") else None,
                shown_dest=shown)
            reader = layers._HashingReader(stdin)
            try:
                layers._extract(reader, path, options=options)
            except layers.OverwriteRefused as e:
                sys.stderr.write(json.dumps({"kind": "refused", "message": str(e)}))
                return 5
            reader.drain()
            return 0
    except FileNotFoundError:
        sys.stderr.write(json.dumps({"kind": "notfound", "message": "no such file"}))
        return 2
    except Exception as e:   # reported to silod as the operation's failure
        sys.stderr.write(json.dumps({"kind": "invalid" if isinstance(e, (tarfile.TarError, ValueError))
                                     or e.__class__.__name__ == "InvalidArgument" else "failure",
                                     "message": str(e)}))
        return 4
    return 1


if __name__ == "__main__":
    try:
        sys.exit(_helper(json.loads(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer))
    except OSError as e:
        if e.errno == errno.EPIPE:
            sys.exit(0)
        sys.stderr.write(json.dumps({"kind": "failure", "message": str(e)}))
        sys.exit(4)
