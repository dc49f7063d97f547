"""HostConfig fields silobox refuses or drops at create: the decision and its messages."""

from __future__ import annotations

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
    hc = {**CLI_DEFAULTS, "BlkioWeight": 300, "MemorySwappiness": 10, "OomKillDisable": True,
          "BlkioDeviceReadBps": [{"Path": "/dev/sda", "Rate": 1}]}
    warnings = check_host_config(hc)
    assert warnings == [
        "silobox does not apply Block I/O weight: BlkioWeight discarded.",
        "silobox does not apply BPS Block I/O read limit: BlkioDeviceReadBps discarded.",
        "silobox does not apply memory swappiness capabilities: MemorySwappiness discarded.",
        "silobox does not apply oom kill disable: OomKillDisable discarded.",
    ]
    assert (hc["BlkioWeight"], hc["MemorySwappiness"], hc["OomKillDisable"],
            hc["BlkioDeviceReadBps"]) == (0, -1, False, [])


@pytest.mark.parametrize("field, value, message", [
    ("PidMode", "host", "invalid PidMode 'host': every container has its own PID namespace"),
    ("IpcMode", "container:x", "invalid IpcMode 'container:x'"),
    ("UTSMode", "host", "invalid UTSMode 'host'"),
    ("CgroupnsMode", "host", "invalid CgroupnsMode 'host'"),
    ("PidMode", 3, "HostConfig.PidMode of type string"),
    ("Runtime", "kata", "Unknown runtime specified kata"),
    ("Devices", [{"PathOnHost": "/dev/zero", "PathInContainer": "/dev/z",
                  "CgroupPermissions": "rwm"}], "invalid HostConfig.Devices: adding host devices"),
    ("GroupAdd", ["100"], "invalid HostConfig.GroupAdd"),
    ("OomScoreAdj", 100, "invalid HostConfig.OomScoreAdj"),
    ("CgroupParent", "mine", "invalid HostConfig.CgroupParent"),
    ("MaskedPaths", ["relative"], "invalid HostConfig.MaskedPaths: a list of absolute paths"),
    ("Sysctls", {"kernel.hostname": "x"}, "sysctl 'kernel.hostname' is not allowed"),
    ("Sysctls", {"vm.swappiness": "1"}, "sysctl 'vm.swappiness' is not allowed"),
    ("Sysctls", {"net/core/x": "1"}, "invalid sysctl name 'net/core/x'"),
    ("Sysctls", {"net.core.somaxconn": 5}, "invalid sysctl value for 'net.core.somaxconn'"),
])
def test_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace("[", r"\[")):
        check_host_config({**CLI_DEFAULTS, field: value})


def test_sysctls_namespaced_only_and_net_not_with_host_network() -> None:
    ok = {"net.core.somaxconn": "1024", "kernel.shmmni": "100", "fs.mqueue.msg_max": "20",
          "net.ipv4.conf.eth0.rp_filter": "0"}
    assert check_host_config({"Sysctls": ok}) == []
    with pytest.raises(InvalidArgument, match="not allowed in host network namespace"):
        check_host_config({"Sysctls": {"net.core.somaxconn": "1"}, "NetworkMode": "host"})
    assert check_host_config({"Sysctls": {"kernel.shmmni": "100"}, "NetworkMode": "host"}) == []


def test_accepted_modes_and_runtimes() -> None:
    for hc in ({"IpcMode": "shareable"}, {"IpcMode": "private"}, {"PidMode": "private"},
               {"UsernsMode": "host"}, {"CgroupnsMode": "private"}, {"Runtime": "runc"},
               {"Runtime": "silobox"}, {"VolumeDriver": "local"}, {"MaskedPaths": []},
               {"ReadonlyPaths": ["/proc/sys"]}):
        assert check_host_config(dict(hc)) == [], hc
