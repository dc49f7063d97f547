"""The engine: one object that owns the store and the services and implements the API backend."""

from __future__ import annotations

import os
import secrets
import time

from silobox.compute.spawner import Spawner
from silobox.compute.system import ComputeService
from silobox.engine.build.service import BuildService
from silobox.engine.config import DaemonConfig
from silobox.engine.containers import ContainerService
from silobox.engine.distribution import DistributionService
from silobox.engine.bootstrap import BootstrapService
from silobox.engine.events import EventLog
from silobox.engine.health import HealthService
from silobox.engine.imageops import ImageOpsService
from silobox.engine.links import LinkService
from silobox.engine.images import ImageService
from silobox.engine.networks import NetworkService
from silobox.engine.sharing import NamespaceSharing
from silobox.engine.stats import StatsService
from silobox.engine.storageops import StorageOps
from silobox.engine.system import SystemService


class Engine(BuildService, ContainerService, StatsService, ImageOpsService, ImageService,
             SystemService, NetworkService, StorageOps, HealthService, BootstrapService,
             DistributionService, EventLog, LinkService, NamespaceSharing):
    """dockerd's role: containers ⇄ compute systems + sandboxes; images; the daemon's views."""

    def __init__(self, config: DaemonConfig, spawner: Spawner) -> None:
        from silobox.storage.db import Database
        from silobox.storage.images import ImageStore
        from silobox.storage.layers import LayerStore

        EventLog.__init__(self)
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
        self._init_containers()
        self._init_storage()
        self._init_networks()
        self._init_links()
        self._init_sharing()

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
        self.sweep_transfers()
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
