"""Layer export, image archives and the store's crash sweep on the real kernel: byte-exact layer
tars, docker-archive/OCI round trips, whiteout conversion of an overlay upper dir, and faults
(full disk, truncated and corrupt archives, leftovers of a crash) leaving a consistent store."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile

import pytest

from silobox.errors import InvalidArgument, NotFound, SystemFailure
from silobox.kernel import libc
from silobox.storage import Database, ImageStore, LayerStore
from silobox.storage import archive
from silobox.storage.changes import list_changes, tar_overlay_dir

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, xattrs, mounts)"),
]


def _tar(entries: list[tuple[str, object]], fmt: int = tarfile.PAX_FORMAT,
         end: bool = True) -> bytes:
    buf = io.BytesIO()
    tar = tarfile.open(fileobj=buf, mode="w", format=fmt)
    for name, value in entries:
        info = tarfile.TarInfo(name)
        info.mtime = 1700000000
        if value == "dir":
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        elif isinstance(value, tuple) and value[0] == "link":
            info.type = tarfile.LNKTYPE
            info.linkname = value[1]
            tar.addfile(info)
        elif isinstance(value, tuple) and value[0] == "xattr":
            info.size = len(value[1])
            info.pax_headers = {"SCHILY.xattr.user.k": "v"}
            tar.addfile(info, io.BytesIO(value[1]))
        else:
            info.size = len(value)   # type: ignore[arg-type]
            tar.addfile(info, io.BytesIO(value))   # type: ignore[arg-type]
    if end:
        tar.close()
    else:
        tar.fileobj = None   # type: ignore[assignment]
    return buf.getvalue()


def _exported(layers: LayerStore, diff_id: str) -> bytes:
    return b"".join(layers.export_layer(diff_id))


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_export_layer_gives_back_the_imported_bytes(store, fmt):
    layers, _ = store
    data = _tar([("etc", "dir"), ("etc/a", b"a" * 300000), ("etc/b", ("link", "etc/a")),
                 ("x" * 120 if fmt != tarfile.USTAR_FORMAT else "x", b"long name"),
                 ("etc/.wh.gone", b""), ("empty", b""), ("attr", ("xattr", b"xa"))], fmt)
    layer = layers.add_from_tar(io.BytesIO(gzip.compress(data)))
    assert layer.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert layers.tar_size(layer.diff_id) == len(data)
    assert _exported(layers, layer.diff_id) == data
    raw = os.path.join(layer.folder, "tar-split.raw")
    assert os.stat(raw).st_blocks * 512 < len(data)   # contents are holes, not copies


def test_a_tar_without_end_blocks_is_accepted_and_reproduced(store):
    layers, _ = store
    full = _tar([("f", b"hi\n")])
    cut = full[:512 + 3]   # header and content, no padding and no end blocks (umoci does this)
    layer = layers.add_from_tar(io.BytesIO(cut))
    assert layer.diff_id == "sha256:" + hashlib.sha256(cut).hexdigest()
    assert _exported(layers, layer.diff_id) == cut
    for cut_badly in (full[:512 + 1], full[:300]):   # inside the content, inside the header
        with pytest.raises(InvalidArgument):
            layers.add_from_tar(io.BytesIO(cut_badly))
    assert [l.diff_id for l in layers.list()] == [layer.diff_id]


def test_a_repeated_name_falls_back_to_a_fresh_tar(store):
    layers, _ = store
    data = _tar([("f", b"first"), ("f", b"second")])
    layer = layers.add_from_tar(io.BytesIO(data))
    assert layers.tar_size(layer.diff_id) is None
    with tarfile.open(fileobj=io.BytesIO(_exported(layers, layer.diff_id))) as tar:
        assert tar.extractfile("f").read() == b"second"


def test_overlay_upper_becomes_an_oci_layer_and_a_change_list(root, store, tmp_path):
    layers, _ = store
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "gone").write_text("x")
    (lower / "etc" / "kept").write_text("k")
    (lower / "dir").mkdir()
    (lower / "dir" / "old").write_text("o")
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    libc.mount("overlay", str(merged), "overlay", 0,
               f"lowerdir={lower},upperdir={upper},workdir={work}")
    try:
        os.unlink(merged / "etc" / "gone")
        (merged / "etc" / "kept").write_text("changed")
        (merged / "new").write_text("n")
        os.system(f"rm -rf {merged}/dir && mkdir {merged}/dir && echo y > {merged}/dir/y")
    finally:
        libc.umount2(str(merged), 0)
    changes = {c["Path"]: c["Kind"] for c in list_changes(str(upper), [str(lower)])}
    assert changes == {"/dir": 0, "/dir/y": 1, "/etc": 0, "/etc/gone": 2, "/etc/kept": 0,
                       "/new": 1}
    data = b"".join(tar_overlay_dir(str(upper)))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert "etc/.wh.gone" in names and "dir/.wh..wh..opq" in names and "new" in names
    # imported again, the layer hides the same files through a real overlay
    base = layers.add_from_tar(io.BytesIO(b"".join(tar_overlay_dir(str(lower)))))
    top = layers.add_from_tar(io.BytesIO(data), base.diff_id)
    again = tmp_path / "again"
    again.mkdir()
    libc.mount("overlay", str(again), "overlay", libc.MS_RDONLY,
               f"lowerdir={top.path}:{base.path}")
    try:
        assert sorted(os.listdir(again / "etc")) == ["kept"]
        assert sorted(os.listdir(again / "dir")) == ["y"]
        assert (again / "etc" / "kept").read_text() == "changed"
    finally:
        libc.umount2(str(again), 0)
    assert _exported(layers, top.diff_id) == data


def _image(layers: LayerStore, images: ImageStore, files: dict[str, bytes], tags: list[str]):
    layer = layers.add_from_tar(io.BytesIO(_tar(list(files.items()))))
    return images.create({"config": {"Cmd": ["true"]}}, [layer.diff_id], tags=tags)


def test_save_and_load_round_trip_in_both_layouts(store):
    layers, images = store
    one = _image(layers, images, {"a": b"1"}, ["one:latest", "one:v2"])
    two = _image(layers, images, {"b": b"2" * 100000}, ["reg.example:5000/two:x"])
    for oci in (False, True):
        plan = archive.plan_save(["one", "one:v2", "reg.example:5000/two:x"], images)
        data = b"".join(archive.save(plan, images, layers, oci_only=oci))
        for image in (one, two):
            for tag in list(image.tags):
                images.untag(tag)
        images.remove(one.id)
        images.remove(two.id)
        assert layers.list() == []
        progress: list[dict] = []
        result = archive.load(io.BytesIO(data), layers, images, progress.append)
        assert {i.id for i, _ in result.images} == {one.id, two.id}
        assert images.resolve("one:v2").id == one.id
        assert images.resolve("reg.example:5000/two:x").id == two.id
        assert any(p["status"] == "Loading layer" for p in progress)
    # gzip-compressed archives load too
    result = archive.load(io.BytesIO(gzip.compress(data)), layers, images)
    assert len(result.images) == 2


def test_bad_archives_leave_nothing(store):
    layers, images = store
    one = _image(layers, images, {"a": b"1" * 40000}, ["one:latest"])
    data = b"".join(archive.save(archive.plan_save(["one"], images), images, layers))
    images.untag("one:latest")
    images.remove(one.id)
    for bad in (data[:len(data) // 2], data.replace(b"1" * 1000, b"2" * 1000, 1),
                b"not a tar at all" * 100):
        with pytest.raises(InvalidArgument):
            archive.load(io.BytesIO(bad), layers, images)
        assert layers.list() == [] and images.list() == []
        assert [n for n in os.listdir(layers.dir)] == []


def test_a_full_disk_during_load_leaves_nothing(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    libc.mount("tmpfs", str(small), "tmpfs", 0, "size=2m")
    try:
        db = Database(str(tmp_path / "db.sqlite"))
        layers = LayerStore(str(small), db)
        images = ImageStore(db, layers)
        big = _tar([("big", os.urandom(3 << 20))])
        diff_id = "sha256:" + hashlib.sha256(big).hexdigest()
        config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff_id]},
                             "architecture": "amd64", "os": "linux"}).encode()
        doc = _tar([("layer.tar", big), ("c.json", config),
                    ("manifest.json", json.dumps([{"Config": "c.json", "RepoTags": ["big:1"],
                                                   "Layers": ["layer.tar"]}]).encode())])
        with pytest.raises(SystemFailure):
            archive.load(io.BytesIO(doc), layers, images)
        assert layers.list() == [] and images.list() == [] and os.listdir(layers.dir) == []
        db.close()
    finally:
        libc.umount2(str(small), libc.MNT_DETACH)


def test_sweep_removes_what_a_crash_left(store):
    layers, images = store
    kept = _image(layers, images, {"k": b"k"}, ["kept:latest"])
    orphan = layers.add_from_tar(io.BytesIO(_tar([("o", b"o")])))   # a load died before its image
    broken = _image(layers, images, {"b": b"b"}, ["broken:latest"])
    for leftover in ("tmp-1234", "rm-abcd-1", "f" * 64):
        os.makedirs(os.path.join(layers.dir, leftover, "diff"))
    os.rename(broken.layers[0].folder, broken.layers[0].folder + "-gone")   # folder vanished
    os.rename(broken.layers[0].folder + "-gone", os.path.join(layers.dir, "tmp-gone"))
    removed = layers.sweep()
    assert orphan.diff_id in removed and broken.id in removed
    assert sorted(os.listdir(layers.dir)) == [kept.layers[0].diff_id.removeprefix("sha256:")]
    assert [i.id for i in images.list()] == [kept.id]
    assert [l.diff_id for l in layers.list()] == kept.diff_ids
    with pytest.raises(NotFound):
        images.resolve("broken")
    # layers a caller still needs (a container's) are kept
    extra = layers.add_from_tar(io.BytesIO(_tar([("e", b"e")])))
    layers.sweep(keep={extra.diff_id})
    assert layers.exists(extra.diff_id)
    st = os.lstat(layers.dir)
    assert stat.S_ISDIR(st.st_mode)
