"""Pull, push and login against Debian's ``docker-registry`` (distribution 2.8) started on
127.0.0.1 by the tests: plain http without auth, htpasswd basic auth, and TLS with a CA the test
generates and trusts through a certs.d directory. Driven through docker-py, the docker CLI and
silo. Every registry, proxy and temp dir is removed at the end; nothing but 127.0.0.1 is ever
contacted."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

REGISTRY_BIN = "/usr/bin/docker-registry"
DOCKER = "/usr/local/bin/docker"
USER, PASSWORD = "silo", "s3cret-pass"

pytestmark = pytest.mark.skipif(not os.path.exists(REGISTRY_BIN),
                                reason="docker-registry is not installed "
                                       "(scripts/install.sh --test installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A docker-registry process on 127.0.0.1 with its own storage and config."""

    def __init__(self, base: str, tls: tuple[str, str] | None = None,
                 htpasswd: str | None = None, token: dict[str, str] | None = None) -> None:
        self.base = base
        self.storage = os.path.join(base, "storage")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.tls = tls
        self.htpasswd = htpasswd
        self.token = token
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        os.makedirs(self.storage, exist_ok=True)
        http: dict[str, Any] = {"addr": self.address, "secret": uuid.uuid4().hex}
        if self.tls:
            http["tls"] = {"certificate": self.tls[0], "key": self.tls[1]}
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": self.storage},
                        "delete": {"enabled": True}},
            "http": http,
        }
        if self.htpasswd:
            config["auth"] = {"htpasswd": {"realm": "silobox-test", "path": self.htpasswd}}
        if self.token:
            config["auth"] = {"token": self.token}
        path = os.path.join(self.base, "config.yml")
        with open(path, "w") as f:
            json.dump(config, f)   # JSON is YAML
        log = open(os.path.join(self.base, "registry.log"), "ab")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", path], stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        deadline = time.time() + 20
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"registry did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        try:
            with open(os.path.join(self.base, "registry.log"), errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def blob_path(self, digest: str) -> str:
        hexd = digest.removeprefix("sha256:")
        return os.path.join(self.storage, "docker/registry/v2/blobs/sha256", hexd[:2], hexd,
                            "data")

    # raw HTTP, for publishing OCI documents the way other tools do
    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}{path}"

    def call(self, method: str, path: str, data: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url(path), data=data, method=method,
                                     headers=headers or {})
        if self.htpasswd:
            token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        ctx = ssl._create_unverified_context() if self.tls else None
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def put_blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, headers, _ = self.call("POST", f"/v2/{repo}/blobs/uploads/")
        assert status == 202, status
        loc = headers["Location"]
        loc = loc if loc.startswith("http") else self.url(loc)
        sep = "&" if "?" in loc else "?"
        path = loc.split(self.address, 1)[1]
        status, _, body = self.call("PUT", f"{path}{sep}digest={digest}", data,
                                    {"Content-Type": "application/octet-stream"})
        assert status == 201, (status, body)
        return digest

    def put_manifest(self, repo: str, ref: str, doc: dict, media: str) -> str:
        raw = json.dumps(doc).encode()
        status, _, body = self.call("PUT", f"/v2/{repo}/manifests/{ref}", raw,
                                    {"Content-Type": media})
        assert status == 201, (status, body)
        return "sha256:" + hashlib.sha256(raw).hexdigest()


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(run_id: str):
    base = f"/tmp/sbxreg-{run_id}"
    os.makedirs(base, exist_ok=True)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def certs(work: str) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    d = os.path.join(work, "pki")
    os.makedirs(d)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    for ca in ("ca", "other-ca"):
        ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-subj", f"/CN=silobox test {ca}")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=127.0.0.1")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "2", "-out", "server.crt", "-extfile", "ext.cnf")
    return {name: os.path.join(d, name) for name in
            ("ca.crt", "other-ca.crt", "server.crt", "server.key")}


@pytest.fixture(scope="module")
def certs_dir(work: str) -> str:
    path = os.path.join(work, "certs.d")
    os.makedirs(path)
    return path


@pytest.fixture(scope="module")
def daemon(work: str, run_id: str, certs_dir: str, silod_factory):
    """A silod of this module's own, whose certs.d directory is a temp dir."""
    with silod_factory(os.path.join(work, "silod"), f"{run_id}r",
                       ["--registry-certs-dir", certs_dir, "--insecure-registry",
                        "registry.test:5000", "--insecure-registry", "10.99.0.0/16"]) as d:
        d.env["DOCKER_HOST"] = f"unix://{d.socket}"
        # the built-in busybox image, made once
        cid = d.client.create_container("busybox", "true")["Id"]
        d.client.remove_container(cid)
        yield d


def _registry(work: str, name: str, **kw: Any):
    reg = Registry(os.path.join(work, name), **kw)
    reg.start()
    return reg


@pytest.fixture(scope="module")
def plain(work: str):
    reg = _registry(work, "plain")
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def secured(work: str):
    """htpasswd basic auth (bcrypt, as the registry requires)."""
    if not shutil.which("htpasswd"):
        pytest.skip("htpasswd is not installed (apache2-utils)")
    path = os.path.join(work, "htpasswd")
    subprocess.run(["htpasswd", "-Bbc", path, USER, PASSWORD], check=True, capture_output=True)
    reg = _registry(work, "auth", htpasswd=path)
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def tls(work: str, certs: dict[str, str]):
    reg = _registry(work, "tls", tls=(certs["server.crt"], certs["server.key"]))
    yield reg
    reg.stop()


# -- helpers -----------------------------------------------------------------------------------


def unique_layer_image(daemon, name: str, size: int = 64 * 1024) -> str:
    """Import a one-layer image with random content (so no layer is shared); returns its id."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin",):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        with open("/bin/busybox", "rb") as f:
            data = f.read()
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
        for tool in ("sh", "cat"):
            info = tarfile.TarInfo(f"bin/{tool}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        payload = os.urandom(size)
        info = tarfile.TarInfo("payload")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
        marker = name.encode() + b"\n"
        info = tarfile.TarInfo("name")
        info.size = len(marker)
        tar.addfile(info, io.BytesIO(marker))
    status, body = daemon.request("POST", f"/images/create?fromSrc=-&repo={name}",
                                  raw=buf.getvalue(),
                                  headers={"Content-Type": "application/x-tar"})
    assert status == 200, body
    return daemon.client.inspect_image(name)["Id"]


def only_in_registry(daemon, registry: str, repo: str, size: int) -> str:
    """Push a unique one-layer image as ``REGISTRY/REPO:v1`` and remove it here, so the next
    pull must download its layer; returns the image id."""
    image_id = unique_layer_image(daemon, f"{registry}/{repo}:v1", size=size)
    stream(daemon.client.push(f"{registry}/{repo}", tag="v1", stream=True, decode=True))
    daemon.client.remove_image(f"{registry}/{repo}:v1")
    return image_id


def stream(gen) -> list[dict]:
    out = []
    for item in gen:
        out.append(item)
        assert "error" not in item, item
    return out


def statuses(messages: list[dict]) -> list[str]:
    return [m.get("status", "") for m in messages]


def run_echo(daemon, image: str, cmd: str) -> bytes:
    cid = daemon.client.create_container(image, ["sh", "-c", cmd])["Id"]
    try:
        daemon.client.start(cid)
        daemon.client.wait(cid, timeout=60)
        return daemon.client.logs(cid)
    finally:
        daemon.client.remove_container(cid, force=True)


def transfer_files(daemon) -> list[str]:
    """Downloads and uploads in progress or left behind (none once every transfer ended)."""
    return [os.path.join(d, f) for d, _, files in os.walk(os.path.join(daemon.root,
                                                                       "distribution"))
            for f in files]


def layer_dirs(daemon) -> set[str]:
    return set(os.listdir(os.path.join(daemon.root, "layers")))


# -- plain http, no auth -----------------------------------------------------------------------


def test_push_rmi_pull_run_busybox(daemon, plain):
    c = daemon.client
    repo = f"{plain.address}/silobox/busybox"
    original = c.inspect_image("busybox")["Id"]
    c.tag("busybox", repo, "v1")
    first = stream(c.push(repo, tag="v1", stream=True, decode=True))
    text = statuses(first)
    assert f"The push refers to repository [{repo}]" in text
    assert "Pushed" in text
    done = [s for s in text if s.startswith("v1: digest: sha256:")]
    assert len(done) == 1, text
    digest = done[0].split()[2]
    assert any(m.get("aux", {}).get("Digest") == digest for m in first)

    again = stream(c.push(repo, tag="v1", stream=True, decode=True))
    assert "Layer already exists" in statuses(again)
    assert "Pushed" not in statuses(again)
    assert f"v1: digest: {digest} size: " in " ".join(statuses(again))

    c.remove_image(f"{repo}:v1")
    c.remove_image("busybox")
    pulled = stream(c.pull(repo, tag="v1", stream=True, decode=True))
    text = statuses(pulled)
    assert text[0] == "Pulling from silobox/busybox"
    for expected in ("Pulling fs layer", "Downloading", "Verifying Checksum",
                     "Download complete", "Extracting", "Pull complete", f"Digest: {digest}",
                     f"Status: Downloaded newer image for {repo}:v1"):
        assert expected in text, (expected, text)
    downloading = [m for m in pulled if m.get("status") == "Downloading"]
    assert downloading[-1]["progressDetail"]["current"] == \
        downloading[-1]["progressDetail"]["total"]
    info = c.inspect_image(f"{repo}:v1")
    assert info["Id"] == original   # the config bytes came back unchanged
    assert f"{repo}@{digest}" in info["RepoDigests"]
    assert run_echo(daemon, f"{repo}:v1", "echo pulled-ok") == b"pulled-ok\n"
    # by digest, and the pull again is "up to date"
    assert c.inspect_image(f"{repo}@{digest}")["Id"] == original
    text = statuses(stream(c.pull(repo, tag="v1", stream=True, decode=True)))
    assert f"Status: Image is up to date for {repo}:v1" in text
    assert "Already exists" not in text or "Pull complete" not in text
    # pushing the pulled image gives the same digest again (compressed digests are recorded)
    text = statuses(stream(c.push(repo, tag="v1", stream=True, decode=True)))
    assert f"v1: digest: {digest} size: " in " ".join(text)
    c.tag(f"{repo}:v1", "busybox", "latest")
    c.remove_image(f"{repo}:v1")


def test_pull_and_push_errors(daemon, plain):
    status, body = daemon.request("POST", f"/images/create?fromImage={plain.address}/nope/none"
                                          "&tag=latest")
    assert status == 404, body
    assert body["message"] == (f"manifest for {plain.address}/nope/none:latest not found: "
                               "manifest unknown: manifest unknown") or \
        "not found" in body["message"], body
    closed = free_port()
    status, body = daemon.request("POST", f"/images/create?fromImage=127.0.0.1:{closed}/x"
                                          "&tag=latest")
    assert status == 500, body
    assert "connection refused" in body["message"], body
    status, body = daemon.request("POST", f"/images/{plain.address}/never/pushed/push?tag=v9")
    assert status == 404, body
    assert body["message"] == ("An image does not exist locally with the tag: "
                               f"{plain.address}/never/pushed:v9")
    status, body = daemon.request("POST", "/images/create?fromImage=Bad%20Name&tag=latest")
    assert status == 400, body
    status, body = daemon.request("POST", f"/images/create?fromImage={plain.address}/x&tag=v1",
                                  headers={"X-Registry-Auth": "%%%not-base64"})
    assert status == 400, body


def _oci_image(reg: Registry, repo: str, marker: str, arch: str = "amd64",
               media: str = "application/vnd.oci.image.manifest.v1+json") -> tuple[str, int]:
    """Publish a one-layer image the way OCI tools do (gzip layer, OCI media types)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        with open("/bin/busybox", "rb") as f:
            data = f.read()
        for name, content, mode in (("bin/busybox", data, 0o755),
                                    ("marker", marker.encode() + b"\n", 0o644)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = mode
            tar.addfile(info, io.BytesIO(content))
        info = tarfile.TarInfo("bin/sh")
        info.type = tarfile.SYMTYPE
        info.linkname = "busybox"
        tar.addfile(info)
    layer_tar = buf.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }).encode()
    layer_digest = reg.put_blob(repo, layer)
    config_digest = reg.put_blob(repo, config)
    oci = media.startswith("application/vnd.oci")
    doc = {"schemaVersion": 2, "mediaType": media,
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json" if oci else
                      "application/vnd.docker.container.image.v1+json",
                      "digest": config_digest, "size": len(config)},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip" if oci else
                       "application/vnd.docker.image.rootfs.diff.tar.gzip",
                       "digest": layer_digest, "size": len(layer)}]}
    raw = json.dumps(doc).encode()
    digest = reg.put_manifest(repo, "sha256:" + hashlib.sha256(raw).hexdigest(), doc, media)
    return digest, len(raw)


@pytest.mark.parametrize("kind", ["oci", "docker"])
def test_manifest_list_picks_linux_amd64(daemon, plain, kind):
    if os.uname().machine != "x86_64":
        pytest.skip("the test publishes an amd64 entry as this host's platform")
    c = daemon.client
    repo = f"multi-{kind}-{uuid.uuid4().hex[:6]}"
    manifest_type = ("application/vnd.oci.image.manifest.v1+json" if kind == "oci" else
                     "application/vnd.docker.distribution.manifest.v2+json")
    list_type = ("application/vnd.oci.image.index.v1+json" if kind == "oci" else
                 "application/vnd.docker.distribution.manifest.list.v2+json")
    arm, arm_size = _oci_image(plain, repo, "arm64 image", "arm64", manifest_type)
    amd, amd_size = _oci_image(plain, repo, "amd64 image", "amd64", manifest_type)
    index = {"schemaVersion": 2, "mediaType": list_type, "manifests": [
        {"mediaType": manifest_type, "digest": arm, "size": arm_size,
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        {"mediaType": manifest_type, "digest": amd, "size": amd_size,
         "platform": {"architecture": "amd64", "os": "linux"}},
    ]}
    index_digest = plain.put_manifest(repo, "v1", index, list_type)
    name = f"{plain.address}/{repo}"
    text = statuses(stream(c.pull(name, tag="v1", stream=True, decode=True)))
    assert f"Digest: {index_digest}" in text
    info = c.inspect_image(f"{name}:v1")
    assert info["Architecture"] == "amd64"
    assert f"{name}@{index_digest}" in info["RepoDigests"]
    assert run_echo(daemon, f"{name}:v1", "cat /marker") == b"amd64 image\n"
    # the single-platform OCI manifest by digest
    c.remove_image(f"{name}:v1")
    stream(c.pull(name, tag=amd, stream=True, decode=True))
    assert c.inspect_image(f"{name}@{amd}")["Architecture"] == "amd64"
    # distribution inspect lists both platforms
    status, doc = daemon.request("GET", f"/distribution/{name}:v1/json")
    assert status == 200, doc
    assert doc["Descriptor"] == {"mediaType": list_type, "digest": index_digest,
                                 "size": doc["Descriptor"]["size"]}
    assert {p["architecture"] for p in doc["Platforms"]} == {"amd64", "arm64"}
    c.remove_image(f"{name}@{amd}")
    # an index without this host's platform
    only_arm = {"schemaVersion": 2, "mediaType": list_type, "manifests": [index["manifests"][0]]}
    plain.put_manifest(repo, "armonly", only_arm, list_type)
    status, body = daemon.request("POST", f"/images/create?fromImage={name}&tag=armonly")
    assert status == 404 and "no matching manifest for linux/amd64" in body["message"], body


def test_corrupt_blob_is_rejected_and_leaves_nothing(daemon, plain):
    c = daemon.client
    name = f"{plain.address}/corrupt-{uuid.uuid4().hex[:6]}"
    unique_layer_image(daemon, f"{name}:v1")
    pushed = stream(c.push(name, tag="v1", stream=True, decode=True))
    digest = [s for s in statuses(pushed) if s.startswith("v1: digest:")][0].split()[2]
    status, _, raw = plain.call("GET", f"/v2/{name.split('/', 1)[1]}/manifests/{digest}",
                                headers={"Accept": "application/vnd.docker.distribution."
                                                   "manifest.v2+json"})
    layer_digest = json.loads(raw)["layers"][0]["digest"]
    c.remove_image(f"{name}:v1")
    layers_before = layer_dirs(daemon)
    images_before = {i["Id"] for i in c.images(all=True)}
    path = plain.blob_path(layer_digest)
    with open(path, "r+b") as f:   # same length, different bytes
        f.seek(os.path.getsize(path) // 2)
        chunk = f.read(16)
        f.seek(-len(chunk), 1)
        f.write(bytes(b ^ 0xFF for b in chunk))
    messages = list(c.pull(name, tag="v1", stream=True, decode=True))
    errors = [m["error"] for m in messages if "error" in m]
    assert errors and f"filesystem layer verification failed for digest {layer_digest}" \
        in errors[0], messages
    assert layer_dirs(daemon) == layers_before
    assert {i["Id"] for i in c.images(all=True)} == images_before
    assert transfer_files(daemon) == []


class CuttingProxy:
    """An HTTP proxy to the registry on 127.0.0.1 that cuts the first download of every blob
    halfway, and records the Range headers it is sent."""

    def __init__(self, upstream: str, cut: bool = True, delay: float = 0.0) -> None:
        self.upstream = upstream
        self.cutting = cut
        self.delay = delay            # seconds between 64 KiB pieces of a blob
        self.cut: set[str] = set()
        self.ranges: list[str] = []
        self.blob_gets: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._forward()

            def do_GET(self) -> None:
                self._forward()

            def _forward(self) -> None:
                import http.client
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                if self.headers.get("Range"):
                    proxy.ranges.append(self.headers["Range"])
                conn.request(self.command, self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                blob = self.command == "GET" and "/blobs/" in self.path
                if blob:
                    proxy.blob_gets.append(self.path)
                cut = (proxy.cutting and blob and resp.status == 200 and len(body) > 4096
                       and self.path not in proxy.cut)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding"):
                        self.send_header(k, v)
                self.end_headers()
                if cut:
                    proxy.cut.add(self.path)
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if self.command != "HEAD":
                    step = 65536 if blob and proxy.delay else max(len(body), 1)
                    for i in range(0, len(body), step):
                        self.wfile.write(body[i:i + step])
                        if blob and proxy.delay:
                            self.wfile.flush()
                            time.sleep(proxy.delay)
                conn.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_resumable_download_through_a_cut_connection(daemon, plain):
    c = daemon.client
    repo = f"resume-{uuid.uuid4().hex[:6]}"
    image_id = only_in_registry(daemon, plain.address, repo, size=2 << 20)
    proxy = CuttingProxy(plain.address)
    try:
        name = f"{proxy.address}/{repo}"
        messages = stream(c.pull(name, tag="v1", stream=True, decode=True))
        assert any(s.startswith("Retrying in") for s in statuses(messages)), messages
        assert proxy.cut, "the proxy never cut a download"
        assert any(r.startswith("bytes=") and not r.startswith("bytes=0-")
                   for r in proxy.ranges), proxy.ranges
        assert c.inspect_image(f"{name}:v1")["Id"] == image_id
        assert run_echo(daemon, f"{name}:v1", "cat /name") == f"{plain.address}/{repo}:v1\n" \
            .encode()
        c.remove_image(f"{name}:v1")
    finally:
        proxy.close()


def test_concurrent_pulls_of_one_image(daemon, plain):
    """Four pulls at once: one download of the layer (through a proxy that serves blobs
    slowly, so they overlap), each pull seeing its progress, one image."""
    c = daemon.client
    repo = f"concurrent-{uuid.uuid4().hex[:6]}"
    image_id = only_in_registry(daemon, plain.address, repo, size=1 << 20)
    proxy = CuttingProxy(plain.address, cut=False, delay=0.05)
    name = f"{proxy.address}/{repo}"
    results: list[Any] = []

    def one() -> None:
        import docker
        client = docker.APIClient(base_url=f"unix://{daemon.socket}", version="auto",
                                  timeout=120)
        try:
            results.append(list(client.pull(name, tag="v1", stream=True, decode=True)))
        except Exception as e:   # collected and asserted below
            results.append(e)
        finally:
            client.close()
    try:
        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        proxy.close()
    assert len(results) == 4
    for r in results:
        assert not isinstance(r, Exception), r
        assert not [m for m in r if "error" in m], r
        assert "Download complete" in statuses(r), r
    layer_gets = [p for p in proxy.blob_gets if p.endswith(tuple(
        l.removeprefix("sha256:") for l in [proxy_layer_digest(plain, repo)]))]
    assert len(layer_gets) == 1, proxy.blob_gets
    assert c.inspect_image(f"{name}:v1")["Id"] == image_id
    assert transfer_files(daemon) == []
    assert run_echo(daemon, f"{name}:v1", "echo ok") == b"ok\n"
    c.remove_image(f"{name}:v1")
    assert not [d for d in os.listdir(os.path.join(daemon.root, "layers"))
                if d.startswith(("tmp-", "rm-"))]


def proxy_layer_digest(reg: Registry, repo: str) -> str:
    status, _, raw = reg.call("GET", f"/v2/{repo}/manifests/v1", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert status == 200, raw
    return json.loads(raw)["layers"][0]["digest"]


# -- basic auth --------------------------------------------------------------------------------


def test_basic_auth_login_pull_push(daemon, secured):
    c = daemon.client
    auth = {"username": USER, "password": PASSWORD}
    name = f"{secured.address}/private/busybox"
    c.tag("busybox", name, "v1")
    denied = list(c.push(name, tag="v1", stream=True, decode=True))
    assert any("no basic auth credentials" in m.get("error", "") for m in denied), denied
    status, body = daemon.request("POST", "/auth", {"username": USER, "password": "wrong",
                                                    "serveraddress": secured.address})
    assert status == 401, body
    assert body["message"] == (f"login attempt to http://{secured.address}/v2/ failed with "
                               "status: 401 Unauthorized")
    answer = c.login(USER, PASSWORD, registry=secured.address, reauth=True)
    assert answer == {"Status": "Login Succeeded", "IdentityToken": ""}
    pushed = stream(c.push(name, tag="v1", stream=True, decode=True, auth_config=auth))
    assert any(s.startswith("v1: digest:") for s in statuses(pushed))
    c.remove_image(f"{name}:v1")
    # refused pulls are 500s, as dockerd answers (a 401 would make the docker CLI prompt)
    status, body = daemon.request("POST", f"/images/create?fromImage={name}&tag=v1")
    assert status == 500 and "no basic auth credentials" in body["message"], body
    bad = base64.urlsafe_b64encode(json.dumps({"username": USER, "password": "no"}).encode())
    status, body = daemon.request("POST", f"/images/create?fromImage={name}&tag=v1",
                                  headers={"X-Registry-Auth": bad.decode()})
    assert status == 500 and "unauthorized" in body["message"], body
    # busybox still holds the image: its layer is there already
    text = statuses(stream(c.pull(name, tag="v1", stream=True, decode=True, auth_config=auth)))
    assert "Already exists" in text and "Pull complete" not in text, text
    assert run_echo(daemon, f"{name}:v1", "echo authed") == b"authed\n"
    # a layer known in another repository of the registry is mounted, not uploaded again
    other = f"{secured.address}/elsewhere/busybox"
    c.tag(f"{name}:v1", other, "v1")
    text = statuses(stream(c.push(other, tag="v1", stream=True, decode=True, auth_config=auth)))
    assert "Mounted from private/busybox" in text, text
    assert "Pushed" not in text
    c.remove_image(f"{name}:v1")
    c.remove_image(f"{other}:v1")


def test_docker_cli_login_push_pull_run(daemon, secured, work):
    if not os.path.exists(DOCKER):
        pytest.skip("the docker CLI is not installed")
    config = os.path.join(work, "docker-config")
    os.makedirs(config, exist_ok=True)
    env = {**daemon.env, "DOCKER_CONFIG": config}

    def docker(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([DOCKER, *args], env=env, input=input, capture_output=True,
                              timeout=120, stdin=None if input is not None else
                              subprocess.DEVNULL)
    out = docker("login", "-u", USER, "--password-stdin", secured.address,
                 input=b"wrong\n")
    assert out.returncode != 0 and b"401 Unauthorized" in out.stderr, out
    out = docker("login", "-u", USER, "--password-stdin", secured.address,
                 input=PASSWORD.encode() + b"\n")
    assert out.returncode == 0 and b"Login Succeeded" in out.stdout, out
    name = f"{secured.address}/cli/busybox:v2"
    assert docker("tag", "busybox", name).returncode == 0
    out = docker("push", name)
    assert out.returncode == 0, out
    assert b"The push refers to repository" in out.stdout and b"v2: digest: sha256:" in \
        out.stdout, out
    assert docker("rmi", name).returncode == 0
    out = docker("pull", name)
    assert out.returncode == 0, out
    assert b"Pull complete" in out.stdout or b"Already exists" in out.stdout, out
    assert b"Status: Downloaded newer image for " + name.encode() in out.stdout, out
    out = docker("run", "--rm", name, "echo", "from-cli")
    assert out.returncode == 0 and out.stdout == b"from-cli\n", out
    # docker run pulls what is missing (create answers 404, the CLI pulls, then creates)
    assert docker("rmi", name).returncode == 0
    out = docker("run", "--rm", name, "echo", "pulled-by-run")
    assert out.returncode == 0 and out.stdout == b"pulled-by-run\n", out
    assert b"Unable to find image" in out.stderr, out
    assert docker("logout", secured.address).returncode == 0
    out = docker("pull", f"{secured.address}/cli/busybox:nope")
    assert out.returncode != 0, out
    assert docker("rmi", name).returncode == 0


def test_silo_login_push_pull_logout(daemon, secured, work):
    config = os.path.join(work, "silo-config")
    env_extra = {"SILOBOX_CONFIG": config}
    old = {k: os.environ.get(k) for k in env_extra}
    daemon.env.update(env_extra)
    try:
        out = daemon.silo("login", "-u", USER, "--password-stdin", secured.address,
                          input=b"bad\n")
        assert out.returncode != 0 and b"401 Unauthorized" in out.stderr, out
        out = daemon.silo("login", "-u", USER, "--password-stdin", secured.address,
                          input=PASSWORD.encode() + b"\n")
        assert out.returncode == 0 and out.stdout == b"Login Succeeded\n", out
        path = os.path.join(config, "config.json")
        assert os.stat(path).st_mode & 0o777 == 0o600
        with open(path) as f:
            saved = json.load(f)
        assert base64.b64decode(saved["auths"][secured.address]["auth"]) == \
            f"{USER}:{PASSWORD}".encode()
        name = f"{secured.address}/silo/busybox"
        assert daemon.silo("tag", "busybox", f"{name}:v3").returncode == 0
        out = daemon.silo("push", f"{name}:v3")
        assert out.returncode == 0, out
        assert f"The push refers to repository [{name}]".encode() in out.stdout
        assert b"v3: digest: sha256:" in out.stdout
        assert daemon.silo("rmi", f"{name}:v3").returncode == 0
        out = daemon.silo("pull", f"{name}:v3")
        assert out.returncode == 0, out
        assert b"v3: Pulling from silo/busybox" in out.stdout, out
        assert out.stdout.endswith(f"{name}:v3\n".encode()), out
        out = daemon.silo("logout", secured.address)
        assert out.stdout == f"Removing login credentials for {secured.address}\n".encode()
        out = daemon.silo("pull", f"{name}:v3")
        assert out.returncode != 0 and b"no basic auth credentials" in out.stderr, out
        assert daemon.silo("rmi", f"{name}:v3").returncode == 0
    finally:
        for k, v in old.items():
            daemon.env.pop(k, None)


# -- Bearer token auth ---------------------------------------------------------------------------


class TokenServer:
    """Docker's token auth on 127.0.0.1: RS256 JWTs signed (with openssl) by a key whose
    certificate the registry trusts. Anonymous clients may pull ``public/*``; USER/PASSWORD get
    what they ask for; other credentials are refused."""

    service = "silobox-test-registry"
    issuer = "silobox-test-issuer"

    def __init__(self, base: str) -> None:
        self.base = base
        os.makedirs(base, exist_ok=True)
        self.key = os.path.join(base, "signer.key")
        self.cert = os.path.join(base, "signer.crt")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-keyout", self.key, "-out", self.cert, "-subj", "/CN=token signer"],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", self.cert, "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlparse
                query = parse_qs(urlparse(self.path).query)
                user = ""
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if (user, password) != (USER, PASSWORD):
                        self.send_response(401)
                        self.end_headers()
                        return
                server.requests.append({"user": user, "scope": query.get("scope", [])})
                access = []
                for scope in query.get("scope", []):
                    kind, name, actions = scope.split(":")
                    wanted = actions.split(",")
                    allowed = wanted if user else \
                        (["pull"] if name.startswith("public/") and "pull" in wanted else [])
                    access.append({"type": kind, "name": name, "actions": allowed})
                body = json.dumps({"token": server.sign(user, access)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def sign(self, user: str, access: list[dict[str, Any]]) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": self.issuer, "sub": user, "aud": self.service, "exp": now + 600,
                  "nbf": now - 60, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key],
                             input=signing_input.encode(), check=True,
                             capture_output=True).stdout
        return f"{signing_input}.{b64(sig)}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def token_registry(work: str):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    tokens = TokenServer(os.path.join(work, "token"))
    reg = _registry(work, "token", token={"realm": tokens.realm, "service": tokens.service,
                                          "issuer": tokens.issuer,
                                          "rootcertbundle": tokens.cert})
    yield reg, tokens
    reg.stop()
    tokens.close()


def test_bearer_token_auth(daemon, token_registry):
    reg, tokens = token_registry
    c = daemon.client
    auth = {"username": USER, "password": PASSWORD}
    status, body = daemon.request("POST", "/auth", {"username": USER, "password": "wrong",
                                                    "serveraddress": reg.address})
    assert status == 401, body
    assert "incorrect username or password" in body["message"], body
    status, body = daemon.request("POST", "/auth", {"username": USER, "password": PASSWORD,
                                                    "serveraddress": reg.address})
    assert status == 200 and body["Status"] == "Login Succeeded", body
    public = f"{reg.address}/public/busybox"
    private = f"{reg.address}/team/busybox"
    for name in (public, private):
        c.tag("busybox", name, "v1")
        stream(c.push(name, tag="v1", stream=True, decode=True, auth_config=auth))
        c.remove_image(f"{name}:v1")
    assert {"user": USER, "scope": ["repository:team/busybox:pull,push"]} in tokens.requests
    # anonymous: a token for the public repository, none for the private one
    stream(c.pull(public, tag="v1", stream=True, decode=True))
    assert {"user": "", "scope": ["repository:public/busybox:pull"]} in tokens.requests
    status, body = daemon.request("POST", f"/images/create?fromImage={private}&tag=v1")
    assert status == 500 and "unauthorized" in body["message"], body
    stream(c.pull(private, tag="v1", stream=True, decode=True, auth_config=auth))
    assert run_echo(daemon, f"{private}:v1", "echo bearer") == b"bearer\n"
    # a cross-repository mount asks for a token with both repositories in its scope
    other = f"{reg.address}/team/copy"
    c.tag(f"{private}:v1", other, "v1")
    text = statuses(stream(c.push(other, tag="v1", stream=True, decode=True, auth_config=auth)))
    assert any(s.startswith("Mounted from ") for s in text), text
    assert {"user": USER, "scope": ["repository:team/copy:pull,push",
                                    "repository:team/busybox:pull"]} in tokens.requests \
        or {"user": USER, "scope": ["repository:team/copy:pull,push",
                                    "repository:public/busybox:pull"]} in tokens.requests
    c.remove_image(f"{other}:v1")
    # docker-py's high-level API: images.pull and get_registry_data
    import docker
    client = docker.DockerClient(base_url=f"unix://{daemon.socket}", version="auto")
    try:
        data = client.images.get_registry_data(f"{private}:v1", auth_config=auth)
        assert data.id.startswith("sha256:")
        assert data.has_platform("linux/amd64") or os.uname().machine != "x86_64"
        assert client.images.pull(private, tag="v1", auth_config=auth).id == \
            c.inspect_image(f"{private}:v1")["Id"]
    finally:
        client.close()
    c.remove_image(f"{private}:v1")
    c.remove_image(f"{public}:v1")


# -- TLS ---------------------------------------------------------------------------------------


def test_tls_registry_trusted_through_certs_dir(daemon, tls, certs, certs_dir):
    c = daemon.client
    name = f"{tls.address}/secure/busybox"
    host_dir = os.path.join(certs_dir, tls.address)
    os.makedirs(host_dir)
    try:
        # a CA that did not sign the registry's certificate: refused, no fallback to http
        shutil.copy(certs["other-ca.crt"], os.path.join(host_dir, "ca.crt"))
        c.tag("busybox", name, "v1")
        status, body = daemon.request("POST", f"/images/{name}/push?tag=v1")
        assert status == 200
        text = body.decode() if isinstance(body, bytes) else json.dumps(body)
        assert "certificate" in text, text
        # the right CA
        shutil.copy(certs["ca.crt"], os.path.join(host_dir, "ca.crt"))
        text = statuses(stream(c.push(name, tag="v1", stream=True, decode=True)))
        digest = [s for s in text if s.startswith("v1: digest:")][0].split()[2]
        c.remove_image(f"{name}:v1")
        text = statuses(stream(c.pull(name, tag="v1", stream=True, decode=True)))
        assert f"Digest: {digest}" in text
        assert run_echo(daemon, f"{name}:v1", "echo tls") == b"tls\n"
        status, _, _ = tls.call("GET", "/v2/")   # the registry itself speaks only TLS
        assert status == 200
        c.remove_image(f"{name}:v1")
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)
    # without a CA for it, a loopback registry is insecure (as in Docker): TLS unverified
    stream(c.pull(name, tag="v1", stream=True, decode=True))
    c.remove_image(f"{name}:v1")


def test_pulling_the_builtin_busybox_never_contacts_docker_hub(daemon):
    text = statuses(stream(daemon.client.pull("busybox", tag="latest", stream=True,
                                              decode=True)))
    assert text[-1] == "Status: Image is up to date for busybox:latest", text
    assert "Docker Hub is not contacted" in text[0]


def test_layers_download_three_at_a_time_and_apply_in_order(daemon, plain):
    """Six layers: three download at once, the rest wait; each layer overwrites /order, so the
    file shows the last layer only if they were applied in the manifest's order."""
    repo = f"layers-{uuid.uuid4().hex[:6]}"
    layers, diff_ids = [], []
    for i in range(6):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            files = {"order": f"layer {i}\n".encode(), f"file{i}": os.urandom(300_000)}
            if i == 0:
                with open("/bin/busybox", "rb") as f:
                    files["bin/busybox"] = f.read()
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.mode = 0o755
                tar.addfile(info, io.BytesIO(content))
            if i == 0:
                info = tarfile.TarInfo("bin/sh")
                info.type = tarfile.SYMTYPE
                info.linkname = "busybox"
                tar.addfile(info)
        raw = buf.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        blob = gzip.compress(raw, mtime=0)
        layers.append({"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                       "digest": plain.put_blob(repo, blob), "size": len(blob)})
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": plain.put_blob(repo, config), "size": len(config)},
                "layers": layers}
    plain.put_manifest(repo, "v1", manifest, manifest["mediaType"])
    name = f"{plain.address}/{repo}"
    messages = stream(daemon.client.pull(name, tag="v1", stream=True, decode=True))
    waiting = {m["id"] for m in messages if m.get("status") == "Waiting"}
    assert len(waiting) == 3, messages
    complete = [m["id"] for m in messages if m.get("status") == "Pull complete"]
    assert complete == [l["digest"][7:19] for l in layers]
    info = daemon.client.inspect_image(f"{name}:v1")
    assert info["RootFS"]["Layers"] == diff_ids
    assert run_echo(daemon, f"{name}:v1", "cat /order; ls /file* | wc -l") == b"layer 5\n6\n"
    # saved, the pulled layers are byte for byte the registry's tars (tar-split on import)
    archive = b"".join(daemon.client.get_image(f"{name}:v1"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        entry = json.load(tar.extractfile("manifest.json"))[0]
        saved = ["sha256:" + hashlib.sha256(tar.extractfile(l).read()).hexdigest()
                 for l in entry["Layers"]]
    assert saved == diff_ids
    daemon.client.remove_image(f"{name}:v1")


def test_info_reports_the_registry_settings(daemon):
    info = daemon.client.info()
    assert info["IndexServerAddress"] == "https://index.docker.io/v1/"
    config = info["RegistryConfig"]
    assert {"127.0.0.0/8", "10.99.0.0/16"} <= set(config["InsecureRegistryCIDRs"])
    assert config["IndexConfigs"]["registry.test:5000"]["Secure"] is False
    assert config["IndexConfigs"]["docker.io"]["Official"] is True
    if os.path.exists(DOCKER):
        out = subprocess.run([DOCKER, "info"], env=daemon.env, capture_output=True, timeout=60)
        assert out.returncode == 0, out
        assert b"Insecure Registries:" in out.stdout and b"10.99.0.0/16" in out.stdout, out


def test_test_daemons_never_reach_registries_off_this_machine(daemon):
    """Every test silod runs with --registry-loopback-only: Docker Hub names resolve to
    registry-1.docker.io, which is refused before any connection is made."""
    for name in ("alpine", "quay.io/some/image", "docker.io/library/busybox:1.36"):
        status, body = daemon.request("POST", f"/images/create?fromImage={name}&tag=latest"
                                      if ":" not in name.rsplit("/", 1)[-1]
                                      else f"/images/create?fromImage={name}")
        assert status == 503, body
        assert "is not on this machine" in body["message"], body
    assert "registry-1.docker.io" in daemon.request(
        "POST", "/images/create?fromImage=alpine&tag=3")[1]["message"]
    status, body = daemon.request("POST", "/auth", {"username": "u", "password": "p"})
    assert status == 503 and "registry-1.docker.io" in body["message"], body


def test_silo_run_pulls_a_missing_image(daemon, plain):
    name = f"{plain.address}/silo-run-{uuid.uuid4().hex[:6]}:v1"
    unique_layer_image(daemon, name)
    stream(daemon.client.push(name.rsplit(":", 1)[0], tag="v1", stream=True, decode=True))
    daemon.client.remove_image(name)
    out = daemon.silo("run", "--rm", name, "cat", "/name")
    assert out.returncode == 0, out
    assert out.stdout == name.encode() + b"\n", out
    assert f"Unable to find image '{name}' locally".encode() in out.stderr, out
    assert b"Pull complete" in out.stderr, out
    out = daemon.silo("run", "--rm", "--pull", "never", f"{name}-missing", "true")
    assert out.returncode == 125 and b"Unable to find image" in out.stderr, out
    out = daemon.silo("run", "--rm", "--pull", "always", name, "cat", "/name")
    assert out.returncode == 0 and b"Image is up to date" in out.stderr, out
    out = daemon.silo("run", "--rm", f"{plain.address}/absent/image:v1", "true")
    assert out.returncode == 125 and b"manifest unknown" in out.stderr, out
    daemon.client.remove_image(name)


def test_silod_killed_mid_pull_leaves_nothing_after_restart(daemon, plain):
    c = daemon.client
    repo = f"killed-{uuid.uuid4().hex[:6]}"
    only_in_registry(daemon, plain.address, repo, size=1 << 20)
    layers_before = layer_dirs(daemon)
    proxy = CuttingProxy(plain.address, cut=False, delay=0.05)
    try:
        name = f"{proxy.address}/{repo}"
        seen: list[dict] = []
        for msg in c.pull(name, tag="v1", stream=True, decode=True):
            seen.append(msg)
            if msg.get("status") == "Downloading":
                daemon.kill9()
                break
        assert any(m.get("status") == "Downloading" for m in seen), seen
    finally:
        proxy.close()
        if daemon.proc is None or daemon.proc.poll() is not None:
            daemon.start()
    assert transfer_files(daemon) == []
    assert layer_dirs(daemon) == layers_before
    assert not [i for i in c.images() if any(repo in t for t in i["RepoTags"] or [])]
