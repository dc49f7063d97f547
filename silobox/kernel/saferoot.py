"""One way to touch an untrusted directory tree: through fds resolved inside it.

An image layer being written, a container's root (running or not), a build context, a volume:
each is a tree whose symlinks, hard links and directories were chosen by someone else, and for
a running container they can change while we work. A path string joined onto such a root and
handed to the kernel follows whatever symlinks are there at that instant, out of the tree. So
every name below a :class:`SafeRoot` is resolved by the kernel relative to the root's fd with
``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)``: absolute symlinks and ``..`` stay inside
the root (as if it were ``/``), ``/proc/<pid>/root``-style magic links are refused, and a rename
racing with ``..`` makes the kernel answer EAGAIN rather than escape. Once a parent directory is
open, the last component is touched with a ``*at`` call on (that fd, one name) that never follows
a symlink, and a created entry's owner, mode, xattrs and times are set through its own fd.

There is no fallback to string joins: where the kernel lacks openat2 (before 5.6), constructing
a SafeRoot raises :class:`~silobox.errors.Unavailable`. The same design as libpathrs, runc's
securejoin and containerd's continuity, written for silobox's needs.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Callable, Iterator

from silobox.errors import Unavailable
from silobox.kernel import libc

RESOLVE = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_EAGAIN_TRIES = 32
_MAX_LINKS = 40                # the kernel's MAXSYMLINKS

_openat2_state: str | None = None   # None: unknown yet; "" works; else why it does not
_proc_checked = False


def require_openat2() -> None:
    """Raise Unavailable, saying why, when this kernel cannot confine path resolution."""
    global _openat2_state
    if _openat2_state is None:
        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.close(libc.openat2(fd, ".", os.O_PATH | os.O_CLOEXEC, 0, RESOLVE))
            _openat2_state = ""
        except OSError as e:
            _openat2_state = (f"this kernel cannot resolve paths inside a directory (openat2 "
                              f"with RESOLVE_IN_ROOT: {e.strerror}); silobox needs Linux 5.6 or "
                              "later to touch image, archive and container trees safely")
        finally:
            os.close(fd)
    if _openat2_state:
        raise Unavailable(_openat2_state, operation="kernel::SafeRoot")


def _require_procfs() -> None:
    """Names relative to an fd reach xattrs through ``/proc/self/fd``: it must be procfs."""
    global _proc_checked
    if _proc_checked:
        return
    fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc.fstatfs_type(fd) != libc.PROC_SUPER_MAGIC:
            raise Unavailable("/proc is not procfs: extended attributes of untrusted trees "
                              "cannot be reached safely", operation="kernel::SafeRoot")
    finally:
        os.close(fd)
    _proc_checked = True


def mount_path(fd: int) -> str:
    """The name under which ``mount(2)`` reaches exactly the file behind ``fd``."""
    return f"/proc/self/fd/{fd}"


def split_name(rel: str) -> tuple[str, str]:
    """(parent, last component) of a name below a root; "." / ".." / "" have no last name."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or parts[-1] == "..":
        raise IsADirectoryError(errno.EISDIR, "the root itself has no parent", rel)
    return "/".join(parts[:-1]), parts[-1]


def resolve_links(rel: str, link_at: Callable[[str, bool], str | None],
                  follow_last: bool = True) -> str:
    """``rel`` with every symlink on the way replaced by its target as if the tree's root were
    ``/`` (``..`` stops at the root, an absolute target starts from it again), relative to the
    root. ``link_at(prefix, is_last)`` says what the symlink at ``prefix`` holds, None for
    anything else. Past 40 links: ELOOP.

    For trees the kernel cannot resolve in one call: a name still to be made below a
    dangling link (:meth:`SafeRoot.make`), an image's layers read without mounting them."""
    todo = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        here = "/".join([*done, name])
        last = not todo
        target = link_at(here, last) if (follow_last or not last) else None
        if target is not None:
            hops += 1
            if hops > _MAX_LINKS:
                raise OSError(errno.ELOOP, f"{rel}: too many levels of symbolic links")
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        done.append(name)
    return "/".join(done)


class SafeRoot:
    """An untrusted directory tree, touched only through fds resolved inside it.

    ``root`` is a path of ours (followed: it may be ``/proc/<pid>/root``) or an fd, which is
    duplicated. Names are relative to the root; absolute names and ``..`` resolve inside it.
    ``symlinks=False`` on a call refuses any symlink on the way (ELOOP): what an extractor uses,
    so that no entry is ever written through a link. Methods raise OSError as the kernel does.
    """

    def __init__(self, root: str | int) -> None:
        require_openat2()
        if isinstance(root, int):
            self.fd = os.dup(root)   # close-on-exec, as every fd Python makes
        else:
            self.fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SafeRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resolution ------------------------------------------------------------------------

    def open(self, rel: str, flags: int = os.O_RDONLY, mode: int = 0o600, *,
             follow: bool = True, symlinks: bool = True) -> int:
        """Open ``rel`` resolved inside the root; always close-on-exec.

        ``follow=False`` adds O_NOFOLLOW (the last component must not be a symlink; with
        O_PATH the link itself is opened). ``symlinks=False`` refuses every symlink on the way.
        """
        resolve = RESOLVE if symlinks else RESOLVE | libc.RESOLVE_NO_SYMLINKS
        flags |= os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        name = rel or "."
        for _ in range(_EAGAIN_TRIES):
            try:
                return libc.openat2(self.fd, name, flags, mode, resolve)
            except BlockingIOError:   # EAGAIN: a rename raced with ".."; the kernel says retry
                continue
        raise OSError(errno.EAGAIN, "the tree keeps changing while it is resolved", rel)

    def open_dir(self, rel: str, *, create: bool = False, mode: int = 0o755,
                 follow: bool = True, symlinks: bool = True) -> int:
        """A readable directory fd for ``rel``; with ``create``, missing directories on the way
        are made with mkdirat (``mode``, whatever the umask), each in the fd of its parent."""
        try:
            return self.open(rel, _DIR_FLAGS, follow=follow, symlinks=symlinks)
        except FileNotFoundError:
            if not create:
                raise
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        have = len(parts) - 1   # the deepest prefix that exists, found walking back
        while have > 0:
            try:
                fd = self.open("/".join(parts[:have]), _DIR_FLAGS, symlinks=symlinks)
                break
            except FileNotFoundError:
                have -= 1
        else:
            fd = self.open("", _DIR_FLAGS)
        try:
            for i in range(have, len(parts)):
                if parts[i] == "..":   # never openat(".."): resolved from the root again
                    nfd = self.open("/".join(parts[:i + 1]), _DIR_FLAGS, symlinks=symlinks)
                else:
                    nfd = make_dir_at(fd, parts[i], mode)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def parent(self, rel: str, *, create: bool = False, mode: int = 0o755,
               symlinks: bool = True) -> tuple[int, str]:
        """(fd of the directory holding ``rel``, resolved inside the root; ``rel``'s last
        component). The caller closes the fd and acts on the name with ``*at`` calls."""
        parent, name = split_name(rel)
        return self.open_dir(parent, create=create, mode=mode, symlinks=symlinks), name

    def make(self, rel: str, is_dir: bool = True) -> int:
        """An O_PATH fd of ``rel`` (a mount target, a working directory), made when missing
        (a directory, or an empty file unless ``is_dir``) with its parents.

        Symlinks are followed inside the root only, a dangling one too (an image's dangling
        ``/data -> /host/dir`` makes ``/host/dir`` in the root); the caller acts on the fd,
        so nothing swapped after the lookup can move what it names. The last component is
        never a symlink (ELOOP if it keeps becoming one)."""
        try:
            fd = self.open(rel, os.O_PATH)
        except FileNotFoundError:
            fd = self._make_missing(rel, is_dir)
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.ELOOP, f"{rel}: the target keeps changing into a symlink")
        return fd

    def _make_missing(self, rel: str, is_dir: bool) -> int:
        """Make the missing parts of ``rel`` one component at a time, each in its parent's fd,
        a symlink met on the way read (through its parent's fd) and followed as if the root
        were ``/``. The kernel resolves every existing prefix (RESOLVE_IN_ROOT); only a
        dangling link's target needs reading here."""
        def step(here: str, last: bool) -> str | None:
            st = self.lstat(here)
            if st is not None and stat.S_ISLNK(st.st_mode):
                return self.readlink(here)
            if st is None:
                parent, name = self.parent(here)
                try:
                    if not last or is_dir:
                        try:
                            os.mkdir(name, 0o755, dir_fd=parent)
                        except FileExistsError:
                            pass
                    else:
                        try:
                            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
                                             | os.O_CLOEXEC, 0o644, dir_fd=parent))
                        except FileExistsError:
                            pass
                finally:
                    os.close(parent)
            return None
        return self.open(resolve_links(rel, step), os.O_PATH, follow=False)

    def lstat(self, rel: str) -> os.stat_result | None:
        """The entry itself (a last symlink not followed), or None if it is not there."""
        try:
            fd = self.open(rel, os.O_PATH, follow=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def exists(self, rel: str) -> bool:
        return self.lstat(rel) is not None

    # -- changes ---------------------------------------------------------------------------

    def mkdir(self, rel: str, mode: int = 0o755) -> None:
        pfd, name = self.parent(rel)
        try:
            os.close(make_dir_at(pfd, name, mode, exist_ok=False))
        finally:
            os.close(pfd)

    def mknod(self, rel: str, mode: int, dev: int = 0) -> None:
        pfd, name = self.parent(rel)
        try:
            os.mknod(name, mode, dev, dir_fd=pfd)
        finally:
            os.close(pfd)

    def symlink(self, target: str, rel: str) -> None:
        """Make symlink ``rel`` holding ``target`` (data: it is never followed here)."""
        pfd, name = self.parent(rel)
        try:
            os.symlink(target, name, dir_fd=pfd)
        finally:
            os.close(pfd)

    def link(self, src_rel: str, dst_rel: str) -> None:
        """Hard link ``dst_rel`` to the entry ``src_rel`` of this tree: both resolved inside the
        root, the source never through a symlink, never a directory (link_at)."""
        spfd, sname = self.parent(src_rel, symlinks=False)
        try:
            dpfd, dname = self.parent(dst_rel)
            try:
                link_at(spfd, sname, dpfd, dname)
            finally:
                os.close(dpfd)
        finally:
            os.close(spfd)

    def unlink(self, rel: str) -> None:
        """Remove a non-directory (a last symlink itself, never its target)."""
        pfd, name = self.parent(rel)
        try:
            os.unlink(name, dir_fd=pfd)
        finally:
            os.close(pfd)

    def rmtree(self, rel: str) -> None:
        """Remove ``rel`` and everything below it, walking directory fds; never follows a
        symlink and never descends into another mounted filesystem (EXDEV)."""
        pfd, name = self.parent(rel)
        try:
            remove_at(pfd, name)
        finally:
            os.close(pfd)

    def rename(self, src_rel: str, dst_rel: str) -> None:
        spfd, sname = self.parent(src_rel)
        try:
            dpfd, dname = self.parent(dst_rel)
            try:
                os.rename(sname, dname, src_dir_fd=spfd, dst_dir_fd=dpfd)
            finally:
                os.close(dpfd)
        finally:
            os.close(spfd)

    def readlink(self, rel: str) -> str:
        pfd, name = self.parent(rel)
        try:
            return os.readlink(name, dir_fd=pfd)
        finally:
            os.close(pfd)

    def chown(self, rel: str, uid: int, gid: int) -> None:
        pfd, name = self.parent(rel)
        try:
            os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(pfd)

    def chmod(self, rel: str, mode: int) -> None:
        """Mode of the entry itself; a symlink has none (EOPNOTSUPP)."""
        pfd, name = self.parent(rel)
        try:
            chmod_at(pfd, name, mode)
        finally:
            os.close(pfd)

    def utime(self, rel: str, ns: tuple[int, int]) -> None:
        pfd, name = self.parent(rel)
        try:
            os.utime(name, ns=ns, dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(pfd)

    def setxattr(self, rel: str, key: str, value: bytes) -> None:
        pfd, name = self.parent(rel)
        try:
            setxattr_at(pfd, name, key, value)
        finally:
            os.close(pfd)

    def getxattr(self, rel: str, key: str) -> bytes:
        pfd, name = self.parent(rel)
        try:
            _require_procfs()
            return os.getxattr(_at(pfd, name), key, follow_symlinks=False)
        finally:
            os.close(pfd)

    def listxattr(self, rel: str) -> list[str]:
        pfd, name = self.parent(rel)
        try:
            _require_procfs()
            return os.listxattr(_at(pfd, name), follow_symlinks=False)
        finally:
            os.close(pfd)

    # -- walking ---------------------------------------------------------------------------

    def walk(self, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
        """``(name, lstat)`` of ``rel`` and everything below it, pre-order, names relative to
        the root. Directories are entered through their fds (openat O_NOFOLLOW|O_DIRECTORY
        from the fd of their parent), so an entry swapped for a symlink while we walk is seen
        as what it is then, and its target is never entered."""
        top = self.open(rel, _DIR_FLAGS | os.O_NOFOLLOW) if rel else self.open("", _DIR_FLAGS)
        base = "/".join(p for p in rel.split("/") if p not in ("", "."))
        yield base, os.fstat(top)
        stack: list[tuple[int, str, Iterator[os.DirEntry[str]]]] = [
            (top, base, iter(sorted(os.scandir(top), key=lambda e: e.name)))]
        try:
            while stack:
                fd, prefix, entries = stack[-1]
                entry = next(entries, None)
                if entry is None:
                    stack.pop()
                    os.close(fd)
                    continue
                name = f"{prefix}/{entry.name}" if prefix else entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    yield name, st
                    continue
                try:
                    sub = os.open(entry.name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        continue   # gone or swapped for a non-directory meanwhile
                    raise
                st = os.fstat(sub)
                yield name, st
                stack.append((sub, name, iter(sorted(os.scandir(sub), key=lambda e: e.name))))
        finally:
            for fd, _, _ in stack:
                os.close(fd)

    mount_path = staticmethod(mount_path)


# -- (directory fd, one name) operations ---------------------------------------------------------


def _at(dirfd: int, name: str) -> str:
    """``name`` inside the directory ``dirfd`` for calls that take no dirfd (xattrs): procfs
    follows the fd itself, and ``name`` is a single component, looked up without following."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"not a single name: {name!r}")
    return f"/proc/self/fd/{dirfd}/{name}"


def make_dir_at(dirfd: int, name: str, mode: int = 0o755, *, exist_ok: bool = True) -> int:
    """mkdirat ``name`` in ``dirfd`` (an existing directory is used when ``exist_ok``) and
    return its readable fd, opened without following; a new one gets exactly ``mode``."""
    try:
        os.mkdir(name, 0o700, dir_fd=dirfd)
        made = True
    except FileExistsError:
        if not exist_ok:
            raise
        made = False
    fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dirfd)
    if made:
        os.fchmod(fd, mode)
    return fd


def link_at(src_dirfd: int, src_name: str, dst_dirfd: int, dst_name: str) -> None:
    """A hard link to an existing non-directory, never following a symlink (linkat flags 0)."""
    st = os.stat(src_name, dir_fd=src_dirfd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EPERM, "hard link to a directory", src_name)
    os.link(src_name, dst_name, src_dir_fd=src_dirfd, dst_dir_fd=dst_dirfd,
            follow_symlinks=False)


def chmod_at(dirfd: int, name: str, mode: int) -> None:
    """Mode of the entry ``name`` of ``dirfd`` itself: it is opened O_PATH without following
    and changed through ``/proc/self/fd`` (fchmod refuses O_PATH fds, and devices and fifos
    must not be opened for real); a symlink has no mode (EOPNOTSUPP)."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(errno.EOPNOTSUPP, "a symlink has no mode of its own", name)
        _require_procfs()
        os.chmod(mount_path(fd), mode)
    finally:
        os.close(fd)


def setxattr_at(dirfd: int, name: str, key: str, value: bytes) -> None:
    """Set an xattr on the entry ``name`` of ``dirfd`` itself (a symlink's own, if it is one)."""
    _require_procfs()
    os.setxattr(_at(dirfd, name), key, value, follow_symlinks=False)


def remove_at(dirfd: int, name: str) -> None:
    """Remove entry ``name`` of ``dirfd`` and, if it is a directory, all below it.

    Iterative over directory fds opened with O_NOFOLLOW from their parent's fd: a symlink is
    removed, never followed; a directory on another filesystem (a mount point) is refused with
    EXDEV rather than emptied.
    """
    try:
        os.unlink(name, dir_fd=dirfd)
        return
    except IsADirectoryError:
        pass
    except PermissionError as e:   # EPERM: some kernels answer so for a directory
        if e.errno != errno.EPERM:
            raise
    dev = os.fstat(dirfd).st_dev
    top = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dirfd)
    stack: list[tuple[int, str, int]] = [(dirfd, name, top)]   # (parent fd, name, fd)
    try:
        while stack:
            pfd, dname, fd = stack[-1]
            if os.fstat(fd).st_dev != dev:
                raise OSError(errno.EXDEV, "a mount point is in the way of removal", dname)
            descended = False
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        sub = os.open(entry.name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                        stack.append((fd, entry.name, sub))
                        descended = True
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if descended:
                continue
            stack.pop()
            os.close(fd)
            os.rmdir(dname, dir_fd=pfd)
    finally:
        for _, _, fd in stack:
            os.close(fd)
