"""The per-container writable layer, the counterpart of windowsfilter's ``<id>\\sandbox.vhdx``.

Windows gives each container a scratch disk that the filter driver unions over the image layers.
Here the scratch is an overlay ``upperdir``/``workdir`` pair in ``<root>/containers/<id>/sandbox/``,
next to ``rootfs/``, the empty mount point of the merged view. The sandbox directory is what an
HCS document names as ``Container.Storage.Path``. It comes in two kinds:

* ``disk``: a sparse ext4 image ``<root>/containers/<id>/sandbox.img`` (``storage.disk``) whose
  root holds ``upper/``, ``work/`` and ``rootfs/``. While the container runs (or a tool works on
  it) the image is attached to a loop device and mounted over ``sandbox/``
  (:meth:`Sandbox.activate`, ActivateLayer), so the paths stay the same and the size is a hard
  limit: writes past it fail with ENOSPC inside the container.
* ``dir``: plain directories on the host's filesystem (Docker overlay2's behaviour), for hosts
  without loop devices.

The container's own overlay mount is made by its child process inside its own mount namespace;
:meth:`Sandbox.mount_on_host` is the host-side attach (diskpart ``attach vdisk`` on Windows) that
tools use on a stopped container.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass

from silobox.atomic import atomic_write_json
from silobox.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, SiloboxError, \
    SystemFailure, Unavailable
from silobox.kernel import libc, overlay
from silobox.storage.layers import read_layerchain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from silobox.storage.disk import DiskPool

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


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
        """``root`` is the daemon's storage root; the kind is read from what is on disk."""
        if not _ID.fullmatch(container_id or ""):
            raise InvalidArgument(f"invalid container id {container_id!r}",
                                  operation="storage::Sandbox", object_id=container_id)
        self.container_id = container_id
        self.root = os.path.abspath(root)
        self.folder = os.path.join(self.root, "containers", container_id)
        self.path = os.path.join(self.folder, "sandbox")
        self.image = os.path.join(self.folder, "sandbox.img")
        self.paths = SandboxPaths(upper=os.path.join(self.path, "upper"),
                                  work=os.path.join(self.path, "work"),
                                  rootfs=os.path.join(self.path, "rootfs"))

    def exists(self) -> bool:
        return os.path.isdir(self.paths.upper) and os.path.isdir(self.paths.work)

    @property
    def kind(self) -> str:
        """``disk`` when the container has a sandbox disk image, else ``dir``."""
        return "disk" if os.path.exists(self.image) else "dir"

    # -- the sandbox disk ----------------------------------------------------------------------

    def create_disk(self, pool: "DiskPool", size: int | None = None) -> None:
        """Put a formatted sandbox disk in place (CreateSandboxLayer copying ``blank.vhdx``;
        ExpandSandboxSize when a size is given). Called before :meth:`create`."""
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        if os.path.exists(self.image):
            raise AlreadyExists(f"the sandbox disk of container {self.container_id} exists "
                                "already", operation="storage::Sandbox::Create",
                                object_id=self.container_id)
        pool.take(self.image, size)

    def is_active(self) -> bool:
        """Whether the sandbox disk is mounted on the host over ``sandbox/`` (its own ext4, so
        a device change tells, without reading the host's whole mount table)."""
        return os.path.ismount(self.path)

    def activate(self) -> str:
        """Attach the disk to a loop device and mount it over ``sandbox/`` (ActivateLayer);
        returns the device. A no-op returning "" for a ``dir`` sandbox or an active disk.

        A disk fresh from the pool is attached already (the pool holds its device): only the
        mount is left to do. So is one whose filesystem something still holds (a container
        that just exited, whose mount namespace goes a moment after its last process): it is
        mounted through that device, sharing that filesystem (``disk.mount_image``)."""
        if self.kind != "disk" or self.is_active():
            return ""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        from silobox.storage import disk
        return disk.mount_image(self.image, self.path, root=self.root)

    def release_spare(self) -> None:
        """Let go of a device the pool attached ahead of time for this disk (before working on
        the image file itself: expand, attach read-only)."""
        from silobox.storage import disk
        pool = disk.pool_of(self.root)
        if pool is not None and pool.release(self.image):
            disk.wait_detached(self.image)

    def deactivate(self) -> None:
        """Unmount everything on and below ``sandbox/`` (DeactivateLayer); the loop device
        detaches itself (AUTOCLEAR) once the last mount of the disk is gone."""
        if not os.path.ismount(self.paths.rootfs):
            # The usual case: the disk's own mount on sandbox/ is all there is. Unmount it
            # directly; reading the mount table costs ~0.6 ms with 100 containers, every run.
            try:
                while os.path.ismount(self.path):
                    libc.umount2(self.path, 0)
                return
            except OSError:
                pass   # busy or raced: the full walk below deals with it
        for mount_point in mounts_under(self.path):
            try:
                libc.umount2(mount_point, 0)
            except OSError as e:
                if e.errno == errno.EBUSY:
                    libc.umount2(mount_point, libc.MNT_DETACH)
                elif e.errno not in (errno.EINVAL, errno.ENOENT):
                    raise SystemFailure(f"cannot unmount {mount_point}: {e.strerror}",
                                        operation="storage::Sandbox::Deactivate",
                                        object_id=self.container_id, cause=e) from e

    def loop_device(self) -> str:
        """The loop device the disk is attached to, or ""."""
        if self.kind != "disk":
            return ""
        from silobox.storage import disk
        found = disk.attached_loops(self.image)
        return found[0] if found else ""

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
            if os.path.lexists(self.image):
                # A loop device still attached (a lingering mount elsewhere) keeps the open
                # file; AUTOCLEAR detaches it when that goes, the blocks are freed then.
                from silobox.storage.disk import discard
                discard(self.image, self.root)
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
        hard links counted once (Docker's ``SizeRw``). For an inactive sandbox disk, what its
        filesystem holds beyond a freshly formatted one (read from the superblock)."""
        if self.kind == "disk" and not self.is_active():
            return self._disk_used_delta()
        from silobox.storage.changes import tree_bytes
        return tree_bytes(self.paths.upper)

    def _disk_used_delta(self) -> int:
        from silobox.storage import disk
        try:
            sb = disk.read_superblock(self.image)
        except SiloboxError:
            return 0
        baseline = self.disk_info().get("Baseline", sb.used)
        return max(0, sb.used - int(baseline))

    def disk_info(self) -> dict:
        """What was recorded when the disk was made (``sandbox.json``: Baseline, Size)."""
        try:
            with open(os.path.join(self.folder, "sandbox.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def expand(self, size: int) -> None:
        """ExpandSandboxSize: grow the disk (online through its loop device while active)."""
        from silobox.storage import disk
        if not self.is_active():
            self.release_spare()
        device = self.loop_device() if self.is_active() else None
        if device is None and self.loop_device():
            raise Conflict(f"the sandbox disk of container {self.container_id} is in use",
                           operation="storage::Sandbox::Expand", object_id=self.container_id)
        before = None if device else disk.read_superblock(self.image).used
        disk.grow_image(self.image, size, device)
        if before is not None:   # the new block groups' metadata is not the container's data
            info = self.disk_info()
            after = disk.read_superblock(self.image)
            info.update(Size=after.size,
                        Baseline=int(info.get("Baseline", before)) + after.used - before)
            with open(os.path.join(self.folder, "sandbox.json"), "w") as f:
                json.dump(info, f)

    def record_disk_info(self) -> None:
        from silobox.storage import disk
        sb = disk.read_superblock(self.image)
        # Derived data (re-readable from a fresh disk): no fsync on the create path.
        with open(os.path.join(self.folder, "sandbox.json"), "w") as f:
            json.dump({"Kind": "disk", "Size": sb.size, "Baseline": sb.used}, f)

    # -- overlay -------------------------------------------------------------------------------

    def overlay_options(self, lower_dirs: list[str]) -> str:
        """The overlay mount data for this sandbox over ``lower_dirs`` (top first), checked by
        the kernel layer's one builder (at most 500 layers, one page, no separators in a
        path): past those the mount would fail with an opaque EINVAL, so it is refused with
        the reason."""
        try:
            return overlay.options(lower_dirs, self.paths.upper, self.paths.work)
        except ValueError as e:
            raise InvalidArgument(str(e), operation="storage::Sandbox::Mount",
                                  object_id=self.container_id) from None

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
        activated = bool(self.activate())   # a sandbox disk is mounted over sandbox/ first
        try:
            libc.mount("overlay", self.paths.rootfs, "overlay", flags, options)
        except OSError as e:
            if activated:
                self.deactivate()
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
        if self.kind == "disk":
            self.deactivate()   # a running container never has its rootfs on the host
        return True

    def is_mounted(self) -> bool:
        """Whether the merged view is mounted on ``rootfs/`` on the host (an overlay: its own
        device)."""
        return os.path.ismount(self.paths.rootfs)


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
