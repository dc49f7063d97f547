"""Container links and --volumes-from through docker-py and the docker CLI.

Every container and network carries the run's id and is removed even when a test fails.
Traffic stays inside the networks the tests create.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Iterator

import docker.errors
import pytest

DOCKER = "/usr/local/bin/docker"


class Objects:
    def __init__(self, silod: Any, run_id: str) -> None:
        self.api = silod.client
        self.silod = silod
        self.prefix = f"lk{run_id}"
        self.containers: list[str] = []
        self.networks: list[str] = []

    def name(self, what: str) -> str:
        return f"{self.prefix}{what}"

    def create(self, what: str, cmd: str = "sleep 60", **kw: Any) -> str:
        name = self.name(what)
        self.containers.append(name)
        hc = self.api.create_host_config(**kw.pop("host", {}))
        return self.api.create_container("busybox", ["sh", "-c", cmd], name=name,
                                         host_config=hc, **kw)["Id"]

    def network(self, what: str) -> str:
        name = self.name(what)
        self.networks.append(name)
        self.api.create_network(name)
        return name

    def count(self) -> int:
        return len(self.api.containers(all=True))

    def close(self) -> None:
        for c in self.containers:
            try:
                self.api.remove_container(c, force=True, v=True)
            except docker.errors.NotFound:
                pass
        for n in self.networks:
            try:
                self.api.remove_network(n)
            except docker.errors.NotFound:
                pass


@pytest.fixture
def objs(silod: Any, run_id: str) -> Iterator[Objects]:
    o = Objects(silod, run_id)
    try:
        yield o
    finally:
        o.close()


def test_volumes_from_copies_mounts_own_binds_win_ro_applies(objs: Objects, tmp_path: Any) -> None:
    vol = objs.name("vol")
    host_dir = tmp_path / "own"
    host_dir.mkdir()
    (host_dir / "f").write_text("own\n")
    src = objs.create("src", "echo v > /v/f; echo s > /s/f; sleep 60",
                      host={"binds": [f"{vol}:/v", f"{tmp_path}:/s"]})
    objs.api.start(src)
    dst = objs.create("dst", "sleep 60",
                      host={"volumes_from": [f"{objs.name('src')}:ro"],
                            "binds": [f"{host_dir}:/s"]})
    mounts = {m["Destination"]: m for m in objs.api.inspect_container(dst)["Mounts"]}
    assert mounts["/v"]["Name"] == vol and mounts["/v"]["RW"] is False
    assert mounts["/s"]["Source"] == str(host_dir) and mounts["/s"]["RW"] is True
    objs.api.start(dst)
    e = objs.api.exec_create(dst, ["sh", "-c", "cat /v/f /s/f; touch /v/x 2>/dev/null || echo ro"])
    out = objs.api.exec_start(e["Id"]).decode()
    lines = out.splitlines()
    assert lines[:2] == ["v", "own"] and lines[-1] == "ro", out
    # The copied volume is in use by dst too: it cannot be removed under it.
    objs.api.remove_container(src, force=True)
    with pytest.raises(docker.errors.APIError) as err:
        objs.api.remove_volume(vol)
    assert err.value.response.status_code == 409
    objs.api.remove_container(dst, force=True)
    objs.api.remove_volume(vol)


@pytest.mark.parametrize("spec, status, message", [
    ("{missing}", 404, "No such container: {missing}"),
    ("{src}:rx", 400, "invalid mode: rx"),
    ("", 400, "volumes-from specification cannot be an empty string"),
])
def test_volumes_from_errors_create_nothing(objs: Objects, spec: str, status: int,
                                            message: str) -> None:
    objs.create("src")
    names = {"missing": objs.name("missing"), "src": objs.name("src")}
    before = objs.count()
    with pytest.raises(docker.errors.APIError) as err:
        objs.create("bad", host={"volumes_from": [spec.format(**names)]})
    assert err.value.response.status_code == status
    assert err.value.explanation == message.format(**names)
    assert objs.count() == before


def test_legacy_links_on_the_default_network(objs: Objects) -> None:
    child = objs.create("child", "exec httpd -f -p 80 -h /etc")
    parent = objs.create("parent", host={"links": {objs.name("child"): "db"}})
    with pytest.raises(docker.errors.APIError) as err:
        objs.api.start(parent)
    assert err.value.response.status_code == 409
    assert err.value.explanation == (f"Cannot link to a non running container: "
                                     f"/{objs.name('child')} AS /{objs.name('parent')}/db")
    assert objs.api.inspect_container(parent)["State"]["Status"] == "created"
    objs.api.start(child)
    objs.api.start(parent)
    info = objs.api.inspect_container(parent)
    assert info["HostConfig"]["Links"] == [f"/{objs.name('child')}:/{objs.name('parent')}/db"]
    ip = objs.api.inspect_container(child)["NetworkSettings"]["IPAddress"]
    e = objs.api.exec_create(parent, ["sh", "-c", "cat /etc/hosts; wget -q -O - http://db/hostname"])
    out = objs.api.exec_start(e["Id"]).decode()
    assert f"{ip}\tdb {child[:12]} {objs.name('child')}" in out, out
    assert objs.api.inspect_container(child)["Config"]["Hostname"] in out

    before = objs.count()
    with pytest.raises(docker.errors.APIError) as err:
        objs.create("orphan", host={"links": {objs.name("nobody"): "x"}})
    assert err.value.response.status_code == 400
    assert err.value.explanation == f"could not get container for {objs.name('nobody')}"
    status, body = objs.silod.request("POST", f"/containers/create?name={objs.name('bad')}", {
        "Image": "busybox", "Cmd": ["true"], "HostConfig": {"Links": ["a:b:c"]}})
    assert (status, body) == (400, {"message": "bad format for links: a:b:c"})
    assert objs.count() == before


def test_endpoint_links_through_the_docker_cli_and_connect(objs: Objects) -> None:
    net = objs.network("net")
    objs.create("db", host={"network_mode": net})
    objs.api.start(objs.name("db"))
    env = {**os.environ, "DOCKER_HOST": f"unix://{objs.silod.socket}"}
    name = objs.name("cli")
    objs.containers.append(name)
    # The CLI puts --link into the endpoint's Links on a user network.
    r = subprocess.run([DOCKER, "run", "--name", name, "--network", net,
                        "--link", f"{objs.name('db')}:olddb", "busybox",
                        "nslookup", "olddb", "127.0.0.11"],
                       env=env, capture_output=True, text=True, timeout=60)
    db_ip = objs.api.inspect_container(objs.name("db"))["NetworkSettings"]["Networks"][net][
        "IPAddress"]
    assert r.returncode == 0 and db_ip in r.stdout, (r.stdout, r.stderr)
    info = objs.api.inspect_container(name)
    assert info["NetworkSettings"]["Networks"][net]["Links"] == [f"{objs.name('db')}:olddb"]
    assert info["HostConfig"]["Links"] is None     # Docker ignores legacy links here

    # connect with links: only the connected container resolves the alias.
    other = objs.network("other")
    peer = objs.create("peer", host={"network_mode": other})
    objs.api.start(peer)
    status, body = objs.silod.request("POST", f"/networks/{net}/connect", {
        "Container": peer, "EndpointConfig": {"Links": ["a:b:c"]}})
    assert (status, body) == (400, {"message": "bad format for links: a:b:c"})
    assert net not in objs.api.inspect_container(peer)["NetworkSettings"]["Networks"]
    objs.api.connect_container_to_network(peer, net, links=[(objs.name("db"), "viaconnect")])
    e = objs.api.exec_create(peer, ["nslookup", "viaconnect", "127.0.0.11"])
    assert db_ip in objs.api.exec_start(e["Id"]).decode()
    e = objs.api.exec_create(objs.name("db"), ["nslookup", "viaconnect", "127.0.0.11"])
    objs.api.exec_start(e["Id"])
    assert objs.api.exec_inspect(e["Id"])["ExitCode"] != 0
