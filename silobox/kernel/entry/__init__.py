"""The container entry helper: a small static program, run from a sealed memfd.

Whatever enters a container ends, between the namespaces and ``execve``, in ``helper.c`` (beside
this file), never in the host's Python interpreter: a process in the container can only ever
see, open through ``/proc/<pid>/exe``, or reach as ``#!/proc/self/exe``, an anonymous, sealed,
immutable copy of that helper. The threat model is in docs/security.md ("Entering a container").

Life cycle:

* ``ensure_built`` finds the binary, built for the source's hash (``scripts/install.sh``
  builds it; a checkout builds it on first use with gcc, ``-static``);
* ``load`` copies it once into a memfd (close-on-exec, sealed against any write, mode 0555, the
  inode immutable) — the spawner does this at start and every shim inherits the fd;
* a child that enters a container calls ``exec_helper`` with ``encode_spec``'s blob.

The spec format is the helper's, documented in ``helper.c``.
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys
from typing import NoReturn, Sequence

from silobox.kernel import native

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helper.c")
CACHE_DIR = os.environ.get("SILOBOX_ENTRY_DIR", "/var/cache/silobox/entry")
NAME = "silobox-entry"

MODE_PARK = 1      # a container's first process: report ready, wait for start
MODE_FORK = 2      # an exec: join the PID namespace and fork into it

(T_MODE, T_SYNC_FD, T_START_FD, T_PIDNS_FD, T_PATH, T_ARGV, T_ENV, T_CWD, T_UID, T_GID,
 T_GROUPS, T_CAPS, T_LAST_CAP, T_NNP, T_SECCOMP, T_RLIMITS, T_UMASK, T_OOM_SCORE_ADJ,
 T_TTY) = range(1, 20)

_MFD_EXEC = 0x10                    # kernel >= 6.3; older kernels take memfds as executable
_FS_IOC_SETFLAGS = 0x40086602
_FS_IMMUTABLE_FL = 0x10
_MODE = 0o100555

_fd: int | None = None


class EntryHelperMissing(RuntimeError):
    """The helper is neither built nor buildable here: starts and execs cannot proceed."""


def helper_path() -> str:
    """Where the helper built from this source lives (``SILOBOX_ENTRY_HELPER`` overrides)."""
    return os.environ.get("SILOBOX_ENTRY_HELPER") or native.binary_path(SOURCE, CACHE_DIR, NAME)


def build(dest: str) -> None:
    """Compile the helper statically with the system's gcc; the file appears atomically."""
    try:
        native.build_static(SOURCE, dest, "the container entry helper")
    except native.NativeBuildError as e:
        raise EntryHelperMissing(str(e)) from None


def ensure_built() -> str:
    """The helper's path, building it first when this source has no binary yet."""
    path = helper_path()
    if not os.path.exists(path):
        if os.environ.get("SILOBOX_ENTRY_HELPER"):
            raise EntryHelperMissing(f"the container entry helper {path} does not exist")
        build(path)
    return path


def load(path: str) -> int:
    """Copy the helper into a sealed, immutable memfd and keep it as this process's helper.

    Seals forbid any write, growth or shrink; the immutable flag forbids chmod, chown and
    xattrs, which seals do not cover (removing it takes CAP_LINUX_IMMUTABLE, which containers
    do not hold by default). Returns the fd (close-on-exec; forks inherit it)."""
    global _fd
    with open(path, "rb") as f:
        data = f.read()
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        fd = os.memfd_create(NAME, flags | _MFD_EXEC)
    except OSError:
        fd = os.memfd_create(NAME, flags)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, 0o555)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        try:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("l", _FS_IMMUTABLE_FL))
        except OSError:
            pass   # kernels before 6.0 have no tmpfs flags; the mode check in exec_helper stays
    except BaseException:
        os.close(fd)
        raise
    if _fd is not None:
        os.close(_fd)
    _fd = fd
    return fd


def helper_fd() -> int:
    if _fd is None:
        raise EntryHelperMissing("the container entry helper is not loaded")
    return _fd


def _record(tag: int, value: bytes) -> bytes:
    return struct.pack("<HI", tag, len(value)) + value


def _u32(tag: int, v: int) -> bytes:
    return _record(tag, struct.pack("<I", v & 0xFFFFFFFF))


def _strings(items: Sequence[str]) -> bytes:
    return b"".join(os.fsencode(s) + b"\0" for s in items)


def encode_spec(*, mode: int, sync_fd: int, path: str, argv: Sequence[str], env: Sequence[str],
                cwd: str, uid: int, gid: int, groups: Sequence[int], capabilities: int,
                last_cap: int, no_new_privs: bool, seccomp: bytes | None,
                rlimits: Sequence[tuple[int, int, int]], umask: int,
                oom_score_adj: int | None, start_fd: int = -1, pidns_fd: int = -1,
                tty: bool = False) -> bytes:
    """The helper's spec blob (format in helper.c)."""
    out = [b"SBXE", struct.pack("<I", 1), _u32(T_MODE, mode), _u32(T_SYNC_FD, sync_fd),
           _record(T_PATH, os.fsencode(path) + b"\0"), _record(T_ARGV, _strings(argv)),
           _record(T_ENV, _strings(env)), _record(T_CWD, os.fsencode(cwd) + b"\0"),
           _u32(T_UID, uid), _u32(T_GID, gid),
           _record(T_GROUPS, struct.pack(f"<{len(groups)}I", *groups)),
           _record(T_CAPS, struct.pack("<Q", capabilities & (2**64 - 1))),
           _u32(T_LAST_CAP, last_cap), _u32(T_NNP, int(no_new_privs)), _u32(T_UMASK, umask),
           _u32(T_TTY, int(tty))]
    if start_fd >= 0:
        out.append(_u32(T_START_FD, start_fd))
    if pidns_fd >= 0:
        out.append(_u32(T_PIDNS_FD, pidns_fd))
    if seccomp:
        out.append(_record(T_SECCOMP, seccomp))
    if rlimits:
        out.append(_record(T_RLIMITS, b"".join(
            struct.pack("<IQQ", r, s & (2**64 - 1), h & (2**64 - 1)) for r, s, h in rlimits)))
    if oom_score_adj is not None:
        out.append(_u32(T_OOM_SCORE_ADJ, oom_score_adj))
    return b"".join(out)


def exec_helper(spec: bytes, pass_fds: Sequence[int]) -> NoReturn:
    """Replace this process with the helper; ``pass_fds`` (sync, start, PID namespace) stay open.

    Raises OSError if the helper cannot be executed (or was tampered with)."""
    fd = helper_fd()
    st = os.fstat(fd)
    if st.st_mode != _MODE or st.st_uid != 0 or st.st_gid != 0:
        raise OSError(1, f"the entry helper's mode or owner changed ({oct(st.st_mode)}, "
                         f"{st.st_uid}:{st.st_gid}); refusing to run it")
    spec_fd = os.memfd_create("silobox-entry-spec", 0)
    view = memoryview(spec)
    while view:
        view = view[os.write(spec_fd, view):]
    for p in pass_fds:
        os.set_inheritable(p, True)
    os.execve(fd, [NAME, str(spec_fd)], {})
    raise AssertionError("unreachable")


def main(argv: list[str]) -> int:
    """``python -m silobox.kernel.entry build|path``: what scripts/install.sh runs."""
    return native.command(argv, "silobox.kernel.entry", "silobox-entry", ensure_built, helper_path, EntryHelperMissing)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
