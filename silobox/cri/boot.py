"""Bringing the CRI up inside a running silod without stalling it.

grpcio, protobuf and the stubs take a few hundred milliseconds to import, and the pod holder
may need compiling on first use: both happen on a worker thread while the event loop goes on
serving the Docker API; only the servers themselves are made on the loop.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any


def _load() -> Any:
    server = importlib.import_module("silobox.cri.server")
    from silobox.cri import pause
    return server, pause.ensure_built()


async def start(backend: Any, socket_path: str) -> Any:
    """Start the CRI on ``socket_path``; returns the server (its ``stop()`` ends it)."""
    server_mod, holder = await asyncio.get_running_loop().run_in_executor(None, _load)
    cri = server_mod.CriServer(backend, socket_path, holder=holder)
    await cri.start()
    return cri
