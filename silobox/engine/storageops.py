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
import json
import logging
import os
import shutil
import uuid
from typing import Any

from silobox.atomic import atomic_write_json
from silobox.engine.hooks import ContainerHook
from silobox.filters import labels_match
from silobox.errors import (Conflict, InvalidArgument, NotFound, SiloboxError, SystemFailure,
                            Unavailable)
from silobox.kernel import libc
from silobox.kernel.saferoot import SafeRoot
from silobox.storage import disk as D
from silobox.storage.sandbox import Sandbox, mounts_under
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
                self.e.disk_pool.busy()
                sandbox = Sandbox(self.e.config.root, c.id)
                sandbox.create_disk(self.e.disk_pool, size)
                sandbox.record_disk_info()
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
        sandbox = Sandbox(self.e.config.root, c.id)
        try:
            sandbox.deactivate()
            self.e.disk_pool.release(sandbox.image)
            if os.path.exists(sandbox.image):
                os.unlink(sandbox.image)
        except (OSError, SiloboxError):
            pass

    # ----- start / stop -------------------------------------------------------------------
    async def on_start(self, c: Any, document: dict[str, Any]) -> None:
        attached = self.e._attachment(c.id)
        if attached:
            raise Conflict(f"cannot start container {c.name}: its sandbox is attached on the "
                           f"host at {attached['MountPoint']}; run 'silo sandbox detach "
                           f"{c.name}' first")
        for name in self._option_volumes(c):
            self.e.volumes.mount(name)    # type/device/o volumes: mounted while in use
        sandbox = Sandbox(self.e.config.root, c.id)
        if sandbox.is_mounted():
            raise Conflict(f"cannot start container {c.name}: its sandbox is mounted on the "
                           f"host at {sandbox.paths.rootfs} by another operation")
        if sandbox.kind == "disk":
            self.e.disk_pool.busy()
            if not sandbox.is_active() and not self.e.disk_pool.holds(sandbox.image):
                # A container that just exited may still hold its disk for a moment (its mount
                # namespace is torn down after its last process); AUTOCLEAR then detaches the
                # loop device. Mounting the image again before that would make a second ext4
                # instance of the same disk, so wait for it. (A disk fresh from the pool comes
                # attached: the pool holds its device.)
                for _ in range(400):
                    if not sandbox.loop_device():
                        break
                    await asyncio.sleep(0.005)
            sandbox.activate()   # a mount (~1 ms): cheaper inline than a thread hop
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
        sandbox = Sandbox(self.e.config.root, c.id)
        if sandbox.kind == "disk" and not self.e.sandbox_readers.get(c.id):
            self.e.disk_pool.busy()
            # Inline (an unmount, ~1 ms): no await point before the hooks after this one, so
            # a restart never waits on, or races with, this container's disk.
            sandbox.deactivate()

    async def on_remove(self, c: Any) -> None:
        self.e.disk_pool.busy()
        await asyncio.get_running_loop().run_in_executor(None, self.e._detach, c.id)
        Sandbox(self.e.config.root, c.id).deactivate()
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
        sandbox = Sandbox(self.e.config.root, c.id)
        gd = out.setdefault("GraphDriver", {"Name": "windowsfilter", "Data": {}})
        data = dict(gd.get("Data") or {})
        data["sandbox"] = sandbox.kind
        if sandbox.kind == "disk":
            data["disk"] = sandbox.image
            data["size"] = str(os.stat(sandbox.image).st_size)
        gd["Data"] = data


class StorageOps:
    """Volumes (``/volumes``), sandbox views (``/silobox/sandboxes``) and the storage hook."""

    def __init__(self, config: Any, db: Any, images: Any, layers: Any, store: Any,
                 events: Any, hooks: list[ContainerHook]) -> None:
        self.config = config
        self.db = db
        self.images = images
        self.layers = layers
        self.containers = store
        self._find = store.find
        self._lock = store.lock
        self.emit_event = events.emit_event
        self.container_hooks = hooks
        self._init_storage()

    def sandbox_for(self, cid: str) -> Sandbox:
        return Sandbox(self.config.root, cid)

    # ----- set-up -------------------------------------------------------------------------
    def _init_storage(self) -> None:
        opts = self._daemon_storage_opts()
        self.volumes = VolumeStore(self.config.root, self.db)
        self.sandbox_readers: dict[str, int] = {}
        """Readers of a running container's sandbox (commit, diff): its disk stays mounted
        past the container's stop until the last of them is done."""
        # A sandbox disk per container by default (Windows' sandbox.vhdx); the pool keeps
        # disks copied, written back and attached ahead of time, so a start only mounts one.
        self.sandbox_default = opts.get("sandbox") or "disk"
        self.sandbox_size = D.parse_size(opts["size"]) if opts.get("size") else D.DEFAULT_SIZE
        if self.sandbox_size < D.MIN_SIZE:
            raise InvalidArgument(f"storage option size={opts['size']} is below the minimum "
                                  f"sandbox size of {D.human_size(D.MIN_SIZE)}")
        self.disk_unavailable = D.loop_supported()
        if self.disk_unavailable and self.sandbox_default == "disk":
            log.warning("sandbox disks are unavailable (%s): containers get plain-directory "
                        "sandboxes", self.disk_unavailable)
            self.sandbox_default = "dir"
        # With directories as the default the pool keeps no disks, but its thread still
        # deletes removed containers' images off the rm path.
        self.disk_pool = D.DiskPool(D.pool_dir(self.config.root), self.sandbox_size,
                                    target=int(opts.get("pool", D.POOL_TARGET))
                                    if self.sandbox_default == "disk" else 0)
        self.container_hooks.append(StorageHook(self))
        self._remove_storage_orphans()
        self._remove_storage_leftovers()
        self.disk_pool.start()

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
        raw = [o for o in env.split(",") if o.strip()] + raw
        out: dict[str, str] = {}
        for item in raw:
            key, eq, value = item.partition("=")
            key = key.strip().lower()
            if not eq or key not in ("sandbox", "size", "pool"):
                raise InvalidArgument(f"invalid storage option {item!r}: use sandbox=disk|dir, "
                                      "size=SIZE or pool=N")
            if key == "pool" and not value.strip().isdigit():
                raise InvalidArgument(f"invalid storage option {item!r}: pool is a number")
            if key == "sandbox" and value not in ("disk", "dir"):
                raise InvalidArgument(f"invalid storage option {item!r}: sandbox is disk or dir")
            out[key] = value.strip()
        return out

    def _close_storage(self) -> None:
        self.disk_pool.stop()

    def _sandbox_choice(self, storage_opt: Any) -> tuple[str, int | None]:
        """``HostConfig.StorageOpt`` → (kind, size); Docker's ``Unknown option`` otherwise."""
        if storage_opt is not None and not (isinstance(storage_opt, dict) and all(
                isinstance(v, str) for v in storage_opt.values())):
            raise InvalidArgument("json: cannot unmarshal into Go struct field "
                                  "HostConfig.HostConfig.StorageOpt of type map[string]string")
        opts = {k.lower(): v for k, v in (storage_opt or {}).items()}
        for key in opts:
            if key not in ("size", "sandbox"):
                raise InvalidArgument(f"Unknown option {key}")
        kind = opts.get("sandbox") or ("disk" if opts.get("size") else self.sandbox_default)
        if kind not in ("disk", "dir"):
            raise InvalidArgument(f"invalid storage option sandbox={kind}: use disk or dir")
        size = D.parse_size(opts["size"], "storage-opt size") if opts.get("size") else None
        if kind == "dir":
            if size is not None:
                raise InvalidArgument("--storage-opt size is supported only for sandbox disks "
                                      "(sandbox=disk)")
            return "dir", None
        if self.disk_unavailable:
            raise Unavailable(f"sandbox disks are unavailable on this host: "
                              f"{self.disk_unavailable}")
        if size is not None and size < D.MIN_SIZE:
            raise InvalidArgument(f"--storage-opt size={opts['size']} is below the minimum "
                                  f"sandbox size of {D.human_size(D.MIN_SIZE)}")
        return "disk", size

    def _remove_storage_orphans(self) -> None:
        """Reconcile mounts and loop devices with the store: what no stored container owns, or
        what belongs to a container that is not running and not attached, goes."""
        cdir = os.path.realpath(self.config.containers_dir)
        keep: set[str] = set()
        for cid in self.containers:
            att = self._attachment(cid)
            if att:
                keep.update(att.get("Mounts") or [])
        for point in mounts_under(cdir):
            rel = os.path.relpath(point, cdir).split("/")
            cid = rel[0]
            c = self.containers.get(cid)
            if point in keep:
                continue
            if c is not None and c.running and len(rel) == 2 and rel[1] in ("sandbox", "shm"):
                continue   # the active disk of a running container, or its shareable /dev/shm
            log.info("removing orphan mount %s", point)
            try:
                libc.umount2(point, libc.MNT_DETACH)
            except OSError as e:
                log.warning("cannot unmount %s: %s", point, e)
        in_use = {m.get("Name") for c in self.containers.values() if c.running
                  for m in c.data.get("Mounts") or [] if m.get("Type") == "volume"}
        vdir = os.path.realpath(self.volumes.dir)
        for point in mounts_under(vdir):
            rel = os.path.relpath(point, vdir).split("/")
            if rel[0] in in_use:
                continue
            log.info("removing orphan mount %s", point)
            try:
                libc.umount2(point, libc.MNT_DETACH)
            except OSError as e:
                log.warning("cannot unmount %s: %s", point, e)
        root = os.path.realpath(self.config.root).rstrip("/") + "/"
        for dev in D.loop_devices():
            if not dev.backing_file.startswith(root):
                continue
            rel = os.path.relpath(dev.backing_file, cdir).split("/")
            c = self.containers.get(rel[0]) if len(rel) == 2 else None
            if c is not None and (c.running or self._attachment(c.id)) and \
                    os.path.exists(dev.backing_file):
                continue
            log.info("detaching orphan loop device %s (%s)", dev.path, dev.backing_file)
            try:
                D.detach(dev.path)
            except OSError as e:
                log.warning("cannot detach %s: %s", dev.path, e)

    def _remove_storage_leftovers(self) -> None:
        """Remove what a daemon killed mid-create or mid-remove left with no record in the
        store: a container folder (etc files, sandbox directories, ``sandbox.img``), a volume
        folder, a scratch mount point of volume population. Runs after the orphan mounts and
        loop devices are gone; a folder with a mount still under it is kept and logged, never
        deleted through the mount."""
        root = os.path.realpath(self.config.root)
        scratch = os.path.join(root, "tmp")
        for point in mounts_under(scratch):
            log.info("removing leftover mount %s", point)
            try:
                libc.umount2(point, libc.MNT_DETACH)
            except OSError as e:
                log.warning("cannot unmount %s: %s", point, e)
        cdir = os.path.realpath(self.config.containers_dir)
        for name in _entries(cdir):
            if name in self.containers:
                continue
            path = os.path.join(cdir, name)
            log.info("removing container folder %s: no container of that id is stored "
                     "(a create or remove was interrupted)", path)
            try:
                Sandbox(self.config.root, name).remove()
            except SiloboxError as e:
                log.warning("cannot remove the sandbox in %s: %s", path, e)
            _remove_unmounted(path)
        vdir = os.path.realpath(self.volumes.dir)
        known = {r["name"] for r in self.db.query("SELECT name FROM volumes")}
        for name in _entries(vdir):
            if name.startswith(".") or name in known:
                continue
            path = os.path.join(vdir, name)
            log.info("removing volume folder %s: no volume of that name is stored "
                     "(a create or remove was interrupted)", path)
            _remove_unmounted(path)
        for name in _entries(scratch):
            _remove_unmounted(os.path.join(scratch, name))

    # ----- volumes: populate ----------------------------------------------------------------
    def _populate_volumes(self, image_id: str, items: list[tuple[str, str]]) -> None:
        """Copy the image's content at each destination into its (empty) volume."""
        try:
            image = self.images.resolve(image_id)
        except NotFound:
            return
        lowers = [entry["Path"] for entry in image.storage_layers()]
        if not lowers:
            return
        tmp = os.path.join(self.config.root, "tmp", f"populate-{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp, mode=0o700)
        try:
            if len(lowers) == 1:
                libc.mount(lowers[0], tmp, None, libc.MS_BIND)
                libc.mount(None, tmp, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY)
            else:
                libc.mount("overlay", tmp, "overlay", libc.MS_RDONLY,
                           f"lowerdir={':'.join(lowers)}")
        except OSError as e:
            os.rmdir(tmp)
            raise SystemFailure(f"cannot mount the image to fill its volumes: {e.strerror}",
                                cause=e) from e
        try:
            # the image's symlinks on the way are followed as the container would see them,
            # inside the image only (SafeRoot); its content is copied from the directory found
            with SafeRoot(tmp) as tree:
                for name, dest in items:
                    try:
                        src = tree.open_dir(dest)
                    except OSError:
                        continue   # absent or not a directory in the image: nothing to copy
                    try:
                        self.volumes.populate(name, src)
                    finally:
                        os.close(src)
        finally:
            libc.umount2(tmp, libc.MNT_DETACH)
            os.rmdir(tmp)

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
    def _attach_record_path(self, cid: str) -> str:
        return os.path.join(self.config.containers_dir, cid, "attach.json")

    def _attachment(self, cid: str) -> dict[str, Any] | None:
        try:
            with open(self._attach_record_path(cid)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _sandbox_record(self, c: Any) -> dict[str, Any]:
        sandbox = Sandbox(self.config.root, c.id)
        kind = sandbox.kind
        rec: dict[str, Any] = {
            "Id": c.id, "Name": c.name, "State": c.state["Status"], "Kind": kind,
            "Path": sandbox.path, "Disk": sandbox.image if kind == "disk" else "",
            "LoopDevice": sandbox.loop_device(), "Active": False, "Size": 0, "Used": 0,
            "FileSize": 0, "Attached": self._attachment(c.id),
        }
        if kind == "disk":
            st = os.stat(sandbox.image)
            rec["Size"] = st.st_size
            rec["FileSize"] = st.st_blocks * 512   # what the sparse image takes on the host
            rec["Active"] = sandbox.is_active()
            if rec["Active"]:
                vfs = os.statvfs(sandbox.path)
                rec["Used"] = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
                rec["Size"] = st.st_size
            else:   # what the superblock counts beyond a fresh disk's metadata
                try:
                    used = D.read_superblock(sandbox.image).used
                    rec["Used"] = max(0, used - int(sandbox.disk_info().get("Baseline", 0)))
                except SiloboxError:
                    pass
        else:
            rec["Used"] = sandbox.used_bytes() if os.path.isdir(sandbox.paths.upper) else 0
        return rec

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
        sandbox = Sandbox(self.config.root, c.id)
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

    def _attach_refusal(self, c: Any, point: str) -> str:
        """Why ``point`` (a real path) may not hold an attached sandbox, or "".

        Our state directories hold every container's tree and the store; /proc reaches running
        containers' roots; a directory bound into a container is part of that container's
        tree. A sandbox mounted in any of them would be reachable, or writable, from a
        container. The one place under the state dir allowed is this container's own ``mnt``."""
        own = os.path.realpath(os.path.join(self.config.containers_dir, c.id, "mnt"))
        if point == own:
            return ""
        forbidden = [(os.path.realpath(self.config.root), "silod's state directory"),
                     (os.path.realpath(self.config.exec_root), "silod's runtime directory"),
                     ("/proc", "/proc")]
        for other in self.containers.values():
            for m in other.data.get("Mounts") or []:
                src = m.get("Source") or ""
                if m.get("Type") == "bind" and src.startswith("/") and src != "/":
                    forbidden.append((os.path.realpath(src),
                                      f"a directory of container {other.name}"))
        for base, what in forbidden:
            if point == base or point.startswith(base.rstrip("/") + "/"):
                return f"{point} is inside {what}"
        return ""

    def _checked_fd(self, c: Any, path: str, flags: int) -> int:
        """An O_PATH fd of ``path``, refused unless it is in silod's own mount namespace
        (a path through /proc/<pid>/root leads into a container's) and outside the forbidden
        trees, both asked of the directory actually opened."""
        try:
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | flags)
        except OSError as e:
            raise InvalidArgument(f"mount point {path} is not a directory") from e
        try:
            why = self._attach_refusal(c, os.readlink(f"/proc/self/fd/{fd}"))
            if not why and not _in_own_mount_namespace(fd):
                why = f"{path} is in another mount namespace (a container's tree)"
        except BaseException:
            os.close(fd)
            raise
        if why:
            os.close(fd)
            raise InvalidArgument(f"cannot attach the sandbox of container {c.name}: {why}")
        return fd

    def _open_attach_point(self, c: Any, mountpoint: str) -> tuple[int, bool]:
        """(O_PATH fd of the checked mount point, whether we created it).

        The checks are made on the directories actually opened (the nearest existing one
        before anything is created, then the mount point), and the mount goes onto the fd,
        so no path component swapped after the check can move it."""
        for path in (mountpoint, os.path.realpath(mountpoint)):
            why = self._attach_refusal(c, path)
            if why:
                raise InvalidArgument(f"cannot attach the sandbox of container {c.name}: {why}")
        existing = mountpoint
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        if mountpoint != os.path.abspath(os.path.join(self.config.containers_dir, c.id, "mnt")):
            os.close(self._checked_fd(c, existing, 0))   # the default's parent is ours
        created = existing != mountpoint
        os.makedirs(mountpoint, mode=0o755, exist_ok=True)
        return self._checked_fd(c, mountpoint, os.O_NOFOLLOW), created

    def _attach_sync(self, c: Any, mountpoint: str, merged: bool, rw: bool,
                     lowers: list[str], allow_exec: bool = False) -> dict[str, Any]:
        sandbox = Sandbox(self.config.root, c.id)
        if not mountpoint:
            mountpoint = os.path.join(self.config.containers_dir, c.id, "mnt")
        mountpoint = os.path.abspath(mountpoint)
        if os.path.exists(mountpoint) and not os.path.isdir(mountpoint):
            raise InvalidArgument(f"mount point {mountpoint} is not a directory")
        if mountpoint in mounts_under(mountpoint):
            raise Conflict(f"{mountpoint} is a mount point already")
        inert = libc.MS_NOSUID | libc.MS_NODEV | (0 if allow_exec else libc.MS_NOEXEC)
        point_fd, created = self._open_attach_point(c, mountpoint)
        target = f"/proc/self/fd/{point_fd}"
        done: list[str] = []
        device = ""
        try:
            if sandbox.kind == "disk":
                if merged:
                    device = sandbox.activate()  # over sandbox/, rw: overlay needs it
                    done.append(os.path.realpath(sandbox.path))
                    top = sandbox.path
                else:
                    sandbox.release_spare()
                    D.wait_detached(sandbox.image)
                    device = D.mount_image(sandbox.image, target, readonly=not rw,
                                           flags=inert)
                    done.append(mountpoint)
                    top = ""
            else:
                top = sandbox.path
                if not merged:
                    libc.mount(sandbox.path, target, None, libc.MS_BIND)
                    done.append(mountpoint)
                    # a bind takes no flags: remount the new mount's root, opened afresh
                    bound = os.open(mountpoint, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                                    | os.O_CLOEXEC)
                    try:
                        if os.fstat(bound).st_ino != os.stat(sandbox.path).st_ino:
                            raise SystemFailure(f"{mountpoint} changed while it was mounted")
                        libc.mount(None, f"/proc/self/fd/{bound}", None,
                                   libc.MS_BIND | libc.MS_REMOUNT | inert
                                   | (0 if rw else libc.MS_RDONLY))
                    finally:
                        os.close(bound)
            if merged:
                upper = os.path.join(top, "upper")
                if rw:
                    opts = (f"lowerdir={':'.join(lowers)},upperdir={upper},"
                            f"workdir={os.path.join(top, 'work')}")
                    libc.mount("overlay", target, "overlay", inert, opts)
                else:   # the container's changes as the top read-only layer
                    libc.mount("overlay", target, "overlay", libc.MS_RDONLY | inert,
                               f"lowerdir={':'.join([upper, *lowers])}")
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
            raise SystemFailure(f"cannot attach the sandbox of container {c.name}: "
                                f"{e.strerror}", cause=e) from e
        finally:
            os.close(point_fd)
        rec = {"MountPoint": mountpoint, "Merged": merged, "ReadOnly": not rw,
               "Exec": allow_exec, "Device": device, "Mounts": done, "CreatedMountPoint": created}
        atomic_write_json(self._attach_record_path(c.id), rec)
        return rec

    async def sandbox_detach(self, ref: str) -> dict[str, Any]:
        c = self._find(ref)  # type: ignore[attr-defined]
        async with self._lock(c.id):  # type: ignore[attr-defined]
            rec = await asyncio.get_running_loop().run_in_executor(None, self._detach, c.id)
        if rec is None:
            raise Conflict(f"the sandbox of container {c.name} is not attached")
        return rec

    def _detach(self, cid: str) -> dict[str, Any] | None:
        rec = self._attachment(cid)
        if rec is None:
            return None
        for point in reversed(rec.get("Mounts") or []):
            try:
                libc.umount2(point, 0)
            except OSError as e:
                if e.errno == 16:   # EBUSY: a shell sits in it; let it go when it leaves
                    libc.umount2(point, libc.MNT_DETACH)
                elif e.errno not in (22, 2):   # EINVAL/ENOENT: not mounted any more
                    raise SystemFailure(f"cannot unmount {point}: {e.strerror}",
                                        cause=e) from e
        if rec.get("CreatedMountPoint"):
            try:
                os.rmdir(rec["MountPoint"])
            except OSError:
                pass
        os.unlink(self._attach_record_path(cid))
        return rec


def _in_own_mount_namespace(fd: int) -> bool:
    """Whether the mount ``fd`` is on is one of this process's mount namespace."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        mnt_id = next((l.split()[1] for l in f if l.startswith("mnt_id:")), "")
    with open("/proc/self/mountinfo") as f:
        return any(l.split(" ", 1)[0] == mnt_id for l in f)


class _Named:
    """What the event log needs of an object: an id and a name."""

    def __init__(self, name: str) -> None:
        self.id = name
        self.name = name
        self.data: dict[str, Any] = {"Config": {"Labels": {}}, "Name": "/" + name}
        self.config = self.data["Config"]


def _entries(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _remove_unmounted(path: str) -> None:
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
