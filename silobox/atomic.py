"""Crash-safe file writes shared by every layer: a reader sees the old file or the new one, never half."""

from __future__ import annotations

import json
import os
from typing import Any


def atomic_write(path: str, data: bytes | str, mode: int = 0o644, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory, fsync, rename.

    ``durable=False`` skips both fsyncs: for files that are regenerated (a container's hosts,
    resolv.conf) or that describe processes a reboot ends anyway (runtime state). A reader
    still sees the old file or the new one; only a host crash can lose the write, and an
    fsync costs milliseconds on the start path (more when containers start in parallel)."""
    if isinstance(data, str):
        data = data.encode()
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    if not durable:
        return
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write_json(path: str, obj: Any, mode: int = 0o644, durable: bool = True) -> None:
    atomic_write(path, json.dumps(obj, separators=(",", ":")), mode, durable)
