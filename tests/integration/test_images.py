"""Images end to end: import, tag, rmi, history, filters, prune, save/load (docker-archive and
OCI layout, checked against skopeo and umoci), commit, export, diff, cp, and failure injection
(truncated and corrupt archives, a killed silod mid-load) leaving a consistent store."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import time
import uuid

import pytest

BUSYBOX = "/bin/busybox"


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, *, kind: bytes = b"0",
         mode: int = 0o644, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.mtime = 1700000000
    if kind == tarfile.DIRTYPE:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    elif kind == tarfile.SYMTYPE:
        info.type = tarfile.SYMTYPE
        info.linkname = link
        tar.addfile(info)
    else:
        data = data or b""
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def rootfs_tar(extra: dict[str, bytes] | None = None) -> bytes:
    """A tiny root filesystem: busybox, a shell, and a few files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "tmp", "a", "dir"):
            _add(tar, d, kind=tarfile.DIRTYPE)
        with open(BUSYBOX, "rb") as f:
            _add(tar, "bin/busybox", f.read(), mode=0o755)
        for tool in ("sh", "cat", "ls", "rm", "echo", "touch", "test", "mkdir", "sleep", "mv"):
            _add(tar, f"bin/{tool}", kind=tarfile.SYMTYPE, link="busybox")
        _add(tar, "a/file", b"lower file\n")
        _add(tar, "a/keep", b"kept\n")
        _add(tar, "dir/x", b"x\n")
        _add(tar, "hello", b"hello from the image\n")
        for name, data in (extra or {}).items():
            _add(tar, name, data)
    return buf.getvalue()


def layer_tar(entries: list[tuple[str, bytes | None]]) -> bytes:
    """A layer with plain files (bytes) and OCI whiteouts / opaque markers (None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            if name.endswith("/"):
                _add(tar, name.rstrip("/"), kind=tarfile.DIRTYPE)
            else:
                _add(tar, name, data or b"")
    return buf.getvalue()


def docker_archive(layers: list[bytes], tags: list[str], cmd: list[str]) -> bytes:
    """A docker-archive (the classic docker save layout) built by hand."""
    diff_ids = ["sha256:" + hashlib.sha256(l).hexdigest() for l in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "created": "2024-01-01T00:00:00Z",
                         "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids},
                         "history": [{"created": "2024-01-01T00:00:00Z"} for _ in layers]
                         }).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        names = []
        for layer in layers:
            h = hashlib.sha256(layer).hexdigest()
            _add(tar, f"{h}/layer.tar", layer)
            names.append(f"{h}/layer.tar")
        _add(tar, f"{config_hex}.json", config)
        _add(tar, "manifest.json", json.dumps([{"Config": f"{config_hex}.json",
                                                "RepoTags": tags, "Layers": names}]).encode())
    return buf.getvalue()


def uniq(prefix: str = "img") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def import_image(silod, name: str, data: bytes | None = None, changes=None) -> str:
    out = silod.client.import_image_from_data(data or rootfs_tar(), repository=name,
                                              changes=changes)
    last = json.loads(out.strip().splitlines()[-1])
    assert last["status"].startswith("sha256:"), out
    return last["status"]


def rmi(silod, *refs: str) -> None:
    for ref in refs:
        silod.request("DELETE", f"/images/{ref}?force=1")


def store_consistent(silod) -> None:
    """No layer folder without a record, no record without a folder, no image without its
    layers, no leftover temp folders."""
    layers_dir = os.path.join(silod.root, "layers")
    con = sqlite3.connect(f"file:{os.path.join(silod.root, 'silobox.db')}?mode=ro", uri=True)
    try:
        recorded = {r[0].removeprefix("sha256:") for r in con.execute("SELECT diff_id FROM layers")}
        used = {r[0].removeprefix("sha256:") for r in
                con.execute("SELECT diff_id FROM image_layers")}
    finally:
        con.close()
    folders = set(os.listdir(layers_dir))
    assert folders == recorded, (folders ^ recorded)
    assert used <= recorded
    for hex_id in recorded:
        assert os.path.isdir(os.path.join(layers_dir, hex_id, "diff"))


def run_out(silod, image: str, *cmd: str) -> str:
    r = silod.silo("run", "--rm", image, *cmd)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


# -- import, tag, history, rmi, filters, prune ------------------------------------------------


def test_import_with_changes_tag_history_and_rmi(silod):
    name = uniq()
    image_id = import_image(silod, name, changes=["CMD [\"cat\", \"/hello\"]", "ENV A=1 B=two",
                                                  "WORKDIR /tmp", "LABEL team=storage",
                                                  "EXPOSE 80", "USER 0", "STOPSIGNAL SIGINT",
                                                  "VOLUME /data"])
    try:
        info = silod.client.inspect_image(name)
        assert info["Id"] == image_id
        cfg = info["Config"]
        assert cfg["Cmd"] == ["cat", "/hello"] and cfg["WorkingDir"] == "/tmp"
        assert "A=1" in cfg["Env"] and "B=two" in cfg["Env"]
        assert cfg["Labels"] == {"team": "storage"} and "80/tcp" in cfg["ExposedPorts"]
        assert cfg["StopSignal"] == "SIGINT" and "/data" in cfg["Volumes"]
        assert run_out(silod, name) == "hello from the image\n"

        silod.client.tag(name, f"{name}-other", "v1")
        tags = silod.client.inspect_image(image_id)["RepoTags"]
        assert sorted(tags) == sorted([f"{name}:latest", f"{name}-other:v1"])
        hist = silod.client.history(name)
        assert hist[0]["Id"] == image_id and hist[0]["Comment"] == "Imported from -"
        assert hist[0]["Size"] > 0

        by_label = silod.client.images(filters={"label": "team=storage"})
        assert [i["Id"] for i in by_label] == [image_id]
        assert silod.client.images(name=f"{name}-other")[0]["RepoTags"] == [f"{name}-other:v1"]
        assert silod.client.images(filters={"reference": f"{name}*:v1"})[0]["Id"] == image_id
        # removing one of two tags only untags
        assert silod.client.remove_image(f"{name}-other:v1") == [
            {"Untagged": f"{name}-other:v1"}]
        status, body = silod.request("DELETE", f"/images/{name}")
        assert status == 200
        assert body[0] == {"Untagged": f"{name}:latest"}
        assert {"Deleted": image_id} in body
        status, body = silod.request("GET", f"/images/{name}/json")
        assert status == 404
    finally:
        rmi(silod, image_id)
    store_consistent(silod)


def test_rmi_refuses_images_in_use(silod):
    name = uniq()
    image_id = import_image(silod, name)
    short = image_id.removeprefix("sha256:")[:12]
    cid = silod.client.create_container(name, ["sleep", "30"])["Id"]
    try:
        status, body = silod.request("DELETE", f"/images/{short}")
        assert status == 409
        assert body["message"] == (f"conflict: unable to delete {short} (must be forced) - "
                                   f"image is being used by stopped container {cid[:12]}")
        status, body = silod.request("DELETE", f"/images/{name}")
        assert status == 409 and "container " + cid[:12] in body["message"]
        silod.client.start(cid)
        status, body = silod.request("DELETE", f"/images/{short}?force=1")
        assert status == 409
        assert body["message"] == (f"conflict: unable to delete {short} (cannot be forced) - "
                                   f"image is being used by running container {cid[:12]}")
    finally:
        silod.client.remove_container(cid, force=True)
        rmi(silod, image_id)
    store_consistent(silod)


def _docker(silod, *args: str) -> subprocess.CompletedProcess:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("the docker CLI is not installed")
    env = {**silod.env, "DOCKER_HOST": f"unix://{silod.socket}"}
    return subprocess.run([docker, *args], env=env, capture_output=True, timeout=60)


def test_rmi_force_of_an_image_used_by_stopped_containers(silod):
    """moby's ImageDelete with force: a stopped container's image is untagged and deleted
    (its layers stay for the container, which keeps working, and go with it); a running
    container's image is still refused by id, and only untagged by name."""
    name = uniq()
    image_id = import_image(silod, name, rootfs_tar({"only-here": b"mine\n"}))
    hex_id = image_id.removeprefix("sha256:")
    cid = silod.client.create_container(name, ["cat", "/only-here"])["Id"]
    try:
        r = _docker(silod, "rmi", "-f", name)
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode().splitlines() == [f"Untagged: {name}:latest",
                                                  f"Deleted: {image_id}"]
        assert silod.request("GET", f"/images/{image_id}/json")[0] == 404
        r = _docker(silod, "image", "ls", "-q", "--no-trunc")
        assert image_id not in r.stdout.decode()
        assert os.path.isdir(os.path.join(silod.root, "layers", _diff_hex(rootfs_tar(
            {"only-here": b"mine\n"}))))
        r = _docker(silod, "start", "-a", cid)                 # still works
        assert r.returncode == 0 and r.stdout == b"mine\n", r.stderr
        r = _docker(silod, "ps", "-a", "--filter", f"id={cid}", "--format", "{{.Image}}")
        assert r.stdout.decode().strip() == hex_id[:12]      # the image id, as Docker shows
        store_consistent(silod)
        silod.client.remove_container(cid)
        cid = ""
        assert not os.path.isdir(os.path.join(silod.root, "layers", _diff_hex(rootfs_tar(
            {"only-here": b"mine\n"}))))                      # went with the container
        store_consistent(silod)
        # running: by id a 409 even with -f; by name -f only untags
        image_id = import_image(silod, name, rootfs_tar({"only-here": b"mine\n"}))
        short = image_id.removeprefix("sha256:")[:12]
        cid = silod.client.create_container(name, ["sleep", "30"])["Id"]
        silod.client.start(cid)
        r = _docker(silod, "rmi", "-f", short)
        assert r.returncode != 0
        assert (f"conflict: unable to delete {short} (cannot be forced) - image is being used "
                f"by running container {cid[:12]}") in r.stderr.decode()
        r = _docker(silod, "rmi", "-f", name)
        assert r.returncode == 0 and r.stdout.decode().splitlines() == [
            f"Untagged: {name}:latest"], r.stderr
        assert silod.request("GET", f"/images/{image_id}/json")[0] == 200
    finally:
        if cid:
            silod.client.remove_container(cid, force=True)
        rmi(silod, image_id)
    store_consistent(silod)


def _diff_hex(layer: bytes) -> str:
    return hashlib.sha256(layer).hexdigest()


def test_cli_import_file_and_stdin_then_prune(silod, tmp_path):
    path = tmp_path / "rootfs.tar"
    path.write_bytes(rootfs_tar())
    name = uniq()
    r = silod.silo("import", "-c", "CMD cat /hello", str(path), f"{name}:file")
    assert r.returncode == 0, r.stderr
    file_id = r.stdout.decode().strip()
    assert file_id.startswith("sha256:") and len(file_id) == 71   # only the id, as docker
    r = silod.silo("import", "-", input=rootfs_tar({"other": b"1"}))
    assert r.returncode == 0, r.stderr
    dangling_id = r.stdout.decode().strip().splitlines()[-1]
    try:
        assert run_out(silod, f"{name}:file") == "hello from the image\n"
        ids = [i["Id"] for i in silod.client.images(filters={"dangling": True})]
        assert dangling_id in ids and file_id not in ids
        r = silod.silo("image", "prune", "-f")
        assert r.returncode == 0, r.stderr
        assert dangling_id.removeprefix("sha256:") in r.stdout.decode()
        assert silod.request("GET", f"/images/{dangling_id}/json")[0] == 404
        assert silod.request("GET", f"/images/{name}:file/json")[0] == 200
        r = silod.silo("history", f"{name}:file")
        assert r.returncode == 0 and "Imported from -" in r.stdout.decode()
        r = silod.silo("rmi", f"{name}:file")
        assert r.returncode == 0 and f"Untagged: {name}:file" in r.stdout.decode()
    finally:
        rmi(silod, file_id, dangling_id)
    store_consistent(silod)


def test_import_rejects_bad_tar_and_leaves_nothing(silod):
    status, body = silod.request("POST", "/images/create?fromSrc=-&repo=broken",
                                 raw=rootfs_tar()[:300000],
                                 headers={"Content-Type": "application/x-tar"})
    assert status == 400 or (status == 200 and b"error" in body), body
    assert silod.request("GET", "/images/broken/json")[0] == 404
    store_consistent(silod)


# -- save / load -------------------------------------------------------------------------------


def _two_layer_image(silod, name: str) -> str:
    """busybox rootfs + a layer that deletes /a/file (whiteout), replaces /hello, and makes
    /dir opaque with a new /dir/y — loaded from a hand-made docker-archive."""
    top = layer_tar([("a/.wh.file", None), ("hello", b"replaced\n"), ("dir/", None),
                     ("dir/.wh..wh..opq", None), ("dir/y", b"y\n")])
    out = silod.client.load_image(docker_archive([rootfs_tar(), top], [f"{name}:latest"],
                                                 ["cat", "/hello"]))
    assert {"stream": f"Loaded image: {name}:latest\n"} in list(out)
    return silod.client.inspect_image(name)["Id"]


def test_layer_deletes_and_replaces_lower_files(silod):
    name = uniq()
    image_id = _two_layer_image(silod, name)
    try:
        out = run_out(silod, name, "sh", "-c",
                      "cat /hello; ls /a; ls /dir; test -e /a/file || echo gone")
        assert out == "replaced\nkeep\ny\ngone\n"
    finally:
        rmi(silod, image_id)
    store_consistent(silod)


def test_save_load_round_trip_several_images_and_tags(silod, tmp_path):
    a, b = uniq(), uniq()
    id_a = _two_layer_image(silod, a)
    id_b = import_image(silod, b)
    silod.client.tag(a, a, "second")
    archive = tmp_path / "both.tar"
    try:
        r = silod.silo("save", "-o", str(archive), a, f"{a}:second", b)
        assert r.returncode == 0, r.stderr
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
            manifest = json.load(tar.extractfile("manifest.json"))
        assert {"manifest.json", "index.json", "oci-layout"} <= names
        assert sorted(t for m in manifest for t in m["RepoTags"]) == sorted(
            [f"{a}:latest", f"{a}:second", f"{b}:latest"])
        for blob in [n for n in names if n.startswith("blobs/sha256/") and len(n) > 20]:
            with tarfile.open(archive) as tar:
                data = tar.extractfile(blob).read()
            assert hashlib.sha256(data).hexdigest() == blob.rsplit("/", 1)[1]
        rmi(silod, id_a, id_b)
        r = silod.silo("load", "-i", str(archive))
        assert r.returncode == 0, r.stderr
        assert f"Loaded image: {a}:second" in r.stdout.decode()
        assert silod.client.inspect_image(f"{a}:second")["Id"] == id_a
        assert silod.client.inspect_image(b)["Id"] == id_b
        assert run_out(silod, a) == "replaced\n"
        # the API: GET /images/{name}/get, and a quiet load from it
        data = b"".join(silod.client.get_image(b))
        rmi(silod, id_b)
        out = list(silod.client.load_image(data, quiet=True))
        assert out == [{"stream": f"Loaded image: {b}:latest\n"}]
    finally:
        rmi(silod, id_a, id_b)
    store_consistent(silod)


def _skopeo() -> str:
    path = shutil.which("skopeo")
    if not path:
        pytest.skip("skopeo is not installed (scripts/install.sh --test installs it)")
    return path


def _umoci() -> str:
    path = shutil.which("umoci")
    if not path:
        pytest.skip("umoci is not installed (scripts/install.sh --test installs it)")
    return path


def _tar_dir(path: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in sorted(os.listdir(path)):
            tar.add(os.path.join(path, entry), arcname=entry)
    return buf.getvalue()


def test_archives_interoperate_with_skopeo(silod, tmp_path):
    skopeo = _skopeo()
    name = uniq()
    image_id = _two_layer_image(silod, name)
    saved = tmp_path / "saved.tar"
    try:
        diff_ids = silod.client.inspect_image(name)["RootFS"]["Layers"]
        assert silod.silo("save", "-o", str(saved), name).returncode == 0
        # silobox → skopeo: both views of the archive, same layer digests
        for transport in (f"docker-archive:{saved}", f"oci-archive:{saved}:latest"):
            r = subprocess.run([skopeo, "inspect", "--raw", "--config", transport],
                               capture_output=True, timeout=60)
            if transport.startswith("oci-archive"):
                r = subprocess.run([skopeo, "inspect", "--config", transport],
                                   capture_output=True, timeout=60)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["rootfs"]["diff_ids"] == diff_ids
        oci = tmp_path / "oci"
        r = subprocess.run([skopeo, "copy", "-q", f"docker-archive:{saved}",
                            f"oci:{oci}:{name}"], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        rmi(silod, image_id)
        # skopeo → silobox: an OCI layout (gzip layers) and a docker-archive
        with open(oci / "index.json") as f:
            index = json.load(f)
        index["manifests"][0].setdefault("annotations", {})[
            "io.containerd.image.name"] = f"docker.io/library/{name}:oci"
        (oci / "index.json").write_text(json.dumps(index))
        out = list(silod.client.load_image(_tar_dir(str(oci))))
        assert {"stream": f"Loaded image: {name}:oci\n"} in out
        assert silod.client.inspect_image(f"{name}:oci")["RootFS"]["Layers"] == diff_ids
        rmi(silod, f"{name}:oci")
        dock = tmp_path / "skopeo-docker.tar"
        r = subprocess.run([skopeo, "copy", "-q", f"oci:{oci}:{name}",
                            f"docker-archive:{dock}:{name}:skopeo"],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        r = silod.silo("load", "-i", str(dock))
        assert r.returncode == 0, r.stderr
        assert silod.client.inspect_image(f"{name}:skopeo")["RootFS"]["Layers"] == diff_ids
        assert run_out(silod, f"{name}:skopeo") == "replaced\n"
    finally:
        rmi(silod, image_id)
    store_consistent(silod)


def test_oci_layouts_interoperate_with_umoci(silod, tmp_path):
    umoci = _umoci()
    name = uniq()
    image_id = import_image(silod, name)
    try:
        diff_ids = silod.client.inspect_image(name)["RootFS"]["Layers"]
        r = silod.silo("save", "--format", "oci", "-o", str(tmp_path / "o.tar"), name)
        assert r.returncode == 0, r.stderr
        layout = tmp_path / "layout"
        layout.mkdir()
        with tarfile.open(tmp_path / "o.tar") as tar:
            assert "manifest.json" not in tar.getnames()
            tar.extractall(layout)
        r = subprocess.run([umoci, "ls", "--layout", str(layout)], capture_output=True)
        assert r.returncode == 0 and r.stdout.decode().split() == ["latest"], r.stderr
        r = subprocess.run([umoci, "stat", "--json", "--image", f"{layout}:latest"],
                           capture_output=True)
        assert r.returncode == 0, r.stderr
        # umoci verifies every blob's digest as it unpacks
        r = subprocess.run([umoci, "raw", "unpack", "--image", f"{layout}:latest",
                            str(tmp_path / "rootfs")], capture_output=True)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "rootfs" / "hello").read_bytes() == b"hello from the image\n"
        # umoci → silobox: a new layer (umoci insert) on top of ours
        (tmp_path / "extra").write_bytes(b"from umoci\n")
        r = subprocess.run([umoci, "insert", "--image", f"{layout}:latest",
                            str(tmp_path / "extra"), "/extra"], capture_output=True)
        assert r.returncode == 0, r.stderr
        with open(layout / "index.json") as f:
            index = json.load(f)
        for m in index["manifests"]:
            m.setdefault("annotations", {})["io.containerd.image.name"] = f"{name}:umoci"
        (layout / "index.json").write_text(json.dumps(index))
        rmi(silod, image_id)
        out = list(silod.client.load_image(_tar_dir(str(layout))))
        assert {"stream": f"Loaded image: {name}:umoci\n"} in out, [o for o in out if "stream" in o or "error" in o]
        layers = silod.client.inspect_image(f"{name}:umoci")["RootFS"]["Layers"]
        assert layers[0] == diff_ids[0] and len(layers) == 2
        assert run_out(silod, f"{name}:umoci", "cat", "/extra", "/hello") == \
            "from umoci\nhello from the image\n"
    finally:
        rmi(silod, image_id, f"{name}:umoci")
    store_consistent(silod)


# -- commit, export, diff, cp -----------------------------------------------------------------


def test_commit_export_diff_round_trip_deletions(silod, tmp_path):
    name = uniq()
    image_id = _two_layer_image(silod, name)
    cid = silod.client.create_container(name, ["sh", "-c",
                                               "rm /a/keep; echo new > /new; echo m > /hello; "
                                               "rm -r /dir; mkdir /dir; echo z > /dir/z"])["Id"]
    committed = ""
    try:
        silod.client.start(cid)
        assert silod.client.wait(cid)["StatusCode"] == 0
        changes = {c["Path"]: c["Kind"] for c in silod.client.diff(cid)}
        assert changes["/a/keep"] == 2 and changes["/new"] == 1 and changes["/hello"] == 0
        assert changes["/a"] == 0 and changes["/dir/z"] == 1
        assert "/etc" not in changes and "/etc/hosts" not in changes   # the runtime's, not its
        r = silod.silo("diff", cid)
        assert "D /a/keep" in r.stdout.decode() and "A /new" in r.stdout.decode()

        r = silod.silo("commit", "-c", "CMD cat /new", "-m", "snap", cid, f"{name}:snap")
        assert r.returncode == 0, r.stderr
        committed = r.stdout.decode().strip()
        info = silod.client.inspect_image(committed)
        assert info["Config"]["Cmd"] == ["/bin/sh", "-c", "cat /new"] and len(info["RootFS"]["Layers"]) == 3
        assert silod.client.history(committed)[0]["Comment"] == "snap"
        out = run_out(silod, f"{name}:snap", "sh", "-c",
                      "cat /new /hello; ls /a; ls /dir; test -e /a/file || echo gone")
        assert out.splitlines() == ["new", "m", "z", "gone"]

        r = silod.silo("export", "-o", str(tmp_path / "fs.tar"), cid)
        assert r.returncode == 0, r.stderr
        with tarfile.open(tmp_path / "fs.tar") as tar:
            names = set(tar.getnames())
            assert tar.extractfile("hello").read() == b"m\n"
        assert {"new", "bin/busybox", "dir/z", "a"} <= names
        assert not {"a/file", "a/keep", "dir/x", "dir/y"} & names
        assert not any(".wh." in n for n in names)

        # export → import gives the same tree; save of the commit loads back with its digests
        r = silod.silo("import", str(tmp_path / "fs.tar"), f"{name}:flat")
        assert r.returncode == 0, r.stderr
        assert run_out(silod, f"{name}:flat", "cat", "/new") == "new\n"
        data = b"".join(silod.client.get_image(f"{name}:snap"))
        rmi(silod, f"{name}:snap")
        list(silod.client.load_image(data))
        assert silod.client.inspect_image(f"{name}:snap")["Id"] == committed
    finally:
        silod.client.remove_container(cid, force=True)
        rmi(silod, f"{name}:snap", f"{name}:flat", committed, image_id)
    store_consistent(silod)


def test_cp_both_ways_stopped_and_running(silod, tmp_path):
    name = uniq()
    image_id = import_image(silod, name)
    cid = silod.client.create_container(name, ["sleep", "60"])["Id"]
    try:
        # stopped: put a file, read it back, stat header
        data = layer_tar([("put.txt", b"put while stopped\n")])
        assert silod.client.put_archive(cid, "/tmp", data)
        bits, stat = silod.client.get_archive(cid, "/tmp/put.txt")
        with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as tar:
            assert tar.extractfile("put.txt").read() == b"put while stopped\n"
        assert stat["name"] == "put.txt" and stat["size"] == 18
        status, _ = silod.request("HEAD", f"/containers/{cid}/archive?path=/nope")
        assert status == 404
        status, body = silod.request("PUT", f"/containers/{cid}/archive?path=/hello", raw=data,
                                     headers={"Content-Type": "application/x-tar"})
        assert status == 400 and "not a directory" in body["message"]
        # running: the CLI both ways
        silod.client.start(cid)
        src = tmp_path / "local.txt"
        src.write_text("from the host\n")
        r = silod.silo("cp", str(src), f"{cid}:/tmp/copied.txt")
        assert r.returncode == 0, r.stderr
        r = silod.silo("exec", cid, "cat", "/tmp/copied.txt", "/tmp/put.txt")
        assert r.stdout == b"from the host\nput while stopped\n", r.stderr
        r = silod.silo("cp", f"{cid}:/hello", str(tmp_path / "back.txt"))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "back.txt").read_bytes() == b"hello from the image\n"
        r = silod.silo("cp", f"{cid}:/a", str(tmp_path))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "a" / "keep").read_bytes() == b"kept\n"
        # a symlink in the container never leads out of it
        silod.silo("exec", cid, "sh", "-c", "ln -s / /tmp/escape 2>/dev/null || "
                   "busybox ln -s / /tmp/escape")
        bits, _ = silod.client.get_archive(cid, "/tmp/escape/hello")
        with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as tar:
            assert tar.extractfile("hello").read() == b"hello from the image\n"
    finally:
        silod.client.remove_container(cid, force=True)
        rmi(silod, image_id)
    store_consistent(silod)


def _owned_tar(entries: list[tuple[str, bytes | None]], uid: int = 0, gid: int = 0) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.uid, info.gid, info.mtime = uid, gid, 1700000000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _put(silod, cid: str, path: str, data: bytes, **flags: str) -> tuple[int, object]:
    query = "&".join(f"{k}={v}" for k, v in {"path": path, **flags}.items())
    return silod.request("PUT", f"/containers/{cid}/archive?{query}", raw=data,
                         headers={"Content-Type": "application/x-tar"})


def _owner(silod, cid: str, path: str) -> tuple[int, int]:
    bits, _ = silod.client.get_archive(cid, path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as tar:
        first = tar.next()
        return first.uid, first.gid


def test_cp_into_honours_no_overwrite_dir_non_dir_and_copy_uid_gid(silod, tmp_path):
    """moby's containerExtractToDir: with noOverwriteDirNonDir a directory is never replaced by
    a non-directory nor the reverse (a 500 with moby's message); copyUIDGID gives the entries
    the container user's uid/gid, looked up in the container."""
    name = uniq()
    passwd = b"root:x:0:0:root:/root:/bin/sh\napp:x:1500:1600::/home/app:/bin/sh\n"
    group = b"root:x:0:\nstaff:x:1700:\n"
    image_id = import_image(silod, name, rootfs_tar({"etc/passwd": passwd,
                                                     "etc/group": group}))
    cids = []
    try:
        cid = silod.client.create_container(name, ["sleep", "30"])["Id"]
        cids.append(cid)
        for running in (False, True):
            if running:
                silod.client.start(cid)
            status, body = _put(silod, cid, "/", _owned_tar([("dir", b"now a file")]),
                                noOverwriteDirNonDir="1")
            assert status == 500, body
            assert body["message"] == 'cannot overwrite directory "/dir" with non-directory "/"'
            status, body = _put(silod, cid, "/", _owned_tar([("hello/", None)]),
                                noOverwriteDirNonDir="true")
            assert status == 500, body
            assert body["message"] == \
                'cannot overwrite non-directory "/hello" with directory "/"'
            # same kind, or the flag not set: replaced as before
            assert _put(silod, cid, "/", _owned_tar([("hello", b"again\n"), ("dir/", None)]),
                        noOverwriteDirNonDir="1")[0] == 200
        local = tmp_path / "dir"                          # silo cp sends the flag, as docker
        local.write_text("a file\n")
        r = silod.silo("cp", str(local), f"{cid}:/")
        assert r.returncode != 0
        assert b'cannot overwrite directory "/dir" with non-directory "/"' in r.stderr
        assert _put(silod, cid, "/", _owned_tar([("dir", b"a file now\n")]))[0] == 200
        r = silod.silo("exec", cid, "cat", "/dir", "/hello")
        assert r.stdout == b"a file now\nagain\n", r.stderr
        # ownership: the tar's without copyUIDGID (or without a user); the user's with it
        assert _put(silod, cid, "/tmp", _owned_tar([("t1", b"1")], 42, 43),
                    copyUIDGID="1")[0] == 200
        assert _owner(silod, cid, "/tmp/t1") == (42, 43)         # no Config.User
        for user, want in (("app", (1500, 1600)), ("app:staff", (1500, 1700)),
                           ("2000", (2000, 0)), ("2000:33", (2000, 33))):
            other = silod.client.create_container(name, ["true"], user=user)["Id"]
            cids.append(other)
            assert _put(silod, other, "/tmp", _owned_tar([("t", b"x")], 42, 43))[0] == 200
            assert _owner(silod, other, "/tmp/t") == (42, 43)
            assert _put(silod, other, "/tmp", _owned_tar([("t", b"x"), ("d/", None)], 42, 43),
                        copyUIDGID="1")[0] == 200
            assert _owner(silod, other, "/tmp/t") == want, user
            assert _owner(silod, other, "/tmp/d") == want, user
        bad = silod.client.create_container(name, ["true"], user="nobody-here")["Id"]
        cids.append(bad)
        status, body = _put(silod, bad, "/tmp", _owned_tar([("t", b"x")]), copyUIDGID="1")
        assert status == 400 and body["message"] == ('failed to look up user "nobody-here" in '
                                                     "container: no matching entries in passwd "
                                                     "file"), body
    finally:
        for c in cids:
            silod.client.remove_container(c, force=True)
        rmi(silod, image_id)
    store_consistent(silod)


# -- failures leave nothing half-made ---------------------------------------------------------


def test_truncated_and_corrupt_archives_leave_store_consistent(silod):
    name = uniq()
    good = docker_archive([rootfs_tar({"t": b"trunc"}), layer_tar([("x", b"1" * 50000)])],
                          [f"{name}:t"], ["true"])
    before = len(os.listdir(os.path.join(silod.root, "layers")))
    status, body = silod.request("POST", "/images/load?quiet=1", raw=good[:len(good) // 2])
    assert status == 400 or b"error" in (body if isinstance(body, bytes) else b"error"), body
    # a layer whose bytes do not match the config's diff ids
    bad_layer = layer_tar([("x", b"2" * 50000)])
    good_layers = [rootfs_tar({"t": b"corrupt"}), layer_tar([("x", b"1" * 50000)])]
    archive = docker_archive(good_layers, [f"{name}:c"], ["true"])
    swapped = archive.replace(layer_tar([("x", b"1" * 50000)]), bad_layer)
    status, body = silod.request("POST", "/images/load?quiet=1", raw=swapped)
    assert status == 400, body
    assert "diff_ids" in body["message"]
    assert silod.request("GET", f"/images/{name}:c/json")[0] == 404
    assert len(os.listdir(os.path.join(silod.root, "layers"))) == before
    store_consistent(silod)


def test_killed_silod_mid_load_is_swept_at_start(silod):
    """silod is SIGKILLed while a large load streams in; the next start removes what it left."""
    name = uniq()
    big = docker_archive([rootfs_tar({"big": os.urandom(1 << 20) * 24})], [f"{name}:k"], ["true"])
    first = big.index(b"layer.tar") + 2000
    import socket
    s = socket.socket(socket.AF_UNIX)
    s.connect(silod.socket)
    s.sendall(b"POST /images/load?quiet=1 HTTP/1.1\r\nHost: d\r\nContent-Type: application/x-tar"
              + f"\r\nContent-Length: {len(big)}\r\n\r\n".encode())
    s.sendall(big[:len(big) * 3 // 4])   # most of the layer: it is being extracted now
    deadline = time.time() + 10
    layers_dir = os.path.join(silod.root, "layers")
    while time.time() < deadline and not any(n.startswith("tmp-") for n in os.listdir(layers_dir)):
        time.sleep(0.02)
    time.sleep(0.2)
    silod.kill9()
    s.close()
    assert any(n.startswith("tmp-") for n in os.listdir(layers_dir)), first
    silod.start()
    assert not any(n.startswith("tmp-") for n in os.listdir(layers_dir))
    assert silod.request("GET", f"/images/{name}:k/json")[0] == 404
    store_consistent(silod)


def test_cp_into_a_stopped_containers_bind_takes_the_owner_from_the_container(silod, tmp_path):
    """A path under a bind of a stopped container is written in the bind's source, but
    copyUIDGID's user is still looked up in the container's own /etc/passwd, never in the
    bound tree (which may hold a passwd of its own, or be a host directory)."""
    name = uniq()
    image_id = import_image(silod, name, rootfs_tar({
        "etc/passwd": b"root:x:0:0::/root:/bin/sh\napp:x:1500:1600::/home/app:/bin/sh\n",
        "etc/group": b"root:x:0:\n"}))
    src = tmp_path / "bound"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "passwd").write_text("app:x:4242:4242::/:/bin/sh\n")
    cid = silod.client.create_container(
        name, ["true"], user="app",
        host_config=silod.client.create_host_config(binds=[f"{src}:/data"]))["Id"]
    try:
        assert _put(silod, cid, "/data", _owned_tar([("t", b"x")], 42, 43),
                    copyUIDGID="1")[0] == 200
        st = os.stat(src / "t")
        assert (st.st_uid, st.st_gid) == (1500, 1600)
    finally:
        silod.client.remove_container(cid, force=True)
        rmi(silod, image_id)
