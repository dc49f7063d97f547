"""Docker's stream framing and detach keys, as pure functions."""

from __future__ import annotations

import struct

import pytest

from silobox.api.streams import (DEFAULT_DETACH_KEYS, MEDIA_MULTIPLEXED, MEDIA_RAW,
                                 DetachScanner, frame, parse_detach_keys, read_frames,
                                 stream_media_type)
from silobox.errors import InvalidArgument


def test_frame_header_layout() -> None:
    data = frame(1, b"hello")
    assert data[:8] == bytes([1, 0, 0, 0, 0, 0, 0, 5])
    assert data[8:] == b"hello"
    assert frame(2, b"")[:8] == bytes([2, 0, 0, 0, 0, 0, 0, 0])
    big = frame(2, b"x" * 70000)
    assert struct.unpack(">BxxxL", big[:8]) == (2, 70000)


def test_frame_rejects_unknown_stream() -> None:
    with pytest.raises(ValueError):
        frame(4, b"x")


def test_read_frames_roundtrip_and_partial() -> None:
    wire = frame(1, b"out") + frame(2, b"err") + frame(1, b"tail")
    frames, rest = read_frames(wire[:-2])
    assert frames == [(1, b"out"), (2, b"err")]
    assert rest == wire[len(frame(1, b"out") + frame(2, b"err")):-2]
    frames, rest = read_frames(wire)
    assert frames == [(1, b"out"), (2, b"err"), (1, b"tail")]
    assert rest == b""


def test_media_type_by_tty_and_version() -> None:
    assert stream_media_type(True, (1, 47)) == MEDIA_RAW
    assert stream_media_type(False, (1, 47)) == MEDIA_MULTIPLEXED
    assert stream_media_type(False, (1, 42)) == MEDIA_MULTIPLEXED
    assert stream_media_type(False, (1, 41)) == MEDIA_RAW


def test_parse_detach_keys() -> None:
    assert parse_detach_keys(None) == DEFAULT_DETACH_KEYS == b"\x10\x11"
    assert parse_detach_keys("") == DEFAULT_DETACH_KEYS
    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("ctrl-a,x") == b"\x01x"
    assert parse_detach_keys("ctrl-@,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_") == bytes(
        [0, 27, 28, 29, 30, 31])
    assert parse_detach_keys("DEL") == b"\x7f"
    for bad in ["ctrl-", "ctrl-1", "ab", "é", "ctrl-p,", "shift-a"]:
        with pytest.raises(InvalidArgument, match=r"Invalid detach keys \(.*\) provided"):
            parse_detach_keys(bad)


def test_scanner_passes_ordinary_bytes() -> None:
    scanner = DetachScanner(b"\x10\x11")
    assert scanner.feed(b"hello") == (b"hello", False)


def test_scanner_detects_sequence_split_across_reads() -> None:
    scanner = DetachScanner(b"\x10\x11")
    assert scanner.feed(b"ab\x10") == (b"ab", False)
    assert scanner.feed(b"\x11zz") == (b"", True)


def test_scanner_releases_a_false_start() -> None:
    scanner = DetachScanner(b"\x10\x11")
    assert scanner.feed(b"\x10") == (b"", False)
    assert scanner.feed(b"x") == (b"\x10x", False)


def test_scanner_restarts_on_repeated_first_key() -> None:
    scanner = DetachScanner(b"\x10\x11")
    assert scanner.feed(b"\x10\x10\x11") == (b"\x10", True)


def test_scanner_overlapping_prefix() -> None:
    scanner = DetachScanner(b"aab")
    assert scanner.feed(b"aaab") == (b"a", True)
    scanner = DetachScanner(b"aab")
    assert scanner.feed(b"aaxaab") == (b"aax", True)


def test_scanner_flush_returns_held_bytes() -> None:
    scanner = DetachScanner(b"\x10\x11")
    scanner.feed(b"a\x10")
    assert scanner.flush() == b"\x10"
    assert scanner.flush() == b""
