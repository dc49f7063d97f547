"""Sizes, durations and timestamps, parsed and printed the way the docker CLI does.

Scripts written against docker compare these strings (``32m``, ``Up 3 seconds``, ``1.5MiB``), so
the rules follow docker's go-units package exactly instead of Python's own conventions.
"""

from __future__ import annotations

import re
import time



# silobox.timeutil (shared with the daemon) imports calendar and datetime: only when a time is
# parsed or printed, so that ``run`` and ``exec`` start without them.
def human_duration(seconds: float) -> str:
    from silobox.timeutil import human_duration as impl
    return impl(seconds)


def parse_go_duration(value: str) -> float:
    from silobox.timeutil import parse_go_duration as impl
    return impl(value)


def parse_rfc3339(text: str, **kw: object) -> float:
    from silobox.timeutil import parse_rfc3339 as impl
    return impl(text, **kw)  # type: ignore[arg-type]

_SIZE_RE = r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$"
_BINARY = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def parse_bytes(value: str) -> int:
    """``32m`` → 33554432: docker's RAMInBytes (binary multipliers, optional ``i``/``b``)."""
    m = re.match(_SIZE_RE, value.strip())
    if not m:
        raise ValueError(f"invalid size: '{value}'")
    number = float(m.group(1)) if m.group(1).count(".") <= 1 else None
    if number is None:
        raise ValueError(f"invalid size: '{value}'")
    unit = m.group(2)
    mult = _BINARY[unit.lower()] if unit else 1
    return int(number * mult)


def parse_swap(value: str) -> int:
    """``--memory-swap`` also accepts ``-1`` for unlimited swap."""
    return -1 if value.strip() == "-1" else parse_bytes(value)


def parse_cpus(value: str) -> int:
    """``--cpus 0.5`` → 500000000 NanoCpus, exact decimal arithmetic like docker's big.Rat."""
    text = value.strip()
    m = re.fullmatch(r"(\d*)(?:\.(\d*))?", text)
    if not m or not (m.group(1) or m.group(2)):
        raise ValueError(f"failed to parse {value} as a rational number")
    whole, frac = m.group(1) or "0", (m.group(2) or "").rstrip("0")
    if len(frac) > 9:
        raise ValueError("value is too precise")
    return int(whole) * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)


def _custom_size(fmt: str, size: float, base: float, units: tuple[str, ...]) -> str:
    i = 0
    while size >= base and i < len(units) - 1:
        size /= base
        i += 1
    return fmt % (size, units[i])


def human_size(size: float, precision: int = 3) -> str:
    """Decimal units with ``precision`` significant digits: docker's HumanSizeWithPrecision."""
    return _custom_size(f"%.{precision}g%s", float(size), 1000.0, _DECIMAL_UNITS)


def bytes_size(size: float) -> str:
    """Binary units, four significant digits: docker's BytesSize (``1.5MiB``)."""
    return _custom_size("%.4g%s", float(size), 1024.0, _BINARY_UNITS)


def parse_timestamp(value: str, now: float | None = None) -> str:
    """``--since``/``--until`` value → the API's ``seconds[.nanoseconds]`` string.

    Like docker's GetTimestamp: a Go duration is relative to now, a bare number passes through,
    otherwise an RFC 3339 / ISO date (local time when no zone is given) is converted.
    """
    now = time.time() if now is None else now
    text = value.strip()
    if text != "0":
        try:
            return str(int(now - parse_go_duration(text)))
        except ValueError:
            pass
    if re.fullmatch(r"\d+(\.\d{1,9})?", text):
        return text
    try:
        ts = parse_iso(text)
    except ValueError:
        raise ValueError(f"invalid value for timestamp: {value!r}") from None
    return str(int(ts)) if ts == int(ts) else f"{ts:.9f}".rstrip("0")


def parse_iso(value: str) -> float:
    """RFC 3339 timestamp (nanosecond fractions allowed) → Unix seconds; naive means local."""
    return parse_rfc3339(value.strip(), naive="local", partial=True)


def go_time_zero(value: str | None) -> bool:
    """Docker reports unset times as Go's zero time ``0001-01-01T00:00:00Z``."""
    return not value or value.startswith("0001-01-01")
