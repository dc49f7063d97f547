"""Fakes of what the container service is given (compute, storage, images, the host, hooks),
recording what it asks, so that its decisions are tested without a kernel."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from silobox.compute.system import ExitStatus, State
from silobox.engine.config import DaemonConfig
from silobox.engine.containers import ContainerService
from silobox.engine.events import EventLog
from silobox.engine.execs import ExecService
from silobox.engine.health import HealthMonitor
from silobox.engine.hooks import ContainerHook
from silobox.engine.store import ContainerStore
from silobox.errors import NotFound
from silobox.storage.db import Database


class RecordingHost:
    """The host seam: every question and action is recorded; job objects are a list."""

    def __init__(self, job_objects: list[str] | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.jobs = list(job_objects or [])
        self.files: set[str] = set()

    def hostname(self) -> str:
        return "the-host"

    def exists(self, path: str) -> bool:
        return path in self.files

    def job_objects(self, parent: str) -> list[str]:
        return list(self.jobs)

    def remove_job_object(self, name: str, parent: str) -> None:
        self.calls.append(("remove_job_object", name, parent))
        self.jobs.remove(name)

    def remove_tree(self, path: str) -> None:
        self.calls.append(("remove_tree", path))

    def mount_tmpfs(self, path: str, options: str) -> None:
        self.calls.append(("mount_tmpfs", path, options))

    def unmount(self, path: str) -> None:
        self.calls.append(("unmount", path))


class FakeSystem:
    """A compute system whose processes are imaginary; ``finish`` makes it exit."""

    def __init__(self, cid: str, document: dict[str, Any]) -> None:
        self.id = cid
        self.document = document
        self.state = State.CREATED
        self.pid = 0
        self.exit: ExitStatus | None = None
        self.started_at = ""
        self.on_exit: list[Any] = []
        self.params: Any = None
        self.alive_on_reattach = True

    async def start(self, params: Any, **_: Any) -> None:
        self.params = params
        self.state = State.RUNNING
        self.pid = 4242
        self.started_at = "2026-01-01T00:00:00.000000000Z"

    async def reattach(self) -> None:
        if self.alive_on_reattach:
            self.state, self.pid = State.RUNNING, 4242
        else:
            self.finish(0)

    def finish(self, code: int) -> None:
        self.state, self.pid = State.STOPPED, 0
        self.exit = ExitStatus(code, finished_at="2026-01-01T00:00:01.000000000Z")
        for cb in list(self.on_exit):
            res = cb(self)
            if asyncio.iscoroutine(res):
                asyncio.get_running_loop().create_task(res)

    async def shutdown(self, timeout: float = 10.0, sig: int = 15) -> None:
        self.finish(0)

    async def terminate(self) -> None:
        self.finish(137)

    async def signal(self, sig: int) -> None:
        pass

    async def pause(self) -> None:
        self.state = State.PAUSED

    async def resume(self) -> None:
        self.state = State.RUNNING


class FakeCompute:
    def __init__(self) -> None:
        self.systems: dict[str, FakeSystem] = {}
        self.created: list[str] = []
        self.alive_on_reattach = True

    def create(self, cid: str, document: dict[str, Any]) -> FakeSystem:
        system = FakeSystem(cid, document)
        system.alive_on_reattach = self.alive_on_reattach
        self.systems[cid] = system
        self.created.append(cid)
        return system

    def open(self, cid: str) -> FakeSystem:
        try:
            return self.systems[cid]
        except KeyError:
            raise NotFound(f"compute system {cid} does not exist") from None

    def close_system(self, cid: str, delete_state: bool = True) -> None:
        self.systems.pop(cid, None)

    def state_dir(self, cid: str) -> str:
        return os.path.join("/nonexistent-state", cid)


class FakeSandbox:
    kind = "dir"

    def __init__(self, root: str, cid: str) -> None:
        self.path = os.path.join(root, cid, "sandbox")

    def create(self) -> None:
        os.makedirs(self.path, exist_ok=True)

    def remove(self) -> None:
        pass

    def used_bytes(self) -> int:
        return 0


class FakeStorage:
    def __init__(self, root: str) -> None:
        self.root = root

    def sandbox_for(self, cid: str) -> FakeSandbox:
        return FakeSandbox(self.root, cid)

    def container_storage_layers(self, c: Any) -> list[dict[str, str]]:
        return []


class FakeImage:
    id = "sha256:" + "ab" * 32
    config = {"config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]}}


class FakeImages:
    """Both the image store and the image service, as far as containers use them."""

    async def image_for_create(self, ref: str) -> FakeImage:
        if ref != "busybox":
            raise NotFound(f"No such image: {ref}")
        return FakeImage()

    def resolve(self, ref: str) -> FakeImage:
        if ref != "busybox":
            raise NotFound(f"No such image: {ref}")
        return FakeImage()

    def image_shown(self, c: Any, resolved: Any = None) -> str:
        return c.config.get("Image") or ""


class RecordingHook(ContainerHook):
    """A hook that writes down each point it is called at, in one shared journal."""

    def __init__(self, name: str, journal: list[str], fail_on_create: bool = False) -> None:
        self.name = name
        self.journal = journal
        self.fail_on_create = fail_on_create

    def on_create(self, c: Any, body: dict[str, Any]) -> None:
        self.journal.append(f"{self.name}.create")
        if self.fail_on_create:
            from silobox.errors import InvalidArgument
            raise InvalidArgument(f"{self.name} refuses")

    def undo_create(self, c: Any) -> None:
        self.journal.append(f"{self.name}.undo_create")

    async def on_start(self, c: Any, document: dict[str, Any]) -> None:
        self.journal.append(f"{self.name}.start")

    async def on_stop(self, c: Any) -> None:
        self.journal.append(f"{self.name}.stop")

    async def on_remove(self, c: Any) -> None:
        self.journal.append(f"{self.name}.remove")

    async def on_recover(self, c: Any) -> None:
        self.journal.append(f"{self.name}.recover")


class Rig:
    """A container service over fakes, with its store in ``root`` (a test's tmp_path)."""

    def __init__(self, root: str, hooks: list[ContainerHook] | None = None,
                 host: RecordingHost | None = None, db: Database | None = None) -> None:
        self.config = DaemonConfig(root=root, exec_root=os.path.join(root, "run"),
                                   cgroup_parent="silobox-test")
        os.makedirs(self.config.containers_dir, exist_ok=True)
        self.db = db or Database(self.config.db_path)
        self.store = ContainerStore(self.db, self.config.containers_dir)
        self.compute = FakeCompute()
        self.host = host or RecordingHost()
        self.events = EventLog()
        images = FakeImages()
        self.service = ContainerService(
            self.config, self.store, self.compute, images, images, FakeStorage(root),
            hooks or [], self.events, HealthMonitor(self.store, self.compute, self.events),
            ExecService(self.store, self.compute, self.events), self.host)

    def actions(self) -> list[str]:
        return [e["Action"] for e in self.events.ring]
