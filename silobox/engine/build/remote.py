"""``ADD <url>``: the daemon downloads the file, as dockerd's classic builder does.

moby's ``downloadSource`` (builder/dockerfile/copy.go) is the model: a plain GET (redirects
followed, no proxy from the daemon's environment), an answer of 400 or more is an error
``failed to GET <url> with status <status>: <body>``, the file is named after the URL path's
last element (else Content-Disposition's ``filename``), written with mode 0600 and the
``Last-Modified`` time (else the epoch), and never extracted even when it is a tar. The body is
streamed to disk while it is hashed, so a large download never sits in memory. Every build
downloads again; the build cache is keyed by the content's hash.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import os
import posixpath
import socket
import time
from dataclasses import dataclass
from typing import Callable
from email.message import Message
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp

from silobox.errors import InvalidArgument, SystemFailure, Unavailable
from silobox.storage.distribution.registry import RegistryOptions

USER_AGENT = "silobox-builder"
MAX_REDIRECTS = 10      # Go's http.Client default
_CHUNK = 1 << 20
_ERROR_BODY = 4096      # how much of an error answer's body goes into the message
_PROGRESS_EVERY = 0.2   # seconds between two progress reports

Progress = Callable[[int, "int | None"], None]   # (bytes so far, Content-Length or None)


def is_url(src: str) -> bool:
    """What the classic builder downloads (moby ``urlutil.IsURL``)."""
    return src.startswith(("http://", "https://"))


@dataclass
class Download:
    """A downloaded file: ``path`` on the host, ``name`` it takes in a destination directory
    ("" when neither the URL nor the answer names it), ``digest`` of its content."""

    path: str
    name: str
    digest: str


def _check_host(url: str, loopback_only: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(f"ADD: {url!r} is not an http or https URL")
    if loopback_only and not RegistryOptions.is_loopback(parts.hostname):
        raise Unavailable(f"ADD {url}: {parts.hostname} is not on this machine and silod runs "
                          "with --registry-loopback-only")


def file_name(url_path: str, content_disposition: str | None) -> str:
    """moby ``getFilenameForDownload``: the path's last element, else the Content-Disposition
    filename's last element, else ""."""
    path = unquote(url_path)
    if path and not path.endswith("/"):
        name = posixpath.basename(path)
        if name:
            return name
    if content_disposition:
        msg = Message()
        msg["content-disposition"] = content_disposition
        given = msg.get_param("filename", header="content-disposition")
        if isinstance(given, tuple):   # RFC 2231 form
            given = email.utils.collapse_rfc2231_value(given)
        if given and not str(given).endswith("/"):
            name = posixpath.basename(str(given))
            if name and name not in (".", ".."):
                return name
    return ""


def _mtime(last_modified: str | None) -> float:
    """``Last-Modified`` as a timestamp; the epoch when absent or unparsable (moby's zero
    time is clamped to the epoch by ``system.Chtimes``)."""
    if not last_modified:
        return 0.0
    try:
        return max(email.utils.parsedate_to_datetime(last_modified).timestamp(), 0.0)
    except (TypeError, ValueError, IndexError):
        return 0.0


async def download(url: str, into: str, *, loopback_only: bool = False,
                   read_timeout: float = 60, progress: Progress | None = None) -> Download:
    """GET ``url`` into a new file under the directory ``into`` (which must exist and is the
    caller's to remove). Errors carry Docker's wording."""
    _check_host(url, loopback_only)
    timeout = aiohttp.ClientTimeout(total=None, connect=15, sock_connect=15,
                                    sock_read=read_timeout)
    connector = aiohttp.TCPConnector(family=socket.AF_UNSPEC)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                     headers={"User-Agent": USER_AGENT}) as session:
        current = url
        try:
            for _ in range(MAX_REDIRECTS + 1):
                async with session.get(current, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        # each hop is checked: a redirect must not leave what is allowed
                        current = urljoin(current, resp.headers["Location"])
                        _check_host(current, loopback_only)
                        continue
                    if resp.status >= 400:
                        body = (await resp.content.read(_ERROR_BODY)).strip()
                        message = f"failed to GET {url} with status {resp.status} " \
                                  f"{resp.reason or ''}".rstrip()
                        if body:
                            message += ": " + body.decode("utf-8", "replace")
                        raise Unavailable(message)
                    return await _save(resp, urlsplit(url).path, into, progress)
            raise Unavailable(f'Get "{url}": stopped after {MAX_REDIRECTS} redirects')
        except aiohttp.ClientError as e:
            raise Unavailable(f'Get "{url}": {e}') from e
        except TimeoutError as e:
            raise Unavailable(f'Get "{url}": timed out') from e
        except OSError as e:   # writing the file (a full disk): name what was being saved
            raise SystemFailure(f"ADD {url}: saving the download: {e.strerror or e}") from e


async def _save(resp: aiohttp.ClientResponse, url_path: str, into: str,
                progress: Progress | None) -> Download:
    name = file_name(url_path, resp.headers.get("Content-Disposition"))
    path = os.path.join(into, name or "__unnamed__")
    hasher = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    loop = asyncio.get_running_loop()
    done, reported = 0, 0.0
    with os.fdopen(fd, "wb") as out:
        async for chunk in resp.content.iter_chunked(_CHUNK):
            hasher.update(chunk)
            await loop.run_in_executor(None, out.write, chunk)   # a slow disk stalls no one
            done += len(chunk)
            if progress is not None and time.monotonic() - reported >= _PROGRESS_EVERY:
                reported = time.monotonic()
                progress(done, resp.content_length)
    if progress is not None:
        progress(done, resp.content_length)
    os.chmod(path, 0o600)
    mtime = _mtime(resp.headers.get("Last-Modified"))
    os.utime(path, (mtime, mtime))
    return Download(path=path, name=name, digest=hasher.hexdigest())
