"""Resource limits of the container's processes (``--ulimit``; per-process job limits on Windows).

Docker's names and syntax: ``nofile=1024`` (soft = hard) or ``nofile=1024:2048``; ``-1`` means
unlimited. The child inherits the daemon's limits and sets the requested ones before exec.
Raising a hard limit needs CAP_SYS_RESOURCE; where the daemon lacks it (this host's bounding set
does), only lowering is possible, so ``check_ulimits`` refuses a raise at create time instead of
letting the container fail at start.
"""

from __future__ import annotations

import re
import resource
from typing import NamedTuple

from silobox.errors import InvalidArgument
from silobox.kernel import libc

UNLIMITED = -1
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
CAP_SYS_RESOURCE = 24

# Docker's ulimit names → RLIMIT_* numbers (asm-generic/resource.h, used by x86 and arm; Python's
# resource module lacks some of them, RLIMIT_LOCKS for one).
RLIMITS: dict[str, int] = {
    "cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7,
    "memlock": 8, "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13, "rtprio": 14,
    "rttime": 15,
}


class Ulimit(NamedTuple):
    """One ``--ulimit``: Docker's name and limits, ``-1`` for unlimited."""

    name: str
    soft: int
    hard: int


_UNLIMITED_ORDER = 1 << 64


def _kernel_value(v: int) -> int:
    """What resource.setrlimit takes (its RLIM_INFINITY is -1 in Python)."""
    return resource.RLIM_INFINITY if v < 0 else v


def _order(v: int) -> int:
    """A value to compare limits with: unlimited above every number."""
    return _UNLIMITED_ORDER if v < 0 or v == resource.RLIM_INFINITY else v


def _fmt(v: int) -> str:
    return "unlimited" if _order(v) == _UNLIMITED_ORDER else str(v)


def _parse_int(text: str, whole: str) -> int:
    t = text.strip()
    if not _INTEGER.match(t):
        raise InvalidArgument(f'invalid ulimit argument: "{whole}": "{text}" is not a number')
    value = int(t)
    if value < -1 or value >= 1 << 63:
        raise InvalidArgument(f'invalid ulimit argument: "{whole}": {value} is out of range '
                              "(use -1 for unlimited)")
    return value


def validate(u: Ulimit) -> Ulimit:
    """Check a ulimit built from API fields: known name, sane values, soft not above hard."""
    if u.name not in RLIMITS:
        raise InvalidArgument(f"invalid ulimit type: {u.name} "
                              f"(known: {', '.join(sorted(RLIMITS))})")
    for v in (u.soft, u.hard):
        if not isinstance(v, int) or v < -1 or v >= 1 << 63:
            raise InvalidArgument(f"invalid ulimit {u.name}: {v!r} is not a limit "
                                  "(use -1 for unlimited)")
    if _order(u.soft) > _order(u.hard):
        raise InvalidArgument("ulimit soft limit must be less than or equal to hard limit: "
                              f"{_fmt(u.soft)} > {_fmt(u.hard)} ({u.name})")
    return u


def parse_ulimit(text: str) -> Ulimit:
    """``name=soft[:hard]`` → Ulimit (hard defaults to soft)."""
    name, sep, values = text.partition("=")
    if not sep:
        raise InvalidArgument(f'invalid ulimit argument: "{text}": expected name=soft[:hard]')
    parts = values.split(":")
    if len(parts) > 2:
        raise InvalidArgument(f"too many limit value arguments - {values}, can only have up to "
                              "two, `soft[:hard]`")
    if name not in RLIMITS:
        raise InvalidArgument(f"invalid ulimit type: {name} (known: {', '.join(sorted(RLIMITS))})")
    soft = _parse_int(parts[0], text)
    hard = _parse_int(parts[1], text) if len(parts) == 2 else soft
    return validate(Ulimit(name, soft, hard))


def _have_sys_resource() -> bool:
    effective, _, _ = libc.capget()
    return bool(effective >> CAP_SYS_RESOURCE & 1)


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def check_ulimits(items: list[Ulimit]) -> None:
    """Refuse limits this host cannot grant, with the reason, before anything starts.

    Without CAP_SYS_RESOURCE no hard limit may go above the daemon's own; with it, ``nofile`` is
    still capped by ``fs.nr_open``.
    """
    privileged = _have_sys_resource()
    for u in items:
        validate(u)
        res = RLIMITS[u.name]
        _, cur_hard = resource.getrlimit(res)
        want = _order(u.hard)
        if u.name == "nofile":
            nr_open = _nr_open()
            if want > nr_open:
                raise InvalidArgument(f"ulimit nofile: {_fmt(u.hard)} is above the kernel's "
                                      f"maximum of {nr_open} open files (fs.nr_open)")
        if not privileged and want > _order(cur_hard):
            raise InvalidArgument(
                f"ulimit {u.name}: hard limit {_fmt(u.hard)} is above this host's hard limit of "
                f"{cur_hard}; silobox runs without CAP_SYS_RESOURCE here, so container limits "
                "can only be lowered, not raised")


def to_child(items: list[Ulimit]) -> list[tuple[int, int, int]]:
    """(RLIMIT_* number, soft, hard) triples with the kernel's value for unlimited."""
    return [(RLIMITS[u.name], _kernel_value(u.soft), _kernel_value(u.hard)) for u in items]


# ----- child side: syscalls only -------------------------------------------------------------

def apply_rlimits(items: list[tuple[int, int, int]]) -> None:
    """setrlimit for each (resource, soft, hard); run before the capabilities are dropped."""
    for res, soft, hard in items:
        resource.setrlimit(res, (soft, hard))
