"""The engine's side of storage: which container's sandbox, volumes and mounts, and when.

``StorageHook`` joins a container's life (create, start, stop, remove, inspect) and asks
storage for what it needs then: a sandbox disk at create (``SandboxStore``, with the kind and
size from ``HostConfig.StorageOpt``), its volumes made and filled from the image
(``VolumeStore``) after the create body's mounts are checked (``storage/mounts.py``), the disk
activated at start and deactivated at stop (ActivateLayer/DeactivateLayer), option volumes
mounted while a running container uses them.

``StorageOps`` is the engine mixin behind ``/volumes`` and silobox's ``/silobox/sandboxes``
views (list, inspect, expand, attach/detach on the host): it finds the container, holds its
lock and says which containers use a volume or bind a directory; storage does the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from silobox.engine.events import Actor
from silobox.engine.hooks import ContainerHook
from silobox.filters import labels_match
from silobox.errors import Conflict, InvalidArgument, NotFound, SiloboxError
from silobox.storage import disk as D
from silobox.storage.mounts import mount_tree, plan_mounts, tmpfs_of
from silobox.storage.sandboxes import SandboxStore, parse_daemon_options
from silobox.storage.volumes import VolumeStore

__all__ = ["StorageHook", "StorageOps", "mount_tree"]

log = logging.getLogger("silobox.storage")


class StorageHook(ContainerHook):
    """Sandbox disk and mounts of each container (see the module docstring)."""

    def __init__(self, engine: "StorageOps") -> None:
        self.e = engine

    # ----- create -------------------------------------------------------------------------
    def on_create(self, c: Any, body: dict[str, Any]) -> None:
        hc = c.host_config
        kind, size = self.e._sandbox_choice(hc.get("StorageOpt"))
        plan, tmpfs = self._plan_mounts(c, body)
        made: list[str] = []
        c.silobox["Storage"] = {"Created": made}
        # The container holds its image's layers (moby's RW layer over its parent chain): they
        # stay while it exists, also when ``rmi -f`` deletes the image record.
        diff_ids = self.e.images.get(c.image).diff_ids
        self.e.layers.hold(f"container:{c.id}", diff_ids)
        c.silobox["Layers"] = diff_ids
        try:
            if kind == "disk":
                self.e.sandboxes.create_disk(c.id, size)
            populate = self.e.volumes.provide(plan, made)
            if populate:
                self.e._populate_volumes(c.image, populate)
        except BaseException:
            self.undo_create(c)
            raise
        for m in plan:
            for private in ("_labels", "_nocopy", "_options", "_mount"):
                m.pop(private, None)
        mounts = list(c.mounts) + plan
        c.mounts = mounts
        c.silobox["Storage"] = {"Sandbox": kind, "Size": size, "Tmpfs": tmpfs,
                                        "Created": made}

    def _plan_mounts(self, c: Any, body: dict[str, Any]) -> tuple[list[dict], list[dict]]:
        """Validate every mount source of the create body (storage/mounts.py); nothing is
        created here."""
        volumes: dict[str, Any] = {}
        try:
            image = self.e.images.resolve(c.image)
            volumes.update((image.config.get("config") or {}).get("Volumes") or {})
        except NotFound:
            pass
        volumes.update(body.get("Volumes") or {})
        return plan_mounts(c.host_config, c.mounts, volumes,
                           self.e.volumes.exists)

    def undo_create(self, c: Any) -> None:
        self.e.layers.unhold(f"container:{c.id}")
        for name in (c.silobox.get("Storage") or {}).get("Created") or []:
            try:
                self.e.volumes.remove(name)
            except SiloboxError:
                pass
        self.e.sandboxes.discard_disk(c.id)

    # ----- start / stop -------------------------------------------------------------------
    async def on_start(self, c: Any, document: dict[str, Any]) -> None:
        attached = self.e.attachment(c.id)
        if attached:
            raise Conflict(f"cannot start container {c.name}: its sandbox is attached on the "
                           f"host at {attached['MountPoint']}; run 'silo sandbox detach "
                           f"{c.name}' first")
        for name in self._option_volumes(c):
            self.e.volumes.mount(name)    # type/device/o volumes: mounted while in use
        sandbox = self.e.sandboxes.get(c.id)
        if sandbox.is_mounted():
            raise Conflict(f"cannot start container {c.name}: its sandbox is mounted on the "
                           f"host at {sandbox.paths.rootfs} by another operation")
        await self.e.sandboxes.activate(c.id)
        storage = c.silobox.get("Storage") or {}
        cont = document.setdefault("Container", {})
        tmpfs = list(storage.get("Tmpfs") or [])
        tmpfs_paths = set()
        for m in c.mounts:
            if m.get("Type") == "tmpfs":
                tmpfs.append({"ContainerPath": m["Destination"],
                              "Options": tmpfs_of(c.host_config, m["Destination"])})
                tmpfs_paths.add(m["Destination"])
        if tmpfs:
            cont.setdefault("Linux", {})["Tmpfs"] = tmpfs
            cont["MappedDirectories"] = [
                d for d in cont.get("MappedDirectories") or []
                if not (d.get("ContainerPath") in tmpfs_paths and not d.get("HostPath"))]

    def _option_volumes(self, c: Any) -> list[str]:
        out = []
        for m in c.mounts:
            if m.get("Type") == "volume" and m.get("Name"):
                try:
                    if self.e.volumes.get(m["Name"]).options:
                        out.append(m["Name"])
                except NotFound:
                    pass
        return out

    def _release_volumes(self, c: Any) -> None:
        """Unmount the option volumes of ``c`` that no running container uses any more."""
        for name in self._option_volumes(c):
            if not [u for u in self.e.volume_users(name, exclude=c.id)
                    if self.e.store[u].running]:
                try:
                    self.e.volumes.unmount(name)
                except OSError as e:
                    log.warning("cannot unmount volume %s: %s", name, e)

    async def on_stop(self, c: Any) -> None:
        self._release_volumes(c)
        if self.e.attachment(c.id):
            return   # the start was refused; the attachment is the user's to detach
        # Inline: no await point before the hooks after this one (see deactivate_after_stop).
        self.e.sandboxes.deactivate_after_stop(c.id)

    async def on_remove(self, c: Any) -> None:
        self.e.disk_pool.busy()
        await asyncio.get_running_loop().run_in_executor(None, self.e._detach, c.id)
        self.e.sandboxes.get(c.id).deactivate()
        self._release_volumes(c)
        self.e.layers.unhold(f"container:{c.id}")
        if not self.e.images.exists(c.image):
            # its image was deleted (rmi -f) while it existed: the layers no image uses go now
            await asyncio.get_running_loop().run_in_executor(
                None, self.e.release_layers, c.silobox.get("Layers") or [])
        if getattr(c, "remove_volumes", False) or c.host_config.get("AutoRemove"):
            for m in c.mounts:
                if m.get("Type") != "volume" or not m.get("Name"):
                    continue
                try:
                    vol = self.e.volumes.get(m["Name"])
                except NotFound:
                    continue
                if not vol.anonymous or self.e.volume_users(vol.name, exclude=c.id):
                    continue
                try:
                    self.e.volumes.remove(vol.name)
                except SiloboxError as err:
                    log.warning("cannot remove volume %s: %s", vol.name, err)

    def on_inspect(self, c: Any, out: dict[str, Any]) -> None:
        gd = out.setdefault("GraphDriver", {"Name": "windowsfilter", "Data": {}})
        gd["Data"] = {**(gd.get("Data") or {}), **self.e.sandboxes.graph_driver_data(c.id)}


class StorageOps:
    """Volumes (``/volumes``), sandbox views (``/silobox/sandboxes``) and the storage hook."""

    def __init__(self, config: Any, db: Any, images: Any, layers: Any, store: Any,
                 events: Any, hooks: list[ContainerHook]) -> None:
        self.config = config
        self.db = db
        self.images = images
        self.layers = layers
        self.store = store
        self.events = events
        self._init_storage(hooks)

    def sandbox_for(self, cid: str) -> Any:
        """The container's sandbox (``storage.sandbox.Sandbox``)."""
        return self.sandboxes.get(cid)

    # ----- set-up -------------------------------------------------------------------------
    def _init_storage(self, hooks: list[ContainerHook]) -> None:
        self.volumes = VolumeStore(self.config.root, self.db)
        self.sandboxes = SandboxStore(self.config.root, self.config.exec_root, self.volumes,
                                      self._daemon_storage_opts())
        self.disk_pool = self.sandboxes.pool
        hooks.append(StorageHook(self))
        # what earlier daemons left of container data goes before the pool starts
        running_volumes = {m.get("Name") for c in self.store.values() if c.running
                           for m in c.mounts if m.get("Type") == "volume"}
        self.sandboxes.open({cid: bool(c.running) for cid, c in self.store.items()},
                            running_volumes)

    # ----- a container's layers ---------------------------------------------------------
    def container_layers(self, c: Any) -> list[Any]:
        """The container's image layers, base first: its image's, or, once ``rmi -f``
        deleted the image record, the ones it holds (recorded at create)."""
        try:
            return self.images.get(c.image).layers
        except NotFound:
            ids = c.silobox.get("Layers")
            if not ids:
                raise
            return [self.layers.get(d) for d in ids]

    def container_storage_layers(self, c: Any) -> list[dict[str, str]]:
        """HCS ``Container.Storage.Layers`` of the container."""
        from silobox.storage.images import storage_layers_of
        return storage_layers_of(self.container_layers(c))

    def container_lower_dirs(self, c: Any) -> list[str]:
        """The container's overlay ``lowerdir`` trees, top first."""
        return [e["Path"] for e in self.container_storage_layers(c)]

    def release_layers(self, diff_ids: list[str]) -> list[str]:
        """Remove those of ``diff_ids`` (and their parents) nothing uses any more."""
        gone: list[str] = []
        for diff_id in reversed(diff_ids):
            gone.extend(l.diff_id for l in self.layers.release(diff_id))
        return gone

    def _daemon_storage_opts(self) -> dict[str, str]:
        raw = list(getattr(self.config, "storage_opts", None) or [])
        env = os.environ.get("SILOBOX_STORAGE_OPTS", "")
        return parse_daemon_options([o for o in env.split(",") if o.strip()] + raw)

    def close(self) -> None:
        self.sandboxes.close()

    def _sandbox_choice(self, storage_opt: Any) -> tuple[str, int | None]:
        """``HostConfig.StorageOpt`` → (kind, size); Docker's ``Unknown option`` otherwise."""
        return self.sandboxes.choose(storage_opt)

    # ----- volumes: populate ----------------------------------------------------------------
    def _populate_volumes(self, image_id: str, items: list[tuple[str, str]]) -> None:
        """Copy the image's content at each destination into its (empty) volume."""
        try:
            image = self.images.resolve(image_id)
        except NotFound:
            return
        self.volumes.populate_from_image([e["Path"] for e in image.storage_layers()], items)

    def volume_users(self, name: str, exclude: str = "") -> list[str]:
        return [c.id for c in self.store.values() if c.id != exclude and any(
            m.get("Type") == "volume" and m.get("Name") == name
            for m in c.mounts)]

    # ----- volumes: the API -----------------------------------------------------------------
    async def volume_list(self, filters: dict[str, list[str]] | None = None) -> dict[str, Any]:
        filters = filters or {}
        for k in filters:
            if k not in ("name", "label", "dangling", "driver"):
                raise InvalidArgument(f"invalid filter '{k}'")
        out = []
        for vol in self.volumes.list():
            if filters.get("name") and not any(v in vol.name for v in filters["name"]):
                continue
            if filters.get("driver") and vol.driver not in filters["driver"]:
                continue
            if filters.get("label") and not labels_match(vol.labels, filters["label"]):
                continue
            if filters.get("dangling"):
                want = filters["dangling"][0].lower()
                if want not in ("1", "0", "true", "false"):
                    raise InvalidArgument(f"invalid filter 'dangling={want}'")
                if (want in ("1", "true")) != (not self.volume_users(vol.name)):
                    continue
            out.append(vol.to_docker())
        return {"Volumes": out, "Warnings": []}

    async def volume_create(self, body: dict[str, Any]) -> dict[str, Any]:
        for key, kind in (("Name", str), ("Driver", str), ("DriverOpts", dict),
                          ("Labels", dict)):
            if body.get(key) is not None and not isinstance(body[key], kind):
                raise InvalidArgument(f"json: cannot unmarshal into Go struct field "
                                      f"VolumeCreateBody.{key}")
        vol, _created = self.volumes.create(body.get("Name") or None,
                                            driver=body.get("Driver") or "local",
                                            labels=body.get("Labels") or {},
                                            options=body.get("DriverOpts") or None)
        if _created:
            self.emit_volume_event("create", vol.name)
        return vol.to_docker()

    async def volume_inspect(self, name: str) -> dict[str, Any]:
        return self.volumes.get(name).to_docker()

    async def volume_remove(self, name: str, force: bool = False) -> None:
        try:
            self.volumes.get(name)
        except NotFound:
            if force:
                return
            raise
        users = self.volume_users(name)
        if users:
            raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]",
                           operation="volume::Remove", object_id=name)
        self.volumes.remove(name)
        self.emit_volume_event("destroy", name)

    async def volume_prune(self, filters: dict[str, list[str]] | None = None,
                           all_volumes: bool = False) -> dict[str, Any]:
        filters = dict(filters or {})
        for k in filters:
            if k not in ("label", "label!", "all"):
                raise InvalidArgument(f"invalid filter '{k}'")
        if filters.get("all") and filters["all"][0].lower() in ("1", "true"):
            all_volumes = True
        deleted, reclaimed = [], 0
        for vol in self.volumes.list():
            if not all_volumes and not vol.anonymous:
                continue
            if filters.get("label") and not labels_match(vol.labels, filters["label"]):
                continue
            if filters.get("label!") and labels_match(vol.labels, filters["label!"],
                                                       any_of=True):
                continue
            if self.volume_users(vol.name):
                continue
            size = self.volumes.size(vol.name)
            self.volumes.remove(vol.name)
            self.emit_volume_event("destroy", vol.name)
            deleted.append(vol.name)
            reclaimed += size
        return {"VolumesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    def emit_volume_event(self, action: str, name: str) -> None:
        self.events.emit_event("volume", action, Actor(name), {"driver": "local"})

    # ----- sandboxes ------------------------------------------------------------------------
    def attachment(self, cid: str) -> dict[str, Any] | None:
        return self.sandboxes.attachments.record(cid)

    def _sandbox_record(self, c: Any) -> dict[str, Any]:
        return self.sandboxes.record(c.id, c.name, c.state["Status"])

    async def sandbox_list(self) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        items = sorted(self.store.values(), key=lambda c: c.created, reverse=True)
        return [await loop.run_in_executor(None, self._sandbox_record, c) for c in items]

    async def sandbox_inspect(self, ref: str) -> dict[str, Any]:
        c = self.store.find(ref)
        return await asyncio.get_running_loop().run_in_executor(None, self._sandbox_record, c)

    async def sandbox_expand(self, ref: str, size: str | int) -> dict[str, Any]:
        """ExpandSandboxSize: grow the disk (offline, or online while the container runs)."""
        c = self.store.find(ref)
        sandbox = self.sandboxes.get(c.id)
        if sandbox.kind != "disk":
            raise InvalidArgument(f"the sandbox of container {c.name} is a plain directory: it "
                                  "has no size to expand")
        new = size if isinstance(size, int) else D.parse_size(size)
        if self.attachment(c.id):
            raise Conflict(f"the sandbox of container {c.name} is attached on the host; "
                           "detach it first")
        async with self.store.lock(c.id):
            await asyncio.get_running_loop().run_in_executor(None, sandbox.expand, new)
        return await self.sandbox_inspect(c.id)

    async def sandbox_attach(self, ref: str, mountpoint: str = "", merged: bool = False,
                             rw: bool = False, allow_exec: bool = False) -> dict[str, Any]:
        """Mount a stopped container's sandbox on the host (``attach vdisk`` + ``assign
        letter``): the disk's own tree (upper/, work/), or with ``merged`` the container's
        whole filesystem. Read-only unless ``rw``.

        The container's files are untrusted: the mount is ``nosuid,nodev`` always and
        ``noexec`` unless ``allow_exec``, so a setuid binary or a device node the container
        made is inert on the host."""
        c = self.store.find(ref)
        async with self.store.lock(c.id):
            if c.running:
                raise Conflict(f"cannot attach the sandbox of container {c.name}: the container "
                               "is running; stop it first")
            if self.attachment(c.id):
                raise Conflict(f"the sandbox of container {c.name} is already attached at "
                               f"{self.attachment(c.id)['MountPoint']}")
            lowers: list[str] = []
            if merged:
                lowers = self.container_lower_dirs(c)
            rec = await asyncio.get_running_loop().run_in_executor(
                None, self._attach_sync, c, mountpoint, merged, rw, lowers, allow_exec)
        return rec

    def _attach_sync(self, c: Any, mountpoint: str, merged: bool, rw: bool,
                     lowers: list[str], allow_exec: bool = False) -> dict[str, Any]:
        # a directory bound into any container is part of that container's tree
        binds = [(os.path.realpath(m["Source"]), f"a directory of container {other.name}")
                 for other in self.store.values()
                 for m in other.mounts
                 if m.get("Type") == "bind" and (m.get("Source") or "").startswith("/")
                 and m.get("Source") != "/"]
        return self.sandboxes.attachments.attach(c.id, c.name, mountpoint, merged, rw, lowers,
                                                 allow_exec, binds)

    async def sandbox_detach(self, ref: str) -> dict[str, Any]:
        c = self.store.find(ref)
        async with self.store.lock(c.id):
            rec = await asyncio.get_running_loop().run_in_executor(None, self._detach, c.id)
        if rec is None:
            raise Conflict(f"the sandbox of container {c.name} is not attached")
        return rec

    def _detach(self, cid: str) -> dict[str, Any] | None:
        return self.sandboxes.attachments.detach(cid)
