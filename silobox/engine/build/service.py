"""The build service: ``POST /build`` and ``POST /build/prune`` on the engine.

A build (``builder.py``) runs its RUN steps as containers of the container service, pulls FROM
images through the distribution service, stores layers and images, and records each step in
the build cache (``cache.py``), which the image service also reads for images' parents.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Iterator

from silobox.api.backend import BuildOptions
from silobox.engine.build.builder import Build, new_workdir, prepare_build, remove_workdir
from silobox.engine.build.cache import BuildCache
from silobox.errors import InvalidArgument, NotFound

class BuildService:
    """The classic builder's entry points and what its steps need from the other services."""

    def __init__(self, config: Any, cache: BuildCache, images: Any, layers: Any, store: Any,
                 events: Any, *, image_service: Any, containers: Any, filesystems: Any,
                 distribution: Any) -> None:
        self.config = config
        self.cache = cache
        self.images = images                # the image store
        self.layers = layers
        self.store = store
        self.events = events
        self.image_service = image_service  # FROM images (the built-in busybox too)
        self.containers = containers        # RUN steps: create, start, logs, wait, remove
        self.filesystems = filesystems      # a RUN container's upper directory
        self.distribution = distribution    # FROM images not here yet

    # -- the build ------------------------------------------------------------------------------

    async def build_prepare(self, body: AsyncIterator[bytes], options: BuildOptions) -> Build:
        """Read the context and the Dockerfile; errors here come before any output."""
        from silobox.engine.readers import ThreadReader
        from silobox.storage import reference
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
        self.events.emit_event("image", "tag", image, {"name": parsed.with_default_tag().familiar()})

    # -- layers ---------------------------------------------------------------------------------

    async def build_layer_from_tar(self, chunks: Iterator[bytes], diff_ids: list[str],
                                   owner: str | None = None) -> str:
        """Store a layer tar generated in a worker thread, held by ``owner``; returns its diff
        id."""
        from silobox.engine.readers import IteratorReader
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
        async with self.filesystems.upper_of(c) as upper:
            chunks = await loop.run_in_executor(None, run_layer_tar, upper, lower)
            if chunks is None:
                return "", True
            return await self.build_layer_from_tar(chunks, diff_ids, owner), False

    # -- prune ----------------------------------------------------------------------------------

    async def build_prune(self, filters: dict[str, list[str]] | None = None,
                          all: bool = False) -> dict[str, Any]:
        """``POST /build/prune``: drop the build cache. Intermediate images (untagged, made by a
        build step, used by no container) go with it; layers still used by a kept image stay."""
        filters = filters or {}
        for key in filters:
            if key not in ("until", "unused-for", "id", "type", "inuse", "shared", "private",
                           "description"):
                raise InvalidArgument(f"invalid filter '{key}'")
        used = {c.image for c in self.store.values()}
        deleted: list[str] = []
        reclaimed = 0
        loop = asyncio.get_running_loop()
        candidates = []
        for image_id in self.cache.image_ids():
            try:
                candidates.append(self.images.get(image_id))
            except NotFound:
                continue
        candidates.sort(key=lambda i: i.created, reverse=True)   # children before parents
        for image in candidates:
            if image.tags or image.id in used:
                continue
            sizes = {l.diff_id: l.size for l in image.layers}
            await loop.run_in_executor(None, self.image_service.delete_image, image.id)
            reclaimed += sum(s for d, s in sizes.items() if not self.layers.exists(d))
            deleted.append(image.id)
            self.events.emit_event("image", "delete", image)
        self.cache.forget_pruned()
        return {"CachesDeleted": deleted or None, "SpaceReclaimed": reclaimed}


def _check_platform(platform: str) -> None:
    """Only this host's own platform is built (no emulation)."""
    if not platform:
        return
    from silobox.engine.spec import runs_here
    from silobox.storage.images import host_architecture
    if not runs_here(platform):
        raise InvalidArgument(f'"{platform}": this host builds only linux/'
                              f"{host_architecture()} images")
