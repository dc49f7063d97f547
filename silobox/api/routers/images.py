"""Image routes (moby's ``router/image``), plus the container-filesystem routes that make or read
layers: commit, export, changes and the ``archive`` endpoint of ``docker cp``.

Long operations stream Docker's JSON progress messages (``{"status", "progressDetail", "id"}``
objects, one per line, and ``{"errorDetail", "error"}`` when a failure happens after the 200 was
sent). Request bodies (image tars, cp archives) are handed to the backend as async chunk
iterators, never read into memory whole.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from silobox.api.backend import ImageBackend
from silobox.api.routers import (Query, Route, body_chunks, check_fields, complete,
                                 json_response, read_json_object)
from silobox.api.routers.containers import CONFIG_BODY
from silobox.api.routers.distribution import pull
from silobox.api.routers.progress import progress_stream
from silobox.errors import InvalidArgument, SiloboxError



class ImageRouter:
    def __init__(self, backend: ImageBackend) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [
            ("GET", "/images/json", self.list_images),
            ("POST", "/images/create", self.create),
            ("POST", "/images/load", self.load),
            ("GET", "/images/get", self.save_many),
            ("POST", "/images/prune", self.prune),
            ("POST", "/silobox/images/bootstrap", self.bootstrap),
            # Image references contain slashes and colons (registry:5000/library/busybox:1.36).
            ("GET", "/images/{name:.+}/json", self.inspect),
            ("GET", "/images/{name:.+}/history", self.history),
            ("GET", "/images/{name:.+}/get", self.save_one),
            ("POST", "/images/{name:.+}/tag", self.tag),
            ("DELETE", "/images/{name:.+}", self.delete),
            ("POST", "/commit", self.commit),
            ("GET", "/containers/{id}/export", self.export),
            ("GET", "/containers/{id}/changes", self.changes),
            ("HEAD", "/containers/{id}/archive", self.archive_head),
            ("GET", "/containers/{id}/archive", self.archive_get),
            ("PUT", "/containers/{id}/archive", self.archive_put),
        ]

    # -- list, inspect, history, tag, delete, prune ------------------------------------------

    async def list_images(self, request: web.Request) -> web.Response:
        query = Query(request)
        images = await self.backend.image_list(all=query.flag("all"), filters=query.filters())
        return json_response(images)

    async def inspect(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.image_inspect(request.match_info["name"]))

    async def history(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.image_history(request.match_info["name"]))

    async def tag(self, request: web.Request) -> web.Response:
        query = Query(request)
        await self.backend.image_tag(request.match_info["name"], query.text("repo") or "",
                                     query.text("tag") or None)
        return web.Response(status=201)

    async def delete(self, request: web.Request) -> web.Response:
        query = Query(request)
        items = await complete(self.backend.image_delete(
            request.match_info["name"], force=query.flag("force"), noprune=query.flag("noprune")))
        return json_response(items)

    async def prune(self, request: web.Request) -> web.Response:
        return json_response(await complete(self.backend.image_prune(Query(request).filters())))

    # -- import, load, save ------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.StreamResponse:
        """``POST /images/create``: ``fromImage`` pulls from a registry (see
        ``routers/distribution.py``), ``fromSrc=-`` imports the body as a tarball."""
        query = Query(request)
        source = query.text("fromSrc")
        if source is None:
            return await pull(self.backend, request)  # type: ignore[arg-type]
        if source != "-":
            raise InvalidArgument("importing from a URL is not supported: send the tarball as "
                                  "the request body (fromSrc=-)")
        changes = request.query.getall("changes", [])

        async def run(progress: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
            image_id = await self.backend.image_import(
                body_chunks(request), repo=query.text("repo") or "", tag=query.text("tag") or "",
                message=query.text("message") or "", changes=changes,
                platform=query.text("platform") or "", progress=progress)
            return [{"status": image_id}]

        return await progress_stream(request, run)

    async def bootstrap(self, request: web.Request) -> web.StreamResponse:
        """silobox extension: build a Debian base image from the Debian archive."""
        query = Query(request)
        ref = query.text("tag") or "debian:bookworm"

        async def run(progress: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
            image_id = await self.backend.image_bootstrap(
                ref, suite=query.text("suite") or None,
                variant=query.text("variant") or "minbase",
                mirror=query.text("mirror") or None, progress=progress)
            return [{"status": image_id}]

        return await progress_stream(request, run)

    async def load(self, request: web.Request) -> web.StreamResponse:
        quiet = Query(request).flag("quiet")

        async def run(progress: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
            lines = await self.backend.image_load(body_chunks(request), quiet=quiet,
                                                  progress=progress)
            return [{"stream": line + "\n"} for line in lines]

        return await progress_stream(request, run)

    async def save_many(self, request: web.Request) -> web.StreamResponse:
        names = [n for value in request.query.getall("names", []) for n in value.split(",") if n]
        return await self._save(request, names)

    async def save_one(self, request: web.Request) -> web.StreamResponse:
        return await self._save(request, [request.match_info["name"]])

    async def _save(self, request: web.Request, names: list[str]) -> web.StreamResponse:
        # silobox extension: format=oci writes a pure OCI image layout (no manifest.json)
        fmt = (Query(request).text("format") or "docker").lower()
        if fmt not in ("docker", "oci"):
            raise InvalidArgument(f"invalid archive format {fmt!r}: docker or oci")
        chunks = await self.backend.image_save(names, oci=fmt == "oci")
        return await _send_tar(request, chunks)

    # -- container filesystems ---------------------------------------------------------------

    async def commit(self, request: web.Request) -> web.Response:
        query = Query(request)
        container = query.text("container") or ""
        if not container:
            raise InvalidArgument("container name or id is required")
        body = await read_json_object(request, required=False)
        check_fields(body, CONFIG_BODY)
        image_id = await complete(self.backend.container_commit(
            container, repo=query.text("repo") or "", tag=query.text("tag") or "",
            comment=query.text("comment") or "", author=query.text("author") or "",
            changes=request.query.getall("changes", []), pause=query.flag("pause", True),
            config=body or None))
        return json_response({"Id": image_id}, status=201)

    async def export(self, request: web.Request) -> web.StreamResponse:
        chunks = await self.backend.container_export(request.match_info["id"])
        return await _send_tar(request, chunks)

    async def changes(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.container_changes(request.match_info["id"]))

    async def archive_head(self, request: web.Request) -> web.Response:
        doc = await self.backend.container_archive_stat(request.match_info["id"],
                                                        _archive_path(request))
        return web.Response(status=200, headers={"X-Docker-Container-Path-Stat": _stat(doc),
                                                 "Content-Type": "application/json"})

    async def archive_get(self, request: web.Request) -> web.StreamResponse:
        doc, chunks = await self.backend.container_archive_get(request.match_info["id"],
                                                               _archive_path(request))
        return await _send_tar(request, chunks, {"X-Docker-Container-Path-Stat": _stat(doc)})

    async def archive_put(self, request: web.Request) -> web.Response:
        query = Query(request)
        await self.backend.container_archive_put(
            request.match_info["id"], _archive_path(request), body_chunks(request),
            no_overwrite_dir_non_dir=query.flag("noOverwriteDirNonDir"),
            copy_uid_gid=query.flag("copyUIDGID"))
        return web.Response(status=200)


# -- helpers -----------------------------------------------------------------------------------


PATH_MAX = 4095
NAME_MAX = 255


def _archive_path(request: web.Request) -> str:
    """``path`` of the archive routes: a path the kernel can resolve at all (Linux limits a
    path to 4095 bytes and a name in it to 255); beyond that it is a bad parameter, not a
    failure of ours."""
    path = request.query.get("path")
    if not path:
        raise InvalidArgument("bad parameter: 'path' cannot be empty")
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > PATH_MAX or "\0" in path:
        raise InvalidArgument(f"bad parameter: 'path' is not a valid path ({size} bytes)")
    if any(len(name.encode("utf-8", "surrogateescape")) > NAME_MAX for name in path.split("/")):
        raise InvalidArgument(f"bad parameter: 'path' has a name longer than {NAME_MAX} bytes")
    return path


def _stat(doc: dict[str, Any]) -> str:
    import base64
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


async def _send_tar(request: web.Request, chunks: AsyncIterator[bytes],
                    headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Stream a tar. The first chunk is produced before the 200 is sent, so an early failure
    still gets its proper error status; a later one cuts the stream short, as in Docker."""
    iterator = chunks.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = b""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-tar",
                                                       **(headers or {})})
    await response.prepare(request)
    try:
        if first:
            await response.write(first)
        async for chunk in iterator:
            await response.write(chunk)
    except SiloboxError:
        request.transport and request.transport.close()   # the client sees a short archive
        return response
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
    await response.write_eof()
    return response
