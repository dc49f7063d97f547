"""Image verbs beyond list/inspect, and the container-filesystem verbs that make or read layers.

dockerd on Windows implements ``import``/``load``/``save``/``commit``/``export``/``cp`` over
wclayer ImportLayer/ExportLayer and the sandbox's mounted view; here the storage package does the
byte work (``layers``, ``archive``, ``changes``) and this mixin adds Docker's rules: which
conflicts refuse an ``rmi``, what config an import or commit gets, and how progress is reported.
Blocking work runs in executor threads; request bodies arrive as async chunk iterators and are
read by those threads through :class:`ThreadReader`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import os
import shlex
import sys
import uuid
from typing import Any, AsyncIterator, Callable, Iterator

from silobox import jsonlimits
from silobox.engine.state import Status, status
from silobox.engine.storageops import mount_tree
from silobox.errors import (NO_SPACE_ERRNOS, Conflict, InsufficientStorage, InvalidArgument,
                            NotFound, NotRunning, SiloboxError, SystemFailure)
from silobox.filters import labels_match
from silobox.timeutil import parse_rfc3339, parse_until

log = logging.getLogger("silobox.images")
Progress = Callable[[dict[str, Any]], None]
_BATCH = 256 * 1024


class _Buffered:
    """A read() over chunks from ``_next()``; consumed bytes are dropped once per new chunk, so
    many small reads of a large chunk cost no repeated copying."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    def _next(self) -> bytes:
        raise NotImplementedError

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._buf) - self._pos < size):
            chunk = self._next()
            if not chunk:
                self._eof = True
                break
            if self._pos:
                del self._buf[:self._pos]
                self._pos = 0
            self._buf += chunk
        end = len(self._buf) if size < 0 else min(len(self._buf), self._pos + size)
        data = bytes(self._buf[self._pos:end])
        self._pos = end
        return data


class ThreadReader(_Buffered):
    """A blocking ``read()`` over an async chunk iterator, for code running in a worker thread."""

    def __init__(self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._chunks = chunks
        self._loop = loop

    def _next(self) -> bytes:
        async def step() -> bytes:
            try:
                return await self._chunks.__anext__()
            except StopAsyncIteration:
                return b""
        return asyncio.run_coroutine_threadsafe(step(), self._loop).result()


class IteratorReader(_Buffered):
    """A blocking ``read()`` over a sync chunk iterator (a tar being generated)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks

    def _next(self) -> bytes:
        for chunk in self._chunks:
            if chunk:
                return chunk
        return b""


async def iterate_in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Run a blocking generator in a worker thread, handing its output over in batches."""
    loop = asyncio.get_running_loop()

    def batch() -> bytes | None:
        out = bytearray()
        for chunk in chunks:
            out += chunk
            if len(out) >= _BATCH:
                break
        return bytes(out) if out else None

    while True:
        data = await loop.run_in_executor(None, batch)
        if data is None:
            return
        yield data


def _threadsafe(progress: Progress | None,
                loop: asyncio.AbstractEventLoop) -> Callable[[dict[str, Any]], None]:
    if progress is None:
        return lambda _: None
    return lambda msg: loop.call_soon_threadsafe(progress, msg)


# -- Dockerfile instructions of --change --------------------------------------------------------

_CHANGE_KEYS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL", "USER",
                "VOLUME", "WORKDIR")


def _json_or_shell(rest: str, shell: bool) -> list[str]:
    text = rest.strip()
    if text.startswith("["):
        try:
            value = jsonlimits.loads(text)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return ["/bin/sh", "-c", text] if shell else text.split()


def _pairs(rest: str, what: str) -> list[tuple[str, str]]:
    words = shlex.split(rest)
    if not words:
        raise InvalidArgument(f"{what} requires at least one argument")
    if "=" not in words[0]:   # legacy form: ENV key value with spaces
        key, _, value = rest.strip().partition(" ")
        return [(key, value.strip())]
    out = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            raise InvalidArgument(f"{what} names can not be blank" if not key else
                                  f"Syntax error - can't find = in \"{word}\". Must be of the "
                                  "form: name=value")
        out.append((key, value))
    return out


def apply_changes(config: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    """Apply Dockerfile instructions (``docker import/commit --change``) to a container config."""
    cfg = dict(config)
    for line in changes:
        for change in line.splitlines():
            change = change.strip()
            if not change:
                continue
            word, _, rest = change.partition(" ")
            key = word.upper()
            if key not in _CHANGE_KEYS:
                raise InvalidArgument(f"{word} is not a valid change command")
            if key == "CMD":
                cfg["Cmd"] = _json_or_shell(rest, True)
            elif key == "ENTRYPOINT":
                cfg["Entrypoint"] = _json_or_shell(rest, True)
            elif key == "ENV":
                env = list(cfg.get("Env") or [])
                for name, value in _pairs(rest, "ENV"):
                    env = [e for e in env if e.partition("=")[0] != name] + [f"{name}={value}"]
                cfg["Env"] = env
            elif key == "LABEL":
                labels = dict(cfg.get("Labels") or {})
                labels.update(_pairs(rest, "LABEL"))
                cfg["Labels"] = labels
            elif key == "EXPOSE":
                ports = dict(cfg.get("ExposedPorts") or {})
                for port in rest.split():
                    ports[port if "/" in port else f"{port}/tcp"] = {}
                cfg["ExposedPorts"] = ports
            elif key == "VOLUME":
                vols = dict(cfg.get("Volumes") or {})
                for v in _json_or_shell(rest, False):
                    vols[v] = {}
                cfg["Volumes"] = vols
            elif key == "WORKDIR":
                cfg["WorkingDir"] = rest.strip()
            elif key == "USER":
                cfg["User"] = rest.strip()
            elif key == "STOPSIGNAL":
                cfg["StopSignal"] = rest.strip()
            elif key == "ONBUILD":
                cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), rest.strip()]
    return cfg


class ImageOpsService:
    """Implements the image and container-filesystem parts of ``api.backend`` on the engine."""

    config: Any
    images: Any
    layers: Any
    containers: dict[str, Any]
    _find: Any
    sandbox_for: Any
    emit_event: Any
    container_pause: Any
    sandbox_readers: dict[str, int]
    _attachment: Any
    container_unpause: Any
    _lock: Any

    def _has_children(self, image_id: str) -> bool:
        """Whether a kept image was built on this one (the build service knows)."""
        return False

    # -- startup -----------------------------------------------------------------------------

    def sweep_storage(self) -> list[str]:
        """Remove what an interrupted import, load or commit left (called from Engine.start).

        The references of a killed daemon's imports and loads go; every stored container
        holds its layers (also one created before containers held layers)."""
        owners = {f"container:{cid}" for cid in self.containers}
        self.layers.drop_refs_except(owners)
        keep: set[str] = set()
        for c in self.containers.values():
            ids = (c.data.get("Silobox") or {}).get("Layers")
            if ids is None:
                try:
                    ids = self.images.get(c.data["Image"]).diff_ids
                except SiloboxError:
                    continue
            keep.update(ids)
            try:
                self.layers.hold(f"container:{c.id}", ids)
            except SiloboxError as e:
                log.warning("container %s: cannot hold its layers: %s", c.id, e)
        return self.layers.sweep(keep)

    # -- list, history -----------------------------------------------------------------------

    async def image_list(self, all: bool = False,
                         filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        """``GET /images/json`` with Docker's filters: reference, dangling, label, before,
        since, until."""
        filters = filters or {}
        known = {"reference", "dangling", "label", "before", "since", "until"}
        for key in filters:
            if key not in known:
                raise InvalidArgument(f"invalid filter '{key}'")
        images = self.images.list()
        before = [self.images.resolve(r).created for r in filters.get("before", [])]
        since = [self.images.resolve(r).created for r in filters.get("since", [])]
        out = []
        for image in images:
            if filters.get("dangling"):
                value = filters["dangling"][0].lower()
                if value not in ("1", "true", "0", "false"):
                    raise InvalidArgument(f"Invalid filter 'dangling={filters['dangling'][0]}'")
                if (value in ("1", "true")) != (not image.tags):
                    continue
            if filters.get("reference") and not any(
                    _reference_matches(t, pat) for t in image.tags for pat in filters["reference"]):
                continue
            if filters.get("label") and not _labels_match(image, filters["label"]):
                continue
            if before and not all(_ts(image.created) < _ts(b) for b in before):
                continue
            if since and not all(_ts(image.created) > _ts(s) for s in since):
                continue
            if filters.get("until") and not all(
                    _ts(image.created) < _until(u) for u in filters["until"]):
                continue
            summary = image.to_docker_summary()
            if filters.get("reference"):
                summary["RepoTags"] = [t for t in image.tags if any(
                    _reference_matches(t, p) for p in filters["reference"])]
            out.append(summary)
        out.sort(key=lambda d: d.get("Created", 0), reverse=True)
        return out

    async def image_history(self, ref: str) -> list[dict[str, Any]]:
        """``GET /images/{name}/history``: newest first; entries of layers carry their size."""
        from silobox.storage.images import rfc3339_to_unix
        image = self.images.resolve(ref)
        history = image.config.get("history") or []
        layers = list(image.layers)
        if not history:
            history = [{"created": image.created} for _ in layers] or [{"created": image.created}]
        out = []
        index = 0
        for entry in history:
            size = 0
            if not entry.get("empty_layer") and index < len(layers):
                size = layers[index].size
                index += 1
            out.append({"Id": "<missing>", "Created": rfc3339_to_unix(entry.get("created") or ""),
                        "CreatedBy": entry.get("created_by", ""), "Tags": None, "Size": size,
                        "Comment": entry.get("comment", "")})
        out.reverse()
        out[0]["Id"] = image.id
        out[0]["Tags"] = list(image.tags) or None
        return out

    # -- tag, remove, prune ------------------------------------------------------------------

    async def image_tag(self, ref: str, repo: str, tag: str | None) -> None:
        """``POST /images/{name}/tag``."""
        from silobox.storage import reference
        if not repo:
            raise InvalidArgument("repository name must have at least one component")
        image = self.images.resolve(ref)
        target = f"{repo}:{tag}" if tag else repo
        parsed = reference.parse(target)
        if parsed.digest is not None:
            raise InvalidArgument("refusing to create a tag with a digest reference")
        self.images.tag(image, target)
        self.emit_event("image", "tag", image, {"name": parsed.with_default_tag().familiar()})

    async def image_delete(self, ref: str, force: bool = False,
                           noprune: bool = False) -> list[dict[str, str]]:
        """``DELETE /images/{name}`` with Docker's conflict rules (moby ``ImageDelete``)."""
        from silobox.storage import reference
        image = self.images.resolve(ref)
        users = [c for c in self.containers.values() if c.data.get("Image") == image.id]
        running = [c for c in users if c.running]
        stopped = [c for c in users if not c.running]
        by_id = image.id.removeprefix("sha256:").startswith(ref.removeprefix("sha256:")) \
            and not self._is_tag_of(ref, image)
        records: list[dict[str, str]] = []
        if not by_id and "@" in ref and (image.tags or len(image.digests) > 1 or users):
            # a repo digest while other references (or containers) keep the image: untag only
            name = reference.parse(ref).familiar()
            self.images.untag(name)
            self.emit_event("image", "untag", image, {"name": name})
            return [{"Untagged": name}]
        if not by_id:
            tag = reference.parse_tagged(ref).familiar()
            single = len({t.rsplit(":", 1)[0] for t in image.tags}) <= 1 and len(image.tags) <= 1
            if not force and single and users:
                raise Conflict(f'conflict: unable to remove repository reference "{ref}" (must '
                               f"force) - container {users[0].id[:12]} is using its referenced "
                               f"image {image.short_id}", object_id=image.id)
            self.images.untag(tag)
            records.append({"Untagged": tag})
            self.emit_event("image", "untag", image, {"name": tag})
            if len(image.tags) > 1:
                return records
            if running or (stopped and not force):
                return records   # the tag is gone; the image stays for its containers
        else:
            repos = {t.rsplit(":", 1)[0] for t in image.tags}
            if running:
                raise Conflict(f"conflict: unable to delete {image.short_id} (cannot be forced) "
                               f"- image is being used by running container {running[0].id[:12]}",
                               object_id=image.id)
            if not force and len(repos) > 1:
                raise Conflict(f"conflict: unable to delete {image.short_id} (must be forced) - "
                               "image is referenced in multiple repositories",
                               object_id=image.id)
            if not force and stopped:
                raise Conflict(f"conflict: unable to delete {image.short_id} (must be forced) - "
                               f"image is being used by stopped container {stopped[0].id[:12]}",
                               object_id=image.id)
            for tag in image.tags:
                self.images.untag(tag)
                records.append({"Untagged": tag})
                self.emit_event("image", "untag", image, {"name": tag})
        # Forced past stopped containers, as moby's imageDeleteHelper: the image record goes;
        # the containers hold its layers, so they keep working and the layers go with the
        # last of them.
        records.extend(await asyncio.get_running_loop().run_in_executor(
            None, self._delete_image, image.id))
        self.emit_event("image", "delete", image)
        return records

    def image_shown(self, c: Any, resolved: dict[str, str] | None = None) -> str:
        """A container's ``Image`` in lists: the name it was created from while that still
        names its image, else the image id (moby ``refreshImage``: after a retag or rmi -f).
        ``resolved`` memoizes name → image id across one listing (a store query each)."""
        name = c.config.get("Image") or ""
        if name != c.data["Image"]:
            memo = resolved if resolved is not None else {}
            if name not in memo:
                try:
                    memo[name] = self.images.resolve(name).id
                except (NotFound, InvalidArgument):
                    memo[name] = ""
            return name if memo[name] == c.data["Image"] else c.data["Image"]
        return name

    def _is_tag_of(self, ref: str, image: Any) -> bool:
        from silobox.storage import reference
        try:
            return reference.parse_tagged(ref).familiar() in image.tags
        except InvalidArgument:
            return False

    def _delete_image(self, image_id: str) -> list[dict[str, str]]:
        """Delete an untagged image and release its layers no other image or container uses."""
        image = self.images.get(image_id)
        with self.images.db.tx():
            self.images.db.execute("DELETE FROM images WHERE id = ?", (image_id,))
        records = [{"Deleted": image_id}]
        for layer in reversed(image.layers):
            records.extend({"Deleted": gone.chain_id}
                           for gone in self.layers.release(layer.diff_id))
        return records

    async def image_prune(self, filters: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """``POST /images/prune``: dangling images (all unused ones with dangling=false)."""
        filters = filters or {}
        for key in filters:
            if key not in ("dangling", "until", "label", "label!"):
                raise InvalidArgument(f"invalid filter '{key}'")
        only_dangling = (filters.get("dangling") or ["true"])[0].lower() in ("1", "true")
        used = {c.data.get("Image") for c in self.containers.values()}
        deleted: list[dict[str, str]] = []
        reclaimed = 0
        for image in self.images.list():   # newest first: a child goes before its parent
            if image.id in used or (only_dangling and image.tags) or self._has_children(image.id):
                continue
            if filters.get("until") and not all(_ts(image.created) < _until(u)
                                                for u in filters["until"]):
                continue
            if filters.get("label") and not _labels_match(image, filters["label"]):
                continue
            if filters.get("label!") and _labels_match(image, filters["label!"], any_of=True):
                continue
            for tag in image.tags:
                self.images.untag(tag)
                deleted.append({"Untagged": tag})
            before = {l.diff_id: l.size for l in image.layers}
            records = await asyncio.get_running_loop().run_in_executor(
                None, self._delete_image, image.id)
            deleted.extend(records)
            reclaimed += sum(size for d, size in before.items() if not self.layers.exists(d))
            self.emit_event("image", "delete", image)
        return {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    # -- import, load, save ------------------------------------------------------------------

    async def image_import(self, body: AsyncIterator[bytes], repo: str = "", tag: str = "",
                           message: str = "", changes: list[str] | None = None,
                           platform: str = "", progress: Progress | None = None) -> str:
        """``POST /images/create?fromSrc=-``: a root filesystem tar → a one-layer image; returns
        its id (wclayer ImportLayer of a base layer)."""
        from silobox.storage.images import host_architecture, now_rfc3339
        from silobox.storage import reference
        from silobox.storage.layers import ProgressReader
        ref = None
        if repo:
            ref = reference.parse_tagged(f"{repo}:{tag}" if tag else repo)
            if ref.digest:
                raise InvalidArgument("cannot import digest reference")
        container_config = apply_changes({}, changes or [])
        if platform:
            os_name, _, arch = platform.partition("/")
            if os_name != "linux" or (arch and arch.split("/")[0] != host_architecture()):
                raise InvalidArgument(f'image operating system "{platform}" cannot be used on '
                                      "this platform")
        loop = asyncio.get_running_loop()
        report = _threadsafe(progress, loop)
        reader = ProgressReader(ThreadReader(body, loop), lambda done: report(
            {"status": "Importing", "progressDetail": {"current": done}, "id": ""}), 4 << 20)
        owner = f"import:{uuid.uuid4().hex}"
        layer = await loop.run_in_executor(None, self.layers.add_from_tar, reader, None, owner)
        now = now_rfc3339()
        config = {"architecture": host_architecture(), "os": "linux", "created": now,
                  "config": container_config,
                  "history": [{"created": now, "comment": message or "Imported from -"}]}
        if message:
            config["comment"] = message
        try:
            image = self.images.create(config, [layer.diff_id],
                                       tags=[ref.familiar()] if ref else None)
        except BaseException:
            self.layers.unhold(owner)
            self.layers.release(layer.diff_id)
            raise
        self.layers.unhold(owner)
        self.emit_event("image", "import", image)
        return image.id

    async def image_load(self, body: AsyncIterator[bytes], quiet: bool = False,
                         progress: Progress | None = None) -> list[str]:
        """``POST /images/load``: returns docker's ``Loaded image: …`` lines."""
        from silobox.storage import archive
        loop = asyncio.get_running_loop()
        report = _threadsafe(None if quiet else progress, loop)
        result = await loop.run_in_executor(
            None, archive.load, ThreadReader(body, loop), self.layers, self.images, report)
        for image, tags in result.images:
            self.emit_event("image", "load", image)
        return result.messages()

    async def image_save(self, names: list[str], oci: bool = False) -> AsyncIterator[bytes]:
        """``GET /images/get``: checks every name first, then streams the archive."""
        from silobox.storage import archive
        if not names:
            raise InvalidArgument("no images given to save")
        plan = archive.plan_save(names, self.images)
        for image, _ in plan:
            self.emit_event("image", "save", image)
        return iterate_in_thread(archive.save(plan, self.images, self.layers, oci_only=oci))

    # -- container filesystems ---------------------------------------------------------------

    async def container_changes(self, ref: str) -> list[dict[str, Any]]:
        """``GET /containers/{id}/changes`` from the sandbox's upper directory."""
        from silobox.storage.changes import list_changes
        c = self._find(ref)
        lowers = self.container_lower_dirs(c)
        async with self._upper_of(c) as upper:
            return await asyncio.get_running_loop().run_in_executor(
                None, list_changes, upper, lowers) or None

    @contextlib.asynccontextmanager
    async def _upper_of(self, c: Any) -> AsyncIterator[str]:
        """The container's upper directory, its sandbox disk activated meanwhile if stopped
        (under the container's lock, so a start cannot mount the disk a second time)."""
        sandbox = self.sandbox_for(c.id)
        if c.running:
            readers = self.sandbox_readers
            readers[c.id] = readers.get(c.id, 0) + 1
            try:
                yield sandbox.paths.upper
            finally:
                readers[c.id] -= 1
                if not readers[c.id]:
                    del readers[c.id]
                    if not c.running:   # it stopped meanwhile: unmount what its stop left
                        async with self._lock(c.id):
                            if not c.running and not self._attachment(c.id):
                                await asyncio.get_running_loop().run_in_executor(
                                    None, sandbox.deactivate)
            return
        async with self._lock(c.id):
            loop = asyncio.get_running_loop()
            activated = await _activate(sandbox)
            try:
                if not sandbox.exists():
                    raise NotFound(f"No such container: {c.id}: it has no writable layer")
                yield sandbox.paths.upper
            finally:
                if activated:
                    await loop.run_in_executor(None, sandbox.deactivate)

    async def container_commit(self, ref: str, repo: str = "", tag: str = "",
                               comment: str = "", author: str = "",
                               changes: list[str] | None = None, pause: bool = True,
                               config: dict[str, Any] | None = None) -> str:
        """``POST /commit``: the sandbox's upper dir becomes a layer over the container's
        image, with the container's config (and ``changes``) as the new image's config."""
        from silobox.storage import reference
        from silobox.storage.changes import tar_overlay_dir
        from silobox.storage.images import now_rfc3339
        c = self._find(ref)
        target = None
        if repo:
            target = reference.parse_tagged(f"{repo}:{tag}" if tag else repo)
            if target.digest:
                raise InvalidArgument("cannot commit to digest reference")
        base = self.images.get(c.data["Image"])
        owner = f"commit:{uuid.uuid4().hex}"
        paused_here = False
        if pause and c.running and status(c) is not Status.PAUSED:
            try:
                await self.container_pause(c.id)
                paused_here = True
            except NotRunning:   # it ended meanwhile: a stopped container needs no pause
                pass
        try:
            async with self._upper_of(c) as upper:
                reader = IteratorReader(tar_overlay_dir(upper, skip_init=True))
                parent = base.diff_ids[-1] if base.diff_ids else None
                layer = await asyncio.get_running_loop().run_in_executor(
                    None, self.layers.add_from_tar, reader, parent, owner)
        finally:
            if paused_here:
                with contextlib.suppress(Conflict):   # it may have been killed meanwhile
                    await self.container_unpause(c.id)
        cfg = {k: v for k, v in c.config.items() if k not in ("Hostname", "Domainname")}
        cfg.update({k: v for k, v in (config or {}).items() if v is not None})
        cfg = apply_changes(cfg, changes or [])
        cfg.pop("Image", None)
        now = now_rfc3339()
        doc = {k: v for k, v in base.config.items() if k not in ("rootfs", "id", "parent")}
        history = list(doc.get("history") or [])
        entry: dict[str, Any] = {"created": now,
                                 "created_by": " ".join([c.data["Path"], *c.data["Args"]])}
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
        self.emit_event("container", "commit", c)
        return image.id

    async def container_export(self, ref: str) -> AsyncIterator[bytes]:
        """``GET /containers/{id}/export``: the merged root filesystem as a tar."""
        c = self._find(ref)
        lock = await self._hold(c)
        try:
            proc, _ = await self._fs_helper(c, {"op": "get", "path": "/", "one_fs": True})
        except BaseException:
            _release(lock)
            raise
        return _stdout_chunks(proc, lock)

    async def container_archive_stat(self, ref: str, path: str) -> dict[str, Any]:
        """``HEAD /containers/{id}/archive``: the X-Docker-Container-Path-Stat document."""
        c = self._find(ref)
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
        c = self._find(ref)
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
        c = self._find(ref)
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
        lock = self._lock(c.id)
        await lock.acquire()
        return lock

    async def _fs_helper_run(self, c: Any, args: dict[str, Any], path: str = "/",
                             stdin: bool = False) -> asyncio.subprocess.Process:
        """Start the helper that works inside the container's root (see storage.changes)."""
        held = mount_tree(c.data.get("Mounts") or [], str(args.get("path") or "/"))
        if held is not None and args["op"] == "put" and not held[0].get("RW", True):
            raise InvalidArgument("mounted volume is marked read-only")
        if c.running and c.state.get("Pid"):
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
        sandbox = self.sandbox_for(c.id)
        lowers = self.container_lower_dirs(c)
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


def _src_path() -> str:
    import silobox
    return os.path.dirname(os.path.dirname(os.path.abspath(silobox.__file__)))


def _check_cp_path(path: str) -> None:
    if not path:
        raise InvalidArgument("path cannot be empty")
    if "\x00" in path:
        raise InvalidArgument("invalid path")


async def _activate(sandbox: Any, wait: float = 5.0) -> str:
    """Mount a stopped container's sandbox disk; while the container's own mount of it is
    still going away (the loop device detaches itself a moment after), wait for it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            return await loop.run_in_executor(None, sandbox.activate)
        except Conflict:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


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


# -- filter helpers ----------------------------------------------------------------------------


def _reference_matches(tag: str, pattern: str) -> bool:
    """Docker matches the familiar name (``busybox``) or ``name:tag`` against the pattern."""
    name = tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag
    if ":" in pattern.rsplit("/", 1)[-1]:
        return fnmatch.fnmatchcase(tag, pattern)
    return fnmatch.fnmatchcase(name, pattern)


def _labels_match(image: Any, wanted: list[str], any_of: bool = False) -> bool:
    return labels_match((image.config.get("config") or {}).get("Labels"), wanted, any_of)


def _ts(created: str) -> float:
    try:
        return parse_rfc3339(created)
    except ValueError:
        return 0.0


def _until(value: str) -> float:
    """``until``: Unix seconds, RFC 3339, or a duration before now (``10m``)."""
    try:
        return parse_until(value)
    except ValueError:
        raise InvalidArgument(f"invalid filter 'until={value}'") from None
