"""The build service: ``POST /build`` and ``POST /build/prune`` on the engine.

It owns the build cache table (which image a step made over which parent, under which key) and
what Docker derives from it: an image made by a build step is the *child* of the image it was
built on, so untagged intermediate images that have children are hidden from ``image ls``
(unless ``-a``) and survive ``image prune`` as long as something built on them is kept; inspect
shows the ``Parent``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterator, Iterator

from silobox.engine.build.builder import (Build, BuildOptions, new_workdir, prepare_build,
                                          remove_workdir)
from silobox.errors import InvalidArgument, NotFound

SCHEMA_COMPONENT = "engine.build"
SCHEMA = [
    """
    CREATE TABLE build_cache (
        cache_key TEXT NOT NULL,        -- sha256 of parent, instruction, config, inputs
        image_id  TEXT NOT NULL,        -- the image the step made (--no-cache makes more)
        parent_id TEXT NOT NULL,        -- the image it was made on ("" for scratch)
        created   TEXT NOT NULL,
        PRIMARY KEY (cache_key, image_id)
    );
    CREATE INDEX build_cache_by_parent ON build_cache(parent_id);
    CREATE INDEX build_cache_by_image ON build_cache(image_id);
    """,
]


class BuildService:
    """Mixed into the Engine before the image services, whose listing and pruning it refines."""

    config: Any
    db: Any
    images: Any
    layers: Any
    containers: dict[str, Any]
    emit_event: Any
    _upper_of: Any

    def _build_schema(self) -> None:
        if not getattr(self, "_build_schema_ready", False):
            self.db.migrate(SCHEMA_COMPONENT, SCHEMA)
            # contexts of builds a previous silod did not finish (none of ours runs yet)
            import shutil
            shutil.rmtree(os.path.join(self.config.root, "build"), ignore_errors=True)
            self._build_schema_ready = True

    # -- the build ------------------------------------------------------------------------------

    async def build_prepare(self, body: AsyncIterator[bytes], options: BuildOptions) -> Build:
        """Read the context and the Dockerfile; errors here come before any output."""
        from silobox.engine.imageops import ThreadReader
        from silobox.storage import reference
        self._build_schema()
        _check_platform(options.platform)
        for tag in options.tags:
            try:
                parsed = reference.parse_tagged(tag)
            except InvalidArgument as e:
                raise InvalidArgument(f"invalid reference format: {tag}: {e.message}") from e
            if parsed.digest is not None:
                raise InvalidArgument(f"invalid tag {tag}: a tag cannot contain a digest")
        workdir = new_workdir(self.config.root)
        try:
            reader = ThreadReader(body, asyncio.get_running_loop())
            return await prepare_build(self, reader, options, workdir)
        except BaseException:
            remove_workdir(workdir)
            raise

    async def build_run(self, build: Build, emit: Any) -> str:
        """Run a prepared build, streaming to ``emit``; its context is removed at the end."""
        try:
            return await build.run(emit)
        finally:
            # The layers the build stored are held until here, so that a concurrent failing
            # load cannot remove one before the build's image uses it.
            self.layers.unhold(build.layer_owner)
            remove_workdir(build.workdir)

    def build_discard(self, build: Build) -> None:
        remove_workdir(build.workdir)

    def tag_built_image(self, image: Any, tag: str) -> None:
        from silobox.storage import reference
        parsed = reference.parse_tagged(tag)
        self.images.tag(image, tag)
        self.emit_event("image", "tag", image, {"name": parsed.with_default_tag().familiar()})

    # -- the cache ------------------------------------------------------------------------------

    def build_cache_lookup(self, key: str) -> str | None:
        self._build_schema()
        row = self.db.query_one("SELECT b.image_id FROM build_cache b JOIN images i "
                                "ON i.id = b.image_id WHERE b.cache_key = ? "
                                "ORDER BY b.created DESC LIMIT 1", (key,))
        return row["image_id"] if row is not None else None

    def build_cache_record(self, key: str, image_id: str, parent_id: str) -> None:
        from silobox.storage.images import now_rfc3339
        self._build_schema()
        with self.db.tx():
            self.db.execute("INSERT OR REPLACE INTO build_cache (cache_key, image_id, parent_id, "
                            "created) VALUES (?, ?, ?, ?)",
                            (key, image_id, parent_id, now_rfc3339()))

    def _image_children(self, image_id: str) -> list[str]:
        self._build_schema()
        rows = self.db.query("SELECT DISTINCT b.image_id FROM build_cache b JOIN images i "
                             "ON i.id = b.image_id WHERE b.parent_id = ? AND b.image_id != ?",
                             (image_id, image_id))
        return [r["image_id"] for r in rows]

    def _has_children(self, image_id: str) -> bool:
        return bool(self._image_children(image_id))

    def _image_parent(self, image_id: str) -> str:
        self._build_schema()
        row = self.db.query_one("SELECT b.parent_id FROM build_cache b JOIN images i "
                                "ON i.id = b.parent_id WHERE b.image_id = ? AND "
                                "b.parent_id != ''", (image_id,))
        return row["parent_id"] if row is not None else ""

    # -- layers ---------------------------------------------------------------------------------

    async def build_layer_from_tar(self, chunks: Iterator[bytes], diff_ids: list[str],
                                   owner: str | None = None) -> str:
        """Store a layer tar generated in a worker thread, held by ``owner``; returns its diff
        id."""
        from silobox.engine.imageops import IteratorReader
        parent = diff_ids[-1] if diff_ids else None
        layer = await asyncio.get_running_loop().run_in_executor(
            None, self.layers.add_from_tar, IteratorReader(chunks), parent, owner)
        return layer.diff_id

    async def build_commit_layer(self, c: Any, diff_ids: list[str],
                                 owner: str | None = None) -> tuple[str, bool]:
        """A stopped RUN container's changes as a layer: (diff id, whether nothing changed).
        An empty change set is not kept as a layer (Docker's ``empty_layer``)."""
        from silobox.engine.build.diff import run_layer_tar
        from silobox.engine.build.rootfs import MergedView
        lower = MergedView([self.layers.get(d).path for d in reversed(diff_ids)])
        loop = asyncio.get_running_loop()
        async with self._upper_of(c) as upper:
            chunks = await loop.run_in_executor(None, run_layer_tar, upper, lower)
            if chunks is None:
                return "", True
            return await self.build_layer_from_tar(chunks, diff_ids, owner), False

    # -- prune ----------------------------------------------------------------------------------

    async def build_prune(self, filters: dict[str, list[str]] | None = None,
                          all: bool = False) -> dict[str, Any]:
        """``POST /build/prune``: drop the build cache. Intermediate images (untagged, made by a
        build step, used by no container) go with it; layers still used by a kept image stay."""
        self._build_schema()
        filters = filters or {}
        for key in filters:
            if key not in ("until", "unused-for", "id", "type", "inuse", "shared", "private",
                           "description"):
                raise InvalidArgument(f"invalid filter '{key}'")
        used = {c.data.get("Image") for c in self.containers.values()}
        deleted: list[str] = []
        reclaimed = 0
        rows = self.db.query("SELECT DISTINCT image_id FROM build_cache")
        loop = asyncio.get_running_loop()
        candidates = []
        for row in rows:
            try:
                candidates.append(self.images.get(row["image_id"]))
            except NotFound:
                continue
        candidates.sort(key=lambda i: i.created, reverse=True)   # children before parents
        for image in candidates:
            if image.tags or image.id in used:
                continue
            sizes = {l.diff_id: l.size for l in image.layers}
            await loop.run_in_executor(None, self._delete_image, image.id)   # type: ignore
            reclaimed += sum(s for d, s in sizes.items() if not self.layers.exists(d))
            deleted.append(image.id)
            self.emit_event("image", "delete", image)
        with self.db.tx():
            self.db.execute("DELETE FROM build_cache WHERE image_id NOT IN (SELECT id FROM "
                            "images) OR image_id IN (SELECT i.id FROM images i WHERE NOT EXISTS "
                            "(SELECT 1 FROM image_tags t WHERE t.image_id = i.id))")
        return {"CachesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    # -- refinements of the image services --------------------------------------------------------

    async def image_list(self, all: bool = False,
                         filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        """Docker hides intermediate images (untagged, with children) unless ``all``."""
        items = await super().image_list(all=all, filters=filters)   # type: ignore[misc]
        for item in items:
            item["ParentId"] = self._image_parent(item["Id"]) or item.get("ParentId", "")
        if all:
            return items
        return [i for i in items if i.get("RepoTags") or not self._has_children(i["Id"])]

    async def image_history(self, ref: str) -> list[dict[str, Any]]:
        """Entries made by images still here carry their ids and tags, as in Docker (the
        others stay ``<missing>``): walk the parent chain the build cache recorded."""
        out = await super().image_history(ref)   # type: ignore[misc]
        image = self.images.resolve(ref)
        total = len(out)
        seen: set[str] = set()
        while image is not None and image.id not in seen:
            seen.add(image.id)
            depth = total - len(image.config.get("history") or [None])
            if 0 <= depth < total:
                out[depth]["Id"] = image.id
                out[depth]["Tags"] = list(image.tags) or None
            parent = self._image_parent(image.id)
            try:
                image = self.images.get(parent) if parent else None
            except NotFound:
                image = None
        return out

    async def image_delete(self, ref: str, force: bool = False,
                           noprune: bool = False) -> list[dict[str, str]]:
        """Docker's ``rmi`` also deletes the untagged parents a build left (its intermediate
        images) once nothing else uses them, unless ``noprune``."""
        try:
            parent = self._image_parent(self.images.resolve(ref).id)
        except NotFound:
            parent = ""
        records = await super().image_delete(ref, force=force,   # type: ignore[misc]
                                             noprune=noprune)
        deleted = {r["Deleted"] for r in records if "Deleted" in r}
        if noprune or not deleted:
            return records
        used = {c.data.get("Image") for c in self.containers.values()}
        loop = asyncio.get_running_loop()
        while parent:
            try:
                image = self.images.get(parent)
            except NotFound:
                break
            if image.tags or image.id in used or self._has_children(image.id):
                break
            parent = self._image_parent(image.id)
            records.extend(await loop.run_in_executor(None, self._delete_image,  # type: ignore
                                                      image.id))
            self.emit_event("image", "delete", image)
        return records

    async def image_inspect(self, ref: str) -> dict[str, Any]:
        out = await super().image_inspect(ref)   # type: ignore[misc]
        out["Parent"] = self._image_parent(out["Id"]) or out.get("Parent", "")   # or commit's
        return out


def _check_platform(platform: str) -> None:
    """Only this host's own platform is built (no emulation)."""
    if not platform:
        return
    from silobox.storage.images import host_architecture
    os_name, _, arch = platform.lower().partition("/")
    if os_name != "linux" or (arch and arch.split("/")[0] != host_architecture()):
        raise InvalidArgument(f'"{platform}": this host builds only linux/'
                              f"{host_architecture()} images")
