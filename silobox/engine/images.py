"""Images and sandboxes as the engine sees them; the storage service does the real work."""

from __future__ import annotations

import asyncio
from typing import Any

from silobox.errors import NotFound


class ImageService:
    config: Any
    images: Any

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

    def sandbox_for(self, cid: str) -> Any:
        from silobox.storage.sandbox import Sandbox
        return Sandbox(self.config.root, cid)

    async def image_list(self, all: bool = False,
                         filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        out = []
        filters = filters or {}
        for image in self.images.list():
            if filters.get("reference"):
                import fnmatch
                if not any(fnmatch.fnmatch(t, pat) or fnmatch.fnmatch(t.split(":")[0], pat)
                           for t in image.tags for pat in filters["reference"]):
                    continue
            if filters.get("dangling"):
                want = filters["dangling"][0] in ("1", "true")
                if want != (not image.tags):
                    continue
            out.append(image.to_docker_summary())
        out.sort(key=lambda d: d.get("Created", 0), reverse=True)
        return out

    async def image_inspect(self, ref: str) -> dict[str, Any]:
        """``GET /images/{name}/json``; the built-in busybox counts as present, so clients that
        inspect before they create (docker-compose) see it and do not try to pull it."""
        return (await self.image_for_create(ref)).to_docker_inspect()
