"""RFC 3339 times with nanoseconds, as Docker's API writes them."""

from __future__ import annotations

import time

ZERO_TIME = "0001-01-01T00:00:00Z"


def now_iso() -> str:
    return iso(time.time())


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e9):09d}Z"


def parse_iso(s: str) -> float:
    """Seconds since the epoch; 0 for Docker's zero time or anything unparsable."""
    if not s or s.startswith("0001"):
        return 0.0
    import calendar
    base, _, frac = s.rstrip("Z").partition(".")
    try:
        t = calendar.timegm(time.strptime(base[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0.0
    digits = "".join(ch for ch in frac if ch.isdigit())
    return t + (float("0." + digits) if digits else 0.0)


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
