"""Docker's event actions for stop and exec, as `docker events` and compose read them."""

from __future__ import annotations

import time
from typing import Any

import docker.errors


def actions_since(api: Any, cid: str, since: float) -> list[tuple[str, dict]]:
    out = []
    for ev in api.events(since=since, until=time.time() + 0.5, decode=True,
                         filters={"container": cid}):
        out.append((ev["Action"], ev["Actor"]["Attributes"]))
    return out


def test_stop_reports_kill_die_stop(silod: Any, run_id: str) -> None:
    api = silod.client
    cid = api.create_container("busybox", ["sleep", "60"], name=f"ev{run_id}stop",
                               stop_signal="SIGTERM")["Id"]
    try:
        api.start(cid)
        since = time.time() - 0.1
        api.stop(cid, timeout=1)
        got = actions_since(api, cid, since)[-3:]   # since has whole seconds: start may be in
        assert [a for a, _ in got] == ["kill", "die", "stop"], got
        assert got[0][1]["signal"] == "15" and got[1][1]["exitCode"] == "137"
    finally:
        try:
            api.remove_container(cid, force=True)
        except docker.errors.NotFound:
            pass


def test_exec_reports_create_start_die_with_the_command(silod: Any, run_id: str) -> None:
    api = silod.client
    cid = api.create_container("busybox", ["sleep", "60"], name=f"ev{run_id}exec")["Id"]
    try:
        api.start(cid)
        since = time.time() - 0.1
        eid = api.exec_create(cid, ["sh", "-c", "exit 3"])["Id"]
        api.exec_start(eid)
        deadline = time.time() + 5
        while api.exec_inspect(eid)["Running"] and time.time() < deadline:
            time.sleep(0.05)
        got = actions_since(api, cid, since)[-3:]
        assert [a for a, _ in got] == ["exec_create: sh -c exit 3", "exec_start: sh -c exit 3",
                                       "exec_die"], got
        assert got[2][1]["execID"] == eid and got[2][1]["exitCode"] == "3"
        # The event filter matches the action's name before the colon, as Docker's does.
        only = list(api.events(since=since, until=time.time() + 0.2, decode=True,
                               filters={"container": cid, "event": "exec_start"}))
        assert [e["Action"] for e in only] == ["exec_start: sh -c exit 3"]
    finally:
        api.remove_container(cid, force=True)
