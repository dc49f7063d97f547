"""Sandbox disks on the real kernel: sparse ext4 images, loop devices with AUTOCLEAR, the pool,
the disk kind of ``Sandbox`` (activate/deactivate, host mounts for tools), grow, tmpfs options.

Everything lives under ``/tmp/sbxd-<run>``; each test ends with no loop device backed by a file
there and no mount below it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from silobox.errors import InvalidArgument
from silobox.kernel import libc
from silobox.kernel.silo import tmpfs_options
from silobox.storage import disk as D
from silobox.storage.sandbox import Sandbox, mounts_under

pytestmark = pytest.mark.root
SIZE = 64 * 1024 * 1024
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _loops_under(base: str) -> list[str]:
    return [d.path for d in D.loop_devices() if d.backing_file.startswith(base + "/")]


@pytest.fixture
def base(run_id: str):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    reason = D.loop_supported()
    if reason:
        pytest.skip(f"sandbox disks unavailable: {reason}")
    path = f"/tmp/sbxd-{run_id}"
    os.makedirs(path, exist_ok=True)
    try:
        yield path
    finally:
        for point in mounts_under(path):
            libc.umount2(point, libc.MNT_DETACH)
        deadline = time.time() + 3
        while _loops_under(path) and time.time() < deadline:
            time.sleep(0.02)
        left = _loops_under(path)
        for dev in left:
            D.detach(dev)
        shutil.rmtree(path, ignore_errors=True)
        assert not left, f"loop devices left behind: {left}"


def _wait_no_loops(base: str) -> list[str]:
    deadline = time.time() + 3
    while _loops_under(base) and time.time() < deadline:
        time.sleep(0.02)
    return _loops_under(base)


def test_format_is_sparse_and_read_from_the_superblock(base: str) -> None:
    image = os.path.join(base, "a.img")
    D.format_image(image, 20 * 1024 ** 3, base)
    st = os.stat(image)
    assert st.st_size == 20 * 1024 ** 3
    assert st.st_blocks * 512 < 1024 * 1024          # under 1 MiB on the host, not 20 GiB
    sb = D.read_superblock(image)
    assert sb.size == 20 * 1024 ** 3 and sb.block_size == 4096 and sb.clean
    with pytest.raises(InvalidArgument):
        D.format_image(os.path.join(base, "tiny.img"), 1024 * 1024, base)


def test_attach_mount_and_unmount_detaches_the_loop_device(base: str) -> None:
    image = os.path.join(base, "b.img")
    D.format_image(image, SIZE, base)
    target = os.path.join(base, "mnt")
    os.mkdir(target)
    dev = D.mount_image(image, target)
    try:
        assert D.loops_of(image) == [dev]
        assert sorted(os.listdir(target)) == ["lost+found", "rootfs", "upper", "work"]
        assert oct(os.stat(os.path.join(target, "upper")).st_mode & 0o777) == "0o755"
        with open(f"/sys/block/{os.path.basename(dev)}/loop/autoclear") as f:
            assert f.read().strip() == "1"
        # ext4 must never be mounted from two devices: an attached image is mounted through
        # its device again, and the kernel gives back the same filesystem
        other = os.path.join(base, "mnt2")
        os.mkdir(other)
        assert D.mount_image(image, other) == dev
        try:
            assert D.loops_of(image) == [dev]
            assert os.stat(other).st_dev == os.stat(target).st_dev
            with open(os.path.join(target, "upper", "seen"), "w") as f:
                f.write("one instance")
            with open(os.path.join(other, "upper", "seen")) as f:
                assert f.read() == "one instance"
        finally:
            libc.umount2(other, 0)
        assert D.loops_of(image) == [dev]   # the first mount still holds it
    finally:
        libc.umount2(target, 0)
    assert _wait_no_loops(base) == []


def test_attach_without_mount_is_gone_on_close(base: str) -> None:
    image = os.path.join(base, "c.img")
    D.format_image(image, SIZE, base)
    fd, dev = D.attach(image, readonly=True)
    assert D.loops_of(image) == [dev]
    os.close(fd)
    assert _wait_no_loops(base) == []


def test_write_past_the_size_is_enospc(base: str) -> None:
    image = os.path.join(base, "d.img")
    D.format_image(image, 32 * 1024 * 1024, base)
    target = os.path.join(base, "mnt")
    os.mkdir(target)
    D.mount_image(image, target)
    try:
        with pytest.raises(OSError) as info:
            with open(os.path.join(target, "upper", "big"), "wb") as f:
                chunk = b"\0" * (1024 * 1024)
                for _ in range(64):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        assert info.value.errno == 28   # ENOSPC
    finally:
        libc.umount2(target, 0)
    assert _wait_no_loops(base) == []


def test_grow_offline_and_refuse_shrink(base: str) -> None:
    image = os.path.join(base, "e.img")
    D.format_image(image, SIZE, base)
    D.grow_image(image, 2 * SIZE)
    assert D.read_superblock(image).size == 2 * SIZE
    with pytest.raises(InvalidArgument):
        D.grow_image(image, SIZE)


def _has_cap_sys_resource() -> bool:
    with open("/proc/self/status") as f:
        eff = next(int(l.split()[1], 16) for l in f if l.startswith("CapEff:"))
    return bool(eff & (1 << 24))


@pytest.mark.skipif(not _has_cap_sys_resource(), reason="online ext4 resize needs "
                    "CAP_SYS_RESOURCE, which this process lacks")
def test_grow_online(base: str) -> None:
    image = os.path.join(base, "f.img")
    D.format_image(image, SIZE, base)
    target = os.path.join(base, "mnt")
    os.mkdir(target)
    dev = D.mount_image(image, target)
    try:
        D.grow_image(image, 2 * SIZE, dev)
        vfs = os.statvfs(target)
        assert vfs.f_blocks * vfs.f_frsize > 1.5 * SIZE
    finally:
        libc.umount2(target, 0)
    assert _wait_no_loops(base) == []


def test_unclean_disk_is_checked_before_mount(base: str) -> None:
    image = os.path.join(base, "u.img")
    D.format_image(image, SIZE, base)
    # what a host crash leaves: state "not clean" (debugfs keeps the checksum right)
    subprocess.run(["debugfs", "-w", "-R", "ssv state 0", image], check=True,
                   capture_output=True)
    assert not D.read_superblock(image).clean
    target = os.path.join(base, "mnt")
    os.mkdir(target)
    D.mount_image(image, target)
    libc.umount2(target, 0)
    assert D.read_superblock(image).clean
    assert _wait_no_loops(base) == []


def test_pool_fills_and_hands_out_attached_images(base: str) -> None:
    """Ready disks are attached ahead of time; take is a rename, claim hands over the device,
    and stop leaves no device and no ready image."""
    pool = D.DiskPool(os.path.join(base, "pool"), SIZE, target=2)
    try:
        assert pool.fill_once() == 2 and len(pool.ready()) == 2
        assert len(_loops_under(base)) == 2   # attached, held by the pool's fds
        dest = os.path.join(base, "taken.img")
        t0 = time.perf_counter()
        pool.take(dest)
        assert time.perf_counter() - t0 < 0.05          # a rename, not a format
        assert len(pool.ready()) == 1 and D.read_superblock(dest).size == SIZE
        assert pool.holds(dest) and D.loops_of(dest)     # the device followed the rename
        target = os.path.join(base, "mnt")
        os.mkdir(target)
        spare = pool.claim(dest)
        assert spare is not None and not pool.holds(dest)
        libc.mount(spare.device, target, "ext4", libc.MS_NOATIME, None)
        os.close(spare.fd)
        assert os.path.isdir(os.path.join(target, "upper"))
        libc.umount2(target, 0)
        assert D.wait_detached(dest)                     # AUTOCLEAR once the mount is gone
        other = os.path.join(base, "sized.img")
        pool.take(other, 2 * SIZE)                       # another size: formatted on the spot
        assert D.read_superblock(other).size == 2 * SIZE and not pool.holds(other)
        third = os.path.join(base, "third.img")
        pool.take(third)
        assert pool.release(third) and D.wait_detached(third)   # rm of a created container
        pool.start()
        deadline = time.time() + 10
        while len(pool.ready()) < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert len(pool.ready()) == 2
        fourth = os.path.join(base, "fourth.img")
        pool.take(fourth)                                # held at stop: detached, file kept
    finally:
        pool.stop()
    assert pool.ready() == [] and os.path.exists(fourth)
    assert not [n for n in os.listdir(os.path.join(base, "pool")) if n.startswith("ready-")]
    assert _wait_no_loops(base) == []


def test_pool_empty_copies_the_template_inline(base: str) -> None:
    pool = D.DiskPool(os.path.join(base, "pool"), SIZE, target=0)
    try:
        dest = os.path.join(base, "inline.img")
        pool.take(dest)
        assert D.read_superblock(dest).size == SIZE and not pool.holds(dest)
        assert os.stat(dest).st_blocks * 512 < 16 * 1024 * 1024   # sparse
    finally:
        pool.stop()


def test_pool_devices_go_with_a_killed_process(base: str) -> None:
    """A daemon killed with SIGKILL leaves no attached device: the pool's fds were the only
    openers, and AUTOCLEAR detaches a device on its last close."""
    code = ("import os, sys, time\n"
            "from silobox.storage import disk as D\n"
            f"p = D.DiskPool({os.path.join(base, 'kpool')!r}, {SIZE}, target=2)\n"
            "p.fill_once(); p.take(%r)\n"
            "print('ready', flush=True); time.sleep(60)\n" % os.path.join(base, "k.img"))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": REPO})
    try:
        assert proc.stdout.readline().strip() == b"ready"
        assert len(_loops_under(base)) == 2         # one ready, one taken
    finally:
        proc.kill()
        proc.wait()
    assert _wait_no_loops(base) == []
    # the next pool on that directory removes what the killed one left
    pool = D.DiskPool(os.path.join(base, "kpool"), SIZE, target=0)
    assert not [n for n in os.listdir(os.path.join(base, "kpool"))
                if n.startswith(("ready-", "trash-"))]
    pool.stop()


def test_sandbox_disk_activate_and_host_mount(base: str, tmp_path) -> None:
    root = os.path.join(base, "root")
    layer = os.path.join(base, "layer")
    os.makedirs(os.path.join(layer, "etc"))
    with open(os.path.join(layer, "etc", "motd"), "w") as f:
        f.write("from the image\n")
    pool = D.DiskPool(os.path.join(root, "pool"), SIZE, target=0)
    sandbox = Sandbox(root, "c0ffee")
    sandbox.create_disk(pool)
    sandbox.record_disk_info()
    sandbox.create()
    assert sandbox.kind == "disk" and sandbox.used_bytes() == 0
    dev = sandbox.activate()
    assert dev and sandbox.is_active() and sandbox.loop_device() == dev
    with open(os.path.join(sandbox.paths.upper, "written"), "w") as f:
        f.write("written in the container")
    assert sandbox.used_bytes() == len("written in the container")
    sandbox.deactivate()
    assert not sandbox.is_active()
    assert _wait_no_loops(base) == []
    assert sandbox.used_bytes() > 0                  # from the superblock while inactive
    merged = sandbox.mount_on_host([layer], readonly=True)
    try:
        assert open(os.path.join(merged, "written")).read() == "written in the container"
        assert open(os.path.join(merged, "etc", "motd")).read() == "from the image\n"
    finally:
        assert sandbox.unmount_from_host() is True
    assert not sandbox.is_active() and _wait_no_loops(base) == []
    sandbox.activate()
    sandbox.remove()                                 # unmounts, deletes the image
    assert not os.path.exists(sandbox.image) and mounts_under(root) == []
    assert _wait_no_loops(base) == []


def test_losetup_sees_what_we_attach(base: str) -> None:
    """The ioctl path and the util-linux view agree (backing file, autoclear)."""
    image = os.path.join(base, "g.img")
    D.format_image(image, SIZE, base)
    fd, dev = D.attach(image)
    try:
        out = subprocess.run(["losetup", "--list", "--noheadings", "-O", "NAME,AUTOCLEAR,"
                              "BACK-FILE,DIO", dev], capture_output=True, text=True).stdout
        name, autoclear, back, dio = out.split()
        assert (name, autoclear, back) == (dev, "1", image)
    finally:
        os.close(fd)
    assert _wait_no_loops(base) == []


def test_tmpfs_options() -> None:
    flags, data = tmpfs_options("noexec,nosuid,nodev,size=64m,mode=1777")
    assert flags == libc.MS_NOEXEC | libc.MS_NOSUID | libc.MS_NODEV
    assert data == "size=64m,mode=1777"
    flags, _ = tmpfs_options("noexec,nosuid,nodev,exec,ro")
    assert flags == libc.MS_NOSUID | libc.MS_NODEV | libc.MS_RDONLY
    with pytest.raises(ValueError):
        tmpfs_options("size=1m,bogus")


def test_parse_size() -> None:
    assert D.parse_size("5G") == 5 * 1024 ** 3
    assert D.parse_size("512m") == 512 * 1024 ** 2
    assert D.parse_size("1.5GB") == int(1.5 * 1024 ** 3)
    assert D.parse_size("4096") == 4096
    with pytest.raises(InvalidArgument):
        D.parse_size("lots")
