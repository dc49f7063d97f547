"""RFC 3339 times with nanoseconds, as Docker's API writes them."""

from __future__ import annotations

import calendar
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
    base, _, frac = s.rstrip("Z").partition(".")
    try:
        t = calendar.timegm(time.strptime(base[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0.0
    digits = "".join(ch for ch in frac if ch.isdigit())
    return t + (float("0." + digits) if digits else 0.0)
