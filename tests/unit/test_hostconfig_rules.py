"""HostConfig fields silobox refuses or drops at create: the decision and its messages."""

from __future__ import annotations

import re

import pytest

from silobox.engine.hostconfig import check_host_config
from silobox.errors import InvalidArgument

# What the docker CLI 28 sends for a plain `docker create busybox`.
CLI_DEFAULTS = {
    "NetworkMode": "default", "VolumeDriver": "", "CgroupnsMode": "", "GroupAdd": None,
    "IpcMode": "", "Cgroup": "", "OomScoreAdj": 0, "PidMode": "", "UTSMode": "",
    "UsernsMode": "", "CgroupParent": "", "BlkioWeight": 0, "BlkioWeightDevice": [],
    "BlkioDeviceReadBps": [], "BlkioDeviceWriteBps": [], "BlkioDeviceReadIOps": [],
    "BlkioDeviceWriteIOps": [], "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0,
    "Devices": [], "DeviceCgroupRules": None, "DeviceRequests": None,
    "MemorySwappiness": -1, "OomKillDisable": False, "CpuCount": 0, "CpuPercent": 0,
    "IOMaximumIOps": 0, "IOMaximumBandwidth": 0, "MaskedPaths": None, "ReadonlyPaths": None,
}


def test_defaults_pass_untouched() -> None:
    hc = dict(CLI_DEFAULTS)
    assert check_host_config(hc) == []
    assert hc == CLI_DEFAULTS
    assert check_host_config({}) == []


def test_unenforced_resources_are_discarded_with_a_warning() -> None:
    hc = {**CLI_DEFAULTS, "MemorySwappiness": 10, "OomKillDisable": True}
    warnings = check_host_config(hc)
    assert warnings == [
        "silobox does not apply memory swappiness capabilities: MemorySwappiness discarded.",
        "silobox does not apply oom kill disable: OomKillDisable discarded.",
    ]
    assert (hc["MemorySwappiness"], hc["OomKillDisable"]) == (-1, False)


def test_blkio_the_host_lacks_is_dropped_with_dockers_words(monkeypatch) -> None:
    import silobox.kernel.jobobject as J
    monkeypatch.setattr(J, "io_support", lambda: frozenset({"throttle"}))
    hc = {**CLI_DEFAULTS, "BlkioWeight": 300,
          "BlkioDeviceReadBps": [{"Path": "/dev/sda", "Rate": 1}]}
    assert check_host_config(hc) == [
        "Your kernel does not support Block I/O weight or the cgroup is not mounted. "
        "Weight discarded."]
    assert hc["BlkioWeight"] == 0 and hc["BlkioDeviceReadBps"] == [{"Path": "/dev/sda",
                                                                    "Rate": 1}]
    monkeypatch.setattr(J, "io_support", lambda: frozenset())
    hc = {**CLI_DEFAULTS, "BlkioDeviceReadBps": [{"Path": "/dev/sda", "Rate": 1}]}
    assert check_host_config(hc) == [
        "Your kernel does not support BPS Block I/O read limit or the cgroup is not mounted. "
        "Block I/O BPS read limit discarded."]
    assert hc["BlkioDeviceReadBps"] == []


def test_windows_cpu_controls() -> None:
    hc = {**CLI_DEFAULTS, "CpuCount": 1, "CpuPercent": 40}
    assert check_host_config(hc) == [
        "Conflicting options: CPU count takes priority over CPU percent on Windows Server "
        "Containers. CPU percent discarded."]
    assert (hc["CpuCount"], hc["CpuPercent"]) == (1, 0)
    for bad, message in (({"CpuPercent": 101}, "Range of CPU percent is from 1 to 100"),
                         ({"CpuCount": -1}, "invalid CPU count: it must not be negative"),
                         ({"IOMaximumIOps": -5},
                          "invalid IOMaximumIOps: a non-negative integer is expected")):
        with pytest.raises(InvalidArgument, match=message):
            check_host_config({**CLI_DEFAULTS, **bad})


@pytest.mark.parametrize("field, value, message", [
    ("PidMode", "shared", "invalid PidMode 'shared': use private, host or container:NAME"),
    ("IpcMode", "none",
     "invalid IpcMode 'none': use private, shareable, host or container:NAME"),
    ("UTSMode", "container:x", "invalid UTSMode 'container:x'"),
    ("CgroupnsMode", "shared", "invalid CgroupnsMode 'shared'"),
    ("PidMode", 3, "HostConfig.PidMode of type string"),
    ("Runtime", "kata", "Unknown runtime specified kata"),
    ("DeviceRequests", [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}],
     "invalid HostConfig.DeviceRequests: device requests (--gpus) are not supported"),
    ("OomScoreAdj", 1001, "Invalid value 1001, range for oom score adj is [-1000, 1000]"),
    ("CgroupParent", "mine", "invalid HostConfig.CgroupParent"),
    ("MaskedPaths", ["relative"], "invalid HostConfig.MaskedPaths: a list of absolute paths"),
    ("Sysctls", {"kernel.hostname": "x"}, "sysctl 'kernel.hostname' is not allowed"),
    ("Sysctls", {"vm.swappiness": "1"}, "sysctl 'vm.swappiness' is not allowed"),
    ("Sysctls", {"net/core/x": "1"}, "invalid sysctl name 'net/core/x'"),
    ("Sysctls", {"net.core.somaxconn": 5}, "invalid sysctl value for 'net.core.somaxconn'"),
])
def test_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        check_host_config({**CLI_DEFAULTS, field: value})


def test_sysctls_namespaced_only_and_net_not_with_host_network() -> None:
    ok = {"net.core.somaxconn": "1024", "kernel.shmmni": "100", "fs.mqueue.msg_max": "20",
          "net.ipv4.conf.eth0.rp_filter": "0"}
    assert check_host_config({"Sysctls": ok}) == []
    with pytest.raises(InvalidArgument, match="not allowed in host network namespace"):
        check_host_config({"Sysctls": {"net.core.somaxconn": "1"}, "NetworkMode": "host"})
    assert check_host_config({"Sysctls": {"kernel.shmmni": "100"}, "NetworkMode": "host"}) == []
    with pytest.raises(InvalidArgument, match="not allowed in host IPC namespace"):
        check_host_config({"Sysctls": {"kernel.shmmni": "100"}, "IpcMode": "host"})


def test_accepted_modes_and_runtimes() -> None:
    for hc in ({"IpcMode": "shareable"}, {"IpcMode": "private"}, {"PidMode": "private"},
               {"UsernsMode": "host"}, {"CgroupnsMode": "private"}, {"Runtime": "runc"},
               {"Runtime": "silobox"}, {"VolumeDriver": "local"}, {"MaskedPaths": []},
               {"ReadonlyPaths": ["/proc/sys"]}, {"GroupAdd": ["100", "wheel"]},
               {"OomScoreAdj": -1000}, {"OomScoreAdj": 500}, {"IpcMode": "host"},
               {"PidMode": "host"}, {"PidMode": "container:x"},
               {"IpcMode": "container:x"}, {"UTSMode": "host"}, {"CgroupnsMode": "host"}):
        assert check_host_config(dict(hc)) == [], hc
