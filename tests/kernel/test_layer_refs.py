"""Layer references under concurrency, on the real filesystem and SQLite store.

Two loads that bring the same new layer run at once and one of them fails: the failing load
gives back the layers it brought, and must not remove the one the other load is about to use.
The failure is injected into the failing load's stream (a client that goes away) at a chosen
point, and each load's stream is held at a gate so the interleaving is exact, not left to luck.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tarfile
import threading

import pytest

from silobox.errors import NotFound
from silobox.storage import Database, ImageStore, LayerStore
from silobox.storage import archive

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, xattrs)"),
]


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1700000000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _diff_id(layer: bytes) -> str:
    return "sha256:" + hashlib.sha256(layer).hexdigest()


def _archive(layers: list[bytes], tag: str) -> tuple[bytes, int]:
    """A docker-archive with the layer blobs first; returns it and where the first blob ends
    (the next member's header starts there)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["true"]},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [_diff_id(l) for l in layers]}}).encode()
    buf = io.BytesIO()
    first_end = 0
    with tarfile.open(fileobj=buf, mode="w") as tar:
        names = []
        for layer in layers:
            name = f"{hashlib.sha256(layer).hexdigest()}/layer.tar"
            info = tarfile.TarInfo(name)
            info.size = len(layer)
            tar.addfile(info, io.BytesIO(layer))
            names.append(name)
            first_end = first_end or buf.tell()
        for name, data in (("config.json", config), ("manifest.json", json.dumps(
                [{"Config": "config.json", "RepoTags": [tag], "Layers": names}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), first_end


class GatedStream:
    """A client's upload that stops at byte offsets until the test lets it go on; at a gate
    marked ``fail`` the client goes away (the injected failure)."""

    def __init__(self, data: bytes, gates: list[tuple[int, bool]]) -> None:
        self.data = data
        self.pos = 0
        self.gates = [(at, fail, threading.Event(), threading.Event()) for at, fail in gates]
        self.next = 0   # the first gate not passed yet

    def reached(self, i: int) -> threading.Event:
        return self.gates[i][2]

    def go(self, i: int) -> None:
        self.gates[i][3].set()

    def read(self, n: int = -1) -> bytes:
        while self.next < len(self.gates) and self.pos >= self.gates[self.next][0]:
            _at, fail, reached, go = self.gates[self.next]
            self.next += 1
            reached.set()
            assert go.wait(30), "the test never released the gate"
            if fail:
                raise ConnectionResetError(errno.ECONNRESET, "the client went away (injected)")
        end = len(self.data) if n is None or n < 0 else self.pos + n
        if self.next < len(self.gates):
            end = min(end, self.gates[self.next][0])
        chunk = self.data[self.pos:end]
        self.pos += len(chunk)
        return chunk


def _load_in_thread(stream: GatedStream, layers: LayerStore, images: ImageStore,
                    out: dict) -> threading.Thread:
    def run() -> None:
        try:
            out["result"] = archive.load(stream, layers, images)   # type: ignore[arg-type]
        except BaseException as e:   # the failing load's error is checked by the test
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t


def _consistent(layers: LayerStore, images: ImageStore, db: Database) -> None:
    recorded = {l.diff_id.removeprefix("sha256:") for l in layers.list()}
    assert set(os.listdir(layers.dir)) == recorded
    for image in images.list():
        for layer in image.layers:
            assert os.path.isdir(layer.path)
    assert db.query("SELECT * FROM layer_refs WHERE owner LIKE 'load:%'") == []


@pytest.mark.parametrize("first", ["failing", "succeeding"])
def test_concurrent_loads_of_a_new_layer_one_failing(store, first):
    """``first`` registers the shared layer; the other finds it stored. The failing load then
    gives up while the succeeding one has not yet made its image: the layer must survive."""
    layers, images = store
    db = layers.db
    shared = _layer({"shared": b"s" * 70000})
    own = _layer({"own": b"o" * 70000})
    ok_data, ok_gate = _archive([shared, own], "ok:1")
    bad_data, bad_gate = _archive([shared], "bad:1")
    # the failing load: held before anything (so the shared layer is new to it), then after
    # its layer, where its client goes away; the succeeding load: held after the shared layer
    bad = GatedStream(bad_data, [(0, False), (bad_gate, True)])
    ok = GatedStream(ok_data, [(ok_gate, False)])
    bad_out: dict = {}
    ok_out: dict = {}
    threads = [_load_in_thread(bad, layers, images, bad_out)]
    assert bad.reached(0).wait(10)                    # the failing load has seen the store
    if first == "failing":
        bad.go(0)
        assert bad.reached(1).wait(10)                # it registered the shared layer
        threads.append(_load_in_thread(ok, layers, images, ok_out))
        assert ok.reached(0).wait(10)                 # the other found it and holds it
    else:
        threads.append(_load_in_thread(ok, layers, images, ok_out))
        assert ok.reached(0).wait(10)                 # the other registered it
        bad.go(0)
        assert bad.reached(1).wait(10)                # the failing load found it stored
    bad.go(1)                                         # the client goes away: it gives up
    threads[0].join(30)
    assert isinstance(bad_out.get("error"), ConnectionResetError)
    assert layers.exists(_diff_id(shared))            # still held by the succeeding load
    ok.go(0)
    threads[1].join(30)
    assert "error" not in ok_out, ok_out.get("error")
    image = images.resolve("ok:1")
    assert image.diff_ids == [_diff_id(shared), _diff_id(own)]
    assert all(layers.exists(d) for d in image.diff_ids)
    with pytest.raises(NotFound):
        images.resolve("bad:1")
    _consistent(layers, images, db)


def test_a_held_layer_outlives_its_image_and_goes_with_the_last_holder(store):
    """What a container does: hold its image's layers; the image record may go (rmi -f), the
    layers stay until the holder lets go."""
    layers, images = store
    db = layers.db
    layer = layers.add_from_tar(io.BytesIO(_layer({"f": b"1"})))
    image = images.create({"config": {}}, [layer.diff_id], tags=["held:1"])
    layers.hold("container:c1", image.diff_ids)
    images.untag("held:1")
    with db.tx():
        db.execute("DELETE FROM images WHERE id = ?", (image.id,))
    assert layers.release(layer.diff_id) == []        # held: nothing removed
    assert layers.exists(layer.diff_id)
    assert layers.sweep() == [] and layers.exists(layer.diff_id)   # a start keeps it too
    assert layers.drop_refs_except({"container:c1"}) == []
    assert layers.unhold("container:c1") == [layer.diff_id]
    assert [l.diff_id for l in layers.release(layer.diff_id)] == [layer.diff_id]
    assert os.listdir(layers.dir) == []


def test_references_of_a_killed_daemon_go_at_start(store):
    layers, images = store
    layer = layers.add_from_tar(io.BytesIO(_layer({"g": b"2"})), owner="load:dead")
    layers.hold("container:gone", [layer.diff_id])
    layers.hold("container:alive", [layer.diff_id])
    assert layers.drop_refs_except({"container:alive"}) == ["container:gone", "load:dead"]
    assert layers.sweep() == [] and layers.exists(layer.diff_id)
    layers.drop_refs_except(set())
    assert layer.diff_id in layers.sweep()
    with pytest.raises(NotFound):
        layers.hold("container:x", [layer.diff_id])
