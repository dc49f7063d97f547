"""Exec routes: create a process in a running container, start it (hijacked), inspect, resize."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from silobox.api import streams
from silobox.api.backend import ContainerBackend
from silobox.api.routers import (Query, Route, api_version, check_fields, complete,
                                 json_response, read_json_object, version_at_least)
from silobox.errors import InvalidArgument, SiloboxError

log = logging.getLogger("silobox.api")

CONSOLE_SIZE_SINCE = (1, 42)

EXEC_CREATE_BODY = {
    "AttachStdin": "bool", "AttachStdout": "bool", "AttachStderr": "bool",
    "ConsoleSize": ["int"], "DetachKeys": "str", "Tty": "bool", "Env": ["str"], "Cmd": ["str"],
    "Privileged": "bool", "User": "str", "WorkingDir": "str",
}
EXEC_START_BODY = {"Detach": "bool", "Tty": "bool", "ConsoleSize": ["int"]}
EXEC_RUN_BODY = {**EXEC_CREATE_BODY, "Detach": "bool"}


def validate_console_size(value: Any) -> tuple[int, int] | None:
    """``ConsoleSize`` is null or ``[height, width]`` of non-negative integers."""
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value)):
        raise InvalidArgument(
            f"invalid JSON: 'ConsoleSize' must be [height, width], not {value!r}")
    return value[0], value[1]


def go_field_names(body: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys under their canonical names, matched without case as Go's encoding/json
    does (docker-py sends ``detachKeys`` from the client's config file)."""
    canonical = {name.lower(): name for name in spec}
    out: dict[str, Any] = {}
    for key, value in body.items():
        name = key if key in spec else canonical.get(key.lower(), key)
        if name not in out or name == key:
            out[name] = value
    return out


def validate_exec_create(body: dict[str, Any]) -> None:
    check_fields(body, EXEC_CREATE_BODY)
    if not body.get("Cmd"):
        raise InvalidArgument("No exec command specified")
    validate_console_size(body.get("ConsoleSize"))
    if body.get("DetachKeys"):
        streams.parse_detach_keys(body["DetachKeys"])


class ExecRouter:
    def __init__(self, backend: ContainerBackend) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [
            ("POST", "/containers/{id}/exec", self.create),
            ("POST", "/exec/{id}/start", self.start),
            ("POST", "/exec/{id}/resize", self.resize),
            ("GET", "/exec/{id}/json", self.inspect),
        ]

    async def create(self, request: web.Request) -> web.StreamResponse:
        run = Query(request).flag("start")
        body = go_field_names(await read_json_object(request, required=False),
                              EXEC_RUN_BODY if run else EXEC_CREATE_BODY)
        detach = False
        if run:
            check_fields(body, EXEC_RUN_BODY)
            detach = bool(body.pop("Detach", False))
        validate_exec_create(body)
        if not version_at_least(request, CONSOLE_SIZE_SINCE):
            body = {**body, "ConsoleSize": None}
        if run and not detach:
            return await self._run_attached(request, body)
        result = await complete(self.backend.exec_create(request.match_info["id"], body))
        if run:
            await complete(self.backend.exec_start(result["Id"], detach=True,
                                                   tty=bool(body.get("Tty"))))
            response = json_response(result, status=201)
            response.headers["X-Silobox-Exec-Id"] = result["Id"]   # started, not only created
            return response
        return json_response(result, status=201)

    async def _run_attached(self, request: web.Request, body: dict[str, Any]
                            ) -> web.StreamResponse:
        """silobox's exec in one request (``?start=1``, what ``silo exec`` sends): create,
        start and hijack, output framed even with a tty, the exit status as the last frame
        (``streams.MEDIA_EXEC_RUN``). Errors before the stream are ordinary 4xx answers; the
        exec's id is in the ``X-Silobox-Exec-Id`` header (for resizes)."""
        hijack = streams.Hijack(request)
        result = await complete(self.backend.exec_create(request.match_info["id"], body))
        exec_id = result["Id"]
        session = await self.backend.exec_start(exec_id, detach=False,
                                                tty=bool(body.get("Tty")))
        if session is None:
            return web.Response(status=200)

        async def exit_status() -> bytes | None:
            info = await self.backend.exec_inspect(exec_id)
            if info.get("Running") or info.get("ExitCode") is None:
                return None
            return streams.frame(streams.EXIT_STATUS, json.dumps(
                {"Id": exec_id, "ExitCode": info["ExitCode"]}).encode())

        try:
            keys = streams.parse_detach_keys(body.get("DetachKeys") or None)
        except InvalidArgument:
            keys = streams.DEFAULT_DETACH_KEYS
        return await hijack.run(session, detach_keys=keys, api_version=api_version(request),
                                trailer=exit_status, headers={"X-Silobox-Exec-Id": exec_id})

    async def start(self, request: web.Request) -> web.StreamResponse:
        body = await read_json_object(request, required=False)
        check_fields(body, EXEC_START_BODY)
        exec_id = request.match_info["id"]
        detach = bool(body.get("Detach"))
        tty = body.get("Tty")
        console = validate_console_size(body.get("ConsoleSize"))
        if not tty or not version_at_least(request, CONSOLE_SIZE_SINCE):
            console = None
        if detach:
            await complete(self.backend.exec_start(exec_id, detach=True, tty=tty))
            await self._set_console_size(exec_id, console)
            return web.Response(status=200)
        hijack = streams.Hijack(request)
        # Inspect first: an unknown exec is a 404 before the stream starts, and its DetachKeys
        # are the ones to watch for.
        info = await self.backend.exec_inspect(exec_id)
        session = await self.backend.exec_start(exec_id, detach=False, tty=tty)
        if session is None:
            return web.Response(status=200)
        await self._set_console_size(exec_id, console)
        return await hijack.run(session, detach_keys=_detach_keys(info),
                                api_version=api_version(request))

    async def inspect(self, request: web.Request) -> web.Response:
        return json_response(await self.backend.exec_inspect(request.match_info["id"]))

    async def resize(self, request: web.Request) -> web.Response:
        query = Query(request)
        height, width = query.uint32("h"), query.uint32("w")
        await complete(self.backend.exec_resize(request.match_info["id"], height, width))
        return web.Response(status=200)

    async def _set_console_size(self, exec_id: str, console: tuple[int, int] | None) -> None:
        """Apply the start body's ConsoleSize; a failure must not fail the exec itself."""
        if console is None or console == (0, 0):
            return
        try:
            await self.backend.exec_resize(exec_id, *console)
        except SiloboxError as exc:
            log.debug("exec %s: initial console size not applied: %s", exec_id, exc)


def _detach_keys(info: dict[str, Any]) -> bytes:
    try:
        return streams.parse_detach_keys(info.get("DetachKeys") or None)
    except InvalidArgument:
        return streams.DEFAULT_DETACH_KEYS
