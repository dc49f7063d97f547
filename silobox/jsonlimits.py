"""JSON from untrusted senders, decoded within bounds.

API bodies, filters in query strings, registry headers and the metadata of ``load`` archives are
written by whoever can reach the socket or made the archive. Python's decoder recurses once per
nesting level (a 200,000-deep array ends in ``RecursionError``), turns any digit string into an
int (quadratic in its length up to the interpreter's digit limit) and accepts ``NaN``. Go's
decoder, whose behaviour the Docker API promises, has none of that. :func:`loads` is the one
decoder for such input: nesting at most :data:`MAX_DEPTH` levels, at most :data:`MAX_ITEMS`
values (each decoded value is a Python object of 30-100 bytes: a 16 MiB array of tiny values
would cost half a gigabyte), integers within the range Go can hold (int64 and uint64), finite
numbers only. The structure is measured on the text, at C speed, before anything is decoded.
Every violation is a :class:`JSONLimitError`,
a ``ValueError``, so callers that already turn a ``ValueError`` into a 400 need nothing more.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from itertools import accumulate
from typing import Any

MAX_DEPTH = 100
"""Deepest nesting of arrays and objects accepted; Docker's documents need fewer than 10."""

MAX_ITEMS = 200_000
"""Most values (and object keys) in one document; an API body has a few hundred."""

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
"""Integers must fit Go's int64 or uint64, as the fields they fill are typed so."""

_MAX_INT_CHARS = len(str(INT_MIN))


class JSONLimitError(ValueError):
    """The document is well-formed JSON, but beyond what silobox decodes."""


def _parse_int(text: str) -> int:
    if len(text) > _MAX_INT_CHARS:
        raise JSONLimitError(f"number {text[:24]}... is out of range")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise JSONLimitError(f"number {text} is out of range")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONLimitError(f"number {text[:24]} is out of range")
    return value


def _parse_constant(name: str) -> Any:
    raise JSONLimitError(f"{name} is not valid JSON")


def loads(raw: str | bytes | bytearray) -> Any:
    """Decode ``raw`` like :func:`json.loads`, within the bounds above; ValueError otherwise."""
    check_structure(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    try:
        return json.loads(raw, parse_int=_parse_int, parse_float=_parse_float,
                          parse_constant=_parse_constant)
    except RecursionError:
        raise JSONLimitError(f"nested more than {MAX_DEPTH} levels deep") from None


def check_structure(data: bytes | bytearray) -> None:
    """Refuse a JSON text that nests too deep or holds too many values, before decoding it.

    Counting brackets and separators is C-speed and bounds both from above, so most
    documents stop at the first line. Only then are string literals (which may contain any of
    those characters) cut out for the exact measure; every string is a value or a key, so a
    text with more strings than :data:`MAX_ITEMS` is refused before that work, which is
    therefore proportional to at most that many strings."""
    openings = data.count(b"[") + data.count(b"{")
    if openings <= MAX_DEPTH and openings + data.count(b",") + data.count(b":") < MAX_ITEMS:
        return
    if (data.count(b'"') - data.count(b'\\"')) // 2 > MAX_ITEMS:
        raise JSONLimitError(f"more than {MAX_ITEMS} values")
    structure = _outside_strings(bytes(data) if isinstance(data, bytearray) else data)
    if _depth(structure) > MAX_DEPTH:
        raise JSONLimitError(f"nested more than {MAX_DEPTH} levels deep")
    separators = sum(structure.count(c) for c in (b"[", b"{", b",", b":"))
    if separators + 1 > MAX_ITEMS:
        raise JSONLimitError(f"more than {MAX_ITEMS} values")


# The closing quote is optional: an unclosed string is consumed once, to the end, instead of
# being rescanned from each of its escaped quotes (quadratic in the body's length).
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.S)
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_SIGNS = bytes(1 if c in b"[{" else 255 if c in b"]}" else 0 for c in range(256))


def _outside_strings(data: bytes) -> bytes:
    """The JSON text without its string literals: what is left is structure and numbers."""
    return _STRING.sub(b"", data) if b'"' in data else data


_CHUNK = 1 << 20


def _depth(structure: bytes, stop: int = MAX_DEPTH) -> int:
    """The deepest nesting of ``structure`` (a text without strings), measured a MiB at a time
    so that the temporary arrays stay small; stops early once beyond ``stop``."""
    brackets = structure.translate(None, _NOT_BRACKET)
    depth = deepest = 0
    for start in range(0, len(brackets), _CHUNK):
        signs = array("b", brackets[start:start + _CHUNK].translate(_SIGNS))
        deepest = max(deepest, max(accumulate(signs, initial=depth)))
        if deepest > stop:
            break
        depth += sum(signs)
    return deepest


def nesting_depth(raw: str | bytes | bytearray) -> int:
    """How deep the JSON text ``raw`` nests, without recursion and at C speed (no Python-level
    walk of a decoded document: a 16 MiB body is measured in well under a second)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    return _depth(_outside_strings(data), stop=len(data))
