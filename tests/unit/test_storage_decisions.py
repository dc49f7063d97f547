"""Storage's decisions without a kernel: overlay data, sandbox options, a create body's mounts,
and what the crash sweep removes."""

from __future__ import annotations

import os

import pytest

from silobox.errors import InvalidArgument, NotFound, Unavailable
from silobox.kernel import overlay
from silobox.storage.disk import LoopDevice
from silobox.storage.mounts import mount_tree, plan_mounts, tmpfs_of
from silobox.storage.sandboxes import parse_daemon_options, sandbox_choice
from silobox.storage.sweep import (leftover_entries, orphan_container_mounts,
                                   orphan_loop_devices, orphan_volume_mounts)


# ----- overlay ------------------------------------------------------------------------------
def test_overlay_options_writable_and_read_only():
    assert overlay.options(["/l/top", "/l/base", "/l/top"], "/s/upper", "/s/work") == \
        "lowerdir=/l/top:/l/base,upperdir=/s/upper,workdir=/s/work"
    assert overlay.options(["/s/upper", "/l/a"]) == "lowerdir=/s/upper:/l/a"


@pytest.mark.parametrize("lowers,upper,work,why", [
    ([], "/u", "/w", "at least one"),
    (["/l/a"], "", "", "at least two"),
    (["/l/a"], "/u", "", "go together"),
    ([f"/l/{i}" for i in range(501)], "/u", "/w", "stacks at most 500"),
    (["/l/a:b"], "/u", "/w", "contain no"),
    (["relative"], "/u", "/w", "absolute"),
    (["/l/a"], "/u,x=y", "/w", "contain no"),
    ([f"/var/lib/silobox/layers/{i:064x}/diff" for i in range(60)], "/u", "/w",
     "over the kernel's limit"),
])
def test_overlay_options_refusals(lowers, upper, work, why):
    with pytest.raises(ValueError, match=why):
        overlay.options(lowers, upper, work)


# ----- sandbox options ----------------------------------------------------------------------
def test_daemon_options():
    assert parse_daemon_options(["sandbox=dir", "Size=20G", "pool=3"]) == \
        {"sandbox": "dir", "size": "20G", "pool": "3"}
    for bad in ("sandbox=vhd", "pool=many", "size", "colour=red"):
        with pytest.raises(InvalidArgument):
            parse_daemon_options([bad])


def test_sandbox_choice():
    assert sandbox_choice(None, "disk") == ("disk", None)
    assert sandbox_choice({}, "dir") == ("dir", None)
    assert sandbox_choice({"size": "2G"}, "dir") == ("disk", 2 << 30)   # a size asks for a disk
    assert sandbox_choice({"Sandbox": "dir"}, "disk") == ("dir", None)
    with pytest.raises(InvalidArgument, match="Unknown option dm.basesize"):
        sandbox_choice({"dm.basesize": "1G"}, "disk")
    with pytest.raises(InvalidArgument, match="only for sandbox disks"):
        sandbox_choice({"sandbox": "dir", "size": "1G"}, "disk")
    with pytest.raises(InvalidArgument, match="below the minimum"):
        sandbox_choice({"size": "1k"}, "disk")
    with pytest.raises(InvalidArgument, match="unmarshal"):
        sandbox_choice({"size": 5}, "disk")
    with pytest.raises(Unavailable, match="no loop devices"):
        sandbox_choice({"size": "2G"}, "dir", "no loop devices")
    assert sandbox_choice(None, "dir", "no loop devices") == ("dir", None)


# ----- a create body's mounts ---------------------------------------------------------------
def _plan(hc, volumes=None, existing=None, exists=lambda name: False):
    return plan_mounts(hc, existing or [], volumes or {}, exists)


def test_plan_named_volumes_mounts_tmpfs_and_anonymous(tmp_path):
    plan, tmpfs = _plan({"Binds": ["/host:/h", "data:/data:ro,nocopy"],
                         "Mounts": [{"Type": "bind", "Source": str(tmp_path), "Target": "/b"},
                                    {"Type": "tmpfs", "Target": "/t",
                                     "TmpfsOptions": {"SizeBytes": 4096, "Mode": 0o1777}}],
                         "Tmpfs": {"/run": "size=1m"}},
                        volumes={"/var/lib/x": {}, "/data": {}},
                        existing=[{"Type": "bind", "Source": "/host", "Destination": "/h"}])
    by_dest = {m["Destination"]: m for m in plan}
    assert by_dest["/data"]["Name"] == "data" and by_dest["/data"]["RW"] is False
    assert by_dest["/data"]["_nocopy"] is True
    assert by_dest["/b"]["Type"] == "bind" and by_dest["/b"]["Propagation"] == "rprivate"
    assert by_dest["/t"]["Type"] == "tmpfs"
    assert by_dest["/var/lib/x"]["Name"] == ""          # anonymous: named at creation
    assert tmpfs == [{"ContainerPath": "/run", "Options": "noexec,nosuid,nodev,size=1m"}]


@pytest.mark.parametrize("hc,why", [
    ({"Binds": ["data:/x", "other:/x/"]}, "Duplicate mount point: /x"),
    ({"Binds": ["data:relative"]}, "must be absolute"),
    ({"Binds": ["data:/x:bogus"]}, "invalid mode"),
    ({"Binds": ["a b:/x"]}, "invalid characters"),
    ({"Mounts": {"Type": "bind"}}, "unmarshal"),
    ({"Mounts": [{"Type": "bind", "Source": "/nonexistent/silobox", "Target": "/x"}]},
     "bind source path does not exist"),
    ({"Mounts": [{"Type": "volume", "Target": "/x",
                  "VolumeOptions": {"Subpath": "a"}}]}, "subpaths"),
    ({"Mounts": [{"Type": "tmpfs", "Target": "/x", "Source": "s"}]}, "Source must not"),
    ({"Mounts": [{"Type": "tmpfs", "Target": "/x", "TmpfsOptions": {"SizeBytes": -1}}]},
     "invalid tmpfs size"),
    ({"Mounts": [{"Type": "npipe", "Target": "/x"}]}, "mount type unknown"),
    ({"Tmpfs": {"/x": "bogus=1"}}, "invalid tmpfs option"),
    ({"Tmpfs": ["/x"]}, "unmarshal"),
])
def test_plan_refusals(hc, why):
    with pytest.raises(InvalidArgument, match=why):
        _plan(hc)


def test_plan_volume_driver_matters_only_for_volumes_to_make():
    hc = {"Binds": ["data:/data"], "VolumeDriver": "flocker"}
    with pytest.raises(NotFound, match="plugin \"flocker\" not found"):
        _plan(hc)
    plan, _ = _plan(hc, exists=lambda name: name == "data")
    assert plan[0]["Name"] == "data"


def test_tmpfs_of_a_mount_and_mount_tree():
    hc = {"Mounts": [{"Type": "tmpfs", "Target": "/t/", "ReadOnly": True,
                      "TmpfsOptions": {"SizeBytes": 10, "Mode": 0o700}}]}
    assert tmpfs_of(hc, "/t") == "nosuid,nodev,ro,size=10,mode=700"
    assert tmpfs_of(hc, "/other") == "nosuid,nodev"
    mounts = [{"Type": "volume", "Source": "/v/a", "Destination": "/data"},
              {"Type": "bind", "Source": "/h", "Destination": "/data/sub"},
              {"Type": "tmpfs", "Source": "", "Destination": "/tmp"}]
    assert mount_tree(mounts, "/data/sub/x/../y") == (mounts[1], "/y")
    assert mount_tree(mounts, "/data/file") == (mounts[0], "/file")
    assert mount_tree(mounts, "/datafile") is None
    assert mount_tree(mounts, "/tmp/x") is None


# ----- the crash sweep ----------------------------------------------------------------------
def test_orphan_container_mounts():
    cdir = "/r/containers"
    points = [f"{cdir}/run/sandbox", f"{cdir}/run/shm", f"{cdir}/run/sandbox/rootfs",
              f"{cdir}/stopped/sandbox", f"{cdir}/gone/sandbox", f"{cdir}/att/mnt"]
    owners = {"run": True, "stopped": False, "att": False}
    assert orphan_container_mounts(points, cdir, owners, keep={f"{cdir}/att/mnt"}) == [
        f"{cdir}/run/sandbox/rootfs", f"{cdir}/stopped/sandbox", f"{cdir}/gone/sandbox"]


def test_orphan_volume_mounts_and_leftovers():
    assert orphan_volume_mounts(["/r/volumes/used/_data", "/r/volumes/idle/_data"],
                                "/r/volumes", {"used"}) == ["/r/volumes/idle/_data"]
    assert leftover_entries(["a", "b", ".x"], {"a"}) == ["b", ".x"]
    assert leftover_entries(["a", "b", ".new-1"], {"a"}, hidden_too=False) == ["b"]


def test_orphan_loop_devices(tmp_path):
    root = str(tmp_path)
    cdir = f"{root}/containers"
    (tmp_path / "containers" / "run").mkdir(parents=True)
    (tmp_path / "containers" / "run" / "sandbox.img").write_bytes(b"")
    (tmp_path / "containers" / "att").mkdir()
    (tmp_path / "containers" / "att" / "sandbox.img").write_bytes(b"")
    devs = [LoopDevice("/dev/loop1", f"{cdir}/run/sandbox.img"),
            LoopDevice("/dev/loop2", f"{cdir}/att/sandbox.img"),
            LoopDevice("/dev/loop3", f"{cdir}/stopped/sandbox.img"),
            LoopDevice("/dev/loop4", f"{cdir}/run/deleted.img"),
            LoopDevice("/dev/loop5", "/elsewhere/disk.img"),
            LoopDevice("/dev/loop6", f"{root}/sandbox-pool/1.img")]
    owners = {"run": True, "att": False, "stopped": False}
    gone = orphan_loop_devices(devs, root, cdir, owners, attached={"att"})
    assert [d.path for d in gone] == ["/dev/loop3", "/dev/loop4", "/dev/loop6"]


# ----- where a sandbox may be attached --------------------------------------------------------
def test_attach_refusals(tmp_path):
    import pathlib
    from silobox.storage.attach import SandboxAttachments
    tmp_path = pathlib.Path(os.path.realpath(tmp_path))   # points are compared as real paths
    root, run = tmp_path / "root", tmp_path / "run"
    root.mkdir()
    run.mkdir()
    att = SandboxAttachments(str(root), str(run))
    cid = "c0ffee"
    own = str(root / "containers" / cid / "mnt")
    binds = [(str(tmp_path / "shared"), "a directory of container web")]
    assert att.refusal(cid, own, binds) == ""
    assert att.refusal(cid, str(tmp_path / "elsewhere"), binds) == ""
    assert "silod's state directory" in att.refusal(cid, str(root / "containers" / "x"), binds)
    assert "silod's runtime directory" in att.refusal(cid, str(run / "c"), binds)
    assert "/proc" in att.refusal(cid, "/proc/1/root/tmp", binds)
    assert "container web" in att.refusal(cid, str(tmp_path / "shared" / "in"), binds)
    assert att.refusal(cid, str(tmp_path / "sharedness"), binds) == ""   # a prefix, not a parent
    assert att.record(cid) is None


@pytest.mark.parametrize("options", [{"SizeBytes": "1m"}, {"Mode": "0755"}, {"SizeBytes": 1.5},
                                     {"Mode": True}, "size=1m", {"Mode": 0o17777}])
def test_tmpfs_options_of_the_wrong_type_are_client_errors(options):
    from silobox.errors import InvalidArgument
    from silobox.storage.mounts import tmpfs_mount_options
    with pytest.raises(InvalidArgument):
        tmpfs_mount_options({"Type": "tmpfs", "Target": "/t", "TmpfsOptions": options}, "/t")
    assert "size=65536,mode=1777" in tmpfs_mount_options(
        {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 65536, "Mode": 0o1777}})


def test_sandbox_readers_count_and_release(tmp_path):
    """A reader keeps a running container's disk readable; the count goes when the last
    reader is done (the engine then unmounts what a stop left)."""
    from silobox.storage.sandboxes import SandboxStore
    store = SandboxStore.__new__(SandboxStore)
    store.root, store.readers = str(tmp_path), {}
    with store.reading("c1") as upper:
        assert upper.endswith("upper") and store.readers == {"c1": 1}
        with store.reading("c1"):
            assert store.readers == {"c1": 2}
        assert store.readers == {"c1": 1}
    assert store.readers == {}
