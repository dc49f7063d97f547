"""Docker's image verbs: list, inspect, history, tag, rmi, prune, import, load, save.

dockerd on Windows implements ``import``/``load``/``save`` over wclayer ImportLayer/ExportLayer;
here the storage package does the byte work (``layers``, ``archive``) and this service adds
Docker's rules: which conflicts refuse an ``rmi``, what config an import gets, how progress is
reported, and (from the build cache) which image is whose parent.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import shlex
import uuid
from typing import Any, AsyncIterator

from silobox import jsonlimits
from silobox.engine.spec import runs_here
from silobox.engine.readers import Progress, ThreadReader, iterate_in_thread, threadsafe
from silobox.errors import Conflict, InvalidArgument, NotFound, SiloboxError
from silobox.filters import labels_match
from silobox.timeutil import parse_rfc3339, parse_until

log = logging.getLogger("silobox.images")


class ImageService:
    """Docker's image verbs over the image and layer stores.

    ``lineage`` (the build cache) says which image was built on which: it gives ``Parent``,
    hides intermediate images from ``image ls`` and keeps them from ``prune`` while children
    are kept, and lets ``rmi`` take a build's untagged parents along."""

    def __init__(self, config: Any, images: Any, layers: Any, store: Any, events: Any,
                 lineage: Any) -> None:
        self.config = config
        self.images = images
        self.layers = layers
        self.store = store
        self.events = events
        self.lineage = lineage

    async def image_for_create(self, ref: str) -> Any:
        """Resolve the image of a new container, building the built-in busybox if needed."""
        from silobox.storage.builtin import ensure_builtin_image
        try:
            return self.images.resolve(ref)
        except NotFound as missing:
            image = await asyncio.get_running_loop().run_in_executor(
                None, ensure_builtin_image, self.images, ref)
            if image is None:
                raise missing
            return image

    async def image_inspect(self, ref: str) -> dict[str, Any]:
        """``GET /images/{name}/json``; the built-in busybox counts as present, so clients that
        inspect before they create (docker-compose) see it and do not try to pull it."""
        out = (await self.image_for_create(ref)).to_docker_inspect()
        out["Parent"] = self.lineage.parent(out["Id"]) or out.get("Parent", "")   # or commit's
        return out

    # -- startup -----------------------------------------------------------------------------

    def sweep_storage(self) -> list[str]:
        """Remove what an interrupted import, load or commit left (called from Engine.start).

        The references of a killed daemon's imports and loads go; every stored container
        holds its layers (also one created before containers held layers)."""
        owners = {f"container:{cid}" for cid in self.store}
        self.layers.drop_refs_except(owners)
        keep: set[str] = set()
        for c in self.store.values():
            ids = c.silobox.get("Layers")
            if ids is None:
                try:
                    ids = self.images.get(c.image).diff_ids
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
        # (``all`` is the parameter here: the filters compare with the nearest bound instead)
        before = min((_ts(self.images.resolve(r).created) for r in filters.get("before", [])),
                     default=None)
        since = max((_ts(self.images.resolve(r).created) for r in filters.get("since", [])),
                    default=None)
        until = min((_until(u) for u in filters.get("until", [])), default=None)
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
            created = _ts(image.created)
            if before is not None and not created < before:
                continue
            if since is not None and not created > since:
                continue
            if until is not None and not created < until:
                continue
            summary = image.to_docker_summary()
            if filters.get("reference"):
                summary["RepoTags"] = [t for t in image.tags if any(
                    _reference_matches(t, p) for p in filters["reference"])]
            summary["ParentId"] = self.lineage.parent(image.id) or summary.get("ParentId", "")
            # Docker hides intermediate images (untagged, with children) unless ``all``
            if all or summary.get("RepoTags") or not self.lineage.has_children(image.id):
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
        # Entries made by images still here carry their ids and tags, as in Docker (the
        # others stay <missing>): walk the parent chain the build cache recorded.
        total = len(out)
        seen: set[str] = set()
        step: Any = image
        while step is not None and step.id not in seen:
            seen.add(step.id)
            depth = total - len(step.config.get("history") or [None])
            if 0 <= depth < total:
                out[depth]["Id"] = step.id
                out[depth]["Tags"] = list(step.tags) or None
            parent = self.lineage.parent(step.id)
            try:
                step = self.images.get(parent) if parent else None
            except NotFound:
                step = None
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
        self.events.emit_event("image", "tag", image, {"name": parsed.with_default_tag().familiar()})

    async def image_delete(self, ref: str, force: bool = False,
                           noprune: bool = False) -> list[dict[str, str]]:
        """``DELETE /images/{name}`` with Docker's conflict rules (moby ``ImageDelete``); it
        also deletes the untagged parents a build left (its intermediate images) once nothing
        else uses them, unless ``noprune``."""
        image = self.images.resolve(ref)
        parent = self.lineage.parent(image.id)
        records = await self._delete_reference(ref, image, force)
        deleted = {r["Deleted"] for r in records if "Deleted" in r}
        if noprune or not deleted:
            return records
        used = {c.image for c in self.store.values()}
        loop = asyncio.get_running_loop()
        while parent:
            try:
                image = self.images.get(parent)
            except NotFound:
                break
            if image.tags or image.id in used or self.lineage.has_children(image.id):
                break
            parent = self.lineage.parent(image.id)
            records.extend(await loop.run_in_executor(None, self.delete_image, image.id))
            self.events.emit_event("image", "delete", image)
        return records

    async def _delete_reference(self, ref: str, image: Any,
                                force: bool) -> list[dict[str, str]]:
        from silobox.storage import reference
        users = [c for c in self.store.values() if c.image == image.id]
        running = [c for c in users if c.running]
        stopped = [c for c in users if not c.running]
        by_id = image.id.removeprefix("sha256:").startswith(ref.removeprefix("sha256:")) \
            and not self._is_tag_of(ref, image)
        records: list[dict[str, str]] = []
        if not by_id and "@" in ref and (image.tags or len(image.digests) > 1 or users):
            # a repo digest while other references (or containers) keep the image: untag only
            name = reference.parse(ref).familiar()
            self.images.untag(name)
            self.events.emit_event("image", "untag", image, {"name": name})
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
            self.events.emit_event("image", "untag", image, {"name": tag})
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
                self.events.emit_event("image", "untag", image, {"name": tag})
        # Forced past stopped containers, as moby's imageDeleteHelper: the image record goes;
        # the containers hold its layers, so they keep working and the layers go with the
        # last of them.
        records.extend(await asyncio.get_running_loop().run_in_executor(
            None, self.delete_image, image.id))
        self.events.emit_event("image", "delete", image)
        return records

    def image_shown(self, c: Any, resolved: dict[str, str] | None = None) -> str:
        """A container's ``Image`` in lists: the name it was created from while that still
        names its image, else the image id (moby ``refreshImage``: after a retag or rmi -f).
        ``resolved`` memoizes name → image id across one listing (a store query each)."""
        name = c.config.get("Image") or ""
        if name != c.image:
            memo = resolved if resolved is not None else {}
            if name not in memo:
                try:
                    memo[name] = self.images.resolve(name).id
                except (NotFound, InvalidArgument):
                    memo[name] = ""
            return name if memo[name] == c.image else c.image
        return name

    def _is_tag_of(self, ref: str, image: Any) -> bool:
        from silobox.storage import reference
        try:
            return reference.parse_tagged(ref).familiar() in image.tags
        except InvalidArgument:
            return False

    def delete_image(self, image_id: str) -> list[dict[str, str]]:
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
        used = {c.image for c in self.store.values()}
        deleted: list[dict[str, str]] = []
        reclaimed = 0
        for image in self.images.list():   # newest first: a child goes before its parent
            if image.id in used or (only_dangling and image.tags) or self.lineage.has_children(image.id):
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
                None, self.delete_image, image.id)
            deleted.extend(records)
            reclaimed += sum(size for d, size in before.items() if not self.layers.exists(d))
            self.events.emit_event("image", "delete", image)
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
        if platform and not runs_here(platform):
            raise InvalidArgument(f'image operating system "{platform}" cannot be used on '
                                  "this platform")
        loop = asyncio.get_running_loop()
        report = threadsafe(progress, loop)
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
        self.events.emit_event("image", "import", image)
        return image.id

    async def image_load(self, body: AsyncIterator[bytes], quiet: bool = False,
                         progress: Progress | None = None) -> list[str]:
        """``POST /images/load``: returns docker's ``Loaded image: …`` lines."""
        from silobox.storage import archive
        loop = asyncio.get_running_loop()
        report = threadsafe(None if quiet else progress, loop)
        result = await loop.run_in_executor(
            None, archive.load, ThreadReader(body, loop), self.layers, self.images, report)
        for image, tags in result.images:
            self.events.emit_event("image", "load", image)
        return result.messages()

    async def image_save(self, names: list[str], oci: bool = False) -> AsyncIterator[bytes]:
        """``GET /images/get``: checks every name first, then streams the archive."""
        from silobox.storage import archive
        if not names:
            raise InvalidArgument("no images given to save")
        plan = archive.plan_save(names, self.images)
        for image, _ in plan:
            self.events.emit_event("image", "save", image)
        return iterate_in_thread(archive.save(plan, self.images, self.layers, oci_only=oci))


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
