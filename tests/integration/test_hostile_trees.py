"""Hostile container trees against every reader and mount of silod: images whose symlinks point
at the host, a VOLUME over /dev with a planted ``null``, running containers that swap a
directory for a symlink while ``cp``/``diff``/``export``/``commit`` walk them, build contexts
whose files are links to host files. Each test makes a host victim (a directory and a file
outside any root), and asserts it is unchanged afterwards and that nothing of it reached the
output (archive, layer, image, container)."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import time
import uuid

import docker
import pytest

BUSYBOX = "/bin/busybox"
pytestmark = pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="needs a static busybox")
SECRET = b"host-secret-" + uuid.uuid4().hex.encode() + b"\n"


@pytest.fixture
def api(silod):
    return silod.client


@pytest.fixture
def victim(tmp_path):
    """A host directory and a file in it, outside any root; the test's end checks that neither
    changed (entries, modes, owners, contents)."""
    d = tmp_path / "victim"
    d.mkdir(mode=0o755)
    (d / "shadow").write_bytes(SECRET)
    os.chmod(d / "shadow", 0o600)
    before = _snapshot(str(d))
    yield str(d)
    assert _snapshot(str(d)) == before, "the host victim changed"


def _snapshot(path: str) -> dict[str, tuple]:
    out = {}
    for top, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            p = os.path.join(top, name)
            st = os.lstat(p)
            data = open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(p, path)] = (st.st_mode, st.st_uid, st.st_gid, data)
    st = os.lstat(path)
    out["."] = (st.st_mode, st.st_uid, st.st_gid, None)
    return out


@pytest.fixture
def made(silod):
    """Names of containers, images and volumes a test makes; all removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    names: list[str] = []

    def new(kind: str = "c") -> str:
        names.append(f"sbxh{kind}-{tag}-{len(names)}")
        return names[-1]

    yield new
    for n in names:
        silod.request("DELETE", f"/containers/{n}?force=1&v=1")
    for n in names:
        silod.request("DELETE", f"/images/{n}?force=1")
        silod.request("DELETE", f"/volumes/{n}?force=1")


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, *, kind: bytes = b"0",
         link: str = "", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.mtime = 1700000000
    if data is not None:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def rootfs(extra, skip=()) -> bytes:
    """A busybox root (the host's static busybox) plus ``extra``: ``(name, kind, data|link)``
    with kind ``f`` (file), ``d`` (dir) or ``l`` (symlink)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "tmp", "dev", "proc", "sys"):
            if d not in skip:
                _add(tar, d, kind=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "bin/busybox", open(BUSYBOX, "rb").read(), mode=0o755)
        for applet in ("sh", "cat", "ls", "ln", "mv", "rm", "mkdir", "echo", "head", "sleep",
                       "true", "stat", "readlink"):
            _add(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
        for name, kind, value in extra:
            if kind == "f":
                _add(tar, name, value)
            elif kind == "d":
                _add(tar, name, kind=tarfile.DIRTYPE, mode=0o755)
            else:
                _add(tar, name, kind=tarfile.SYMTYPE, link=value)
    return buf.getvalue()


def import_image(silod, name: str, extra, changes=(), skip=()) -> str:
    out = silod.client.import_image_from_data(rootfs(extra, skip), repository=name,
                                              changes=list(changes) or None)
    last = json.loads(out.strip().splitlines()[-1])
    assert last["status"].startswith("sha256:"), out
    return name


def run(api, image: str, cmd: str, name: str, **host) -> tuple[int, str]:
    c = api.create_container(image, ["sh", "-c", cmd], name=name,
                             host_config=api.create_host_config(**host))
    api.start(c)
    code = api.wait(c, timeout=60)["StatusCode"]
    return code, api.logs(c, stdout=True, stderr=True).decode(errors="replace")


# ----- mount targets inside the rootfs ---------------------------------------------------------

def test_mount_targets_that_link_to_the_host_stay_inside_the_root(silod, api, made, victim,
                                                                  tmp_path):
    """Bind, volume and tmpfs targets that are symlinks to the host victim (absolute, and
    through ``..``) are resolved inside the rootfs: the container's writes land in its own
    mounts, the victim is untouched and gets no mount point or entry."""
    up = os.path.dirname(victim)
    image = import_image(silod, made("i"), [
        ("data", "l", victim), ("rel", "l", "../../../../../../.." + up + "/rel"),
        ("deep", "l", up + "/deep")])
    vol = made("v")
    src = tmp_path / "src"
    src.mkdir()
    code, out = run(api, image,
                    "echo v > /data/in-vol && echo b > /rel/in-bind && echo t > /deep/x/in-tmpfs"
                    " && cat /data/in-vol /rel/in-bind /deep/x/in-tmpfs", made(),
                    binds={vol: {"bind": "/data", "mode": "rw"},
                           str(src): {"bind": "/rel", "mode": "rw"}},
                    tmpfs={"/deep/x": ""})
    assert code == 0, out
    assert out.split() == ["v", "b", "t"]
    assert (src / "in-bind").read_bytes() == b"b\n"
    assert os.listdir(api.inspect_volume(vol)["Mountpoint"]) == ["in-vol"]
    assert sorted(os.listdir(up)) == ["src", "victim"]


@pytest.mark.parametrize("planted", ["file", "symlink"])
def test_volume_over_dev_with_a_planted_null_cannot_unmask(silod, api, made, planted):
    """An image whose VOLUME /dev carries its own ``null`` (a file with content, or a link to
    a /proc/sys file): masked paths still get the silo's real null device (1:3), never the
    planted one, so masked files read empty and no /proc/sys file becomes writable."""
    entry = ("dev/null", "f", b"PLANTED\n") if planted == "file" else \
        ("dev/null", "l", "/proc/sys/kernel/core_pattern")
    image = import_image(silod, made("i"), [entry], changes=["VOLUME /dev"])
    with open("/proc/sys/kernel/core_pattern", "rb") as f:
        pattern = f.read().strip()
    code, out = run(api, image, "cat /proc/interrupts /proc/timer_list; echo END", made())
    assert code == 0, out
    assert out.strip() == "END", out
    assert b"PLANTED" not in out.encode() and (not pattern or pattern not in out.encode())


# ----- readers: cp out, export, diff, commit ---------------------------------------------------

def _archive(api, container: str, path: str) -> bytes:
    stream, _stat = api.get_archive(container, path)
    return b"".join(stream)


def _names(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_cp_out_never_follows_a_link_to_the_host(silod, api, made, victim):
    """Links to the host victim (absolute, relative, through a directory) are archived as
    links or resolved inside the container; the victim's content never reaches the archive."""
    image = import_image(silod, made("i"), [
        ("leak", "l", victim + "/shadow"), ("leakdir", "l", victim),
        ("up", "l", "../../../../../../../../.." + victim), ("d", "d", None),
        ("d/x", "l", victim + "/shadow")])
    c = made()
    api.create_container(image, ["sleep", "60"], name=c)
    for running in (False, True):
        if running:
            api.start(c)
        # "/" of a running container holds its /proc and /sys: archived by export (one
        # filesystem), not walked whole here
        for path in ("/leak", "/leakdir", "/up", "/d", "/d/.", "/leak/.", "/up/.",
                     *([] if running else ["/"])):
            data = _archive(api, c, path)
            assert SECRET not in data, path
        members = _names(_archive(api, c, "/leak"))
        assert members["leak"].issym() and members["leak"].linkname == victim + "/shadow"
        for path in ("/leakdir/shadow", "/up/shadow", "/d/x/y"):
            with pytest.raises(docker.errors.NotFound):
                _archive(api, c, path)
        export = b"".join(api.export(c))
        assert SECRET not in export
        assert _names(export)["d/x"].issym()


def test_cp_out_of_a_pid_host_container_cannot_reach_the_host_root(silod, api, made, victim):
    """A --pid host container's /proc is the host's: /proc/1/root is the host's root. cp
    refuses that magic link (404), a container symlink to it is archived as a link, and
    export does not enter /proc."""
    image = import_image(silod, made("i"), [("hostroot", "l", "/proc/1/root"),
                                            ("via", "l", "/proc/1/root" + victim)])
    c = made()
    api.create_container(image, ["sleep", "60"], name=c,
                         host_config=api.create_host_config(pid_mode="host"))
    api.start(c)
    for path in ("/proc/1/root" + victim + "/shadow", "/proc/1/root" + victim,
                 "/hostroot" + victim + "/shadow", "/via/shadow", "/proc/self/root" + victim):
        with pytest.raises(docker.errors.NotFound):
            _archive(api, c, path)
        status, _ = silod.request("HEAD", f"/containers/{c}/archive?path={path}")
        assert status == 404, path
    for path in ("/via", "/hostroot", "/proc/1"):
        try:
            data = _archive(api, c, path)
        except docker.errors.APIError as e:
            assert e.status_code < 500, (path, e)
            continue
        assert SECRET not in data
    assert SECRET not in b"".join(api.export(c))


SWAPPER = ("mkdir -p /w/d && echo inside > /w/d/f && i=0; "
           "while [ $i -lt 100000 ]; do mv /w/d /w/d.x; ln -s {victim} /w/d; "
           "rm /w/d; mv /w/d.x /w/d; i=$((i+1)); done")


def test_walks_of_a_container_swapping_a_dir_for_a_host_link(silod, api, made, victim):
    """A running container swaps /w/d for a symlink to the host victim in a loop while diff,
    commit (unpaused), export and cp walk it: none of them leaves the container's tree, and
    the victim's content reaches no archive or image."""
    image = import_image(silod, made("i"), [("w", "d", None)])
    c = made()
    api.create_container(image, ["sh", "-c", SWAPPER.format(victim=victim)], name=c)
    api.start(c)
    deadline = time.time() + 4
    rounds = 0
    while time.time() < deadline:
        rounds += 1
        changes = api.diff(c) or []
        assert all(not ch["Path"].startswith(victim) for ch in changes)
        assert SECRET not in _archive(api, c, "/w")
        assert SECRET not in b"".join(api.export(c))
        tag = made("i")
        api.commit(c, repository=tag, pause=False)
        assert SECRET not in b"".join(api.get_image(tag))
        silod.request("DELETE", f"/images/{tag}?force=1")
    assert rounds >= 2
    api.kill(c)


# ----- the build context -----------------------------------------------------------------------

def test_build_context_links_to_host_files_are_not_followed(silod, api, made, victim):
    """A context whose files are symlinks to a host file: COPY of the link itself is refused
    (it leaves the context), COPY of a directory holding one copies the link as a link; the
    host file's content is in no image."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, "Dockerfile", b"FROM scratch\nCOPY dir /dir\n")
        _add(tar, "dir", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "dir/shadow", kind=tarfile.SYMTYPE, link=victim + "/shadow")
        _add(tar, "dir/up", kind=tarfile.SYMTYPE, link="../../../../../../.." + victim)
        _add(tar, "secret", kind=tarfile.SYMTYPE, link=victim + "/shadow")
        _add(tar, "up", kind=tarfile.SYMTYPE, link="../../../../../../.." + victim)
    context = buf.getvalue()
    tag = made("i")
    msgs = list(api.build(fileobj=io.BytesIO(context), custom_context=True, decode=True,
                          tag=tag, rm=True))
    assert not [m for m in msgs if "error" in m], msgs
    assert SECRET not in b"".join(api.get_image(tag))
    for dockerfile in ("FROM scratch\nCOPY secret /x\n", "FROM scratch\nCOPY up/shadow /x\n",
                       "FROM scratch\nCOPY dir/up/shadow /x\n", "FROM scratch\nCOPY up /x\n"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            with tarfile.open(fileobj=io.BytesIO(context)) as src:
                for m in src.getmembers():
                    if m.name != "Dockerfile":
                        tar.addfile(m)
            _add(tar, "Dockerfile", dockerfile.encode())
        tag = made("i")
        msgs = list(api.build(fileobj=io.BytesIO(buf.getvalue()), custom_context=True,
                              decode=True, tag=tag, rm=True))
        errors = [m["error"] for m in msgs if "error" in m]
        if not errors:
            assert SECRET not in b"".join(api.get_image(tag)), dockerfile
    silod.request("POST", "/build/prune")


# ----- volume population from the image --------------------------------------------------------

def test_volume_population_stays_inside_the_image(silod, api, made, victim):
    """VOLUMEs whose path is a link to the host victim, or whose content holds links to it:
    the new volumes are filled from the image only (links copied as links), the victim's
    content reaches no volume and the victim is untouched."""
    image = import_image(silod, made("i"), [
        ("data", "l", victim), ("v", "d", None), ("v/shadow", "l", victim + "/shadow"),
        ("v/dir", "l", victim), ("v/real", "f", b"image content\n")],
        changes=["VOLUME /data", "VOLUME /v"])
    c = made()
    code, out = run(api, image, "cat /v/real; readlink /v/shadow", c)
    assert code == 0, out
    assert out.split("\n")[:2] == ["image content", victim + "/shadow"]
    for m in api.inspect_container(c)["Mounts"]:
        for top, dirs, files in os.walk(m["Source"]):
            for f in files:
                p = os.path.join(top, f)
                if not os.path.islink(p):
                    assert SECRET not in open(p, "rb").read()
    silod.request("DELETE", f"/containers/{c}?v=1")


def test_workdir_through_a_magic_link_is_refused(silod, api, made, victim):
    """An image whose WORKDIR leads through /proc/1/root (the host's root in a --pid host
    container): the working directory is made inside the container or the start is refused;
    nothing is created in the victim. A WORKDIR through an image symlink is made in-root."""
    image = import_image(silod, made("i"), [("w", "l", victim + "/made")],
                         changes=[f"WORKDIR /proc/1/root{victim}/new"])
    c = api.create_container(image, ["pwd"], name=made(),
                             host_config=api.create_host_config(pid_mode="host"))
    with pytest.raises(docker.errors.APIError) as e:
        api.start(c)
    assert e.value.status_code == 400 and "stage cwd" in str(e.value)
    code, out = run(api, import_image(silod, made("i"), [("w", "l", victim + "/made")],
                                      changes=["WORKDIR /w/x"]), "pwd; ls -d " + victim
                    + "/made/x", made())
    assert code == 0 and out.split() == [victim + "/made/x"] * 2, out   # in the container


@pytest.mark.parametrize("name", ["proc", "sys", "dev"])
def test_proc_sys_dev_must_be_directories_of_the_root(silod, api, made, name):
    """An image whose /proc (/sys, /dev) is a link to another of its directories: the kernel
    filesystem would land there, where a later mount could hide it from its masks; the start
    is refused (400) rather than mounting through the link."""
    image = import_image(silod, made("i"), [("elsewhere", "d", None),
                                            (name, "l", "/elsewhere")], skip=(name,))
    c = api.create_container(image, ["true"], name=made())
    with pytest.raises(docker.errors.APIError) as e:
        api.start(c)
    assert e.value.status_code == 400, e.value
