"""The layer a RUN step adds: its container's overlay upper directory, without the runtime's marks.

A container's upper directory also holds what the runtime put there rather than the command:
the mount points of ``/etc/hosts``, ``/etc/hostname`` and ``/etc/resolv.conf`` (Docker keeps those
in a separate init layer) and so a copied-up ``etc/`` whose only news is those files. The
commit of ``docker commit`` keeps such directories; a build step must not, or ``RUN true`` would
add a layer. :func:`run_layer_tar` therefore leaves out a directory that exists below with the
same owner and mode and contains nothing that is kept; it returns None when nothing is left
(Docker's ``empty_layer``).
"""

from __future__ import annotations

import os
import stat
import tarfile
from typing import Iterator

from silobox.engine.build.rootfs import MergedView
from silobox.storage.changes import (OPAQUE_MARKER, WHITEOUT_PREFIX, TarWriter,
                                     _check_self_contained, _is_opaque, _is_whiteout, _skipped,
                                     _walk)


def _same_dir(st: os.stat_result, below: tuple[str, os.stat_result] | None) -> bool:
    if below is None or not stat.S_ISDIR(below[1].st_mode):
        return False
    lower = below[1]
    return (st.st_mode, st.st_uid, st.st_gid) == (lower.st_mode, lower.st_uid, lower.st_gid)


def run_layer_tar(upper: str, lower: MergedView) -> Iterator[bytes] | None:
    """The upper directory as an OCI layer tar, or None if the step changed nothing."""
    entries = [(rel, path, st) for rel, path, st in _walk(upper) if not _skipped(rel, True)]
    needed: set[str] = set()
    for rel, path, st in entries:
        if stat.S_ISDIR(st.st_mode) and not _is_opaque(path) and \
                _same_dir(st, lower.lstat(rel)):
            continue   # kept only if something below it is
        needed.add(rel)
        parent = rel
        while "/" in parent:
            parent = parent.rsplit("/", 1)[0]
            needed.add(parent)
    kept = [e for e in entries if e[0] in needed]
    if not kept:
        return None
    return _tar(kept)


def _tar(entries: list[tuple[str, str, os.stat_result]]) -> Iterator[bytes]:
    writer = TarWriter()
    for rel, path, st in entries:
        parent, _, base = rel.rpartition("/")
        if _is_whiteout(st):
            info = tarfile.TarInfo(f"{parent}/{WHITEOUT_PREFIX}{base}" if parent
                                   else f"{WHITEOUT_PREFIX}{base}")
            info.mtime = int(st.st_mtime)
            info.uname = info.gname = ""
            yield writer.entry(info)
            continue
        _check_self_contained(path, rel)
        info, content = writer.header(rel, st, path)
        if content:
            yield from writer.file(info, path)
        else:
            yield writer.entry(info)
        if stat.S_ISDIR(st.st_mode) and _is_opaque(path):
            marker = tarfile.TarInfo(f"{rel}/{OPAQUE_MARKER}")
            marker.mtime = int(st.st_mtime)
            marker.uname = marker.gname = ""
            yield writer.entry(marker)
    yield writer.end()
