"""Kernel feature probes, run once and cached for the life of the process.

Each probe answers one question about the host (which cgroup hierarchies exist and where, which
controllers they carry, whether cgroup device filters can be loaded as BPF programs) so that the
rest of silobox picks a backend once and fails early with an actionable message. Probes read
``/proc`` and ``/sys``; none of them changes the host.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from silobox.kernel import libc

MOUNTINFO = "/proc/self/mountinfo"
PROC_CGROUPS = "/proc/cgroups"
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class CgroupLayout:
    """Where the cgroup hierarchies are mounted and what they control.

    ``mode`` is ``"v1"`` (only legacy hierarchies), ``"hybrid"`` (legacy hierarchies for the
    controllers plus a cgroup2 mount, usually without controllers), ``"v2"`` (the unified hierarchy
    only) or ``"none"``.
    """

    mode: str
    v1_mounts: Mapping[str, str] = field(default_factory=dict)
    """Controller (or ``name=<name>`` for named hierarchies) → mount point of its v1 hierarchy.
    Co-mounted controllers (``cpu,cpuacct``) map to the same mount point."""
    unified_mount: str | None = None
    unified_controllers: frozenset[str] = frozenset()
    """Controllers the unified hierarchy's root offers (``cgroup.controllers``)."""
    enabled_controllers: frozenset[str] = frozenset()
    """Controllers the kernel has compiled in and enabled (``/proc/cgroups``)."""

    @property
    def v1_controllers(self) -> frozenset[str]:
        """Real (not named) controllers bound to a v1 hierarchy."""
        return frozenset(c for c in self.v1_mounts if not c.startswith("name="))

    @property
    def available_controllers(self) -> frozenset[str]:
        """Controllers usable through either hierarchy."""
        return self.v1_controllers | self.unified_controllers

    def v1_mount(self, controller: str) -> str | None:
        return self.v1_mounts.get(controller)


def _unescape(path: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space, ...)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), path)


def _read_enabled_controllers() -> frozenset[str]:
    enabled = set()
    try:
        with open(PROC_CGROUPS) as f:
            for line in f:
                if line.startswith("#"):
                    continue
                parts = line.split()
                if len(parts) >= 4 and parts[3] == "1":
                    enabled.add(parts[0])
    except FileNotFoundError:
        pass
    return frozenset(enabled)


def parse_cgroup_mounts(mountinfo: str, enabled: frozenset[str]
                        ) -> tuple[dict[str, str], str | None]:
    """Return (v1 controller → mount point, cgroup2 mount point) from mountinfo text.

    The first mount of a hierarchy whose root is ``/`` wins, so bind mounts of sub-groups (as found
    inside containers) are only used when nothing better exists.
    """
    v1: dict[str, tuple[str, bool]] = {}
    unified: tuple[str, bool] | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
        fstype, superopts = rfields[0], rfields[2].split(",")
        whole = root == "/"
        if fstype == "cgroup2":
            if unified is None or (whole and not unified[1]):
                unified = (mountpoint, whole)
        elif fstype == "cgroup":
            for opt in superopts:
                if opt in enabled or opt.startswith("name="):
                    known = v1.get(opt)
                    if known is None or (whole and not known[1]):
                        v1[opt] = (mountpoint, whole)
    return ({c: m for c, (m, _) in v1.items()}, unified[0] if unified else None)


@functools.cache
def cgroup_layout() -> CgroupLayout:
    """Probe the cgroup mode, the mount point of every hierarchy and the available controllers."""
    enabled = _read_enabled_controllers()
    try:
        with open(MOUNTINFO) as f:
            text = f.read()
    except OSError:
        text = ""
    v1, unified = parse_cgroup_mounts(text, enabled)
    unified_controllers: frozenset[str] = frozenset()
    if unified is not None:
        try:
            with open(os.path.join(unified, "cgroup.controllers")) as f:
                unified_controllers = frozenset(f.read().split())
        except OSError:
            pass
    has_v1 = any(not c.startswith("name=") for c in v1)
    if has_v1 and unified is not None:
        mode = "hybrid"
    elif has_v1:
        mode = "v1"
    elif unified is not None:
        mode = "v2"
    else:
        mode = "none"
    return CgroupLayout(mode=mode, v1_mounts=MappingProxyType(v1), unified_mount=unified,
                        unified_controllers=unified_controllers, enabled_controllers=enabled)


@functools.cache
def bpf_cgroup_device() -> str | None:
    """Can a BPF_PROG_TYPE_CGROUP_DEVICE program be loaded? ``None`` if yes, else the reason.

    cgroup v2 has no devices controller; device rules are enforced by such a program attached to
    the container's cgroup. The probe loads a two-instruction "allow" program and closes it.
    """
    allow_all = bytes([0xB7, 0x00, 0, 0, 1, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])  # r0 = 1; exit
    try:
        fd = libc.bpf_prog_load(libc.BPF_PROG_TYPE_CGROUP_DEVICE, allow_all,
                                expected_attach_type=libc.BPF_CGROUP_DEVICE)
    except OSError as e:
        if e.errno == errno.ENOSYS:
            return "the kernel has no bpf(2) system call (CONFIG_BPF_SYSCALL)"
        if e.errno == errno.EPERM:
            return "loading BPF programs is not permitted (needs CAP_BPF or CAP_SYS_ADMIN)"
        if e.errno == errno.EINVAL:
            return "the kernel has no cgroup device programs (CONFIG_CGROUP_BPF)"
        return f"bpf(BPF_PROG_LOAD) failed: {os.strerror(e.errno or 0)}"
    os.close(fd)
    return None
