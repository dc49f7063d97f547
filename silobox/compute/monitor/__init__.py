"""The native per-container monitor: ``monitor.c`` beside this file, a small static program.

A shim (``silobox.compute.shim``) does a container's start in Python and then execve's this
monitor, which keeps every fd the shim held and speaks the same protocol on ``shim.sock``. The
reasons, the numbers and what a kill of it costs are in docs/architecture.md ("The
per-container monitor").

Life cycle, like the entry helper's (``silobox.kernel.entry``):

* ``ensure_built`` finds the binary built for the source's hash (``scripts/install.sh`` builds
  it; a checkout builds it on first use with gcc, ``-static``);
* ``load`` opens it once, in the spawner before any shim is forked; shims exec that fd, so a
  rebuilt or removed file never changes what a running engine starts.

``SILOBOX_MONITOR=python`` keeps the shim's own Python loop instead (for comparisons).
"""

from __future__ import annotations

import os

from silobox.kernel import native

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "monitor.c")
CACHE_DIR = os.environ.get("SILOBOX_MONITOR_DIR", "/var/cache/silobox/monitor")
NAME = "silobox-monitor"

_fd: int | None = None


class MonitorMissing(RuntimeError):
    """The monitor is neither built nor buildable here."""


def enabled() -> bool:
    return os.environ.get("SILOBOX_MONITOR", "native") != "python"


def monitor_path() -> str:
    return native.binary_path(SOURCE, CACHE_DIR, NAME)


def build(dest: str) -> None:
    """Compile the monitor statically with the system's gcc; the file appears atomically."""
    try:
        native.build_static(SOURCE, dest, "the container monitor")
    except native.NativeBuildError as e:
        raise MonitorMissing(str(e)) from None


def ensure_built() -> str:
    path = monitor_path()
    if not os.path.exists(path):
        build(path)
    return path


def load(path: str) -> int:
    """Open the monitor for the shims to exec (close-on-exec; forks inherit it)."""
    global _fd
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if _fd is not None:
        os.close(_fd)
    _fd = fd
    return fd


def monitor_fd() -> int | None:
    """The loaded monitor, or None: the shim then keeps its Python loop."""
    return _fd


def main(argv: list[str]) -> int:
    """``python -m silobox.compute.monitor build|path``: what scripts/install.sh runs."""
    return native.command(argv, "silobox.compute.monitor", "silobox-monitor", ensure_built, monitor_path, MonitorMissing)
