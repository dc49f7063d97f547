"""The sandboxes of all containers under one storage root, and the daemon's choices for them.

:class:`SandboxStore` owns what is host-side about a container's writable layer beyond one
:class:`~silobox.storage.sandbox.Sandbox`: the daemon's storage options (``--storage-opt``:
``sandbox=disk|dir``, ``size=``, ``pool=``) and a container's ``StorageOpt``, the pool of
pre-formatted disks, the disk's activation around a run (ActivateLayer/DeactivateLayer),
the readers that keep a stopped container's disk mounted, the host attachments and the sweep
of what a killed daemon left. Which container, and when, is the engine's to say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

from silobox.errors import Conflict, InvalidArgument, SiloboxError, Unavailable
from silobox.storage import disk as D
from silobox.storage.attach import SandboxAttachments
from silobox.storage.sandbox import Sandbox
from silobox.storage.sweep import StorageSweep
from silobox.storage.volumes import VolumeStore

log = logging.getLogger("silobox.storage")

DAEMON_OPTIONS = ("sandbox", "size", "pool")


def parse_daemon_options(items: Iterable[str]) -> dict[str, str]:
    """``--storage-opt`` items (``key=value``) → their dict; Docker-like refusals."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or key not in DAEMON_OPTIONS:
            raise InvalidArgument(f"invalid storage option {item!r}: use sandbox=disk|dir, "
                                  "size=SIZE or pool=N")
        if key == "pool" and not value.strip().isdigit():
            raise InvalidArgument(f"invalid storage option {item!r}: pool is a number")
        if key == "sandbox" and value not in ("disk", "dir"):
            raise InvalidArgument(f"invalid storage option {item!r}: sandbox is disk or dir")
        out[key] = value.strip()
    return out


def sandbox_choice(storage_opt: Any, default: str, disk_unavailable: str = ""
                   ) -> tuple[str, int | None]:
    """A container's ``HostConfig.StorageOpt`` → (kind, size or None for the default);
    Docker's ``Unknown option`` and json messages otherwise."""
    if storage_opt is not None and not (isinstance(storage_opt, dict) and all(
            isinstance(v, str) for v in storage_opt.values())):
        raise InvalidArgument("json: cannot unmarshal into Go struct field "
                              "HostConfig.HostConfig.StorageOpt of type map[string]string")
    opts = {k.lower(): v for k, v in (storage_opt or {}).items()}
    for key in opts:
        if key not in ("size", "sandbox"):
            raise InvalidArgument(f"Unknown option {key}")
    kind = opts.get("sandbox") or ("disk" if opts.get("size") else default)
    if kind not in ("disk", "dir"):
        raise InvalidArgument(f"invalid storage option sandbox={kind}: use disk or dir")
    size = D.parse_size(opts["size"], "storage-opt size") if opts.get("size") else None
    if kind == "dir":
        if size is not None:
            raise InvalidArgument("--storage-opt size is supported only for sandbox disks "
                                  "(sandbox=disk)")
        return "dir", None
    if disk_unavailable:
        raise Unavailable(f"sandbox disks are unavailable on this host: {disk_unavailable}")
    if size is not None and size < D.MIN_SIZE:
        raise InvalidArgument(f"--storage-opt size={opts['size']} is below the minimum "
                              f"sandbox size of {D.human_size(D.MIN_SIZE)}")
    return "disk", size


class SandboxStore:
    """Every container's sandbox under ``root`` (see the module docstring)."""

    def __init__(self, root: str, exec_root: str, volumes: VolumeStore,
                 options: Mapping[str, str]) -> None:
        self.root = root
        # A sandbox disk per container by default (Windows' sandbox.vhdx); the pool keeps
        # disks copied, written back and attached ahead of time, so a start only mounts one.
        self.default = options.get("sandbox") or "disk"
        self.size = D.parse_size(options["size"]) if options.get("size") else D.DEFAULT_SIZE
        if self.size < D.MIN_SIZE:
            raise InvalidArgument(f"storage option size={options['size']} is below the "
                                  f"minimum sandbox size of {D.human_size(D.MIN_SIZE)}")
        self.disk_unavailable = D.loop_supported()
        if self.disk_unavailable and self.default == "disk":
            log.warning("sandbox disks are unavailable (%s): containers get plain-directory "
                        "sandboxes", self.disk_unavailable)
            self.default = "dir"
        # With directories as the default the pool keeps no disks, but its thread still
        # deletes removed containers' images off the rm path.
        self.pool = D.DiskPool(D.pool_dir(root), self.size,
                               target=int(options.get("pool", D.POOL_TARGET))
                               if self.default == "disk" else 0)
        self.readers: dict[str, int] = {}
        """Readers of a container's sandbox (commit, diff): its disk stays mounted past the
        container's stop until the last of them is done."""
        self.attachments = SandboxAttachments(root, exec_root)
        self.sweep = StorageSweep(root, volumes, self.attachments)

    def open(self, owners: Mapping[str, bool], volumes_in_use: Collection[str]) -> None:
        """At daemon start: sweep what earlier daemons left (``owners``: the stored
        containers, id → running), then start the pool."""
        self.sweep.remove_orphans(owners, volumes_in_use)
        self.sweep.remove_leftovers(owners)
        self.pool.start()

    def close(self) -> None:
        self.pool.stop()

    def get(self, cid: str) -> Sandbox:
        return Sandbox(self.root, cid)

    def choose(self, storage_opt: Any) -> tuple[str, int | None]:
        """``HostConfig.StorageOpt`` → (kind, size) under this daemon's defaults."""
        return sandbox_choice(storage_opt, self.default, self.disk_unavailable)

    # ----- a container's life ---------------------------------------------------------------
    def create_disk(self, cid: str, size: int | None) -> None:
        """Take a formatted disk from the pool for ``cid`` (CreateSandboxLayer)."""
        self.pool.busy()
        sandbox = self.get(cid)
        sandbox.create_disk(self.pool, size)
        sandbox.record_disk_info()

    def discard_disk(self, cid: str) -> None:
        """Undo :meth:`create_disk` (a create that failed later); best effort."""
        sandbox = self.get(cid)
        try:
            sandbox.deactivate()
            self.pool.release(sandbox.image)
            if os.path.exists(sandbox.image):
                os.unlink(sandbox.image)
        except (OSError, SiloboxError):
            pass

    async def activate(self, cid: str) -> None:
        """Mount a disk sandbox over ``sandbox/`` for a start (ActivateLayer)."""
        sandbox = self.get(cid)
        if sandbox.kind != "disk":
            return
        self.pool.busy()
        # A disk something still holds (the container's previous run going away, a copy of
        # its mount in another namespace) is mounted through its device, nothing waited for.
        sandbox.activate()   # a mount (~1 ms): cheaper inline than a thread hop

    def deactivate_after_stop(self, cid: str) -> None:
        """Unmount a stopped container's disk unless a reader still works on it
        (DeactivateLayer). Inline (an unmount, ~1 ms): the caller has no await point before
        its next step, so a restart never waits on, or races with, this disk."""
        sandbox = self.get(cid)
        if sandbox.kind == "disk" and not self.readers.get(cid):
            self.pool.busy()
            sandbox.deactivate()

    # ----- readers of a sandbox (commit, diff, export) ---------------------------------------
    @contextlib.contextmanager
    def reading(self, cid: str) -> Iterator[str]:
        """Read a running container's upper directory: its disk stays mounted past a stop
        until the last reader is done (the stop leaves it for :meth:`release_reader`)."""
        self.readers[cid] = self.readers.get(cid, 0) + 1
        try:
            yield self.get(cid).paths.upper
        finally:
            self.readers[cid] -= 1
            if not self.readers[cid]:
                del self.readers[cid]

    async def activate_stopped(self, cid: str, wait: float = 5.0) -> bool:
        """Mount a stopped container's disk to read it; True when this call mounted it (the
        caller then :meth:`deactivate` s it). The container's own mount may still be going
        away (its loop device detaches itself a moment after): wait up to ``wait`` s."""
        sandbox = self.get(cid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            try:
                return bool(await loop.run_in_executor(None, sandbox.activate))
            except Conflict:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def deactivate(self, cid: str) -> None:
        """Unmount a container's disk (after a reader, or a stop that left it to one)."""
        await asyncio.get_running_loop().run_in_executor(None, self.get(cid).deactivate)

    # ----- views ------------------------------------------------------------------------------
    def record(self, cid: str, name: str, status: str) -> dict[str, Any]:
        """silobox's ``/silobox/sandboxes`` view of one container's sandbox."""
        sandbox = self.get(cid)
        kind = sandbox.kind
        rec: dict[str, Any] = {
            "Id": cid, "Name": name, "State": status, "Kind": kind,
            "Path": sandbox.path, "Disk": sandbox.image if kind == "disk" else "",
            "LoopDevice": sandbox.loop_device(), "Active": False, "Size": 0, "Used": 0,
            "FileSize": 0, "Attached": self.attachments.record(cid),
        }
        if kind == "disk":
            st = os.stat(sandbox.image)
            rec["Size"] = st.st_size
            rec["FileSize"] = st.st_blocks * 512   # what the sparse image takes on the host
            rec["Active"] = sandbox.is_active()
            if rec["Active"]:
                vfs = os.statvfs(sandbox.path)
                rec["Used"] = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
            else:   # what the superblock counts beyond a fresh disk's metadata
                try:
                    used = D.read_superblock(sandbox.image).used
                    rec["Used"] = max(0, used - int(sandbox.disk_info().get("Baseline", 0)))
                except SiloboxError:
                    pass
        else:
            rec["Used"] = sandbox.used_bytes() if os.path.isdir(sandbox.paths.upper) else 0
        return rec

    def graph_driver_data(self, cid: str) -> dict[str, str]:
        """What inspect's ``GraphDriver.Data`` shows of the sandbox."""
        sandbox = self.get(cid)
        data = {"sandbox": sandbox.kind}
        if sandbox.kind == "disk":
            data["disk"] = sandbox.image
            data["size"] = str(os.stat(sandbox.image).st_size)
        return data
