"""The engine: one object that owns the store and the services and implements the API backend."""

from __future__ import annotations

import os
import secrets
import time
from typing import Any, AsyncIterator, Callable

from silobox.compute.spawner import Spawner
from silobox.compute.system import ComputeService
from silobox.engine.build.service import BuildService
from silobox.engine.config import DaemonConfig
from silobox.engine.containers import ContainerService
from silobox.engine.distribution import DistributionService, Progress
from silobox.engine.bootstrap import BootstrapService
from silobox.engine.events import EventLog
from silobox.engine.health import HealthMonitor
from silobox.engine.imageops import ImageOpsService
from silobox.engine.links import LinkService
from silobox.engine.images import ImageService
from silobox.engine.networks import NetworkService
from silobox.engine.sharing import NamespaceSharing
from silobox.engine.stats import StatsService
from silobox.engine.storageops import StorageOps
from silobox.engine.store import ContainerStore
from silobox.engine.system import SystemService


class Engine(BuildService, ContainerService, ImageOpsService, ImageService,
             NetworkService, StorageOps, LinkService, NamespaceSharing):
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
        self._init_containers()
        self._init_storage()
        self._init_networks()
        self._init_links()
        self._init_sharing()
        self.stats = StatsService(self.store, self.compute)
        self.bootstrap = BootstrapService(config, import_image=self.image_import)
        self.distribution = DistributionService(config, self.db, self.images, self.layers,
                                                self.event_log)
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
        self.sweep_storage()
        self.distribution.sweep_transfers()
        await self.start_networks()
        await self.recover_containers()
        self.reconcile_networks()

    async def close(self) -> None:
        await self._stop_restarts()
        self._close_storage()
        for system in list(self.compute.systems.values()):
            system.close()
        await self.close_networks()
        self.db.close()


def _private_dir(path: str) -> None:
    """The state directory is root's alone (0700), also when an older version made it 0711:
    the store holds containers' ``Env`` (passwords), their logs and their files."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.stat(path).st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)
