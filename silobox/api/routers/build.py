"""Build routes (moby's ``router/build``): ``POST /build`` and ``POST /build/prune``.

``/build`` takes the context as a tar body (plain, gzip, bzip2 or xz) and answers with the
classic builder's JSON message stream (``{"stream": ...}``, ``{"aux": {"ID": ...}}``). Problems
found before the build starts (query, tar, Dockerfile) get a 400 with ``{"message"}``; a failure
during the build is reported in the stream (``errorDetail``), as dockerd does, because the 200
has been sent by then.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from silobox import jsonlimits
from silobox.api.backend import BuildBackend, BuildOptions
from silobox.api.routers import Query, Route, body_chunks, json_response
from silobox.errors import InvalidArgument, SiloboxError

log = logging.getLogger("silobox.api.build")
_HOST_CONFIG = {"memory": "Memory", "memswap": "MemorySwap", "cpushares": "CpuShares",
                "cpuperiod": "CpuPeriod", "cpuquota": "CpuQuota", "shmsize": "ShmSize"}



def _json_query(query: Query, name: str) -> dict[str, Any]:
    raw = query.text(name)
    if not raw:
        return {}
    try:
        value = jsonlimits.loads(raw)
    except ValueError as e:
        raise InvalidArgument(f"invalid {name} value: {e}") from e
    if not isinstance(value, dict):
        raise InvalidArgument(f"invalid {name} value: expected a JSON object")
    return value


def _cache_from(query: Query) -> list[str]:
    """``cachefrom``: a JSON array of image names."""
    raw = query.text("cachefrom")
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise InvalidArgument(f"invalid cachefrom value: {e}") from e
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument("invalid cachefrom value: expected a JSON array of strings")
    return value


def build_options(request: web.Request) -> Any:
    """The query of ``POST /build`` as the builder's options; InvalidArgument if malformed."""
    query = Query(request)
    if query.text("remote"):
        raise InvalidArgument("remote build contexts are not supported: silobox's builder does "
                              "not download; send the context as the request body")
    if query.text("version") == "2":
        raise InvalidArgument("BuildKit (version=2) is not supported by silobox: use the "
                              "classic builder (version=1)")
    if query.flag("squash"):
        raise InvalidArgument("squash is an experimental dockerd feature silobox does not "
                              "implement: build without --squash")
    buildargs = _json_query(query, "buildargs")
    for key, value in buildargs.items():
        if value is not None and not isinstance(value, str):
            raise InvalidArgument(f"invalid buildargs value for {key}: expected a string")
    labels = _json_query(query, "labels")
    for key, value in labels.items():
        if not isinstance(value, str):
            raise InvalidArgument(f"invalid labels value for {key}: expected a string")
    host_config: dict[str, Any] = {}
    for name, key in _HOST_CONFIG.items():
        number = query.integer(name)
        if number:
            host_config[key] = number
    if query.text("cpusetcpus"):
        host_config["CpusetCpus"] = query.text("cpusetcpus")
    hosts = [h for v in request.query.getall("extrahosts", []) for h in v.split(",") if h]
    if hosts:
        host_config["ExtraHosts"] = hosts
    if query.text("isolation"):
        host_config["Isolation"] = query.text("isolation")
    network = query.text("networkmode") or ""
    return BuildOptions(
        tags=[t for t in request.query.getall("t", []) if t],
        dockerfile=query.text("dockerfile") or "Dockerfile", buildargs=buildargs,
        nocache=query.flag("nocache"), target=query.text("target") or "", labels=labels,
        quiet=query.flag("q"), rm=query.flag("rm", default=True),
        forcerm=query.flag("forcerm"), host_config=host_config,
        networkmode="" if network == "default" else network, pull=query.flag("pull"),
        cache_from=_cache_from(query), platform=query.text("platform") or "",
        registry_config=request.headers.get("X-Registry-Config", ""))


class BuildRouter:
    def __init__(self, backend: BuildBackend) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [
            ("POST", "/build", self.build),
            ("POST", "/build/prune", self.prune),
        ]

    async def build(self, request: web.Request) -> web.StreamResponse:
        options = build_options(request)
        prepared = await self.backend.build_prepare(body_chunks(request), options)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        try:
            response = web.StreamResponse(status=200,
                                          headers={"Content-Type": "application/json"})
            await response.prepare(request)
        except BaseException:
            self.backend.build_discard(prepared)
            raise

        async def run() -> None:
            try:
                await self.backend.build_run(prepared, queue.put_nowait)
            except SiloboxError as e:
                detail: dict[str, Any] = {"message": e.message}
                if getattr(e, "code", None) is not None:
                    detail["code"] = e.code   # type: ignore[attr-defined]
                queue.put_nowait({"errorDetail": detail, "error": e.message})
            except Exception as e:   # reported in the stream: the 200 is already out
                log.exception("build failed")
                message = f"build failed: {e}"
                queue.put_nowait({"errorDetail": {"message": message}, "error": message})

        task = asyncio.ensure_future(run())
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (doc := await queue.get()) is not None:
                await response.write((json.dumps(doc, separators=(",", ":")) + "\r\n").encode())
            await task
        except BaseException:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        await response.write_eof()
        return response

    async def prune(self, request: web.Request) -> web.Response:
        query = Query(request)
        return json_response(await self.backend.build_prune(query.filters(),
                                                            all=query.flag("all")))
