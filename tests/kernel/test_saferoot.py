"""SafeRoot on the real kernel: every name resolves inside the root, whatever links it meets."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from silobox.kernel import libc
from silobox.kernel.saferoot import SafeRoot, mount_path, require_openat2

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ownership, mounts)"),
]


@pytest.fixture
def trees(tmp_path):
    """A root with hostile links in it and a victim directory beside it."""
    root = tmp_path / "root"
    victim = tmp_path / "victim"
    root.mkdir()
    victim.mkdir()
    (victim / "passwd").write_text("host")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("tree")
    os.symlink(str(victim), root / "abs")                    # absolute, to the victim
    os.symlink("../../../../../../" + str(victim), root / "rel")   # climbs out with ..
    os.symlink("/etc", root / "etc-link")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    with SafeRoot(str(root)) as r:
        yield r, root, victim


def _victim_state(victim):
    return sorted((p, os.lstat(os.path.join(victim, p)).st_mode,
                   open(os.path.join(victim, p), "rb").read()) for p in os.listdir(victim))


def test_openat2_is_there():
    require_openat2()


def test_links_and_dotdot_resolve_inside_the_root(trees):
    r, root, victim = trees
    before = _victim_state(victim)
    for name in ("abs/passwd", "rel/passwd", "/abs/passwd", "etc/../../abs/passwd"):
        with pytest.raises(FileNotFoundError):
            os.close(r.open(name))
    for name in ("../../../../etc/passwd", "/etc/passwd", "etc/../../../etc/passwd"):
        fd = r.open(name)                # ".." stops at the root, as at "/"
        try:
            assert os.read(fd, 10) == b"tree"
        finally:
            os.close(fd)
    fd = r.open("etc-link/passwd")   # /etc inside the root: the tree's own file
    try:
        assert os.read(fd, 10) == b"tree"
    finally:
        os.close(fd)
    fd = r.open("/../etc/../etc/passwd")
    os.close(fd)
    # creating through a link to "outside" finds no such directory inside: nothing is made
    with pytest.raises(OSError):
        r.open_dir("abs/made/deeper", create=True)
    with pytest.raises(FileNotFoundError):
        r.open("rel/new", os.O_WRONLY | os.O_CREAT, 0o644)
    # ... and once that directory exists inside the root, that is where things go
    os.makedirs(root / str(victim).lstrip("/"))
    os.close(r.open_dir("abs/made/deeper", create=True))
    assert os.path.isdir(root / str(victim).lstrip("/") / "made" / "deeper")
    os.close(r.open("rel/new", os.O_WRONLY | os.O_CREAT, 0o644))
    assert os.path.isfile(root / str(victim).lstrip("/") / "new")
    assert _victim_state(victim) == before
    with pytest.raises(OSError) as e:
        r.open("loop1/x")
    assert e.value.errno == errno.ELOOP


def test_magic_links_are_refused():
    with SafeRoot("/") as r:
        for name in ("proc/self/root/etc/passwd", "proc/self/cwd", "proc/self/fd/0"):
            with pytest.raises(OSError) as e:
                os.close(r.open(name))
            assert e.value.errno == errno.ELOOP


def test_no_symlinks_mode_and_nofollow(trees):
    r, root, victim = trees
    with pytest.raises(OSError) as e:
        r.open_dir("etc-link", symlinks=False)
    assert e.value.errno == errno.ELOOP
    with pytest.raises(OSError) as e:
        r.parent("abs/passwd", create=True, symlinks=False)
    assert e.value.errno == errno.ELOOP
    with pytest.raises(OSError) as e:
        r.open("abs", follow=False)
    assert e.value.errno == errno.ELOOP
    fd = r.open("abs", os.O_PATH, follow=False)   # the link itself
    try:
        assert stat.S_ISLNK(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    assert stat.S_ISLNK(r.lstat("abs").st_mode)
    assert r.lstat("nothing") is None and r.lstat("etc/passwd/x") is None


def test_changes_never_follow_the_last_link(trees):
    r, root, victim = trees
    before = _victim_state(victim)
    vst = os.lstat(victim)
    r.chown("abs", 1234, 1234)
    r.utime("abs", (10**9, 10**9))
    with pytest.raises(OSError):
        r.chmod("abs", 0o4777)    # a symlink has no mode of its own
    r.setxattr("etc/passwd", "user.t", b"v")
    assert r.getxattr("etc/passwd", "user.t") == b"v"
    assert "user.t" in r.listxattr("etc/passwd")
    r.chmod("etc/passwd", 0o4755)
    assert stat.S_IMODE(os.lstat(root / "etc/passwd").st_mode) == 0o4755
    r.unlink("abs")
    assert not os.path.lexists(root / "abs")
    after = os.lstat(victim)
    assert (after.st_uid, after.st_gid, after.st_mode, after.st_mtime) == \
        (vst.st_uid, vst.st_gid, vst.st_mode, vst.st_mtime)
    assert _victim_state(victim) == before
    assert os.lstat(root / "rel").st_uid == 0
    r.mkdir("d", 0o750)
    assert stat.S_IMODE(os.lstat(root / "d").st_mode) == 0o750
    r.symlink("/x", "d/s")
    assert r.readlink("d/s") == "/x"
    r.mknod("d/fifo", stat.S_IFIFO | 0o600)
    r.rename("d/fifo", "d/fifo2")
    assert stat.S_ISFIFO(os.lstat(root / "d/fifo2").st_mode)


def test_hard_links_stay_in_the_tree(trees):
    r, root, victim = trees
    r.link("etc/passwd", "etc/again")
    assert os.lstat(root / "etc/again").st_ino == os.lstat(root / "etc/passwd").st_ino
    with pytest.raises(OSError) as e:
        r.link("abs/passwd", "stolen")       # the source may not go through a link
    assert e.value.errno == errno.ELOOP
    with pytest.raises(OSError):
        r.link("etc", "dirlink")
    r.link("abs", "link-to-link")           # a link to the symlink itself, not its target
    assert stat.S_ISLNK(os.lstat(root / "link-to-link").st_mode)
    assert os.lstat(victim / "passwd").st_nlink == 1


def test_rmtree_removes_links_not_targets_and_stops_at_mounts(trees, tmp_path):
    r, root, victim = trees
    before = _victim_state(victim)
    os.makedirs(root / "t/a/b")
    (root / "t/a/b/f").write_text("x")
    os.symlink(str(victim), root / "t/a/v")
    os.symlink(str(victim), root / "t/top")
    r.rmtree("t")
    assert not os.path.lexists(root / "t")
    assert _victim_state(victim) == before
    r.rmtree("abs")                          # a symlink: removed itself
    assert os.path.isdir(victim)
    mnt = root / "m" / "mnt"
    os.makedirs(mnt)
    libc.mount("tmpfs", str(mnt), "tmpfs", 0, "size=1m")
    try:
        (mnt / "keep").write_text("k")
        with pytest.raises(OSError) as e:
            r.rmtree("m")
        assert e.value.errno in (errno.EXDEV, errno.EBUSY)
        assert (mnt / "keep").read_text() == "k"
    finally:
        libc.umount2(str(mnt), libc.MNT_DETACH)


def test_walk_goes_through_fds_and_never_into_links(trees):
    r, root, victim = trees
    os.makedirs(root / "w/sub")
    (root / "w/sub/f").write_text("f")
    os.symlink(str(victim), root / "w/out")
    names = [n for n, _ in r.walk("w")]
    assert names == ["w", "w/out", "w/sub", "w/sub/f"]
    kinds = {n: stat.S_IFMT(st.st_mode) for n, st in r.walk("w")}
    assert kinds["w/out"] == stat.S_IFLNK
    assert "passwd" not in " ".join(n for n, _ in r.walk("w"))
    with pytest.raises(OSError):
        list(r.walk("abs"))                   # a walk may not start at a link
    assert [n for n, _ in r.walk("")][0] == ""


def test_dup_of_an_fd_and_mount_path(tmp_path):
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        with SafeRoot(fd) as r:
            assert r.fd != fd
            assert os.path.samestat(os.stat(mount_path(r.fd)), os.stat(tmp_path))
            assert r.mount_path(r.fd) == f"/proc/self/fd/{r.fd}"
        assert r.fd == -1
    finally:
        os.close(fd)


def test_a_kernel_without_openat2_is_refused_not_worked_around(monkeypatch, tmp_path):
    from silobox.errors import Unavailable
    from silobox.kernel import saferoot

    def enosys(*args, **kwargs):
        raise OSError(errno.ENOSYS, "openat2: Function not implemented")
    monkeypatch.setattr(saferoot, "_openat2_state", None)
    monkeypatch.setattr(saferoot.libc, "openat2", enosys)
    with pytest.raises(Unavailable, match="Linux 5.6"):
        SafeRoot(str(tmp_path))


def test_creating_parents_deep_and_with_dotdot_stays_inside(trees):
    r, root, victim = trees
    deep = "/".join(["d"] * 1500)                 # deeper than Python's recursion limit
    os.close(r.open_dir(deep, create=True, mode=0o750))
    assert stat.S_IMODE(os.lstat(root / "d/d/d").st_mode) == 0o750
    r.rmtree("d")                                 # iterative too (shutil's is recursive)
    assert not os.path.lexists(root / "d")
    os.close(r.open_dir("new/../../../../made", create=True))
    assert os.path.isdir(root / "new") and os.path.isdir(root / "made")
    assert not os.path.exists(root.parent / "made")


def test_make_follows_links_inside_the_root_even_dangling(trees, tmp_path):
    r, root, victim = trees
    before = _victim_state(victim)
    # a dangling absolute link: its target is made inside the root, not on the host
    os.symlink(str(victim) + "/made", root / "data")
    fd = r.make("data/sub", True)
    try:
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    assert os.path.isdir(str(root) + str(victim) + "/made/sub")
    assert not os.path.exists(victim / "made")
    # a file target; an existing link is followed inside the root
    fd = r.make("etc-link/new.conf", False)
    try:
        assert stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    assert (root / "etc" / "new.conf").is_file()
    fd = r.make("abs/x", True)                  # the victim's path, re-rooted
    os.close(fd)
    assert (root / str(victim).lstrip("/") / "x").is_dir()
    with pytest.raises(OSError) as e:
        r.make("loop1/x", True)
    assert e.value.errno == errno.ELOOP
    assert _victim_state(victim) == before


def test_resolve_links_without_a_kernel_tree():
    from silobox.kernel.saferoot import resolve_links
    links = {"bin": "usr/bin", "usr/bin/sh": "/bin/busybox", "abs": "/../../etc",
             "loop": "loop"}

    def link_at(here, last):
        return links.get(here)
    assert resolve_links("/bin/sh", link_at) == "usr/bin/busybox"
    assert resolve_links("/bin/sh", link_at, follow_last=False) == "usr/bin/sh"
    assert resolve_links("../../abs/./passwd", link_at) == "etc/passwd"
    with pytest.raises(OSError) as e:
        resolve_links("loop/x", link_at)
    assert e.value.errno == errno.ELOOP
