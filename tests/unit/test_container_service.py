"""The container service's decisions, over fakes of compute, storage, images and the host:
create validation, hook order, state transitions, restart policies, recovery."""

from __future__ import annotations

import asyncio
import pytest

from silobox.engine import restart
from silobox.engine.record import Container
from silobox.engine.state import Status, status
from silobox.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, NotModified

from engine_fakes import RecordingHook, RecordingHost, Rig


def run(coro):
    return asyncio.run(coro)


def test_create_refuses_before_anything_is_made(tmp_path) -> None:
    rig = Rig(str(tmp_path))

    async def go() -> None:
        with pytest.raises(NotFound):
            await rig.service.container_create(None, {"Image": "missing"})
        with pytest.raises(InvalidArgument, match="Invalid isolation"):
            await rig.service.container_create(None, {"Image": "busybox",
                                                      "HostConfig": {"Isolation": "bogus"}})
        with pytest.raises(InvalidArgument, match="--isolation hyperv: --privileged"):
            await rig.service.container_create(None, {"Image": "busybox", "HostConfig": {
                "Isolation": "hyperv", "Privileged": True}})
        with pytest.raises(InvalidArgument, match="image name is required"):
            await rig.service.container_create(None, {})
        with pytest.raises(InvalidArgument, match="--init needs"):
            await rig.service.container_create(None, {"Image": "busybox",
                                                      "HostConfig": {"Init": True}})
        with pytest.raises(InvalidArgument, match="Conflicting options: hostname"):
            await rig.service.container_create(None, {
                "Image": "busybox", "Hostname": "x", "HostConfig": {"UTSMode": "host"}})
    run(go())
    assert len(rig.store) == 0 and rig.compute.created == []


def test_create_fills_in_the_image_and_the_name(tmp_path) -> None:
    rig = Rig(str(tmp_path))
    out = run(rig.service.container_create("web", {"Image": "busybox",
                                                   "HostConfig": {"UTSMode": "host"}}))
    c = rig.store.find("web")
    assert c.id == out["Id"] and status(c) is Status.CREATED
    assert c.path == "sh" and c.config["Env"] == ["PATH=/bin"]
    assert c.config["Hostname"] == "the-host"     # the host's name, asked of the host seam
    with pytest.raises(AlreadyExists):
        run(rig.service.container_create("web", {"Image": "busybox"}))
    assert rig.actions() == ["create"]


def test_a_refusing_hook_undoes_the_hooks_before_it_in_reverse(tmp_path) -> None:
    journal: list[str] = []
    hooks = [RecordingHook("volumes", journal), RecordingHook("network", journal),
             RecordingHook("links", journal, fail_on_create=True)]
    rig = Rig(str(tmp_path), hooks)
    with pytest.raises(InvalidArgument, match="links refuses"):
        run(rig.service.container_create("xx", {"Image": "busybox"}))
    assert journal == ["volumes.create", "network.create", "links.create",
                       "network.undo_create", "volumes.undo_create"]
    assert len(rig.store) == 0


def test_hooks_are_called_in_their_order_through_a_life(tmp_path) -> None:
    journal: list[str] = []
    rig = Rig(str(tmp_path), [RecordingHook("a", journal), RecordingHook("b", journal)])

    async def go() -> None:
        cid = (await rig.service.container_create(None, {"Image": "busybox"}))["Id"]
        await rig.service.container_start(cid)
        await rig.service.container_stop(cid, timeout=1)
        await rig.service.container_remove(cid)
    run(go())
    assert journal == ["a.create", "b.create", "a.start", "b.start", "a.stop", "b.stop",
                       "a.remove", "b.remove"]
    assert rig.actions() == ["create", "start", "kill", "die", "stop", "destroy"]
    assert len(rig.store) == 0


def test_state_follows_the_verbs(tmp_path) -> None:
    rig = Rig(str(tmp_path))

    async def go() -> None:
        cid = (await rig.service.container_create(None, {"Image": "busybox"}))["Id"]
        c = rig.store[cid]
        with pytest.raises(Conflict, match="is not running"):
            await rig.service.container_pause(cid)
        await rig.service.container_start(cid)
        assert status(c) is Status.RUNNING and c.state["Pid"] == 4242
        with pytest.raises(NotModified):
            await rig.service.container_start(cid)
        await rig.service.container_pause(cid)
        assert status(c) is Status.PAUSED and c.state["Paused"]
        with pytest.raises(Conflict, match="cannot start a paused container"):
            await rig.service.container_start(cid)
        with pytest.raises(Conflict, match="cannot remove a running container"):
            await rig.service.container_remove(cid)
        await rig.service.container_unpause(cid)
        await rig.service.container_kill(cid)
        assert status(c) is Status.EXITED and c.state["ExitCode"] == 137
        with pytest.raises(Conflict, match="is not running"):
            await rig.service.container_kill(cid)
    run(go())
    # the record on disk says the same as the one in memory
    again = Rig(str(tmp_path), db=rig.db)
    assert [status(c) for c in again.store.values()] == [Status.EXITED]


@pytest.mark.parametrize("policy, stopped, code, count, expected", [
    ({"Name": "no"}, False, 1, 0, False),
    ({"Name": "always"}, False, 0, 0, True),
    ({"Name": "always"}, True, 0, 0, False),
    ({"Name": "unless-stopped"}, False, 0, 0, True),
    ({"Name": "on-failure"}, False, 0, 0, False),
    ({"Name": "on-failure"}, False, 3, 99, True),
    ({"Name": "on-failure", "MaximumRetryCount": 2}, False, 3, 1, True),
    ({"Name": "on-failure", "MaximumRetryCount": 2}, False, 3, 2, False),
])
def test_restart_after_exit(policy, stopped, code, count, expected) -> None:
    c = Container(id="c1", name="c1", image="i", config={}, host_config={"RestartPolicy": policy},
                  restart_count=count, silobox={"StoppedByUser": stopped})
    assert restart.restart_after_exit(c, code) is expected


def test_restart_with_the_daemon_and_back_off() -> None:
    def record(name, stopped):
        return Container(id="c1", name="c1", image="i", config={},
                         host_config={"RestartPolicy": {"Name": name}},
                         silobox={"StoppedByUser": stopped})
    assert restart.start_with_daemon(record("always", True))
    assert restart.start_with_daemon(record("unless-stopped", False))
    assert not restart.start_with_daemon(record("unless-stopped", True))
    assert not restart.start_with_daemon(record("on-failure", False))
    assert restart.next_backoff(None, 0) == 0.1
    assert restart.next_backoff(0.1, 1) == 0.2
    assert restart.next_backoff(40, 1) == 60
    assert restart.next_backoff(40, 11) == 0.1


def test_an_exit_nobody_asked_for_restarts_an_always_container(tmp_path) -> None:
    rig = Rig(str(tmp_path))

    async def go() -> None:
        cid = (await rig.service.container_create(
            None, {"Image": "busybox", "HostConfig": {"RestartPolicy": {"Name": "always"}}}))["Id"]
        await rig.service.container_start(cid)
        rig.compute.systems[cid].finish(3)
        await asyncio.sleep(0.05)
        assert status(rig.store[cid]) is Status.RESTARTING
        await asyncio.sleep(0.3)
        assert status(rig.store[cid]) is Status.RUNNING
        assert rig.store[cid].restart_count == 1
        await rig.service.container_stop(cid, timeout=1)   # a user's stop: no more restarts
        await asyncio.sleep(0.3)
        assert status(rig.store[cid]) is Status.EXITED
        await rig.service.stop_restarts()
    run(go())
    assert rig.compute.created.count(rig.store.find(next(iter(rig.store))).id) == 2


def test_auto_remove_goes_with_the_exit(tmp_path) -> None:
    rig = Rig(str(tmp_path))

    async def go() -> None:
        cid = (await rig.service.container_create(
            None, {"Image": "busybox", "HostConfig": {"AutoRemove": True}}))["Id"]
        await rig.service.container_start(cid)
        rig.compute.systems[cid].finish(0)
        await asyncio.sleep(0.05)
    run(go())
    assert len(rig.store) == 0
    assert rig.actions()[-2:] == ["die", "destroy"]


def test_recovery_readopts_the_running_and_sweeps_the_orphans(tmp_path) -> None:
    journal: list[str] = []
    first = Rig(str(tmp_path), [RecordingHook("net", journal)])

    async def make() -> tuple[str, str]:
        alive = (await first.service.container_create("alive", {"Image": "busybox"}))["Id"]
        gone = (await first.service.container_create("gone", {"Image": "busybox"}))["Id"]
        await first.service.container_start(alive)
        await first.service.container_start(gone)
        return alive, gone
    alive, gone = run(make())
    journal.clear()

    # silod restarts: the records say both run; one shim is still there, the other is not
    host = RecordingHost(job_objects=[alive, "leftover"])
    second = Rig(str(tmp_path), [RecordingHook("net", journal)], host=host, db=first.db)
    second.compute.alive_on_reattach = True

    async def recover() -> None:
        original = second.compute.create

        def create(cid, document):
            system = original(cid, document)
            system.alive_on_reattach = cid == alive
            return system
        second.compute.create = create   # type: ignore[method-assign]
        await second.service.recover_containers()
        await asyncio.sleep(0.05)
    run(recover())
    assert status(second.store[alive]) is Status.RUNNING
    assert status(second.store[gone]) is Status.EXITED
    assert journal == ["net.recover", "net.stop"]
    assert ("remove_job_object", "leftover", "silobox-test") in host.calls
    assert not any(call[:2] == ("remove_job_object", alive) for call in host.calls)


def test_a_record_reads_and_writes_the_stored_document_unchanged() -> None:
    """A state directory from an earlier silod: every key comes back as it was stored,
    unknown ones included."""
    doc = {"Id": "ab" * 32, "Created": "2026-01-01T00:00:00Z", "Path": "sh", "Args": ["-c", "x"],
           "State": {"Status": "exited", "Running": False}, "Image": "sha256:" + "cd" * 32,
           "ResolvConfPath": "/r", "HostnamePath": "/h", "HostsPath": "/hs", "LogPath": "/l",
           "Name": "/web", "RestartCount": 2, "Driver": "windowsfilter", "Platform": "linux",
           "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "", "ExecIDs": None,
           "HostConfig": {"NetworkMode": "nat"}, "GraphDriver": {"Name": "windowsfilter"},
           "Mounts": [{"Destination": "/data"}], "Config": {"Image": "busybox"},
           "NetworkSettings": {"Networks": {}}, "Silobox": {"StoppedByUser": True},
           "SomethingNewer": {"kept": 1}}
    c = Container.from_document(doc)
    assert c.name == "web" and c.restart_count == 2 and c.stopped_by_user
    assert c.to_document() == doc and list(c.to_document()) == list(doc)
    c.name = "db"
    assert c.to_document()["Name"] == "/db"
    older = {k: v for k, v in doc.items() if k not in ("RestartCount", "Mounts", "Silobox")}
    c = Container.from_document(older)
    assert c.restart_count == 0 and c.mounts == [] and c.silobox == {}


def test_ps_filters_and_inspect(tmp_path) -> None:
    from engine_fakes import FakeImages, FakeStorage
    from silobox.engine.views import ContainerViews

    rig = Rig(str(tmp_path))
    views = ContainerViews(rig.config, rig.store, rig.compute, FakeImages(), FakeImages(),
                           FakeStorage(str(tmp_path)), [], rig.service.execs)

    async def go() -> None:
        up = (await rig.service.container_create("up", {"Image": "busybox",
                                                        "Labels": {"tier": "web"}}))["Id"]
        await rig.service.container_create("idle", {"Image": "busybox"})
        await rig.service.container_start(up)
        assert [c["Names"] for c in await views.container_list()] == [["/up"]]
        assert {c["Names"][0] for c in await views.container_list(all=True)} == {"/up", "/idle"}
        only = await views.container_list(all=True, filters={"label": ["tier=web"]})
        assert [c["Id"] for c in only] == [up]
        created = await views.container_list(filters={"status": ["created"]})
        assert [c["Names"] for c in created] == [["/idle"]]
        with pytest.raises(InvalidArgument, match="invalid filter 'colour'"):
            await views.container_list(filters={"colour": ["red"]})
        with pytest.raises(InvalidArgument, match="status=sleepy"):
            await views.container_list(filters={"status": ["sleepy"]})
        exec_id = (await rig.service.execs.exec_create(up, {"Cmd": ["true"]}))["Id"]
        out = await views.container_inspect("up")
        assert out["ExecIDs"] == [exec_id] and "Silobox" in out and out["Name"] == "/up"
        assert out["Silobox"]["ComputeSystem"] == "Running"
        await rig.service.container_remove(up, force=True)
        with pytest.raises(NotFound):
            await rig.service.execs.exec_inspect(exec_id)
    run(go())


def test_exec_needs_a_running_container_and_a_command(tmp_path) -> None:
    rig = Rig(str(tmp_path))

    async def go() -> None:
        cid = (await rig.service.container_create(None, {"Image": "busybox"}))["Id"]
        with pytest.raises(Conflict, match="is not running"):
            await rig.service.execs.exec_create(cid, {"Cmd": ["true"]})
        await rig.service.container_start(cid)
        with pytest.raises(InvalidArgument, match="No exec command"):
            await rig.service.execs.exec_create(cid, {"Cmd": []})
        await rig.service.container_pause(cid)
        with pytest.raises(Conflict, match="is paused"):
            await rig.service.execs.exec_create(cid, {"Cmd": ["true"]})
    run(go())
