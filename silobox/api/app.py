"""The Docker Engine API application: routes from the routers, and three middlewares.

* version: an optional ``/v1.NN`` prefix selects the API version; versions outside
  [MIN_API_VERSION, API_VERSION] get Docker's 400. Routes are registered with and without the
  prefix (moby's ``versionMatcher``), so handlers never see it.
* errors: every exception becomes Docker's ``{"message": ...}`` with its status (``errors.py``).
* logging: one debug line per request with status and duration.

Every response carries ``Server``, ``API-Version``, ``OSType`` and ``Docker-Experimental``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from aiohttp import web

from silobox import API_VERSION, MIN_API_VERSION, __version__
from silobox.api.backend import Backend
from silobox.api.errors import response_for
from silobox.api.routers import API_VERSION_KEY, Handler, with_version_prefix
from silobox.api.routers.build import BuildRouter
from silobox.api.routers.compute import ComputeRouter
from silobox.api.routers.containers import ContainerRouter
from silobox.api.routers.distribution import DistributionRouter
from silobox.api.routers.exec import ExecRouter
from silobox.api.routers.images import ImageRouter
from silobox.api.routers.networks import NetworkRouter
from silobox.api.routers.swarm import SwarmRouter
from silobox.api.routers.system import SystemRouter
from silobox.api.routers.sandbox import SandboxRouter
from silobox.api.routers.volumes import VolumeRouter
from silobox.api.streams import HIJACKED_KEY
from silobox.errors import InvalidArgument

log = logging.getLogger("silobox.api")

SERVER_HEADER = f"silobox/{__version__}"
CLIENT_MAX_SIZE = 16 * 1024 * 1024
"""Largest request body read into memory (create and exec documents are a few KiB)."""

_VERSION_PREFIX_RE = re.compile(r"^/v([0-9.]+)(?=/|$)")


def parse_api_version(text: str) -> tuple[int, ...]:
    """``"1.41"`` → ``(1, 41)``; trailing zero components are dropped so 1.41.0 equals 1.41."""
    parts = text.split(".")
    if not text or not all(part.isdigit() and part.isascii() for part in parts):
        raise InvalidArgument(f"invalid API version {text!r}")
    numbers = [int(part) for part in parts]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


SERVER_API_VERSION = parse_api_version(API_VERSION)
MIN_API = parse_api_version(MIN_API_VERSION)


def check_api_version(text: str) -> tuple[int, ...]:
    """The client's version if this server speaks it; Docker's 400 messages otherwise."""
    version = parse_api_version(text)
    if version < MIN_API:
        raise InvalidArgument(
            f"client version {text} is too old. Minimum supported API version is "
            f"{MIN_API_VERSION}, please upgrade your client to a newer version")
    if version > SERVER_API_VERSION:
        raise InvalidArgument(
            f"client version {text} is too new. Maximum supported API version is {API_VERSION}")
    return version


def requested_api_version(path: str) -> tuple[int, ...]:
    """The API version a request path asks for; no prefix means the server's own."""
    match = _VERSION_PREFIX_RE.match(path)
    if match is None:
        return SERVER_API_VERSION
    return check_api_version(match.group(1))


@web.middleware
async def _log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status: int | str = "-"
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = "cancelled"
        raise
    finally:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s %.1fms", request.method, request.path_qs, status,
                      (time.monotonic() - started) * 1000)


@web.middleware
async def _map_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        response = response_for(exc, request)
        if not request.get(HIJACKED_KEY):
            await _drain_refused_body(request)
    if request.get(HIJACKED_KEY):
        # The connection's bytes no longer belong to HTTP: never reuse it.
        response.force_close()
    return response


DRAIN_LIMIT = 1 << 20


async def _drain_refused_body(request: web.Request) -> None:
    """Read and drop what is left of a refused request's small body, so that a client still
    sending it gets the answer instead of a reset connection (a broken pipe on its side). A
    large or slow rest is left: the connection is closed instead, as Go's server does."""
    if not request.body_exists or request.content.at_eof():
        return
    if request.content_length is not None and request.content_length > DRAIN_LIMIT:
        return
    left = DRAIN_LIMIT
    try:
        while left > 0:
            chunk = await asyncio.wait_for(request.content.read(min(65536, left)), 2)
            if not chunk:
                return
            left -= len(chunk)
    except (asyncio.TimeoutError, ConnectionError, web.HTTPException):
        return
    except Exception as e:   # the payload reader's own errors: nothing more to save
        log.debug("not draining a refused body: %s", e)


@web.middleware
async def _api_version(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[API_VERSION_KEY] = requested_api_version(request.path)
    return await handler(request)


async def _standard_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers["Server"] = SERVER_HEADER
    headers["API-Version"] = API_VERSION
    headers["OSType"] = "linux"
    headers["Docker-Experimental"] = "false"


async def _options(request: web.Request) -> web.Response:
    """CORS pre-flight and probing clients: any OPTIONS request succeeds, as in moby."""
    return web.Response(status=200)


def create_app(backend: Backend) -> web.Application:
    """The aiohttp application serving the Docker Engine API over ``backend``."""
    app = web.Application(middlewares=[_log_requests, _map_errors, _api_version],
                          client_max_size=CLIENT_MAX_SIZE)
    app.on_response_prepare.append(_standard_headers)
    routers = (SystemRouter(backend), ContainerRouter(backend), ExecRouter(backend),
               ImageRouter(backend), ComputeRouter(backend), NetworkRouter(backend))
    routers += (VolumeRouter(backend), SandboxRouter(backend))
    routers += (DistributionRouter(backend), BuildRouter(backend))  # type: ignore[arg-type]
    routers += (SwarmRouter(),)  # type: ignore[assignment]
    routes = [route for router in routers for route in router.routes()]
    for method, path, handler in with_version_prefix(routes):
        app.router.add_route(method, path, handler)
    app.router.add_route("OPTIONS", "/{path:.*}", _options)
    return app
