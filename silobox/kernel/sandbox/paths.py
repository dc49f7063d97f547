"""Paths hidden or frozen inside a container (the part of a silo's object namespace it never sees).

``MASKED_PATHS`` are made invisible: a masked file gets /dev/null bound over it, a masked
directory an empty read-only tmpfs. ``READONLY_PATHS`` are bind-mounted read-only over
themselves. Entries missing on this kernel are skipped by the rootfs code. Privileged containers
get neither list. The lists are Docker's, so kernel interfaces that leak host information
(interrupt counts, timers, keyrings, firmware, power capping, thermal throttling counters) or
allow host-wide changes (/proc/sys, sysrq) stay out of reach.
"""

from __future__ import annotations

import os

_STATIC_MASKED: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)


def _possible_cpus() -> list[int]:
    """CPU numbers from /sys/devices/system/cpu/possible (``0-3,8`` form)."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
    except OSError:
        return []
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            cpus.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            return []
    return cpus


def _thermal_throttle() -> tuple[str, ...]:
    """Per-CPU thermal throttle counters present on this host (they leak host activity)."""
    out = []
    for cpu in _possible_cpus():
        path = f"/sys/devices/system/cpu/cpu{cpu}/thermal_throttle"
        if os.path.exists(path):
            out.append(path)
    return tuple(out)


MASKED_PATHS: tuple[str, ...] = _STATIC_MASKED + _thermal_throttle()
"""Docker's masked paths, plus this host's per-CPU thermal_throttle directories."""

READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
