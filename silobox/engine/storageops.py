"""The storage half of a container's life: its sandbox disk, its volumes and mounts.

``StorageHook`` is registered with the container service and owns, per container:

* the sandbox kind and size (``HostConfig.StorageOpt``: ``size=5G``, ``sandbox=disk|dir``), the
  disk taken from the pool at create, activated (loop + mount over ``sandbox/``) at start and
  deactivated at stop, like hcsshim's ActivateLayer/DeactivateLayer around a container's run;
* its mounts: host binds and named volumes from ``-v``, ``HostConfig.Mounts`` (bind, volume,
  tmpfs), anonymous volumes for the image's and the config's ``Volumes``, ``HostConfig.Tmpfs``.
  New volumes are filled from the image's content at their path, as Docker does.

``StorageOps`` is the engine mixin behind ``/volumes`` and silobox's ``/silobox/sandboxes``
views: list, inspect, expand (ExpandSandboxSize), attach/detach on the host (diskpart's
``attach vdisk`` + ``assign letter``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from silobox.engine.hooks import ContainerHook
from silobox.filters import labels_match
from silobox.errors import Conflict, InvalidArgument, NotFound, SiloboxError
from silobox.storage import disk as D
from silobox.storage.sandboxes import SandboxStore, parse_daemon_options
from silobox.storage.volumes import VolumeStore, check_name

log = logging.getLogger("silobox.storage")

TMPFS_DEFAULTS = "noexec,nosuid,nodev"        # Docker's for --tmpfs
MOUNT_TMPFS_DEFAULTS = "nosuid,nodev"         # Docker's for --mount type=tmpfs
_BIND_MODES = {"ro", "rw", "z", "Z", "private", "rprivate", "shared", "rshared", "slave",
               "rslave", "nocopy"}


def _depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


def _clean(path: str) -> str:
    return os.path.normpath(path) if path else path


def mount_tree(mounts: list[dict[str, Any]], path: str) -> tuple[dict[str, Any], str] | None:
    """The volume or bind that holds container ``path`` and the path inside its source tree,
    or None when the path is in the container's own filesystem. The innermost mount wins, as
    in the container's mount table; the match is lexical (``..`` is folded first)."""
    where = "/" + os.path.normpath("/" + path).lstrip("/")
    best: tuple[dict[str, Any], str] | None = None
    for m in mounts:
        if m.get("Type") not in ("bind", "volume") or not m.get("Source"):
            continue
        dest = "/" + os.path.normpath("/" + m["Destination"]).lstrip("/")
        if where == dest or where.startswith(dest.rstrip("/") + "/"):
            if best is None or _depth(dest) > _depth(best[0]["Destination"]):
                best = (m, "/" + where[len(dest):].lstrip("/"))
    return best


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
        c.data.setdefault("Silobox", {})["Storage"] = {"Created": made}
        # The container holds its image's layers (moby's RW layer over its parent chain): they
        # stay while it exists, also when ``rmi -f`` deletes the image record.
        diff_ids = self.e.images.get(c.data["Image"]).diff_ids
        self.e.layers.hold(f"container:{c.id}", diff_ids)
        c.data["Silobox"]["Layers"] = diff_ids
        try:
            if kind == "disk":
                self.e.sandboxes.create_disk(c.id, size)
            populate: list[tuple[str, str]] = []
            for m in plan:
                if m["Type"] != "volume":
                    continue
                vol, created = self.e.volumes.create(m.get("Name") or None,
                                                     labels=m.pop("_labels", None),
                                                     options=m.pop("_options", None))
                if created:
                    made.append(vol.name)
                m["Name"], m["Source"] = vol.name, vol.mountpoint
                if not m.pop("_nocopy", False) and not vol.options and \
                        self.e.volumes.is_empty(vol.name):
                    populate.append((vol.name, m["Destination"]))
            if populate:
                self.e._populate_volumes(c.data["Image"], populate)
        except BaseException:
            self.undo_create(c)
            raise
        for m in plan:
            for private in ("_labels", "_nocopy", "_options", "_mount"):
                m.pop(private, None)
        mounts = list(c.data.get("Mounts") or []) + plan
        c.data["Mounts"] = mounts
        c.data["Silobox"]["Storage"] = {"Sandbox": kind, "Size": size, "Tmpfs": tmpfs,
                                        "Created": made}

    def _plan_mounts(self, c: Any, body: dict[str, Any]) -> tuple[list[dict], list[dict]]:
        """Validate every mount source of the create body; nothing is created here."""
        hc = c.host_config
        taken = {_clean(m["Destination"]) for m in c.data.get("Mounts") or []}
        plan: list[dict[str, Any]] = []

        def claim(dest: str) -> str:
            dest = _clean(dest)
            if dest in taken:
                raise InvalidArgument(f"Duplicate mount point: {dest}")
            taken.add(dest)
            return dest

        for b in hc.get("Binds") or []:
            parts = b.split(":")
            if parts[0].startswith("/"):
                continue   # host binds: spec.parse_binds made them already
            if len(parts) not in (2, 3) or not parts[1]:
                raise InvalidArgument(f"invalid volume specification: '{b}'")
            name, dest = parts[0], parts[1]
            mode = parts[2] if len(parts) == 3 else ""
            opts = [o for o in mode.split(",") if o]
            if any(o not in _BIND_MODES for o in opts):
                raise InvalidArgument(f"invalid mode: {mode}")
            check_name(name)
            if not dest.startswith("/") or dest == "/":
                raise InvalidArgument(f"invalid volume specification: '{b}': invalid mount "
                                      f"config for type \"volume\": invalid mount path: "
                                      f"'{dest}' mount path must be absolute")
            plan.append({"Type": "volume", "Name": name, "Source": "",
                         "Destination": claim(dest), "Driver": "local", "Mode": mode or "z",
                         "RW": "ro" not in opts, "Propagation": "", "_nocopy": "nocopy" in opts})
        mounts = hc.get("Mounts") or []
        if not isinstance(mounts, list):
            raise InvalidArgument("json: cannot unmarshal object into Go struct field "
                                  "HostConfig.HostConfig.Mounts of type []mount.Mount")
        for m in mounts:   # each names its own volume driver
            plan.append({**self._mount_entry(m, claim), "_mount": True})
        tmpfs: list[dict[str, str]] = []
        tmap = hc.get("Tmpfs") or {}
        if not isinstance(tmap, dict) or not all(isinstance(v, str) for v in tmap.values()):
            raise InvalidArgument("json: cannot unmarshal into Go struct field "
                                  "HostConfig.HostConfig.Tmpfs of type map[string]string")
        for path, opts in tmap.items():
            if not path.startswith("/") or path == "/":
                raise InvalidArgument(f"invalid mount path: '{path}' mount path must be absolute")
            options = f"{TMPFS_DEFAULTS},{opts}" if opts else TMPFS_DEFAULTS
            self._check_tmpfs(options)
            tmpfs.append({"ContainerPath": claim(path), "Options": options})
        # The image's VOLUMEs and the config's Volumes not covered by a mount: anonymous.
        wanted: dict[str, Any] = {}
        try:
            image = self.e.images.resolve(c.data["Image"])
            wanted.update((image.config.get("config") or {}).get("Volumes") or {})
        except NotFound:
            pass
        wanted.update(body.get("Volumes") or {})
        for path in wanted:
            if not isinstance(path, str) or not path.startswith("/") or path == "/":
                raise InvalidArgument(f"invalid mount path: '{path}' mount path must be absolute")
            if _clean(path) in taken:
                continue
            plan.append({"Type": "volume", "Name": "", "Source": "",
                         "Destination": claim(path), "Driver": "local", "Mode": "",
                         "RW": True, "Propagation": ""})
        driver = hc.get("VolumeDriver") or "local"
        if driver != "local" and any(
                p["Type"] == "volume" and not p.get("_mount") and
                not (p["Name"] and self.e.volumes.exists(p["Name"])) for p in plan):
            # as dockerd: the driver matters only for a volume that has to be made
            raise NotFound(f'error looking up volume plugin {driver}: plugin "{driver}" '
                           "not found")
        return plan, tmpfs

    def _mount_entry(self, m: Any, claim: Any) -> dict[str, Any]:
        """One ``HostConfig.Mounts`` item → a ``Mounts`` record (Docker's messages)."""
        if not isinstance(m, dict):
            raise InvalidArgument("invalid mount config: expected an object")
        kind = m.get("Type") or ""
        where = f'invalid mount config for type "{kind}"'
        target = m.get("Target") or ""
        if not target:
            raise InvalidArgument(f"{where}: field Target must not be empty")
        if not target.startswith("/") or target == "/":
            raise InvalidArgument(f"{where}: invalid mount path: '{target}' mount path must "
                                  "be absolute")
        src = m.get("Source") or ""
        ro = bool(m.get("ReadOnly"))
        if kind == "bind":
            if not src:
                raise InvalidArgument(f"{where}: field Source must not be empty")
            if not src.startswith("/"):
                raise InvalidArgument(f"{where}: invalid mount path: '{src}' mount path must "
                                      "be absolute")
            if m.get("VolumeOptions") or m.get("TmpfsOptions"):
                raise InvalidArgument(f"{where}: field VolumeOptions/TmpfsOptions must not be "
                                      "specified")
            if not os.path.exists(src):
                if (m.get("BindOptions") or {}).get("CreateMountpoint"):
                    os.makedirs(src, 0o755, exist_ok=True)
                else:
                    raise InvalidArgument(f"{where}: bind source path does not exist: {src}")
            prop = (m.get("BindOptions") or {}).get("Propagation") or "rprivate"
            return {"Type": "bind", "Source": src, "Destination": claim(target), "Mode": "",
                    "RW": not ro, "Propagation": prop}
        if kind == "volume":
            if m.get("BindOptions") or m.get("TmpfsOptions"):
                raise InvalidArgument(f"{where}: field BindOptions/TmpfsOptions must not be "
                                      "specified")
            vo = m.get("VolumeOptions") or {}
            driver = (vo.get("DriverConfig") or {}).get("Name") or "local"
            if driver != "local":
                raise NotFound(f'error looking up volume plugin {driver}: plugin "{driver}" '
                               "not found")
            options = (vo.get("DriverConfig") or {}).get("Options") or None
            if options:
                from silobox.storage.volumes import check_options
                check_options(options)
            if vo.get("Subpath"):
                raise InvalidArgument(f"{where}: volume subpaths are not supported")
            if src:
                check_name(src)
            return {"Type": "volume", "Name": src, "Source": "",
                    "Destination": claim(target), "Driver": "local", "Mode": "z",
                    "RW": not ro, "Propagation": "", "_nocopy": bool(vo.get("NoCopy")),
                    "_labels": vo.get("Labels") or None, "_options": options}
        if kind == "tmpfs":
            if src:
                raise InvalidArgument(f"{where}: field Source must not be specified")
            if m.get("BindOptions") or m.get("VolumeOptions"):
                raise InvalidArgument(f"{where}: field BindOptions/VolumeOptions must not be "
                                      "specified")
            to = m.get("TmpfsOptions") or {}
            opts = [MOUNT_TMPFS_DEFAULTS]
            if ro:
                opts.append("ro")
            if to.get("SizeBytes"):
                size = int(to["SizeBytes"])
                if size < 0:
                    raise InvalidArgument(f"{where}: invalid tmpfs size {size}")
                opts.append(f"size={size}")
            if to.get("Mode"):
                opts.append(f"mode={int(to['Mode']):o}")
            options = ",".join(opts)
            self._check_tmpfs(options)
            return {"Type": "tmpfs", "Source": "", "Destination": claim(target), "Mode": "",
                    "RW": not ro, "Propagation": ""}
        if not kind:
            raise InvalidArgument("invalid mount config: mount type unknown")
        raise InvalidArgument(f'invalid mount config for type "{kind}": mount type unknown')

    @staticmethod
    def _check_tmpfs(options: str) -> None:
        from silobox.kernel.silo import tmpfs_options
        try:
            tmpfs_options(options)
        except ValueError as e:
            raise InvalidArgument(f"invalid tmpfs options: {e}") from None

    def undo_create(self, c: Any) -> None:
        self.e.layers.unhold(f"container:{c.id}")
        for name in (c.data.get("Silobox", {}).get("Storage") or {}).get("Created") or []:
            try:
                self.e.volumes.remove(name)
            except SiloboxError:
                pass
        self.e.sandboxes.discard_disk(c.id)

    # ----- start / stop -------------------------------------------------------------------
    async def on_start(self, c: Any, document: dict[str, Any]) -> None:
        attached = self.e._attachment(c.id)
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
        storage = c.data.get("Silobox", {}).get("Storage") or {}
        cont = document.setdefault("Container", {})
        tmpfs = list(storage.get("Tmpfs") or [])
        tmpfs_paths = set()
        for m in c.data.get("Mounts") or []:
            if m.get("Type") == "tmpfs":
                tmpfs.append({"ContainerPath": m["Destination"],
                              "Options": self._mount_tmpfs_options(c, m)})
                tmpfs_paths.add(m["Destination"])
        if tmpfs:
            cont.setdefault("Linux", {})["Tmpfs"] = tmpfs
            cont["MappedDirectories"] = [
                d for d in cont.get("MappedDirectories") or []
                if not (d.get("ContainerPath") in tmpfs_paths and not d.get("HostPath"))]

    def _option_volumes(self, c: Any) -> list[str]:
        out = []
        for m in c.data.get("Mounts") or []:
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
            if not [u for u in self.e._volume_users(name, exclude=c.id)
                    if self.e.containers[u].running]:
                try:
                    self.e.volumes.unmount(name)
                except OSError as e:
                    log.warning("cannot unmount volume %s: %s", name, e)

    @staticmethod
    def _mount_tmpfs_options(c: Any, m: dict) -> str:
        for spec in c.host_config.get("Mounts") or []:
            if isinstance(spec, dict) and spec.get("Type") == "tmpfs" and \
                    _clean(spec.get("Target") or "") == m["Destination"]:
                to = spec.get("TmpfsOptions") or {}
                opts = [MOUNT_TMPFS_DEFAULTS] + (["ro"] if spec.get("ReadOnly") else [])
                if to.get("SizeBytes"):
                    opts.append(f"size={int(to['SizeBytes'])}")
                if to.get("Mode"):
                    opts.append(f"mode={int(to['Mode']):o}")
                return ",".join(opts)
        return MOUNT_TMPFS_DEFAULTS

    async def on_stop(self, c: Any) -> None:
        self._release_volumes(c)
        if self.e._attachment(c.id):
            return   # the start was refused; the attachment is the user's to detach
        # Inline: no await point before the hooks after this one (see deactivate_after_stop).
        self.e.sandboxes.deactivate_after_stop(c.id)

    async def on_remove(self, c: Any) -> None:
        self.e.disk_pool.busy()
        await asyncio.get_running_loop().run_in_executor(None, self.e._detach, c.id)
        self.e.sandboxes.get(c.id).deactivate()
        self._release_volumes(c)
        self.e.layers.unhold(f"container:{c.id}")
        if not self.e.images.exists(c.data["Image"]):
            # its image was deleted (rmi -f) while it existed: the layers no image uses go now
            await asyncio.get_running_loop().run_in_executor(
                None, self.e.release_layers, (c.data.get("Silobox") or {}).get("Layers") or [])
        if getattr(c, "remove_volumes", False) or c.host_config.get("AutoRemove"):
            for m in c.data.get("Mounts") or []:
                if m.get("Type") != "volume" or not m.get("Name"):
                    continue
                try:
                    vol = self.e.volumes.get(m["Name"])
                except NotFound:
                    continue
                if not vol.anonymous or self.e._volume_users(vol.name, exclude=c.id):
                    continue
                try:
                    self.e.volumes.remove(vol.name)
                except SiloboxError as err:
                    log.warning("cannot remove volume %s: %s", vol.name, err)

    def on_inspect(self, c: Any, out: dict[str, Any]) -> None:
        gd = out.setdefault("GraphDriver", {"Name": "windowsfilter", "Data": {}})
        gd["Data"] = {**(gd.get("Data") or {}), **self.e.sandboxes.graph_driver_data(c.id)}


class StorageOps:
    """Engine mixin: volumes (``/volumes``) and sandbox views (``/silobox/sandboxes``)."""

    config: Any
    db: Any
    images: Any
    containers: dict[str, Any]
    container_hooks: list[ContainerHook]

    # ----- set-up -------------------------------------------------------------------------
    def _init_storage(self) -> None:
        self.volumes = VolumeStore(self.config.root, self.db)
        self.sandboxes = SandboxStore(self.config.root, self.config.exec_root, self.volumes,
                                      self._daemon_storage_opts())
        self.disk_pool = self.sandboxes.pool
        self.sandbox_readers = self.sandboxes.readers
        self.container_hooks.append(StorageHook(self))
        # what earlier daemons left of container data goes before the pool starts
        running_volumes = {m.get("Name") for c in self.containers.values() if c.running
                           for m in c.data.get("Mounts") or [] if m.get("Type") == "volume"}
        self.sandboxes.open({cid: bool(c.running) for cid, c in self.containers.items()},
                            running_volumes)

    # ----- a container's layers ---------------------------------------------------------
    def container_layers(self, c: Any) -> list[Any]:
        """The container's image layers, base first: its image's, or, once ``rmi -f``
        deleted the image record, the ones it holds (recorded at create)."""
        try:
            return self.images.get(c.data["Image"]).layers
        except NotFound:
            ids = (c.data.get("Silobox") or {}).get("Layers")
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

    def _close_storage(self) -> None:
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

    def _volume_users(self, name: str, exclude: str = "") -> list[str]:
        return [c.id for c in self.containers.values() if c.id != exclude and any(
            m.get("Type") == "volume" and m.get("Name") == name
            for m in c.data.get("Mounts") or [])]

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
                if (want in ("1", "true")) != (not self._volume_users(vol.name)):
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
        users = self._volume_users(name)
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
            if self._volume_users(vol.name):
                continue
            size = self.volumes.size(vol.name)
            self.volumes.remove(vol.name)
            self.emit_volume_event("destroy", vol.name)
            deleted.append(vol.name)
            reclaimed += size
        return {"VolumesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    def emit_volume_event(self, action: str, name: str) -> None:
        emit = getattr(self, "emit_event", None)
        if emit is None:
            return
        try:
            emit("volume", action, _Named(name), {"driver": "local"})
        except Exception:   # events are best effort; the event log's shape is its own
            log.debug("no volume event for %s", name, exc_info=True)

    # ----- sandboxes ------------------------------------------------------------------------
    def _attachment(self, cid: str) -> dict[str, Any] | None:
        return self.sandboxes.attachments.record(cid)

    def _sandbox_record(self, c: Any) -> dict[str, Any]:
        return self.sandboxes.record(c.id, c.name, c.state["Status"])

    async def sandbox_list(self) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        items = sorted(self.containers.values(), key=lambda c: c.data["Created"], reverse=True)
        return [await loop.run_in_executor(None, self._sandbox_record, c) for c in items]

    async def sandbox_inspect(self, ref: str) -> dict[str, Any]:
        c = self._find(ref)  # type: ignore[attr-defined]
        return await asyncio.get_running_loop().run_in_executor(None, self._sandbox_record, c)

    async def sandbox_expand(self, ref: str, size: str | int) -> dict[str, Any]:
        """ExpandSandboxSize: grow the disk (offline, or online while the container runs)."""
        c = self._find(ref)  # type: ignore[attr-defined]
        sandbox = self.sandboxes.get(c.id)
        if sandbox.kind != "disk":
            raise InvalidArgument(f"the sandbox of container {c.name} is a plain directory: it "
                                  "has no size to expand")
        new = size if isinstance(size, int) else D.parse_size(size)
        if self._attachment(c.id):
            raise Conflict(f"the sandbox of container {c.name} is attached on the host; "
                           "detach it first")
        async with self._lock(c.id):  # type: ignore[attr-defined]
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
        c = self._find(ref)  # type: ignore[attr-defined]
        async with self._lock(c.id):  # type: ignore[attr-defined]
            if c.running:
                raise Conflict(f"cannot attach the sandbox of container {c.name}: the container "
                               "is running; stop it first")
            if self._attachment(c.id):
                raise Conflict(f"the sandbox of container {c.name} is already attached at "
                               f"{self._attachment(c.id)['MountPoint']}")
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
                 for other in self.containers.values()
                 for m in other.data.get("Mounts") or []
                 if m.get("Type") == "bind" and (m.get("Source") or "").startswith("/")
                 and m.get("Source") != "/"]
        return self.sandboxes.attachments.attach(c.id, c.name, mountpoint, merged, rw, lowers,
                                                 allow_exec, binds)

    async def sandbox_detach(self, ref: str) -> dict[str, Any]:
        c = self._find(ref)  # type: ignore[attr-defined]
        async with self._lock(c.id):  # type: ignore[attr-defined]
            rec = await asyncio.get_running_loop().run_in_executor(None, self._detach, c.id)
        if rec is None:
            raise Conflict(f"the sandbox of container {c.name} is not attached")
        return rec

    def _detach(self, cid: str) -> dict[str, Any] | None:
        return self.sandboxes.attachments.detach(cid)


class _Named:
    """What the event log needs of an object: an id and a name."""

    def __init__(self, name: str) -> None:
        self.id = name
        self.name = name
        self.data: dict[str, Any] = {"Config": {"Labels": {}}, "Name": "/" + name}
        self.config = self.data["Config"]
