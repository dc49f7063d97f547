"""A container's filesystem as Docker's verbs see it: diff, commit, export and ``cp``.

dockerd on Windows reads the sandbox's mounted view for these; here the sandbox's upper
directory gives ``diff`` and ``commit`` their layer, and a helper process
(``python -m silobox.storage.changes``) works inside the container's root for export and the
archive verbs, in the running container's namespaces or over a stopped one's overlay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from typing import Any, AsyncIterator

from silobox.engine.images import apply_changes
from silobox.engine.readers import IteratorReader
from silobox.engine.state import Status, status
from silobox.engine.storageops import mount_tree
from silobox.errors import (NO_SPACE_ERRNOS, Conflict, InsufficientStorage, InvalidArgument,
                            NotFound, NotRunning, SystemFailure)

_BATCH = 256 * 1024


class ContainerFilesystems:
    """``changes``, ``commit``, ``export`` and the archive verbs of stored containers.

    ``storage`` gives each container's sandbox, its image layers and the readers that keep a
    sandbox mounted; ``containers`` pauses a running container for a commit."""

    def __init__(self, config: Any, store: Any, images: Any, layers: Any, storage: Any,
                 containers: Any, events: Any) -> None:
        self.config = config
        self.store = store
        self.images = images
        self.layers = layers
        self.storage = storage
        self.containers = containers
        self.events = events

    async def container_changes(self, ref: str) -> list[dict[str, Any]]:
        """``GET /containers/{id}/changes`` from the sandbox's upper directory."""
        from silobox.storage.changes import list_changes
        c = self.store.find(ref)
        lowers = self.storage.container_lower_dirs(c)
        system = self.containers.system_of(c) if c.running else None
        _refuse_stopped_vm_disk(c, "list the changes of")
        if system is not None and getattr(system, "in_vm", False):
            # --isolation hyperv: the upper directory is on the VM's disk (compute.uvm.guest)
            proc = await system.run_helper(["-c", _GUEST_CHANGES, c.id, json.dumps(lowers)])
            out = await proc.stdout.read()
            if await proc.wait() != 0:
                err = (await proc.stderr.read()).decode(errors="replace")[-500:]
                raise SystemFailure(f"cannot list the changes of container {c.name}: {err}")
            return json.loads(out) or None
        async with self.upper_of(c) as upper:
            return await asyncio.get_running_loop().run_in_executor(
                None, list_changes, upper, lowers) or None

    @contextlib.asynccontextmanager
    async def upper_of(self, c: Any) -> AsyncIterator[str]:
        """The container's upper directory, its sandbox disk activated meanwhile if stopped
        (under the container's lock, so a start cannot mount the disk a second time)."""
        sandboxes = self.storage.sandboxes
        if c.running:
            with sandboxes.reading(c.id) as upper:
                yield upper
            if not sandboxes.readers.get(c.id) and not c.running:
                # it stopped meanwhile: unmount what its stop left to the last reader
                async with self.store.lock(c.id):
                    if not c.running and not self.storage.attachment(c.id):
                        await sandboxes.deactivate(c.id)
            return
        async with self.store.lock(c.id):
            activated = await sandboxes.activate_stopped(c.id)
            try:
                if not sandboxes.get(c.id).exists():
                    raise NotFound(f"No such container: {c.id}: it has no writable layer")
                yield sandboxes.get(c.id).paths.upper
            finally:
                if activated:
                    await sandboxes.deactivate(c.id)

    async def container_commit(self, ref: str, repo: str = "", tag: str = "",
                               comment: str = "", author: str = "",
                               changes: list[str] | None = None, pause: bool = True,
                               config: dict[str, Any] | None = None) -> str:
        """``POST /commit``: the sandbox's upper dir becomes a layer over the container's
        image, with the container's config (and ``changes``) as the new image's config."""
        from silobox.storage import reference
        from silobox.storage.changes import tar_overlay_dir
        from silobox.storage.images import now_rfc3339
        c = self.store.find(ref)
        if (c.host_config.get("Isolation") or "").lower() == "hyperv":
            raise InvalidArgument(f"cannot commit container {c.id[:12]}: its writable layer is "
                                  "on its utility VM's disk (--isolation hyperv)")
        target = None
        if repo:
            target = reference.parse_tagged(f"{repo}:{tag}" if tag else repo)
            if target.digest:
                raise InvalidArgument("cannot commit to digest reference")
        base = self.images.get(c.image)
        owner = f"commit:{uuid.uuid4().hex}"
        paused_here = False
        if pause and c.running and status(c) is not Status.PAUSED:
            try:
                await self.containers.container_pause(c.id)
                paused_here = True
            except NotRunning:   # it ended meanwhile: a stopped container needs no pause
                pass
        try:
            async with self.upper_of(c) as upper:
                reader = IteratorReader(tar_overlay_dir(upper, skip_init=True))
                parent = base.diff_ids[-1] if base.diff_ids else None
                layer = await asyncio.get_running_loop().run_in_executor(
                    None, self.layers.add_from_tar, reader, parent, owner)
        finally:
            if paused_here:
                with contextlib.suppress(Conflict):   # it may have been killed meanwhile
                    await self.containers.container_unpause(c.id)
        cfg = {k: v for k, v in c.config.items() if k not in ("Hostname", "Domainname")}
        cfg.update({k: v for k, v in (config or {}).items() if v is not None})
        cfg = apply_changes(cfg, changes or [])
        cfg.pop("Image", None)
        now = now_rfc3339()
        doc = {k: v for k, v in base.config.items() if k not in ("rootfs", "id", "parent")}
        history = list(doc.get("history") or [])
        entry: dict[str, Any] = {"created": now,
                                 "created_by": " ".join([c.path, *c.args])}
        if author:
            entry["author"] = author
        if comment:
            entry["comment"] = comment
        history.append(entry)
        doc.update({"created": now, "config": cfg, "container": c.id, "parent": base.id,
                    "container_config": c.config, "history": history,
                    "author": author, "comment": comment})
        if not author:
            doc.pop("author")
        if not comment:
            doc.pop("comment")
        try:
            image = self.images.create(doc, [*base.diff_ids, layer.diff_id],
                                       tags=[target.familiar()] if target else None)
        except BaseException:
            self.layers.unhold(owner)
            self.layers.release(layer.diff_id)
            raise
        self.layers.unhold(owner)
        self.events.emit_event("container", "commit", c)
        return image.id

    async def container_export(self, ref: str) -> AsyncIterator[bytes]:
        """``GET /containers/{id}/export``: the merged root filesystem as a tar."""
        c = self.store.find(ref)
        lock = await self._hold(c)
        try:
            proc, _ = await self._fs_helper(c, {"op": "get", "path": "/", "one_fs": True})
        except BaseException:
            _release(lock)
            raise
        return _stdout_chunks(proc, lock)

    async def container_archive_stat(self, ref: str, path: str) -> dict[str, Any]:
        """``HEAD /containers/{id}/archive``: the X-Docker-Container-Path-Stat document."""
        c = self.store.find(ref)
        _check_cp_path(path)
        lock = await self._hold(c)
        try:
            proc = await self._fs_helper_run(c, {"op": "stat", "path": path}, path)
            assert proc.stdout is not None
            out = await proc.stdout.read()
            await _finish(proc, c, path)
        finally:
            _release(lock)
        return json.loads(out)

    async def container_archive_get(self, ref: str, path: str
                                    ) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
        """``GET /containers/{id}/archive``: (stat of ``path``, tar of it)."""
        c = self.store.find(ref)
        _check_cp_path(path)
        lock = await self._hold(c)
        try:
            proc, doc = await self._fs_helper(c, {"op": "get", "path": path}, path)
        except BaseException:
            _release(lock)
            raise
        return doc, _stdout_chunks(proc, lock)

    async def container_archive_put(self, ref: str, path: str, body: AsyncIterator[bytes],
                                    no_overwrite_dir_non_dir: bool = False,
                                    copy_uid_gid: bool = False) -> None:
        """``PUT /containers/{id}/archive``: extract a tar into directory ``path``.

        As moby's ``containerExtractToDir``: ``noOverwriteDirNonDir`` refuses to replace a
        directory by a non-directory or the reverse; ``copyUIDGID`` gives every entry the
        uid/gid of the container's user (looked up in the container) when it has one."""
        c = self.store.find(ref)
        _check_cp_path(path)
        if c.host_config.get("ReadonlyRootfs") and c.running:
            raise InvalidArgument("container rootfs is marked read-only")
        args: dict[str, Any] = {"op": "put", "path": path,
                                "no_overwrite_dir_non_dir": no_overwrite_dir_non_dir}
        if copy_uid_gid and c.config.get("User"):
            args["user"] = c.config["User"]
        lock = await self._hold(c)
        try:
            proc = await self._fs_helper_run(c, args, path, stdin=True)
            assert proc.stdin is not None
            try:
                async for chunk in body:
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                proc.stdin.close()
            await _finish(proc, c, path)
        finally:
            _release(lock)

    async def _hold(self, c: Any) -> asyncio.Lock | None:
        """A stopped container's lock, held while a helper works on its sandbox."""
        if c.running:
            return None
        lock = self.store.lock(c.id)
        await lock.acquire()
        return lock

    async def _fs_helper_run(self, c: Any, args: dict[str, Any], path: str = "/",
                             stdin: bool = False) -> asyncio.subprocess.Process:
        """Start the helper that works inside the container's root (see storage.changes)."""
        held = mount_tree(c.mounts, str(args.get("path") or "/"))
        if held is not None and args["op"] == "put" and not held[0].get("RW", True):
            raise InvalidArgument("mounted volume is marked read-only")
        hyperv = c.running and (c.host_config.get("Isolation") or "").lower() == "hyperv"
        if held is None:
            _refuse_stopped_vm_disk(c, "read or write files of")
        if hyperv and held is None:
            # Its root is in the VM and its Pid is the guest's (/proc/<Pid> on the host is
            # some other process): the same helper runs in the guest, on the guest's /proc.
            system = self.containers.system_of(c)
            if system is None or not getattr(system, "in_vm", False):
                raise Conflict(f"container {c.id[:12]} is not running")
            return await system.run_helper(
                ["-m", "silobox.storage.changes", json.dumps({**args, "pid": c.state["Pid"]})])
        if hyperv and args.get("user"):
            raise Conflict(f"container {c.id[:12]} runs in a utility VM (--isolation hyperv): "
                           "cp -a into its volumes while it runs is not supported")
        if c.running and c.state.get("Pid") and not hyperv:
            args = {**args, "pid": c.state["Pid"]}
        elif held is not None:
            # a stopped container's volume or bind is not in its overlay: read its source;
            # cp -a's owner still comes from the container's own passwd and group
            args = {**args, "tree": held[0]["Source"], "path": held[1], "shown": args["path"]}
            if args.get("user"):
                args.update(await self._overlay_args(c, readonly=True))
        else:
            args = {**args, **await self._overlay_args(c, readonly=args["op"] != "put")}
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "silobox.storage.changes", json.dumps(args),
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": _src_path()})

    async def _overlay_args(self, c: Any, readonly: bool) -> dict[str, Any]:
        """What the helper needs to mount a stopped container's root in its own namespace."""
        sandbox = self.storage.sandbox_for(c.id)
        lowers = self.storage.container_lower_dirs(c)
        # the helper process attaches the disk itself: the pool lets go of its device
        await asyncio.get_running_loop().run_in_executor(None, sandbox.release_spare)
        return {"rootfs": sandbox.paths.rootfs, "root": self.config.root, "cid": c.id,
                "options": sandbox.overlay_options(lowers), "readonly": readonly}

    async def _fs_helper(self, c: Any, args: dict[str, Any], path: str = "/"
                         ) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
        proc = await self._fs_helper_run(c, args, path)
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            await _finish(proc, c, path)
            raise SystemFailure("the copy helper ended without an answer")
        return proc, json.loads(line)


_GUEST_CHANGES = (
    "import json, sys\n"
    "from silobox.storage.changes import list_changes\n"
    "print(json.dumps(list_changes(f'/scratch/sandboxes/{sys.argv[1]}/upper', "
    "json.loads(sys.argv[2]))))\n")
"""In a hyperv container's VM: its change list (the writable layer's place: compute.uvm.guest)."""


def _refuse_stopped_vm_disk(c: Any, what: str) -> None:
    """A stopped hyperv container's changes are on its own disk, which only a VM reads (the
    host's kernel does not mount what the guest wrote): refuse rather than show the image."""
    if c.running or (c.host_config.get("Isolation") or "").lower() != "hyperv":
        return
    from silobox.compute.uvm.hyperv import container_disk
    if os.path.exists(container_disk(c.id)):
        raise Conflict(f"cannot {what} container {c.id[:12]} while it is stopped: its writable "
                       "layer is on its utility VM's disk (--isolation hyperv); start it first")


def _src_path() -> str:
    import silobox
    return os.path.dirname(os.path.dirname(os.path.abspath(silobox.__file__)))


def _check_cp_path(path: str) -> None:
    if not path:
        raise InvalidArgument("path cannot be empty")
    if "\x00" in path:
        raise InvalidArgument("invalid path")


def _release(lock: asyncio.Lock | None) -> None:
    if lock is not None and lock.locked():
        lock.release()


async def _stdout_chunks(proc: asyncio.subprocess.Process,
                         lock: asyncio.Lock | None = None) -> AsyncIterator[bytes]:
    assert proc.stdout is not None
    try:
        while chunk := await proc.stdout.read(_BATCH):
            yield chunk
        code = await proc.wait()
        if code != 0:
            err = await proc.stderr.read() if proc.stderr else b""
            raise SystemFailure(f"archive failed: {err.decode(errors='replace')[-500:]}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        _release(lock)


async def _finish(proc: asyncio.subprocess.Process, c: Any, path: str) -> None:
    """Wait for the helper; map its report to Docker's errors."""
    err = await proc.stderr.read() if proc.stderr else b""
    code = await proc.wait()
    if code == 0:
        return
    try:
        doc = json.loads(err.decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        doc = {"kind": "failure", "message": err.decode(errors="replace")[-500:]}
    if doc.get("kind") == "notfound":
        raise NotFound(f"Could not find the file {path} in container {c.name}")
    if doc.get("kind") == "invalid":
        raise InvalidArgument(doc.get("message") or "invalid archive")
    if doc.get("kind") == "refused":   # moby: errdefs.System around the archive's error
        raise SystemFailure(doc.get("message") or "cannot overwrite")
    message = str(doc.get("message") or "")
    if any(os.strerror(n) in message for n in NO_SPACE_ERRNOS):
        raise InsufficientStorage(f"cannot access {path} in container {c.name}: {message}")
    raise SystemFailure(f"cannot access {path} in container {c.name}: {doc.get('message')}")
