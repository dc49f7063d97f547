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
    ("UTSMode", "private", "invalid UTSMode 'private'"),
    ("CgroupnsMode", "shared", "invalid CgroupnsMode 'shared'"),
    ("PidMode", 3, "HostConfig.PidMode of type string"),
    ("Runtime", "kata", "Unknown runtime specified kata"),
    ("DeviceRequests", [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}],
     "invalid HostConfig.DeviceRequests: device requests (--gpus) are not supported"),
    ("OomScoreAdj", 1001, "Invalid value 1001, range for oom score adj is [-1000, 1000]"),
    ("CgroupParent", "a/../b", "invalid cgroup parent 'a/../b'"),
    ("CgroupParent", "a//b", "invalid cgroup parent 'a//b'"),
    ("CgroupParent", 7, "HostConfig.CgroupParent of type string"),
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


# -- CPU and memory-node sets are checked against the host before anything is expanded ----------

def _cpus_text() -> str:
    from silobox.engine.spec import _available_cpus, _ranges_text
    return _ranges_text(_available_cpus())


@pytest.mark.parametrize("field,value", [
    ("CpusetCpus", "0-99999999"), ("CpusetCpus", "0,99999999"), ("CpusetMems", "0-99999999"),
    ("CpusetMems", "5000")])
def test_cpusets_beyond_the_host_are_refused_at_once(field: str, value: str) -> None:
    import time
    from silobox.engine.spec import resources_from_hostconfig
    started = time.monotonic()
    with pytest.raises(InvalidArgument, match="are not available - requested"):
        resources_from_hostconfig({field: value})
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("field,value", [
    ("CpusetCpus", "0-99999999999"), ("CpusetCpus", "9" * 5000), ("CpusetCpus", "2-1"),
    ("CpusetCpus", "a"), ("CpusetMems", "0-" + "9" * 5000), ("CpusetMems", "-1")])
def test_malformed_cpusets_are_invalid(field: str, value: str) -> None:
    from silobox.engine.spec import resources_from_hostconfig
    with pytest.raises(InvalidArgument, match="Invalid value .* for cpuset") as info:
        resources_from_hostconfig({field: value})
    assert len(info.value.message) < 200


def test_cpusets_on_the_host_pass() -> None:
    from silobox.engine.spec import resources_from_hostconfig
    res = resources_from_hostconfig({"CpusetCpus": _cpus_text(), "CpusetMems": "0"})
    assert res["cpuset_cpus"] == _cpus_text() and res["cpuset_mems"] == "0"


# -- digit strings beyond int()'s limit are invalid values, not ValueErrors (500s) ---------------

@pytest.mark.parametrize("call", [
    lambda S, N: S.parse_signal("9" * 5000),
    lambda S, N: S.parse_log_config({"Type": "json-file",
                                     "Config": {"max-size": "1m", "max-file": "9" * 5000}}),
    lambda S, N: S.parse_log_config({"Type": "json-file", "Config": {"max-size": "9" * 400}}),
    lambda S, N: N.parse_port_bindings({"9" * 5000 + "/tcp": None}, None, False),
    lambda S, N: N.parse_port_bindings({"70000/tcp": None}, None, False),
    lambda S, N: N.parse_port_bindings({"80/tcp": [{"HostPort": "9" * 5000}]}, None, False),
    lambda S, N: N.parse_port_bindings(None, {"9" * 5000 + "/tcp": {}}, True),
    lambda S, N: N.parse_port_bindings(None, {"http/tcp": {}}, True),
])
def test_huge_numbers_in_strings_are_invalid(call) -> None:
    from silobox.engine import endpoints, spec
    with pytest.raises(InvalidArgument):
        call(spec, endpoints)
