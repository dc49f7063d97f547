"""The hostile corpus (tests/hostile.py) through every API entry point that writes a tree:
``import``, ``load``, ``pull``, ``commit``, ``build`` (the context and ``ADD`` of an archive)
and ``PUT /containers/{id}/archive`` into stopped, running and ``--pid host`` containers.

After each, a victim tree on the host, outside silod's root, must be byte for byte what it was
(names, modes, owners, link counts, contents, times), every refusal a 4xx (or an in-band error
after a streaming 200), and legitimate archives of the same kinds of entries still work.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
import time
import uuid

import pytest

import hostile
import test_images as ti

pytestmark = pytest.mark.root

CASES = sorted(hostile.cases("/victim"))


@pytest.fixture(scope="module")
def victim(run_id: str):
    base = f"/tmp/sbxv-{run_id}-{uuid.uuid4().hex[:6]}"
    os.makedirs(base)
    path = hostile.make_victim(os.path.join(base, "victim"))
    before = hostile.snapshot(path)
    yield path
    after = hostile.snapshot(path)
    shutil.rmtree(base, ignore_errors=True)
    assert after == before


def _case(victim: str, name: str) -> bytes:
    return hostile.tar_bytes(hostile.cases(victim)[name])


def _check(status: int, body: object) -> bool:
    """True if the operation succeeded; a failure must be the client's (4xx or in-band)."""
    assert status < 500, (status, body)
    if status >= 400:
        return False
    text = body.decode(errors="replace") if isinstance(body, bytes) else json.dumps(body)
    if '"errorDetail"' in text or '"error"' in text:
        assert "invalid" in text or "no such" in text.lower() or "not a directory" in text, text
        return False
    return True


def _untouched(victim: str, before: list) -> None:
    assert hostile.snapshot(victim) == before


# -- import, load --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_import(silod, victim, case):
    before = hostile.snapshot(victim)
    repo = ti.uniq("hostile")
    status, body = silod.request("POST", f"/images/create?fromSrc=-&repo={repo}&tag=1",
                                 raw=_case(victim, case),
                                 headers={"Content-Type": "application/x-tar"})
    if _check(status, body):
        ti.rmi(silod, f"{repo}:1")
    _untouched(victim, before)


@pytest.mark.parametrize("case", CASES)
def test_load(silod, victim, case):
    before = hostile.snapshot(victim)
    tag = f"{ti.uniq('hostile')}:1"
    archive = ti.docker_archive([_case(victim, case)], [tag], ["true"])
    status, body = silod.request("POST", "/images/load?quiet=1", raw=archive,
                                 headers={"Content-Type": "application/x-tar"})
    if _check(status, body):
        ti.rmi(silod, tag)
    _untouched(victim, before)
    ti.store_consistent(silod)


def test_legit_archives_still_import_load_and_run(silod):
    layer = hostile.tar_bytes(hostile.legit())
    repo = ti.uniq("legit")
    image = ti.import_image(silod, repo, ti.rootfs_tar())
    tag = f"{repo}:two"
    archive = ti.docker_archive([ti.rootfs_tar(), layer], [tag], ["true"])
    status, body = silod.request("POST", "/images/load?quiet=1", raw=archive)
    assert status == 200, body
    try:
        out = ti.run_out(silod, tag, "/bin/busybox", "sh", "-c",   # the layer's sh is "tool"
                         "cat /etc/passwd; ls /opq; ls -ln /bin/tool2; "
                         "test -e /gone || echo gone-is-gone")
        assert "root:x:0:0::/root:/bin/sh" in out
        assert "y" in out and "gone-is-gone" in out
        assert "-rwsr-xr-x" in out
    finally:
        ti.rmi(silod, tag, image)


# -- pull ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    import test_registry as tr
    if not os.path.exists(tr.REGISTRY_BIN):
        pytest.skip("docker-registry is not installed (scripts/install.sh --test installs it)")
    reg = tr.Registry(str(tmp_path_factory.mktemp("hostile-registry")))
    reg.start()
    yield reg
    reg.stop()


def _publish(reg, repo: str, layer_tar: bytes) -> None:
    layer = gzip.compress(layer_tar, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["true"]},
                         "rootfs": {"type": "layers", "diff_ids": [
                             "sha256:" + hashlib.sha256(layer_tar).hexdigest()]}}).encode()
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                      "digest": reg.put_blob(repo, config), "size": len(config)},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": reg.put_blob(repo, layer), "size": len(layer)}]}
    reg.put_manifest(repo, "1", doc, doc["mediaType"])


def test_pull(silod, victim, registry):
    for case in CASES:
        before = hostile.snapshot(victim)
        repo = f"hostile/{case}"
        _publish(registry, repo, _case(victim, case))
        ref = f"{registry.address}/{repo}"
        status, body = silod.request("POST", f"/images/create?fromImage={ref}&tag=1")
        if _check(status, body):
            ti.rmi(silod, f"{ref}:1")
        _untouched(victim, before)
    ti.store_consistent(silod)


# -- build ---------------------------------------------------------------------------------


def _build(silod, files: dict[str, bytes], extra: list[hostile.Member] | None = None
           ) -> tuple[int, object, str]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    body = buf.getvalue()
    if extra:   # hostile members appended to the context tar itself
        body = _concat_tars(body, hostile.tar_bytes(extra))
    tag = f"{ti.uniq('hostile-build')}:1"
    status, out = silod.request("POST", f"/build?t={tag}&rm=1&forcerm=1", raw=body,
                                headers={"Content-Type": "application/x-tar"})
    return status, out, tag


def _concat_tars(first: bytes, second: bytes) -> bytes:
    """One tar with the members of both (the first's end blocks dropped)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for data in (first, second):
            with tarfile.open(fileobj=io.BytesIO(data)) as src:
                for m in src.getmembers():
                    dst.addfile(m, src.extractfile(m) if m.isreg() else None)
    return out.getvalue()


@pytest.mark.parametrize("case", CASES)
def test_build_context_and_add_of_an_archive(silod, victim, case):
    before = hostile.snapshot(victim)
    evil = gzip.compress(_case(victim, case), mtime=0)
    for files, extra in (
            ({"Dockerfile": b"FROM scratch\nCOPY . /\n"}, hostile.cases(victim)[case]),
            ({"Dockerfile": b"FROM scratch\nADD evil.tar.gz /\n", "evil.tar.gz": evil}, None),
            ({"Dockerfile": b"FROM scratch\nADD evil.tar.gz /sub/dir/\n",
              "evil.tar.gz": evil}, None)):
        status, out, tag = _build(silod, files, extra)
        if _check(status, out) and b"Successfully built" in (out or b""):
            ti.rmi(silod, tag)
        _untouched(victim, before)


# -- commit --------------------------------------------------------------------------------


def test_commit_of_a_hostile_container(silod, victim):
    """What a container writes (links out, magic links, files named like whiteouts, a
    directory beside its own whiteout marker) is committed and run again, harmlessly."""
    before = hostile.snapshot(victim)
    cid = silod.client.create_container("busybox", ["sleep", "60"])["Id"]
    tags = []
    try:
        silod.client.start(cid)
        script = (f"ln -s {victim} /esc; ln -s {hostile.climb(victim)} /up; "
                  f"ln -s /proc/self/root{victim} /magic; mkdir -p /x /y; "
                  f"touch /.wh.x /x/.wh..wh..opq /y/.wh.passwd; ln -s {victim} /y/passwd; "
                  f"mkdir /esc2; echo planted > /esc2/passwd; rm -rf /esc2; "
                  f"ln -s {victim} /esc2; chmod 4755 /bin/busybox 2>/dev/null; true")
        r = silod.silo("exec", cid, "sh", "-c", script)
        assert r.returncode == 0, r.stderr
        for pause in (True, False):
            image = silod.client.commit(cid, repository=ti.uniq("hostile-commit"), tag="1",
                                        pause=pause)["Id"]
            tags.append(image)
            _untouched(victim, before)
            out = ti.run_out(silod, image, "sh", "-c",
                             "readlink /esc /y/passwd; ls /x | wc -l; echo ok")
            assert out.strip().endswith("ok"), out
            _untouched(victim, before)
        silod.client.stop(cid, timeout=1)
        image = silod.client.commit(cid, repository=ti.uniq("hostile-commit"), tag="2")["Id"]
        tags.append(image)
        _untouched(victim, before)
    finally:
        silod.client.remove_container(cid, force=True)
        ti.rmi(silod, *tags)
    ti.store_consistent(silod)


# -- cp into a container -------------------------------------------------------------------


def _put(silod, cid: str, path: str, data: bytes) -> tuple[int, object]:
    return silod.request("PUT", f"/containers/{cid}/archive?path={path}", raw=data,
                         headers={"Content-Type": "application/x-tar"})


@pytest.fixture(scope="module")
def containers(silod):
    """A stopped and a running container of busybox, and a running one with --pid host."""
    made = {}
    try:
        made["stopped"] = silod.client.create_container("busybox", ["sleep", "600"])["Id"]
        made["running"] = silod.client.create_container("busybox", ["sleep", "600"])["Id"]
        silod.client.start(made["running"])
        made["pidhost"] = silod.client.create_container(
            "busybox", ["sleep", "600"],
            host_config=silod.client.create_host_config(pid_mode="host"))["Id"]
        silod.client.start(made["pidhost"])
        yield made
    finally:
        for cid in made.values():
            silod.client.remove_container(cid, force=True)


@pytest.mark.parametrize("case", CASES)
def test_cp_into_containers(silod, victim, containers, case):
    data = _case(victim, case)
    for kind, cid in containers.items():
        before = hostile.snapshot(victim)
        for path in ("/", "/tmp"):
            status, body = _put(silod, cid, path, data)
            _check(status, body)
            _untouched(victim, before)


def test_cp_destination_through_host_proc_is_refused(silod, victim, containers):
    """A --pid host container's /proc is the host's: /proc/1/root leads to the host's root
    unless magic links are refused while resolving the destination."""
    before = hostile.snapshot(victim)
    data = hostile.tar_bytes([hostile.f("passwd", b"owned\n", 0o4755)])
    for path in (f"/proc/1/root{victim}", f"/proc/self/root{victim}", "/proc/1/cwd",
                 f"/proc/{os.getpid()}/root{victim}"):
        status, body = _put(silod, containers["pidhost"], path, data)
        assert 400 <= status < 500, (path, status, body)
    silod.silo("exec", containers["pidhost"], "ln", "-sf", f"/proc/1/root{victim}", "/tmp/h")
    status, body = _put(silod, containers["pidhost"], "/tmp/h", data)
    assert 400 <= status < 500, (status, body)
    status, body = _put(silod, containers["pidhost"], "/tmp",
                        hostile.tar_bytes([hostile.f("h/passwd")]))
    assert 400 <= status < 500, (status, body)
    _untouched(victim, before)


def test_cp_into_a_container_that_swaps_directories_under_us(silod, victim, containers):
    """The container replaces the destination's subdirectory by a link to the host path (and
    back) as fast as it can while we write into it: nothing may land outside."""
    cid = containers["running"]
    before = hostile.snapshot(victim)
    silod.silo("exec", cid, "mkdir", "-p", "/race/d")
    swapper = silod.client.exec_create(cid, ["sh", "-c",
                                             "end=$(( $(date +%s) + 4 )); "
                                             "while [ $(date +%s) -lt $end ]; do "
                                             "mv /race/d /race/d2 2>/dev/null; "
                                             f"ln -s {victim} /race/d 2>/dev/null; "
                                             "rm -f /race/d; mv /race/d2 /race/d 2>/dev/null; "
                                             "done"])["Id"]
    thread = threading.Thread(target=silod.client.exec_start, args=(swapper,), daemon=True)
    thread.start()
    members = [hostile.f(f"d/f{i}", b"x" * 100, 0o4755) for i in range(200)]
    data = hostile.tar_bytes(members)
    deadline = time.time() + 3
    tries = 0
    while time.time() < deadline:
        status, body = _put(silod, cid, "/race", data)
        _check(status, body)
        tries += 1
    thread.join(10)
    assert tries > 0
    _untouched(victim, before)


def test_legit_cp_still_works_everywhere(silod, containers):
    data = hostile.tar_bytes(hostile.legit())
    for kind, cid in containers.items():
        status, body = _put(silod, cid, "/tmp", data)
        assert status == 200, (kind, body)
        bits, _ = silod.client.get_archive(cid, "/tmp/bin/tool")
        with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as tar:
            info = tar.next()
            assert info.mode & 0o7777 == 0o4755 and tar.extractfile(info).read() == b"tool\n"


def test_cp_owner_lookup_reads_only_the_containers_own_files(silod, victim):
    """copyUIDGID reads the container's /etc/passwd: a link to the host's (through a --pid
    host container's /proc) or a fifo there is no entry, never the host's file or a hang."""
    cid = silod.client.create_container(
        "busybox", ["sleep", "600"], user="root",
        host_config=silod.client.create_host_config(pid_mode="host"))["Id"]
    try:
        silod.client.start(cid)
        data = hostile.tar_bytes([hostile.f("owned", b"x\n")])
        for plant in ("ln -sf /proc/1/root/etc/passwd /etc/passwd",
                      "rm -f /etc/passwd; mkfifo /etc/passwd"):
            r = silod.silo("exec", "-u", "0", cid, "sh", "-c", plant)
            assert r.returncode == 0, r.stderr
            status, body = silod.request(
                "PUT", f"/containers/{cid}/archive?path=/tmp&copyUIDGID=1", raw=data,
                headers={"Content-Type": "application/x-tar"})
            assert status == 400, (plant, status, body)
            assert "failed to look up user" in body["message"]
    finally:
        silod.client.remove_container(cid, force=True)
