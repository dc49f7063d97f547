"""Container routes (moby's ``router/container``): lifecycle, inspection, logs, stats, attach."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from inspect import isawaitable
from typing import Any, AsyncIterator

from aiohttp import web

from silobox.api import streams
from silobox.api.backend import ContainerBackend
from silobox.api.routers import (Query, Route, api_version, check_fields, complete,
                                 json_response, no_content, parse_tail, read_json_object,
                                 version_at_least)
from silobox.errors import InvalidArgument, NotFound, SiloboxError

log = logging.getLogger("silobox.api")

_NAME_RE = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_PLATFORM_RE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,2}")
WAIT_CONDITIONS = ("not-running", "next-exit", "removed")

# --- the create body's types (swagger: ContainerConfig + HostConfig + NetworkingConfig) -------

_STRS = ["str"]
_STR_MAP = {"*": "str"}
_THROTTLE = [{"Path": "str", "Rate": "int"}]
_HOST_CONFIG = {
    "CpuShares": "int", "Memory": "int", "CgroupParent": "str", "BlkioWeight": "int",
    "BlkioWeightDevice": [{"Path": "str", "Weight": "int"}],
    "BlkioDeviceReadBps": _THROTTLE, "BlkioDeviceWriteBps": _THROTTLE,
    "BlkioDeviceReadIOps": _THROTTLE, "BlkioDeviceWriteIOps": _THROTTLE,
    "CpuPeriod": "int", "CpuQuota": "int", "CpuRealtimePeriod": "int",
    "CpuRealtimeRuntime": "int", "CpusetCpus": "str", "CpusetMems": "str",
    "Devices": [{"PathOnHost": "str", "PathInContainer": "str", "CgroupPermissions": "str"}],
    "DeviceCgroupRules": _STRS,
    "DeviceRequests": [{"Driver": "str", "Count": "int", "DeviceIDs": _STRS,
                        "Capabilities": [_STRS], "Options": _STR_MAP}],
    "MemoryReservation": "int", "MemorySwap": "int", "MemorySwappiness": "int",
    "NanoCpus": "int", "OomKillDisable": "bool", "Init": "bool", "PidsLimit": "int",
    "Ulimits": [{"Name": "str", "Soft": "int", "Hard": "int"}],
    "CpuCount": "int", "CpuPercent": "int", "IOMaximumIOps": "int", "IOMaximumBandwidth": "int",
    "Binds": _STRS, "ContainerIDFile": "str",
    "LogConfig": {"Type": "str", "Config": _STR_MAP},
    "NetworkMode": "str",
    "PortBindings": {"*": [{"HostIp": "str", "HostPort": "str"}]},
    "RestartPolicy": {"Name": "str", "MaximumRetryCount": "int"},
    "AutoRemove": "bool", "VolumeDriver": "str", "VolumesFrom": _STRS,
    "Mounts": [{"Target": "str", "Source": "str", "Type": "str", "ReadOnly": "bool",
                "Consistency": "str",
                "BindOptions": {"Propagation": "str", "NonRecursive": "bool",
                                "CreateMountpoint": "bool", "ReadOnlyNonRecursive": "bool",
                                "ReadOnlyForceRecursive": "bool"},
                "VolumeOptions": {"NoCopy": "bool", "Labels": _STR_MAP, "Subpath": "str",
                                  "DriverConfig": {"Name": "str", "Options": _STR_MAP}},
                "ImageOptions": {"Subpath": "str"},
                "TmpfsOptions": {"SizeBytes": "int", "Mode": "int", "Options": [_STRS]}}],
    "ConsoleSize": ["int"], "Annotations": _STR_MAP, "CapAdd": _STRS, "CapDrop": _STRS,
    "CgroupnsMode": "str", "Dns": _STRS, "DnsOptions": _STRS, "DnsSearch": _STRS,
    "ExtraHosts": _STRS, "GroupAdd": _STRS, "IpcMode": "str", "Cgroup": "str", "Links": _STRS,
    "OomScoreAdj": "int", "PidMode": "str", "Privileged": "bool", "PublishAllPorts": "bool",
    "ReadonlyRootfs": "bool", "SecurityOpt": _STRS, "StorageOpt": _STR_MAP, "Tmpfs": _STR_MAP,
    "UTSMode": "str", "UsernsMode": "str", "ShmSize": "int", "Sysctls": _STR_MAP,
    "Runtime": "str", "Isolation": "str", "MaskedPaths": _STRS, "ReadonlyPaths": _STRS,
}
ENDPOINT_SETTINGS = {
    "IPAMConfig": {"IPv4Address": "str", "IPv6Address": "str", "LinkLocalIPs": _STRS},
    "Links": _STRS, "MacAddress": "str", "Aliases": _STRS, "DriverOpts": _STR_MAP,
    "GwPriority": "int", "NetworkID": "str", "EndpointID": "str", "Gateway": "str",
    "IPAddress": "str", "IPPrefixLen": "int", "IPv6Gateway": "str", "GlobalIPv6Address": "str",
    "GlobalIPv6PrefixLen": "int", "DNSNames": _STRS,
}
UPDATE_BODY = {key: _HOST_CONFIG[key] for key in (
    "CpuShares", "Memory", "CgroupParent", "BlkioWeight", "BlkioWeightDevice",
    "BlkioDeviceReadBps", "BlkioDeviceWriteBps", "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps", "CpuPeriod", "CpuQuota", "CpuRealtimePeriod",
    "CpuRealtimeRuntime", "CpusetCpus", "CpusetMems", "Devices", "DeviceCgroupRules",
    "DeviceRequests", "MemoryReservation", "MemorySwap", "MemorySwappiness", "NanoCpus",
    "OomKillDisable", "Init", "PidsLimit", "Ulimits", "CpuCount", "CpuPercent",
    "IOMaximumIOps", "IOMaximumBandwidth", "RestartPolicy")}
"""``POST /containers/{id}/update`` (swagger: Resources + RestartPolicy)."""
CONFIG_BODY: dict[str, Any] = {}
"""A container config without host or network parts (the body of ``POST /commit``)."""
CREATE_BODY = {
    "Hostname": "str", "Domainname": "str", "User": "str", "AttachStdin": "bool",
    "AttachStdout": "bool", "AttachStderr": "bool", "ExposedPorts": {"*": "object"},
    "Tty": "bool", "OpenStdin": "bool", "StdinOnce": "bool", "Env": _STRS, "Cmd": "strslice",
    "Healthcheck": {"Test": _STRS, "Interval": "int", "Timeout": "int", "Retries": "int",
                    "StartPeriod": "int", "StartInterval": "int"},
    "ArgsEscaped": "bool", "Image": "str", "Volumes": {"*": "object"}, "WorkingDir": "str",
    "Entrypoint": "strslice", "NetworkDisabled": "bool", "MacAddress": "str",
    "OnBuild": _STRS, "Labels": _STR_MAP, "StopSignal": "str", "StopTimeout": "int",
    "Shell": "strslice",
    "HostConfig": _HOST_CONFIG,
    "NetworkingConfig": {"EndpointsConfig": {"*": ENDPOINT_SETTINGS}},
}
CONFIG_BODY.update((k, v) for k, v in CREATE_BODY.items()
                   if k not in ("HostConfig", "NetworkingConfig"))


def validate_container_name(name: str) -> None:
    """Docker's container name rule, checked before the backend sees the name."""
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")


def validate_platform(platform: str) -> None:
    """``os[/arch[/variant]]``, as the platform query parameter is written."""
    if not _PLATFORM_RE.fullmatch(platform):
        raise InvalidArgument(
            f"invalid platform {platform!r}: expected os[/arch[/variant]], e.g. linux/amd64")


def validate_wait_condition(raw: str | None) -> str:
    if not raw:
        return "not-running"
    if raw not in WAIT_CONDITIONS:
        raise InvalidArgument(f"invalid condition: {raw!r}")
    return raw


_BUILTIN_NETWORKS = frozenset({"nat", "bridge", "default", "host", "none"})
"""Network names that are not user-defined (``nat`` is the default network's own name)."""


class ContainerRouter:
    def __init__(self, backend: ContainerBackend) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [
            ("POST", "/containers/create", self.create),
            ("GET", "/containers/json", self.list_containers),
            ("GET", "/containers/{id}/json", self.inspect),
            ("GET", "/containers/{id}/top", self.top),
            ("GET", "/containers/{id}/logs", self.logs),
            ("GET", "/containers/{id}/stats", self.stats),
            ("POST", "/containers/{id}/start", self.start),
            ("POST", "/containers/{id}/stop", self.stop),
            ("POST", "/containers/{id}/restart", self.restart),
            ("POST", "/containers/{id}/kill", self.kill),
            ("POST", "/containers/{id}/wait", self.wait),
            ("POST", "/containers/{id}/pause", self.pause),
            ("POST", "/containers/{id}/unpause", self.unpause),
            ("POST", "/containers/{id}/rename", self.rename),
            ("POST", "/containers/{id}/update", self.update),
            ("POST", "/containers/prune", self.prune),
            ("POST", "/containers/{id}/resize", self.resize),
            ("POST", "/containers/{id}/attach", self.attach),
            ("DELETE", "/containers/{id}", self.remove),
            ("DELETE", "/containers/{id}/{alias}", self.remove_link),
        ]

    # --- create, list, inspect ---------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        query = Query(request)
        name = query.text("name") or None
        if name is not None:
            validate_container_name(name)
        platform = query.text("platform") or None
        if platform is not None and version_at_least(request, (1, 41)):
            validate_platform(platform)
        else:
            platform = None
        body = await read_json_object(request, required=True)
        check_fields(body, CREATE_BODY)
        if platform is None:
            result = await complete(self.backend.container_create(name, body))
        else:
            result = await complete(self.backend.container_create(name, body,
                                                                   platform=platform))
        return json_response(result, status=201)

    async def list_containers(self, request: web.Request) -> web.Response:
        query = Query(request)
        limit = query.integer("limit")
        containers = await self.backend.container_list(
            all=query.flag("all"),
            limit=limit if limit is not None and limit > 0 else -1,
            size=query.flag("size"),
            filters=query.filters(),
        )
        return json_response(containers)

    async def inspect(self, request: web.Request) -> web.Response:
        doc = await self.backend.container_inspect(_ref(request), size=Query(request).flag("size"))
        if not version_at_least(request, (1, 45)):
            # Before 1.45 a user-defined network's Aliases also carry the short id (moby);
            # the document may share its dicts with the container's state: copies are changed
            settings = dict(doc.get("NetworkSettings") or {})
            networks = dict(settings.get("Networks") or {})
            for name, ep in networks.items():
                if name not in _BUILTIN_NETWORKS and isinstance(ep, dict):
                    networks[name] = {**ep, "Aliases": list(dict.fromkeys(
                        [*(ep.get("Aliases") or []), doc["Id"][:12]]))}
            doc = {**doc, "NetworkSettings": {**settings, "Networks": networks}}
        return json_response(doc)

    async def top(self, request: web.Request) -> web.Response:
        ps_args = Query(request).text("ps_args") or None
        return json_response(await self.backend.container_top(_ref(request), ps_args))

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, request: web.Request) -> web.Response:
        # A start body (HostConfig) was removed in API 1.24; an empty "{}" or "null" is tolerated.
        length = request.content_length
        if (length is not None and length > 7) or (length is None and request.body_exists):
            raise InvalidArgument("starting container with non-empty request body was "
                                  "deprecated since API v1.22 and removed in v1.24")
        await complete(self.backend.container_start(_ref(request)))
        return no_content()

    async def stop(self, request: web.Request) -> web.Response:
        timeout, signal = _stop_options(request)
        await complete(self.backend.container_stop(_ref(request), timeout=timeout, signal=signal))
        return no_content()

    async def restart(self, request: web.Request) -> web.Response:
        timeout, signal = _stop_options(request)
        await complete(
            self.backend.container_restart(_ref(request), timeout=timeout, signal=signal))
        return no_content()

    async def kill(self, request: web.Request) -> web.Response:
        signal = Query(request).text("signal") or "SIGKILL"
        await complete(self.backend.container_kill(_ref(request), signal))
        return no_content()

    async def pause(self, request: web.Request) -> web.Response:
        await complete(self.backend.container_pause(_ref(request)))
        return no_content()

    async def unpause(self, request: web.Request) -> web.Response:
        await complete(self.backend.container_unpause(_ref(request)))
        return no_content()

    async def rename(self, request: web.Request) -> web.Response:
        new_name = Query(request).text("name") or ""
        if not new_name:
            raise InvalidArgument("Neither old nor new names may be empty")
        validate_container_name(new_name)
        await complete(self.backend.container_rename(_ref(request), new_name))
        return no_content()

    async def update(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, required=True)
        check_fields(body, UPDATE_BODY)
        return json_response(await complete(self.backend.container_update(_ref(request), body)))

    async def prune(self, request: web.Request) -> web.Response:
        filters = Query(request).filters()
        return json_response(await complete(self.backend.container_prune(filters)))

    async def remove(self, request: web.Request) -> web.Response:
        query = Query(request)
        if query.flag("link"):   # ?link=1 names a legacy link, parent/alias
            await complete(self.backend.container_remove_link(_ref(request)))
            return no_content()
        force, volumes = query.flag("force"), query.flag("v")
        await complete(self.backend.container_remove(_ref(request), force=force, volumes=volumes))
        return no_content()

    async def remove_link(self, request: web.Request) -> web.Response:
        """``DELETE /containers/parent/alias?link=1``: a legacy link's name has a slash."""
        if not Query(request).flag("link"):
            raise NotFound(f"No such container: {request.match_info['id']}/"
                           f"{request.match_info['alias']}")
        name = f"{request.match_info['id']}/{request.match_info['alias']}"
        await complete(self.backend.container_remove_link(name))
        return no_content()

    async def resize(self, request: web.Request) -> web.Response:
        query = Query(request)
        height, width = query.uint32("h"), query.uint32("w")
        await complete(self.backend.container_resize(_ref(request), height, width))
        return web.Response(status=200)

    async def wait(self, request: web.Request) -> web.StreamResponse:
        """Status line at once, body when the condition is met.

        ``docker run`` relies on the headers arriving before the container is started. The
        backend gets one loop turn first, so a bad reference still gets its 404.
        """
        condition = validate_wait_condition(Query(request).text("condition"))
        waiting = asyncio.ensure_future(self.backend.container_wait(_ref(request), condition))
        try:
            await asyncio.sleep(0)
            if waiting.done():
                return json_response(waiting.result())
            response = web.StreamResponse(status=200)
            response.content_type = "application/json"
            await response.prepare(request)
            try:
                result = await waiting
            except SiloboxError as exc:
                result = {"StatusCode": -1, "Error": {"Message": exc.message}}
            except Exception as exc:
                log.error("waiting for %s failed", _ref(request), exc_info=exc)
                result = {"StatusCode": -1, "Error": {"Message": str(exc) or type(exc).__name__}}
            with contextlib.suppress(*streams.CLIENT_GONE):
                await response.write(_json_line(result))
                await response.write_eof()
            return response
        finally:
            if not waiting.done():
                waiting.cancel()

    # --- streams -------------------------------------------------------------------------------

    async def logs(self, request: web.Request) -> web.StreamResponse:
        query = Query(request)
        stdout, stderr = query.flag("stdout"), query.flag("stderr")
        if not (stdout or stderr):
            raise InvalidArgument("must specify at least one of 'stdout' or 'stderr'")
        options = dict(stdout=stdout, stderr=stderr, follow=query.flag("follow"),
                       since=query.timestamp("since"), until=query.timestamp("until"),
                       timestamps=query.flag("timestamps"), tail=parse_tail(query.text("tail")))
        tty, chunks = await self.backend.container_logs(_ref(request), **options)
        response = web.StreamResponse(status=200)
        response.content_type = streams.stream_media_type(tty, api_version(request))
        try:
            await response.prepare(request)
            try:
                async for stream, data in chunks:
                    if data:
                        await response.write(data if tty else streams.frame(stream, data))
            except streams.CLIENT_GONE:
                return response
            except Exception as exc:
                message = exc.message if isinstance(exc, SiloboxError) else str(exc)
                if not isinstance(exc, SiloboxError):
                    log.error("logs of %s failed", _ref(request), exc_info=exc)
                await streams.report_in_band(response, tty, message)
            with contextlib.suppress(*streams.CLIENT_GONE):
                await response.write_eof()
            return response
        finally:
            await _aclose(chunks)

    async def stats(self, request: web.Request) -> web.StreamResponse:
        query = Query(request)
        stream = query.flag("stream", default=True)
        one_shot = query.flag("one-shot") if version_at_least(request, (1, 41)) else False
        if stream and one_shot:
            raise InvalidArgument("cannot have stream=true and one-shot=true")
        samples = self.backend.container_stats(_ref(request), stream=stream, one_shot=one_shot)
        if isawaitable(samples):
            samples = await samples
        iterator: AsyncIterator[dict[str, Any]] = aiter(samples)
        try:
            # The first sample comes before the status line, so a bad reference is a 404.
            try:
                first = await anext(iterator)
            except StopAsyncIteration:
                first = None
            if not stream:
                return json_response(first if first is not None else {})
            response = web.StreamResponse(status=200)
            response.content_type = "application/json"
            await response.prepare(request)
            try:
                if first is not None:
                    await response.write(_json_line(first))
                    async for sample in iterator:
                        await response.write(_json_line(sample))
                await response.write_eof()
            except streams.CLIENT_GONE:
                pass
            except Exception as exc:
                # Mid-stream failure (the container went away): end the stream; nothing else
                # can be said once the status line is out.
                level = logging.DEBUG if isinstance(exc, SiloboxError) else logging.ERROR
                log.log(level, "stats of %s ended: %s", _ref(request), exc,
                        exc_info=None if level == logging.DEBUG else exc)
                with contextlib.suppress(*streams.CLIENT_GONE):
                    await response.write_eof()
            return response
        finally:
            await _aclose(iterator)

    async def attach(self, request: web.Request) -> web.StreamResponse:
        query = Query(request)
        detach_keys = streams.parse_detach_keys(query.text("detachKeys"))
        flags = {name: query.flag(name) for name in ("stdin", "stdout", "stderr", "logs", "stream")}
        hijack = streams.Hijack(request)
        session = await self.backend.container_attach(_ref(request), **flags)
        return await hijack.run(session, detach_keys=detach_keys,
                                api_version=api_version(request))


def _ref(request: web.Request) -> str:
    return request.match_info["id"]


def _stop_options(request: web.Request) -> tuple[int | None, str | None]:
    """``t`` (seconds, -1 waits forever) and, from API 1.42, ``signal``."""
    query = Query(request)
    timeout = query.integer("t")
    signal = query.text("signal") or None if version_at_least(request, (1, 42)) else None
    return timeout, signal


def _json_line(doc: Any) -> bytes:
    return (json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


async def _aclose(iterator: Any) -> None:
    """Release an async generator's resources (log readers, stats samplers) early."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
