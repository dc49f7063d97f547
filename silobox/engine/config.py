"""Daemon settings: where silod keeps its state and how it names what it creates on the host."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_ROOT = "/var/lib/silobox"
DEFAULT_EXEC_ROOT = "/run/silobox"
DEFAULT_SOCKET = "/run/silobox/silod.sock"


@dataclass
class DaemonConfig:
    root: str = DEFAULT_ROOT              # persistent state: store, layers, containers, logs
    exec_root: str = DEFAULT_EXEC_ROOT    # runtime state: sockets of silod and the shims
    socket: str = DEFAULT_SOCKET
    cgroup_parent: str = "silobox"        # every job object lives under this cgroup
    debug: bool = False
    init_binary: str = "/usr/bin/tini-static"
    default_stop_timeout: int = 10
    storage_opts: tuple[str, ...] = ()    # --storage-opt sandbox=disk|dir, size=20G
    shim_pool: int = 2                    # warm shims kept ready by the spawner
    insecure_registries: tuple[str, ...] = ()   # --insecure-registry host[:port] or CIDR
    registry_certs_dir: str = "/etc/silobox/certs.d"   # <host:port>/ca.crt, like certs.d
    registry_loopback_only: bool = False  # refuse registries off this machine (test daemons)
    ip_forward: bool = True               # turn net.ipv4.ip_forward on for nat networks
    forward_rules: bool = True            # accept rules in a host firewall's dropping forward hook

    @property
    def db_path(self) -> str:
        return os.path.join(self.root, "silobox.db")

    @property
    def containers_dir(self) -> str:
        return os.path.join(self.root, "containers")

    @property
    def compute_dir(self) -> str:
        # Short on purpose: shim socket paths must stay under the 108-byte sun_path limit.
        return os.path.join(self.exec_root, "c")

    @property
    def pid_file(self) -> str:
        return os.path.join(self.exec_root, "silod.pid")
