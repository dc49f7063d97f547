"""silod's services, built once and wired together: the one place that knows them all."""

from __future__ import annotations

import os
import secrets
import time

from silobox.compute.spawner import Spawner
from silobox.compute.system import ComputeService
from silobox.engine.bootstrap import BootstrapService
from silobox.engine.build.cache import BuildCache
from silobox.engine.build.service import BuildService
from silobox.engine.config import DaemonConfig
from silobox.engine.containerfs import ContainerFilesystems
from silobox.engine.containers import ContainerService
from silobox.engine.core import Engine
from silobox.engine.distribution import DistributionService
from silobox.engine.events import EventLog
from silobox.engine.execs import ExecService
from silobox.engine.health import HealthMonitor
from silobox.engine.hooks import ContainerHook
from silobox.engine.host import KernelHost
from silobox.engine.images import ImageService
from silobox.engine.links import LinkHook, Links, VolumesFromHook
from silobox.engine.networks import NetworkService
from silobox.engine.sharing import NamespaceSharingHook
from silobox.engine.stats import StatsService
from silobox.engine.storageops import StorageOps
from silobox.engine.cgroupparent import CgroupParentHook
from silobox.engine.store import ContainerStore
from silobox.engine.system import SystemService
from silobox.engine.views import ContainerViews
from silobox.storage.db import Database
from silobox.storage.images import ImageStore
from silobox.storage.layers import LayerStore


def build_engine(config: DaemonConfig, spawner: Spawner) -> Engine:
    """Every service of the engine over the state in ``config.root``."""
    started = time.time()
    private_dir(config.root)
    os.makedirs(config.containers_dir, mode=0o710, exist_ok=True)
    db = Database(config.db_path)
    layers = LayerStore(config.root, db)
    image_store = ImageStore(db, layers)
    compute = ComputeService(spawner, config.compute_dir, config.cgroup_parent,
                             pool=config.shim_pool > 0)
    events = EventLog()
    store = ContainerStore(db, config.containers_dir)
    lineage = BuildCache(db, config.root)
    images = ImageService(config, image_store, layers, store, events, lineage)
    host = KernelHost()
    hooks: list[ContainerHook] = []
    storage = StorageOps(config, db, image_store, layers, store, events, hooks)
    links = Links(store)
    networks = NetworkService(config, db, store, events, links, started)
    # A container's hooks, in their order: copied mounts (--volumes-from) claim their paths
    # before the storage hook plans its own; legacy links append to the /etc/hosts that the
    # network hook writes.
    hooks[:] = [VolumesFromHook(store), *hooks, networks.hook, LinkHook(store),
                NamespaceSharingHook(store, config.containers_dir, host),
                CgroupParentHook(store, os.path.join(config.root, "cgroup-parents.json"))]
    health = HealthMonitor(store, compute, events)
    execs = ExecService(store, compute, events)
    containers = ContainerService(config, store, compute, image_store, images, storage, hooks,
                                  events, health, execs, host)
    views = ContainerViews(config, store, compute, image_store, images, storage, hooks, execs)
    distribution = DistributionService(config, db, image_store, layers, events)
    filesystems = ContainerFilesystems(config, store, image_store, layers, storage, containers,
                                       events)
    builds = BuildService(config, lineage, image_store, layers, store, events,
                          image_service=images, containers=containers, filesystems=filesystems,
                          distribution=distribution)
    system = SystemService(config, daemon_id(config.root), store, image_store, layers,
                           storage.volumes, networks.hns, compute, summary=views.summary,
                           volume_users=storage.volume_users,
                           registry_config=distribution.registry_config)
    return Engine(db=db, compute=compute, event_log=events, containers=containers, execs=execs,
                  views=views,
                  storage=storage, networks=networks, links=links, images=images,
                  filesystems=filesystems, builds=builds, distribution=distribution,
                  bootstrap=BootstrapService(config, import_image=images.image_import),
                  stats=StatsService(store, compute), system=system)


def daemon_id(root: str) -> str:
    """The daemon's ``ID`` in ``info``: made once, kept in ``<root>/engine-id``."""
    path = os.path.join(root, "engine-id")
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        from silobox.atomic import atomic_write
        new = secrets.token_hex(16)
        atomic_write(path, new)
        return new


def private_dir(path: str) -> None:
    """The state directory is root's alone (0700), also when an older version made it 0711:
    the store holds containers' ``Env`` (passwords), their logs and their files."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.stat(path).st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)
