"""Which of the host's mounts a helper's private mount namespace keeps (kernel.mountns)."""

from silobox.kernel.mountns import unneeded

POINTS = ["/", "/proc", "/proc/sys/fs/binfmt_misc", "/sys", "/sys/fs/cgroup",
          "/sys/fs/cgroup/cpu", "/dev", "/dev/shm", "/dev/shm", "/run", "/run/netns",
          "/run/netns/a", "/var/lib/silobox/containers/x/sandbox",
          "/var/lib/silobox/containers/y/sandbox", "/var/lib/silobox/containers/y/sandbox/rootfs",
          "/var/lib/silobox/uvm/v/share", "/var/lib/silobox/uvm/v/share/usr"]


def test_keeps_the_trees_with_what_is_below_them_and_the_mounts_that_hold_a_path():
    gone = unneeded(POINTS, ["/var/lib/silobox/uvm/v/share", "/dev"], ["/proc", "/run/virtiofsd"])
    assert gone == ["/proc/sys/fs/binfmt_misc", "/sys", "/run/netns",
                    "/var/lib/silobox/containers/x/sandbox",
                    "/var/lib/silobox/containers/y/sandbox"]


def test_a_detached_mount_takes_what_is_below_it_along():
    gone = unneeded(POINTS, ["/var/lib/silobox/containers/x"], [])
    assert "/var/lib/silobox/containers/y/sandbox/rootfs" not in gone
    assert "/var/lib/silobox/containers/y/sandbox" in gone
    assert "/var/lib/silobox/containers/x/sandbox" not in gone
    assert "/" not in gone and "/sys/fs/cgroup" not in gone and "/sys" in gone


def test_every_sandbox_of_another_container_goes():
    gone = unneeded(POINTS, ["/var/lib/silobox/containers/x", "/proc", "/dev"],
                    ["/usr/lib", "/opt/silobox/lib/python3.11"])
    assert [p for p in gone if "containers" in p] == ["/var/lib/silobox/containers/y/sandbox"]
