"""What a daemon killed mid-operation left of container data on the host, found and removed at
the next start: mounts and loop devices nobody owns any more, then folders with no record.

Which containers exist and which run is the engine's knowledge; it is passed in (``owners``:
container id → running). The decisions are pure functions over what the host shows (mount
points, loop devices, directory entries), so they are tested without a kernel; the sweep itself
only unmounts, detaches and deletes what they pick. A folder with a mount still under it is kept
and logged, never deleted through the mount.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Collection, Iterable, Mapping

from silobox.errors import SiloboxError
from silobox.kernel import libc
from silobox.storage import disk as D
from silobox.storage.attach import SandboxAttachments
from silobox.storage.sandbox import Sandbox, mounts_under
from silobox.storage.volumes import VolumeStore

log = logging.getLogger("silobox.storage")


# ----- decisions ----------------------------------------------------------------------------
def orphan_container_mounts(points: Iterable[str], containers_dir: str,
                            owners: Mapping[str, bool], keep: Collection[str]) -> list[str]:
    """Of the mount points under ``containers_dir``, those to remove: all but a host
    attachment's (``keep``) and, of a running container, its active disk (``sandbox``) and its
    shareable ``/dev/shm`` (``shm``)."""
    out = []
    for point in points:
        rel = os.path.relpath(point, containers_dir).split("/")
        if point in keep:
            continue
        if owners.get(rel[0]) and len(rel) == 2 and rel[1] in ("sandbox", "shm"):
            continue
        out.append(point)
    return out


def orphan_volume_mounts(points: Iterable[str], volumes_dir: str,
                         in_use: Collection[str]) -> list[str]:
    """Of the mount points under ``volumes_dir``, those of volumes no running container uses."""
    return [p for p in points if os.path.relpath(p, volumes_dir).split("/")[0] not in in_use]


def orphan_loop_devices(devices: Iterable[D.LoopDevice], root: str, containers_dir: str,
                        owners: Mapping[str, bool], attached: Collection[str]) -> list[D.LoopDevice]:
    """Of the loop devices, those backed by a file under ``root`` that no running or attached
    container's existing disk image explains."""
    prefix = root.rstrip("/") + "/"
    out = []
    for dev in devices:
        if not dev.backing_file.startswith(prefix):
            continue
        rel = os.path.relpath(dev.backing_file, containers_dir).split("/")
        cid = rel[0] if len(rel) == 2 else None
        if cid is not None and cid in owners and (owners[cid] or cid in attached) and \
                os.path.exists(dev.backing_file):
            continue
        out.append(dev)
    return out


def leftover_entries(names: Iterable[str], known: Collection[str],
                     hidden_too: bool = True) -> list[str]:
    """Directory entries with no record in ``known``; dot entries are skipped unless
    ``hidden_too`` (a container folder has none of its own; a volume store keeps its
    ``.new-``/``.removing-`` scratch, which it cleans itself)."""
    return [n for n in names if n not in known and (hidden_too or not n.startswith("."))]


# ----- the sweep ----------------------------------------------------------------------------
class StorageSweep:
    """Removes what earlier daemons left of container data under one storage root."""

    def __init__(self, root: str, volumes: VolumeStore, attachments: SandboxAttachments) -> None:
        self.root = os.path.realpath(root)
        self.containers_dir = os.path.realpath(os.path.join(root, "containers"))
        self.volumes = volumes
        self.attachments = attachments

    def remove_orphans(self, owners: Mapping[str, bool], volumes_in_use: Collection[str]) -> None:
        """Reconcile mounts and loop devices with the store: what no stored container owns, or
        what belongs to a container that is not running and not attached, goes."""
        cdir = self.containers_dir
        records = {cid: self.attachments.record(cid) for cid in owners}
        keep = {p for rec in records.values() if rec for p in rec.get("Mounts") or []}
        for point in orphan_container_mounts(mounts_under(cdir), cdir, owners, keep):
            _unmount("removing orphan mount %s", point)
        vdir = os.path.realpath(self.volumes.dir)
        for point in orphan_volume_mounts(mounts_under(vdir), vdir, volumes_in_use):
            _unmount("removing orphan mount %s", point)
        attached = {cid for cid, rec in records.items() if rec}
        for dev in orphan_loop_devices(D.loop_devices(), self.root, cdir, owners, attached):
            log.info("detaching orphan loop device %s (%s)", dev.path, dev.backing_file)
            try:
                D.detach(dev.path)
            except OSError as e:
                log.warning("cannot detach %s: %s", dev.path, e)

    def remove_leftovers(self, containers: Collection[str]) -> None:
        """Remove what a daemon killed mid-create or mid-remove left with no record in the
        store: a container folder (etc files, sandbox directories, ``sandbox.img``), a volume
        folder, a scratch mount point of volume population. Runs after the orphan mounts and
        loop devices are gone."""
        scratch = os.path.join(self.root, "tmp")
        for point in mounts_under(scratch):
            _unmount("removing leftover mount %s", point)
        cdir = self.containers_dir
        for name in leftover_entries(_entries(cdir), containers):
            path = os.path.join(cdir, name)
            log.info("removing container folder %s: no container of that id is stored "
                     "(a create or remove was interrupted)", path)
            try:
                Sandbox(self.root, name).remove()
            except SiloboxError as e:
                log.warning("cannot remove the sandbox in %s: %s", path, e)
            remove_unmounted(path)
        vdir = os.path.realpath(self.volumes.dir)
        known = {v.name for v in self.volumes.list()}
        for name in leftover_entries(_entries(vdir), known, hidden_too=False):
            path = os.path.join(vdir, name)
            log.info("removing volume folder %s: no volume of that name is stored "
                     "(a create or remove was interrupted)", path)
            remove_unmounted(path)
        for name in _entries(scratch):
            remove_unmounted(os.path.join(scratch, name))


def _unmount(message: str, point: str) -> None:
    log.info(message, point)
    try:
        libc.umount2(point, libc.MNT_DETACH)
    except OSError as e:
        log.warning("cannot unmount %s: %s", point, e)


def _entries(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def remove_unmounted(path: str) -> None:
    """Delete ``path`` unless something is mounted at or below it (then it is only logged:
    deleting through a mount would reach whatever is mounted there)."""
    inside = mounts_under(path)
    if inside:
        log.warning("keeping %s: %s is still mounted there", path, inside[0])
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
