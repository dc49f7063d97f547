"""What every router shares: typed query parsing, JSON bodies, and the route table format.

The parsers are pure functions of strings so they are tested without a server. They raise
``InvalidArgument`` with a message naming the parameter and the bad value; ``api/errors.py``
turns that into a 400.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, TypeVar

from aiohttp import web

from silobox import jsonlimits
from silobox.errors import InvalidArgument
from silobox.timeutil import parse_rfc3339

log = logging.getLogger("silobox.api")
T = TypeVar("T")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler]
"""(method, path without the version prefix, handler)."""

API_VERSION_KEY = web.RequestKey("api_version", tuple)
"""The client's API version as a tuple of ints, set by the version middleware."""

_TRUE = frozenset({"1", "t", "true", "y", "yes", "on"})
_FALSE = frozenset({"", "0", "f", "false", "n", "no", "off", "none"})
_INT_RE = re.compile(r"^[+-]?[0-9]{1,19}$")
"""At most 19 digits: Go parses query integers into an int64, and Python's ``int()`` of a long
digit string costs time quadratic in its length (and fails beyond 4,300 digits)."""
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT32_MAX = 2**32 - 1


# --- query strings -----------------------------------------------------------------------

def parse_bool(name: str, raw: str | None, default: bool = False) -> bool:
    """A boolean query parameter: Docker's spellings (1/0, true/false, yes/no, none), any case.

    Absent means ``default``; present but empty (``?all=``) means false, as in Docker.
    """
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidArgument(f"invalid boolean value for {name!r}: {raw!r}")


def parse_int(name: str, raw: str | None, default: int | None = None) -> int | None:
    """A signed integer query parameter; absent or empty means ``default``."""
    if raw is None or raw == "":
        return default
    if not _INT_RE.match(raw):
        raise InvalidArgument(f"invalid value for {name!r}: {_shown(raw)} is not an integer "
                              "between -2^63 and 2^63-1")
    value = int(raw)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise InvalidArgument(f"invalid value for {name!r}: {raw!r} is out of range")
    return value


def _shown(raw: str, limit: int = 64) -> str:
    """A client's value as an error message quotes it: long values are cut."""
    return repr(raw) if len(raw) <= limit else repr(raw[:limit]) + f"... ({len(raw)} characters)"


def parse_uint32(name: str, raw: str | None) -> int:
    """A required unsigned 32-bit query parameter (console heights and widths)."""
    if raw is None or raw == "":
        raise InvalidArgument(f"invalid value for {name!r}: the parameter is required")
    if not _INT_RE.match(raw) or raw[0] == "+":
        raise InvalidArgument(
            f"invalid value for {name!r}: {_shown(raw)} is not an unsigned 32-bit integer")
    value = int(raw)
    if value < 0 or value > _UINT32_MAX:
        raise InvalidArgument(f"invalid value for {name!r}: {raw!r} is out of range")
    return value


def parse_filters(raw: str | None) -> dict[str, list[str]]:
    """Docker's ``filters`` parameter, normalised to ``{name: [value, ...]}``.

    Accepts both encodings clients send: ``{"status": ["running"]}`` and the map-of-booleans
    form ``{"status": {"running": true}}`` (only true entries count). Values keep their order
    and lose duplicates.
    """
    if raw is None or raw == "":
        return {}
    try:
        doc = jsonlimits.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"invalid filter: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"invalid filter: expected a JSON object, got {json_type(doc)}")
    result: dict[str, list[str]] = {}
    for key, value in doc.items():
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            values = value
        elif isinstance(value, dict) and all(isinstance(v, bool) for v in value.values()):
            values = [k for k, v in value.items() if v]
        else:
            raise InvalidArgument(
                f"invalid filter {key!r}: expected a list of strings or an object of booleans, "
                f"got {json.dumps(value)}")
        result[key] = list(dict.fromkeys(values))
    return result


def parse_timestamp(name: str, raw: str | None) -> float:
    """A point in time as Unix seconds: ``1700000000``, ``1700000000.123456789`` or RFC 3339.

    Absent, empty or ``0`` means 0 (no bound). Fractions keep nanosecond digits as far as a
    float allows; more than 9 digits are truncated, as Docker does.
    """
    if raw is None or raw == "" or raw == "0":
        return 0.0
    seconds, dot, fraction = raw.partition(".")
    if _INT_RE.match(seconds) and seconds[0] != "+" and (
            not dot or (fraction.isdigit() and fraction.isascii() and len(fraction) <= 20)):
        return int(seconds) + (int(fraction[:9].ljust(9, "0")) / 1e9 if fraction else 0.0)
    try:
        return parse_rfc3339(raw)
    except ValueError:
        raise InvalidArgument(
            f"invalid value for {name!r}: {_shown(raw)} is neither Unix seconds nor an RFC 3339 "
            "time") from None


def parse_tail(raw: str | None) -> str:
    """``tail`` of the logs endpoint: ``all`` or a count of lines (negative counts mean all)."""
    if raw is None or raw == "" or raw == "all":
        return "all"
    if not _INT_RE.match(raw):
        raise InvalidArgument(
            f"invalid value for 'tail': {_shown(raw)} is neither 'all' nor a number")
    count = int(raw)
    return "all" if count < 0 else str(count)


def parse_csv(raw: str | None) -> list[str] | None:
    """A comma-separated list parameter; absent or empty means None (the backend's default)."""
    if raw is None:
        return None
    items = [item.strip() for item in raw.split(",") if item.strip()]
    return items or None


class Query:
    """Typed access to a request's query string (first value wins, as in Go's ``Form.Get``)."""

    def __init__(self, request: web.BaseRequest) -> None:
        self._query = request.query

    def text(self, name: str) -> str | None:
        return self._query.get(name)

    def flag(self, name: str, default: bool = False) -> bool:
        return parse_bool(name, self._query.get(name), default)

    def integer(self, name: str, default: int | None = None) -> int | None:
        return parse_int(name, self._query.get(name), default)

    def uint32(self, name: str) -> int:
        return parse_uint32(name, self._query.get(name))

    def filters(self) -> dict[str, list[str]]:
        return parse_filters(self._query.get("filters"))

    def timestamp(self, name: str) -> float:
        return parse_timestamp(name, self._query.get(name))


# --- JSON bodies ---------------------------------------------------------------------------

def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def decode_json_object(raw: bytes, *, required: bool) -> dict[str, Any]:
    """Decode a request body that must be a JSON object; an empty body is ``{}`` unless required."""
    if not raw.strip():
        if required:
            raise InvalidArgument("invalid JSON: got EOF while reading request body")
        return {}
    try:
        doc = jsonlimits.loads(raw)
    except UnicodeDecodeError:
        raise InvalidArgument("invalid JSON: the request body is not UTF-8") from None
    except ValueError as exc:
        raise InvalidArgument(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"invalid JSON: expected an object, got {json_type(doc)}")
    return doc


def check_content_type(content_type: str | None, has_body: bool) -> None:
    """A body must be declared ``application/json``; no Content-Type is fine without a body."""
    if not content_type:
        if has_body:
            raise InvalidArgument("unsupported Content-Type header (): must be 'application/json'")
        return
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime != "application/json":
        raise InvalidArgument(
            f"unsupported Content-Type header ({content_type}): must be 'application/json'")


async def read_json_object(request: web.Request, *, required: bool) -> dict[str, Any]:
    """Read and decode the request's JSON object body."""
    raw = await request.read()
    check_content_type(request.headers.get("Content-Type"), bool(raw.strip()))
    return decode_json_object(raw, required=required)


async def body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives, a MiB at a time: build contexts, image tars and
    archives can be gigabytes and are never held in memory whole."""
    while True:
        chunk = await request.content.read(1 << 20)
        if not chunk:
            return
        yield chunk


Spec = Any
"""Type of a field, checked by ``check_fields``: ``"bool"``, ``"str"``, ``"int"``, ``"num"``,
``"strslice"`` (a string or a list of strings), ``"object"`` (any JSON object), ``"any"``,
``[spec]`` (a list of spec), ``{"*": spec}`` (an object whose values are spec) or
``{"Field": spec, ...}`` (an object with known fields; other fields are ignored)."""

_SCALARS: Mapping[str, tuple[str, Callable[[Any], bool]]] = {
    "bool": ("a boolean", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "num": ("a number",
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)),
    "object": ("an object", lambda v: isinstance(v, dict)),
    "strslice": ("a string or an array of strings",
                 lambda v: isinstance(v, str) or (isinstance(v, list)
                                                  and all(isinstance(i, str) for i in v))),
    "any": ("anything", lambda v: True),
}


def check_fields(value: Any, spec: Spec, where: str = "") -> None:
    """Check a decoded JSON value against ``spec``; raise InvalidArgument naming the field.

    ``null`` is accepted anywhere, as Go leaves a field at its zero value for it.
    """
    if value is None:
        return
    if isinstance(spec, str):
        description, accepts = _SCALARS[spec]
        if not accepts(value):
            _wrong(where, description, value)
    elif isinstance(spec, list):
        if not isinstance(value, list):
            _wrong(where, "an array", value)
        for index, item in enumerate(value):
            check_fields(item, spec[0], f"{where}[{index}]")
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            _wrong(where, "an object", value)
        if "*" in spec:
            for key, item in value.items():
                check_fields(item, spec["*"], f"{where}.{key}" if where else key)
        else:
            for key, field_spec in spec.items():
                if key in value:
                    check_fields(value[key], field_spec, f"{where}.{key}" if where else key)
    else:  # pragma: no cover - a programming error in a schema
        raise TypeError(f"bad spec {spec!r}")


def _wrong(where: str, expected: str, value: Any) -> None:
    field = where or "body"
    raise InvalidArgument(f"invalid JSON: {field!r} must be {expected}, not {json_type(value)}")


# --- backend calls -------------------------------------------------------------------------

async def complete(call: Awaitable[T]) -> T:
    """Run a state-changing backend call to its end even if the client disconnects meanwhile.

    Handlers are cancelled when their client goes away (so waits and log follows end); a
    create, start or stop must not be cut in half by that. The caller still sees the
    cancellation; a late failure is only logged.
    """
    task = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            task.add_done_callback(_log_late_failure)
        raise


def _log_late_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("request finished after its client left: %s", task.exception())


# --- responses -----------------------------------------------------------------------------

def json_response(doc: Any, status: int = 200) -> web.Response:
    """Compact JSON with a trailing newline, as Go's json.Encoder writes it."""
    body = (json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
    return web.Response(status=status, body=body, content_type="application/json")


def no_content() -> web.Response:
    return web.Response(status=204)


def api_version(request: web.BaseRequest) -> tuple[int, ...]:
    """The API version the client asked for (the server's own when it gave no prefix)."""
    return request[API_VERSION_KEY]


def version_at_least(request: web.BaseRequest, minimum: tuple[int, ...]) -> bool:
    return api_version(request) >= minimum


def with_version_prefix(routes: Iterable[Route]) -> list[Route]:
    """Each route twice: plain and under ``/v{version}`` (moby's ``versionMatcher``)."""
    result: list[Route] = []
    for method, path, handler in routes:
        result.append((method, path, handler))
        result.append((method, "/v{version:[0-9.]+}" + path, handler))
    return result
