"""The engine: one object that owns the store and the services and implements the API backend."""

from __future__ import annotations

import os
import secrets
import time
from typing import Any, AsyncIterator, Callable

from silobox.compute.spawner import Spawner
from silobox.compute.system import ComputeService
from silobox.api.backend import BuildOptions
from silobox.engine.build.cache import BuildCache
from silobox.engine.build.service import BuildService
from silobox.engine.config import DaemonConfig
from silobox.engine.containerfs import ContainerFilesystems
from silobox.engine.containers import ContainerService
from silobox.engine.distribution import DistributionService, Progress
from silobox.engine.bootstrap import BootstrapService
from silobox.engine.events import EventLog
from silobox.engine.health import HealthMonitor
from silobox.engine.links import LinkHook, Links, VolumesFromHook
from silobox.engine.images import ImageService
from silobox.engine.networks import NetworkService
from silobox.engine.sharing import NamespaceSharingHook
from silobox.engine.stats import StatsService
from silobox.engine.storageops import StorageOps
from silobox.engine.store import ContainerStore
from silobox.engine.system import SystemService


class Engine(ContainerService, StorageOps):
    """dockerd's role: containers ⇄ compute systems + sandboxes; images; the daemon's views."""

    def __init__(self, config: DaemonConfig, spawner: Spawner) -> None:
        from silobox.storage.db import Database
        from silobox.storage.images import ImageStore
        from silobox.storage.layers import LayerStore

        self.config = config
        self.started = time.time()
        _private_dir(config.root)
        os.makedirs(config.containers_dir, mode=0o710, exist_ok=True)
        self.db = Database(config.db_path)
        self.layers = LayerStore(config.root, self.db)
        self.images = ImageStore(self.db, self.layers)
        self.compute = ComputeService(spawner, config.compute_dir, config.cgroup_parent,
                                      pool=config.shim_pool > 0)
        self.daemon_id = self._daemon_id()
        self.event_log = EventLog()
        self.emit_event = self.event_log.emit_event
        self.store = ContainerStore(self.db, config.containers_dir)
        self.health = HealthMonitor(self.store, self.compute, self.event_log)
        lineage = BuildCache(self.db, config.root)
        self.image_service = ImageService(config, self.images, self.layers, self.store,
                                          self.event_log, lineage)
        self._init_containers()
        self._init_storage()
        self.links = Links(self.store)
        self.networks = NetworkService(config, self.db, self.store, self.event_log, self.links,
                                       self.started)
        self.hns = self.networks.hns
        # The order of a container's hooks: copied mounts claim their paths before the
        # storage hook plans its own; legacy links append to the /etc/hosts the network hook
        # writes.
        self.container_hooks.insert(0, VolumesFromHook(self.store))
        self.container_hooks += [self.networks.hook, LinkHook(self.store),
                                 NamespaceSharingHook(self.store, config.containers_dir)]
        self.stats = StatsService(self.store, self.compute)
        self.bootstrap = BootstrapService(config, import_image=self.image_service.image_import)
        self.distribution = DistributionService(config, self.db, self.images, self.layers,
                                                self.event_log)
        self.filesystems = ContainerFilesystems(config, self.store, self.images, self.layers,
                                                storage=self, containers=self,
                                                events=self.event_log)
        self.builds = BuildService(config, lineage, self.images, self.layers, self.store,
                                   self.event_log, image_service=self.image_service,
                                   containers=self, filesystems=self.filesystems,
                                   distribution=self.distribution)
        self.system = SystemService(config, self.daemon_id, self.store, self.images,
                                    self.layers, self.volumes, self.hns, self.compute,
                                    summary=self._summary, volume_users=self._volume_users,
                                    registry_config=self.distribution.registry_config)

    # ----- the API's verbs, answered by the services ------------------------------------------
    async def events(self, since: float = 0, until: float = 0,
                     filters: dict[str, list[str]] | None = None) -> AsyncIterator[dict[str, Any]]:
        return await self.event_log.events(since, until, filters)

    async def container_stats(self, ref: str, stream: bool = True,
                              one_shot: bool = False) -> AsyncIterator[dict[str, Any]]:
        return await self.stats.container_stats(ref, stream, one_shot)

    async def container_top(self, ref: str, ps_args: str | None = None) -> dict[str, Any]:
        return await self.stats.container_top(ref, ps_args)

    async def image_bootstrap(self, ref: str, suite: str | None = None,
                              variant: str = "minbase", mirror: str | None = None,
                              progress: Callable[[dict[str, Any]], None] | None = None) -> str:
        return await self.bootstrap.image_bootstrap(ref, suite, variant, mirror, progress)

    async def image_pull(self, image: str, tag: str = "", auth_header: str | None = None,
                         platform: str = "", progress: Progress | None = None) -> list[dict]:
        return await self.distribution.image_pull(image, tag, auth_header, platform, progress)

    async def image_push(self, name: str, tag: str = "", auth_header: str | None = None,
                         progress: Progress | None = None) -> list[dict]:
        return await self.distribution.image_push(name, tag, auth_header, progress)

    async def registry_login(self, body: dict[str, Any]) -> dict[str, str]:
        return await self.distribution.registry_login(body)

    async def distribution_inspect(self, name: str, auth_header: str | None = None
                                   ) -> dict[str, Any]:
        return await self.distribution.distribution_inspect(name, auth_header)

    async def image_list(self, all: bool = False,
                         filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        return await self.image_service.image_list(all, filters)

    async def image_inspect(self, ref: str) -> dict[str, Any]:
        return await self.image_service.image_inspect(ref)

    async def image_history(self, ref: str) -> list[dict[str, Any]]:
        return await self.image_service.image_history(ref)

    async def image_tag(self, ref: str, repo: str, tag: str | None) -> None:
        await self.image_service.image_tag(ref, repo, tag)

    async def image_delete(self, ref: str, force: bool = False,
                           noprune: bool = False) -> list[dict[str, str]]:
        return await self.image_service.image_delete(ref, force, noprune)

    async def image_prune(self, filters: dict[str, list[str]] | None = None) -> dict[str, Any]:
        return await self.image_service.image_prune(filters)

    async def image_import(self, body: AsyncIterator[bytes], repo: str = "", tag: str = "",
                           message: str = "", changes: list[str] | None = None,
                           platform: str = "", progress: Progress | None = None) -> str:
        return await self.image_service.image_import(body, repo, tag, message, changes,
                                                     platform, progress)

    async def image_load(self, body: AsyncIterator[bytes], quiet: bool = False,
                         progress: Progress | None = None) -> list[str]:
        return await self.image_service.image_load(body, quiet, progress)

    async def image_save(self, names: list[str], oci: bool = False) -> AsyncIterator[bytes]:
        return await self.image_service.image_save(names, oci)

    async def container_commit(self, ref: str, repo: str = "", tag: str = "",
                               comment: str = "", author: str = "",
                               changes: list[str] | None = None, pause: bool = True,
                               config: dict[str, Any] | None = None) -> str:
        return await self.filesystems.container_commit(ref, repo, tag, comment, author,
                                                       changes, pause, config)

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
        await self.filesystems.container_archive_put(ref, path, body, no_overwrite_dir_non_dir,
                                                     copy_uid_gid)

    async def build_prepare(self, body: AsyncIterator[bytes], options: BuildOptions) -> Any:
        return await self.builds.build_prepare(body, options)

    async def build_run(self, build: Any, emit: Any) -> str:
        return await self.builds.build_run(build, emit)

    def build_discard(self, build: Any) -> None:
        self.builds.build_discard(build)

    async def build_prune(self, filters: dict[str, list[str]] | None = None,
                          all: bool = False) -> dict[str, Any]:
        return await self.builds.build_prune(filters, all)

    async def container_remove_link(self, name: str) -> None:
        await self.links.container_remove_link(name)

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

    async def version(self) -> dict[str, Any]:
        return await self.system.version()

    async def info(self) -> dict[str, Any]:
        return await self.system.info()

    async def system_df(self) -> dict[str, Any]:
        return await self.system.system_df()

    async def compute_systems(self) -> list[dict[str, Any]]:
        return await self.system.compute_systems()

    async def compute_system_properties(self, ref: str,
                                        types: list[str] | None = None) -> dict[str, Any]:
        return await self.system.compute_system_properties(ref, types)

    def _daemon_id(self) -> str:
        path = os.path.join(self.config.root, "engine-id")
        try:
            with open(path) as f:
                return f.read().strip()
        except FileNotFoundError:
            from silobox.atomic import atomic_write
            new = secrets.token_hex(16)
            atomic_write(path, new)
            return new

    async def start(self) -> None:
        self.image_service.sweep_storage()
        self.distribution.sweep_transfers()
        await self.networks.start_networks()
        await self.recover_containers()
        self.networks.reconcile_networks()

    async def close(self) -> None:
        await self._stop_restarts()
        self._close_storage()
        for system in list(self.compute.systems.values()):
            system.close()
        await self.networks.close_networks()
        self.db.close()


def _private_dir(path: str) -> None:
    """The state directory is root's alone (0700), also when an older version made it 0711:
    the store holds containers' ``Env`` (passwords), their logs and their files."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.stat(path).st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)
