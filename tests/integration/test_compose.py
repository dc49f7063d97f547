"""docker-compose 1.29 (PyPI's, in its own venv) driving silod, unchanged, as users run it.

Each test writes a real project in a temporary directory, gives it a unique project name and
runs the docker-compose binary with DOCKER_HOST pointing at the test's silod. Results are read
the way a user would see them (compose's own output, HTTP on the published loopback port) and
from the API; after ``down -v`` nothing of the project may remain: no container, network,
volume, endpoint, host link, network namespace or job object.

Safety: the only traffic from the test is HTTP to 127.0.0.1; containers talk to each other
inside the user networks the project creates.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import select
import socket
import subprocess
import tarfile
import threading
import time
from typing import Any, Callable, Iterator

import pytest

COMPOSE = os.environ.get("SILOBOX_COMPOSE", "/opt/silobox-compose/bin/docker-compose")

pytestmark = pytest.mark.skipif(
    not os.access(COMPOSE, os.X_OK),
    reason=f"docker-compose 1.29 not installed at {COMPOSE} (bash scripts/install.sh --test)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(probe: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except (OSError, AssertionError) as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{what}: not seen within {timeout} s (last: {last!r})")


def http_get(port: int, path: str = "/") -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, (resp.status, body)
        return body
    finally:
        conn.close()


class Project:
    """One compose project on disk, and the docker-compose binary run against silod."""

    def __init__(self, silod: Any, directory: str, name: str) -> None:
        self.silod = silod
        self.dir = directory
        self.name = name
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("DOCKER_", "COMPOSE_"))}
        self.env.update(DOCKER_HOST=f"unix://{silod.socket}", COMPOSE_PROJECT_NAME=name,
                        COMPOSE_HTTP_TIMEOUT="120", PYTHONWARNINGS="ignore",
                        PYTHONUNBUFFERED="1")
        self.seen: dict[str, set[str]] = {"containers": set(), "networks": set(),
                                          "netns": set(), "links": set(), "volumes": set()}

    def write(self, relpath: str, text: str) -> None:
        path = os.path.join(self.dir, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    def compose(self, *args: str, check: bool = True, timeout: float = 120
                ) -> subprocess.CompletedProcess:
        r = subprocess.run([COMPOSE, "--ansi", "never", *args], cwd=self.dir, env=self.env,
                           capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} exited {r.returncode}:\n"
                                 f"{r.stdout}\n{r.stderr}\n--- silod ---\n{self.silod.log()}")
        return r

    def compose_tty(self, *args: str, timeout: float = 30) -> tuple[int, str]:
        """Run docker-compose with a pseudo-terminal as its stdin/stdout (``exec`` with a tty)."""
        master, slave = os.openpty()
        try:
            proc = subprocess.Popen([COMPOSE, "--ansi", "never", *args], cwd=self.dir, env=self.env,
                                    stdin=slave, stdout=slave, stderr=slave,
                                    start_new_session=True)
            os.close(slave)
            slave = -1
            out = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(master, 4096)
                    except OSError:   # EIO: every holder of the terminal's other end closed it
                        break
                    if not chunk:
                        break
                    out += chunk
                elif proc.poll() is not None:
                    break
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            return code, out.decode(errors="replace")
        finally:
            if slave >= 0:
                os.close(slave)
            os.close(master)

    def containers(self) -> list[dict[str, Any]]:
        return self.silod.client.containers(
            all=True, filters={"label": f"com.docker.compose.project={self.name}"})

    def remember_host_objects(self) -> None:
        """Note what the project has on the host now, to check later that it all went."""
        api = self.silod.client
        for c in self.containers():
            self.seen["containers"].add(c["Id"])
            key = api.inspect_container(c["Id"])["NetworkSettings"].get("SandboxKey")
            if key:
                self.seen["netns"].add(key)
        status, hns = self.silod.request("GET", "/silobox/hns/networks")
        assert status == 200
        for n in hns:
            if n["Name"].startswith(f"{self.name}_"):
                self.seen["networks"].add(n["Name"])
                for key in ("HostVNic", "Bridge"):
                    if (n.get("Silobox") or {}).get(key):
                        self.seen["links"].add(n["Silobox"][key])
        status, eps = self.silod.request("GET", "/silobox/hns/endpoints")
        for e in eps:
            if e.get("SharedContainers") and set(e["SharedContainers"]) & self.seen["containers"]:
                port = (e.get("Silobox") or {}).get("Port")
                if port:
                    self.seen["links"].add(port)
        for v in api.volumes(filters={"label": f"com.docker.compose.project={self.name}"}
                             ).get("Volumes") or []:
            self.seen["volumes"].add(v["Mountpoint"])

    def assert_nothing_left(self) -> None:
        api = self.silod.client
        assert self.containers() == []
        assert [n["Name"] for n in api.networks() if n["Name"].startswith(f"{self.name}_")] == []
        vols = api.volumes(filters={"label": f"com.docker.compose.project={self.name}"})
        assert not vols.get("Volumes")
        status, eps = self.silod.request("GET", "/silobox/hns/endpoints")
        assert not [e for e in eps if set(e.get("SharedContainers") or [])
                    & self.seen["containers"]]
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
        assert not self.seen["links"] & names, self.seen["links"] & names
        for path in self.seen["netns"] | self.seen["volumes"]:
            assert not os.path.exists(path), path
        for cid in self.seen["containers"]:
            for h in os.listdir("/sys/fs/cgroup"):
                path = os.path.join("/sys/fs/cgroup", h, self.silod.cgroup_parent, cid)
                assert not os.path.exists(path), path


@pytest.fixture
def project(silod: Any, tmp_path: Any, run_id: str, request: Any) -> Iterator[Project]:
    name = f"sbx{run_id}{request.node.name[5:9]}".lower().replace("_", "")
    p = Project(silod, str(tmp_path), name)
    try:
        yield p
    finally:
        if os.path.exists(os.path.join(p.dir, "docker-compose.yml")):
            p.compose("down", "-v", "--remove-orphans", "-t", "1", check=False)
        for c in p.containers():   # whatever compose could not remove
            silod.request("DELETE", f"/containers/{c['Id']}?force=1&v=1")


WEB_AND_APP = """\
version: "3.8"
services:
  web:
    image: busybox
    command: ["sh", "-c", "echo {token} > /www/index.html && exec httpd -f -v -p 80 -h /www"]
    volumes:
      - www:/www
    ports:
      - "127.0.0.1:{port}:80"
    networks: [back]
    stop_grace_period: 1s
  app:
    image: busybox
    depends_on: [web]
    command:
      - sh
      - -c
      - |
        for i in $$(seq 100); do
          if got=$$(wget -q -O - http://web/); then echo "app got: $$got"; break; fi
          sleep 0.2
        done
        exec sleep 3600
    networks: [back]
    stop_grace_period: 1s
networks:
  back: {{}}
volumes:
  www: {{}}
"""


def test_two_services_network_volume_port_lifecycle(project: Project) -> None:
    port = free_port()
    token = f"hello-{project.name}"
    project.write("docker-compose.yml", WEB_AND_APP.format(token=token, port=port))

    up = project.compose("up", "-d")
    assert f"Creating {project.name}_web_1" in up.stderr
    assert f'Creating network "{project.name}_back"' in up.stderr
    assert f'Creating volume "{project.name}_www"' in up.stderr
    project.remember_host_objects()

    ps = project.compose("ps")
    rows = [l for l in ps.stdout.splitlines() if l.startswith(project.name)]
    assert len(rows) == 2 and all(" Up " in r for r in rows), ps.stdout
    assert f"127.0.0.1:{port}->80/tcp" in ps.stdout
    assert len(project.compose("ps", "-q").stdout.split()) == 2

    # The published port, from the host; the service name, through the embedded DNS.
    assert eventually(lambda: http_get(port), "web on its published port").strip() == token
    logs = eventually(lambda: (lambda out: out if f"app got: {token}" in out else None)(
        project.compose("logs", "--no-color", "app").stdout), "app's wget of http://web/")
    assert f"app_1  | app got: {token}" in logs
    assert "response:200" in project.compose("logs", "--no-color", "--tail", "5", "web").stdout

    # A second up changes nothing: silod reports back what compose asked for.
    again = project.compose("up", "-d")
    assert "is up-to-date" in again.stderr and "Recreating" not in again.stderr, again.stderr

    # exec, without and with a terminal
    ex = project.compose("exec", "-T", "web", "cat", "/www/index.html")
    assert ex.stdout.strip() == token
    ex = project.compose("exec", "-T", "app", "sh", "-c", "exit 3", check=False)
    assert ex.returncode == 3
    code, out = project.compose_tty("exec", "app", "sh", "-c", "tty; echo tty-ok")
    assert code == 0 and "/dev/pts/" in out and "tty-ok" in out, out

    assert project.compose("port", "web", "80").stdout.strip() == f"127.0.0.1:{port}"

    # restart, stop, start: the volume keeps its file, the port and the name work again.
    # compose's own event stream (label-filtered /events) shows Docker's actions for them.
    events = subprocess.Popen([COMPOSE, "--ansi", "never", "events", "--json"],
                              cwd=project.dir, env=project.env, stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True)
    seen: list[str] = []

    def read_events() -> None:
        for line in events.stdout:  # type: ignore[union-attr]
            ev = json.loads(line)
            seen.append(f"{ev['service']}:{ev['action']}")
    reader = threading.Thread(target=read_events, daemon=True)
    reader.start()
    try:
        time.sleep(1.0)   # compose subscribes before the restart
        project.compose("restart", "-t", "1", "web")
        assert eventually(lambda: http_get(port), "web after restart").strip() == token
        eventually(lambda: "web:restart" in seen, "compose events for the restart")
        assert seen == ["web:kill", "web:die", "web:stop", "web:start", "web:restart"], seen
    finally:
        events.terminate()
        events.wait(10)
        reader.join(10)
    project.compose("stop", "-t", "1")
    stopped = project.compose("ps").stdout
    assert "Exit" in stopped and " Up " not in stopped, stopped
    project.compose("start")
    assert eventually(lambda: http_get(port), "web after start").strip() == token
    top = project.compose("top", "web").stdout
    assert "httpd -f -v -p 80" in top, top

    project.remember_host_objects()
    down = project.compose("down", "-v", "-t", "1")
    assert f"Removing network {project.name}_back" in down.stderr
    assert f"Removing volume {project.name}_www" in down.stderr
    project.assert_nothing_left()
    with pytest.raises(OSError):
        http_get(port)


LINKS_HEALTH_VOLUMES_FROM = """\
version: "2.4"
services:
  db:
    image: busybox
    command: ["sh", "-c", "echo seeded > /data/seed; trap 'exit 0' TERM; while :; do sleep 1; done"]
    labels: {{org.example.role: db}}
    volumes: ["data:/data"]
    networks:
      back:
        aliases: [database]
    healthcheck:
      test: ["CMD", "test", "-f", "/data/seed"]
      interval: 1s
      timeout: 2s
      retries: 5
  app:
    image: busybox
    depends_on:
      db: {{condition: service_healthy}}
    links: ["db:olddb"]
    volumes_from: ["db:ro"]
    command:
      - sh
      - -c
      - |
        cat /data/seed
        nslookup database 127.0.0.11 >/dev/null && echo alias-ok
        nslookup olddb 127.0.0.11 >/dev/null && echo link-ok
        touch /data/x 2>/dev/null || echo read-only-ok
        exec sleep 3600
    networks: [back]
    stop_grace_period: 1s
  lone:
    image: busybox
    command: ["sh", "-c", "nslookup olddb 127.0.0.11 >/dev/null || echo no-link-here; exec sleep 3600"]
    networks: [back]
    mac_address: "02:42:ac:11:00:99"
    sysctls: {{net.core.somaxconn: "1000"}}
    stop_grace_period: 1s
networks:
  back:
    driver: bridge
    labels: {{org.example.net: back}}
volumes:
  data:
    labels: {{org.example.vol: data}}
"""


def test_links_volumes_from_healthcheck_labels(project: Project) -> None:
    project.write("docker-compose.yml", LINKS_HEALTH_VOLUMES_FROM.format())
    project.compose("up", "-d")
    project.remember_host_objects()
    out = eventually(lambda: (lambda o: o if "read-only-ok" in o else None)(
        project.compose("logs", "--no-color", "app").stdout), "app's checks")
    for word in ("seeded", "alias-ok", "link-ok", "read-only-ok"):
        assert word in out, out
    # An endpoint link is the linking container's own name: another one does not resolve it.
    eventually(lambda: "no-link-here" in project.compose("logs", "--no-color", "lone").stdout,
               "lone's failed lookup of olddb")

    # mac_address survives compose's disconnect/connect before the start; sysctls apply.
    lone = project.compose("exec", "-T", "lone", "cat", "/sys/class/net/eth0/address",
                           "/proc/sys/net/core/somaxconn").stdout.split()
    assert lone == ["02:42:ac:11:00:99", "1000"], lone

    api = project.silod.client
    db = api.inspect_container(f"{project.name}_db_1")
    assert db["State"]["Health"]["Status"] == "healthy"
    assert db["Config"]["Labels"]["org.example.role"] == "db"
    assert db["Config"]["Labels"]["com.docker.compose.service"] == "db"
    app = api.inspect_container(f"{project.name}_app_1")
    assert [(m["Name"], m["Destination"], m["RW"]) for m in app["Mounts"]] == \
        [(f"{project.name}_data", "/data", False)]
    assert f"{project.name}_db_1:olddb" in \
        app["NetworkSettings"]["Networks"][f"{project.name}_back"]["Links"]
    assert app["HostConfig"]["Links"] is None   # legacy links: default network only
    net = api.inspect_network(f"{project.name}_back")
    assert net["Driver"] == "bridge" and net["Labels"]["org.example.net"] == "back"
    vol = api.inspect_volume(f"{project.name}_data")
    assert vol["Labels"]["org.example.vol"] == "data"

    # Nothing drifted: the second up recreates nothing (driver, labels, options compared).
    again = project.compose("up", "-d")
    assert "Recreating" not in again.stderr and "needs to be recreated" not in again.stderr, \
        again.stderr
    project.compose("down", "-v", "-t", "1")
    project.assert_nothing_left()


def test_up_attached_streams_logs_and_run_rm(project: Project) -> None:
    project.write("docker-compose.yml", """\
version: "3.8"
services:
  talker:
    image: busybox
    command: ["sh", "-c", "echo line-one; sleep 0.2; echo line-two >&2; sleep 0.3; echo line-three"]
""")
    # Not detached: compose attaches (logs=1&stream=1) and returns when the service exits.
    up = project.compose("up", "--no-color", "--exit-code-from", "talker", timeout=60)
    for line in ("line-one", "line-two", "line-three"):
        assert f"talker_1  | {line}" in up.stdout, up.stdout
    # logs -f follows until every container of the project has stopped (here: at once).
    follow = project.compose("logs", "-f", "--no-color", "-t", timeout=30)
    stamped = [l for l in follow.stdout.splitlines() if l.startswith("talker_1  | 20")]
    assert [l.split("Z ", 1)[1] for l in stamped] == ["line-one", "line-two", "line-three"], \
        follow.stdout
    assert "exited with code 0" in follow.stdout
    run = project.compose("run", "--rm", "-T", "talker", "echo", "one-off")
    assert run.stdout.strip() == "one-off"
    assert [c["Names"] for c in project.containers()
            if c["Labels"].get("com.docker.compose.oneoff") == "True"] == []
    project.remember_host_objects()
    project.compose("down", "-v", "-t", "1")
    project.assert_nothing_left()


# ----- build: ------------------------------------------------------------------------------
def build_unavailable(silod: Any) -> str | None:
    """Why ``POST /build`` cannot serve compose here, or None: asked of the daemon itself."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w"):
        pass
    status, body = silod.request("POST", "/build?q=1", raw=context.getvalue(),
                                 headers={"Content-Type": "application/x-tar"})
    message = body.get("message", "") if isinstance(body, dict) else ""
    if (status == 404 and message == "page not found") or status in (405, 501):
        return "POST /build not available"
    return None


def test_build_service(project: Project) -> None:
    reason = build_unavailable(project.silod)
    if reason:
        pytest.skip(reason)
    project.write("ctx/greeting.txt", f"greetings from {project.name}\n")
    project.write("ctx/Dockerfile", """\
FROM busybox
ARG FLAVOUR=plain
COPY greeting.txt /greeting.txt
RUN echo "flavour $FLAVOUR" > /flavour.txt
CMD ["sh", "-c", "cat /greeting.txt /flavour.txt; exec sleep 3600"]
""")
    project.write("docker-compose.yml", """\
version: "3.8"
services:
  built:
    build:
      context: ./ctx
      args: {FLAVOUR: spicy}
    stop_grace_period: 1s
""")
    up = project.compose("up", "-d", "--build", timeout=300)
    assert "Successfully built" in up.stdout or "Successfully built" in up.stderr, up
    project.remember_host_objects()
    logs = eventually(lambda: (lambda o: o if "flavour spicy" in o else None)(
        project.compose("logs", "--no-color", "built").stdout), "the built image's CMD")
    assert f"greetings from {project.name}" in logs
    image = f"{project.name}_built"
    assert project.silod.client.inspect_image(image)["RepoTags"] == [f"{image}:latest"]
    # A second build is served from the cache; the container is then up to date.
    project.compose("build", timeout=300)
    assert "is up-to-date" in project.compose("up", "-d").stderr
    project.compose("down", "-v", "--rmi", "local", "-t", "1")
    project.assert_nothing_left()
    import docker.errors
    with pytest.raises(docker.errors.NotFound):
        project.silod.client.inspect_image(image)


BRIDGE_LEGACY = """\
version: "2.4"
services:
  db:
    image: busybox
    command: ["sh", "-c", "hostname > /tmp/name; exec httpd -f -p 80 -h /tmp"]
    network_mode: bridge
    stop_signal: SIGKILL
  app:
    image: busybox
    container_name: {name}-fixed
    network_mode: bridge
    links: ["db:olddb"]
    command:
      - sh
      - -c
      - |
        test -f /anon/mark && echo anon-persisted; echo mark > /anon/mark
        echo "env $$A $$B"; cat /run/secrets/s1
        touch /x 2>/dev/null || echo rootfs-ro; echo t > /tmp/t && echo tmpfs-rw
        for i in $$(seq 50); do wget -q -O - http://olddb/name && break; sleep 0.2; done
        exec sleep 3600
    environment: {{A: "{version}"}}
    env_file: [vars.env]
    secrets: [s1]
    read_only: true
    tmpfs: ["/tmp:size=1m"]
    volumes: ["/anon"]
    stop_signal: SIGKILL
  worker:
    image: busybox
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
secrets:
  s1: {{file: ./secret.txt}}
"""


def test_default_network_links_secrets_recreate_scale(project: Project) -> None:
    project.write("vars.env", "B=from-env-file\n")
    project.write("secret.txt", "s3cret\n")
    project.write("docker-compose.yml", BRIDGE_LEGACY.format(name=project.name, version=1))
    project.compose("up", "-d")
    app = f"{project.name}-fixed"
    out = eventually(lambda: (lambda o: o if "rootfs-ro" in o and "tmpfs-rw" in o else None)(
        project.compose("logs", "--no-color", "app").stdout), "app's checks")
    assert "env 1 from-env-file" in out and "s3cret" in out, out
    api = project.silod.client
    db = api.inspect_container(f"{project.name}_db_1")
    # Legacy links on the default network: /etc/hosts, and Docker's inspect form.
    assert eventually(lambda: db["Config"]["Hostname"] in project.compose(
        "logs", "--no-color", "app").stdout, "app reaching db as olddb")
    hosts = project.compose("exec", "-T", "app", "cat", "/etc/hosts").stdout
    assert f"{db['NetworkSettings']['IPAddress']}\tolddb {db['Id'][:12]} {project.name}_db_1" \
        in hosts, hosts
    assert f"/{project.name}_db_1:/{app}/olddb" in api.inspect_container(app)["HostConfig"]["Links"]

    # A changed service is recreated; compose carries its anonymous volume over.
    project.write("docker-compose.yml", BRIDGE_LEGACY.format(name=project.name, version=2))
    again = project.compose("up", "-d")
    assert f"Recreating {app}" in again.stderr and "db_1 is up-to-date" in again.stderr, again
    out = eventually(lambda: (lambda o: o if "env 2" in o else None)(
        project.compose("logs", "--no-color", "app").stdout), "the recreated app")
    assert "anon-persisted" in out, out

    project.compose("up", "-d", "--scale", "worker=3")
    workers = [c for c in project.containers()
               if c["Labels"]["com.docker.compose.service"] == "worker"]
    assert len(workers) == 3 and all(c["State"] == "running" for c in workers)
    project.compose("pause", "worker")
    assert project.compose("ps", "worker").stdout.count("Paused") == 3
    project.compose("unpause", "worker")
    project.compose("kill", "worker")
    assert project.compose("ps", "worker").stdout.count("Exit 137") == 3
    project.compose("rm", "-f", "worker")
    assert project.compose("ps", "-q", "worker").stdout.strip() == ""
    images = project.compose("images").stdout
    assert "busybox" in images and app in images, images

    project.remember_host_objects()
    project.compose("down", "-v", "-t", "1")
    project.assert_nothing_left()
