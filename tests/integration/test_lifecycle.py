"""Live updates, restart policies, prune and the event stream, through docker-py."""

from __future__ import annotations

import threading
import time

import docker
import pytest

IMAGE = "busybox"


@pytest.fixture
def api(silod):
    return silod.client


def _wait_for(pred, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_update_changes_limits_live(api, silod):
    c = api.create_container(IMAGE, ["sleep", "100"],
                             host_config=api.create_host_config(mem_limit="64m"))
    try:
        api.start(c)
        api.update_container(c, mem_limit="48m", memswap_limit="96m")
        status, _ = silod.request("POST", f"/containers/{c['Id']}/update", {"PidsLimit": 30})
        assert status == 200
        path = f"/sys/fs/cgroup/memory/{silod.cgroup_parent}/{c['Id']}/memory.limit_in_bytes"
        with open(path) as f:
            assert int(f.read()) == 48 * 1024 * 1024
        path = f"/sys/fs/cgroup/pids/{silod.cgroup_parent}/{c['Id']}/pids.max"
        with open(path) as f:
            assert f.read().strip() == "30"
        hc = api.inspect_container(c)["HostConfig"]
        assert hc["Memory"] == 48 * 1024 * 1024 and hc["PidsLimit"] == 30
        with pytest.raises(docker.errors.APIError) as e:
            api.update_container(c, mem_limit="1k")
        assert e.value.status_code == 400
    finally:
        api.remove_container(c, force=True)


def test_restart_policy_on_failure(api):
    c = api.create_container(IMAGE, ["sh", "-c", "exit 3"], host_config=api.create_host_config(
        restart_policy={"Name": "on-failure", "MaximumRetryCount": 2}))
    try:
        api.start(c)
        assert _wait_for(lambda: api.inspect_container(c)["RestartCount"] == 2
                         and not api.inspect_container(c)["State"]["Restarting"]
                         and api.inspect_container(c)["State"]["Status"] == "exited")
        time.sleep(0.5)
        assert api.inspect_container(c)["RestartCount"] == 2
        assert api.inspect_container(c)["State"]["ExitCode"] == 3
    finally:
        api.remove_container(c, force=True)


def test_restart_always_and_stop_ends_it(api):
    c = api.create_container(IMAGE, ["sh", "-c", "sleep 0.2"], host_config=api.create_host_config(
        restart_policy={"Name": "always"}))
    try:
        api.start(c)
        assert _wait_for(lambda: api.inspect_container(c)["RestartCount"] >= 2)
        api.stop(c, timeout=1)
        count = api.inspect_container(c)["RestartCount"]
        time.sleep(1.0)
        info = api.inspect_container(c)
        assert info["RestartCount"] == count and info["State"]["Running"] is False
    finally:
        api.remove_container(c, force=True)


def test_restart_policy_validation(api):
    with pytest.raises(docker.errors.APIError) as e:
        api.create_container(IMAGE, ["true"], host_config=api.create_host_config(
            restart_policy={"Name": "sometimes"}))
    assert e.value.status_code == 400
    with pytest.raises(docker.errors.APIError) as e:
        api.create_container(IMAGE, ["true"], host_config=api.create_host_config(
            restart_policy={"Name": "always"}, auto_remove=True))
    assert e.value.status_code == 400


def test_unless_stopped_survives_daemon_restart(silod):
    api = silod.client
    c = api.create_container(IMAGE, ["sleep", "100"], host_config=api.create_host_config(
        restart_policy={"Name": "unless-stopped"}))
    try:
        api.start(c)
        pid = api.inspect_container(c)["State"]["Pid"]
        silod.stop()
        import os
        import signal
        os.kill(pid, signal.SIGKILL)      # the container dies while silod is down
        time.sleep(0.5)
        silod.start()
        api = silod.client
        assert _wait_for(lambda: api.inspect_container(c)["State"]["Running"])
        assert api.inspect_container(c)["State"]["Pid"] != pid
    finally:
        silod.client.remove_container(c, force=True)


def test_container_prune(api):
    keep = api.create_container(IMAGE, ["sleep", "100"])
    gone = api.create_container(IMAGE, ["true"], labels={"silotest": "prune"})
    try:
        api.start(keep)
        res = api.prune_containers(filters={"label": "silotest=prune"})
        assert res["ContainersDeleted"] == [gone["Id"]]
        ids = [x["Id"] for x in api.containers(all=True)]
        assert keep["Id"] in ids and gone["Id"] not in ids
    finally:
        api.remove_container(keep, force=True)
        try:
            api.remove_container(gone, force=True)
        except docker.errors.NotFound:
            pass


def test_events_stream_and_filters(api):
    since = time.time()
    c = api.create_container(IMAGE, ["true"], name="silotest-events")
    api.start(c)
    api.wait(c)
    api.remove_container(c)
    events = list(api.events(since=since, until=time.time() + 0.5, decode=True,
                             filters={"container": "silotest-events"}))
    actions = [e["Action"] for e in events]
    for want in ("create", "start", "die", "destroy"):
        assert want in actions, actions
    assert all(e["Actor"]["ID"] == c["Id"] for e in events)
    die = [e for e in events if e["Action"] == "die"][0]
    assert die["Actor"]["Attributes"]["exitCode"] == "0"
    assert die["Actor"]["Attributes"]["name"] == "silotest-events"


def test_events_live(api):
    got: list[dict] = []
    stream = api.events(decode=True, filters={"event": "start", "label": "silotest=live"})

    def reader():
        for ev in stream:
            got.append(ev)
            break

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.3)
    c = api.create_container(IMAGE, ["true"], labels={"silotest": "live"})
    try:
        api.start(c)
        t.join(5)
        assert got and got[0]["Action"] == "start" and got[0]["Actor"]["ID"] == c["Id"]
    finally:
        stream.close()
        api.remove_container(c, force=True)


def test_system_df(api, silod):
    c = api.create_container(IMAGE, ["true"])
    try:
        df = api.df()
        assert df["LayersSize"] > 0 and df["BuildCache"] == []
        busybox = [i for i in df["Images"] if "busybox:latest" in (i.get("RepoTags") or [])]
        assert busybox and busybox[0]["Containers"] >= 1
        assert any(x["Id"] == c["Id"] for x in df["Containers"])
        out = silod.silo("system", "df").stdout.decode()
        assert out.splitlines()[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    finally:
        api.remove_container(c, force=True)


def test_json_file_log_rotation(api):
    import os
    c = api.create_container(IMAGE, ["sh", "-c", "i=0; while [ $i -lt 400 ]; do echo line-$i;"
                                     " i=$((i+1)); done"],
                             host_config=api.create_host_config(log_config={
                                 "Type": "json-file",
                                 "Config": {"max-size": "2k", "max-file": "3"}}))
    try:
        api.start(c)
        api.wait(c)
        path = api.inspect_container(c)["LogPath"]
        assert os.path.exists(path + ".1") and os.path.exists(path + ".2")
        assert not os.path.exists(path + ".3")
        for p in (path, path + ".1", path + ".2"):
            assert os.path.getsize(p) <= 2048
        lines = api.logs(c).decode().split()
        assert lines[-1] == "line-399"
        nums = [int(x.split("-")[1]) for x in lines]
        assert nums == sorted(nums) and len(nums) < 400   # older lines rotated away
    finally:
        api.remove_container(c, force=True)


def test_log_config_none_and_bad_options(api):
    c = api.create_container(IMAGE, ["echo", "hidden"], host_config=api.create_host_config(
        log_config={"Type": "none", "Config": {}}))
    try:
        api.start(c)
        api.wait(c)
        assert api.logs(c) == b""
    finally:
        api.remove_container(c, force=True)
    # dockerd's words; those it finds only at start (a 500 there) are 400s at create here.
    for cfg, words in (
            ({"Type": "syslog", "Config": {}}, 'logging driver "syslog" is not supported'),
            ({"Type": "asdf", "Config": {}},
             'error looking up logging plugin asdf: plugin "asdf" not found'),
            ({"Type": "json-file", "Config": {"max-size": "lots"}}, "invalid size: 'lots'"),
            ({"Type": "json-file", "Config": {"foo": "bar"}},
             "unknown log opt 'foo' for json-file log driver"),
            ({"Type": "json-file", "Config": {"mode": "weird"}},
             "logger: logging mode not supported: weird"),
            ({"Type": "json-file", "Config": {"max-buffer-size": "4m"}},
             "logger: max-buffer-size option is only supported with 'mode=non-blocking'"),
            ({"Type": "json-file", "Config": {"max-size": "1m", "max-file": "0"}},
             "max-file cannot be less than 1"),
            ({"Type": "json-file", "Config": {"max-size": "1m", "max-file": "x"}},
             'strconv.Atoi: parsing "x": invalid syntax')):
        with pytest.raises(docker.errors.APIError) as e:
            api.create_container(IMAGE, ["true"],
                                 host_config=api.create_host_config(log_config=cfg))
        assert e.value.status_code == 400
        assert e.value.explanation.startswith(words), (cfg, e.value.explanation)
    # as in dockerd: max-file alone (no rotation without max-size), and any options for none
    for cfg in ({"Type": "json-file", "Config": {"max-file": "3"}},
                {"Type": "none", "Config": {"max-size": "1m", "whatever": "x"}}):
        c = api.create_container(IMAGE, ["true"], host_config=api.create_host_config(
            log_config=cfg))
        api.remove_container(c, force=True)


def test_healthcheck_transitions_and_events(api, silod):
    since = time.time()
    c = api.create_container(IMAGE, ["sleep", "60"], healthcheck={
        "Test": ["CMD-SHELL", "test -f /tmp/ok"], "Interval": 200_000_000,
        "Timeout": 2_000_000_000, "Retries": 2})
    try:
        api.start(c)
        assert api.inspect_container(c)["State"]["Health"]["Status"] == "starting"
        assert _wait_for(lambda: api.inspect_container(c)["State"]["Health"]["Status"]
                         == "unhealthy")
        e = api.exec_create(c, ["touch", "/tmp/ok"])
        api.exec_start(e)
        assert _wait_for(lambda: api.inspect_container(c)["State"]["Health"]["Status"]
                         == "healthy")
        health = api.inspect_container(c)["State"]["Health"]
        assert health["FailingStreak"] == 0 and health["Log"][-1]["ExitCode"] == 0
        assert "(healthy)" in api.containers(filters={"health": "healthy"})[0]["Status"]
        events = list(api.events(since=since, until=time.time() + 0.3, decode=True,
                                 filters={"container": c["Id"]}))
        actions = [ev["Action"] for ev in events]
        assert "health_status: unhealthy" in actions and "health_status: healthy" in actions
        out = silod.silo("run", "--rm", "--health-cmd", "true", "--health-interval", "100ms",
                         IMAGE, "true")
        assert out.returncode == 0
    finally:
        api.remove_container(c, force=True)


def test_network_and_volume_events(api):
    since = time.time()
    net = api.create_network("silotest-evnet")
    vol = api.create_volume("silotest-evvol")
    api.remove_network(net["Id"])
    api.remove_volume(vol["Name"])
    events = list(api.events(since=since, until=time.time() + 0.3, decode=True,
                             filters={"type": ["network", "volume"]}))
    seen = {(e["Type"], e["Action"], e["Actor"]["Attributes"].get("name", e["Actor"]["ID"]))
            for e in events}
    assert ("network", "create", "silotest-evnet") in seen
    assert ("network", "destroy", "silotest-evnet") in seen
    assert any(t == "volume" and a == "create" for t, a, _ in seen)
    assert any(t == "volume" and a == "destroy" for t, a, _ in seen)


def test_a_policy_restart_interrupted_by_silod_stopping_ends_exited(silod):
    """A container waiting out its restart back-off when silod stops is not started while silod
    shuts down, nor left 'restarting' for ever: recovery records it exited with its last exit
    code, and the restart policy decides as for any stopped container at silod's start."""
    api = silod.client
    c = api.create_container(IMAGE, ["sh", "-c", "exit 3"], host_config=api.create_host_config(
        restart_policy={"Name": "on-failure", "MaximumRetryCount": 50}))
    try:
        api.start(c)
        assert _wait_for(lambda: api.inspect_container(c)["RestartCount"] >= 6, 30)
        finished = api.inspect_container(c)["State"]["FinishedAt"]

        def waiting() -> bool:   # a newer exit recorded, and the next back-off (>= 6.4 s) begun
            st = api.inspect_container(c)["State"]
            return st["Status"] == "restarting" and st["FinishedAt"] != finished
        assert _wait_for(waiting, 15)
        silod.stop()
        silod.start()
        api = silod.client
        st = api.inspect_container(c)["State"]
        assert (st["Status"], st["Restarting"], st["Running"]) == ("exited", False, False)
        assert (st["ExitCode"], st["Error"]) == (3, "")
    finally:
        silod.client.remove_container(c, force=True)


def test_container_prune_until(api, silod):
    """``until`` takes dockerd's forms; one it cannot read is refused, not taken as no filter."""
    c = api.create_container(IMAGE, ["true"], labels={"silotest": "prune-until"})
    try:
        only = {"label": "silotest=prune-until"}
        assert api.prune_containers(filters={**only, "until": "1h"})["ContainersDeleted"] is None
        status, doc = silod.request(
            "POST", '/containers/prune?filters={"until":["soon"],"label":["silotest"]}')
        assert (status, doc["message"]) == (400, "invalid filter 'until=soon'")
        assert c["Id"] in [x["Id"] for x in api.containers(all=True)]
        res = api.prune_containers(filters={**only, "until": str(int(time.time()) + 5)})
        assert res["ContainersDeleted"] == [c["Id"]]
    finally:
        try:
            api.remove_container(c, force=True)
        except docker.errors.NotFound:
            pass
