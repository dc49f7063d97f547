"""Size, CPU, duration and timestamp parsing/printing, as docker's go-units does it."""

from __future__ import annotations

import pytest

from silobox.cli import units


@pytest.mark.parametrize("text,expected", [
    ("32m", 32 << 20), ("32M", 32 << 20), ("1g", 1 << 30), ("1G", 1 << 30), ("1024", 1024),
    ("512k", 512 << 10), ("1kb", 1024), ("1KiB", 1024), ("2 MB", 2 << 20), ("1.5g", 3 << 29),
    ("1t", 1 << 40), ("0", 0), ("10b", 10),
])
def test_parse_bytes(text: str, expected: int) -> None:
    assert units.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "m", "-1", "1x", "1.2.3m", "abc", "1 g b"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        units.parse_bytes(text)


def test_parse_swap_accepts_unlimited() -> None:
    assert units.parse_swap("-1") == -1
    assert units.parse_swap("64m") == 64 << 20


@pytest.mark.parametrize("text,expected", [
    ("0.5", 500_000_000), ("1", 1_000_000_000), ("2.25", 2_250_000_000), (".1", 100_000_000),
    ("1.000000001", 1_000_000_001), ("0.0", 0),
])
def test_parse_cpus(text: str, expected: int) -> None:
    assert units.parse_cpus(text) == expected


@pytest.mark.parametrize("text", ["", "x", "1.0000000001", "-1", "1e3"])
def test_parse_cpus_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        units.parse_cpus(text)


@pytest.mark.parametrize("seconds,expected", [
    (0.2, "Less than a second"), (1, "1 second"), (3, "3 seconds"), (59, "59 seconds"),
    (60, "About a minute"), (119, "About a minute"), (120, "2 minutes"), (59 * 60, "59 minutes"),
    (3600, "About an hour"), (5399, "About an hour"), (5400, "2 hours"), (47 * 3600, "47 hours"),
    (48 * 3600, "2 days"), (13 * 86400, "13 days"), (14 * 86400, "2 weeks"),
    (60 * 86400, "2 months"), (800 * 86400, "2 years"),
])
def test_human_duration(seconds: float, expected: str) -> None:
    assert units.human_duration(seconds) == expected


@pytest.mark.parametrize("size,expected", [
    (0, "0B"), (999, "999B"), (1000, "1kB"), (4260000, "4.26MB"), (1234567890, "1.23GB"),
    (1500, "1.5kB"),
])
def test_human_size(size: int, expected: str) -> None:
    assert units.human_size(size) == expected


@pytest.mark.parametrize("size,expected", [
    (0, "0B"), (1024, "1KiB"), (1536 * 1024, "1.5MiB"), (2087354368, "1.944GiB"),
    (33554432, "32MiB"),
])
def test_bytes_size(size: int, expected: str) -> None:
    assert units.bytes_size(size) == expected


@pytest.mark.parametrize("text,expected", [
    ("10s", 10), ("1m", 60), ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25), ("0", 0),
    ("-5s", -5), ("1h2m3s", 3723),
])
def test_parse_go_duration(text: str, expected: float) -> None:
    assert units.parse_go_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "10", "1d", "h", "1h x"])
def test_parse_go_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        units.parse_go_duration(text)


def test_parse_timestamp() -> None:
    now = 1_700_000_000.0
    assert units.parse_timestamp("10m", now) == str(int(now - 600))
    assert units.parse_timestamp("1700000000", now) == "1700000000"
    assert units.parse_timestamp("1700000000.5", now) == "1700000000.5"
    assert units.parse_timestamp("2023-11-14T22:13:20Z", now) == "1700000000"
    assert units.parse_timestamp("2023-11-14T22:13:20.25Z", now) == "1700000000.25"
    with pytest.raises(ValueError):
        units.parse_timestamp("yesterday", now)


def test_parse_iso_nanoseconds_and_zero_time() -> None:
    assert units.parse_iso("2023-11-14T22:13:20.123456789Z") == pytest.approx(1700000000.123456789)
    assert units.go_time_zero("0001-01-01T00:00:00Z")
    assert units.go_time_zero("")
    assert not units.go_time_zero("2023-11-14T22:13:20Z")
