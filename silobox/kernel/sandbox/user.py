"""The container process's user and groups (the Windows ``ContainerUser``/``User`` of a process).

``resolve_user`` turns Docker's ``--user`` forms ("", "name", "uid", "name:group", "uid:gid",
"name:gid", "uid:group") into numbers using the image's own /etc/passwd and /etc/group, with
Docker's rules: a numeric id needs no passwd entry; a name must exist; supplementary groups come
from /etc/group membership only when no group was given. The files are read without ever leaving
the root: every path component is opened relative to its parent with ``O_NOFOLLOW`` and symbolic
links are resolved by hand against the container's root, so ``/etc/passwd -> /../../etc/shadow``
in an image reads the image's file, not the host's.

``apply_user`` is the child side: setgroups, setgid, then setuid (the uid last, because once it is
not 0 the process can no longer change its groups).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from typing import Callable, NamedTuple

from silobox.errors import InvalidArgument, SystemFailure
from silobox.kernel.saferoot import SafeRoot

MAX_ID = (1 << 31) - 1          # Docker's range for uids and gids (32-bit safe)
_MAX_FILE = 16 << 20            # refuse absurd passwd/group files rather than read them whole
_NUMERIC = re.compile(r"[+-]?[0-9]+\Z")


class ResolvedUser(NamedTuple):
    """Numbers the child switches to. ``additional_gids`` is exactly what setgroups gets:
    the primary gid first, then /etc/group memberships and ``--group-add`` (as Docker does)."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str
    name: str | None


class _Entry(NamedTuple):
    name: str
    id: int
    gid: int            # passwd: primary gid; group: same as id
    home: str
    members: tuple[str, ...]


# ----- reading files inside a root without following links out of it -------------------------

def _open_in_root(root: str, path: str) -> int | None:
    """Open ``path`` for reading as if ``root`` were ``/`` (:class:`SafeRoot`); None when it
    does not exist or is not a regular file. Symlinks (absolute or with ``..``) are resolved
    inside ``root``, magic links refused."""
    try:
        tree = SafeRoot(root)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with tree:
        try:
            ref = tree.open(path.lstrip("/") or ".", os.O_PATH)
        except (FileNotFoundError, NotADirectoryError):
            return None
    try:
        if not stat.S_ISREG(os.fstat(ref).st_mode):   # a whiteout, fifo or device
            return None
        # reopened through procfs: exactly the inode found, never a path lookup again
        return os.open(f"/proc/self/fd/{ref}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
                       | os.O_CLOEXEC)
    finally:
        os.close(ref)


def read_file_in_root(root: str, path: str) -> str | None:
    """Text of a file inside a container root (None if absent), never leaving the root."""
    try:
        fd = _open_in_root(root, path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InvalidArgument(f"{path} in the container's root: too many levels of "
                                  "symbolic links", operation="resolve user", cause=e) from e
        raise SystemFailure(f"cannot read {path} in the container's root: {e.strerror}",
                            operation="resolve user", cause=e) from e
    if fd is None:
        return None
    try:
        chunks, size = [], 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > _MAX_FILE:
                raise InvalidArgument(f"{path} in the container's root is larger than "
                                      f"{_MAX_FILE >> 20} MiB")
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


# ----- parsing, with the tolerance of Docker's parser ----------------------------------------

def _atoi(text: str) -> int:
    """Docker's field parser: a malformed number counts as 0."""
    return int(text) if _NUMERIC.match(text) else 0


def _parse(text: str | None, passwd: bool) -> list[_Entry]:
    entries: list[_Entry] = []
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line:
            continue
        f = line.split(":")
        f += [""] * (7 - len(f))
        if passwd:   # name:password:uid:gid:gecos:home:shell
            entries.append(_Entry(f[0], _atoi(f[2]), _atoi(f[3]), f[5], ()))
        else:        # name:password:gid:member,member
            members = tuple(m for m in f[3].split(",") if m)
            gid = _atoi(f[2])
            entries.append(_Entry(f[0], gid, gid, "", members))
    return entries


def _numeric(text: str) -> int | None:
    """A uid/gid given as a number, or None for a name; out-of-range numbers are refused."""
    if not text or not _NUMERIC.match(text):
        return None
    value = int(text)
    if value < 0 or value > MAX_ID:
        raise InvalidArgument(f"uids and gids must be in range 0-{MAX_ID}")
    return value


def _first(entries: list[_Entry], match: Callable[[_Entry], bool]) -> _Entry | None:
    for e in entries:
        if match(e):
            return e
    return None


def resolve_user(rootfs: str, spec: str | None, group_add: list[str] | None = None) -> ResolvedUser:
    """Resolve ``--user`` (and ``--group-add``) against the image's passwd and group files."""
    spec = spec or ""
    user_arg, _, rest = spec.partition(":")
    group_arg = rest.split(":", 1)[0]
    uid_num = _numeric(user_arg)
    gid_num = _numeric(group_arg)

    passwd = _parse(read_file_in_root(rootfs, "/etc/passwd"), passwd=True)
    uid, gid, home, name = 0, 0, "", None
    if user_arg == "":
        found = _first(passwd, lambda e: e.id == 0)
    elif uid_num is not None:
        found = _first(passwd, lambda e: e.id == uid_num)
    else:
        found = _first(passwd, lambda e: e.name == user_arg)
    if found is not None:
        uid, gid, home, name = found.id, found.gid, found.home, found.name
    elif user_arg:
        if uid_num is None:
            raise InvalidArgument(f"unable to find user {user_arg}: "
                                  "no matching entries in passwd file")
        uid = uid_num

    groups: list[_Entry] = []
    sgids: list[int] = []
    if group_arg or name is not None or group_add:
        groups = _parse(read_file_in_root(rootfs, "/etc/group"), passwd=False)
    if group_arg:
        if gid_num is not None:
            g = _first(groups, lambda e: e.id == gid_num)
        else:
            g = _first(groups, lambda e: e.name == group_arg)
        if g is not None:
            gid = g.id
        elif gid_num is not None:
            gid = gid_num
        else:
            raise InvalidArgument(f"unable to find group {group_arg}: "
                                  "no matching entries in group file")
    elif name is not None:
        sgids = [g.id for g in groups if name in g.members]

    extra = _group_add(group_add or [], groups)
    additional: list[int] = []
    for g in [gid, *sgids, *extra]:
        if g not in additional:
            additional.append(g)
    return ResolvedUser(uid, gid, tuple(additional), home or "/", name)


def _group_add(names: list[str], groups: list[_Entry]) -> list[int]:
    """``--group-add``: names must exist in /etc/group, numbers need not."""
    out: list[int] = []
    for item in names:
        num = _numeric(item)
        g = _first(groups, lambda e: e.name == item or (num is not None and e.id == num))
        if g is not None:
            out.append(g.id)
        elif num is not None:
            out.append(num)
        else:
            raise InvalidArgument(f"unable to find group {item}: no matching entries in group file")
    return out


# ----- child side: syscalls only -------------------------------------------------------------

def apply_user(user: ResolvedUser, additional: tuple[int, ...] = ()) -> None:
    """Switch to the resolved identity: groups first, then gid, then uid (the uid last because
    a non-root uid may no longer change groups). ``additional`` adds gids resolved elsewhere."""
    os.setgroups(list(user.additional_gids + additional))
    os.setgid(user.gid)
    os.setuid(user.uid)
