"""A stopped container's sandbox mounted on the host: diskpart's ``attach vdisk`` + ``assign
letter`` (``silo sandbox attach``/``detach``).

The disk's own tree (``upper/``, ``work/``), or with ``merged`` the container's whole
filesystem, is mounted at a directory the user names (default ``<id>/mnt``), read-only unless
asked. The container's files are untrusted: every such mount is ``nosuid,nodev`` and
``noexec`` unless asked, so a setuid binary or a device node the container made is inert on the
host. What was mounted is recorded in ``<id>/attach.json`` (atomically), so a detach, or the
next daemon's sweep, undoes exactly that.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from silobox.atomic import atomic_write_json
from silobox.errors import Conflict, InvalidArgument, SiloboxError, SystemFailure
from silobox.kernel import libc, overlay
from silobox.storage import disk as D
from silobox.storage.sandbox import Sandbox, mounts_under

Forbidden = list[tuple[str, str]]
"""(real path, what it is) pairs a sandbox may not be attached in or under."""


class SandboxAttachments:
    """The host attachments of the sandboxes under one storage root."""

    def __init__(self, root: str, exec_root: str) -> None:
        self.root = os.path.abspath(root)
        self.exec_root = exec_root

    def record_path(self, cid: str) -> str:
        return os.path.join(Sandbox(self.root, cid).folder, "attach.json")

    def record(self, cid: str) -> dict[str, Any] | None:
        """What is attached for container ``cid`` (MountPoint, Mounts, ...), or None."""
        try:
            with open(self.record_path(cid)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def default_mountpoint(self, cid: str) -> str:
        return os.path.join(Sandbox(self.root, cid).folder, "mnt")

    # ----- where a sandbox may go ---------------------------------------------------------
    def refusal(self, cid: str, point: str, binds: Forbidden) -> str:
        """Why ``point`` (a real path) may not hold the attached sandbox of ``cid``, or "".

        Our state directories hold every container's tree and the store; /proc reaches running
        containers' roots; a directory bound into a container (``binds``) is part of that
        container's tree. A sandbox mounted in any of them would be reachable, or writable,
        from a container. The one place under the state dir allowed is the container's own
        ``mnt``."""
        if point == os.path.realpath(self.default_mountpoint(cid)):
            return ""
        forbidden = [(os.path.realpath(self.root), "silod's state directory"),
                     (os.path.realpath(self.exec_root), "silod's runtime directory"),
                     ("/proc", "/proc"), *binds]
        for base, what in forbidden:
            if point == base or point.startswith(base.rstrip("/") + "/"):
                return f"{point} is inside {what}"
        return ""

    def _checked_fd(self, cid: str, name: str, path: str, flags: int, binds: Forbidden) -> int:
        """An O_PATH fd of ``path``, refused unless it is in silod's own mount namespace
        (a path through /proc/<pid>/root leads into a container's) and outside the forbidden
        trees, both asked of the directory actually opened."""
        try:
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | flags)
        except OSError as e:
            raise InvalidArgument(f"mount point {path} is not a directory") from e
        try:
            why = self.refusal(cid, os.readlink(f"/proc/self/fd/{fd}"), binds)
            if not why and not in_own_mount_namespace(fd):
                why = f"{path} is in another mount namespace (a container's tree)"
        except BaseException:
            os.close(fd)
            raise
        if why:
            os.close(fd)
            raise InvalidArgument(f"cannot attach the sandbox of container {name}: {why}")
        return fd

    def _open_point(self, cid: str, name: str, mountpoint: str,
                    binds: Forbidden) -> tuple[int, bool]:
        """(O_PATH fd of the checked mount point, whether we created it).

        The checks are made on the directories actually opened (the nearest existing one
        before anything is created, then the mount point), and the mount goes onto the fd,
        so no path component swapped after the check can move it."""
        for path in (mountpoint, os.path.realpath(mountpoint)):
            why = self.refusal(cid, path, binds)
            if why:
                raise InvalidArgument(f"cannot attach the sandbox of container {name}: {why}")
        existing = mountpoint
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        if mountpoint != os.path.abspath(self.default_mountpoint(cid)):
            os.close(self._checked_fd(cid, name, existing, 0, binds))  # the default's parent is ours
        created = existing != mountpoint
        os.makedirs(mountpoint, mode=0o755, exist_ok=True)
        return self._checked_fd(cid, name, mountpoint, os.O_NOFOLLOW, binds), created

    # ----- attach / detach ----------------------------------------------------------------
    def attach(self, cid: str, name: str, mountpoint: str = "", merged: bool = False,
               rw: bool = False, lowers: list[str] | None = None, allow_exec: bool = False,
               binds: Forbidden | None = None) -> dict[str, Any]:
        """Mount the sandbox of the stopped container ``cid`` (shown as ``name``) at
        ``mountpoint``; with ``merged``, its whole filesystem over ``lowers`` (its image's
        layer trees, top first). Returns the record written."""
        binds = list(binds or [])
        sandbox = Sandbox(self.root, cid)
        mountpoint = os.path.abspath(mountpoint or self.default_mountpoint(cid))
        if os.path.exists(mountpoint) and not os.path.isdir(mountpoint):
            raise InvalidArgument(f"mount point {mountpoint} is not a directory")
        if mountpoint in mounts_under(mountpoint):
            raise Conflict(f"{mountpoint} is a mount point already")
        inert = libc.MS_NOSUID | libc.MS_NODEV | (0 if allow_exec else libc.MS_NOEXEC)
        point_fd, created = self._open_point(cid, name, mountpoint, binds)
        target = f"/proc/self/fd/{point_fd}"
        done: list[str] = []
        device = ""
        try:
            if sandbox.kind == "disk":
                if merged:
                    device = sandbox.activate()  # over sandbox/, rw: overlay needs it
                    done.append(os.path.realpath(sandbox.path))
                else:
                    sandbox.release_spare()
                    D.wait_detached(sandbox.image)
                    device = D.mount_image(sandbox.image, target, readonly=not rw,
                                           flags=inert)
                    done.append(mountpoint)
            elif not merged:
                libc.mount(sandbox.path, target, None, libc.MS_BIND)
                done.append(mountpoint)
                _remount_bind(mountpoint, sandbox.path,
                              inert | (0 if rw else libc.MS_RDONLY))
            if merged:
                try:
                    if rw:
                        overlay.mount(target, list(lowers or []), sandbox.paths.upper,
                                      sandbox.paths.work, flags=inert)
                    else:   # the container's changes as the top read-only layer
                        overlay.mount(target, [sandbox.paths.upper, *(lowers or [])],
                                      flags=inert)
                except ValueError as e:
                    raise InvalidArgument(f"cannot attach the sandbox of container {name}: "
                                          f"{e}") from None
                done.append(mountpoint)
        except (OSError, SiloboxError) as e:
            for point in reversed(done):
                try:
                    libc.umount2(point, libc.MNT_DETACH)
                except OSError:
                    pass
            if created:
                try:
                    os.rmdir(mountpoint)
                except OSError:
                    pass
            if isinstance(e, SiloboxError):
                raise
            raise SystemFailure(f"cannot attach the sandbox of container {name}: "
                                f"{e.strerror}", cause=e) from e
        finally:
            os.close(point_fd)
        rec = {"MountPoint": mountpoint, "Merged": merged, "ReadOnly": not rw,
               "Exec": allow_exec, "Device": device, "Mounts": done, "CreatedMountPoint": created}
        atomic_write_json(self.record_path(cid), rec)
        return rec

    def detach(self, cid: str) -> dict[str, Any] | None:
        """Undo :meth:`attach`; returns its record, or None when nothing was attached."""
        rec = self.record(cid)
        if rec is None:
            return None
        for point in reversed(rec.get("Mounts") or []):
            try:
                libc.umount2(point, 0)
            except OSError as e:
                if e.errno == errno.EBUSY:   # a shell sits in it; let it go when it leaves
                    libc.umount2(point, libc.MNT_DETACH)
                elif e.errno not in (errno.EINVAL, errno.ENOENT):   # not mounted any more
                    raise SystemFailure(f"cannot unmount {point}: {e.strerror}",
                                        cause=e) from e
        if rec.get("CreatedMountPoint"):
            try:
                os.rmdir(rec["MountPoint"])
            except OSError:
                pass
        os.unlink(self.record_path(cid))
        return rec


def _remount_bind(mountpoint: str, source: str, flags: int) -> None:
    """A bind takes no flags: remount the new mount's root, opened afresh and checked to be
    ``source``."""
    bound = os.open(mountpoint, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(bound).st_ino != os.stat(source).st_ino:
            raise SystemFailure(f"{mountpoint} changed while it was mounted")
        libc.mount(None, f"/proc/self/fd/{bound}", None, libc.MS_BIND | libc.MS_REMOUNT | flags)
    finally:
        os.close(bound)


def in_own_mount_namespace(fd: int) -> bool:
    """Whether the mount ``fd`` is on is one of this process's mount namespace."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        mnt_id = next((line.split()[1] for line in f if line.startswith("mnt_id:")), "")
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ", 1)[0] == mnt_id for line in f)
