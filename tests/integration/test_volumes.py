"""Volumes and mounts end to end: the /volumes API (docker-py), ``silo volume``, ``-v NAME:``,
anonymous volumes, ``--mount`` (bind, volume, tmpfs), ``--tmpfs``, ``rm -v``, inspect Mounts."""

from __future__ import annotations

import json
import os
import time
import uuid
from urllib.parse import quote

import docker
import pytest
from docker.types import Mount

IMAGE = "busybox"


@pytest.fixture
def api(silod):
    return silod.client


@pytest.fixture
def names(silod):
    """Unique volume and container names; whatever a test made is removed after it."""
    tag = uuid.uuid4().hex[:8]
    made: list[str] = []

    def new(kind: str = "v") -> str:
        made.append(f"sbx{kind}-{tag}-{len(made)}")
        return made[-1]

    yield new
    for n in made:
        silod.request("DELETE", f"/containers/{n}?force=1")
    for n in made:
        silod.request("DELETE", f"/volumes/{n}?force=1")


def run(client, cmd, **kw):
    host_config = client.create_host_config(**kw.pop("host_config", {}))
    c = client.create_container(IMAGE, ["sh", "-c", cmd], host_config=host_config, **kw)
    try:
        client.start(c)
        code = client.wait(c, timeout=60)["StatusCode"]
        return code, client.logs(c, stdout=True, stderr=True).decode()
    finally:
        client.remove_container(c, force=True, v=True)


# ----- the /volumes API ------------------------------------------------------------------------
def test_volume_create_inspect_list_remove(api, names):
    n = names()
    vol = api.create_volume(n, labels={"team": "storage"})
    assert vol["Name"] == n and vol["Driver"] == "local" and vol["Scope"] == "local"
    assert vol["Labels"] == {"team": "storage"}
    assert vol["Mountpoint"].endswith(f"/volumes/{n}/_data") and os.path.isdir(vol["Mountpoint"])
    assert api.inspect_volume(n) == vol
    assert api.create_volume(n)["Name"] == n            # creating it again returns it
    listed = api.volumes()["Volumes"]
    assert n in [v["Name"] for v in listed]
    assert [v["Name"] for v in api.volumes(filters={"label": "team=storage"})["Volumes"]
            if v["Name"] == n] == [n]
    assert not [v for v in api.volumes(filters={"label": "team=other"})["Volumes"]
                if v["Name"] == n]
    api.remove_volume(n)
    assert not os.path.exists(os.path.dirname(vol["Mountpoint"]))
    with pytest.raises(docker.errors.NotFound) as e:
        api.inspect_volume(n)
    assert f"get {n}: no such volume" in str(e.value)


def test_volume_errors(api, silod):
    with pytest.raises(docker.errors.APIError) as e:
        api.create_volume("bad/name")
    assert e.value.status_code == 400 and "invalid characters for a local volume name" in str(e.value)
    with pytest.raises(docker.errors.NotFound):
        api.create_volume("sbxv-x", driver="nfs-plugin")
    status, body = silod.request("DELETE", "/volumes/sbx-missing")
    assert status == 404
    status, _ = silod.request("DELETE", "/volumes/sbx-missing?force=1")
    assert status == 204


def test_volume_in_use_is_refused_with_409(api, names):
    v, c = names(), names("c")
    api.create_container(IMAGE, ["true"], name=c,
                         host_config=api.create_host_config(binds=[f"{v}:/data"]))
    with pytest.raises(docker.errors.APIError) as e:
        api.remove_volume(v)
    assert e.value.status_code == 409
    cid = api.inspect_container(c)["Id"]
    assert str(e.value.explanation) == f"remove {v}: volume is in use - [{cid}]"
    assert [x["Name"] for x in api.volumes(filters={"dangling": "false"})["Volumes"]
            if x["Name"] == v] == [v]
    api.remove_container(c)
    assert [x["Name"] for x in api.volumes(filters={"dangling": "true"})["Volumes"]
            if x["Name"] == v] == [v]
    api.remove_volume(v)


def test_prune_removes_unused_anonymous_volumes_only_by_default(api, silod, names):
    named, c = names(), names("c")
    api.create_volume(named)
    api.create_container(IMAGE, ["true"], name=c, volumes=["/anon"])
    anon = [m["Name"] for m in api.inspect_container(c)["Mounts"] if m["Type"] == "volume"][0]
    res = api.prune_volumes()
    assert anon not in (res["VolumesDeleted"] or [])     # in use
    api.remove_container(c)                               # without -v: the volume stays
    assert api.inspect_volume(anon)["Labels"] == {"com.docker.volume.anonymous": ""}
    res = api.prune_volumes()
    assert anon in res["VolumesDeleted"] and named not in res["VolumesDeleted"]
    status, res = silod.request("POST", "/volumes/prune?filters=" + quote(json.dumps({"all": ["true"]})))
    assert status == 200 and named in res["VolumesDeleted"]


# ----- mounts in containers ----------------------------------------------------------------------
def test_named_volume_is_filled_from_the_image_and_persists(api, names):
    v = names()
    code, out = run(api, "ls /bin | grep -c . ; echo kept > /bin/written",
                    host_config={"binds": [f"{v}:/bin"]})
    assert code == 0 and int(out.split()[0]) > 50      # busybox's applets were copied in
    data = api.inspect_volume(v)["Mountpoint"]
    assert os.path.exists(os.path.join(data, "busybox"))
    code, out = run(api, "cat /data/written; ls /data | grep -c .",
                    host_config={"binds": [f"{v}:/data:ro"]})
    assert code == 0 and out.startswith("kept\n")
    code, out = run(api, "touch /data/x 2>&1; echo $?", host_config={"binds": [f"{v}:/data:ro"]})
    assert "Read-only file system" in out


def test_anonymous_volume_inspect_shape_and_rm_v(api, names):
    c = names("c")
    api.create_container(IMAGE, ["sh", "-c", "echo hi > /data/f"], name=c, volumes=["/data"])
    mounts = api.inspect_container(c)["Mounts"]
    assert len(mounts) == 1
    m = mounts[0]
    assert set(m) == {"Type", "Name", "Source", "Destination", "Driver", "Mode", "RW",
                      "Propagation"}
    assert (m["Type"], m["Destination"], m["Driver"], m["RW"]) == ("volume", "/data", "local",
                                                                    True)
    assert len(m["Name"]) == 64 and m["Source"].endswith(f"/volumes/{m['Name']}/_data")
    api.start(c)
    assert api.wait(c, timeout=30)["StatusCode"] == 0
    assert open(os.path.join(m["Source"], "f")).read() == "hi\n"
    api.remove_container(c, v=True)
    with pytest.raises(docker.errors.NotFound):
        api.inspect_volume(m["Name"])


def test_mounts_bind_volume_tmpfs(api, names, tmp_path):
    v = names()
    (tmp_path / "hostfile").write_text("from the host\n")
    mounts = [Mount("/h", str(tmp_path), type="bind", read_only=True),
              Mount("/v", v, type="volume"),
              Mount("/t", None, type="tmpfs", tmpfs_size=2 * 1024 * 1024)]
    script = ("cat /h/hostfile; touch /h/x 2>/dev/null || echo h-ro; echo data > /v/f; "
              "grep ' /t ' /proc/mounts; dd if=/dev/zero of=/t/big bs=1M count=4 2>/dev/null "
              "|| echo t-full")
    code, out = run(api, script, host_config={"mounts": mounts})
    assert code == 0, out
    assert "from the host\n" in out and "h-ro" in out and "t-full" in out
    assert "tmpfs /t tmpfs rw,nosuid,nodev" in out and "size=2048k" in out
    assert open(os.path.join(api.inspect_volume(v)["Mountpoint"], "f")).read() == "data\n"


def test_mount_errors(api, tmp_path):
    for mount, msg in (
            (Mount("/x", str(tmp_path / "missing"), type="bind"),
             "bind source path does not exist"),
            (Mount("relative", "vol", type="volume"), "mount path must be absolute"),
            ({"Type": "tmpfs", "Source": "src", "Target": "/t"},
             "source must not be specified"),
            ({"Type": "npipe", "Source": "x", "Target": "/t"}, "mount type unknown")):
        with pytest.raises(docker.errors.APIError) as e:
            api.create_container(IMAGE, ["true"],
                                 host_config=api.create_host_config(mounts=[mount]))
        assert e.value.status_code == 400 and msg.lower() in str(e.value).lower(), str(e.value)
    with pytest.raises(docker.errors.APIError) as e:
        api.create_container(IMAGE, ["true"], host_config=api.create_host_config(
            binds=["sbxdup:/d"], tmpfs={"/d": ""}))
    assert "Duplicate mount point: /d" in str(e.value)


def test_tmpfs_flag_options(api):
    code, out = run(api, "grep ' /run ' /proc/mounts; grep ' /x ' /proc/mounts",
                    host_config={"tmpfs": {"/run": "size=1m,mode=1770", "/x": "exec"}})
    assert code == 0
    run_line, x_line = out.splitlines()
    assert "rw,nosuid,nodev,noexec" in run_line and "size=1024k" in run_line
    assert "mode=1770" in run_line
    assert "noexec" not in x_line and "nosuid,nodev" in x_line


# ----- the CLI ---------------------------------------------------------------------------------
def test_cli_volume_verbs_and_run_flags(silod, names, tmp_path):
    v = names()
    r = silod.silo("volume", "create", "--label", "k=v", v)
    assert r.returncode == 0 and r.stdout.decode().strip() == v
    r = silod.silo("volume", "ls", "-q", "-f", f"name={v}")
    assert r.stdout.decode().split() == [v]
    r = silod.silo("volume", "ls", "--format", "{{.Name}} {{.Driver}} {{.Labels}}")
    assert f"{v} local k=v" in r.stdout.decode()
    r = silod.silo("volume", "inspect", "-f", "{{.Mountpoint}}", v)
    assert r.stdout.decode().strip().endswith(f"/volumes/{v}/_data")
    r = silod.silo("run", "--rm", "-v", f"{v}:/data", "--mount",
                   f"type=bind,src={tmp_path},dst=/h", "--tmpfs", "/scratch:size=1m",
                   IMAGE, "sh", "-c", "echo cli > /data/f; echo h > /h/f; "
                   "grep -c ' /scratch tmpfs' /proc/mounts")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == "1"
    assert (tmp_path / "f").read_text() == "h\n"
    c = names("c")
    silod.silo("create", "--name", c, "-v", f"{v}:/data", IMAGE, "true", check=True)
    r = silod.silo("volume", "rm", v)
    assert r.returncode == 1 and "volume is in use" in r.stderr.decode()
    silod.silo("rm", c, check=True)
    r = silod.silo("volume", "rm", v)
    assert r.returncode == 0 and r.stdout.decode().strip() == v
    r = silod.silo("volume", "prune", "-f")
    assert r.returncode == 0 and "Total reclaimed space" in r.stdout.decode()


def test_local_driver_options_tmpfs_and_bind(api, names, tmp_path):
    t, b = names(), names()
    vol = api.create_volume(t, driver_opts={"type": "tmpfs", "device": "tmpfs",
                                            "o": "size=1m,mode=0700"})
    assert vol["Options"] == {"type": "tmpfs", "device": "tmpfs", "o": "size=1m,mode=0700"}
    (tmp_path / "seen").write_text("bound\n")
    api.create_volume(b, driver_opts={"type": "none", "device": str(tmp_path), "o": "bind,ro"})
    code, out = run(api, "grep ' /t ' /proc/mounts; cat /b/seen; touch /b/x 2>&1",
                    host_config={"binds": [f"{t}:/t", f"{b}:/b"]})
    assert "tmpfs /t tmpfs rw" in out and "size=1024k" in out and "mode=700" in out
    assert "bound\n" in out and "Read-only file system" in out
    # mounted only while a container uses them
    data = api.inspect_volume(t)["Mountpoint"]
    with open("/proc/self/mountinfo") as f:
        assert data not in f.read()
    with pytest.raises(docker.errors.APIError) as e:
        api.create_volume(names(), driver_opts={"colour": "blue"})
    assert 'invalid option key: "colour"' in str(e.value)


def test_run_rm_removes_anonymous_volumes(silod, api):
    before = {v["Name"] for v in api.volumes()["Volumes"] or []}
    r = silod.silo("run", "--rm", "-v", "/scratch", IMAGE, "sh", "-c", "echo x > /scratch/f")
    assert r.returncode == 0, r.stderr
    deadline = time.time() + 5
    while time.time() < deadline:
        now = {v["Name"] for v in api.volumes()["Volumes"] or []}
        if now <= before:
            break
        time.sleep(0.05)
    assert now <= before
