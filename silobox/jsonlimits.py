"""JSON from untrusted senders, decoded within bounds.

API bodies, filters in query strings, registry headers and the metadata of ``load`` archives are
written by whoever can reach the socket or made the archive. Python's decoder recurses once per
nesting level (a 200,000-deep array ends in ``RecursionError``), turns any digit string into an
int (quadratic in its length up to the interpreter's digit limit) and accepts ``NaN``. Go's
decoder, whose behaviour the Docker API promises, has none of that. :func:`loads` is the one
decoder for such input: nesting at most :data:`MAX_DEPTH` levels, integers within the range Go
can hold (int64 and uint64), finite numbers only. Every violation is a :class:`JSONLimitError`,
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
    try:
        doc = json.loads(raw, parse_int=_parse_int, parse_float=_parse_float,
                         parse_constant=_parse_constant)
    except RecursionError:
        raise JSONLimitError(f"nested more than {MAX_DEPTH} levels deep") from None
    if _openings(raw) > MAX_DEPTH and nesting_depth(raw) > MAX_DEPTH:
        raise JSONLimitError(f"nested more than {MAX_DEPTH} levels deep")
    return doc


def _openings(raw: str | bytes | bytearray) -> int:
    """Upper bound of the nesting depth, counted at C speed: most documents stop here."""
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{")
    return raw.count(b"[") + raw.count(b"{")


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_SIGNS = bytes(1 if c in b"[{" else 255 if c in b"]}" else 0 for c in range(256))


def nesting_depth(raw: str | bytes | bytearray) -> int:
    """How deep the valid JSON text ``raw`` nests, without recursion and at C speed (no
    Python-level walk of the decoded document: a 16 MiB body is checked in well under a second).
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKET).translate(_SIGNS)
    return max(accumulate(array("b", brackets)), default=0)
