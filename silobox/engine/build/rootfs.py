"""Read an image's merged root filesystem straight from its layer folders, without mounting.

The builder needs to look into images for ``COPY --from``, for the metadata of directories a
COPY writes into and for whether a WORKDIR exists. Mounting an overlay for each lookup would
cost a mount and its cleanup; instead :class:`MergedView` applies overlay's rules itself over the
layer ``diff/`` trees (top first): the topmost entry wins, a whiteout (a 0/0 character device)
hides what is below, an opaque directory hides the lower directories of the same path (tested
with the storage layer's ``is_whiteout``/``is_opaque``, the tests a layer tar is made by).
Symbolic links inside the image are resolved against the image's root, never the host's.
"""

from __future__ import annotations

import os
import stat
from typing import Iterator

from silobox.kernel.saferoot import resolve_links
from silobox.storage.changes import is_opaque, is_whiteout


class MergedView:
    """The union of layer trees ``lowers`` (top first), as overlay would show it."""

    def __init__(self, lowers: list[str]) -> None:
        self.lowers = lowers

    def _entry(self, rel: str) -> tuple[str, os.stat_result, list[str]] | None:
        """The topmost (path, lstat) of ``rel`` (no symlinks followed), and, for a directory,
        the layers whose copies of it are merged (top first)."""
        layers = self.lowers
        parts = [p for p in rel.split("/") if p]
        found: tuple[str, os.stat_result] | None = ("", os.stat("/")) if not parts else None
        for depth, name in enumerate(parts):
            prefix = "/".join(parts[:depth + 1])
            visible: list[str] = []
            found = None
            for layer in layers:
                path = os.path.join(layer, prefix)
                try:
                    st = os.lstat(path)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if is_whiteout(st):
                    break
                if found is None:
                    found = (path, st)
                    if not stat.S_ISDIR(st.st_mode):
                        break
                elif not stat.S_ISDIR(st.st_mode):
                    break
                visible.append(layer)
                if is_opaque(path):
                    break
            if found is None:
                return None
            layers = visible
        if not parts:
            return ("", os.stat("/"), list(self.lowers)) if self.lowers else None
        assert found is not None
        return found[0], found[1], layers

    def resolve(self, rel: str, follow_last: bool = True) -> str:
        """``rel`` with every symlink in it resolved inside the image (``/bin`` → ``usr/bin``);
        the result is relative to the image root and never leaves it."""
        def link_at(here: str, last: bool) -> str | None:
            entry = self._entry(here)
            if entry is not None and stat.S_ISLNK(entry[1].st_mode):
                return os.readlink(entry[0])
            return None
        return resolve_links(rel, link_at, follow_last)

    def lstat(self, rel: str) -> tuple[str, os.stat_result] | None:
        """(a host path holding the entry, its lstat), or None if ``rel`` does not exist."""
        entry = self._entry(rel)
        return (entry[0], entry[1]) if entry else None

    def listdir(self, rel: str) -> list[str]:
        """The merged directory's entry names, sorted."""
        entry = self._entry(rel)
        if entry is None or not stat.S_ISDIR(entry[1].st_mode):
            return []
        names: set[str] = set()
        hidden: set[str] = set()
        for layer in entry[2]:
            here = os.path.join(layer, rel) if rel else layer
            try:
                listing = os.listdir(here)
            except OSError:
                continue
            for name in listing:
                if name in names or name in hidden:
                    continue
                try:
                    st = os.lstat(os.path.join(here, name))
                except OSError:
                    continue
                (hidden if is_whiteout(st) else names).add(name)
        return sorted(names)

    def walk(self, rel: str) -> Iterator[tuple[str, str, os.stat_result]]:
        """(path relative to ``rel``, host path, lstat) of everything under directory ``rel``,
        parents before children."""
        stack = [""]
        while stack:
            sub = stack.pop()
            base = "/".join(p for p in (rel, sub) if p)
            for name in self.listdir(base):
                child = f"{sub}/{name}" if sub else name
                found = self.lstat(f"{base}/{name}" if base else name)
                if found is None:
                    continue
                yield child, found[0], found[1]
                if stat.S_ISDIR(found[1].st_mode):
                    stack.append(child)
