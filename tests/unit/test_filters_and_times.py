"""The shared label filter and the one RFC 3339 parser (with prune's ``until``)."""

from __future__ import annotations

import os
import time

import pytest

from silobox.filters import label_matches, labels_match
from silobox.timeutil import iso, parse_go_duration, parse_iso, parse_rfc3339, parse_until

LABELS = {"tier": "web", "empty": "", "com.example.team": "a=b"}


@pytest.mark.parametrize("wanted, ok", [
    ("tier", True), ("tier=web", True), ("tier=db", False), ("tier=", False),
    ("empty", True), ("empty=", True), ("missing", False), ("missing=", False),
    ("com.example.team=a=b", True), ("com.example.team=a", False), ("Tier", False)])
def test_one_label(wanted: str, ok: bool) -> None:
    assert label_matches(LABELS, wanted) is ok


def test_all_and_any() -> None:
    assert labels_match(LABELS, ["tier=web", "empty"])
    assert not labels_match(LABELS, ["tier=web", "missing"])
    assert labels_match(LABELS, [])                       # no filter: everything matches
    assert labels_match(LABELS, ["missing", "tier"], any_of=True)
    assert not labels_match(LABELS, ["missing", "tier=db"], any_of=True)
    assert not labels_match(LABELS, [], any_of=True)      # label! with no values excludes none
    assert not labels_match(None, ["tier"])
    assert labels_match(None, [])


def test_rfc3339_strict() -> None:
    assert parse_rfc3339("2023-11-14T22:13:20Z") == 1700000000
    assert parse_rfc3339("2023-11-14t22:13:20z") == 1700000000
    assert parse_rfc3339("2023-11-14 22:13:20Z") == 1700000000
    assert parse_rfc3339("2023-11-14T23:13:20+01:00") == 1700000000
    assert parse_rfc3339("2023-11-14T21:13:20-01:00") == 1700000000
    assert parse_rfc3339("2023-11-14T22:13:20.25Z") == pytest.approx(1700000000.25)
    # nanoseconds kept, more digits cut (as Docker does)
    assert parse_rfc3339("2023-11-14T22:13:20.123456789999Z") == \
        pytest.approx(1700000000.123456789)


@pytest.mark.parametrize("text", [
    "", "yesterday", "2023-11-14", "2023-11-14T22:13:20", "2023-11-14T22:13Z",
    "2023-13-14T22:13:20Z", "2023-11-14T25:13:20Z", "1700000000", "2023-11-14T22:13:20.Z",
    "2023-11-14T22:13:20Z trailing"])
def test_rfc3339_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_rfc3339_partial_and_naive() -> None:
    assert parse_rfc3339("2023-11-14", partial=True, naive="utc") == 1699920000
    assert parse_rfc3339("2023-11-14T22", partial=True, naive="utc") == 1700000000 - 13 * 60 - 20
    assert parse_rfc3339("2023-11-14T22:13:20", naive="utc") == 1700000000
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Etc/GMT-2"   # two hours east of UTC
    time.tzset()
    try:
        assert parse_rfc3339("2023-11-15T00:13:20", naive="local") == 1700000000
        assert parse_rfc3339("2023-11-14T22:13:20Z", naive="local") == 1700000000
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_parse_iso_is_lenient_for_stored_times() -> None:
    assert parse_iso("0001-01-01T00:00:00Z") == 0.0
    assert parse_iso("") == 0.0
    assert parse_iso("not a time") == 0.0
    now = time.time()
    assert parse_iso(iso(now)) == pytest.approx(now, abs=1e-6)


def test_until() -> None:
    now = 1_700_000_000.0
    assert parse_until("10m", now) == now - 600
    assert parse_until("1h30m", now) == now - 5400
    assert parse_until("1700000000", now) == 1700000000
    assert parse_until("1700000000.5", now) == 1700000000.5
    assert parse_until("0", now) == 0          # the epoch, not a zero duration
    assert parse_until("2023-11-14T22:13:20Z", now) == 1700000000
    for bad in ("soon", "-5", "1e9", "10x"):
        with pytest.raises(ValueError):
            parse_until(bad, now)


def test_go_duration() -> None:
    assert parse_go_duration("1.5h") == 5400
    assert parse_go_duration("90s") == 90
    assert parse_go_duration("-1m") == -60
    with pytest.raises(ValueError):
        parse_go_duration("5")
