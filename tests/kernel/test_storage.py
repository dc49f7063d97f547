"""Storage on the real kernel: layer import (whiteouts, ownership, devices, traversal), images,
the built-in busybox image and the sandbox's overlay mount on the host."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import time

import pytest

from silobox.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, Unavailable
from silobox.storage import Database, ImageStore, LayerStore, Sandbox, chain_ids
from silobox.storage.builtin import (busybox_layer_tar, busybox_package, ensure_builtin_image,
                                     is_builtin_reference, list_applets)
from silobox.storage.sandbox import mounts_under

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ownership, device nodes, mounts)"),
]

MTIME = 1_600_000_000


class TarBuilder:
    """Builds layer tars entry by entry, the way image builders write them."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.PAX_FORMAT)

    def _add(self, name: str, kind: bytes, mode: int, data: bytes = b"", uid: int = 0,
             gid: int = 0, mtime: int = MTIME, **extra: object) -> TarBuilder:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, mtime
        info.size = len(data)
        for key, value in extra.items():
            setattr(info, key, value)
        self._tar.addfile(info, io.BytesIO(data) if data else None)
        return self

    def dir(self, name: str, mode: int = 0o755, **kw: object) -> TarBuilder:
        return self._add(name, tarfile.DIRTYPE, mode, **kw)

    def file(self, name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> TarBuilder:
        return self._add(name, tarfile.REGTYPE, mode, data, **kw)

    def symlink(self, name: str, target: str) -> TarBuilder:
        return self._add(name, tarfile.SYMTYPE, 0o777, linkname=target)

    def hardlink(self, name: str, target: str) -> TarBuilder:
        return self._add(name, tarfile.LNKTYPE, 0o644, linkname=target)

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o666) -> TarBuilder:
        return self._add(name, tarfile.CHRTYPE, mode, devmajor=major, devminor=minor)

    def blockdev(self, name: str, major: int, minor: int, mode: int = 0o660) -> TarBuilder:
        return self._add(name, tarfile.BLKTYPE, mode, devmajor=major, devminor=minor)

    def fifo(self, name: str, mode: int = 0o644) -> TarBuilder:
        return self._add(name, tarfile.FIFOTYPE, mode)

    def bytes(self) -> bytes:
        self._tar.close()
        return self._buf.getvalue()


def _import(layers: LayerStore, data: bytes, parent: str | None = None):
    return layers.add_from_tar(io.BytesIO(data), parent)


# -- layers ------------------------------------------------------------------------------------


def test_whiteouts_and_opaque_dirs_through_a_real_overlay(root, store):
    layers, images = store
    base = _import(layers, TarBuilder().dir("etc").file("etc/gone", b"old").file("etc/kept", b"k")
                   .dir("dir").file("dir/a", b"a").dir("dir/sub").file("dir/sub/x", b"x")
                   .dir("tree").file("tree/deep", b"d").bytes())
    top = _import(layers, TarBuilder().dir("etc").file("etc/.wh.gone").dir("dir")
                  .file("dir/.wh..wh..opq").file("dir/b", b"b").file(".wh.tree").bytes(),
                  parent=base.diff_id)
    assert top.parent == base.diff_id
    assert top.chain_id == chain_ids([base.diff_id, top.diff_id])[1]

    # on disk the layer is already in overlay's format
    whiteout = os.lstat(os.path.join(top.path, "etc/gone"))
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == os.makedev(0, 0)
    assert os.getxattr(os.path.join(top.path, "dir"), "trusted.overlay.opaque") == b"y"
    assert not os.path.lexists(os.path.join(top.path, "dir/.wh..wh..opq"))
    assert stat.S_ISCHR(os.lstat(os.path.join(top.path, "tree")).st_mode)

    image = images.create({"config": {"Cmd": ["sh"]}}, [base.diff_id, top.diff_id], ["t:1"])
    assert image.lower_dirs() == [top.path, base.path]
    sandbox = Sandbox(root, "c1")
    sandbox.create(image.lower_dirs())
    assert sandbox.used_bytes() == 0
    merged = sandbox.mount_on_host()
    try:
        assert sorted(os.listdir(os.path.join(merged, "etc"))) == ["kept"]
        assert sorted(os.listdir(os.path.join(merged, "dir"))) == ["b"]
        assert not os.path.lexists(os.path.join(merged, "tree"))
        with open(os.path.join(merged, "etc/new"), "w") as f:
            f.write("written in the container")
        os.unlink(os.path.join(merged, "etc/kept"))
    finally:
        assert sandbox.unmount_from_host() is True
    assert not sandbox.is_mounted()
    assert sandbox.unmount_from_host() is False
    upper = sandbox.paths.upper
    assert open(os.path.join(upper, "etc/new")).read() == "written in the container"
    assert sandbox.used_bytes() == len("written in the container")
    assert stat.S_ISCHR(os.lstat(os.path.join(upper, "etc/kept")).st_mode)
    assert open(os.path.join(base.path, "etc/kept")).read() == "k"      # layers untouched


def test_modes_owners_links_devices_xattrs_and_times_are_kept(store):
    layers, _ = store
    data = (TarBuilder()
            .dir("./", mode=0o755)
            .dir("bin", mode=0o750, uid=2, gid=3, mtime=1_500_000_000)
            .file("bin/su", b"#!/bin/true\n", mode=0o4755, uid=0, gid=0)
            .file("bin/tool", b"tool", mode=0o2711, uid=1000, gid=1001, mtime=1_400_000_000)
            .hardlink("bin/tool-again", "bin/tool")
            .symlink("bin/sh", "/bin/busybox")
            .symlink("bin/rel", "../etc/../bin/su")
            .symlink("escapes", "../../../../../../etc/passwd")   # data, never followed
            .dir("dev")
            .chardev("dev/null", 1, 3)
            .blockdev("dev/loop9", 7, 9)
            .fifo("dev/pipe", mode=0o600)
            .dir("tmp", mode=0o1777)
            ._add("xattr", tarfile.REGTYPE, 0o644, b"x",
                  pax_headers={"SCHILY.xattr.user.silobox": "yes",
                               "SCHILY.xattr.trusted.overlay.redirect": "/etc"})
            .file("dir/implicit/file", b"parents are created"))
    previous = os.umask(0o077)                   # a strict daemon umask must not leak in
    try:
        layer = _import(layers, data.bytes())
    finally:
        os.umask(previous)
    p = layer.path
    assert stat.S_IMODE(os.lstat(p).st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(os.path.join(p, "dir/implicit")).st_mode) == 0o755

    st = os.lstat(os.path.join(p, "bin"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o750, 2, 3,
                                                                             1_500_000_000)
    assert stat.S_IMODE(os.lstat(os.path.join(p, "bin/su")).st_mode) == 0o4755
    tool = os.lstat(os.path.join(p, "bin/tool"))
    assert (stat.S_IMODE(tool.st_mode), tool.st_uid, tool.st_gid) == (0o2711, 1000, 1001)
    assert tool.st_mtime == 1_400_000_000
    again = os.lstat(os.path.join(p, "bin/tool-again"))
    assert again.st_ino == tool.st_ino and tool.st_nlink == 2
    assert os.readlink(os.path.join(p, "bin/sh")) == "/bin/busybox"
    assert os.readlink(os.path.join(p, "bin/rel")) == "../etc/../bin/su"
    assert os.readlink(os.path.join(p, "escapes")) == "../../../../../../etc/passwd"
    assert os.lstat(os.path.join(p, "bin/sh")).st_mtime == MTIME
    null = os.lstat(os.path.join(p, "dev/null"))
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = os.lstat(os.path.join(p, "dev/loop9"))
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 9)
    assert stat.S_ISFIFO(os.lstat(os.path.join(p, "dev/pipe")).st_mode)
    assert stat.S_IMODE(os.lstat(os.path.join(p, "tmp")).st_mode) == 0o1777
    assert os.getxattr(os.path.join(p, "xattr"), "user.silobox") == b"yes"
    assert "trusted.overlay.redirect" not in os.listxattr(os.path.join(p, "xattr"))
    assert open(os.path.join(p, "dir/implicit/file")).read() == "parents are created"
    assert layer.size == len(b"#!/bin/true\n") + len(b"tool") + 1 + len(b"parents are created")

    folder = layer.folder
    assert sorted(os.listdir(folder)) == ["diff", "layerchain.json", "meta.json", "tar-split.json",
                                         "tar-split.raw"]
    assert open(os.path.join(folder, "layerchain.json")).read() == "[]"


@pytest.mark.parametrize("case", [
    "dotdot", "absolute", "nested-dotdot", "through-absolute-symlink", "through-relative-symlink",
    "hardlink-dotdot", "hardlink-absolute", "hardlink-missing", "hardlink-through-symlink",
    "not-a-tar", "truncated-gzip", "zstd",
])
def test_hostile_or_broken_tars_are_refused_and_leave_nothing(tmp_path, store, case):
    layers, _ = store
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host file")
    b = TarBuilder().dir("ok").file("ok/file", b"fine")
    if case == "dotdot":
        data = b.file("../evil", b"x").bytes()
    elif case == "absolute":
        data = b.file(str(outside / "evil"), b"x").bytes()
    elif case == "nested-dotdot":
        data = b.file("ok/../../evil", b"x").bytes()
    elif case == "through-absolute-symlink":
        data = b.symlink("ok/esc", str(outside)).file("ok/esc/evil", b"x").bytes()
    elif case == "through-relative-symlink":
        data = b.symlink("esc", "../../../../../../../" + str(outside)) \
                .file("esc/evil", b"x").bytes()
    elif case == "hardlink-dotdot":
        data = b.hardlink("ok/h", "../../outside/secret").bytes()
    elif case == "hardlink-absolute":
        data = b.hardlink("ok/h", str(outside / "secret")).bytes()
    elif case == "hardlink-missing":
        data = b.hardlink("ok/h", "ok/nope").bytes()
    elif case == "hardlink-through-symlink":
        data = b.symlink("ok/esc", str(outside)).hardlink("ok/h", "ok/esc/secret").bytes()
    elif case == "not-a-tar":
        data = b"this is not a tar archive at all" * 40
    elif case == "truncated-gzip":
        data = gzip.compress(b.bytes())[:-40]
    else:
        data = b"\x28\xb5\x2f\xfd" + b"\0" * 100
    with pytest.raises(InvalidArgument, match="invalid layer tar"):
        _import(layers, data)
    assert os.listdir(layers.dir) == []
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_text() == "host file"
    assert os.lstat(outside / "secret").st_nlink == 1
    assert layers.list() == []


def test_same_tar_is_stored_once_and_gzip_has_the_same_diff_id(store):
    layers, _ = store
    data = TarBuilder().dir("d").file("d/f", b"content" * 1000).bytes()
    first = _import(layers, data)
    assert first.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert first.chain_id == first.diff_id and first.parent is None
    second = _import(layers, data)
    zipped = _import(layers, gzip.compress(data))
    assert first == second == zipped
    assert os.listdir(layers.dir) == [first.diff_id.removeprefix("sha256:")]
    assert layers.exists(first.diff_id) and layers.exists(first.diff_id.removeprefix("sha256:"))
    assert layers.get(first.diff_id.removeprefix("sha256:")) == first

    # the same tree over another parent: same folder, the caller's chain id
    parent = _import(layers, TarBuilder().file("p", b"p").bytes())
    over = _import(layers, data, parent=parent.diff_id)
    assert over.path == first.path and over.parent == parent.diff_id
    assert over.chain_id == chain_ids([parent.diff_id, first.diff_id])[1]


def test_empty_layer_and_later_entries_win(store):
    layers, _ = store
    empty = _import(layers, TarBuilder().bytes())
    assert os.listdir(empty.path) == [] and empty.size == 0
    nothing = _import(layers, b"")                     # a zero-byte blob reads as empty too
    assert nothing.diff_id == "sha256:" + hashlib.sha256(b"").hexdigest()
    data = TarBuilder().file("c", b"compressed" * 100).bytes()
    plain = _import(layers, data)
    assert _import(layers, bz2.compress(data)) == plain
    assert _import(layers, lzma.compress(data)) == plain
    layer = _import(layers, TarBuilder().file("x", b"first").file("x", b"second")
                    .dir("y").file("y/inner", b"i").file("y", b"now a file")
                    .symlink("z", "x").file("z", b"not a link").bytes())
    assert open(os.path.join(layer.path, "x")).read() == "second"
    assert open(os.path.join(layer.path, "y")).read() == "now a file"
    assert not os.path.islink(os.path.join(layer.path, "z"))


def test_layer_removal(store):
    layers, images = store
    layer = _import(layers, TarBuilder().file("f", b"1").bytes())
    image = images.create({}, [layer.diff_id], ["keep:me"])
    with pytest.raises(Conflict, match="used by an image"):
        layers.remove(layer.diff_id)
    assert layers.exists(layer.diff_id)
    images.remove("keep:me")
    assert not layers.exists(layer.diff_id)
    assert os.listdir(layers.dir) == []
    with pytest.raises(NotFound, match=f"No such layer: {layer.diff_id}"):
        layers.get(layer.diff_id)
    with pytest.raises(NotFound):
        images.get(image.id)
    with pytest.raises(NotFound):
        layers.add_from_tar(io.BytesIO(TarBuilder().bytes()), parent="sha256:" + "0" * 64)
    with pytest.raises(InvalidArgument, match="invalid layer diff id"):
        layers.get("sha256:xyz")


def test_parents_outlive_their_children(store):
    layers, images = store
    base = _import(layers, TarBuilder().file("base", b"b").bytes())
    shared = TarBuilder().file("shared", b"s").bytes()
    mid = _import(layers, shared, parent=base.diff_id)
    other_base = _import(layers, TarBuilder().file("other", b"o").bytes())
    assert layers.chain(mid.diff_id) == [mid, base]
    assert open(os.path.join(mid.folder, "layerchain.json")).read() == f'["{base.folder}"]'
    with pytest.raises(Conflict, match=f"it is the parent of layer {mid.diff_id}"):
        layers.remove(base.diff_id)

    a = images.create({"n": "a"}, [base.diff_id, mid.diff_id], ["a:1"])
    b = images.create({"n": "b"}, [other_base.diff_id, mid.diff_id], ["b:1"])
    assert b.lower_dirs() == [mid.path, other_base.path]
    report = images.remove("a:1")     # mid is still used by b, so base (its parent) stays
    assert report == [{"Untagged": "a:1"}, {"Deleted": a.id}]
    assert layers.exists(base.diff_id) and layers.exists(mid.diff_id)
    report = images.remove("b:1")     # now mid goes, and with it its recorded parent
    assert {"Deleted": mid.chain_id} in report and {"Deleted": base.diff_id} in report
    assert {"Deleted": other_base.diff_id} in report
    assert layers.list() == [] and os.listdir(layers.dir) == []


# -- images ------------------------------------------------------------------------------------


def test_image_id_is_the_config_digest_and_every_reference_form_resolves(store):
    layers, images = store
    layer = _import(layers, TarBuilder().file("f", b"1").bytes())
    config = {"architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05.123456789Z",
              "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "Labels": {"a": "b"},
                         "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGQUIT"},
              "history": [{"created_by": "test"}]}
    image = images.create(config, [layer.diff_id], ["busybox:latest"])
    raw = images.db.query_one("SELECT config FROM images WHERE id = ?", (image.id,))["config"]
    assert image.id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert image.config["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id]}
    hex_id = image.id.removeprefix("sha256:")
    for ref in ["busybox", "busybox:latest", "library/busybox", "docker.io/library/busybox",
                "docker.io/library/busybox:latest", "index.docker.io/library/busybox:latest",
                image.id, hex_id, hex_id[:12], hex_id[:3], "sha256:" + hex_id[:8]]:
        assert images.resolve(ref).id == image.id, ref
    with pytest.raises(NotFound, match=r"^No such image: busybox:1\.0$"):
        images.resolve("docker.io/library/busybox:1.0")
    with pytest.raises(NotFound, match=r"^No such image: nope:latest$"):
        images.resolve("nope")
    with pytest.raises(NotFound, match="No such image: sha256:" + "0" * 64):
        images.resolve("sha256:" + "0" * 64)

    # a layer listed twice is mounted once, at its topmost position
    twice = images.create({"n": "twice"}, [layer.diff_id, layer.diff_id])
    assert twice.lower_dirs() == [layer.path]
    assert twice.storage_layers() == [{"Id": layer.guid, "Path": layer.path}]
    assert twice.to_docker_inspect()["RootFS"]["Layers"] == [layer.diff_id, layer.diff_id]
    images.remove(twice.id)
    assert layers.exists(layer.diff_id)

    # the same config again is the same image: only the tag is added
    assert images.create(config, [layer.diff_id], ["other:tag"]).id == image.id
    assert images.resolve(image.id).tags == ["busybox:latest", "other:tag"]
    assert len(images.list()) == 1

    summary = images.resolve("busybox").to_docker_summary()
    assert summary == {"Id": image.id, "ParentId": "", "RepoTags": ["busybox:latest", "other:tag"],
                       "RepoDigests": [], "Created": 1704164645, "Size": 1, "SharedSize": -1,
                       "VirtualSize": 1, "Labels": {"a": "b"}, "Containers": -1}
    inspect = images.resolve("busybox").to_docker_inspect()
    assert inspect["Created"] == "2024-01-02T03:04:05.123456789Z"
    assert inspect["Config"]["Cmd"] == ["sh"] and inspect["Config"]["Entrypoint"] is None
    assert inspect["Config"]["ExposedPorts"] == {"80/tcp": {}}
    assert inspect["Config"]["StopSignal"] == "SIGQUIT"
    assert inspect["RootFS"] == {"Type": "layers", "Layers": [layer.diff_id]}
    assert inspect["GraphDriver"]["Name"] == "windowsfilter"
    assert inspect["GraphDriver"]["Data"]["dir"] == layer.folder
    assert all(isinstance(v, str) for v in inspect["GraphDriver"]["Data"].values())
    assert inspect["Metadata"]["LastTagTime"].endswith("Z")
    assert (inspect["Architecture"], inspect["Os"], inspect["Size"]) == ("amd64", "linux", 1)


def test_short_id_prefixes_and_ambiguity(store):
    _, images = store
    made = [images.create({"created": "2024-01-01T00:00:00Z", "n": i}, []) for i in range(17)]
    by_first: dict[str, list[str]] = {}
    for image in made:
        by_first.setdefault(image.id[7], []).append(image.id)
    shared = next(ids for ids in by_first.values() if len(ids) > 1)   # pigeonhole: 17 > 16
    with pytest.raises(NotFound, match="matches more than one image"):
        images.resolve(shared[0][7])
    for image_id in shared:
        assert images.resolve(image_id[7:19]).id == image_id
    assert len(images.list()) == 17
    with pytest.raises(NotFound):
        images.resolve("")


def test_tags_move_untag_and_remove(store):
    layers, images = store
    layer = _import(layers, TarBuilder().file("f", b"1").bytes())
    a = images.create({"n": "a"}, [layer.diff_id], ["app:1", "app:latest"])
    b = images.create({"n": "b"}, [layer.diff_id], ["app:2"])
    b = images.tag(b, "app:latest")                        # moves from a to b
    assert images.resolve("app").id == b.id
    assert images.resolve(a.id).tags == ["app:1"]
    with pytest.raises(InvalidArgument, match="digest reference"):
        images.tag(a, "app@sha256:" + "a" * 64)
    with pytest.raises(InvalidArgument, match="invalid reference format"):
        images.tag(a, "App:1")
    assert images.untag("app:2").id == b.id
    with pytest.raises(NotFound, match="No such image: app:2"):
        images.untag("app:2")

    images.tag(a, "other/app:x")
    with pytest.raises(Conflict, match="referenced in multiple repositories"):
        images.remove(a.id)
    assert images.remove("other/app:x") == [{"Untagged": "other/app:x"}]
    report = images.remove(a.id)
    assert report == [{"Untagged": "app:1"}, {"Deleted": a.id}]     # layer still used by b
    assert layers.exists(layer.diff_id)
    report = images.remove("app")
    assert report[:2] == [{"Untagged": "app:latest"}, {"Deleted": b.id}]
    assert report[2] == {"Deleted": layer.chain_id}
    assert images.list() == [] and layers.list() == []


def test_rootfs_must_match_the_layers(store):
    layers, images = store
    layer = _import(layers, TarBuilder().file("f", b"1").bytes())
    with pytest.raises(InvalidArgument, match="rootfs.diff_ids does not match"):
        images.create({"rootfs": {"type": "layers", "diff_ids": []}}, [layer.diff_id])
    with pytest.raises(NotFound, match="No such layer"):
        images.create({}, ["sha256:" + "1" * 64])
    with pytest.raises(InvalidArgument, match="invalid image config"):
        images.import_config(b"[1, 2]")


# -- the built-in busybox image -----------------------------------------------------------------


def test_builtin_busybox_is_deterministic_and_runs(tmp_path, root, store):
    layers, images = store
    assert is_builtin_reference("busybox") and is_builtin_reference("busybox:latest")
    assert is_builtin_reference("docker.io/library/busybox:latest")
    assert not is_builtin_reference("busybox:1.36") and not is_builtin_reference("alpine")
    assert ensure_builtin_image(images, "alpine") is None

    started = time.perf_counter()
    image = ensure_builtin_image(images, "busybox")
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"\nbuilt-in busybox image built in {elapsed_ms:.0f} ms")
    assert image is not None and image.tags == ["busybox:latest"]
    assert image.config["config"] == {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["sh"]}
    assert image.config["history"][0]["created_by"].startswith(
        "created by silobox from Debian busybox-static ")
    assert ensure_builtin_image(images, "docker.io/library/busybox:latest").id == image.id

    # a second, independent store builds the very same image
    other_root = str(tmp_path / "other")
    db2 = Database(os.path.join(other_root, "silobox.db"))
    try:
        again = ensure_builtin_image(ImageStore(db2, LayerStore(other_root, db2)), "busybox:latest")
        assert again.id == image.id and again.diff_ids == image.diff_ids
    finally:
        db2.close()

    tree = image.layers[0].path
    assert os.readlink(os.path.join(tree, "bin/sh")) == "/bin/busybox"
    assert os.readlink(os.path.join(tree, "usr/bin/env")) == "/bin/busybox"
    busybox = os.lstat(os.path.join(tree, "bin/busybox"))
    assert stat.S_ISREG(busybox.st_mode) and stat.S_IMODE(busybox.st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(os.path.join(tree, "root")).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(os.path.join(tree, "tmp")).st_mode) == 0o1777
    for d in ("home", "var/spool/mail", "var/www", "proc", "sys", "dev", "usr/sbin", "sbin"):
        assert os.path.isdir(os.path.join(tree, d)), d
    passwd = open(os.path.join(tree, "etc/passwd")).read().splitlines()
    assert passwd[0] == "root:x:0:0:root:/root:/bin/sh"
    assert "nobody:x:65534:65534:nobody:/home:/bin/false" in passwd
    group = open(os.path.join(tree, "etc/group")).read()
    assert "tty:x:5:" in group and "users:x:100:" in group and "nogroup:x:65534:" in group

    sandbox = Sandbox(root, "bb")
    sandbox.create(image.lower_dirs())
    merged = sandbox.mount_on_host()
    try:
        done = subprocess.run(["chroot", merged, "/bin/sh", "-c", "echo hi > /tmp/x; cat /tmp/x; "
                               "id -un; ls /bin | wc -l"], capture_output=True, text=True,
                              timeout=10, check=True)
        out = done.stdout.split()
        assert out[:2] == ["hi", "root"] and int(out[2]) > 50
    finally:
        sandbox.unmount_from_host()
    assert open(os.path.join(sandbox.paths.upper, "tmp/x")).read() == "hi\n"


def test_builtin_without_the_package_says_what_to_install(tmp_path, store, monkeypatch):
    _, images = store
    empty = tmp_path / "no-tools"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))    # no dpkg, no apt-get on this PATH
    with pytest.raises(Unavailable, match="apt-get install busybox-static"):
        ensure_builtin_image(images, "busybox")
    assert images.list() == []


def test_downloaded_package_gives_the_same_layer():
    with busybox_package() as installed:
        expected = busybox_layer_tar(open(installed.binary, "rb").read(),
                                     list_applets(installed.binary), installed.mtime)
    try:
        with busybox_package(use_installed=False) as downloaded:
            assert downloaded.version == installed.version
            data = busybox_layer_tar(open(downloaded.binary, "rb").read(),
                                     list_applets(downloaded.binary), downloaded.mtime)
    except Unavailable as e:
        pytest.skip(f"no package download here: {e}")
    assert hashlib.sha256(data).digest() == hashlib.sha256(expected).digest()


def test_builtin_tar_is_byte_identical():
    a = busybox_layer_tar(b"\x7fELF fake", ["bin/sh", "usr/bin/awk", "bin/busybox"], MTIME)
    b = busybox_layer_tar(b"\x7fELF fake", ["usr/bin/awk", "bin/sh"], MTIME)
    assert a == b
    with tarfile.open(fileobj=io.BytesIO(a)) as tar:
        names = tar.getnames()
        assert names == sorted(names)
        assert all(m.mtime == MTIME and m.uid == 0 and m.gid == 0 for m in tar.getmembers())
        assert tar.getmember("bin/sh").linkname == "/bin/busybox"


# -- the sandbox -------------------------------------------------------------------------------


def test_sandbox_lifecycle_and_overlay_limits(root, store):
    layers, _ = store
    layer = _import(layers, TarBuilder().file("f", b"1").bytes())
    sandbox = Sandbox(root, "0123abcd")
    paths = sandbox.create([layer.path])
    assert paths.upper == os.path.join(root, "containers/0123abcd/sandbox/upper")
    assert paths.work == os.path.join(root, "containers/0123abcd/sandbox/work")
    assert paths.rootfs == os.path.join(root, "containers/0123abcd/sandbox/rootfs")
    assert sandbox.path == os.path.join(root, "containers/0123abcd/sandbox")
    assert all(os.path.isdir(p) for p in (paths.upper, paths.work, paths.rootfs))
    assert os.listdir(paths.rootfs) == []
    assert sandbox.layer_chain() == [layer.path]
    with pytest.raises(AlreadyExists):
        sandbox.create()

    opts = sandbox.overlay_options(["/l/top", "/l/base", "/l/top"])
    assert opts == f"lowerdir=/l/top:/l/base,upperdir={paths.upper},workdir={paths.work}"
    with pytest.raises(InvalidArgument, match="at least one"):
        sandbox.overlay_options([])
    with pytest.raises(InvalidArgument, match="overlay stacks at most 500"):
        sandbox.overlay_options([f"/l/{i}" for i in range(501)])
    with pytest.raises(InvalidArgument, match="over the kernel's limit"):
        sandbox.overlay_options([f"/var/lib/silobox/layers/{i:064x}/diff" for i in range(60)])
    with pytest.raises(InvalidArgument, match="contain no"):
        sandbox.overlay_options(["/l/a:b"])
    with pytest.raises(InvalidArgument, match="invalid container id"):
        Sandbox(root, "../x")

    # removing a sandbox that is still mounted detaches it first
    sandbox.mount_on_host()
    with pytest.raises(Conflict, match="already mounted"):
        sandbox.mount_on_host()
    sandbox.remove()
    assert mounts_under(root) == []
    assert not os.path.exists(sandbox.folder)
    sandbox.remove()                                      # idempotent
    with pytest.raises(NotFound):
        sandbox.mount_on_host([layer.path])


def test_sandbox_remove_keeps_engine_files(root):
    sandbox = Sandbox(root, "keep")
    sandbox.create()
    engine_file = os.path.join(sandbox.folder, "config.json")
    with open(engine_file, "w") as f:
        f.write("{}")
    sandbox.remove()
    assert os.listdir(sandbox.folder) == ["config.json"]
    shutil.rmtree(sandbox.folder)
