"""Registry endpoints, credentials and the HTTP client of the distribution API.

Docker's rules, kept here:

* ``docker.io`` is served by ``registry-1.docker.io`` over TLS;
* a registry is *insecure* when its host is in ``127.0.0.0/8``, is ``localhost``, or is named by
  the daemon's ``--insecure-registry`` (a ``host[:port]`` or a CIDR). An insecure registry is
  tried over https without certificate verification, then over plain http;
* CA certificates (``*.crt``) and client certificates (``*.cert`` + ``*.key``) for a registry are
  read from ``<certs dir>/<host:port>/``, like ``/etc/docker/certs.d``. silobox verifies an
  insecure registry's certificate too when that directory gives a CA for it;
* authentication follows the ``WWW-Authenticate`` challenge of ``GET /v2/``: ``Basic`` sends the
  credentials with every request, ``Bearer`` fetches a token for the request's scope from the
  challenge's realm (anonymously when no credentials are given).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import os
import re
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from silobox import jsonlimits
from silobox.errors import (InvalidArgument, SiloboxError, SystemFailure,
                            Unauthorized, Unavailable)
from silobox.storage import reference

DEFAULT_CERTS_DIR = "/etc/silobox/certs.d"
DOCKER_HUB_HOST = "registry-1.docker.io"
INDEX_SERVER = "https://index.docker.io/v1/"
DEFAULT_INSECURE = ("127.0.0.0/8", "::1/128")
USER_AGENT = "silobox (distribution client)"

_AUTH_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class AuthConfig:
    """Docker's ``AuthConfig``: what ``X-Registry-Auth`` and ``POST /auth`` carry."""

    username: str = ""
    password: str = ""
    server: str = ""
    identity_token: str = ""
    registry_token: str = ""

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    @classmethod
    def from_dict(cls, doc: Any) -> AuthConfig:
        if not isinstance(doc, dict):
            raise InvalidArgument("invalid registry auth: expected a JSON object")

        def text(key: str) -> str:
            value = doc.get(key) or doc.get(key.lower()) or ""
            if not isinstance(value, str):
                raise InvalidArgument(f"invalid registry auth: {key} must be a string")
            return value
        return cls(username=text("username"), password=text("password"),
                   server=text("serveraddress"), identity_token=text("identitytoken"),
                   registry_token=text("registrytoken"))

    @classmethod
    def from_header(cls, value: str | None) -> AuthConfig:
        """Decode ``X-Registry-Auth`` (base64url JSON; the padding may be missing, and some
        clients use the standard alphabet). An empty or ``{}`` header means anonymous."""
        if not value or not value.strip():
            return cls()
        raw = value.strip()
        raw += "=" * (-len(raw) % 4)
        try:
            data = base64.b64decode(raw.replace("+", "-").replace("/", "_"), altchars=b"-_",
                                    validate=True)
            doc = jsonlimits.loads(data) if data.strip() else {}
        except (binascii.Error, ValueError) as e:
            raise InvalidArgument(f"invalid X-Registry-Auth header: {e}") from e
        return cls.from_dict(doc or {})


@dataclass(frozen=True)
class Endpoint:
    """Where a reference's registry is reached. ``domain`` is the name in references
    (``docker.io``, ``127.0.0.1:5000``), ``host`` the one dialled."""

    domain: str
    host: str
    insecure: bool
    tls: ssl.SSLContext           # verifying context (CA from certs.d when given)
    has_ca: bool = False

    @property
    def schemes(self) -> tuple[str, ...]:
        return ("https", "http") if self.insecure else ("https",)


@dataclass
class RegistryOptions:
    """The daemon's registry settings."""

    insecure: tuple[str, ...] = ()
    certs_dir: str = DEFAULT_CERTS_DIR
    loopback_only: bool = False

    def endpoint(self, domain: str) -> Endpoint:
        host = DOCKER_HUB_HOST if domain in (reference.DEFAULT_DOMAIN,
                                             reference.LEGACY_DEFAULT_DOMAIN) else domain
        if self.loopback_only and not self.is_loopback(host):
            raise Unavailable(f"registry {host} is not on this machine and silod runs with "
                              "--registry-loopback-only")
        insecure = self.is_insecure(host)
        tls, has_ca = self._tls_context(domain, host)
        return Endpoint(domain=domain, host=host, insecure=insecure, tls=tls, has_ca=has_ca)

    @staticmethod
    def is_loopback(host: str) -> bool:
        """True for ``localhost`` and addresses in 127.0.0.0/8 or ::1 (with any port)."""
        name = _hostname(host)
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def is_insecure(self, host: str) -> bool:
        """Docker's ``isSecureIndex`` inverted: loopback and listed registries are insecure."""
        name = _hostname(host)
        for entry in self.insecure:
            if entry == host or entry == name:
                return True
        if name == "localhost":
            return True
        nets = []
        for entry in (*DEFAULT_INSECURE, *self.insecure):
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                continue
        try:
            addrs = [ipaddress.ip_address(name)]
        except ValueError:
            addrs = []   # a DNS name: only an explicit entry makes it insecure
        return any(a in n for a in addrs for n in nets if a.version == n.version)

    def _tls_context(self, domain: str, host: str) -> tuple[ssl.SSLContext, bool]:
        ctx = ssl.create_default_context()
        has_ca = False
        for name in dict.fromkeys((host, domain)):
            folder = os.path.join(self.certs_dir, name)
            try:
                files = sorted(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as e:
                raise SystemFailure(f"cannot read {folder}: {e.strerror}", cause=e) from e
            for f in files:
                path = os.path.join(folder, f)
                try:
                    if f.endswith(".crt"):
                        ctx.load_verify_locations(cafile=path)
                        has_ca = True
                    elif f.endswith(".cert"):
                        key = path[:-len(".cert")] + ".key"
                        if not os.path.exists(key):
                            raise InvalidArgument(f"missing key {os.path.basename(key)} for "
                                                  f"client certificate {f}")
                        ctx.load_cert_chain(path, key)
                except (ssl.SSLError, OSError) as e:
                    raise InvalidArgument(f"invalid certificate {path}: {e}") from e
        return ctx, has_ca


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:host.index("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def registry_domain(server: str) -> str:
    """The registry a ``docker login SERVER`` names: ``https://index.docker.io/v1/`` and empty
    mean Docker Hub; a URL loses its scheme and path."""
    text = server.strip()
    if not text or text.rstrip("/") in (INDEX_SERVER.rstrip("/"), "index.docker.io",
                                        "docker.io", "registry-1.docker.io"):
        return reference.DEFAULT_DOMAIN
    for prefix in ("https://", "http://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text.split("/", 1)[0]


# -- registry errors ---------------------------------------------------------------------------


class RegistryError(SiloboxError):
    """An error document from the registry (``{"errors": [{"code", "message"}]}``)."""

    def __init__(self, status: int, codes: list[str], message: str) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes


def _error_text(status: int, body: bytes) -> tuple[list[str], str]:
    try:
        doc = json.loads(body)
        errors = doc.get("errors") or []
        parts, codes = [], []
        for e in errors:
            code = str(e.get("code", ""))
            codes.append(code)
            parts.append(f"{code.lower().replace('_', ' ')}: {e.get('message', '')}")
        if parts:
            return codes, "; ".join(parts)
    except (ValueError, AttributeError, TypeError):
        pass
    return [], f"unexpected status {status}: {body[:200].decode(errors='replace').strip()}"


# -- the client --------------------------------------------------------------------------------


@dataclass
class _Challenge:
    scheme: str                          # "basic" or "bearer"; "" when /v2/ needed no auth
    params: dict[str, str] = field(default_factory=dict)


class RegistryClient:
    """One registry session: the endpoint's scheme found by pinging ``/v2/``, its auth challenge
    answered, tokens cached by scope. Use as ``async with``."""

    def __init__(self, endpoint: Endpoint, auth: AuthConfig | None = None,
                 read_timeout: float = 60) -> None:
        self.endpoint = endpoint
        self.auth = auth or AuthConfig()
        self.base = ""
        self._challenge: _Challenge | None = None
        self._tokens: dict[tuple[str, ...], str] = {}
        self._read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None
        self._plain: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for s in (self._session, self._plain):
            if s is not None:
                await s.close()
        self._session = self._plain = None

    def _new_session(self, tls: ssl.SSLContext | bool) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(total=None, connect=15, sock_connect=15,
                                        sock_read=self._read_timeout)
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls, limit=16, family=socket.AF_UNSPEC),
            timeout=timeout, headers={"User-Agent": USER_AGENT}, auto_decompress=False)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "ping() first"
        return self._session

    # -- ping and auth ---------------------------------------------------------------------------

    async def ping(self) -> None:
        """``GET /v2/`` over the first scheme that answers; remembers the auth challenge."""
        last: BaseException | None = None
        url = ""
        for scheme in self.endpoint.schemes:
            url = f"{scheme}://{self.endpoint.host}/v2/"
            if scheme == "https":
                verify = not self.endpoint.insecure or self.endpoint.has_ca
                tls: ssl.SSLContext | bool = self.endpoint.tls if verify else False
            else:
                tls = False
            session = self._new_session(tls)
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    status = resp.status
                    header = resp.headers.get("WWW-Authenticate", "")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                await session.close()
                last = e
                if isinstance(e, aiohttp.ClientConnectorCertificateError) or \
                        isinstance(getattr(e, "os_error", None), ssl.SSLCertVerificationError):
                    break   # a certificate we were told to check failed: no fallback to http
                continue
            if status not in (200, 401):
                await session.close()
                last = SystemFailure(f"Get \"{url}\": unexpected status {status}")
                continue
            self._session = session
            self.base = f"{scheme}://{self.endpoint.host}"
            self._challenge = _parse_challenge(header) if status == 401 else _Challenge("")
            return
        raise SystemFailure(f"Get \"{url}\": {_describe(last)}", cause=last)

    async def login(self) -> None:
        """Check the credentials as ``docker login`` does: ``GET /v2/`` with them (Basic), or
        a token from the realm (Bearer). Unauthorized with Docker's message if refused."""
        if self._session is None:
            await self.ping()
        assert self._challenge is not None
        if self._challenge.scheme == "bearer":
            await self._token(())
            return
        url = f"{self.base}/v2/"
        async with self.session.get(url, headers=self._basic_header()) as resp:
            await resp.read()
            if resp.status == 401:
                raise Unauthorized(f"login attempt to {url} failed with status: 401 "
                                   "Unauthorized")
            if resp.status != 200:
                raise SystemFailure(f"login attempt to {url} failed with status: {resp.status}")

    def _basic_header(self) -> dict[str, str]:
        if not self.auth.username and not self.auth.password:
            return {}
        raw = f"{self.auth.username}:{self.auth.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    async def _auth_headers(self, scopes: tuple[str, ...]) -> dict[str, str]:
        if self._session is None:
            await self.ping()
        assert self._challenge is not None
        if self._challenge.scheme == "basic":
            return self._basic_header()
        if self._challenge.scheme == "bearer":
            if self.auth.registry_token:
                return {"Authorization": f"Bearer {self.auth.registry_token}"}
            try:
                return {"Authorization": f"Bearer {await self._token(scopes)}"}
            except Unauthorized as e:
                raise SystemFailure(e.message, cause=e) from e
        return {}

    async def _token(self, scopes: tuple[str, ...]) -> str:
        """A Bearer token for ``scopes`` from the challenge's realm (Docker's token auth)."""
        if scopes in self._tokens:
            return self._tokens[scopes]
        assert self._challenge is not None
        realm = self._challenge.params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise SystemFailure(f"the registry {self.endpoint.host} asks for a token from an "
                                f"invalid realm {realm!r}")
        params: list[tuple[str, str]] = []
        if self._challenge.params.get("service"):
            params.append(("service", self._challenge.params["service"]))
        params += [("scope", s) for s in scopes]
        headers = self._basic_header()
        try:
            if self.auth.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": self.auth.identity_token,
                        "client_id": "silobox",
                        "service": self._challenge.params.get("service", ""),
                        "scope": " ".join(scopes)}
                request = self.session.post(realm, data=form)
            else:
                request = self.session.get(realm, params=params, headers=headers)
            async with request as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise SystemFailure(f"Get \"{realm}\": {_describe(e)}", cause=e) from e
        if status in (401, 403):
            if not self.auth.empty:
                raise Unauthorized(f"Get \"{realm}\": unauthorized: incorrect username or "
                                   "password")
            raise Unauthorized(f"Get \"{realm}\": unauthorized: authentication required")
        if status != 200:
            raise SystemFailure(f"Get \"{realm}\": token server answered {status}")
        try:
            doc = jsonlimits.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise SystemFailure(f"Get \"{realm}\": the token server sent no token")
        self._tokens[scopes] = token
        return token

    # -- requests --------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base}{path}"

    async def request(self, method: str, path: str, scopes: tuple[str, ...],
                      headers: dict[str, str] | None = None, data: Any = None,
                      params: Any = None) -> aiohttp.ClientResponse:
        """Send a request with auth for ``scopes``; the caller reads and releases the response.
        Unreachable → SystemFailure; a refusal (401) is a SystemFailure with the registry's
        words too, as dockerd answers it: a 401 would make the docker CLI ask for a login."""
        hdrs = {**(await self._auth_headers(scopes)), **(headers or {})}
        url = self.url(path)
        try:
            resp = await self.session.request(method, url, headers=hdrs, data=data,
                                              params=params, allow_redirects=True)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise SystemFailure(f"{method.title()} \"{url}\": {_describe(e)}", cause=e) from e
        if resp.status == 401:
            body = await resp.read()
            resp.release()
            _, text = _error_text(401, body)
            if self._challenge and self._challenge.scheme == "basic" and not self._basic_header():
                text = "no basic auth credentials"
            raise SystemFailure(f"{method.title()} \"{url}\": {text}")
        return resp

    async def fail(self, resp: aiohttp.ClientResponse) -> RegistryError:
        """The registry's error document of a failed response, as an exception to raise."""
        body = await resp.read()
        resp.release()
        codes, text = _error_text(resp.status, body)
        return RegistryError(resp.status, codes, text)

    async def read_limited(self, resp: aiohttp.ClientResponse, limit: int) -> bytes:
        """A small body (manifest, config), refused past ``limit`` bytes."""
        out = bytearray()
        try:
            async for chunk in resp.content.iter_chunked(65536):
                out += chunk
                if len(out) > limit:
                    raise InvalidArgument(f"{resp.url}: document larger than {limit} bytes")
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise SystemFailure(f"Get \"{resp.url}\": {_describe(e)}", cause=e) from e
        finally:
            resp.release()
        return bytes(out)


def repository_scope(path: str, *actions: str) -> str:
    return f"repository:{path}:{','.join(actions)}"


def _parse_challenge(header: str) -> _Challenge:
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _AUTH_PARAM.finditer(rest)}
    return _Challenge(scheme.lower() or "basic", params)


def _describe(e: BaseException | None) -> str:
    """A short, clear cause for a network failure."""
    if e is None:
        return "no answer"
    if isinstance(e, SiloboxError):
        return e.message
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        return f"tls: failed to verify certificate: {e.certificate_error}"
    if isinstance(e, aiohttp.ClientConnectorError):
        err = e.os_error
        why = os.strerror(err.errno).lower() if err.errno else (err.strerror or str(err))
        return f"dial tcp {e.host}:{e.port}: connect: {why}"
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    return str(e) or type(e).__name__
