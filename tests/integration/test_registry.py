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
                 htpasswd: str | None = None) -> None:
        self.base = base
        self.storage = os.path.join(base, "storage")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.tls = tls
        self.htpasswd = htpasswd
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
                       ["--registry-certs-dir", certs_dir]) as d:
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
