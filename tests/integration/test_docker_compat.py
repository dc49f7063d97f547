"""Docker behaviours that peer clients rely on, each as dockerd on Linux shows it.

Through the docker CLI (skipped where it is not installed) and docker-py. Every object a test
makes carries the run's prefix and is removed at the end, also when the test fails.
"""

from __future__ import annotations

import io
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from typing import Any, Iterator

import docker
import pytest
from tarutil import tar_of

IMAGE = "busybox"
DOCKER = shutil.which("docker")

NOT_A_MANAGER = ('This node is not a swarm manager. Use "docker swarm init" or '
                 '"docker swarm join" to connect this node to swarm and try again.')


class Made:
    """Names for the test's containers, networks, volumes and images; all removed at the end."""

    def __init__(self, silod: Any, run_id: str) -> None:
        self.silod = silod
        self.api: docker.APIClient = silod.client
        self.prefix = f"t{run_id}-compat-{uuid.uuid4().hex[:6]}"
        self.containers: list[str] = []
        self.networks: list[str] = []
        self.volumes: list[str] = []
        self.images: list[str] = []
        self.count = 0
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{silod.socket}"}

    def name(self, kind: str = "c") -> str:
        self.count += 1
        name = f"{self.prefix}-{kind}{self.count}"
        {"c": self.containers, "n": self.networks, "v": self.volumes,
         "i": self.images}[kind].append(name)
        return name

    def docker(self, *args: str, check: bool = True, timeout: float = 60
               ) -> subprocess.CompletedProcess:
        if not DOCKER:
            pytest.skip("no docker CLI on this machine")
        r = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, timeout=timeout)
        if check:
            assert r.returncode == 0, (args, r.stderr.decode())
        return r

    def close(self) -> None:
        for name in self.containers:
            try:
                self.api.remove_container(name, force=True, v=True)
            except docker.errors.NotFound:
                pass
        for name in self.networks:
            try:
                self.api.remove_network(name)
            except docker.errors.NotFound:
                pass
        for name in self.volumes:
            try:
                self.api.remove_volume(name, force=True)
            except docker.errors.NotFound:
                pass
        for name in self.images:
            try:
                self.api.remove_image(name, force=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture
def made(silod: Any, run_id: str) -> Iterator[Made]:
    m = Made(silod, run_id)
    try:
        yield m
    finally:
        m.close()


# --- swarm: answered as by a dockerd in no swarm ---------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("GET", "/swarm"), ("GET", "/swarm/unlockkey"), ("POST", "/swarm/unlock"),
    ("GET", "/nodes"), ("GET", "/nodes/x"), ("DELETE", "/nodes/x"),
    ("POST", "/nodes/x/update?version=1"),
    ("GET", "/services"), ("POST", "/services/create"), ("GET", "/services/x"),
    ("DELETE", "/services/x"), ("POST", "/services/x/update?version=3"),
    ("GET", "/services/x/logs?stdout=1"),
    ("GET", "/tasks"), ("GET", "/tasks/x"), ("GET", "/tasks/x/logs?stderr=1"),
    ("GET", "/secrets"), ("POST", "/secrets/create"), ("GET", "/secrets/x"),
    ("DELETE", "/secrets/x"), ("POST", "/secrets/x/update?version=1"),
    ("GET", "/configs"), ("POST", "/configs/create"), ("GET", "/configs/x"),
    ("DELETE", "/configs/x"), ("POST", "/configs/x/update?version=1"),
])
def test_swarm_endpoints_answer_as_a_node_outside_a_swarm(silod: Any, method: str,
                                                          path: str) -> None:
    body = {} if method == "POST" else None
    assert silod.request(method, f"/v1.47{path}", body) == (503, {"message": NOT_A_MANAGER})
    assert silod.request(method, path, body) == (503, {"message": NOT_A_MANAGER})


def test_swarm_leave_init_and_request_checks(silod: Any) -> None:
    assert silod.request("POST", "/swarm/leave") == (
        503, {"message": "This node is not part of a swarm"})
    for path in ("/swarm/init", "/swarm/join"):
        status, doc = silod.request("POST", path, {"ListenAddr": "127.0.0.1:2377"})
        assert status == 503 and doc["message"].startswith("This node is not part of a swarm")
    assert silod.request("POST", "/services/x/update", {}) == (400, {
        "message": "invalid service version '': strconv.ParseUint: parsing \"\": "
                   "invalid syntax"})
    assert silod.request("POST", "/secrets/x/update?version=x", {}) == (
        400, {"message": "invalid secret version"})
    assert silod.request("GET", "/services/x/logs") == (
        400, {"message": "Bad parameters: you must choose at least one stream"})


def test_swarm_through_the_clients(made: Made) -> None:
    with pytest.raises(docker.errors.APIError) as e:
        made.api.services()
    assert e.value.status_code == 503 and e.value.explanation == NOT_A_MANAGER
    with pytest.raises(docker.errors.APIError) as e:
        made.api.leave_swarm()
    assert e.value.status_code == 503
    assert made.api.info()["Swarm"]["LocalNodeState"] == "inactive"
    r = made.docker("service", "ls", check=False)
    assert r.returncode == 1 and NOT_A_MANAGER in r.stderr.decode()
    r = made.docker("swarm", "leave", check=False)
    assert r.returncode == 1 and "This node is not part of a swarm" in r.stderr.decode()


# --- commit, isolation, info -----------------------------------------------------------------

def test_commit_with_pause_of_a_container_that_has_just_ended(made: Made) -> None:
    """The container may end between the state check and the freeze: commit goes on unpaused."""
    for _ in range(8):
        name = made.name()
        made.api.create_container(IMAGE, ["touch", "/committed"], name=name)
        made.api.start(name)
        image = made.api.commit(name)["Id"]   # pause=True, as the CLI and docker-py send
        made.images.append(image)
    made.api.wait(name, timeout=30)
    made.images.append(made.api.commit(name)["Id"])     # stopped
    created = made.name()
    made.api.create_container(IMAGE, ["true"], name=created)
    made.images.append(made.api.commit(created)["Id"])  # never started


def test_isolation_is_stored_as_given(made: Made) -> None:
    for given in ("default", "process", ""):
        name = made.name()
        made.api.create_container(IMAGE, ["true"], name=name,
                                  host_config=made.api.create_host_config(isolation=given))
        assert made.api.inspect_container(name)["HostConfig"]["Isolation"] == given
    name = made.name()
    made.docker("create", "--name", name, "--isolation", "default", IMAGE, "true")
    r = made.docker("inspect", "-f", "{{.HostConfig.Isolation}}", name)
    assert r.stdout.decode().strip() == "default"
    listed = made.api.containers(all=True, filters={"isolation": "default", "name": name})
    assert [c["Names"] for c in listed] == [[f"/{name}"]]
    with pytest.raises(docker.errors.APIError) as e:
        made.api.create_container(IMAGE, ["true"], host_config=made.api.create_host_config(
            isolation="bogus"))
    assert e.value.status_code == 400
    assert e.value.explanation.startswith('Invalid isolation: "bogus" - silobox supports')
    # hyperv (a utility VM) exists, but what its VM cannot do is refused before it boots
    with pytest.raises(docker.errors.APIError) as e:
        made.api.create_container(IMAGE, ["true"], host_config=made.api.create_host_config(
            isolation="hyperv", network_mode="host"))
    assert e.value.status_code == 400
    assert "--isolation hyperv: --network host is not supported" in e.value.explanation


def test_info_lists_runtimes(made: Made) -> None:
    info = made.api.info()
    assert info["DefaultRuntime"] == "silobox"
    assert {"silobox", "runc"} <= set(info["Runtimes"])
    assert all("path" in r for r in info["Runtimes"].values())
    for given, stored in ((None, "silobox"), ("runc", "runc")):
        name = made.name()
        made.api.create_container(IMAGE, ["true"], name=name,
                                  host_config=made.api.create_host_config(runtime=given))
        assert made.api.inspect_container(name)["HostConfig"]["Runtime"] == stored
    r = made.docker("create", "--runtime", "crun", IMAGE, "true", check=False)
    assert r.returncode != 0 and b"Unknown runtime specified crun" in r.stderr


# --- the default network answers to Linux clients' name for it -------------------------------

def test_bridge_names_the_default_network(made: Made) -> None:
    r = made.docker("network", "inspect", "bridge", "-f", "{{.Name}} {{.Id}}")
    name, nid = r.stdout.decode().split()
    assert name == "nat" and made.api.inspect_network("nat")["Id"] == nid
    assert [n["Id"] for n in made.api.networks(names=["bridge"])] == [nid]
    # --network bridge, and a link on the default network
    target = made.name()
    made.docker("run", "-d", "--name", target, IMAGE, "sleep", "60")
    r = made.docker("run", "--rm", "--network", "bridge", "--link", f"{target}:friend", IMAGE,
                    "sh", "-c", "grep -w friend /etc/hosts && ping -c1 -W2 friend")
    assert b"1 packets received" in r.stdout
    # NetworkingConfig keyed by bridge on the default network
    name = made.name()
    made.api.create_container(
        IMAGE, ["sleep", "60"], name=name,
        networking_config=made.api.create_networking_config({
            "bridge": made.api.create_endpoint_config(mac_address="02:42:ac:11:00:99")}))
    made.api.start(name)
    # ... and its entry is where a Linux client reads it, under the name it used
    nets = made.api.inspect_container(name)["NetworkSettings"]["Networks"]
    assert list(nets) == ["bridge"], nets
    assert nets["bridge"]["MacAddress"] == "02:42:ac:11:00:99"
    assert nets["bridge"]["NetworkID"] == nid
    listed = made.api.containers(filters={"name": name})[0]["NetworkSettings"]["Networks"]
    assert list(listed) == ["bridge"]
    # a container that never named it keeps the talk's name
    plain = made.name()
    made.api.create_container(IMAGE, ["sleep", "60"], name=plain)
    assert list(made.api.inspect_container(plain)["NetworkSettings"]["Networks"]) == ["nat"]
    cli = made.name()
    made.docker("create", "--name", cli, "--network", "bridge", IMAGE, "true")
    r = made.docker("inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}",
                    cli)
    assert r.stdout.decode().strip() == "bridge"
    # connect and disconnect by that name
    made.api.disconnect_container_from_network(name, "bridge")
    assert made.api.inspect_container(name)["NetworkSettings"]["Networks"] == {}
    made.api.connect_container_to_network(name, "nat")
    assert list(made.api.inspect_container(name)["NetworkSettings"]["Networks"]) == ["nat"]
    made.api.disconnect_container_from_network(name, "nat")
    made.api.connect_container_to_network(name, "bridge")
    assert list(made.api.inspect_container(name)["NetworkSettings"]["Networks"]) == ["bridge"]
    with pytest.raises(docker.errors.APIError) as e:
        made.api.remove_network("bridge")
    assert e.value.status_code == 409
    with pytest.raises(docker.errors.APIError) as e:
        made.api.create_network("bridge")
    assert e.value.status_code == 409


def test_publish_port_zero_picks_a_random_host_port(made: Made) -> None:
    name = made.name()
    made.docker("run", "-d", "--name", name, "-p", "0:80", "-p", "127.0.0.1:0:81/udp", IMAGE,
                "sh", "-c", "echo published | nc -l -p 80; sleep 60")
    ports = made.api.inspect_container(name)["NetworkSettings"]["Ports"]
    tcp, udp = ports["80/tcp"][0], ports["81/udp"][0]
    assert 0 < int(tcp["HostPort"]) < 65536 and 0 < int(udp["HostPort"]) < 65536
    assert udp["HostIp"] == "127.0.0.1"
    assert made.api.inspect_container(name)["HostConfig"]["PortBindings"]["80/tcp"] == [
        {"HostIp": "", "HostPort": "0"}]
    r = made.docker("port", name, "80/tcp")
    assert r.stdout.decode().split("\n")[0].endswith(f":{tcp['HostPort']}")
    deadline = time.time() + 10
    while True:   # through the published port on loopback
        try:
            with socket.create_connection(("127.0.0.1", int(tcp["HostPort"])), timeout=5) as s:
                assert s.recv(64) == b"published\n"
                break
        except (ConnectionError, AssertionError):
            if time.time() > deadline:
                raise
            time.sleep(0.1)


# --- exec ------------------------------------------------------------------------------------

def test_exec_tty_gives_pty_output_in_every_stream_form(made: Made) -> None:
    """The create's Tty gives the pty; the start's Tty (docker-py sends false) only picks the
    framing, as in dockerd."""
    name = made.name()
    made.api.create_container(IMAGE, ["sleep", "60"], name=name)
    made.api.start(name)
    cmd = ["sh", "-c", "echo a; echo b >&2"]

    def run(create_tty: bool, **kwargs: Any) -> Any:
        out = made.api.exec_start(made.api.exec_create(name, cmd, tty=create_tty), **kwargs)
        return list(out) if kwargs.get("stream") else out

    assert run(True) == b"a\r\nb\r\n"
    assert run(True, tty=True) == b"a\r\nb\r\n"
    assert run(True, demux=True) == (b"a\r\nb\r\n", None)
    assert run(True, tty=True, demux=True) == (b"a\r\nb\r\n", None)
    assert b"".join(run(True, stream=True)) == b"a\r\nb\r\n"
    assert run(False, demux=True) == (b"a\n", b"b\n")
    r = made.docker("exec", "-t", name, "sh", "-c", "echo a")
    assert r.stdout == b"a\r\n"


# --- USER from the image's own /etc/passwd ---------------------------------------------------

def test_user_added_by_a_run_of_the_same_build(made: Made, tmp_path: Any) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\n"
        'RUN echo "app:x:1234:1235::/:/bin/sh" >> /etc/passwd && echo "app:x:1235:" >> /etc/group\n'
        "USER app\nCMD id\n")
    tag = made.name("i")
    r = subprocess.run([DOCKER or "docker", "build", "-q", "-t", tag, str(tmp_path)],
                       env={**made.env, "DOCKER_BUILDKIT": "0",
                            "DOCKER_CONFIG": str(tmp_path / "cfg")},
                       capture_output=True, timeout=120) if DOCKER else None
    if r is None:
        made.api.build(path=str(tmp_path), tag=tag, rm=True)
    else:
        assert r.returncode == 0, r.stderr.decode()
    assert made.api.inspect_image(tag)["Config"]["User"] == "app"
    expected = "uid=1234(app) gid=1235(app) groups=1235(app)"
    assert made.docker("run", "--rm", tag).stdout.decode().strip() == expected
    name = made.name()
    made.api.create_container(tag, name=name)   # docker-py sends no User
    made.api.start(name)
    made.api.wait(name, timeout=30)
    assert made.api.logs(name).decode().strip() == expected
    assert made.api.inspect_container(name)["Config"]["User"] == "app"
    assert made.docker("run", "--rm", "-u", "0", tag, "id", "-u").stdout == b"0\n"


# --- network IPAM ----------------------------------------------------------------------------

def _ula() -> str:
    return str(ipaddress.IPv6Network(((0xFD << 120) | (secrets.randbits(40) << 80), 64)))


def test_ipv6_network_with_ip_range(made: Made) -> None:
    subnet6 = ipaddress.IPv6Network(_ula())
    range6 = ipaddress.IPv6Network((int(subnet6.network_address) + 0x80000, 112))
    name = made.name("n")
    subnet4 = f"10.241.{secrets.randbelow(200) + 20}.0/24"
    made.docker("network", "create", "--ipv6", "--subnet", subnet4, "--subnet", str(subnet6),
                "--ip-range", str(range6), name)
    configs = made.api.inspect_network(name)["IPAM"]["Config"]
    assert {"Subnet": str(subnet6), "IPRange": str(range6),
            "Gateway": str(subnet6[1])} in configs
    r = made.docker("run", "--rm", "--network", name, IMAGE, "ip", "-6", "addr", "show", "eth0")
    leased = [ipaddress.IPv6Interface(w).ip for line in r.stdout.decode().splitlines()
              if "global" in line for w in line.split() if "/" in w]
    assert leased and leased[0] in range6, r.stdout
    with pytest.raises(docker.errors.APIError) as e:
        made.api.create_network(made.name("n"), enable_ipv6=True, ipam={"Config": [
            {"Subnet": _ula(), "IPRange": str(range6)}]})
    assert e.value.status_code == 400 and "no matching subnet for range" in e.value.explanation


def test_subnet_overlap_names_what_it_overlaps(made: Made) -> None:
    first, octet = made.name("n"), secrets.randbelow(200) + 20
    made.api.create_network(first, ipam={"Config": [{"Subnet": f"10.{octet}.0.0/16"}]})
    with pytest.raises(docker.errors.APIError) as e:
        made.api.create_network(made.name("n"), ipam={"Config": [
            {"Subnet": f"10.{octet}.7.0/24"}]})
    assert e.value.explanation == (
        f"Pool overlaps with other one on this address space: 10.{octet}.7.0/24 overlaps "
        f"the subnet 10.{octet}.0.0/16 of network {first}")
    v6, subnet6 = made.name("n"), _ula()
    made.api.create_network(v6, enable_ipv6=True, ipam={"Config": [
        {"Subnet": f"10.{octet + 1}.0.0/24"}, {"Subnet": subnet6}]})
    inner = str(ipaddress.IPv6Network(subnet6).network_address) + "/80"
    r = made.docker("network", "create", "--ipv6", "--subnet", inner, made.name("n"),
                    check=False)
    assert r.returncode != 0
    assert (f"{inner} overlaps the subnet {subnet6} of network {v6}") in r.stderr.decode()


# --- stats -----------------------------------------------------------------------------------

def test_stats_carry_the_container_networks(made: Made) -> None:
    a, b = made.name(), made.name()
    for name in (a, b):
        made.api.create_container(IMAGE, ["sleep", "60"], name=name)
        made.api.start(name)
    before = made.api.stats(a, stream=False, one_shot=True)["networks"]
    assert list(before) == ["eth0"]
    ip = made.api.inspect_container(b)["NetworkSettings"]["IPAddress"]
    out = made.api.exec_start(made.api.exec_create(a, ["ping", "-c3", "-s1000", "-W2", ip]))
    assert b"3 packets received" in out, out
    after = made.api.stats(a, stream=False, one_shot=True)["networks"]["eth0"]
    assert after["tx_bytes"] >= before["eth0"]["tx_bytes"] + 3000
    assert after["rx_packets"] >= before["eth0"]["rx_packets"] + 3
    assert set(after) == {"rx_bytes", "rx_packets", "rx_errors", "rx_dropped",
                          "tx_bytes", "tx_packets", "tx_errors", "tx_dropped"}
    r = made.docker("stats", "--no-stream", "--format", "{{.NetIO}}", a)
    assert r.stdout.decode().strip() not in ("0B / 0B", "--")
    none = made.name()
    made.api.create_container(IMAGE, ["sleep", "60"], name=none,
                              host_config=made.api.create_host_config(network_mode="none"))
    made.api.start(none)
    assert "networks" not in made.api.stats(none, stream=False, one_shot=True)


# --- cp through volume and bind mount points -------------------------------------------------

def _tar_of(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            f = tar.extractfile(member) if member.isfile() else None
            out[member.name] = f.read() if f else b""
    return out


def _put(made: Made, name: str, path: str, files: dict[str, bytes]) -> None:
    assert made.api.put_archive(name, path, tar_of(files))


@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
def test_archive_through_volume_and_bind_mounts(made: Made, tmp_path: Any,
                                                running: bool) -> None:
    bind = tmp_path / "bind"
    (bind / "sub").mkdir(parents=True)
    (bind / "sub" / "host.txt").write_bytes(b"from the host\n")
    volume, name = made.name("v"), made.name()
    made.api.create_container(
        IMAGE, ["sh", "-c", "echo in-volume > /data/v.txt; exec sleep 60"], name=name,
        host_config=made.api.create_host_config(binds={
            volume: {"bind": "/data", "mode": "rw"}, str(bind): {"bind": "/mnt/b", "mode": "rw"},
            str(bind / "sub"): {"bind": "/ro", "mode": "ro"}}))
    made.api.start(name)
    deadline = time.time() + 10
    while b"in-volume" not in made.api.exec_start(made.api.exec_create(
            name, ["sh", "-c", "cat /data/v.txt 2>/dev/null || true"])):
        assert time.time() < deadline
        time.sleep(0.1)
    if not running:
        made.api.stop(name, timeout=0)
    # GET and HEAD
    stream, stat = made.api.get_archive(name, "/data/v.txt")
    assert stat["name"] == "v.txt" and _tar_of(b"".join(stream)) == {"v.txt": b"in-volume\n"}
    stream, stat = made.api.get_archive(name, "/mnt/b")
    assert stat["name"] == "b"
    assert _tar_of(b"".join(stream))["b/sub/host.txt"] == b"from the host\n"
    stream, _ = made.api.get_archive(name, "/mnt/b/sub/.")   # the contents only
    names = {n.lstrip("./") for n in _tar_of(b"".join(stream))} - {""}
    assert names == {"host.txt"}
    assert made.api.get_archive(name, "/ro/host.txt")[1]["size"] == len(b"from the host\n")
    with pytest.raises(docker.errors.NotFound):
        made.api.get_archive(name, "/data/missing")
    # PUT lands in the mount's own tree
    _put(made, name, "/data", {"put.txt": b"put into the volume\n"})
    _put(made, name, "/mnt/b/sub", {"put.txt": b"put into the bind\n"})
    assert (bind / "sub" / "put.txt").read_bytes() == b"put into the bind\n"
    with pytest.raises(docker.errors.APIError) as e:
        _put(made, name, "/ro", {"x.txt": b"x"})
    assert e.value.status_code == 400
    assert e.value.explanation == "mounted volume is marked read-only"
    # through the docker CLI
    src = tmp_path / "cli.txt"
    src.write_bytes(b"via docker cp\n")
    made.docker("cp", str(src), f"{name}:/data/cli.txt")
    out = tmp_path / "out"
    out.mkdir()
    made.docker("cp", f"{name}:/data/.", str(out))
    assert (out / "cli.txt").read_bytes() == b"via docker cp\n"
    assert (out / "put.txt").read_bytes() == b"put into the volume\n"
    assert (out / "v.txt").read_bytes() == b"in-volume\n"
    # what the container itself sees
    if not running:
        made.api.start(name)
    seen = made.api.exec_start(made.api.exec_create(
        name, ["cat", "/data/put.txt", "/data/cli.txt", "/mnt/b/sub/put.txt"]))
    assert seen == b"put into the volume\nvia docker cp\nput into the bind\n"


def test_legacy_link_variables_and_hostname(made: Made) -> None:
    """dockerd's daemon environment: HOSTNAME, and each legacy link's ALIAS_* variables."""
    child, parent = made.name(), made.name()
    made.docker("run", "-d", "--name", child, "-e", "FOO=1", "--expose", "80",
                "--expose", "8000-8002", "--expose", "53/udp", IMAGE, "sleep", "60")
    ip = made.api.inspect_container(child)["NetworkSettings"]["IPAddress"]
    r = made.docker("run", "--name", parent, "--hostname", "linked", "--link",
                    f"{child}:my-db", IMAGE, "env")
    env = dict(line.split("=", 1) for line in r.stdout.decode().splitlines())
    assert env["HOSTNAME"] == "linked"
    assert env["MY_DB_NAME"] == f"/{parent}/my-db"
    assert env["MY_DB_ENV_FOO"] == "1" and "MY_DB_ENV_PATH" not in env
    assert env["MY_DB_PORT"] == f"udp://{ip}:53"
    assert env["MY_DB_PORT_80_TCP"] == f"tcp://{ip}:80"
    assert env["MY_DB_PORT_80_TCP_ADDR"] == ip and env["MY_DB_PORT_80_TCP_PORT"] == "80"
    assert env["MY_DB_PORT_8000_TCP_START"] == f"tcp://{ip}:8000"
    assert env["MY_DB_PORT_8000_TCP_END"] == f"tcp://{ip}:8002"
    assert env["MY_DB_PORT_8001_TCP_PROTO"] == "tcp"
    r = made.docker("exec", child, "sh", "-c", "echo $HOSTNAME")
    assert r.stdout.decode().strip() == made.api.inspect_container(child)["Config"]["Hostname"]


def test_remove_a_legacy_link(made: Made) -> None:
    child, parent = made.name(), made.name()
    made.docker("run", "-d", "--name", child, IMAGE, "sleep", "60")
    made.docker("run", "-d", "--name", parent, "--link", f"{child}:ali", IMAGE, "sleep", "60")
    made.api.remove_container(f"{parent}/ali", link=True)   # DELETE /containers/parent/ali
    assert made.api.inspect_container(parent)["HostConfig"]["Links"] is None
    assert {c["Id"] for c in made.api.containers(filters={"name": made.prefix})} == {
        made.api.inspect_container(n)["Id"] for n in (child, parent)}
    with pytest.raises(docker.errors.NotFound):
        made.api.remove_container(f"{parent}/ali", link=True)
    r = made.docker("rm", "--link", parent, check=False)
    assert r.returncode == 1 and b"cannot remove the default link name" in r.stderr


def test_restarting_container_is_not_removed_without_force(made: Made) -> None:
    name = made.name()
    made.api.create_container(IMAGE, ["sh", "-c", "sleep 0.2; exit 1"], name=name,
                              host_config=made.api.create_host_config(
                                  restart_policy={"Name": "always"}, network_mode="none"))
    made.api.start(name)
    made.api.wait(name, timeout=30)
    with pytest.raises(docker.errors.APIError) as e:
        made.api.remove_container(name)
    assert e.value.status_code == 409
    assert "stop the container before" in e.value.explanation.lower()
    made.api.remove_container(name, force=True)


def test_commit_records_the_parent_image(made: Made) -> None:
    name = made.name()
    made.api.create_container(IMAGE, ["touch", "/x"], name=name)
    made.api.start(name)
    made.api.wait(name, timeout=30)
    image = made.api.commit(name)["Id"]
    made.images.append(image)
    assert made.api.inspect_image(image)["Parent"] == made.api.inspect_image(IMAGE)["Id"]


def test_network_list_filters_apply_to_none_and_host(made: Made) -> None:
    nid = made.api.inspect_network("bridge")["Id"]
    assert [n["Id"] for n in made.api.networks(ids=[nid[:8]])] == [nid]
    assert [n["Name"] for n in made.api.networks(ids=["host"])] == ["host"]


def test_endpoint_config_aliases_driver_opts_and_unknown_networks(made: Made) -> None:
    net = made.name("n")
    made.api.create_network(net)
    old = docker.APIClient(base_url=f"unix://{made.silod.socket}", version="1.41")
    name = made.name()
    old.create_container(IMAGE, ["true"], name=name, host_config=old.create_host_config(
        network_mode=net), networking_config=old.create_networking_config({
            net: old.create_endpoint_config(aliases=["hello"], driver_opt={"k": "a"})}))
    cid = made.api.inspect_container(name)["Id"]
    ep = old.inspect_container(name)["NetworkSettings"]["Networks"][net]
    assert ep["Aliases"] == ["hello", cid[:12]]   # the short id too before API 1.45
    assert ep["DriverOpts"] == {"k": "a"}
    assert made.api.inspect_container(name)["NetworkSettings"]["Networks"][net]["Aliases"] == [
        "hello"]
    default = made.name()
    old.create_container(IMAGE, ["true"], name=default)
    assert old.inspect_container(default)["NetworkSettings"]["Networks"]["nat"]["Aliases"] \
        is None
    with pytest.raises(docker.errors.NotFound) as e:
        made.api.create_container(IMAGE, ["true"], name=made.name(),
                                  host_config=made.api.create_host_config(network_mode=net),
                                  networking_config=made.api.create_networking_config({
                                      net: made.api.create_endpoint_config(),
                                      "no-such-net": made.api.create_endpoint_config()}))
    assert e.value.explanation == "network no-such-net not found"


def test_exec_of_a_missing_command_reports_in_the_stream(made: Made) -> None:
    """As dockerd: the stream is the client's once started; the error is its output."""
    name = made.name()
    made.api.create_container(IMAGE, ["sleep", "60"], name=name)
    made.api.start(name)
    client = docker.DockerClient(base_url=f"unix://{made.silod.socket}", version="auto")
    code, out = client.containers.get(name).exec_run("no-such-command")
    assert code == 127 and b"executable file not found" in out and out.endswith(b"\r\n")
    r = made.docker("exec", name, "no-such-command", check=False)
    assert r.returncode == 127 and b"executable file not found" in r.stdout + r.stderr
    code, out = client.containers.get(name).exec_run("id", user="no-such-user")
    assert code == 126 and b"unable to find user no-such-user" in out
    with pytest.raises(docker.errors.APIError) as e:   # detached: the start itself fails
        made.api.exec_start(made.api.exec_create(name, ["no-such-command"]), detach=True)
    assert e.value.status_code == 400


def test_volume_driver_matters_only_for_a_volume_to_make(made: Made) -> None:
    name = made.name()
    made.api.create_container(IMAGE, ["true"], name=name,
                              host_config=made.api.create_host_config(volume_driver="foo"))
    assert made.api.inspect_container(name)["HostConfig"]["VolumeDriver"] == "foo"
    with pytest.raises(docker.errors.NotFound) as e:
        made.api.create_container(IMAGE, ["true"], host_config=made.api.create_host_config(
            volume_driver="foo", binds=[f"{made.name('v')}:/data"]))
    assert e.value.explanation == 'error looking up volume plugin foo: plugin "foo" not found'
    vol = made.name("v")
    made.api.create_volume(vol)
    made.api.create_container(IMAGE, ["true"], name=made.name(),
                              host_config=made.api.create_host_config(
                                  volume_driver="foo", binds=[f"{vol}:/data"]))


# --- classic builder -------------------------------------------------------------------------

def test_build_cache_from_and_stderr(made: Made) -> None:
    script = f"FROM busybox\nENV FOO={made.prefix}\nRUN touch baz\nRUN touch bax\n".encode()
    first, second = made.name("i"), made.name("i")

    def build(tag: str, **kwargs: Any) -> list[dict[str, Any]]:
        return list(made.api.build(fileobj=io.BytesIO(script), tag=tag, decode=True, rm=True,
                                   **kwargs))

    build(first)
    hits = sum("Using cache" in m.get("stream", "") for m in build(second, cache_from=[first]))
    assert hits == 3
    made.api.remove_image(second)
    hits = sum("Using cache" in m.get("stream", "")
               for m in build(second, cache_from=["no-such-image"]))
    assert hits == 0   # with cachefrom, only those images are a cache
    out = list(made.api.build(fileobj=io.BytesIO(
        b'FROM busybox\nRUN sh -c ">&2 echo to-stderr; echo to-stdout"\n'), decode=True,
        nocache=True, rm=True))
    streams = [m.get("stream") for m in out]
    assert "\x1b[91mto-stderr\n\x1b[0m" in streams and "to-stdout\n" in streams
    made.images.append(next(m["stream"].split()[-1] for m in out
                            if m.get("stream", "").startswith("Successfully built")))


def test_exec_create_fields_match_without_case(made: Made) -> None:
    """Go's JSON decoding: docker-py sends ``detachKeys`` from the client's config file."""
    name = made.name()
    made.api.create_container(IMAGE, ["sleep", "60"], name=name)
    made.api.start(name)
    status, doc = made.silod.request("POST", f"/containers/{name}/exec",
                                     {"cmd": ["true"], "detachKeys": "ctrl-p", "tty": True})
    assert status == 201, doc
    info = made.api.exec_inspect(doc["Id"])
    assert info["DetachKeys"] == "ctrl-p" and info["ProcessConfig"]["tty"] is True
