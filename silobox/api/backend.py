"""What the API layer needs from the daemon, as protocols (moby's ``backend.go`` idea).

The HTTP layer is written against these interfaces and never imports ``silobox.engine``: the
engine implements them. Documents in and out are Docker Engine API JSON (the bodies and answers
of moby's ``api/swagger.yaml``), so the routers only parse query strings and frame streams.
Every method raises only ``silobox.errors`` classes; ``api/errors.py`` maps them to HTTP once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Protocol

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
    async def container_create(self, name: str | None, body: dict[str, Any],
                               platform: str = "") -> dict[str, Any]:
        """POST /containers/create → {"Id", "Warnings"}; ``platform`` (os[/arch]) must be
        the image's."""

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
    async def container_remove_link(self, name: str) -> None: ...

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

    async def container_update(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /containers/{id}/update → {"Warnings"}: new limits, applied live."""

    async def container_prune(self, filters: dict[str, list[str]] | None = None
                              ) -> dict[str, Any]:
        """POST /containers/prune → {"ContainersDeleted", "SpaceReclaimed"}."""

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

    async def image_history(self, ref: str) -> list[dict[str, Any]]: ...

    async def image_tag(self, ref: str, repo: str, tag: str | None) -> None: ...

    async def image_delete(self, ref: str, force: bool = False,
                           noprune: bool = False) -> list[dict[str, str]]:
        """→ Docker's [{"Untagged": …}, {"Deleted": …}]; Conflict (409) for images in use."""

    async def image_prune(self, filters: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """→ {"ImagesDeleted": [...] | None, "SpaceReclaimed": int}."""

    async def image_import(self, body: AsyncIterator[bytes], repo: str = "", tag: str = "",
                           message: str = "", changes: list[str] | None = None,
                           platform: str = "", progress: Any = None) -> str:
        """A rootfs tar → new image id; ``progress(doc)`` gets Docker's progress messages."""

    async def image_load(self, body: AsyncIterator[bytes], quiet: bool = False,
                         progress: Any = None) -> list[str]:
        """An image archive (docker-archive or OCI layout) → ``Loaded image: …`` lines."""

    async def image_save(self, names: list[str], oci: bool = False) -> AsyncIterator[bytes]:
        """The archive of the named images (names are checked before the first chunk)."""

    async def image_bootstrap(self, ref: str, suite: str | None = None,
                              variant: str = "minbase", mirror: str | None = None,
                              progress: Callable[[dict[str, Any]], None] | None = None) -> str:
        """silobox's own: a Debian base image built from the Debian archive → its id."""

    async def container_commit(self, ref: str, repo: str = "", tag: str = "",
                               comment: str = "", author: str = "",
                               changes: list[str] | None = None, pause: bool = True,
                               config: dict[str, Any] | None = None) -> str: ...

    async def container_export(self, ref: str) -> AsyncIterator[bytes]: ...

    async def container_changes(self, ref: str) -> list[dict[str, Any]] | None: ...

    async def container_archive_stat(self, ref: str, path: str) -> dict[str, Any]: ...

    async def container_archive_get(self, ref: str, path: str
                                    ) -> tuple[dict[str, Any], AsyncIterator[bytes]]: ...

    async def container_archive_put(self, ref: str, path: str, body: AsyncIterator[bytes],
                                    no_overwrite_dir_non_dir: bool = False,
                                    copy_uid_gid: bool = False) -> None: ...


class SystemBackend(Protocol):
    async def version(self) -> dict[str, Any]: ...

    async def info(self) -> dict[str, Any]: ...

    async def events(self, since: float = 0, until: float = 0,
                     filters: dict[str, list[str]] | None = None
                     ) -> AsyncIterator[dict[str, Any]]:
        """Awaited, returns the iterator: past events from ``since``, then live ones."""

    async def system_df(self) -> dict[str, Any]:
        """GET /system/df → {"LayersSize", "Images", "Containers", "Volumes", "BuildCache"}."""

    async def compute_systems(self) -> list[dict[str, Any]]:
        """GET /silobox/compute-systems: HCS enumerate (Id, SystemType, Name, Owner, State, ...)."""

    async def compute_system_properties(self, ref: str,
                                        types: list[str] | None = None) -> dict[str, Any]:
        """GET /silobox/compute-systems/{id}: HCS Properties with Statistics and ProcessList."""


class NetworkBackend(Protocol):
    """Docker's /networks over the Host Networking Service, plus HNS's own records."""

    async def network_list(self, filters: dict[str, list[str]] | None = None
                           ) -> list[dict[str, Any]]: ...

    async def network_inspect(self, ref: str) -> dict[str, Any]: ...

    async def network_create(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /networks/create → {"Id", "Warning"}."""

    async def network_remove(self, ref: str) -> None:
        """Raises Conflict when the network still has endpoints."""

    async def network_prune(self, filters: dict[str, list[str]] | None = None
                            ) -> dict[str, Any]: ...

    async def network_connect(self, ref: str, container: str,
                              endpoint_config: dict[str, Any]) -> None: ...

    async def network_disconnect(self, ref: str, container: str, force: bool = False) -> None: ...

    async def hns_networks(self) -> list[dict[str, Any]]:
        """GET /silobox/hns/networks: Get-HnsNetwork's records."""

    async def hns_network(self, ref: str) -> dict[str, Any]: ...

    async def hns_endpoints(self) -> list[dict[str, Any]]: ...

    async def hns_endpoint(self, ref: str) -> dict[str, Any]: ...

    async def hns_endpoint_policies(self, ref: str, request_type: str,
                                    policies: list[dict[str, Any]]) -> dict[str, Any]:
        """POST /silobox/hns/endpoints/{id}/policies: HCN ModifyEndpoint (ACL, Route)."""
        ...


class DistributionBackend(Protocol):
    async def image_pull(self, image: str, tag: str = "", auth_header: str | None = None,
                         platform: str = "",
                         progress: Callable[[dict[str, Any]], None] | None = None
                         ) -> list[dict[str, Any]]: ...

    async def image_push(self, name: str, tag: str = "", auth_header: str | None = None,
                         progress: Callable[[dict[str, Any]], None] | None = None
                         ) -> list[dict[str, Any]]: ...

    async def registry_login(self, body: dict[str, Any]) -> dict[str, str]: ...

    async def distribution_inspect(self, name: str, auth_header: str | None = None
                                   ) -> dict[str, Any]: ...


@dataclass
class BuildOptions:
    """``POST /build``'s query, parsed (moby's ``ImageBuildOptions``)."""

    tags: list[str] = field(default_factory=list)
    dockerfile: str = "Dockerfile"
    buildargs: dict[str, str | None] = field(default_factory=dict)
    nocache: bool = False
    target: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    quiet: bool = False
    rm: bool = True
    forcerm: bool = False
    networkmode: str = ""
    host_config: dict[str, Any] = field(default_factory=dict)   # resource limits for RUN
    pull: bool = False                 # pull FROM images even when they are here
    registry_config: str = ""          # X-Registry-Config: credentials per registry
    cache_from: list[str] = field(default_factory=list)   # the only cache sources, if given
    platform: str = ""                 # os[/arch]: the backend refuses one it cannot build

class BuildBackend(Protocol):
    async def build_prepare(self, body: AsyncIterator[bytes], options: BuildOptions) -> Any:
        """Unpack the context and parse the Dockerfile (errors raised here are the 400s)."""

    async def build_run(self, build: Any, emit: Any) -> str:
        """Run the build, calling ``emit`` with each JSON message; → the image id."""

    def build_discard(self, build: Any) -> None:
        """Forget a prepared build that will not run."""

    async def build_prune(self, filters: dict[str, list[str]] | None = None,
                          all: bool = False) -> dict[str, Any]: ...


class VolumeBackend(Protocol):
    """Docker's /volumes: the local volume driver."""

    async def volume_list(self, filters: dict[str, list[str]] | None = None
                          ) -> dict[str, Any]:
        """→ {"Volumes": [...], "Warnings": []}."""

    async def volume_create(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def volume_inspect(self, name: str) -> dict[str, Any]: ...

    async def volume_remove(self, name: str, force: bool = False) -> None:
        """Raises Conflict ("volume is in use") while a container uses it."""

    async def volume_prune(self, filters: dict[str, list[str]] | None = None,
                           all_volumes: bool = False) -> dict[str, Any]:
        """→ {"VolumesDeleted": [...], "SpaceReclaimed": int}."""


class SandboxBackend(Protocol):
    """/silobox/sandboxes: each container's writable sandbox (disk or directory)."""

    async def sandbox_list(self) -> list[dict[str, Any]]: ...

    async def sandbox_inspect(self, ref: str) -> dict[str, Any]: ...

    async def sandbox_expand(self, ref: str, size: str | int) -> dict[str, Any]: ...

    async def sandbox_attach(self, ref: str, mountpoint: str = "", merged: bool = False,
                             rw: bool = False, allow_exec: bool = False) -> dict[str, Any]:
        """Refused (Conflict) while the container runs."""

    async def sandbox_detach(self, ref: str) -> dict[str, Any]: ...


class Backend(ContainerBackend, ImageBackend, SystemBackend, NetworkBackend, VolumeBackend,
              SandboxBackend, DistributionBackend, BuildBackend, Protocol):
    """Everything silod serves."""
