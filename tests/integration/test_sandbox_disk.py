"""Sandbox disks end to end: size limit (ENOSPC inside, nothing else breaks), the plain-directory
kind, ``silo sandbox ls/inspect/expand/attach/detach``, start refused while attached, and no
loop device or mount left by rm or by a daemon killed mid-way (orphans removed at start)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid

import docker
import pytest

from silobox.storage import disk as D
from tarutil import tar_of

IMAGE = "busybox"
pytestmark = pytest.mark.skipif(bool(D.loop_supported()), reason=f"sandbox disks unavailable")


@pytest.fixture
def api(silod):
    return silod.client


def _loops_of_root(root: str) -> list[D.LoopDevice]:
    root = os.path.realpath(root) + "/"
    return [d for d in D.loop_devices() if d.backing_file.startswith(root)]


def _mounts(prefix: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [l.split()[4] for l in f if l.split()[4].startswith(prefix)]


@pytest.fixture
def ctr(silod):
    """Unique container names; at the end each is removed and nothing of it is left on the host:
    no loop device backed by its disk, no mount under its directory."""
    made: list[str] = []
    ids: list[str] = []

    def new() -> str:
        made.append(f"sbxd-{uuid.uuid4().hex[:8]}")
        return made[-1]

    def track(name: str) -> str:
        status, body = silod.request("GET", f"/containers/{name}/json")
        if status == 200:
            ids.append(body["Id"])
        return name

    new.track = track  # type: ignore[attr-defined]
    yield new
    for n in made:
        status, body = silod.request("GET", f"/containers/{n}/json")
        if status == 200:
            ids.append(body["Id"])
            silod.request("POST", f"/silobox/sandboxes/{n}/detach")
            silod.request("DELETE", f"/containers/{n}?force=1&v=1")
    deadline = time.time() + 3
    left: list = []
    while time.time() < deadline:
        left = [d for d in _loops_of_root(silod.root) if any(i in d.backing_file for i in ids)]
        left += [m for i in ids for m in _mounts(os.path.join(silod.root, "containers", i))]
        if not left:
            break
        time.sleep(0.05)
    assert not left, f"left behind: {left}"


def _run(silod, *args: str) -> subprocess.CompletedProcess:
    return silod.silo("run", *args)


# Tests of the default kind: meaningless when the suite is run with another daemon default
# (SILOBOX_STORAGE_OPTS=sandbox=dir, to compare the suite's time with directories).
needs_disk_default = pytest.mark.skipif(
    "sandbox=dir" in os.environ.get("SILOBOX_STORAGE_OPTS", ""),
    reason="the daemon runs with SILOBOX_STORAGE_OPTS=sandbox=dir")


def _pool_loops(silod) -> list[D.LoopDevice]:
    return _loops_of_root(os.path.join(silod.root, "sandbox-pool"))


def _wait_pool(silod, n: int) -> list[D.LoopDevice]:
    deadline = time.time() + 5
    while len(_pool_loops(silod)) != n and time.time() < deadline:
        time.sleep(0.02)
    return _pool_loops(silod)


@needs_disk_default
def test_disk_is_the_default_from_an_attached_pool(silod, api, ctr):
    """No storage option: a disk of the daemon's default size, from a pool whose disks are
    attached ahead of time; the container's device is the one the pool attached."""
    assert len(_wait_pool(silod, D.POOL_TARGET)) == D.POOL_TARGET
    ready = {d.path for d in _pool_loops(silod)}
    c = ctr()
    r = silod.silo("run", "-d", "--name", c, IMAGE, "sleep", "30")
    assert r.returncode == 0, r.stderr
    info = api.inspect_container(c)
    gd = info["GraphDriver"]["Data"]
    assert gd["sandbox"] == "disk" and gd["size"] == str(D.DEFAULT_SIZE)
    assert D.loops_of(gd["disk"])[0] in ready           # attached by the pool, not at start
    ex = api.exec_create(c, ["sh", "-c", "df -k / | tail -1"])
    assert int(api.exec_start(ex).split()[1]) > 19 * 1024 * 1024
    assert len(_wait_pool(silod, D.POOL_TARGET)) == D.POOL_TARGET   # refilled
    api.remove_container(c, force=True)
    deadline = time.time() + 3
    while (D.loops_of(gd["disk"]) or os.listdir(os.path.join(silod.root, "sandbox-pool")) and
           [n for n in os.listdir(os.path.join(silod.root, "sandbox-pool"))
            if n.startswith("trash-")]) and time.time() < deadline:
        time.sleep(0.02)
    assert not D.loops_of(gd["disk"]) and not os.path.exists(gd["disk"])
    assert not [n for n in os.listdir(os.path.join(silod.root, "sandbox-pool"))
                if n.startswith("trash-")]                 # the image is deleted, off the rm path


@needs_disk_default
def test_created_never_started_and_removed_leaves_no_device(silod, api, ctr):
    c = ctr()
    r = silod.silo("create", "--name", c, IMAGE, "true")
    assert r.returncode == 0, r.stderr
    disk = api.inspect_container(c)["GraphDriver"]["Data"]["disk"]
    assert D.loops_of(disk)                              # the pool still holds its device
    api.put_archive(c, "/", tar_of({"put-while-created": b"x"}))   # a helper mounts the disk
    bits, _ = api.get_archive(c, "/put-while-created")
    assert b"".join(bits)
    api.remove_container(c)
    deadline = time.time() + 3
    while D.loops_of(disk) and time.time() < deadline:
        time.sleep(0.02)
    assert not D.loops_of(disk) and not os.path.exists(disk)


@needs_disk_default
def test_pool_devices_go_at_stop_and_kill9(silod):
    """The pool's attached disks: detached and deleted when silod stops, detached by the kernel
    when it is killed (the pool's fds were their only openers), deleted at the next start."""
    assert len(_wait_pool(silod, D.POOL_TARGET)) == D.POOL_TARGET
    pool = os.path.join(silod.root, "sandbox-pool")
    silod.stop()
    try:
        assert _pool_loops(silod) == []
        assert not [n for n in os.listdir(pool) if n.startswith(("ready-", "trash-"))]
    finally:
        silod.start()
    assert len(_wait_pool(silod, D.POOL_TARGET)) == D.POOL_TARGET
    before = sorted(n for n in os.listdir(pool) if n.startswith("ready-"))
    silod.kill9()
    try:
        assert _wait_pool(silod, 0) == []
    finally:
        silod.start()
    assert not set(before) & set(os.listdir(pool))      # the killed daemon's ready disks went
    assert len(_wait_pool(silod, D.POOL_TARGET)) == D.POOL_TARGET


def test_daemon_default_dir_and_no_loop_devices(silod, api, ctr, tmp_path):
    """silod --storage-opt sandbox=dir: plain directories by default, no pool disks; a
    container may still ask for a disk."""
    other = type(silod)(str(tmp_path / "d"), uuid.uuid4().hex[:6])
    os.environ["SILOBOX_STORAGE_OPTS"] = "sandbox=dir"
    try:
        other.start()
    finally:
        del os.environ["SILOBOX_STORAGE_OPTS"]
    try:
        status, body = other.request("POST", "/containers/create",
                                     {"Image": IMAGE, "Cmd": ["true"]})
        assert status == 201, body
        status, info = other.request("GET", f"/containers/{body['Id']}/json")
        assert info["GraphDriver"]["Data"]["sandbox"] == "dir"
        assert _loops_of_root(other.root) == []
        status, body2 = other.request("POST", "/containers/create", {
            "Image": IMAGE, "Cmd": ["true"], "HostConfig": {"StorageOpt": {"size": "32M"}}})
        assert status == 201, body2
        status, info = other.request("GET", f"/containers/{body2['Id']}/json")
        assert info["GraphDriver"]["Data"]["sandbox"] == "disk"
        for cid in (body["Id"], body2["Id"]):
            assert other.request("DELETE", f"/containers/{cid}")[0] == 204
    finally:
        other.stop()
        other.remove_cgroup_parent()
    assert _loops_of_root(other.root) == []
    assert not [h for h in os.listdir("/sys/fs/cgroup")
                if os.path.isdir(os.path.join("/sys/fs/cgroup", h, other.cgroup_parent))]


def test_disk_is_sized(silod, api, ctr):
    c = ctr()
    r = _run(silod, "--name", c, "--storage-opt", "size=64M", IMAGE, "sh", "-c",
             "df -k / | tail -1")
    assert r.returncode == 0, r.stderr
    total_kb = int(r.stdout.split()[1])
    assert 50 * 1024 < total_kb <= 64 * 1024
    info = api.inspect_container(c)
    assert info["HostConfig"]["StorageOpt"] == {"size": "64M"}
    gd = info["GraphDriver"]["Data"]
    assert gd["sandbox"] == "disk" and gd["size"] == str(64 * 1024 * 1024)
    assert os.path.exists(gd["disk"]) and gd["disk"].endswith(f"{info['Id']}/sandbox.img")
    deadline = time.time() + 3                         # stopped: detached (the exit is
    while D.loops_of(gd["disk"]) and time.time() < deadline:   # recorded asynchronously)
        time.sleep(0.02)
    assert not D.loops_of(gd["disk"])


def test_write_past_the_size_is_enospc_and_nothing_else_breaks(silod, ctr):
    c = ctr()
    script = ("dd if=/dev/zero of=/big bs=1M count=100 2>/tmp/err; echo dd=$?; "
              "grep -o 'No space left on device' /tmp/err; rm /big; echo ok > /after; cat /after")
    r = _run(silod, "--name", c, "--storage-opt", "size=32M", IMAGE, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "dd=1" in out and "No space left on device" in out and out.endswith("ok\n")
    # the host and the daemon are fine: another container runs normally
    r = _run(silod, "--rm", IMAGE, "echo", "still fine")
    assert r.stdout == b"still fine\n"


def test_plain_directory_sandbox(silod, api, ctr):
    c = ctr()
    r = _run(silod, "--name", c, "--storage-opt", "sandbox=dir", IMAGE, "sh", "-c",
             "echo x > /file")
    assert r.returncode == 0, r.stderr
    info = api.inspect_container(c)
    assert info["GraphDriver"]["Data"]["sandbox"] == "dir"
    assert not os.path.exists(os.path.join(silod.root, "containers", info["Id"], "sandbox.img"))
    sb = json.loads(silod.silo("sandbox", "inspect", c).stdout)[0]
    assert sb["Kind"] == "dir" and sb["Used"] == 2
    r = silod.silo("create", "--storage-opt", "sandbox=dir", "--storage-opt", "size=1G", IMAGE)
    assert r.returncode != 0 and b"only for sandbox disks" in r.stderr
    r = silod.silo("create", "--storage-opt", "speed=fast", IMAGE)
    assert r.returncode != 0 and b"Unknown option speed" in r.stderr


def test_sandbox_ls_inspect_expand(silod, api, ctr):
    c = ctr()
    r = _run(silod, "--name", c, "--storage-opt", "size=64M", IMAGE, "sh", "-c",
             "dd if=/dev/zero of=/f bs=1M count=8 2>/dev/null")
    assert r.returncode == 0, r.stderr
    r = silod.silo("sandbox", "ls")
    assert r.returncode == 0
    line = [l for l in r.stdout.decode().splitlines() if f" {c} " in l][0]
    assert " disk " in line and "64MiB" in line
    rec = json.loads(silod.silo("sandbox", "inspect", c).stdout)[0]
    assert rec["Kind"] == "disk" and rec["Size"] == 64 * 1024 * 1024
    assert rec["Used"] >= 8 * 1024 * 1024 and rec["LoopDevice"] == "" and not rec["Active"]
    assert rec["FileSize"] < rec["Size"]
    r = silod.silo("sandbox", "expand", c, "128M")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == "128MiB"
    r = silod.silo("start", "-a", c)     # the container sees the grown disk and its data
    r = _run(silod, "--rm", IMAGE, "true")
    rec = json.loads(silod.silo("sandbox", "inspect", c).stdout)[0]
    assert rec["Size"] == 128 * 1024 * 1024
    r = silod.silo("sandbox", "expand", c, "64M")
    assert r.returncode != 0 and b"cannot shrink" in r.stderr


def test_attach_detach_and_start_refused_while_attached(silod, api, ctr, tmp_path):
    c = ctr()
    r = silod.silo("create", "--name", c, "--storage-opt", "sandbox=disk", IMAGE, "sh", "-c",
                   "echo changed > /etc/motd2; sleep 30")
    assert r.returncode == 0, r.stderr
    ctr.track(c)
    # running: refused
    api.start(c)
    r = silod.silo("sandbox", "attach", c)
    assert r.returncode != 0 and b"is running" in r.stderr
    api.kill(c)
    api.wait(c, timeout=30)
    # read-only view of the disk: upper/ holds only the container's changes
    mnt = str(tmp_path / "disk")
    r = silod.silo("sandbox", "attach", c, mnt)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == mnt
    assert open(os.path.join(mnt, "upper", "etc", "motd2")).read() == "changed\n"
    assert not os.path.exists(os.path.join(mnt, "upper", "bin"))
    with pytest.raises(OSError):
        open(os.path.join(mnt, "upper", "new"), "w")
    rec = json.loads(silod.silo("sandbox", "inspect", c).stdout)[0]
    assert rec["Attached"]["MountPoint"] == mnt and rec["LoopDevice"].startswith("/dev/loop")
    # start is refused until detached
    with pytest.raises(docker.errors.APIError) as e:
        api.start(c)
    assert e.value.status_code == 409 and "silo sandbox detach" in str(e.value)
    r = silod.silo("sandbox", "attach", c, mnt)
    assert r.returncode != 0 and b"already attached" in r.stderr
    assert silod.silo("sandbox", "detach", c).returncode == 0
    assert not _mounts(mnt)
    # merged view, read-write: the whole filesystem; a change made here is seen by the container
    r = silod.silo("sandbox", "attach", "--merged", "--rw", c)
    assert r.returncode == 0, r.stderr
    merged = r.stdout.decode().strip()
    assert os.path.exists(os.path.join(merged, "bin", "busybox"))
    assert open(os.path.join(merged, "etc", "motd2")).read() == "changed\n"
    with open(os.path.join(merged, "etc", "from-host"), "w") as f:
        f.write("host\n")
    assert silod.silo("sandbox", "detach", c).returncode == 0
    assert not os.path.exists(merged)
    r = silod.silo("sandbox", "detach", c)
    assert r.returncode != 0 and b"not attached" in r.stderr
    api.start(c)
    ex = api.exec_create(c, ["cat", "/etc/from-host"])
    assert api.exec_start(ex) == b"host\n"
    api.kill(c)


def _mount_options(point: str) -> set[str]:
    """The per-mount options (mountinfo's sixth field) of the mount at ``point``."""
    with open("/proc/self/mountinfo") as f:
        rows = [l.split() for l in f if l.split()[4] == point]
    assert rows, f"{point} is not mounted"
    return set(rows[-1][5].split(","))


@pytest.mark.parametrize("kind,merged", [("disk", False), ("disk", True), ("dir", False),
                                         ("dir", True)])
def test_attached_sandbox_is_inert_on_the_host(silod, ctr, tmp_path, kind, merged):
    """What a container made (a setuid-root program, a device node) is mounted on the host
    nosuid,nodev,noexec: neither runs setuid nor opens the device; --exec lifts noexec only."""
    c = ctr()
    r = _run(silod, "--name", c, "--storage-opt", f"sandbox={kind}", IMAGE, "sh", "-c",
             "cp /bin/busybox /suid && chmod 4755 /suid && mknod /null2 c 1 3")
    assert r.returncode == 0, r.stderr
    ctr.track(c)
    flag = ["--merged"] if merged else []
    mnt = str(tmp_path / "m")
    r = silod.silo("sandbox", "attach", *flag, c, mnt)
    assert r.returncode == 0, r.stderr
    top = mnt if merged else os.path.join(mnt, "upper")
    st = os.stat(os.path.join(top, "suid"))
    assert st.st_mode & 0o4000 and st.st_uid == 0     # the bit is there, and is inert:
    assert {"nosuid", "nodev", "noexec", "ro"} <= _mount_options(mnt)
    with pytest.raises(PermissionError):
        subprocess.run([os.path.join(top, "suid"), "true"], check=False)
    with pytest.raises(PermissionError):
        open(os.path.join(top, "null2"), "rb")
    assert silod.silo("sandbox", "detach", c).returncode == 0
    r = silod.silo("sandbox", "attach", "--exec", *flag, c, mnt)
    assert r.returncode == 0, r.stderr
    opts = _mount_options(mnt)
    assert {"nosuid", "nodev"} <= opts and "noexec" not in opts
    assert silod.silo("sandbox", "detach", c).returncode == 0
    assert not _mounts(mnt)


def test_attach_refuses_mount_points_in_container_trees_and_state(silod, ctr, tmp_path):
    """Mount points under silod's state or runtime directory (but the container's own mnt),
    under /proc (running containers' roots) or in a directory bound into a container are
    refused with 400, through a symlink too; nothing is mounted or created."""
    c, other, running = ctr(), ctr(), ctr()
    assert _run(silod, "--name", c, IMAGE, "true").returncode == 0
    ctr.track(c)
    assert _run(silod, "-d", "--name", running, IMAGE, "sleep", "60").returncode == 0
    ctr.track(running)
    pid = silod.client.inspect_container(running)["State"]["Pid"]
    via_proc = tmp_path / "via-proc"
    via_proc.symlink_to(f"/proc/{pid}/root/tmp")
    shared = tmp_path / "shared"
    shared.mkdir()
    r = silod.silo("create", "--name", other, "-v", f"{shared}:/data", IMAGE, "true")
    assert r.returncode == 0, r.stderr
    ctr.track(other)
    other_id = silod.client.inspect_container(other)["Id"]
    link = tmp_path / "link"
    link.symlink_to(os.path.join(silod.root, "containers", other_id))
    for point in (os.path.join(silod.root, "containers", other_id, "mnt"),
                  os.path.join(silod.root, "volumes", "x"), os.path.join(silod.exec_root, "x"),
                  f"/proc/{pid}/root/tmp/x", str(via_proc / "x"), str(shared / "x"),
                  str(link / "y")):
        status, body = silod.request("POST", f"/silobox/sandboxes/{c}/attach",
                                     {"MountPoint": point})
        assert status == 400, (point, status, body)
        assert not os.path.lexists(point)
    assert not _mounts(silod.root + "/containers/" + other_id)
    status, body = silod.request("POST", f"/silobox/sandboxes/{c}/attach", {})
    assert status == 200, body   # the default, <root>/containers/<id>/mnt, is the one allowed
    assert silod.silo("sandbox", "detach", c).returncode == 0


def test_rm_of_an_attached_container_cleans_up(silod, ctr, tmp_path):
    c = ctr()
    assert _run(silod, "--name", c, IMAGE, "true").returncode == 0
    ctr.track(c)
    r = silod.silo("sandbox", "attach", "--merged", c, str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    r = silod.silo("rm", c)
    assert r.returncode == 0, r.stderr
    assert not _mounts(str(tmp_path))


def test_daemon_restart_removes_orphans_and_keeps_running_disks(silod, api, ctr):
    c = ctr()
    r = silod.silo("run", "-d", "--name", c, "--storage-opt", "sandbox=disk", IMAGE, "sleep",
                   "60")
    assert r.returncode == 0, r.stderr
    ctr.track(c)
    cid = api.inspect_container(c)["Id"]
    # an orphan: a disk of a container the store does not know, attached and mounted
    orphan = os.path.join(silod.root, "containers", "f" * 64)
    os.makedirs(os.path.join(orphan, "sandbox"))
    D.format_image(os.path.join(orphan, "sandbox.img"), 32 * 1024 * 1024, orphan)
    D.mount_image(os.path.join(orphan, "sandbox.img"), os.path.join(orphan, "sandbox"))
    try:
        silod.kill9()
        silod.start()
        deadline = time.time() + 3
        while time.time() < deadline and (_mounts(orphan) or D.loops_of(
                os.path.join(orphan, "sandbox.img"))):
            time.sleep(0.05)
        assert not _mounts(orphan)
        assert not D.loops_of(os.path.join(orphan, "sandbox.img"))
        # the running container kept its disk and works
        assert api.inspect_container(c)["State"]["Running"]
        ex = api.exec_create(c, ["sh", "-c", "echo alive > /x; cat /x"])
        assert api.exec_start(ex) == b"alive\n"
        sandbox = os.path.join(silod.root, "containers", cid, "sandbox.img")
        assert len(D.loops_of(sandbox)) == 1
    finally:
        for m in reversed(_mounts(orphan)):
            subprocess.run(["umount", "-l", m], check=False)
        subprocess.run(["rm", "-rf", orphan], check=False)
    api.remove_container(c, force=True)


def test_expand_while_running(silod, api, ctr):
    """Online grow where the daemon may resize a mounted ext4; a clear refusal otherwise."""
    c = ctr()
    r = silod.silo("run", "-d", "--name", c, "--storage-opt", "size=64M", IMAGE, "sleep", "30")
    assert r.returncode == 0, r.stderr
    r = silod.silo("sandbox", "expand", c, "96M")
    if r.returncode == 0:
        ex = api.exec_create(c, ["sh", "-c", "df -k / | tail -1"])
        assert int(api.exec_start(ex).split()[1]) > 80 * 1024
    else:
        assert b"stop the container, then expand it" in r.stderr
        rec = json.loads(silod.silo("sandbox", "inspect", c).stdout)[0]
        assert rec["Size"] == 64 * 1024 * 1024        # nothing changed
    api.kill(c)


def test_without_loop_devices_silod_falls_back_to_directories(silod, tmp_path):
    """silod probes loop devices at start: in a mount namespace where /dev/loop-control is an
    empty file (no loop device can be had) it warns and gives every container a directory
    sandbox, and refuses a disk with the reason."""
    other = type(silod)(f"/tmp/sbxn-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:6])  # short
    os.makedirs(other.base)                                    # paths: the shims' sockets
    empty = tmp_path / "no-loop-control"
    empty.write_bytes(b"")
    try:
        with open(other.log_path, "ab") as log:
            other.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 f"mount --bind {empty} /dev/loop-control && exec \"$0\" \"$@\"",
                 sys.executable, "-m", "silobox.daemon", "--debug", "--root",
                 other.root, "--exec-root", other.exec_root, "--cgroup-parent",
                 other.cgroup_parent, "-H", f"unix://{other.socket}"],
                stdout=log, stderr=log, start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            assert other.proc.poll() is None, other.log()
            try:
                if other.request("GET", "/_ping")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        with open(other.log_path, errors="replace") as f:
            assert "sandbox disks are unavailable" in f.read()
        status, body = other.request("POST", "/containers/create",
                                     {"Image": IMAGE, "Cmd": ["true"],
                                      "HostConfig": {"NetworkMode": "none"}})
        assert status == 201, body
        info = other.request("GET", f"/containers/{body['Id']}/json")[1]
        assert info["GraphDriver"]["Data"]["sandbox"] == "dir"
        started = other.request("POST", f"/containers/{body['Id']}/start")
        assert started[0] == 204, started
        assert other.request("POST", f"/containers/{body['Id']}/wait")[1]["StatusCode"] == 0
        assert other.request("DELETE", f"/containers/{body['Id']}")[0] == 204
        status, body = other.request("POST", "/containers/create", {
            "Image": IMAGE, "Cmd": ["true"], "HostConfig": {"StorageOpt": {"size": "1G"}}})
        assert status == 503 and "sandbox disks are unavailable on this host" in \
            body["message"], body
    finally:
        other.stop()
        other.remove_cgroup_parent()
        shutil.rmtree(other.base, ignore_errors=True)
    assert _loops_of_root(other.root) == []


def test_a_vm_share_namespace_keeps_no_sandbox_disk(silod, api, ctr, tmp_path):
    """virtiofsd is started (as a utility VM starts it) while a container runs: once the
    container stops its disk is free, also after virtiofsd has pivoted into its share.
    Before, its namespace's copy of the host's mounts kept the disk attached, in no mount
    table, for the VM's whole life: the container could not start again (409)."""
    import socket
    from silobox.compute.uvm import vm
    if not os.access(vm.VIRTIOFSD, os.X_OK):
        pytest.skip(f"{vm.VIRTIOFSD} is not installed")
    c = ctr()
    r = silod.silo("run", "-d", "--name", c, IMAGE, "sleep", "60")
    assert r.returncode == 0, r.stderr
    ctr.track(c)
    image = os.path.join(silod.root, "containers", api.inspect_container(c)["Id"], "sandbox.img")
    assert D.loops_of(image)
    share = tmp_path / "share"
    share.mkdir()
    sock = str(tmp_path / "vfs.sock")
    proc = subprocess.Popen(
        [vm.VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={share}", "-o",
         "sandbox=namespace", "-o", "log_level=err"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: vm._share_tree(str(share), {"usr": "/usr"}, True))
    client = socket.socket(socket.AF_UNIX)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            assert proc.poll() is None and time.monotonic() < deadline, "virtiofsd did not start"
            time.sleep(0.01)
        api.kill(c)
        api.wait(c, timeout=30)
        assert D.wait_detached(image, 5.0, scan=True), "the stopped container's disk is held"
        client.connect(sock)   # virtiofsd sets up its sandbox (pivots) once QEMU connects
        api.start(c)
        api.kill(c)
        api.wait(c, timeout=30)
        assert D.wait_detached(image, 5.0, scan=True), "the stopped container's disk is held"
    finally:
        client.close()
        proc.kill()
        proc.wait()


def test_a_copy_of_the_disk_in_another_namespace_does_not_stop_a_start(silod, api, ctr):
    """A mount namespace made elsewhere on the host while a container runs (another tool's, a
    service's private /tmp: the host's mounts are private) keeps a copy of its disk's mount,
    and so the disk, after the container stops. The container starts again on that same
    filesystem, cp works, a read-only host attach is refused with the reason, and the disk
    goes with the other namespace."""
    c = ctr()
    r = silod.silo("run", "-d", "--name", c, IMAGE, "sh", "-c",
                   "echo run >> /runs; sleep 60")
    assert r.returncode == 0, r.stderr
    ctr.track(c)
    image = os.path.join(silod.root, "containers", api.inspect_container(c)["Id"], "sandbox.img")
    other = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "60"])
    try:
        time.sleep(0.2)   # unshare has made its namespace (it execs sleep right after)
        api.kill(c)
        api.wait(c, timeout=30)
        assert not D.wait_detached(image, 0.5, scan=True), "the other namespace holds the disk"
        api.start(c)
        api.kill(c)
        api.wait(c, timeout=30)
        r = silod.silo("cp", f"{c}:/runs", "-")
        assert r.returncode == 0, r.stderr
        with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tf:
            assert tf.extractfile("runs").read() == b"run\nrun\n"
        r = silod.silo("sandbox", "attach", c)
        assert r.returncode != 0 and b"is in use" in r.stderr, r.stderr
    finally:
        other.kill()
        other.wait()
    assert D.wait_detached(image, 5.0, scan=True)
