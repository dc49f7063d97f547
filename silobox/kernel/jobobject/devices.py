"""Device access rules of a job object, for both cgroup versions.

Windows containers see only the devices HCS maps into the silo. On Linux the same guarantee comes
from the cgroup device check the kernel does on open(2) and mknod(2) of a device node: the v1
``devices`` controller takes the rules as text lines; cgroup v2 has no devices controller, so the
rules are compiled into a BPF_PROG_TYPE_CGROUP_DEVICE program attached to the cgroup directory.
Both are built from one rule list, :data:`DEFAULT_DEVICE_RULES` (Docker's default set), so the two
backends enforce the same policy.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

from silobox.errors import InvalidArgument, SystemFailure, Unavailable
from silobox.kernel import libc

_ACCESS_BITS = {"m": 1, "r": 2, "w": 4}   # BPF_DEVCG_ACC_MKNOD / _READ / _WRITE
_TYPE_CODES = {"b": 1, "c": 2}            # BPF_DEVCG_DEV_BLOCK / _CHAR


@dataclass(frozen=True)
class DeviceRule:
    """One allow/deny line: device type (``a`` all, ``c`` char, ``b`` block), numbers, access.

    ``major``/``minor`` of ``None`` match any number (``*``). ``access`` is a subset of ``rwm``.
    """

    allow: bool
    type: str = "a"
    major: int | None = None
    minor: int | None = None
    access: str = "rwm"

    def __post_init__(self) -> None:
        if self.type not in ("a", "b", "c"):
            raise InvalidArgument(f"device rule type must be 'a', 'b' or 'c', not {self.type!r}")
        if not self.access or set(self.access) - set("rwm"):
            raise InvalidArgument("device rule access must be a subset of 'rwm', "
                                  f"not {self.access!r}")
        if self.major is not None and not 0 <= self.major < 1 << 12:
            raise InvalidArgument(f"device major number out of range (0-4095): {self.major}")
        if self.minor is not None and not 0 <= self.minor < 1 << 20:
            raise InvalidArgument(f"device minor number out of range (0-1048575): {self.minor}")

    @property
    def access_mask(self) -> int:
        return sum(_ACCESS_BITS[a] for a in set(self.access))

    def v1_entries(self) -> list[str]:
        """Lines for ``devices.allow``/``devices.deny`` (``c 1:3 rwm``; ``a`` for everything).

        v1 only knows ``a`` as "all devices, all access", so a wildcard with partial access is
        written as one line per device type.
        """
        access = "".join(a for a in "rwm" if a in self.access)
        if self.type == "a":
            return ["a"] if access == "rwm" else [f"b *:* {access}", f"c *:* {access}"]
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return [f"{self.type} {major}:{minor} {access}"]

    @classmethod
    def parse(cls, text: str, allow: bool = True) -> DeviceRule:
        """Parse a v1-style line (``c 1:3 rwm``, ``b 8:* r``, ``a``)."""
        parts = text.split()
        if parts == ["a"] or parts[:2] == ["a", "*:*"]:
            return cls(allow, "a", None, None, parts[2] if len(parts) > 2 else "rwm")
        if len(parts) not in (2, 3) or ":" not in parts[1]:
            raise InvalidArgument(f"malformed device rule {text!r}; expected e.g. 'c 1:3 rwm'")
        major_s, _, minor_s = parts[1].partition(":")
        try:
            major = None if major_s == "*" else int(major_s)
            minor = None if minor_s == "*" else int(minor_s)
        except ValueError:
            raise InvalidArgument(f"malformed device numbers in rule {text!r}") from None
        return cls(allow, parts[0], major, minor, parts[2] if len(parts) == 3 else "rwm")


def _allow_char(major: int | None, minor: int | None, access: str = "rwm") -> DeviceRule:
    return DeviceRule(True, "c", major, minor, access)


DEFAULT_DEVICE_RULES: tuple[DeviceRule, ...] = (
    DeviceRule(False, "a"),               # deny everything, then open up Docker's default set
    _allow_char(None, None, "m"),         # mknod of any char device (not block devices)
    _allow_char(1, 3),                    # /dev/null
    _allow_char(1, 5),                    # /dev/zero
    _allow_char(1, 7),                    # /dev/full
    _allow_char(1, 8),                    # /dev/random
    _allow_char(1, 9),                    # /dev/urandom
    _allow_char(5, 0),                    # /dev/tty
    _allow_char(5, 1),                    # /dev/console
    _allow_char(5, 2),                    # /dev/ptmx
    _allow_char(136, None),               # /dev/pts/*
    _allow_char(10, 200),                 # /dev/net/tun
)
"""Docker's default device policy. Block devices cannot even be created (no ``b *:* m``)."""

PRIVILEGED_DEVICE_RULES: tuple[DeviceRule, ...] = (DeviceRule(True, "a"),)


def effective_rules(privileged: bool, extra: tuple[DeviceRule, ...] = ()) -> tuple[DeviceRule, ...]:
    """The full rule list of a job object: privileged allows all, else defaults + extra rules."""
    if privileged:
        return PRIVILEGED_DEVICE_RULES
    return DEFAULT_DEVICE_RULES + tuple(extra)


def v1_expected_list(rules: tuple[DeviceRule, ...]) -> set[str] | None:
    """What ``devices.list`` shows once ``rules`` are applied to a v1 group, if predictable.

    Exact for the shapes :func:`effective_rules` produces (a leading deny-all or allow-all followed
    by allows); ``None`` otherwise. Used to skip rewriting rules that are already in place.
    """
    shown: set[str] = set()
    for rule in rules:
        if rule.type == "a" and rule.access_mask == 7:
            shown = {"a *:* rwm"} if rule.allow else set()
        elif rule.allow and rule.type != "a":
            shown.update(rule.v1_entries())
        else:
            return None  # partial-access wildcards and later denies edit entries in place
    return shown


# --- cgroup v2: the rules as an eBPF program --------------------------------------------------
#
# The program gets a struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; } in r1,
# where access_type = (access bits << 16) | device type. It returns 1 to allow, 0 to deny.
# Rules are checked from the last to the first and the first match decides; nothing matching
# means deny. An allow rule matches when it grants every requested access bit, a deny rule when it
# names any of them. For the lists effective_rules() builds (deny-all or allow-all first, then
# specific rules) this is exactly what the v1 devices controller decides for the same list.
# Registers: r2 = device type, r3 = requested access bits, r4 = major, r5 = minor, r6 scratch.

_R0, _R1, _R2, _R3, _R4, _R5, _R6 = range(7)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _ldx_w(dst: int, src: int, off: int) -> bytes:       # dst = *(u32 *)(src + off)
    return _insn(0x61, dst, src, off)


def _mov_imm(dst: int, imm: int) -> bytes:               # dst = imm (64-bit)
    return _insn(0xB7, dst, imm=imm)


def _mov_reg(dst: int, src: int) -> bytes:               # dst = src (64-bit)
    return _insn(0xBF, dst, src)


def _and_imm(dst: int, imm: int) -> bytes:               # dst &= imm (32-bit, zero-extends)
    return _insn(0x54, dst, imm=imm)


def _rsh_imm(dst: int, imm: int) -> bytes:               # dst >>= imm (32-bit)
    return _insn(0x74, dst, imm=imm)


_JNE_IMM = 0x55      # if dst != imm goto +off (64-bit compare)
_JEQ_IMM = 0x15      # if dst == imm goto +off


def _exit() -> bytes:
    return _insn(0x95)


def _rule_block(rule: DeviceRule) -> list[bytes]:
    """Instructions for one rule; every check jumps past the block when the rule does not match."""
    # (instruction, or the (opcode, register, immediate) of a jump to the next block)
    steps: list[bytes | tuple[int, int, int]] = []
    if rule.type != "a":
        steps.append((_JNE_IMM, _R2, _TYPE_CODES[rule.type]))
    mask = rule.access_mask
    if mask != 7:
        steps.append(_mov_reg(_R6, _R3))
        if rule.allow:    # an allow rule matches when every requested bit is in the rule
            steps.append(_and_imm(_R6, ~mask & 7))
            steps.append((_JNE_IMM, _R6, 0))
        else:             # a deny rule matches when any requested bit is in the rule
            steps.append(_and_imm(_R6, mask))
            steps.append((_JEQ_IMM, _R6, 0))
    if rule.major is not None:
        steps.append((_JNE_IMM, _R4, rule.major))
    if rule.minor is not None:
        steps.append((_JNE_IMM, _R5, rule.minor))
    steps.append(_mov_imm(_R0, 1 if rule.allow else 0))
    steps.append(_exit())
    block = []
    for index, step in enumerate(steps):
        if isinstance(step, tuple):
            code, reg, imm = step
            step = _insn(code, reg, off=len(steps) - index - 1, imm=imm)
        block.append(step)
    return block


def compile_device_filter(rules: tuple[DeviceRule, ...]) -> bytes:
    """Compile a rule list into BPF_PROG_TYPE_CGROUP_DEVICE instructions."""
    prologue = [
        _ldx_w(_R2, _R1, 0), _and_imm(_R2, 0xFFFF),          # device type
        _ldx_w(_R3, _R1, 0), _rsh_imm(_R3, 16),              # access bits
        _ldx_w(_R4, _R1, 4),                                 # major
        _ldx_w(_R5, _R1, 8),                                 # minor
    ]
    body: list[bytes] = []
    for rule in reversed(rules):
        body.extend(_rule_block(rule))
        if rule.type == "a" and rule.access_mask == 7:
            break  # matches everything: earlier rules are unreachable
    else:
        body.extend([_mov_imm(_R0, 0), _exit()])
    return b"".join(prologue + body)


def _detach_all(cgroup_fd: int, keep: int | None = None) -> None:
    for prog_id in libc.bpf_prog_query(cgroup_fd, libc.BPF_CGROUP_DEVICE):
        if prog_id == keep:
            continue
        try:
            old = libc.bpf_prog_get_fd_by_id(prog_id)
        except OSError as e:
            if e.errno == errno.ENOENT:
                continue
            raise
        try:
            libc.bpf_prog_detach(cgroup_fd, old, libc.BPF_CGROUP_DEVICE)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
        finally:
            os.close(old)


def apply_device_filter(cgroup_dir: str, rules: tuple[DeviceRule, ...]) -> None:
    """Make ``rules`` the device policy of a v2 cgroup, replacing any filter we attached before.

    The new program is attached first (several may coexist with BPF_F_ALLOW_MULTI), then the old
    ones are detached, so the group is never without a filter. Allow-all rules mean no program.
    """
    try:
        cgroup_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SystemFailure(f"cgroup {cgroup_dir} vanished while setting its device filter"
                            ) from None
    try:
        if rules == PRIVILEGED_DEVICE_RULES:
            _detach_all(cgroup_fd)
            return
        insns = compile_device_filter(rules)
        try:
            prog_fd = libc.bpf_prog_load(libc.BPF_PROG_TYPE_CGROUP_DEVICE, insns,
                                         expected_attach_type=libc.BPF_CGROUP_DEVICE,
                                         name="silobox_dev")
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EPERM):
                raise Unavailable(f"cannot load the cgroup device filter: {e.strerror}; cgroup v2 "
                                  "needs bpf(2) with CAP_BPF or CAP_SYS_ADMIN to restrict devices",
                                  cause=e) from e
            raise SystemFailure(f"loading the cgroup device filter failed: {e.strerror}",
                                cause=e) from e
        try:
            libc.bpf_prog_attach(cgroup_fd, prog_fd, libc.BPF_CGROUP_DEVICE,
                                 libc.BPF_F_ALLOW_MULTI)
            _detach_all(cgroup_fd, keep=libc.bpf_prog_id(prog_fd))
        except OSError as e:
            raise SystemFailure(f"attaching the device filter to {cgroup_dir} failed: "
                                f"{e.strerror}", cause=e) from e
        finally:
            os.close(prog_fd)
    finally:
        os.close(cgroup_fd)


def copy_device_filters(source_dir: str, target_dir: str) -> None:
    """Attach the device programs of one v2 cgroup to another (a job object's rename on v2)."""
    target_fd = os.open(target_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for prog_id in attached_device_filters(source_dir):
            prog_fd = libc.bpf_prog_get_fd_by_id(prog_id)
            try:
                libc.bpf_prog_attach(target_fd, prog_fd, libc.BPF_CGROUP_DEVICE,
                                     libc.BPF_F_ALLOW_MULTI)
            finally:
                os.close(prog_fd)
    finally:
        os.close(target_fd)


def attached_device_filters(cgroup_dir: str) -> list[int]:
    """Ids of the device programs attached to a v2 cgroup (for inspection and tests)."""
    fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return libc.bpf_prog_query(fd, libc.BPF_CGROUP_DEVICE)
    finally:
        os.close(fd)
