"""The one ctypes seam to the kernel (the part of ntdll that silobox needs).

Python 3.11 has no ``os.unshare``/``os.setns``/``mount``/``pivot_root``, so the handful of
syscalls that no library covers live here, with the errno checked on every call. Nothing else in
silobox touches ctypes. Functions here are safe to call between ``fork`` and ``exec``: they do
only the syscall and raise ``OSError`` on failure.
"""

from __future__ import annotations

import ctypes
import os
import platform

_libc = ctypes.CDLL(None, use_errno=True)

# Namespace flags (linux/sched.h)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

NAMESPACE_FLAGS = {
    "mnt": CLONE_NEWNS, "cgroup": CLONE_NEWCGROUP, "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC,
    "user": CLONE_NEWUSER, "pid": CLONE_NEWPID, "net": CLONE_NEWNET,
}

# Mount flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_FORCE = 1
MNT_DETACH = 2

# prctl options (linux/prctl.h)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Per-architecture syscall numbers for the calls glibc has no wrapper for in every version.
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "setns": 308, "pidfd_open": 434, "pidfd_send_signal": 424,
               "seccomp": 317, "capset": 126, "capget": 125},
    "aarch64": {"pivot_root": 41, "setns": 268, "pidfd_open": 434, "pidfd_send_signal": 424,
                "seccomp": 277, "capset": 91, "capget": 90},
}
_NR = _SYSCALLS.get(platform.machine(), _SYSCALLS["x86_64"])

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return ret


def _b(s: str | bytes | None) -> bytes | None:
    if s is None or isinstance(s, bytes):
        return s
    return s.encode()


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), "umount", target)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.syscall(_NR["setns"], ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_NR["pivot_root"], _b(new_root), _b(put_old)), "pivot_root", new_root)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), "setdomainname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), "prctl")


def set_process_name(name: str) -> None:
    """Name the calling thread (what ps and top show as COMMAND), at most 15 bytes."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _check(_libc.prctl(PR_SET_NAME, ctypes.cast(buf, ctypes.c_void_p).value or 0, 0, 0, 0),
           "prctl")


def pidfd_open(pid: int) -> int:
    return _check(_libc.syscall(_NR["pidfd_open"], ctypes.c_int(pid), ctypes.c_uint(0)),
                  "pidfd_open")


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    _check(_libc.syscall(_NR["pidfd_send_signal"], ctypes.c_int(pidfd), ctypes.c_int(sig),
                         None, ctypes.c_uint(0)), "pidfd_send_signal")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the three capability sets of the calling thread (64-bit masks)."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(_NR["capset"], ctypes.byref(hdr), ctypes.byref(data)), "capset")


def capget() -> tuple[int, int, int]:
    """Return (effective, permitted, inheritable) of the calling thread."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(_NR["capget"], ctypes.byref(hdr), ctypes.byref(data)), "capget")
    eff = data[0].effective | (data[1].effective << 32)
    prm = data[0].permitted | (data[1].permitted << 32)
    inh = data[0].inheritable | (data[1].inheritable << 32)
    return eff, prm, inh


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_load(bpf: bytes, flags: int = 0) -> None:
    """Load a compiled classic-BPF filter (8 bytes per instruction) into the calling thread."""
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc.syscall(_NR["seccomp"], ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                         ctypes.c_uint(flags), ctypes.byref(prog)), "seccomp")


# bpf(2): cgroup device programs, the cgroup v2 replacement for the v1 devices controller
# (linux/bpf.h). Only the commands the device filter needs are bound.
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_OVERRIDE = 1
BPF_F_ALLOW_MULTI = 2

_BPF_NR = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)


class _BpfProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32)]


class _BpfAttachAttr(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_bpf_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("replace_bpf_fd", ctypes.c_uint32)]


class _BpfQueryAttr(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("query_flags", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("prog_ids", ctypes.c_uint64), ("prog_cnt", ctypes.c_uint32)]


class _BpfGetIdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32),
                ("open_flags", ctypes.c_uint32)]


class _BpfInfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class _BpfProgInfoHead(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("tag", ctypes.c_uint8 * 8)]


def _bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    return _check(_libc.syscall(ctypes.c_long(_BPF_NR), ctypes.c_long(cmd), ctypes.byref(attr),
                                ctypes.c_uint(ctypes.sizeof(attr))), what)


def bpf_prog_load(prog_type: int, insns: bytes, license: str = "Apache-2.0",
                  expected_attach_type: int = 0, name: str = "") -> int:
    """Load eBPF instructions (8 bytes each); return the program fd (close-on-exec).

    On a verifier rejection the OSError message carries the verifier's log.
    """
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(65536)
    attr = _BpfProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8,
                            insns=ctypes.addressof(code), license=ctypes.addressof(lic),
                            prog_name=name.encode()[:15], expected_attach_type=expected_attach_type)
    try:
        return _bpf(BPF_PROG_LOAD, attr, "bpf(BPF_PROG_LOAD)")
    except OSError as first:
        if first.errno not in (22, 13):  # EINVAL, EACCES: rerun with the verifier log
            raise
    attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
    try:
        return _bpf(BPF_PROG_LOAD, attr, "bpf(BPF_PROG_LOAD)")
    except OSError as e:
        detail = log.value.decode(errors="replace").strip()
        raise OSError(e.errno, f"bpf(BPF_PROG_LOAD): {os.strerror(e.errno)}: {detail}") from None


def bpf_prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    """Attach a loaded program to a target (a cgroup directory fd for cgroup programs)."""
    attr = _BpfAttachAttr(target_fd=target_fd, attach_bpf_fd=prog_fd, attach_type=attach_type,
                          attach_flags=flags)
    _bpf(BPF_PROG_ATTACH, attr, "bpf(BPF_PROG_ATTACH)")


def bpf_prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> None:
    attr = _BpfAttachAttr(target_fd=target_fd, attach_bpf_fd=prog_fd, attach_type=attach_type)
    _bpf(BPF_PROG_DETACH, attr, "bpf(BPF_PROG_DETACH)")


def bpf_prog_query(target_fd: int, attach_type: int, max_progs: int = 64) -> list[int]:
    """Ids of the programs attached directly to the target for this attach type."""
    ids = (ctypes.c_uint32 * max_progs)()
    attr = _BpfQueryAttr(target_fd=target_fd, attach_type=attach_type,
                         prog_ids=ctypes.addressof(ids), prog_cnt=max_progs)
    _bpf(BPF_PROG_QUERY, attr, "bpf(BPF_PROG_QUERY)")
    return [ids[i] for i in range(min(attr.prog_cnt, max_progs))]


def bpf_prog_get_fd_by_id(prog_id: int) -> int:
    return _bpf(BPF_PROG_GET_FD_BY_ID, _BpfGetIdAttr(id=prog_id), "bpf(BPF_PROG_GET_FD_BY_ID)")


def bpf_prog_id(prog_fd: int) -> int:
    """The kernel-wide id of a loaded program (what bpf_prog_query reports)."""
    info = _BpfProgInfoHead()
    attr = _BpfInfoAttr(bpf_fd=prog_fd, info_len=ctypes.sizeof(info),
                        info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, "bpf(BPF_OBJ_GET_INFO_BY_FD)")
    return info.id


# openat2(2): path resolution confined to a directory (linux/openat2.h), what every walk of an
# untrusted tree goes through (silobox.kernel.saferoot). The same number on every architecture.
_OPENAT2_NR = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

PROC_SUPER_MAGIC = 0x9FA0


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str | bytes, flags: int, mode: int, resolve: int) -> int:
    """``openat2(dirfd, path, {flags, mode, resolve})``; returns the new fd.

    ``flags`` must carry O_CLOEXEC if the fd is not to be inherited (the kernel adds nothing).
    """
    tmpfile = getattr(os, "O_TMPFILE", 0)
    creates = bool(flags & os.O_CREAT) or (tmpfile and flags & tmpfile == tmpfile)
    how = _OpenHow(flags, mode if creates else 0, resolve)   # else EINVAL
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    return _check(_libc.syscall(ctypes.c_long(_OPENAT2_NR), ctypes.c_int(dirfd),
                                ctypes.c_char_p(raw), ctypes.byref(how),
                                ctypes.c_size_t(ctypes.sizeof(how))),
                  "openat2", os.fsdecode(raw))


_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]


def fstatfs_type(fd: int) -> int:
    """The filesystem magic (``f_type`` of ``struct statfs``) of the file behind ``fd``."""
    buf = ctypes.create_string_buffer(256)   # struct statfs is 120 bytes; f_type comes first
    _check(_libc.fstatfs(ctypes.c_int(fd), buf), "fstatfs")
    return ctypes.c_long.from_buffer(buf).value
