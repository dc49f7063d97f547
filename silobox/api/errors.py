"""The one place where silobox errors become HTTP statuses (moby's ``httpstatus.FromError``).

Every response that reports a failure has Docker's shape, ``{"message": "..."}``, except 304,
which has no body. Routers raise ``silobox.errors`` classes and never pick a status themselves.
"""

from __future__ import annotations

import errno
import json
import logging
import os

from aiohttp import web

from silobox import errors

log = logging.getLogger("silobox.api")

# Order matters: NotRunning is a Conflict, so subclasses come before their bases.
_STATUS: tuple[tuple[type[errors.SiloboxError], int], ...] = (
    (errors.NotFound, 404),
    (errors.AlreadyExists, 409),
    (errors.InvalidArgument, 400),
    (errors.NotRunning, 409),
    (errors.Conflict, 409),
    (errors.NotModified, 304),
    (errors.Unauthorized, 401),
    (errors.Unavailable, 503),
    (errors.InsufficientStorage, 413),
    (errors.SystemFailure, 500),
)

PAGE_NOT_FOUND = "page not found"


def status_for(exc: BaseException) -> int:
    """HTTP status of an exception: its silobox class decides, anything else is a 500."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, message: str) -> web.Response:
    """Docker's error document; 304 carries no body at all."""
    if status == 304:
        return web.Response(status=304)
    body = (json.dumps({"message": message}, ensure_ascii=False) + "\n").encode()
    return web.Response(status=status, body=body, content_type="application/json")


def response_for(exc: BaseException, request: web.BaseRequest | None = None) -> web.Response:
    """Map any exception raised by a handler to the response Docker would send.

    aiohttp's own 404/405 (no route, wrong method) become Docker's ``page not found``; other
    aiohttp HTTP errors keep their status. Unexpected exceptions are logged with a traceback
    because they are bugs, not user errors.
    """
    full = errors.out_of_space(exc) if status_for(exc) >= 500 else None
    if full is not None:
        # The disk filled up under the request: it failed cleanly, nothing of ours broke.
        message = exc.message if isinstance(exc, errors.SiloboxError) else str(exc)
        log.warning("%s %s: %s", _method(request), _path(request), message)
        return error_response(413, message or os.strerror(errno.ENOSPC))
    if isinstance(exc, errors.SiloboxError):
        status = status_for(exc)
        if status >= 500:
            log.error("%s %s failed: %s", _method(request), _path(request), exc,
                      exc_info=exc.cause or exc)
        return error_response(status, exc.message or type(exc).__name__)
    if isinstance(exc, (web.HTTPNotFound, web.HTTPMethodNotAllowed)):
        return error_response(404, PAGE_NOT_FOUND)
    if isinstance(exc, web.HTTPException):
        message = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else exc.reason
        return error_response(exc.status, message)
    log.error("%s %s failed with an unexpected error", _method(request), _path(request),
              exc_info=exc)
    return error_response(500, str(exc) or type(exc).__name__)


def _method(request: web.BaseRequest | None) -> str:
    return request.method if request is not None else "-"


def _path(request: web.BaseRequest | None) -> str:
    return request.path_qs if request is not None else "-"
