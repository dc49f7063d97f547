"""The syscall filter of a container (Windows' per-silo syscall/Win32k filtering), via seccomp.

Profiles use Docker's JSON format: ``defaultAction``/``defaultErrnoRet``, ``archMap`` or
``architectures``, and ``syscalls`` entries with ``names``, ``action``, ``errnoRet``, ``args``
and conditional ``includes``/``excludes`` (capabilities, architectures, minimum kernel).

Work is split the way the rest of the sandbox is:

* daemon side: ``default_profile`` / ``load_profile`` give a validated profile dict;
  ``compile_profile`` evaluates the conditions against the container's capabilities and this
  host, builds the filter with libseccomp (through pyseccomp, imported on first compile) and
  returns classic BPF bytes. Results are cached, because every container start compiles.
* child side: ``apply_seccomp`` is one ``seccomp(2)`` call, the last step before exec.

Like runc, the compiled program starts with a short stub of our own: syscalls newer than
anything the profile names get ``ENOSYS`` instead of the default errno (so libc falls back to
older calls instead of failing), and syscalls this libseccomp cannot name yet (see
``LATE_SYSCALLS``) still get the action the profile asks for. Names that neither libseccomp nor
that table know are skipped, as Docker does, so a profile written for a newer kernel still loads.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import platform
import re
import struct
import threading
from typing import Any, Iterable, NamedTuple

from silobox import jsonlimits
from silobox.errors import InvalidArgument, SystemFailure, Unavailable
from silobox.kernel import libc
from silobox.kernel.sandbox import seccomp_default as D

# ----- vocabulary of the profile format ------------------------------------------------------

_RET_KILL_PROCESS = 0x80000000
_RET_KILL_THREAD = 0x00000000
_RET_TRAP = 0x00030000
_RET_ERRNO = 0x00050000
_RET_TRACE = 0x7FF00000
_RET_LOG = 0x7FFC0000
_RET_ALLOW = 0x7FFF0000

ACTIONS: tuple[str, ...] = (
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
)
_ALLOW_LIKE = frozenset({"SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE"})

OPERATORS: dict[str, int] = {   # libseccomp's enum scmp_compare
    "SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7,
}

# libseccomp's architecture tokens (AUDIT_ARCH_* values, except x32's made-up one) and the short
# names Docker profiles use in includes/excludes ``arches``.
_EM_X86_64, _EM_386, _EM_ARM, _EM_AARCH64 = 62, 3, 40, 183
_64BIT, _LE = 0x80000000, 0x40000000
ARCHES: dict[str, tuple[int, str]] = {
    "SCMP_ARCH_X86": (_EM_386 | _LE, "x86"),
    "SCMP_ARCH_X86_64": (_EM_X86_64 | _64BIT | _LE, "amd64"),
    "SCMP_ARCH_X32": (_EM_X86_64 | _LE, "x32"),
    "SCMP_ARCH_ARM": (_EM_ARM | _LE, "arm"),
    "SCMP_ARCH_AARCH64": (_EM_AARCH64 | _64BIT | _LE, "arm64"),
    "SCMP_ARCH_MIPS": (8, "mips"),
    "SCMP_ARCH_MIPS64": (8 | _64BIT, "mips64"),
    "SCMP_ARCH_MIPS64N32": (8 | _64BIT | 0x20000000, "mips64n32"),
    "SCMP_ARCH_MIPSEL": (8 | _LE, "mipsel"),
    "SCMP_ARCH_MIPSEL64": (8 | _64BIT | _LE, "mipsel64"),
    "SCMP_ARCH_MIPSEL64N32": (8 | _64BIT | _LE | 0x20000000, "mipsel64n32"),
    "SCMP_ARCH_PPC": (20, "ppc"),
    "SCMP_ARCH_PPC64": (21 | _64BIT, "ppc64"),
    "SCMP_ARCH_PPC64LE": (21 | _64BIT | _LE, "ppc64le"),
    "SCMP_ARCH_S390": (22, "s390"),
    "SCMP_ARCH_S390X": (22 | _64BIT, "s390x"),
    "SCMP_ARCH_PARISC": (15, "parisc"),
    "SCMP_ARCH_PARISC64": (15 | _64BIT, "parisc64"),
    "SCMP_ARCH_RISCV64": (243 | _64BIT | _LE, "riscv64"),
    "SCMP_ARCH_LOONGARCH64": (258 | _64BIT | _LE, "loong64"),
}
_MACHINE_TO_ARCH = {
    "x86_64": "SCMP_ARCH_X86_64", "i686": "SCMP_ARCH_X86", "i386": "SCMP_ARCH_X86",
    "aarch64": "SCMP_ARCH_AARCH64", "armv7l": "SCMP_ARCH_ARM", "armv8l": "SCMP_ARCH_ARM",
    "ppc64le": "SCMP_ARCH_PPC64LE", "ppc64": "SCMP_ARCH_PPC64", "s390x": "SCMP_ARCH_S390X",
    "riscv64": "SCMP_ARCH_RISCV64", "mips64": "SCMP_ARCH_MIPSEL64",
    "loongarch64": "SCMP_ARCH_LOONGARCH64",
}

FLAGS: dict[str, int] = {   # seccomp(2) SECCOMP_FILTER_FLAG_*
    "SECCOMP_FILTER_FLAG_TSYNC": 0,   # accepted and ignored, as runc does: the child has one thread
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 32,
}

MAX_ERRNO = 4095
_X32_BIT = 0x40000000

# Syscalls the libseccomp on this machine (2.5.4) cannot name yet, by architecture. Since Linux
# 5.1 new syscalls get one number on every architecture (x32 adds its ABI bit). Only used when
# libseccomp does not resolve the name itself.
_GENERIC_LATE = {
    "statmount": 457, "listmount": 458, "lsm_get_self_attr": 459, "lsm_set_self_attr": 460,
    "lsm_list_modules": 461, "mseal": 462, "setxattrat": 463, "getxattrat": 464,
    "listxattrat": 465, "removexattrat": 466, "open_tree_attr": 467, "file_getattr": 468,
    "file_setattr": 469,
}
LATE_SYSCALLS: dict[str, dict[str, int]] = {
    name: {"SCMP_ARCH_X86_64": nr, "SCMP_ARCH_X86": nr, "SCMP_ARCH_X32": _X32_BIT | nr,
           "SCMP_ARCH_AARCH64": nr, "SCMP_ARCH_ARM": nr}
    for name, nr in _GENERIC_LATE.items()
}
LATE_SYSCALLS["uretprobe"] = {"SCMP_ARCH_X86_64": 335}

# Architectures whose filter gets the ENOSYS/late-syscall stub (seccomp_data.arch values).
_STUB_ARCHES = ("SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64",
                "SCMP_ARCH_ARM")

_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")
_KERNEL = re.compile(r"([0-9]+)\.([0-9]+)\Z")


def native_arch() -> str:
    """The running architecture as a libseccomp name (``SCMP_ARCH_X86_64`` here)."""
    machine = platform.machine()
    try:
        return _MACHINE_TO_ARCH[machine]
    except KeyError:
        raise Unavailable(f"seccomp: architecture {machine} is not supported") from None


def _kernel_version() -> tuple[int, int]:
    m = re.match(r"([0-9]+)\.([0-9]+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


# ----- the default profile -------------------------------------------------------------------

def default_profile() -> dict:
    """Docker's default profile, in Docker's JSON format, built from ``seccomp_default``.

    A fresh dict each call: callers may store or change it.
    """
    allow = "SCMP_ACT_ALLOW"
    syscalls: list[dict[str, Any]] = [{"names": list(D.ALWAYS_ALLOWED), "action": allow}]
    for version, names in D.MIN_KERNEL_ALLOWED:
        syscalls.append({"names": list(names), "action": allow,
                         "includes": {"minKernel": version}})
    for op, family in D.SOCKET_FAMILIES_ALLOWED:
        syscalls.append({"names": ["socket"], "action": allow,
                         "args": [{"index": 0, "value": family, "valueTwo": 0, "op": op}]})
    for persona in D.PERSONALITIES_ALLOWED:
        syscalls.append({"names": ["personality"], "action": allow,
                         "args": [{"index": 0, "value": persona, "valueTwo": 0,
                                   "op": "SCMP_CMP_EQ"}]})
    for arches, names in D.ARCH_ALLOWED:
        syscalls.append({"names": list(names), "action": allow,
                         "includes": {"arches": list(arches)}})
    for cap, names in D.CAPABILITY_ALLOWED:
        syscalls.append({"names": list(names), "action": allow, "includes": {"caps": [cap]}})
    s390 = [a for a, index in D.CLONE_FLAGS_ARG.items() if index != D.CLONE_FLAGS_ARG["default"]]
    syscalls.append({
        "names": ["clone"], "action": allow,
        "args": [{"index": D.CLONE_FLAGS_ARG["default"], "value": D.CLONE_NAMESPACE_FLAGS,
                  "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": s390},
    })
    syscalls.append({
        "names": ["clone"], "action": allow,
        "args": [{"index": D.CLONE_FLAGS_ARG["s390x"], "value": D.CLONE_NAMESPACE_FLAGS,
                  "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        "comment": "s390 passes the clone flags as the second argument",
        "includes": {"arches": s390}, "excludes": {"caps": ["CAP_SYS_ADMIN"]},
    })
    syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": D.ENOSYS,
                     "excludes": {"caps": ["CAP_SYS_ADMIN"]}})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": D.DEFAULT_ERRNO,
        "archMap": [{"architecture": a, "subArchitectures": list(subs)} for a, subs in D.ARCH_MAP],
        "syscalls": syscalls,
    }


# ----- validation ----------------------------------------------------------------------------

class _Arg(NamedTuple):
    index: int
    op: str
    value: int
    value_two: int


class _Filter(NamedTuple):
    caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None


class _Rule(NamedTuple):
    names: tuple[str, ...]
    action: str
    errno: int | None
    args: tuple[_Arg, ...]
    includes: _Filter | None
    excludes: _Filter | None


class _Profile(NamedTuple):
    default_action: str
    default_errno: int | None
    architectures: tuple[str, ...] | None      # flat list, or
    arch_map: tuple[tuple[str, tuple[str, ...]], ...] | None
    rules: tuple[_Rule, ...]
    flags: int
    disabled: bool


def _bad(where: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"invalid seccomp profile: {where}: {what}")


def _keys(obj: dict, known: Iterable[str]) -> dict[str, Any]:
    """Match keys case-insensitively, as Go's JSON decoder does; ignore unknown keys."""
    canon = {k.lower(): k for k in known}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        c = canon.get(k.lower()) if isinstance(k, str) else None
        if c is not None:
            out[c] = v
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _uint(v: Any, where: str, bits: int = 64) -> int:
    if not _is_int(v) or v < 0 or v >= 1 << bits:
        raise _bad(where, f"{v!r} is not an unsigned {bits}-bit integer")
    return v


def _str_list(v: Any, where: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise _bad(where, "must be a list of strings")
    return tuple(v)


def _action(v: Any, where: str) -> str:
    if not isinstance(v, str) or v not in ACTIONS:
        raise _bad(where, f"unknown action {v!r} (known: {', '.join(ACTIONS)})")
    if v == "SCMP_ACT_NOTIFY":
        raise _bad(where, "SCMP_ACT_NOTIFY needs a seccomp agent, which silobox does not run")
    return v


def _errno(v: Any, where: str) -> int | None:
    if v is None:
        return None
    if not _is_int(v) or not 0 <= v <= MAX_ERRNO:
        raise _bad(where, f"{v!r} is not an errno (0-{MAX_ERRNO})")
    return v


def _arch(v: Any, where: str) -> str:
    if not isinstance(v, str) or v not in ARCHES:
        raise _bad(where, f"unknown architecture {v!r}")
    return v


def _filter(v: Any, where: str) -> _Filter | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _bad(where, "must be an object")
    f = _keys(v, ("caps", "arches", "minKernel"))
    min_kernel = None
    mk = f.get("minKernel")
    if mk not in (None, ""):
        m = _KERNEL.match(mk) if isinstance(mk, str) else None
        if not m or int(m.group(1)) > 255 or int(m.group(2)) > 255 \
                or (int(m.group(1)), int(m.group(2))) == (0, 0):
            raise _bad(f"{where}.minKernel", f'invalid kernel version {mk!r}, expected '
                                             '"<kernel>.<major>"')
        min_kernel = (int(m.group(1)), int(m.group(2)))
    return _Filter(_str_list(f.get("caps"), f"{where}.caps"),
                   _str_list(f.get("arches"), f"{where}.arches"), min_kernel)


def _args(v: Any, where: str) -> tuple[_Arg, ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise _bad(where, "must be a list")
    if len(v) > 6:
        raise _bad(where, "a syscall has at most 6 argument conditions")
    out = []
    for i, raw in enumerate(v):
        w = f"{where}[{i}]"
        if not isinstance(raw, dict):
            raise _bad(w, "must be an object")
        a = _keys(raw, ("index", "value", "valueTwo", "op"))
        index = a.get("index", 0)
        if not _is_int(index) or not 0 <= index <= 5:
            raise _bad(f"{w}.index", f"{index!r} is not a syscall argument index (0-5)")
        op = a.get("op")
        if op not in OPERATORS:
            raise _bad(f"{w}.op", f"unknown operator {op!r} (known: {', '.join(OPERATORS)})")
        out.append(_Arg(index, op, _uint(a.get("value", 0), f"{w}.value"),
                        _uint(a.get("valueTwo", 0), f"{w}.valueTwo")))
    return tuple(out)


def _rule(raw: Any, where: str) -> _Rule:
    if not isinstance(raw, dict):
        raise _bad(where, "must be an object")
    r = _keys(raw, ("name", "names", "action", "errnoRet", "args", "includes", "excludes",
                    "comment"))
    names = _str_list(r.get("names"), f"{where}.names")
    if r.get("name"):
        if names:
            raise _bad(where, "both 'name' and 'names' are specified in the seccomp profile, "
                              "use either 'name' or 'names'")
        if not isinstance(r["name"], str):
            raise _bad(f"{where}.name", "must be a string")
        names = (r["name"],)
    for n in names:
        if not _NAME.match(n):
            raise _bad(f"{where}.names", f"{n!r} is not a syscall name")
    return _Rule(names, _action(r.get("action"), f"{where}.action"),
                 _errno(r.get("errnoRet"), f"{where}.errnoRet"),
                 _args(r.get("args"), f"{where}.args"),
                 _filter(r.get("includes"), f"{where}.includes"),
                 _filter(r.get("excludes"), f"{where}.excludes"))


def _parse(profile: Any) -> _Profile:
    if not isinstance(profile, dict):
        raise InvalidArgument("invalid seccomp profile: the document must be a JSON object")
    p = _keys(profile, ("defaultAction", "defaultErrnoRet", "architectures", "archMap",
                        "syscalls", "flags", "listenerPath", "listenerMetadata"))
    raw_calls = p.get("syscalls")
    if raw_calls is not None and not isinstance(raw_calls, list):
        raise _bad("syscalls", "must be a list")
    raw_calls = raw_calls or []
    if not p.get("defaultAction") and not raw_calls:
        return _Profile("", None, None, None, (), 0, disabled=True)   # Docker: seccomp disabled
    if not p.get("defaultAction"):
        raise _bad("defaultAction", "is required when syscalls are listed")
    default = _action(p["defaultAction"], "defaultAction")
    if p.get("listenerPath"):
        raise _bad("listenerPath", "seccomp agents are not supported by silobox")
    arches = p.get("architectures")
    arch_map = p.get("archMap")
    if arches and arch_map:
        raise _bad("architectures", "both 'architectures' and 'archMap' are specified in the "
                                    "seccomp profile, use either 'architectures' or 'archMap'")
    flat = None
    if arches:
        flat = tuple(_arch(a, f"architectures[{i}]")
                     for i, a in enumerate(_str_list(arches, "architectures")))
    mapped = None
    if arch_map:
        if not isinstance(arch_map, list):
            raise _bad("archMap", "must be a list")
        entries = []
        for i, e in enumerate(arch_map):
            if not isinstance(e, dict):
                raise _bad(f"archMap[{i}]", "must be an object")
            m = _keys(e, ("architecture", "subArchitectures"))
            subs = _str_list(m.get("subArchitectures"), f"archMap[{i}].subArchitectures")
            entries.append((_arch(m.get("architecture"), f"archMap[{i}].architecture"),
                            tuple(_arch(s, f"archMap[{i}].subArchitectures") for s in subs)))
        mapped = tuple(entries)
    flags = 0
    for i, fl in enumerate(_str_list(p.get("flags"), "flags")):
        if fl not in FLAGS:
            raise _bad(f"flags[{i}]", f"unknown flag {fl!r} (known: {', '.join(FLAGS)})")
        flags |= FLAGS[fl]
    rules = tuple(_rule(c, f"syscalls[{i}]") for i, c in enumerate(raw_calls))
    return _Profile(default, _errno(p.get("defaultErrnoRet"), "defaultErrnoRet"), flat, mapped,
                    rules, flags, disabled=False)


def load_profile(text: str) -> dict:
    """Parse and check a user profile (``--security-opt seccomp=<json>``); return it as a dict.

    Raises InvalidArgument naming the offending field. Syscall names unknown on this host are
    accepted (and skipped when compiling), so a profile written for newer kernels still works.
    """
    try:
        profile = jsonlimits.loads(text)
    except (ValueError, TypeError) as e:
        raise InvalidArgument(f"Decoding seccomp profile failed: {e}") from None
    _parse(profile)
    return profile


def load_flags(profile: dict) -> int:
    """The ``SECCOMP_FILTER_FLAG_*`` bits a profile asks for (pass them to ``apply_seccomp``)."""
    return _parse(profile).flags


# ----- evaluation against a container --------------------------------------------------------

def _applies(rule: _Rule, caps: frozenset[str], arch: str, kernel: tuple[int, int]) -> bool:
    """Docker's includes/excludes: excludes by any listed cap/arch or a new enough kernel;
    includes need every listed cap, the arch among the listed ones, and the kernel version."""
    ex = rule.excludes
    if ex is not None:
        if ex.arches and arch in ex.arches:
            return False
        if ex.caps and any(c in caps for c in ex.caps):
            return False
        if ex.min_kernel is not None and kernel >= ex.min_kernel:
            return False
    inc = rule.includes
    if inc is not None:
        if inc.arches and arch not in inc.arches:
            return False
        if inc.caps and not all(c in caps for c in inc.caps):
            return False
        if inc.min_kernel is not None and kernel < inc.min_kernel:
            return False
    return True


def _filter_arches(p: _Profile, native: str) -> list[str]:
    """Native first, then the compat ABIs the profile lists for it (Docker's archMap rule)."""
    out = [native]
    if p.architectures:
        out += p.architectures
    elif p.arch_map:
        for arch, subs in p.arch_map:
            if arch == native:
                out += subs
                break
    return list(dict.fromkeys(out))


def _ret(action: str, errno_ret: int | None) -> int:
    """The SECCOMP_RET_* value of an action (runc's mapping: KILL is KILL_THREAD, ERRNO and
    TRACE default to EPERM)."""
    if action in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return _RET_KILL_THREAD
    if action == "SCMP_ACT_KILL_PROCESS":
        return _RET_KILL_PROCESS
    if action == "SCMP_ACT_TRAP":
        return _RET_TRAP
    if action == "SCMP_ACT_ERRNO":
        return _RET_ERRNO | (D.DEFAULT_ERRNO if errno_ret is None else errno_ret)
    if action == "SCMP_ACT_TRACE":
        return _RET_TRACE | (D.DEFAULT_ERRNO if errno_ret is None else errno_ret)
    if action == "SCMP_ACT_LOG":
        return _RET_LOG
    return _RET_ALLOW


_DENY_RETS = (_RET_KILL_THREAD, _RET_KILL_PROCESS, _RET_TRAP)

# What the child still calls after the filter is loaded: without no_new_privs the filter goes in
# before the capability drop and the user switch (loading it needs CAP_SYS_ADMIN then).
_NEEDED_AFTER_LOAD = ("capset", "prctl", "setgroups", "setgid", "setuid", "chdir", "execve")
_NEEDED_AFTER_LOAD_NNP = ("execve",)


def _denied(ret: int) -> bool:
    return ret in _DENY_RETS or ret & 0xFFFF0000 == _RET_ERRNO


def _check_setup_calls(default_ret: int, rules: list[tuple[str, int, tuple[_Arg, ...]]],
                       no_new_privs: bool) -> None:
    outcome: dict[str, int | None] = {}
    for name, ret, args in rules:
        if args:
            outcome.setdefault(name, None)        # depends on arguments: cannot tell
        elif outcome.get(name) is None:
            outcome[name] = ret
    needed = _NEEDED_AFTER_LOAD_NNP if no_new_privs else _NEEDED_AFTER_LOAD
    blocked = []
    for name in needed:
        ret = outcome[name] if name in outcome else default_ret
        if ret is not None and _denied(ret):
            blocked.append(name)
    if blocked:
        hint = ("" if no_new_privs else "; or set no-new-privileges, so the filter is loaded "
                "only just before exec")
        raise InvalidArgument(f"seccomp profile blocks {', '.join(blocked)}, which the "
                              f"container's start needs after the filter is loaded: allow "
                              f"{'it' if len(blocked) == 1 else 'them'}{hint}")


# ----- building BPF --------------------------------------------------------------------------

_seccomp_lib: Any = None


def _lib() -> Any:
    """pyseccomp, imported on first use: its import costs tens of ms, paid once by the daemon."""
    global _seccomp_lib
    if _seccomp_lib is None:
        try:
            import pyseccomp
        except (ImportError, RuntimeError) as e:
            raise Unavailable(f"seccomp profiles need libseccomp (Debian: libseccomp2): {e}") \
                from None
        _seccomp_lib = pyseccomp
    return _seccomp_lib


class _Fd:
    """What pyseccomp's export wants: something with fileno()."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


def _export(flt: Any) -> bytes:
    fd = os.memfd_create("silobox-seccomp", os.MFD_CLOEXEC)
    try:
        flt.export_bpf(_Fd(fd))
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


# classic BPF opcodes (linux/filter.h)
_LD_W_ABS = 0x20
_JMP_JEQ_K = 0x15
_JMP_JGT_K = 0x25
_JMP_JSET_K = 0x45
_JMP_JA = 0x05
_RET_K = 0x06


def _stub(arch_info: list[tuple[str, int, list[tuple[int, int]]]], enosys: bool) -> bytes:
    """Instructions run before libseccomp's program.

    ``arch_info``: (arch name, largest syscall number the profile names, [(late syscall number,
    SECCOMP_RET value)]) per architecture. For each: late syscalls get their action; numbers
    above the largest named one get ENOSYS (when ``enosys``); everything else falls through to
    the libseccomp program. Jumps are forward only and resolved from symbolic labels.
    """
    prog: list[tuple[int, Any, Any, int]] = []   # (code, jt, jf, k); jt/jf may be labels
    labels: dict[str, int] = {}
    rets: dict[int, str] = {}

    def ret_label(value: int) -> str:
        return rets.setdefault(value, f"ret{len(rets)}")

    by_audit: dict[int, list[tuple[str, int, list[tuple[int, int]]]]] = {}
    for info in arch_info:
        name = info[0]
        audit = ARCHES["SCMP_ARCH_X86_64"][0] if name == "SCMP_ARCH_X32" else ARCHES[name][0]
        by_audit.setdefault(audit, []).append(info)
    prog.append((_LD_W_ABS, 0, 0, 4))                       # A = seccomp_data.arch
    audits = list(by_audit)
    for audit in audits:
        prog.append((_JMP_JEQ_K, f"arch{audit}", 0, audit))
    prog.append((_JMP_JA, 0, 0, "filter"))
    enosys_ret = _RET_ERRNO | D.ENOSYS
    for audit in audits:
        labels[f"arch{audit}"] = len(prog)
        prog.append((_LD_W_ABS, 0, 0, 0))                   # A = seccomp_data.nr
        entries = by_audit[audit]
        if audit == ARCHES["SCMP_ARCH_X86_64"][0]:
            x64 = next((e for e in entries if e[0] == "SCMP_ARCH_X86_64"), None)
            x32 = next((e for e in entries if e[0] == "SCMP_ARCH_X32"), None)
            # x32 calls carry bit 30; without x32 in the filter libseccomp handles them.
            prog.append((_JMP_JSET_K, f"x32_{audit}" if x32 else "filter", 0, _X32_BIT))
            groups = [(x64, None), (x32, f"x32_{audit}")]
        else:
            groups = [(entries[0], None)]
        for entry, label in groups:
            if label is not None:
                labels[label] = len(prog)
            if entry is None:
                prog.append((_JMP_JA, 0, 0, "filter"))
                continue
            _, largest, late = entry
            for nr, ret in late:
                prog.append((_JMP_JEQ_K, ret_label(ret), 0, nr))
            if enosys and largest >= 0:
                prog.append((_JMP_JGT_K, ret_label(enosys_ret), "filter", largest))
            else:
                prog.append((_JMP_JA, 0, 0, "filter"))
    for value, label in rets.items():
        labels[label] = len(prog)
        prog.append((_RET_K, 0, 0, value))
    labels["filter"] = len(prog)

    out = bytearray()
    for pc, (code, jt, jf, k) in enumerate(prog):
        def rel(target: Any) -> int:
            if isinstance(target, str):
                off = labels[target] - pc - 1
                if not 0 <= off <= 255:
                    raise SystemFailure("seccomp stub jump out of range")
                return off
            return target
        if code == _JMP_JA:
            k = labels[k] - pc - 1 if isinstance(k, str) else k
        out += struct.pack("=HBBI", code, rel(jt), rel(jf), k)
    return bytes(out)


def _resolve(lib: Any, arch: str, name: str) -> int | None:
    """The syscall number on one architecture; None if libseccomp does not know the name."""
    nr = lib.resolve_syscall(ARCHES[arch][0], name)
    return None if nr == -1 else nr


def _build(p: _Profile, rules: list[tuple[str, int, tuple[_Arg, ...]]], arches: list[str],
           default_ret: int) -> bytes:
    lib = _lib()
    native = arches[0]
    try:
        flt = lib.SyscallFilter(default_ret)
    except OSError as e:
        raise InvalidArgument(f"invalid seccomp profile: default action rejected: {e}") from None
    for arch in arches[1:]:
        try:
            flt.add_arch(ARCHES[arch][0])
        except OSError as e:
            raise Unavailable(f"seccomp: architecture {arch} is not supported by this host's "
                              f"libseccomp: {e.strerror}") from None
    flt.set_attr(lib.Attr.CTL_NNP, 0)      # no_new_privs is the child's own, explicit step
    if len(rules) > 32:
        try:
            flt.set_attr(lib.Attr.CTL_OPTIMIZE, 2)   # binary tree: fewer instructions per call
        except OSError:
            pass
    largest = {a: -1 for a in arches}
    late: dict[str, dict[int, int]] = {a: {} for a in arches}
    added: set[tuple[str, int, tuple[_Arg, ...]]] = set()
    for name, ret, args in rules:
        for arch in arches:
            nr = _resolve(lib, arch, name)
            if nr is None:
                nr = LATE_SYSCALLS.get(name, {}).get(arch)
                if nr is not None and not args and ret != default_ret:
                    late[arch].setdefault(nr, ret)
            if nr is not None and nr >= 0:
                largest[arch] = max(largest[arch], nr)
        if ret == default_ret:
            continue                  # libseccomp refuses rules that repeat the default
        nr = _resolve(lib, native, name)
        if nr is None or (name, ret, args) in added:
            continue                  # unknown here (late syscalls are in the stub), or repeated
        added.add((name, ret, args))
        conds = [lib.Arg(a.index, OPERATORS[a.op], a.value, a.value_two) for a in args]
        indexes = [a.index for a in args]
        # Conditions on different arguments must all hold; several on the same argument are
        # alternatives (runc's rule), so each becomes a rule of its own.
        groups = [conds] if len(set(indexes)) == len(indexes) else [[c] for c in conds]
        for group in groups:
            try:
                flt.add_rule(ret, nr, *group)
            except OSError as e:
                raise InvalidArgument(f"invalid seccomp profile: cannot add the rule for "
                                      f"{name}: {e.strerror}") from None
    program = _export(flt)
    enosys = (p.default_action not in _ALLOW_LIKE
              and not (p.default_action == "SCMP_ACT_ERRNO" and p.default_errno == D.ENOSYS))
    info = [(a, largest[a], sorted(late[a].items())) for a in arches if a in _STUB_ARCHES]
    if not info or not (enosys or any(i[2] for i in info)):
        return program
    return _stub(info, enosys) + program


# ----- compile with a cache ------------------------------------------------------------------

_CACHE_SIZE = 64
_cache: "collections.OrderedDict[tuple, bytes]" = collections.OrderedDict()
_cache_lock = threading.Lock()


def _fingerprint(profile: dict) -> bytes:
    return hashlib.sha256(json.dumps(profile, sort_keys=True, separators=(",", ":"),
                                     default=str).encode()).digest()


def compile_profile(profile: dict, capabilities: Iterable[str], no_new_privs: bool) -> bytes:
    """Classic BPF for one container: the profile's conditions evaluated for its capabilities
    (the bounding set), this architecture and kernel. Empty bytes: the profile disables seccomp.

    ``no_new_privs`` says when the child loads the filter: without it the filter goes in before
    the capability drop and the user switch, so those calls must stay allowed; a profile that
    blocks them is refused here rather than failing at start.
    """
    caps = frozenset(capabilities)
    key = (_fingerprint(profile), caps, bool(no_new_privs))
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    p = _parse(profile)
    if p.disabled:
        return b""
    native = native_arch()
    arch_short = ARCHES[native][1]
    kernel = _kernel_version()
    default_ret = _ret(p.default_action, p.default_errno)
    rules: list[tuple[str, int, tuple[_Arg, ...]]] = []
    for rule in p.rules:
        if not _applies(rule, caps, arch_short, kernel):
            continue
        ret = _ret(rule.action, rule.errno)
        rules.extend((name, ret, rule.args) for name in rule.names)
    _check_setup_calls(default_ret, rules, no_new_privs)
    bpf = _build(p, rules, _filter_arches(p, native), default_ret)
    with _cache_lock:
        _cache[key] = bpf
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return bpf


def unknown_syscalls(profile: dict) -> list[str]:
    """Names in a profile that this host can not filter (skipped when compiling): for warnings."""
    lib = _lib()
    native = native_arch()
    names = {n for r in _parse(profile).rules for n in r.names}
    return sorted(n for n in names
                  if _resolve(lib, native, n) is None and native not in LATE_SYSCALLS.get(n, {}))


def disassemble(bpf: bytes) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) per instruction, for tests and ``silo sandbox`` views."""
    return [struct.unpack_from("=HBBI", bpf, i) for i in range(0, len(bpf), 8)]


# ----- child side: one syscall ---------------------------------------------------------------

def apply_seccomp(bpf: bytes, flags: int = 0) -> None:
    """Load the compiled filter into the calling thread: the last step before exec.

    Needs no_new_privs set, or CAP_SYS_ADMIN in the effective set. Empty bytes: unconfined.
    """
    if bpf:
        libc.seccomp_load(bpf, flags)
