"""The engine as the API sees it: one backend object over the engine's services.

``Engine`` implements every protocol of ``api/backend.py`` by handing each verb to the service
that owns it, and starts and stops the services in their order. It holds no state of its own;
the services are built and wired by silod's composition root (``silobox/daemon/wiring.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from silobox.api.backend import BuildOptions, StreamSession
from silobox.engine.bootstrap import BootstrapService
from silobox.engine.build.service import BuildService
from silobox.engine.containerfs import ContainerFilesystems
from silobox.engine.containers import ContainerService
from silobox.engine.distribution import DistributionService
from silobox.engine.events import EventLog
from silobox.engine.execs import ExecService
from silobox.engine.images import ImageService
from silobox.engine.links import Links
from silobox.engine.networks import NetworkService
from silobox.engine.stats import StatsService
from silobox.engine.storageops import StorageOps
from silobox.engine.system import SystemService
from silobox.engine.views import ContainerViews


@dataclass
class Engine:
    """dockerd's role: containers ⇄ compute systems + sandboxes; images; the daemon's views."""

    db: Any
    compute: Any
    event_log: EventLog
    containers: ContainerService
    execs: ExecService
    views: ContainerViews
    storage: StorageOps
    networks: NetworkService
    links: Links
    images: ImageService
    filesystems: ContainerFilesystems
    builds: BuildService
    distribution: DistributionService
    bootstrap: BootstrapService
    stats: StatsService
    system: SystemService

    async def start(self) -> None:
        """Clean what a killed silod left, bring the networks up, re-adopt the containers."""
        self.images.sweep_storage()
        self.distribution.sweep_transfers()
        await self.networks.start_networks()
        await self.containers.recover_containers()
        self.networks.reconcile_networks()

    async def close(self) -> None:
        """silod stops; running containers keep running under their shims."""
        await self.containers.stop_restarts()
        self.storage._close_storage()
        for system in list(self.compute.systems.values()):
            system.close()
        await self.networks.close_networks()
        self.db.close()

    # ----- ContainerBackend -------------------------------------------------------
    async def container_create(self, name: str | None, body: dict[str, Any],
                               platform: str = "") -> dict[str, Any]:
        return await self.containers.container_create(name, body, platform)

    async def container_start(self, ref: str) -> None:
        await self.containers.container_start(ref)

    async def container_stop(self, ref: str, timeout: int | None = None,
                             signal: str | None = None) -> None:
        await self.containers.container_stop(ref, timeout, signal)

    async def container_restart(self, ref: str, timeout: int | None = None,
                                signal: str | None = None) -> None:
        await self.containers.container_restart(ref, timeout, signal)

    async def container_kill(self, ref: str, signal: str = "SIGKILL") -> None:
        await self.containers.container_kill(ref, signal)

    async def container_wait(self, ref: str, condition: str = "not-running") -> dict[str, Any]:
        return await self.containers.container_wait(ref, condition)

    async def container_remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        await self.containers.container_remove(ref, force, volumes)

    async def container_remove_link(self, name: str) -> None:
        await self.links.container_remove_link(name)

    async def container_pause(self, ref: str) -> None:
        await self.containers.container_pause(ref)

    async def container_unpause(self, ref: str) -> None:
        await self.containers.container_unpause(ref)

    async def container_rename(self, ref: str, new_name: str) -> None:
        await self.containers.container_rename(ref, new_name)

    async def container_inspect(self, ref: str, size: bool = False) -> dict[str, Any]:
        return await self.views.container_inspect(ref, size)

    async def container_list(self, all: bool = False, limit: int = -1, size: bool = False,
                             filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        return await self.views.container_list(all, limit, size, filters)

    async def container_logs(self, ref: str, *, stdout: bool = True, stderr: bool = True,
                             follow: bool = False, since: float = 0, until: float = 0,
                             timestamps: bool = False, tail: str = "all"
                             ) -> tuple[bool, AsyncIterator[tuple[int, bytes]]]:
        return await self.containers.container_logs(ref, stdout=stdout, stderr=stderr, follow=follow, since=since, until=until, timestamps=timestamps, tail=tail)

    async def container_top(self, ref: str, ps_args: str | None = None) -> dict[str, Any]:
        return await self.stats.container_top(ref, ps_args)

    async def container_stats(self, ref: str, stream: bool = True,
                              one_shot: bool = False) -> AsyncIterator[dict[str, Any]]:
        return await self.stats.container_stats(ref, stream, one_shot)

    async def container_attach(self, ref: str, *, stdin: bool, stdout: bool, stderr: bool,
                               logs: bool, stream: bool) -> StreamSession:
        return await self.containers.container_attach(ref, stdin=stdin, stdout=stdout, stderr=stderr, logs=logs, stream=stream)

    async def container_resize(self, ref: str, height: int, width: int) -> None:
        await self.containers.container_resize(ref, height, width)

    async def container_update(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.containers.container_update(ref, body)

    async def container_prune(self, filters: dict[str, list[str]] | None = None
                              ) -> dict[str, Any]:
        return await self.containers.container_prune(filters)

    async def exec_create(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.execs.exec_create(ref, body)

    async def exec_start(self, exec_id: str, detach: bool = False,
                         tty: bool | None = None) -> StreamSession | None:
        return await self.execs.exec_start(exec_id, detach, tty)

    async def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        return await self.execs.exec_inspect(exec_id)

    async def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        await self.execs.exec_resize(exec_id, height, width)

    # ----- ImageBackend -----------------------------------------------------------
    async def image_list(self, all: bool = False,
                         filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        return await self.images.image_list(all, filters)

    async def image_inspect(self, ref: str) -> dict[str, Any]:
        return await self.images.image_inspect(ref)

    async def image_history(self, ref: str) -> list[dict[str, Any]]:
        return await self.images.image_history(ref)

    async def image_tag(self, ref: str, repo: str, tag: str | None) -> None:
        await self.images.image_tag(ref, repo, tag)

    async def image_delete(self, ref: str, force: bool = False,
                           noprune: bool = False) -> list[dict[str, str]]:
        return await self.images.image_delete(ref, force, noprune)

    async def image_prune(self, filters: dict[str, list[str]] | None = None) -> dict[str, Any]:
        return await self.images.image_prune(filters)

    async def image_import(self, body: AsyncIterator[bytes], repo: str = "", tag: str = "",
                           message: str = "", changes: list[str] | None = None,
                           platform: str = "", progress: Any = None) -> str:
        return await self.images.image_import(body, repo, tag, message, changes, platform, progress)

    async def image_load(self, body: AsyncIterator[bytes], quiet: bool = False,
                         progress: Any = None) -> list[str]:
        return await self.images.image_load(body, quiet, progress)

    async def image_save(self, names: list[str], oci: bool = False) -> AsyncIterator[bytes]:
        return await self.images.image_save(names, oci)

    async def image_bootstrap(self, ref: str, suite: str | None = None,
                              variant: str = "minbase", mirror: str | None = None,
                              progress: Callable[[dict[str, Any]], None] | None = None) -> str:
        return await self.bootstrap.image_bootstrap(ref, suite, variant, mirror, progress)

    async def container_commit(self, ref: str, repo: str = "", tag: str = "",
                               comment: str = "", author: str = "",
                               changes: list[str] | None = None, pause: bool = True,
                               config: dict[str, Any] | None = None) -> str:
        return await self.filesystems.container_commit(ref, repo, tag, comment, author, changes, pause, config)

    async def container_export(self, ref: str) -> AsyncIterator[bytes]:
        return await self.filesystems.container_export(ref)

    async def container_changes(self, ref: str) -> list[dict[str, Any]] | None:
        return await self.filesystems.container_changes(ref)

    async def container_archive_stat(self, ref: str, path: str) -> dict[str, Any]:
        return await self.filesystems.container_archive_stat(ref, path)

    async def container_archive_get(self, ref: str, path: str
                                    ) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
        return await self.filesystems.container_archive_get(ref, path)

    async def container_archive_put(self, ref: str, path: str, body: AsyncIterator[bytes],
                                    no_overwrite_dir_non_dir: bool = False,
                                    copy_uid_gid: bool = False) -> None:
        await self.filesystems.container_archive_put(ref, path, body, no_overwrite_dir_non_dir, copy_uid_gid)

    # ----- SystemBackend ----------------------------------------------------------
    async def version(self) -> dict[str, Any]:
        return await self.system.version()

    async def info(self) -> dict[str, Any]:
        return await self.system.info()

    async def events(self, since: float = 0, until: float = 0,
                     filters: dict[str, list[str]] | None = None
                     ) -> AsyncIterator[dict[str, Any]]:
        return await self.event_log.events(since, until, filters)

    async def system_df(self) -> dict[str, Any]:
        return await self.system.system_df()

    async def compute_systems(self) -> list[dict[str, Any]]:
        return await self.system.compute_systems()

    async def compute_system_properties(self, ref: str,
                                        types: list[str] | None = None) -> dict[str, Any]:
        return await self.system.compute_system_properties(ref, types)

    # ----- NetworkBackend ---------------------------------------------------------
    async def network_list(self, filters: dict[str, list[str]] | None = None
                           ) -> list[dict[str, Any]]:
        return await self.networks.network_list(filters)

    async def network_inspect(self, ref: str) -> dict[str, Any]:
        return await self.networks.network_inspect(ref)

    async def network_create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.networks.network_create(body)

    async def network_remove(self, ref: str) -> None:
        await self.networks.network_remove(ref)

    async def network_prune(self, filters: dict[str, list[str]] | None = None
                            ) -> dict[str, Any]:
        return await self.networks.network_prune(filters)

    async def network_connect(self, ref: str, container: str,
                              endpoint_config: dict[str, Any]) -> None:
        await self.networks.network_connect(ref, container, endpoint_config)

    async def network_disconnect(self, ref: str, container: str, force: bool = False) -> None:
        await self.networks.network_disconnect(ref, container, force)

    async def hns_networks(self) -> list[dict[str, Any]]:
        return await self.networks.hns_networks()

    async def hns_network(self, ref: str) -> dict[str, Any]:
        return await self.networks.hns_network(ref)

    async def hns_endpoints(self) -> list[dict[str, Any]]:
        return await self.networks.hns_endpoints()

    async def hns_endpoint(self, ref: str) -> dict[str, Any]:
        return await self.networks.hns_endpoint(ref)

    async def hns_endpoint_policies(self, ref: str, request_type: str,
                                    policies: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.networks.hns_endpoint_policies(ref, request_type, policies)

    # ----- VolumeBackend ----------------------------------------------------------
    async def volume_list(self, filters: dict[str, list[str]] | None = None
                          ) -> dict[str, Any]:
        return await self.storage.volume_list(filters)

    async def volume_create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.storage.volume_create(body)

    async def volume_inspect(self, name: str) -> dict[str, Any]:
        return await self.storage.volume_inspect(name)

    async def volume_remove(self, name: str, force: bool = False) -> None:
        await self.storage.volume_remove(name, force)

    async def volume_prune(self, filters: dict[str, list[str]] | None = None,
                           all_volumes: bool = False) -> dict[str, Any]:
        return await self.storage.volume_prune(filters, all_volumes)

    # ----- SandboxBackend ---------------------------------------------------------
    async def sandbox_list(self) -> list[dict[str, Any]]:
        return await self.storage.sandbox_list()

    async def sandbox_inspect(self, ref: str) -> dict[str, Any]:
        return await self.storage.sandbox_inspect(ref)

    async def sandbox_expand(self, ref: str, size: str | int) -> dict[str, Any]:
        return await self.storage.sandbox_expand(ref, size)

    async def sandbox_attach(self, ref: str, mountpoint: str = "", merged: bool = False,
                             rw: bool = False, allow_exec: bool = False) -> dict[str, Any]:
        return await self.storage.sandbox_attach(ref, mountpoint, merged, rw, allow_exec)

    async def sandbox_detach(self, ref: str) -> dict[str, Any]:
        return await self.storage.sandbox_detach(ref)

    # ----- DistributionBackend ----------------------------------------------------
    async def image_pull(self, image: str, tag: str = "", auth_header: str | None = None,
                         platform: str = "",
                         progress: Callable[[dict[str, Any]], None] | None = None
                         ) -> list[dict[str, Any]]:
        return await self.distribution.image_pull(image, tag, auth_header, platform, progress)

    async def image_push(self, name: str, tag: str = "", auth_header: str | None = None,
                         progress: Callable[[dict[str, Any]], None] | None = None
                         ) -> list[dict[str, Any]]:
        return await self.distribution.image_push(name, tag, auth_header, progress)

    async def registry_login(self, body: dict[str, Any]) -> dict[str, str]:
        return await self.distribution.registry_login(body)

    async def distribution_inspect(self, name: str, auth_header: str | None = None
                                   ) -> dict[str, Any]:
        return await self.distribution.distribution_inspect(name, auth_header)

    # ----- BuildBackend -----------------------------------------------------------
    async def build_prepare(self, body: AsyncIterator[bytes], options: BuildOptions) -> Any:
        return await self.builds.build_prepare(body, options)

    async def build_run(self, build: Any, emit: Any) -> str:
        return await self.builds.build_run(build, emit)

    def build_discard(self, build: Any) -> None:
        self.builds.build_discard(build)

    async def build_prune(self, filters: dict[str, list[str]] | None = None,
                          all: bool = False) -> dict[str, Any]:
        return await self.builds.build_prune(filters, all)
