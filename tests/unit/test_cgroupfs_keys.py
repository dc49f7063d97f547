"""How a v1 hierarchy's super options become its /proc/self/cgroup key and its mount data."""

from __future__ import annotations

from silobox.kernel.silo.cgroupfs import _hierarchy_key


def test_hierarchy_keys_match_proc_self_cgroup() -> None:
    assert _hierarchy_key("rw,cpu") == ("cpu", "cpu")
    assert _hierarchy_key("rw,cpuacct,cpu") == ("cpu,cpuacct", "cpuacct,cpu")
    assert _hierarchy_key("rw,xattr,name=systemd") == ("name=systemd", "xattr,name=systemd")
    assert _hierarchy_key("rw,cpuset,cpuset_v2_mode,noprefix") == (
        "cpuset", "cpuset,cpuset_v2_mode,noprefix")
    assert _hierarchy_key("rw,release_agent=/x,net_cls,net_prio") == (
        "net_cls,net_prio", "net_cls,net_prio")
