"""Serving the API on silod's unix socket.

The socket appears atomically with its final mode: it is bound under a temporary name,
chmod-ed to 0660, and renamed over the real path, so a client never sees a socket it cannot
use or that refuses connections, and a stale socket left by a crashed daemon is replaced in the
same step. A live daemon already listening on the path is never displaced.

Connections are served by aiohttp with two adjustments that hijacked streams (attach, exec)
need, see ``_RequestHandler``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
from typing import Any

from aiohttp import web
from aiohttp.http_parser import HttpRequestParserPy
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestHandler, RequestPayloadError

from silobox.api.errors import error_response
from silobox.api.streams import StdinFeed
from silobox.errors import AlreadyExists, InvalidArgument, SystemFailure

log = logging.getLogger("silobox.api")

SOCKET_MODE = 0o660
SHUTDOWN_GRACE = 5.0
"""Seconds in-flight requests get to finish at shutdown before they are cancelled."""
_SUN_PATH_MAX = 107


class _RequestHandler(RequestHandler):
    """aiohttp's connection protocol, fitted for Docker's hijacked connections.

    * It parses requests with aiohttp's pure-Python parser, which treats ``Upgrade: tcp`` as a
      protocol switch and keeps the bytes that follow the request for the stream. The C parser
      only switches for websockets and drops or misparses stdin bytes a client sends in the same
      packet as its attach request.
    * A client's half-close (EOF while it still reads) on a hijacked connection means "stdin
      ended", not "client gone": the transport stays open for the process's remaining output.
    """

    __slots__ = ("peer_eof",)

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop,
                 **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self.peer_eof = False
        self._parser = HttpRequestParserPy(
            self, loop, self._read_bufsize,
            max_line_size=self.max_line_size,
            max_field_size=self.max_field_size,
            max_headers=self.max_headers,
            payload_exception=RequestPayloadError,
            auto_decompress=kwargs.get("auto_decompress", True),
            max_msg_queue_size=MAX_MSG_QUEUE_SIZE,
        )

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp cannot parse (a request line or header beyond its limits, broken
        framing) gets Docker's ``{"message"}`` document like every other error, not a text
        page; the connection is closed after it, as aiohttp does."""
        plain = super().handle_error(request, status, exc, message)   # logs; raises if sent
        if status >= 500:
            text = "internal server error"
        else:
            text = message or (str(exc) if exc is not None else "") or plain.reason
            if len(text) > 200:
                text = text[:200] + "..."
        response = error_response(status, text)
        response.force_close()
        return response

    def eof_received(self) -> bool | None:
        parser = self._payload_parser
        if isinstance(parser, StdinFeed):
            parser.feed_eof()
            return True
        if self._upgraded:
            # A hijack was requested but the route has not taken the connection yet.
            self.peer_eof = True
            return True
        # Ordinary request: EOF means the client is gone (as in Go's net/http).
        return super().eof_received()


class _Server(web.Server):
    """aiohttp's low-level server creating our connection protocol."""

    def __call__(self) -> RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    """AppRunner that remembers the socket it owns, to remove exactly that file at shutdown."""

    __slots__ = ("socket_path", "socket_identity")

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        return server


async def serve(app: web.Application, socket_path: str) -> web.AppRunner:
    """Start serving ``app`` on a unix socket at ``socket_path``; returns the runner to stop it."""
    runner = _Runner(app, access_log=None, handler_cancellation=True,
                     shutdown_timeout=SHUTDOWN_GRACE)
    runner.socket_path = socket_path
    runner.socket_identity = None
    await runner.setup()
    try:
        sock = _bind_unix_socket(socket_path)
        st = os.stat(socket_path)
        runner.socket_identity = (st.st_dev, st.st_ino)
        site = web.SockSite(runner, sock)
        await site.start()
    except BaseException:
        await runner.cleanup()
        _remove_own_socket(runner)
        raise
    log.info("API listening on %s", socket_path)
    return runner


async def shutdown(runner: web.AppRunner) -> None:
    """Stop accepting, give in-flight requests a short grace, close all, remove our socket file."""
    try:
        await runner.cleanup()
    finally:
        _remove_own_socket(runner)


def _bind_unix_socket(path: str) -> socket.socket:
    """A listening socket at ``path``, created atomically with mode 0660."""
    path = os.path.abspath(path)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise InvalidArgument(f"socket path {path} is longer than {_SUN_PATH_MAX} bytes",
                              operation="api::serve", object_id=path)
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    _check_replaceable(path)
    temp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}")
    if len(os.fsencode(temp)) > _SUN_PATH_MAX:
        temp = os.path.join(directory, f".sbx{os.getpid()}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _unlink_if_socket(temp)
        sock.bind(temp)
        try:
            os.chmod(temp, SOCKET_MODE)
            sock.listen(128)
            sock.setblocking(False)
            os.rename(temp, path)
        except BaseException:
            _unlink_if_socket(temp)
            raise
    except OSError as exc:
        sock.close()
        raise SystemFailure(f"cannot listen on {path}: {exc.strerror or exc}",
                            operation="api::serve", object_id=path, cause=exc) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _check_replaceable(path: str) -> None:
    """Refuse to displace a live daemon or anything that is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AlreadyExists(f"{path} exists and is not a socket", operation="api::serve",
                            object_id=path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            log.info("replacing stale socket %s", path)
            return
        raise SystemFailure(f"cannot check socket {path}: {exc.strerror or exc}",
                            operation="api::serve", object_id=path, cause=exc) from exc
    finally:
        probe.close()
    raise AlreadyExists(f"another daemon is listening on {path}", operation="api::serve",
                        object_id=path)


def _unlink_if_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_own_socket(runner: web.AppRunner) -> None:
    """Remove the socket file only if it is still the one we created."""
    path = getattr(runner, "socket_path", None)
    identity = getattr(runner, "socket_identity", None)
    if not path or identity is None:
        return
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)
