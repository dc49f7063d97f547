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
from typing import Iterator

from silobox.engine.build.rootfs import MergedView
from silobox.kernel.saferoot import SafeRoot
from silobox.storage.changes import is_init_path, is_opaque, layer_tar, walk_tree


def _same_dir(st: os.stat_result, below: tuple[str, os.stat_result] | None) -> bool:
    if below is None or not stat.S_ISDIR(below[1].st_mode):
        return False
    lower = below[1]
    return (st.st_mode, st.st_uid, st.st_gid) == (lower.st_mode, lower.st_uid, lower.st_gid)


def run_layer_tar(upper: str, lower: MergedView) -> Iterator[bytes] | None:
    """The upper directory as an OCI layer tar, or None if the step changed nothing."""
    tree = SafeRoot(upper)
    try:
        entries = [(rel, path, st) for rel, path, st in walk_tree(tree)
                   if not is_init_path(rel)]
    except BaseException:
        tree.close()
        raise
    needed: set[str] = set()
    for rel, path, st in entries:
        if stat.S_ISDIR(st.st_mode) and not is_opaque(path) and \
                _same_dir(st, lower.lstat(rel)):
            continue   # kept only if something below it is
        needed.add(rel)
        parent = rel
        while "/" in parent:
            parent = parent.rsplit("/", 1)[0]
            needed.add(parent)
    kept = [e for e in entries if e[0] in needed]
    if not kept:
        tree.close()
        return None
    return _closing(layer_tar(kept), tree)


def _closing(chunks: Iterator[bytes], tree: SafeRoot) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        tree.close()
