"""The per-container writable layer, the counterpart of windowsfilter's ``<id>\\sandbox.vhdx``.

Windows gives each container a scratch disk that the filter driver unions over the image layers.
Here the scratch is an overlay ``upperdir``/``workdir`` pair in ``<root>/containers/<id>/sandbox/``
(a plain directory for now; a sized ext4 sandbox disk can later hold the same directories), next
to ``rootfs/``, the empty mount point of the merged view. The sandbox directory is what an HCS
document names as ``Container.Storage.Path``. The container's own overlay mount is made by its
child process inside its own mount namespace; :meth:`Sandbox.mount_on_host` is the host-side
attach (diskpart ``attach vdisk`` on Windows) that tools use on a stopped container.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import uuid
from dataclasses import dataclass

from silobox.atomic import atomic_write_json
from silobox.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, SystemFailure, \
    Unavailable
from silobox.kernel import libc
from silobox.storage.layers import read_layerchain

OVERLAY_MAX_LOWERS = 500       # OVL_MAX_STACK in fs/overlayfs
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_UNSAFE_IN_OPTIONS = (",", ":", "\\", "\n")


@dataclass(frozen=True)
class SandboxPaths:
    """Where the sandbox's directories are."""

    upper: str
    work: str
    rootfs: str


class Sandbox:
    """The writable layer of one container: ``<root>/containers/<id>/sandbox/`` holding
    ``upper/``, ``work/``, the ``rootfs/`` mount point and ``layerchain.json``."""

    def __init__(self, root: str, container_id: str) -> None:
        if not _ID.fullmatch(container_id or ""):
            raise InvalidArgument(f"invalid container id {container_id!r}",
                                  operation="storage::Sandbox", object_id=container_id)
        self.container_id = container_id
        self.folder = os.path.join(os.path.abspath(root), "containers", container_id)
        self.path = os.path.join(self.folder, "sandbox")
        self.paths = SandboxPaths(upper=os.path.join(self.path, "upper"),
                                  work=os.path.join(self.path, "work"),
                                  rootfs=os.path.join(self.path, "rootfs"))

    def exists(self) -> bool:
        return os.path.isdir(self.paths.upper) and os.path.isdir(self.paths.work)

    # -- lifecycle -----------------------------------------------------------------------------

    def create(self, layer_chain: list[str] | None = None) -> SandboxPaths:
        """Make the empty writable layer (wclayer CreateSandboxLayer).

        ``layer_chain`` (the image's layer trees, top first) is recorded in
        ``sandbox/layerchain.json`` as windowsfilter does, so the sandbox can later be mounted on
        the host without asking the image store.
        """
        if os.path.lexists(self.path):
            raise AlreadyExists(f"the sandbox of container {self.container_id} exists already",
                                operation="storage::Sandbox::Create", object_id=self.container_id)
        try:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            tmp = os.path.join(self.folder, f".sandbox-{uuid.uuid4().hex[:8]}")
            os.mkdir(tmp, 0o700)
            try:
                # upper's root is the merged root: it must be as open as an image's root.
                os.mkdir(os.path.join(tmp, "upper"))
                os.chmod(os.path.join(tmp, "upper"), 0o755)
                os.mkdir(os.path.join(tmp, "work"), 0o700)
                os.mkdir(os.path.join(tmp, "rootfs"))
                os.chmod(os.path.join(tmp, "rootfs"), 0o755)
                atomic_write_json(os.path.join(tmp, "layerchain.json"), list(layer_chain or []))
                os.rename(tmp, self.path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        except OSError as e:
            raise SystemFailure(f"cannot create the sandbox of container {self.container_id}: "
                                f"{e}", operation="storage::Sandbox::Create",
                                object_id=self.container_id, cause=e) from e
        return self.paths

    def layer_chain(self) -> list[str]:
        """The layer trees recorded at creation, top first."""
        return read_layerchain(self.path)

    def remove(self) -> None:
        """Delete the sandbox (wclayer DestroyLayer); idempotent.

        Anything still mounted on it is detached first (MNT_DETACH), then the directory is renamed
        aside and deleted, so a crash never leaves a half-deleted sandbox under its real name.
        """
        try:
            for mount_point in mounts_under(self.path):
                try:
                    libc.umount2(mount_point, libc.MNT_DETACH)
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.ENOENT):
                        raise
            if os.path.lexists(self.path):
                doomed = os.path.join(self.folder, f".removing-{uuid.uuid4().hex[:8]}")
                os.rename(self.path, doomed)
                shutil.rmtree(doomed)
            for leftover in os.listdir(self.folder) if os.path.isdir(self.folder) else []:
                if leftover.startswith((".removing-", ".sandbox-")):
                    shutil.rmtree(os.path.join(self.folder, leftover), ignore_errors=True)
            try:
                os.rmdir(self.folder)   # only if the engine keeps nothing else there
            except OSError:
                pass
        except OSError as e:
            raise SystemFailure(f"cannot remove the sandbox of container {self.container_id}: "
                                f"{e}", operation="storage::Sandbox::Remove",
                                object_id=self.container_id, cause=e) from e

    def used_bytes(self) -> int:
        """What the container has written: the apparent size of everything in ``upper/``,
        hard links counted once (Docker's ``SizeRw``)."""
        total = 0
        seen: set[tuple[int, int]] = set()
        for top, dirs, files in os.walk(self.paths.upper):
            for name in [*dirs, *files]:
                try:
                    st = os.lstat(os.path.join(top, name))
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    continue
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_size
        return total

    # -- overlay -------------------------------------------------------------------------------

    def overlay_options(self, lower_dirs: list[str]) -> str:
        """The overlay mount data for this sandbox over ``lower_dirs`` (top first).

        Overlay takes at most 500 lower layers and the whole option string must fit in one page
        (4 KiB here); beyond that the mount would fail with an opaque EINVAL, so it is refused
        with the reason.
        """
        if not lower_dirs:
            raise InvalidArgument("an overlay needs at least one image layer",
                                  operation="storage::Sandbox::Mount", object_id=self.container_id)
        lowers: list[str] = []
        for path in lower_dirs:
            if path not in lowers:   # overlay refuses a repeated lowerdir; the top one suffices
                lowers.append(path)
        if len(lowers) > OVERLAY_MAX_LOWERS:
            raise InvalidArgument(f"the image has {len(lowers)} layers; overlay stacks at most "
                                  f"{OVERLAY_MAX_LOWERS}", operation="storage::Sandbox::Mount",
                                  object_id=self.container_id)
        for path in [*lowers, self.paths.upper, self.paths.work]:
            if not path.startswith("/") or any(c in path for c in _UNSAFE_IN_OPTIONS):
                raise InvalidArgument(f"layer path {path!r} cannot be given to overlay: it must "
                                      "be absolute and contain no ',', ':' or '\\'",
                                      operation="storage::Sandbox::Mount",
                                      object_id=self.container_id)
        options = (f"lowerdir={':'.join(lowers)},upperdir={self.paths.upper},"
                   f"workdir={self.paths.work}")
        limit = os.sysconf("SC_PAGE_SIZE") - 1
        if len(options.encode()) > limit:
            raise InvalidArgument(f"the overlay options for {len(lowers)} layers are "
                                  f"{len(options.encode())} bytes, over the kernel's limit of "
                                  f"{limit}: use a shorter storage root path",
                                  operation="storage::Sandbox::Mount", object_id=self.container_id)
        return options

    def mount_on_host(self, lower_dirs: list[str] | None = None, readonly: bool = False) -> str:
        """Mount the merged view on ``rootfs/`` in the caller's mount namespace; returns its path.

        For tools working on a stopped container (export, cp, diff); ``lower_dirs`` defaults to
        the chain recorded at creation.
        """
        if not self.exists():
            raise NotFound(f"No such sandbox: container {self.container_id} has no writable layer",
                           operation="storage::Sandbox::Mount", object_id=self.container_id)
        if self.is_mounted():
            raise Conflict(f"the sandbox of container {self.container_id} is already mounted on "
                           f"{self.paths.rootfs}", operation="storage::Sandbox::Mount",
                           object_id=self.container_id)
        options = self.overlay_options(lower_dirs if lower_dirs is not None
                                       else self.layer_chain())
        flags = libc.MS_RDONLY if readonly else 0
        try:
            libc.mount("overlay", self.paths.rootfs, "overlay", flags, options)
        except OSError as e:
            if e.errno == errno.ENODEV:
                raise Unavailable("the overlay filesystem is not available: modprobe overlay",
                                  operation="storage::Sandbox::Mount",
                                  object_id=self.container_id, cause=e) from e
            if e.errno == errno.EBUSY:
                raise Conflict(f"the sandbox of container {self.container_id} is in use by "
                               "another overlay mount (is the container running?)",
                               operation="storage::Sandbox::Mount", object_id=self.container_id,
                               cause=e) from e
            raise SystemFailure(f"cannot mount the sandbox of container {self.container_id}: "
                                f"{e.strerror}", operation="storage::Sandbox::Mount",
                                object_id=self.container_id, cause=e) from e
        return self.paths.rootfs

    def unmount_from_host(self) -> bool:
        """Undo :meth:`mount_on_host`; returns False if nothing was mounted."""
        if not self.is_mounted():
            return False
        try:
            libc.umount2(self.paths.rootfs, 0)
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise SystemFailure(f"cannot unmount {self.paths.rootfs}: {e.strerror}",
                                    operation="storage::Sandbox::Unmount",
                                    object_id=self.container_id, cause=e) from e
            libc.umount2(self.paths.rootfs, libc.MNT_DETACH)   # a reader still holds it open
        return True

    def is_mounted(self) -> bool:
        return os.path.realpath(self.paths.rootfs) in mounts_under(self.paths.rootfs)


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    base = os.path.realpath(path)
    found: list[str] = []
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError as e:
        raise SystemFailure(f"cannot read /proc/self/mountinfo: {e}",
                            operation="storage::Sandbox", cause=e) from e
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if point == base or point.startswith(base.rstrip("/") + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
