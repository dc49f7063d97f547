"""``HostConfig.CgroupParent`` through the Docker API: the job object under the named group,
the groups silod made removed with the last container naming them, a group it did not make
kept, and bad paths refused with a 400."""

from __future__ import annotations

import os
import uuid

import docker
import pytest

from silobox.kernel.jobobject import missing_groups, remove_groups

IMAGE = "busybox"


@pytest.fixture
def api(silod):
    return silod.client


def _levels(name: str) -> list[str]:
    """Every directory of ``name`` and the groups the tests make below it, all hierarchies."""
    from silobox.kernel.jobobject import _parent_directories
    out = []
    for sub in ("", "/inner", "/inner/more"):
        out += _parent_directories(name + sub, None)
    return out


@pytest.fixture
def group():
    """A fresh top-level group name; whatever is left of it is removed afterwards."""
    name = f"sbxcp-{uuid.uuid4().hex[:8]}"
    yield name
    stale = [d for d in _levels(name) if os.path.isdir(d)]
    remove_groups(stale)
    assert not stale, f"cgroups left behind: {stale}"


def _cgroups_of(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cgroup") as f:
        return [line.strip().split(":", 2)[2] for line in f]


def _run(api, parent: str) -> str:
    c = api.create_container(IMAGE, ["sleep", "60"],
                             host_config=api.create_host_config(cgroup_parent=parent))
    api.start(c)
    return c["Id"]


def test_job_object_under_cgroup_parent_and_groups_removed(api, group):
    cid = _run(api, f"/{group}/inner")
    cid2 = _run(api, f"{group}/inner")       # the same group, written relative
    try:
        pid = api.inspect_container(cid)["State"]["Pid"]
        paths = _cgroups_of(pid)
        assert f"/{group}/inner/{cid}" in paths, paths
        assert api.inspect_container(cid)["HostConfig"]["CgroupParent"] == f"/{group}/inner"
        made = missing_groups(f"{group}/inner")
        assert not made                       # every hierarchy has it
    finally:
        api.remove_container(cid, force=True)
    # still used by the second container
    assert not missing_groups(f"{group}/inner")
    api.remove_container(cid2, force=True)
    assert not [d for d in _levels(group) if os.path.isdir(d)]


def test_existing_parent_group_is_kept(api, group):
    dirs = missing_groups(group)
    for d in dirs:
        os.mkdir(d)
        if os.path.exists(os.path.join(d, "cpuset.cpus")):   # v1 cpuset: filled as runc does
            for name in ("cpuset.cpus", "cpuset.mems"):
                with open(os.path.join(os.path.dirname(d), name)) as src, \
                        open(os.path.join(d, name), "w") as dst:
                    dst.write(src.read().strip())
    try:
        cid = _run(api, f"{group}/inner/more")
        api.remove_container(cid, force=True)
        assert all(os.path.isdir(d) for d in dirs)          # ours to remove, not silod's
        assert all(not os.path.isdir(os.path.join(d, "inner")) for d in dirs)
    finally:
        remove_groups(dirs)


@pytest.mark.parametrize("parent", ["../escape", "a/../../b", "a//b", "a/./b", "/"])
def test_bad_cgroup_parent_is_400(api, parent):
    with pytest.raises(docker.errors.APIError) as e:
        api.create_container(IMAGE, ["true"],
                             host_config=api.create_host_config(cgroup_parent=parent))
    assert e.value.status_code == 400 and "cgroup parent" in str(e.value), str(e.value)
