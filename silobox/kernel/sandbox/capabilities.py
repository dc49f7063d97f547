"""Capabilities: the token privileges of a container process, on Linux.

A Windows container's token has most privileges stripped; a Linux container's root keeps only a
small set of capabilities. The **bounding set** is what really confines a root process: at exec
the kernel recomputes permitted/effective from it, so dropping a capability from the bounding
set removes it for good. Inheritable and ambient stay empty (Docker stopped filling inheritable
after CVE-2022-24769).

The daemon resolves names (``resolve_capabilities``) and turns them into a mask
(``capability_mask``); the container's child only runs the ``apply_*``/``drop_*``/``set_*``
functions, which do nothing but syscalls.
"""

from __future__ import annotations

import errno
import functools
from typing import Iterable

from silobox.errors import InvalidArgument
from silobox.kernel import libc

# Every capability Linux defines (linux/capability.h), by number.
_ALL_NAMES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

# Docker's default set: what a root process in a container may still do (CapBnd a80425fb).
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

ALL = "ALL"


@functools.cache
def last_capability() -> int:
    """The highest capability number the running kernel knows (``cap_last_cap``)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return len(_ALL_NAMES) - 1


def _known() -> dict[str, int]:
    last = last_capability()
    return {name: bit for bit, name in enumerate(_ALL_NAMES) if bit <= last}


CAPABILITIES: dict[str, int] = _known()
"""Capability names the running kernel knows, mapped to their numbers."""


@functools.cache
def host_bounding_set() -> int:
    """The daemon's own bounding set: a container can never hold more than this."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return (1 << (last_capability() + 1)) - 1


def available_capabilities() -> list[str]:
    """Names this host can grant (known to the kernel and in the daemon's bounding set)."""
    bnd = host_bounding_set()
    return [name for name, bit in CAPABILITIES.items() if bnd >> bit & 1]


def normalize(name: str) -> str:
    """``sys_admin``, ``SYS_ADMIN``, ``cap_sys_admin`` → ``CAP_SYS_ADMIN``; ``all`` → ALL."""
    upper = name.strip().upper()
    if upper == ALL:
        return ALL
    return upper if upper.startswith("CAP_") else "CAP_" + upper


def _normalize_list(names: Iterable[str], adding: bool) -> list[str]:
    out: list[str] = []
    bnd = host_bounding_set()
    for raw in names:
        if not isinstance(raw, str):
            raise InvalidArgument(f"capability names must be strings, got {raw!r}")
        name = normalize(raw)
        if name != ALL:
            if name not in CAPABILITIES:
                raise InvalidArgument(f'unknown capability: "{name}"')
            # Dropping a capability the host never had is a no-op; adding one cannot work.
            if adding and not bnd >> CAPABILITIES[name] & 1:
                raise InvalidArgument("capability not supported by your kernel or not available "
                                      f'in the current environment: "{name}"')
        if name not in out:
            out.append(name)
    return out


def resolve_capabilities(add: list[str] | None, drop: list[str] | None,
                         privileged: bool) -> list[str]:
    """The container's capability names from ``--cap-add``/``--cap-drop``/``--privileged``.

    Docker's rules: names are case-insensitive, with or without ``CAP_``; ``ALL`` in add grants
    everything available except what drop lists; ``ALL`` in drop starts from nothing and keeps
    only what add lists; otherwise drop from the default set, then add. Privileged containers get
    every capability of the host's bounding set (never one the daemon itself lacks).
    """
    adds = _normalize_list(add or [], adding=True)
    drops = _normalize_list(drop or [], adding=False)
    available = available_capabilities()
    if privileged:
        return available
    if ALL in adds:
        return [c for c in available if c not in drops]
    if ALL in drops:
        return [c for c in adds if c != ALL]
    caps = [c for c in DEFAULT_CAPABILITIES if c not in drops]
    caps += [c for c in adds if c not in caps]
    return caps


def capability_mask(names: Iterable[str]) -> int:
    """Bit mask of capability names (as the kernel's 64-bit capability sets)."""
    mask = 0
    for raw in names:
        name = normalize(raw)
        if name not in CAPABILITIES:
            raise InvalidArgument(f'unknown capability: "{name}"')
        mask |= 1 << CAPABILITIES[name]
    return mask


def capability_names(mask: int) -> list[str]:
    """The names of the bits set in a mask, in kernel order (for views and tests)."""
    return [name for name, bit in CAPABILITIES.items() if mask >> bit & 1]


# ----- child side: syscalls only -------------------------------------------------------------

def drop_bounding_set(mask: int, last_cap: int) -> None:
    """Drop every capability not in ``mask`` from the bounding set; clear the ambient set.

    Effective and permitted are untouched, so the process can still switch user afterwards.
    EINVAL means the kernel does not know that bit: nothing to drop.
    """
    for cap in range(last_cap + 1):
        if not mask >> cap & 1:
            try:
                libc.prctl(libc.PR_CAPBSET_DROP, cap)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
    try:
        libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as e:
        if e.errno != errno.EINVAL:   # kernels before 4.3 have no ambient set
            raise


def set_capabilities(mask: int) -> None:
    """effective = permitted = ``mask``, inheritable empty."""
    libc.capset(mask, mask, 0)


def apply_capabilities(mask: int, last_cap: int | None = None) -> None:
    """Confine the calling (still root) process to ``mask``: bounding, ambient, then capset.

    Pass ``last_cap`` (from ``last_capability()`` in the daemon) so the child reads no file.
    After this, switching to a non-root user needs CAP_SETUID/CAP_SETGID in ``mask``; when they
    may be absent use ``drop_bounding_set``, switch user, then ``set_capabilities`` (what
    ``sandbox.apply_sandbox`` does).
    """
    drop_bounding_set(mask, last_capability() if last_cap is None else last_cap)
    set_capabilities(mask)
