"""Streamed bodies that do not fit: load, import, build and cp against a state directory on a
48 MiB tmpfs. Each stops with a client-visible error (a 4xx, or the error message of a
progress stream whose 200 went out before the disk filled), silod stays up, and what the
request wrote is gone again."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from silobox.kernel import libc
from tarutil import tar_of

SIZE = 48 << 20
BIG = 64 << 20


@pytest.fixture(scope="module")
def small(tmp_path_factory, run_id, silod_factory):
    """A silod whose --root is a tmpfs of 48 MiB (directory sandboxes: no sandbox disks)."""
    base = str(tmp_path_factory.mktemp("full"))
    root = f"/tmp/sbxfull-{run_id}"
    os.makedirs(root, exist_ok=True)
    libc.mount("tmpfs", root, "tmpfs", 0, f"size={SIZE}")
    try:
        with silod_factory(os.path.join(base, "d"), f"{run_id}f",
                           ["--root", root, "--storage-opt", "sandbox=dir"]) as d:
            d.small_root = root
            yield d
    finally:
        libc.umount2(root, libc.MNT_DETACH)
        shutil.rmtree(root, ignore_errors=True)


def _used(path: str) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.fixture(scope="module")
def big_layer() -> bytes:
    return tar_of({"big": os.urandom(BIG)})


def _stream_error(answer) -> str:
    """The ``error`` of a JSON progress stream (load, import)."""
    text = answer.decode() if isinstance(answer, bytes) else json.dumps(answer)
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and '"error"' in line:
            return json.loads(line)["error"]
    return ""


def _nothing_left(d, before: int) -> None:
    assert d.proc.poll() is None, d.log()
    # the store's WAL and the build cache may grow a little: nothing near the body's size
    assert _used(d.small_root) - before < 2 << 20, (before, _used(d.small_root))
    status, images = d.request("GET", "/images/json?all=1")
    assert status == 200
    assert not [i for i in images if any(t.startswith(("big:", "imp:", "bb:"))
                                         for t in i.get("RepoTags") or [])]


def test_load_that_fills_the_disk(small, big_layer):
    before = _used(small.small_root)
    diff_id = "sha256:" + hashlib.sha256(big_layer).hexdigest()
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff_id]},
                         "architecture": "amd64", "os": "linux"}).encode()
    manifest = [{"Config": "c.json", "RepoTags": ["big:1"], "Layers": ["layer.tar"]}]
    data = tar_of({"layer.tar": big_layer, "c.json": config,
                 "manifest.json": json.dumps(manifest).encode()})
    status, answer = small.request("POST", "/images/load", raw=data,
                                   headers={"Content-Type": "application/x-tar"})
    assert (status == 200 and "No space left on device" in _stream_error(answer)) \
        or status == 413, (status, str(answer)[-300:])
    _nothing_left(small, before)


def test_import_that_fills_the_disk(small, big_layer):
    before = _used(small.small_root)
    status, answer = small.request("POST", "/images/create?fromSrc=-&repo=imp&tag=1",
                                   raw=big_layer, headers={"Content-Type": "application/x-tar"})
    assert (status == 200 and "No space left on device" in _stream_error(answer)) \
        or status == 413, (status, str(answer)[-300:])
    _nothing_left(small, before)


def test_build_context_that_fills_the_disk(small):
    before = _used(small.small_root)
    context = tar_of({"Dockerfile": b"FROM busybox\nCOPY big /big\n", "big": os.urandom(BIG)})
    status, answer = small.request("POST", "/build?t=bb:1", raw=context,
                                   headers={"Content-Type": "application/x-tar"})
    assert 400 <= status < 500 and "No space left on device" in answer["message"], \
        (status, answer)
    _nothing_left(small, before)


def test_cp_that_fills_the_disk_is_a_client_error(small, big_layer):
    status, made = small.request("POST", "/containers/create", {"Image": "busybox"})
    assert status == 201, made
    cid = made["Id"]
    try:
        status, answer = small.request("PUT", f"/containers/{cid}/archive?path=/tmp",
                                       raw=big_layer,
                                       headers={"Content-Type": "application/x-tar"})
        assert status == 413 and "No space left on device" in answer["message"], \
            (status, answer)
        assert small.proc.poll() is None
    finally:
        # What the extraction wrote before the disk filled stays in the container, as with
        # Docker; take it out so that the store has room to record the removal.
        partial = os.path.join(small.small_root, "containers", cid, "sandbox", "upper", "tmp",
                               "big")
        if os.path.exists(partial):
            os.unlink(partial)
        assert small.request("DELETE", f"/containers/{cid}?force=1")[0] == 204
