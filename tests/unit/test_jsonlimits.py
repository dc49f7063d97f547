"""Bounded decoding of untrusted JSON and query integers: every violation is a ValueError (a 400
at the API), never a RecursionError, a quadratic int() or a 500."""

from __future__ import annotations

import time

import pytest

from silobox import jsonlimits
from silobox.api.routers import (decode_json_object, parse_filters, parse_int, parse_tail,
                                 parse_timestamp, parse_uint32)
from silobox.errors import InvalidArgument


@pytest.mark.parametrize("raw", [
    b"[" * 200_000 + b"]" * 200_000,                       # beyond Python's recursion limit
    b"[" * (jsonlimits.MAX_DEPTH + 1) + b"]" * (jsonlimits.MAX_DEPTH + 1),
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
])
def test_deep_nesting_is_refused(raw: bytes) -> None:
    with pytest.raises(jsonlimits.JSONLimitError, match="nested more than"):
        jsonlimits.loads(raw)


def test_nesting_up_to_the_limit_and_brackets_in_strings_are_fine() -> None:
    depth = jsonlimits.MAX_DEPTH
    assert jsonlimits.loads("[" * depth + "]" * depth) is not None
    doc = jsonlimits.loads('["' + "[" * 500 + '", {"k\\"[[": "{{{{"}]')
    assert doc[0] == "[" * 500
    assert jsonlimits.nesting_depth('[{"a": [1, "]]]"]}]') == 3


@pytest.mark.parametrize("raw", [b"9" * 5000, b"18446744073709551616", b"-9223372036854775809",
                                 b"1e400", b"-1e999", b"NaN", b"[Infinity]", b"-Infinity"])
def test_numbers_out_of_range_are_refused(raw: bytes) -> None:
    with pytest.raises(jsonlimits.JSONLimitError):
        jsonlimits.loads(raw)


def test_numbers_in_range() -> None:
    assert jsonlimits.loads(b"[18446744073709551615, -9223372036854775808, 1.5e300]") == [
        2**64 - 1, -(2**63), 1.5e300]


def test_a_big_document_within_the_limits_is_checked_quickly() -> None:
    item = b'["' + b"[{,:" * 20 + b'"],'
    raw = b"[" + item * 60_000 + b"1]"   # 6 MB: 60,000 arrays whose strings hold brackets
    started = time.monotonic()
    assert len(jsonlimits.loads(raw)) == 60_001
    assert time.monotonic() - started < 10


def test_api_bodies_and_filters_map_limits_to_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="nested more than"):
        decode_json_object(b"[" * 200_000 + b"]" * 200_000, required=True)
    with pytest.raises(InvalidArgument, match="out of range"):
        decode_json_object(b'{"StopTimeout": ' + b"9" * 5000 + b"}", required=True)
    with pytest.raises(InvalidArgument, match="nested more than"):
        parse_filters("[" * 5000 + "]" * 5000)


@pytest.mark.parametrize("parse", [
    lambda raw: parse_int("t", raw), lambda raw: parse_uint32("h", raw),
    lambda raw: parse_timestamp("since", raw), parse_tail])
def test_huge_query_integers_are_invalid_arguments(parse) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse("9" * 5000)
    assert "(5000 characters)" in info.value.message   # the value is not echoed whole


def test_query_integers_are_int64() -> None:
    assert parse_int("t", "9223372036854775807") == 2**63 - 1
    assert parse_int("t", "-9223372036854775808") == -(2**63)
    with pytest.raises(InvalidArgument):
        parse_int("t", "9223372036854775808")


@pytest.mark.parametrize("raw", [
    b"[" + b"1," * 3_000_000 + b"1]",               # tiny values: ~30 bytes of memory each
    b"[" + b'"ab",' * 3_000_000 + b'"a"]',
    b"{" + b",".join(b'"k%d":0' % i for i in range(jsonlimits.MAX_ITEMS)) + b"}",
])
def test_too_many_values_are_refused_before_decoding(raw: bytes) -> None:
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(jsonlimits.JSONLimitError, match="more than"):
        jsonlimits.loads(raw)
    assert time.monotonic() - started < 5
    # decoding these would take hundreds of MiB; measuring them takes a few
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024


def test_separators_inside_strings_do_not_count() -> None:
    text = '{"csv": "' + "a,b:[{" * 100_000 + '", "n": [1, 2]}'
    assert jsonlimits.loads(text)["n"] == [1, 2]


def test_an_unclosed_string_of_escaped_quotes_costs_linear_time() -> None:
    """Past 100 brackets the text's strings are cut out by a regex; a string that never closes
    and holds many escaped quotes must be consumed once, not rescanned from each quote."""
    raw = b"[" * 101 + b'"' + b'\\"' * 500_000
    started = time.monotonic()
    with pytest.raises(ValueError):
        jsonlimits.loads(raw)
    assert time.monotonic() - started < 5
