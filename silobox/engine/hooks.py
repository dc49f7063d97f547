"""Extension points of the container lifecycle, for the services that attach to containers.

The network, volume and sandbox-disk services each own a part of a container (its endpoints,
its mounts, its disk). Rather than the container service knowing all of them, each registers a
``ContainerHook`` with the engine and is called at the same points of every container's life.
"""

from __future__ import annotations

from typing import Any


class ContainerHook:
    """No-op defaults; a service overrides the points it needs."""

    def on_create(self, c: Any, body: dict[str, Any]) -> None:
        """Validate the create body's part this service owns and record it in the container record.

        Raise ``InvalidArgument``/``NotFound``/``Conflict``: the container is then not created
        and ``undo_create`` is called on the hooks that already ran."""

    def undo_create(self, c: Any) -> None:
        """Release what ``on_create`` took (the create failed later on)."""

    async def on_start(self, c: Any, document: dict[str, Any]) -> None:
        """Prepare host objects and amend the compute-system document before the start."""

    async def on_stop(self, c: Any) -> None:
        """The container stopped (or its start failed): release what ``on_start`` prepared."""

    async def on_remove(self, c: Any) -> None:
        """The container is being removed: release everything it owned."""

    async def on_recover(self, c: Any) -> None:
        """silod restarted while the container kept running: re-adopt its host objects."""

    def on_inspect(self, c: Any, out: dict[str, Any]) -> None:
        """Add this service's view to ``docker inspect`` output."""
