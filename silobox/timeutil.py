"""RFC 3339 times with nanoseconds, as Docker's API writes them."""

from __future__ import annotations

import calendar
import datetime
import functools
import re
import time

ZERO_TIME = "0001-01-01T00:00:00Z"


def now_iso() -> str:
    return iso(time.time())


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e9):09d}Z"


_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)"
                      r"(?:[Tt ](\d\d)(?::(\d\d)(?::(\d\d)(?:\.(\d+))?)?)?)?"
                      r"([Zz]|[+-]\d\d:?\d\d)?")


def parse_rfc3339(text: str, *, naive: str | None = None, partial: bool = False) -> float:
    """Seconds since the epoch for an RFC 3339 time, its fraction kept to the nanosecond.

    Strict unless asked: a full time with seconds and a zone (``Z`` or ``+hh:mm``). ``naive``
    (``"utc"`` or ``"local"``) says what a time without a zone means; ``partial`` also takes
    the shorter forms docker's CLI accepts (a date alone, a time without seconds or minutes).
    Raises ValueError for anything else.
    """
    m = _RFC3339.fullmatch(text)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    if second is None and not partial:
        raise ValueError(f"not an RFC 3339 time (no seconds): {text!r}")
    if zone is None and naive is None:
        raise ValueError(f"not an RFC 3339 time (no zone): {text!r}")
    stamp = datetime.datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                              int(second or 0))   # ValueError for a month 13, a 25th hour...
    if zone is None and naive == "local":
        seconds = stamp.timestamp()
    else:
        seconds = calendar.timegm(stamp.timetuple())
        if zone and zone not in ("Z", "z"):
            offset = int(zone[1:3]) * 3600 + int(zone[-2:]) * 60
            seconds -= offset if zone[0] == "+" else -offset
    return seconds + (int(fraction[:9].ljust(9, "0")) / 1e9 if fraction else 0.0)


@functools.lru_cache(maxsize=8192)
def parse_iso(s: str) -> float:
    """Seconds since the epoch of a time silobox wrote; 0 for Docker's zero time or anything
    unparsable (a record is never refused for its times). Cached: ``ps`` asks for the same
    few times of every container at each call."""
    if not s or s.startswith("0001"):
        return 0.0
    try:
        return parse_rfc3339(s, naive="utc")
    except ValueError:
        return 0.0


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
             "h": 3600.0}
_GO_DURATION_RE = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)"


def parse_go_duration(value: str) -> float:
    """``1h30m`` / ``90s`` / ``1.5h`` → seconds, Go's time.ParseDuration grammar."""
    text = value.strip()
    sign = 1.0
    if text[:1] in "+-" and text:
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    if not text:
        raise ValueError(f'time: invalid duration "{value}"')
    pattern = re.compile(_GO_DURATION_RE)  # cached by re after the first call
    while pos < len(text):
        m = pattern.match(text, pos)
        if not m:
            raise ValueError(f'time: invalid duration "{value}"')
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def parse_until(value: str, now: float | None = None) -> float:
    """A prune filter's ``until`` as dockerd reads it: Unix seconds, an RFC 3339 time (local
    when it has no zone; a date alone will do), or a Go duration back from now (``10m``).
    Raises ValueError for anything else."""
    text = value.strip()
    if text != "0":   # "0" is the epoch, not a duration (as docker reads it)
        try:
            return (time.time() if now is None else now) - parse_go_duration(text)
        except ValueError:
            pass
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    return parse_rfc3339(text, naive="local", partial=True)


def human_duration(seconds: float) -> str:
    """Elapsed time in words, e.g. ``About a minute``: docker's HumanDuration."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)  # Go rounds to the nearest hour here
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"
