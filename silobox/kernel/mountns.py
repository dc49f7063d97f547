"""Private mount namespaces that keep only what they need of the host's mounts.

``unshare(CLONE_NEWNS)`` copies every mount of the host, and on a host whose mounts are private
(or once the copy is made private) a later unmount on the host no longer reaches the copy. A
helper's namespace made while a container's sandbox disk is mounted therefore keeps that disk's
filesystem, and so its loop device, alive for as long as the namespace lives: the container's
next start finds its disk in use, and nothing on the host shows who holds it. Every namespace
silobox makes for a helper detaches, right after it is made, the mounts the helper does not use.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable

from silobox.kernel import libc


def unshare_private() -> None:
    """A new mount namespace for the calling process, cut off from the host's propagation."""
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)


def mount_points() -> list[str]:
    """This namespace's mount points, in mount table order (a parent before its children)."""
    with open("/proc/self/mountinfo", "rb") as f:
        lines = f.read().decode("utf-8", "surrogateescape").splitlines()
    return [_unescape(line.split(" ")[4]) for line in lines if line.count(" ") >= 4]


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _within(path: str, base: str) -> bool:
    return path == base or base == "/" or path.startswith(base.rstrip("/") + "/")


def unneeded(points: Iterable[str], trees: Iterable[str], paths: Iterable[str]) -> list[str]:
    """Of ``points``, those that hold none of ``trees`` and ``paths`` and lie within none of
    ``trees``: what a namespace that uses only those may detach. Outermost first, each once."""
    trees = [os.path.normpath(t) for t in trees]
    used = trees + [os.path.normpath(p) for p in paths]
    out: list[str] = []
    for point in dict.fromkeys(points):
        if any(_within(u, point) for u in used) or any(_within(point, t) for t in trees):
            continue
        if any(_within(point, done) for done in out):
            continue   # its parent goes, and takes it along
        out.append(point)
    return out


def detach_unneeded(trees: Iterable[str], paths: Iterable[str] = ()) -> list[str]:
    """In a private mount namespace of the caller's own: lazily detach every mount that holds
    none of ``trees`` (directories used with everything mounted below them) and ``paths``
    (files and directories used by themselves) and lies within none of ``trees``. Returns
    the mount points detached."""
    gone = unneeded(mount_points(), trees, paths)
    for point in gone:
        for _ in range(64):   # mounts stacked on one point go one at a time
            try:
                libc.umount2(point, libc.MNT_DETACH)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOENT):   # no (more) mount there
                    raise
                break
    return gone
