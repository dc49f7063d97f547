"""``load`` holds an archive's documents in memory: their number and size are bounded, and
documents of the wrong shape are refused as invalid archives (a 400), never a crash (a 500).
Whatever the refusal, the stores are left as they were."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import pytest

from silobox.errors import InvalidArgument
from silobox.storage import archive
from tarutil import tar_of

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (layer stores keep owners)"),
]


def _refused(store, data: bytes, match: str) -> None:
    layers, images = store
    with pytest.raises(InvalidArgument, match=match):
        archive.load(io.BytesIO(data), layers, images)
    assert layers.list() == [] and images.list() == [] and os.listdir(layers.dir) == []


def test_too_many_members(store, monkeypatch):
    monkeypatch.setattr(archive, "HELD_MEMBERS", 50)
    members = {f"f{i}": b"x" for i in range(60)}
    members["manifest.json"] = b"[]"
    _refused(store, tar_of(members), "more than 50 members")


def test_too_many_links_count_too(store, monkeypatch):
    monkeypatch.setattr(archive, "HELD_MEMBERS", 50)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(60):
            info = tarfile.TarInfo(f"l{i}")
            info.type, info.linkname = tarfile.SYMTYPE, "manifest.json"
            tar.addfile(info)
    _refused(store, out.getvalue(), "more than 50 members")


def test_too_many_document_bytes(store, monkeypatch):
    monkeypatch.setattr(archive, "HELD_BYTES", 1 << 20)
    doc = json.dumps({"pad": "p" * 400_000}).encode()
    _refused(store, tar_of({f"{i}.json": doc for i in range(4)}), "documents exceed 1 MiB")


def _layer() -> tuple[bytes, str]:
    layer = tar_of({"hello": b"world"})
    return layer, "sha256:" + hashlib.sha256(layer).hexdigest()


@pytest.mark.parametrize("manifest", [
    [5], [{"Config": 5}], [{"Config": "c.json", "Layers": "layer.tar"}],
    [{"Config": "c.json", "Layers": [5]}], [{"Config": "c.json", "RepoTags": "x:1"}],
    [{"Config": "c.json", "RepoTags": [{"a": 1}]}], {"Config": "c.json"}])
def test_misshapen_docker_manifests(store, manifest):
    layer, diff_id = _layer()
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    _refused(store, tar_of({"layer.tar": layer, "c.json": config,
                          "manifest.json": json.dumps(manifest).encode()}), "invalid archive")


@pytest.mark.parametrize("config", [b"[]", b'{"rootfs": "x"}', b'{"rootfs": {"diff_ids": 5}}',
                                    b'{"rootfs": {"diff_ids": [5]}}',
                                    b"[" * 5000 + b"]" * 5000])
def test_misshapen_image_configs(store, config):
    layer, _ = _layer()
    manifest = [{"Config": "c.json", "Layers": ["layer.tar"]}]
    _refused(store, tar_of({"layer.tar": layer, "c.json": config,
                          "manifest.json": json.dumps(manifest).encode()}), "invalid")


def _blob(doc: dict) -> tuple[str, bytes]:
    raw = json.dumps(doc).encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest(), raw


@pytest.mark.parametrize("index", [[], {"manifests": "x"}, {"manifests": [5]},
                                   {"manifests": [{"digest": 5}]},
                                   {"manifests": [{"digest": "sha256:00", "annotations": 5}]}])
def test_misshapen_oci_indexes(store, index):
    _refused(store, tar_of({"index.json": json.dumps(index).encode()}), "invalid archive")


def test_oci_indexes_nested_too_deep(store):
    files: dict[str, bytes] = {}
    digest, raw = _blob({"mediaType": archive.MEDIA_OCI_MANIFEST, "config": {}, "layers": []})
    files[f"blobs/sha256/{digest[7:]}"] = raw
    for _ in range(archive.MAX_INDEX_DEPTH + 2):
        digest, raw = _blob({"mediaType": archive.MEDIA_OCI_INDEX,
                             "manifests": [{"digest": digest}]})
        files[f"blobs/sha256/{digest[7:]}"] = raw
    files["index.json"] = json.dumps({"manifests": [{"digest": digest}]}).encode()
    _refused(store, tar_of(files), "nest more than")
