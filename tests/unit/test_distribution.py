"""The distribution client's pure parts: endpoints, credentials, challenges, manifests, and the
CLI's credential keys. Nothing here opens a connection."""

from __future__ import annotations

import base64
import json
import os

import pytest

from silobox.cli.commands import registry as cli
from silobox.errors import InvalidArgument, NotFound
from silobox.storage import reference
from silobox.storage.distribution import manifest as mf
from silobox.storage.distribution.registry import (AuthConfig, RegistryOptions,
                                                   _parse_challenge, registry_domain)


def test_docker_hub_names_resolve_to_registry_1_over_tls(tmp_path):
    opts = RegistryOptions(certs_dir=str(tmp_path))
    for name in ("busybox", "library/busybox:1.36", "docker.io/library/busybox",
                 "index.docker.io/foo/bar"):
        ref = reference.parse(name)
        ep = opts.endpoint(ref.domain)
        assert ep.domain == "docker.io"
        assert ep.host == "registry-1.docker.io"
        assert not ep.insecure and ep.schemes == ("https",)


def test_loopback_and_listed_registries_are_insecure(tmp_path):
    opts = RegistryOptions(insecure=("10.1.0.0/16", "registry.test:5000", "plain.test"),
                           certs_dir=str(tmp_path))
    assert opts.endpoint("127.0.0.1:5000").insecure
    assert opts.endpoint("127.3.4.5").insecure
    assert opts.endpoint("localhost:5000").insecure
    assert opts.endpoint("[::1]:5000").insecure
    assert opts.endpoint("10.1.2.3:443").insecure
    assert opts.endpoint("registry.test:5000").insecure
    assert opts.endpoint("plain.test:8080").insecure
    assert not opts.endpoint("registry.test:5001").insecure
    assert not opts.endpoint("10.2.0.1").insecure
    assert not opts.endpoint("quay.io").insecure
    assert opts.endpoint("127.0.0.1:5000").schemes == ("https", "http")


def test_loopback_only_refuses_other_hosts_before_connecting(tmp_path):
    from silobox.errors import Unavailable
    opts = RegistryOptions(certs_dir=str(tmp_path), loopback_only=True)
    for domain in ("127.0.0.1:5000", "localhost", "[::1]:443", "127.9.9.9"):
        assert opts.endpoint(domain).insecure
    for domain in ("docker.io", "quay.io", "10.0.0.1:5000", "localhost.example"):
        with pytest.raises(Unavailable, match="not on this machine"):
            opts.endpoint(domain)


def test_certs_dir_ca_is_loaded_and_bad_files_refused(tmp_path):
    opts = RegistryOptions(certs_dir=str(tmp_path))
    assert not opts.endpoint("reg.test:5000").has_ca
    folder = tmp_path / "reg.test:5000"
    folder.mkdir()
    (folder / "ca.crt").write_text("not a certificate")
    with pytest.raises(InvalidArgument, match="invalid certificate"):
        opts.endpoint("reg.test:5000")
    (folder / "ca.crt").unlink()
    (folder / "client.cert").write_text("x")
    with pytest.raises(InvalidArgument, match="missing key client.key"):
        opts.endpoint("reg.test:5000")


def test_x_registry_auth_decoding():
    doc = {"username": "u", "password": "p:w", "serveraddress": "127.0.0.1:5000"}
    raw = json.dumps(doc).encode()
    padded = base64.urlsafe_b64encode(raw).decode()
    for header in (padded, padded.rstrip("="), base64.b64encode(raw).decode()):
        auth = AuthConfig.from_header(header)
        assert (auth.username, auth.password, auth.server) == ("u", "p:w", "127.0.0.1:5000")
    assert AuthConfig.from_header(None).empty
    assert AuthConfig.from_header(base64.urlsafe_b64encode(b"{}").decode()).empty
    with pytest.raises(InvalidArgument):
        AuthConfig.from_header("%%%")
    with pytest.raises(InvalidArgument):
        AuthConfig.from_header(base64.b64encode(b'{"username": 3}').decode())


def test_challenge_parsing():
    c = _parse_challenge('Bearer realm="https://auth.example/token",service="registry.example",'
                         'scope="repository:library/busybox:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "registry.example",
                        "scope": "repository:library/busybox:pull,push"}
    assert _parse_challenge('Basic realm="basic-realm"').scheme == "basic"


def test_login_server_names():
    assert registry_domain("") == "docker.io"
    assert registry_domain("https://index.docker.io/v1/") == "docker.io"
    assert registry_domain("https://127.0.0.1:5000/v2/") == "127.0.0.1:5000"
    assert registry_domain("localhost:5000") == "localhost:5000"
    assert cli.server_key("docker.io") == cli.INDEX_SERVER
    assert cli.server_key("http://127.0.0.1:5000/") == "127.0.0.1:5000"
    assert cli.registry_of("busybox") == cli.INDEX_SERVER
    assert cli.registry_of("user/app") == cli.INDEX_SERVER
    assert cli.registry_of("localhost/app") == "localhost"
    assert cli.registry_of("127.0.0.1:5000/a/b") == "127.0.0.1:5000"


def test_cli_credentials_file_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("SILOBOX_CONFIG", str(tmp_path / "cfg"))
    cli._save_config({"auths": {"127.0.0.1:5000": {
        "auth": base64.b64encode(b"me:secret").decode()}}})
    assert os.stat(cli.config_path()).st_mode & 0o777 == 0o600
    header = cli.auth_header("127.0.0.1:5000")["X-Registry-Auth"]
    auth = AuthConfig.from_header(header)
    assert (auth.username, auth.password) == ("me", "secret")
    assert AuthConfig.from_header(cli.auth_header("other:1")["X-Registry-Auth"]).empty


def test_manifest_parsing_and_platform_choice():
    digest = "sha256:" + "a" * 64
    index = {"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": [
        {"mediaType": mf.OCI_MANIFEST, "digest": "sha256:" + "b" * 64, "size": 10,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": mf.OCI_MANIFEST, "digest": digest, "size": 12,
         "platform": {"os": "linux", "architecture": "amd64"}}]}
    media, doc = mf.parse(json.dumps(index).encode(), "")
    assert media == mf.OCI_INDEX
    assert mf.pick_platform(doc, "linux", "amd64", "x").digest == digest
    with pytest.raises(NotFound, match="no matching manifest for linux/s390x"):
        mf.pick_platform(doc, "linux", "s390x", "x")
    with pytest.raises(InvalidArgument, match="schema 1"):
        mf.parse(b'{"schemaVersion": 1, "fsLayers": []}', "")
    bad_layer = {"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
                 "config": {"mediaType": mf.OCI_CONFIG, "digest": digest, "size": 2},
                 "layers": [{"mediaType": mf.OCI_LAYER_ZSTD, "digest": digest, "size": 1}]}
    with pytest.raises(InvalidArgument, match="zstd"):
        mf.image_manifest(*mf.parse(json.dumps(bad_layer).encode(), ""))
    bad_layer["layers"] = [{"mediaType": mf.OCI_LAYER_GZIP, "digest": "md5:abc", "size": 1}]
    with pytest.raises(InvalidArgument, match="digest"):
        mf.image_manifest(*mf.parse(json.dumps(bad_layer).encode(), ""))


def test_pushed_manifest_is_stable():
    config = mf.Descriptor(mf.DOCKER_CONFIG, "sha256:" + "c" * 64, 100)
    layer = mf.Descriptor(mf.DOCKER_LAYER_GZIP, "sha256:" + "d" * 64, 200)
    raw = mf.docker_manifest(config, [layer])
    assert raw == mf.docker_manifest(config, [layer])
    doc = json.loads(raw)
    assert doc["mediaType"] == mf.DOCKER_MANIFEST and doc["schemaVersion"] == 2
    assert doc["layers"] == [{"mediaType": mf.DOCKER_LAYER_GZIP, "size": 200,
                              "digest": "sha256:" + "d" * 64}]


def test_content_range_start():
    from silobox.storage.distribution.pull import _range_starts_at
    assert _range_starts_at("bytes 100-199/200", 100)
    assert not _range_starts_at("bytes 0-199/200", 100)
    assert not _range_starts_at("", 100)
    assert not _range_starts_at("items 100-199/200", 100)
