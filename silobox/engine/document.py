"""A stored container → the compute system that runs it (moby's ``oci_windows.go`` step).

Each start builds a fresh compute system from the record: this module writes its HCS document
and its first process's parameters; the hooks then add their parts (network, devices, ...).
"""

from __future__ import annotations

from typing import Any

from silobox.compute.schema import ProcessParameters
from silobox.engine.devices import device_rules
from silobox.engine.hostconfig import hcs_settings, shared_host_namespaces


def compute_document(c: Any, init_binary: str, layers: list[dict[str, str]],
                     sandbox_path: str) -> dict[str, Any]:
    """The HCS schema v2 document of a container's compute system: its silo, limits, mapped
    files and sandbox (``layers`` and ``sandbox_path`` are the storage's)."""
    hc = c.host_config
    sec = c.silobox["Security"]
    mapped = [
        {"HostPath": c.hostname_path, "ContainerPath": "/etc/hostname"},
        {"HostPath": c.hosts_path, "ContainerPath": "/etc/hosts"},
        {"HostPath": c.resolv_conf_path, "ContainerPath": "/etc/resolv.conf"},
    ]
    mapped += [{"HostPath": m["Source"], "ContainerPath": m["Destination"],
                "ReadOnly": not m["RW"],
                **({"Propagation": m["Propagation"]} if m["Type"] == "bind" and
                   m.get("Propagation") not in (None, "", "rprivate") else {})}
               for m in c.mounts]
    if hc.get("Init"):
        mapped.append({"HostPath": init_binary,
                       "ContainerPath": "/sbin/docker-init", "ReadOnly": True})
    shared = shared_host_namespaces(hc)
    if "ipc" in shared:   # POSIX shared memory lives in /dev/shm: the host's, as on Docker
        mapped.append({"HostPath": "/dev/shm", "ContainerPath": "/dev/shm"})
    res = dict(c.silobox["Resources"])
    processor, qos = hcs_settings(hc)
    hyperv = (hc.get("Isolation") or "").lower() == "hyperv"   # in a utility VM
    return {
        "Owner": "silod", "SchemaVersion": {"Major": 2, "Minor": 1},
        **({"HostingSystem": {"Type": "UtilityVM"}} if hyperv else {}),
        "ShouldTerminateOnLastHandleClosed": False,
        "Container": {
            "GuestOs": {"HostName": c.config["Hostname"]},
            "Storage": {"Layers": layers,
                        "Path": sandbox_path,
                        **({"QoS": qos} if qos else {})},
            **({"Processor": processor} if processor else {}),
            "MappedDirectories": mapped,
            "Memory": {"SizeInMB": (res.get("memory") or 0) // 2**20},
            "Networking": {},
            "Linux": {
                "Resources": res, "CapAdd": hc.get("CapAdd") or [],
                "CapDrop": hc.get("CapDrop") or [],
                "Seccomp": sec["Seccomp"], "SeccompUnconfined": sec["SeccompUnconfined"],
                "NoNewPrivileges": sec["NoNewPrivileges"],
                "ReadonlyRootfs": bool(hc.get("ReadonlyRootfs")),
                "Privileged": bool(hc.get("Privileged")),
                "Rlimits": hc.get("Ulimits") or [],
                "Domainname": c.config.get("Domainname") or "",
                "ShmSize": hc.get("ShmSize") or 64 * 1024 * 1024,
                "Namespaces": [n for n in ("mnt", "uts", "ipc", "net", "cgroup")
                               if n not in shared],
                "HostPid": hc.get("PidMode") == "host",
                "Sysctls": hc.get("Sysctls") or {},
                "GroupAdd": hc.get("GroupAdd") or [],
                "OomScoreAdj": hc.get("OomScoreAdj") or None,
                "DeviceCgroupRules": device_rules(hc),
                "MaskedPaths": hc.get("MaskedPaths"),
                "ReadonlyPaths": hc.get("ReadonlyPaths"),
            },
        },
    }

def init_params(c: Any) -> ProcessParameters:
    """The container's first process: its command (behind ``docker-init`` with ``--init``),
    environment, user and stdio."""
    cfg = c.config
    argv = [c.path, *c.args]
    if c.host_config.get("Init"):
        argv = ["/sbin/docker-init", "--"] + argv
    # dockerd's daemon environment: HOSTNAME, then a legacy link's variables; the
    # container's own Env wins over both
    env = {"HOSTNAME": cfg.get("Hostname") or ""}
    linked = c.silobox.get("LinkEnv") or []
    for item in [*linked, *cfg["Env"]]:
        k, _, v = item.partition("=")
        env[k] = v
    return ProcessParameters(
        command_args=argv, working_directory=cfg.get("WorkingDir") or "/",
        environment=env, user=cfg.get("User") or "", emulate_console=cfg["Tty"],
        create_stdin_pipe=cfg["OpenStdin"], stdin_once=cfg["StdinOnce"])
