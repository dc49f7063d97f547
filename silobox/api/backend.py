"""What the API layer needs from the daemon, as protocols (moby's ``backend.go`` idea).

The HTTP layer is written against these interfaces and never imports ``silobox.engine``: the
engine implements them. Documents in and out are Docker Engine API JSON (the bodies and answers
of moby's ``api/swagger.yaml``), so the routers only parse query strings and frame streams.
Every method raises only ``silobox.errors`` classes; ``api/errors.py`` maps them to HTTP once.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Protocol

STDIN, STDOUT, STDERR = 0, 1, 2


class StreamSession(Protocol):
    """An attached stdio session of a container's init or of an exec process.

    ``tty`` says whether output is raw (a pty: one stream) or split into stdout/stderr, which
    the API frames with Docker's 8-byte multiplexing header.
    """

    tty: bool

    async def read(self) -> tuple[int, bytes] | None:
        """Next chunk of output as (STDOUT|STDERR, data); None once the process's output ended."""

    async def write(self, data: bytes) -> None:
        """Send bytes to the process's stdin (ignored when stdin was not attached)."""

    async def close_stdin(self) -> None:
        """Half-close: the process sees EOF on stdin."""

    async def close(self) -> None:
        """Detach this session; the process keeps running."""


class ContainerBackend(Protocol):
    async def container_create(self, name: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """POST /containers/create → {"Id", "Warnings"}."""

    async def container_start(self, ref: str) -> None:
        """Raises NotModified when it is already running."""

    async def container_stop(self, ref: str, timeout: int | None = None,
                             signal: str | None = None) -> None:
        """Raises NotModified when it is not running."""

    async def container_restart(self, ref: str, timeout: int | None = None,
                                signal: str | None = None) -> None: ...

    async def container_kill(self, ref: str, signal: str = "SIGKILL") -> None: ...

    async def container_wait(self, ref: str, condition: str = "not-running") -> dict[str, Any]:
        """→ {"StatusCode": int, "Error": None | {"Message": str}}."""

    async def container_remove(self, ref: str, force: bool = False, volumes: bool = False) -> None: ...

    async def container_pause(self, ref: str) -> None: ...

    async def container_unpause(self, ref: str) -> None: ...

    async def container_rename(self, ref: str, new_name: str) -> None: ...

    async def container_inspect(self, ref: str, size: bool = False) -> dict[str, Any]: ...

    async def container_list(self, all: bool = False, limit: int = -1, size: bool = False,
                             filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]: ...

    async def container_logs(self, ref: str, *, stdout: bool = True, stderr: bool = True,
                             follow: bool = False, since: float = 0, until: float = 0,
                             timestamps: bool = False, tail: str = "all"
                             ) -> tuple[bool, AsyncIterator[tuple[int, bytes]]]:
        """→ (tty, chunks). With timestamps each line is prefixed by RFC 3339 nano time + space."""

    async def container_top(self, ref: str, ps_args: str | None = None) -> dict[str, Any]:
        """→ {"Titles": [...], "Processes": [[...], ...]}."""

    async def container_stats(self, ref: str, stream: bool = True,
                              one_shot: bool = False) -> AsyncIterator[dict[str, Any]]: ...

    async def container_attach(self, ref: str, *, stdin: bool, stdout: bool, stderr: bool,
                               logs: bool, stream: bool) -> StreamSession: ...

    async def container_resize(self, ref: str, height: int, width: int) -> None: ...

    async def exec_create(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /containers/{id}/exec → {"Id"}. Raises Conflict when the container is not running."""

    async def exec_start(self, exec_id: str, detach: bool = False,
                         tty: bool | None = None) -> StreamSession | None:
        """Starts the exec; returns its session unless detached."""

    async def exec_inspect(self, exec_id: str) -> dict[str, Any]: ...

    async def exec_resize(self, exec_id: str, height: int, width: int) -> None: ...


class ImageBackend(Protocol):
    async def image_list(self, all: bool = False,
                         filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]: ...

    async def image_inspect(self, ref: str) -> dict[str, Any]: ...


class SystemBackend(Protocol):
    async def version(self) -> dict[str, Any]: ...

    async def info(self) -> dict[str, Any]: ...

    async def compute_systems(self) -> list[dict[str, Any]]:
        """GET /silobox/compute-systems: HCS enumerate (Id, SystemType, Name, Owner, State, ...)."""

    async def compute_system_properties(self, ref: str,
                                        types: list[str] | None = None) -> dict[str, Any]:
        """GET /silobox/compute-systems/{id}: HCS Properties with Statistics and ProcessList."""


class Backend(ContainerBackend, ImageBackend, SystemBackend, Protocol):
    """Everything silod serves."""
