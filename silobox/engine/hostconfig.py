"""The HostConfig fields silobox does not apply, decided once at create.

A field that is accepted must take effect, so nothing in a create body is silently ignored:

* Resource knobs silobox's job objects do not enforce are dropped with a warning in the create
  response, as dockerd drops what its kernel lacks (``daemon/daemon_unix.go``
  ``verifyPlatformContainerResources``: "…, discarded"), and reset in the stored HostConfig so
  inspect does not show them as in force.
* Sharing another container's UTS namespace, a cgroup parent and GPU requests change what the
  process sees; silobox refuses them with a 400 naming the field rather than run the
  container differently from what was asked.

Default values are always accepted: the docker CLI sends every field (``"PidMode": ""``,
``"MemorySwappiness": -1``, ``"Devices": []``, ...).
"""

from __future__ import annotations

from typing import Any

from silobox.errors import InvalidArgument

DEFAULT_RUNTIMES = ("", "silobox", "runc")
"""``silobox`` is what /info reports; ``runc`` is what clients written for dockerd send."""

# field → (accepted values, why the others are refused)
_MODES: dict[str, tuple[tuple[str, ...], str]] = {
    "PidMode": (("", "private", "host"),
                "use private, host or container:NAME"),
    "IpcMode": (("", "private", "shareable", "host"),
                "use private, shareable, host or container:NAME"),
    "UTSMode": (("", "host"), "use host or container:NAME"),
    "CgroupnsMode": (("", "private", "host"),
                     "a container has its own cgroup namespace or the host's"),
    "UsernsMode": (("", "host"), "containers run in the host's user namespace"),
    "Cgroup": (("",), "every container has its own job object"),
}

_JOINABLE = ("IpcMode", "PidMode", "UTSMode")
"""Modes that may name a container (``container:X``; engine/sharing.py joins it)."""

# field → what is not applied (the value is discarded with a warning)
_DISCARDED: dict[str, str] = {
    "MemorySwappiness": "memory swappiness capabilities",
    "OomKillDisable": "oom kill disable",
    "KernelMemory": "kernel memory limit capabilities",
    "KernelMemoryTCP": "kernel memory TCP limit capabilities",
}

# Block I/O fields, applied where the host's blkio/io controller offers them, otherwise dropped
# with dockerd's own words (``verifyPlatformContainerResources``): field → (needed, warning).
BLKIO_FIELDS: dict[str, tuple[str, str]] = {
    "BlkioWeight": ("weight", "Your kernel does not support Block I/O weight or the cgroup is "
                    "not mounted. Weight discarded."),
    "BlkioWeightDevice": ("weight", "Your kernel does not support Block I/O weight_device or the "
                          "cgroup is not mounted. Weight-device discarded."),
    "BlkioDeviceReadBps": ("throttle", "Your kernel does not support BPS Block I/O read limit or "
                           "the cgroup is not mounted. Block I/O BPS read limit discarded."),
    "BlkioDeviceWriteBps": ("throttle", "Your kernel does not support BPS Block I/O write limit "
                            "or the cgroup is not mounted. Block I/O BPS write limit discarded."),
    "BlkioDeviceReadIOps": ("throttle", "Your kernel does not support IOPS Block read limit or "
                            "the cgroup is not mounted. Block I/O IOPS read limit discarded."),
    "BlkioDeviceWriteIOps": ("throttle", "Your kernel does not support IOPS Block write limit or "
                             "the cgroup is not mounted. Block I/O IOPS write limit discarded."),
    "IOMaximumBandwidth": ("throttle", "Your kernel does not support Block I/O throttling or the "
                           "cgroup is not mounted. IOMaximumBandwidth discarded."),
    "IOMaximumIOps": ("throttle", "Your kernel does not support Block I/O throttling or the "
                      "cgroup is not mounted. IOMaximumIOps discarded."),
}

_REFUSED: dict[str, str] = {
    "DeviceRequests": "device requests (--gpus) are not supported by silobox",
    "CpuRealtimePeriod": "the CPU real-time scheduler is not supported by silobox",
    "CpuRealtimeRuntime": "the CPU real-time scheduler is not supported by silobox",
}

# Sysctls a container may set: those the kernel keeps per namespace (runc's validateSysctl).
_IPC_SYSCTLS = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                          "kernel.shmall", "kernel.shmmax", "kernel.shmmni",
                          "kernel.shm_rmid_forced"})


def _is_default(field: str, value: Any) -> bool:
    if value in (None, "", 0, False, [], {}):
        return True
    return field == "MemorySwappiness" and value == -1


def check_host_config(hc: dict[str, Any]) -> list[str]:
    """Refuse what silobox cannot do, drop with a warning what it cannot enforce.

    ``hc`` is changed in place (dropped fields reset to their defaults); returns the warnings
    for the create response."""
    for field, (accepted, why) in _MODES.items():
        value = hc.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidArgument(f"json: cannot unmarshal into Go struct field "
                                  f"HostConfig.{field} of type string")
        if value not in accepted and not (field in _JOINABLE and value.startswith("container:")):
            raise InvalidArgument(f"invalid {field} {value!r}: {why}")
    runtime = hc.get("Runtime")
    if runtime is not None and runtime not in DEFAULT_RUNTIMES:
        raise InvalidArgument(f"Unknown runtime specified {runtime}")
    for field, why in _REFUSED.items():
        if not _is_default(field, hc.get(field)):
            raise InvalidArgument(f"invalid HostConfig.{field}: {why}")
    if hc.get("CgroupParent") not in (None, ""):
        from silobox.engine.cgroupparent import check_cgroup_parent
        check_cgroup_parent(hc["CgroupParent"])
    _check_sysctls(hc.get("Sysctls") or {}, hc.get("NetworkMode") or "default",
                   hc.get("IpcMode") or "")
    oom = hc.get("OomScoreAdj")
    if oom is not None and (not isinstance(oom, int) or not -1000 <= oom <= 1000):
        raise InvalidArgument(f"Invalid value {oom}, range for oom score adj is [-1000, 1000]")
    for field in ("MaskedPaths", "ReadonlyPaths"):
        paths = hc.get(field)
        if paths is not None and (not isinstance(paths, list) or not all(
                isinstance(p, str) and p.startswith("/") for p in paths)):
            raise InvalidArgument(f"invalid HostConfig.{field}: a list of absolute paths is "
                                  "expected")
    warnings = []
    for field, what in _DISCARDED.items():
        if not _is_default(field, hc.get(field)):
            warnings.append(f"silobox does not apply {what}: {field} discarded.")
            _reset(hc, field)
    warnings += check_blkio(hc)
    warnings += check_windows_cpu(hc)
    return warnings


def _reset(hc: dict[str, Any], field: str) -> None:
    hc[field] = -1 if field == "MemorySwappiness" else (
        [] if isinstance(hc[field], list) else type(hc[field])())


def hcs_settings(hc: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """The Windows resource controls as HCS's ``Container.Processor`` (``Count``; ``Maximum``
    in hundredths of a percent of the whole host) and ``Container.Storage.QoS``; only the
    ones that are set."""
    processor = {k: v for k, v in (("Count", hc.get("CpuCount") or 0),
                                   ("Maximum", (hc.get("CpuPercent") or 0) * 100)) if v}
    qos = {k: v for k, v in (("IopsMaximum", hc.get("IOMaximumIOps") or 0),
                             ("BandwidthMaximum", hc.get("IOMaximumBandwidth") or 0)) if v}
    return processor, qos


def check_blkio(hc: dict[str, Any]) -> list[str]:
    """Drop, with dockerd's warning, the block I/O fields this host cannot enforce."""
    from silobox.kernel.jobobject import io_support
    have = None
    warnings = []
    for field, (needed, warning) in BLKIO_FIELDS.items():
        if _is_default(field, hc.get(field)):
            continue
        if have is None:
            have = io_support()
        if needed not in have:
            warnings.append(warning)
            _reset(hc, field)
    return warnings


def check_windows_cpu(hc: dict[str, Any]) -> list[str]:
    """``--cpu-count`` and ``--cpu-percent``, the Windows CPU controls, checked as dockerd on
    Windows checks them (``daemon_windows.go``), plus the CFS controls they share kernel files
    with on Linux."""
    import os
    warnings = []
    for field in ("IOMaximumBandwidth", "IOMaximumIOps"):
        v = hc.get(field) or 0
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise InvalidArgument(f"invalid {field}: a non-negative integer is expected")
    count, percent = hc.get("CpuCount") or 0, hc.get("CpuPercent") or 0
    if not isinstance(count, int) or not isinstance(percent, int):
        raise InvalidArgument("CpuCount and CpuPercent must be integers")
    if count < 0:
        raise InvalidArgument("invalid CPU count: it must not be negative")
    if not 0 <= percent <= 100:
        raise InvalidArgument("Range of CPU percent is from 1 to 100")
    if percent and hc.get("NanoCpus"):
        raise InvalidArgument("Conflicting options: Nano CPUs and CPU Percent cannot both be set")
    if percent and (hc.get("CpuQuota") or hc.get("CpuPeriod")):
        raise InvalidArgument("Conflicting options: CPU Percent and CPU Period/Quota cannot both "
                              "be set")
    if count and hc.get("CpusetCpus"):
        raise InvalidArgument("Conflicting options: CPU count and cpuset CPUs cannot both be set")
    if count and percent:
        warnings.append("Conflicting options: CPU count takes priority over CPU percent on "
                        "Windows Server Containers. CPU percent discarded.")
        hc["CpuPercent"] = 0
    available = len(os.sched_getaffinity(0))
    if count > available:
        warnings.append(f"Only {available} CPUs are available to containers: CPU count "
                        f"{count} reduced to {available}.")
        hc["CpuCount"] = available
    return warnings


def _check_sysctls(sysctls: Any, network_mode: str, ipc_mode: str) -> None:
    """Only parameters the silo has its own copy of: net.* not with the host's network, the
    IPC ones not with the host's IPC namespace."""
    if not isinstance(sysctls, dict):
        raise InvalidArgument("json: cannot unmarshal into Go struct field HostConfig.Sysctls "
                              "of type map[string]string")
    for key, value in sysctls.items():
        if not isinstance(value, str):
            raise InvalidArgument(f"invalid sysctl value for {key!r}: a string is expected")
        if not key or "/" in key or ".." in key or key.startswith(".") or key.endswith("."):
            raise InvalidArgument(f"invalid sysctl name {key!r}")
        if key.startswith("net."):
            if network_mode == "host":
                raise InvalidArgument(f"sysctl {key!r} not allowed in host network namespace")
            continue
        if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
            if ipc_mode == "host":
                raise InvalidArgument(f"sysctl {key!r} not allowed in host IPC namespace")
            continue
        raise InvalidArgument(f"sysctl {key!r} is not allowed: it is not in a separate kernel "
                              "namespace")


def shared_host_namespaces(hc: dict[str, Any]) -> set[str]:
    """The namespaces (``ipc``, ``uts``, ``cgroup``) the container shares with the host."""
    return {ns for ns, field in (("ipc", "IpcMode"), ("uts", "UTSMode"),
                                 ("cgroup", "CgroupnsMode")) if hc.get(field) == "host"}
