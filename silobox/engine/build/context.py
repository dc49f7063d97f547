"""The build context, and the layers COPY and ADD make from it.

The context arrives as a tar (plain, gzip, bzip2 or xz). :func:`extract_context` unpacks it into
a private directory, refusing entries that would land outside it, then applies ``.dockerignore``
as dockerd's classic builder sees the context. :func:`plan_copy` turns one COPY/ADD into the list
of files it writes (Docker's rules for directories, globs, trailing slashes, archives), hashes
their content for the build cache, and :func:`copy_layer_tar` streams them as a layer tar whose
directories keep the metadata they have in the image below (as overlay's copy-up would).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

from silobox import dockerignore
from silobox.engine.build.remote import Download, is_url
from silobox.engine.build.rootfs import MergedView
from silobox.errors import InvalidArgument, NotFound
from silobox.kernel.saferoot import SafeRoot, link_at, make_dir_at, remove_at, split_name
from silobox.storage.changes import (Source, TarWriter, TreeFile, open_regular, read_link,
                                     walk_tree)

_CHUNK = 1 << 20
_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


# -- the context --------------------------------------------------------------------------------


def extract_context(stream: BinaryIO, root: str) -> None:
    """Unpack the context tar into ``root`` (an empty directory), never writing outside it.

    Every entry's parent is opened inside ``root`` by openat2 (silobox.kernel.saferoot): the
    tar's own symlinks are followed as if ``root`` were ``/``, so none can lead out, and each
    entry is made in that directory fd by its single name without following a link.
    """
    count = 0
    try:
        with SafeRoot(root) as tree, \
                tarfile.open(fileobj=stream, mode="r|*") as tar:   # type: ignore[call-overload]
            for member in tar:
                count += 1
                _context_member(tree, tar, member)
    except tarfile.TarError as e:
        raise InvalidArgument(f"failed to read the build context: not a valid tar archive "
                              f"({e})") from e
    except EOFError as e:
        raise InvalidArgument("failed to read the build context: unexpected end of the tar "
                              "archive") from e
    except (OSError, ValueError, OverflowError) as e:
        if isinstance(e, InvalidArgument):
            raise
        raise InvalidArgument(f"failed to read the build context: {e}") from e
    if count == 0:
        raise InvalidArgument("failed to read the build context: the tar archive is empty")


def _context_member(tree: SafeRoot, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    name = _clean(member.name)
    if name == ".":
        return
    if not (member.isdir() or member.isreg() or member.issym() or member.islnk()):
        return   # devices and fifos have no place in a build context
    parent, base = split_name(name)
    pfd = tree.open_dir(parent, create=True, mode=0o755)
    try:
        try:
            st: os.stat_result | None = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not (member.isdir() and stat.S_ISDIR(st.st_mode)):
            remove_at(pfd, base)
        mtime_ns = int(member.mtime * 10**9)
        if member.isdir():
            fd = make_dir_at(pfd, base, 0o755)
            try:
                os.fchmod(fd, member.mode & 0o7777 | 0o700)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
        elif member.isreg():
            src = tar.extractfile(member)
            assert src is not None
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                         os.O_CLOEXEC, 0o600, dir_fd=pfd)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
                out.flush()
                os.fchmod(fd, member.mode & 0o7777)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=pfd)
            os.utime(base, ns=(mtime_ns, mtime_ns), dir_fd=pfd, follow_symlinks=False)
        else:
            target = _clean(member.linkname)
            if target == ".":
                raise InvalidArgument(f"invalid build context: hard link {member.name!r} "
                                      "points outside the context")
            spfd, sname = tree.parent(target)
            try:
                link_at(spfd, sname, pfd, base)
            finally:
                os.close(spfd)
    finally:
        os.close(pfd)


def _clean(rel: str) -> str:
    """A tar name as a clean name below the context; InvalidArgument if it climbs out."""
    name = dockerignore.clean(rel.lstrip("/"))
    if name == ".." or name.startswith("../"):
        raise InvalidArgument(f"invalid build context: entry {rel!r} points outside the context")
    return name


def read_context_file(root: str, name: str, limit: int) -> str | None:
    """The text (at most ``limit`` bytes) of the regular file ``name`` of the context, its
    links followed inside the context only; None if there is no such file."""
    rel = dockerignore.clean(name.lstrip("/"))
    if rel in (".", "..") or rel.startswith("../"):
        return None
    try:
        with SafeRoot(root) as tree:
            ref = tree.open(rel, os.O_PATH)
        try:
            if not stat.S_ISREG(os.fstat(ref).st_mode):
                return None
            fd = os.open(f"/proc/self/fd/{ref}", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(ref)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")


def apply_dockerignore(root: str) -> None:
    """Drop what ``.dockerignore`` excludes; the Dockerfile and the ignore file go too when
    excluded, after the builder has read them (moby ``removeDockerfile``).

    The context is only listed here (os.walk never enters a symlink); every removal goes
    through the context's SafeRoot, walking directory fds.
    """
    try:
        with SafeRoot(root) as tree:
            fd = tree.open(".dockerignore")
            with os.fdopen(fd, errors="replace") as f:
                patterns = dockerignore.parse(f.read())
    except (FileNotFoundError, IsADirectoryError):
        return
    try:
        matcher = dockerignore.PatternMatcher(patterns)
    except ValueError as e:
        raise InvalidArgument(f"invalid .dockerignore: {e}") from e
    with SafeRoot(root) as tree:
        for dirpath, dirnames, filenames in os.walk(root, topdown=True):
            rel_dir = os.path.relpath(dirpath, root)
            rel_dir = "" if rel_dir == "." else rel_dir
            for name in list(dirnames):
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if matcher.excluded(rel) and not matcher.has_exclusions:
                    tree.rmtree(rel)
                    dirnames.remove(name)
            for name in filenames:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if matcher.excluded(rel):
                    tree.unlink(rel)
        if matcher.has_exclusions:   # excluded directories left empty by the walk go too
            for dirpath, dirnames, filenames in os.walk(root, topdown=False):
                rel = os.path.relpath(dirpath, root)
                if rel != "." and not os.listdir(dirpath) and matcher.excluded(rel):
                    tree.rmtree(rel)


# -- sources ------------------------------------------------------------------------------------


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _glob(tree: SafeRoot, pattern: str) -> list[str]:
    """Context paths matching ``pattern`` element by element (Go ``filepath.Match``: ``*``
    never crosses a ``/``; hidden files match too). Only real directories are listed (through
    their fds), never a symlink's target."""
    parts = [p for p in pattern.split("/") if p and p != "."]
    found = [""]
    for part in parts:
        nxt = []
        for base in found:
            try:
                fd = tree.open(base, os.O_RDONLY | os.O_DIRECTORY, follow=False,
                               symlinks=False)
            except OSError:
                continue
            try:
                if _has_glob(part):
                    names = sorted(n for n in os.listdir(fd) if fnmatch.fnmatchcase(n, part))
                else:
                    try:
                        os.stat(part, dir_fd=fd, follow_symlinks=False)
                        names = [part]
                    except OSError:
                        names = []
            finally:
                os.close(fd)
            nxt.extend(f"{base}/{n}" if base else n for n in names)
        found = nxt
    return found


@dataclass
class Entry:
    """One thing a COPY writes: a file, directory or link at ``dest`` (relative to the image
    root), taken from ``host`` (lstat ``st``)."""

    dest: str
    host: Source
    st: os.stat_result
    uid: int | None = None   # None: keep the source's (ADD of an archive)
    gid: int | None = None


@dataclass
class CopyPlan:
    entries: list[Entry] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)   # destinations a directory is copied into
    archives: list[tuple[Source, str]] = field(default_factory=list)   # (tar, dest dir)
    digest: str = ""
    kind: str = "file"   # file, dir or multi: how docker names the source in the history


@dataclass
class SourceRoot:
    """Where COPY reads from: the context directory or another image's merged view.

    The context is the client's: its links may point anywhere. It is read only through its
    :class:`SafeRoot` (``tree``): sources are resolved inside it and their content read from
    the entry found, so no link leads out of the context. ``close`` when the layer is made."""

    context: str | None = None
    view: MergedView | None = None
    tree: SafeRoot | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.context is not None:
            self.tree = SafeRoot(self.context)

    def close(self) -> None:
        if self.tree is not None:
            self.tree.close()

    def matches(self, src: str) -> list[str]:
        rel = dockerignore.clean(src.lstrip("/"))
        rel = "" if rel == "." else rel
        if self.context is not None:
            if rel.startswith("../") or rel == "..":
                raise InvalidArgument(f"forbidden path outside the build context: {src}")
            assert self.tree is not None
            if _has_glob(rel):
                return _glob(self.tree, rel)
            return [rel] if self.tree.lstat(rel) is not None else []
        assert self.view is not None
        if _has_glob(rel):
            parent, _, pat = rel.rpartition("/")
            return [f"{parent}/{n}" if parent else n for n in self.view.listdir(parent)
                    if fnmatch.fnmatchcase(n, pat)]
        return [rel] if self.view.lstat(self.view.resolve(rel)) else []

    def stat(self, rel: str) -> tuple[Source, os.stat_result]:
        """Where a source is and its lstat, the source itself followed if it is a link (inside
        the context: a link that leads out of it finds nothing)."""
        if self.context is not None:
            assert self.tree is not None
            try:
                fd = self.tree.open(rel, os.O_PATH)
            except FileNotFoundError:
                raise NotFound(f"file not found in build context: {rel}: a symbolic link to "
                               "nothing inside the context") from None
            except OSError as e:
                raise InvalidArgument(f"forbidden path outside the build context: {rel} "
                                      f"({e.strerror})") from None
            try:
                st = os.fstat(fd)
                real = os.readlink(f"/proc/self/fd/{fd}")   # where openat2 found it
            finally:
                os.close(fd)
            base = os.readlink(f"/proc/self/fd/{self.tree.fd}").rstrip("/")
            if real != base and not real.startswith(base + "/"):
                raise InvalidArgument(f"forbidden path outside the build context: {rel}")
            return TreeFile(self.tree, real[len(base) + 1:]), st
        assert self.view is not None
        found = self.view.lstat(self.view.resolve(rel))
        if found is None:
            raise NotFound(f"file not found: {rel}")
        return found

    def walk(self, rel: str, host: Source) -> Iterator[tuple[str, Source, os.stat_result]]:
        """(relative name, where, lstat) under a source directory, parents first."""
        if self.context is not None:
            assert isinstance(host, TreeFile)
            yield from walk_tree(host.tree, under=host.rel)
            return
        assert self.view is not None
        yield from self.view.walk(self.view.resolve(rel))


def _open_source(src: Source) -> BinaryIO:
    """The content of a regular source file (an entry of the context: only if it still is the
    regular file it was)."""
    fd = open_regular(src, None)
    if fd < 0:
        raise InvalidArgument(f"{src.rel if isinstance(src, TreeFile) else src}: not a regular "
                              "file any more")
    return os.fdopen(fd, "rb")


def is_archive(path: Source) -> bool:
    """What ADD extracts: a tar, possibly compressed (Docker's ``archive.IsArchivePath``)."""
    try:
        with _open_source(path) as f:
            head = f.read(512)
            if head.startswith(_ARCHIVE_MAGIC):
                f.seek(0)
                try:
                    with tarfile.open(fileobj=f, mode="r:*") as tar:
                        tar.next()
                    return True
                except (tarfile.TarError, EOFError, OSError):
                    return False
    except (OSError, InvalidArgument):
        return False
    return len(head) == 512 and head[257:262] == b"ustar"


def plan_copy(cmd: str, sources: list[str], dest: str, source: SourceRoot,
              image: MergedView, uid: int, gid: int, chmod: int | None,
              workdir: str, downloads: dict[str, Download] | None = None) -> CopyPlan:
    """Docker's COPY/ADD rules: which files land where. ``dest`` is already expanded;
    ``downloads`` holds the files ADD fetched for its URL sources."""
    if not dest.startswith("/"):
        dest = posixpath.join(workdir or "/", dest)
    dest_is_dir = dest.endswith("/") or dest.endswith("/.")
    dest = posixpath.normpath(dest).lstrip("/")
    matched: list[str | Download] = []
    for src in sources:
        if is_url(src):
            if cmd == "COPY":
                raise InvalidArgument("source can't be a URL for COPY")
            fetched = (downloads or {}).get(src)
            if fetched is None:
                raise InvalidArgument(f"ADD {src}: the URL was not downloaded")
            if not fetched.name and dest_is_dir:
                raise InvalidArgument(f"cannot determine filename for source {src}")
            matched.append(fetched)
            continue
        found = source.matches(src)
        if not found:
            if _has_glob(src):
                raise NotFound(f"{cmd} failed: no source files were specified")
            where = "build context or excluded by .dockerignore" if source.context is not None \
                else "image"
            raise NotFound(f"{cmd} failed: file not found in {where}: stat {src}: file does "
                           "not exist")
        matched.extend(found)
    if len(matched) > 1 and not dest_is_dir:
        raise InvalidArgument(f"When using {cmd} with more than one source file, the "
                              "destination must be a directory and end with a /")
    dest = image.resolve(dest)   # /bin/x in an image where /bin -> usr/bin is usr/bin/x
    existing = image.lstat(dest) if dest else None
    if existing is not None and stat.S_ISDIR(existing[1].st_mode):
        dest_is_dir = True
    plan = CopyPlan(kind="multi" if len(matched) > 1 else "file")
    hasher = hashlib.sha256()
    for rel in matched:
        if isinstance(rel, Download):   # a file from a URL: 0600, never extracted
            st = os.lstat(rel.path)
            target = posixpath.join(dest, rel.name or "__unnamed__") if dest_is_dir else dest
            if not target:
                raise InvalidArgument(f"{cmd}: cannot copy a file to the root directory itself")
            _add(plan, Entry(target, rel.path, st, uid, gid), hasher, chmod)
            continue
        host, st = source.stat(rel)
        if stat.S_ISDIR(st.st_mode):
            if len(matched) == 1:
                plan.kind = "dir"
            plan.dirs.append(dest)   # its content is copied; the directory itself is not
            hasher.update(f"dir {dest}\0".encode())
            for sub, path, sub_st in source.walk(rel, host):
                _add(plan, Entry(f"{dest}/{sub}" if dest else sub, path, sub_st, uid, gid),
                     hasher, chmod)
        elif cmd == "ADD" and source.context is not None and is_archive(host):
            plan.archives.append((host, dest))
            hasher.update(f"archive {dest}\0".encode())
            _hash_file(hasher, host)
        else:
            name = posixpath.basename(rel)
            target = posixpath.join(dest, name) if dest_is_dir else dest
            if not target:
                raise InvalidArgument(f"{cmd}: cannot copy a file to the root directory itself")
            _add(plan, Entry(target, host, st, uid, gid), hasher, chmod)
    hasher.update(f"owner {uid}:{gid} chmod {chmod}".encode())
    plan.digest = hasher.hexdigest()
    return plan


def _add(plan: CopyPlan, entry: Entry, hasher: "hashlib._Hash", chmod: int | None) -> None:
    st = entry.st
    mode = chmod if chmod is not None else stat.S_IMODE(st.st_mode)
    hasher.update(f"{entry.dest}\0{stat.S_IFMT(st.st_mode)}\0{mode}\0".encode())
    if stat.S_ISREG(st.st_mode):
        _hash_file(hasher, entry.host)
    elif stat.S_ISLNK(st.st_mode):
        hasher.update(read_link(entry.host).encode())
    elif not stat.S_ISDIR(st.st_mode):
        return   # devices, fifos and sockets are not copied
    plan.entries.append(entry)


def _hash_file(hasher: "hashlib._Hash", path: Source) -> None:
    with _open_source(path) as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)


# -- the layer ----------------------------------------------------------------------------------


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def copy_layer_tar(plan: CopyPlan, image: MergedView, uid: int, gid: int,
                   chmod: int | None) -> Iterator[bytes]:
    """The layer a COPY/ADD adds, as a tar stream: parents before children. A directory that
    exists in the image keeps its owner and mode (as overlay's copy-up would); one created
    here gets 0755 and the COPY's owner. Archives of ADD are streamed member by member."""
    writer = TarWriter()
    now = int(time.time())
    written: set[str] = set()

    def directory(path: str) -> bytes:
        written.add(path)
        found = image.lstat(path)
        if found is not None and stat.S_ISDIR(found[1].st_mode):
            info, _ = writer.header(path, found[1], found[0], xattrs=False)
        else:
            info = tarfile.TarInfo(path + "/")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
            info.uid, info.gid = uid, gid
            info.uname = info.gname = ""
        return writer.entry(info)

    def parents(path: str, include_self: bool = False) -> Iterator[bytes]:
        for parent in _parents(path) + ([path] if include_self and path else []):
            if parent not in written:
                yield directory(parent)

    for dest in plan.dirs:
        yield from parents(dest, include_self=True)
    for entry in sorted(plan.entries, key=lambda e: e.dest.split("/")):
        yield from parents(entry.dest)
        info, content = writer.header(entry.dest, entry.st, entry.host, xattrs=False)
        info.uid = entry.uid if entry.uid is not None else info.uid
        info.gid = entry.gid if entry.gid is not None else info.gid
        if chmod is not None and not info.issym():
            info.mode = chmod
        written.add(entry.dest)
        if content:
            yield from writer.file(info, entry.host, entry.st)
        else:
            yield writer.entry(info)
    for host, dest in plan.archives:
        yield from parents(dest, include_self=True)
        yield from _archive_members(writer, host, dest, parents, written)
    yield writer.end()


def _archive_members(writer: TarWriter, host: Source, dest: str, parents: Any,
                     written: set[str]) -> Iterator[bytes]:
    """The members of an ADDed archive, re-rooted at ``dest``, streamed in archive order."""
    with _open_source(host) as f, tarfile.open(fileobj=f, mode="r:*") as tar:
        for member in tar:
            name = dockerignore.clean(member.name.lstrip("/"))
            if name in (".", "..") or name.startswith("../"):
                continue
            target = f"{dest}/{name}" if dest else name
            yield from parents(target)
            written.add(target)
            member.name = target + ("/" if member.isdir() else "")
            if member.islnk():
                link = dockerignore.clean(member.linkname.lstrip("/"))
                member.linkname = f"{dest}/{link}" if dest else link
            member.uname = member.gname = ""
            yield writer.entry(member)
            if member.isreg():
                data = tar.extractfile(member)
                assert data is not None
                while chunk := data.read(_CHUNK):
                    yield chunk
                if member.size % 512:
                    yield bytes(512 - member.size % 512)
