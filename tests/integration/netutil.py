"""Helpers the network tests share: per-test containers and networks, and a test-made "outside".

Imported as a plain module (``from netutil import ...``): pytest puts tests/integration on the
path, and the name is unique across the test folders (both tests/kernel and tests/integration
have a ``conftest``, so ``from conftest import`` could load the wrong one). The ``drv`` and
``outside`` fixtures that wrap these classes are in tests/integration/conftest.py.

Safety: the outside is a network namespace the test creates, joined to the host by a veth pair
of its own; no helper touches the host's real NICs.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from typing import Any

IMAGE = "busybox"
IFACE = "com.docker.network.windowsshim.interface"


def sh(*args: str, check: bool = True) -> str:
    r = subprocess.run(list(args), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {r.stderr}")
    return r.stdout


def link_mac(name: str, netns: str | None = None) -> str:
    pre = ["ip", "-n", netns] if netns else ["ip"]
    return json.loads(sh(*pre, "-j", "link", "show", name))[0]["address"]


class Outside:
    """The external switch and a host on it: a namespace holding the far end of the test's NIC."""

    def __init__(self) -> None:
        tag = secrets.token_hex(2)
        self.ns = f"sbxo{tag}"
        self.nic = f"sbxu{tag}"   # the host's "physical NIC" handed to the network
        self.octet = int(tag, 16) % 200 + 20
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.nic, "type", "veth", "peer", "name", "ext", "netns", self.ns)
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.ns, "link", "set", "ext", "up")
        sh("ip", "link", "set", self.nic, "up")
        self.nic_mac = link_mac(self.nic)

    def run(self, script: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, "busybox", "sh", "-c", script],
                              capture_output=True, text=True, timeout=30, check=check)

    def neighbour_mac(self, ip: str) -> str:
        for n in json.loads(sh("ip", "-n", self.ns, "-j", "neigh", "show", ip)):
            if n.get("lladdr"):
                return n["lladdr"]
        return ""

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.nic], capture_output=True)


class TestResources:
    """Containers and networks one test made, registered before they are created and removed
    at the end (even after a failure); subclasses add how a test creates them."""

    __test__ = False   # a helper, not a test class

    def __init__(self, silod: Any) -> None:
        self.silod = silod
        self.api = silod.client
        self.containers: list[str] = []
        self.networks: list[str] = []

    def exec(self, cid: str, script: str) -> tuple[int, str]:
        e = self.api.exec_create(cid, ["sh", "-c", script])
        out = self.api.exec_start(e["Id"]).decode(errors="replace")
        return self.api.exec_inspect(e["Id"])["ExitCode"], out

    def close(self) -> None:
        for c in self.containers:
            try:
                self.api.remove_container(c, force=True)
            except Exception:
                pass
        for n in self.networks:
            try:
                self.api.remove_network(n)
            except Exception:
                pass


class Drivers(TestResources):
    """Per-test containers and networks of any driver, removed at the end."""

    def network(self, name: str, driver: str, subnet: str, gateway: str | None = None,
                **options: str) -> dict[str, Any]:
        self.networks.append(name)
        cfg = {"Subnet": subnet, **({"Gateway": gateway} if gateway else {})}
        return self.api.create_network(name, driver=driver, options=options,
                                       ipam={"Driver": "default", "Config": [cfg]})

    def run(self, cmd: str, network: str, **kw: Any) -> str:
        hc = self.api.create_host_config(network_mode=network, **kw)
        c = self.api.create_container(IMAGE, ["sh", "-c", cmd], host_config=hc)
        self.containers.append(c["Id"])
        self.api.start(c["Id"])
        return c["Id"]

    def settings(self, cid: str, network: str) -> dict[str, Any]:
        return self.api.inspect_container(cid)["NetworkSettings"]["Networks"][network]

    def hns(self, name: str) -> dict[str, Any]:
        status, nets = self.silod.request("GET", "/silobox/hns/networks")
        assert status == 200
        return next(n for n in nets if n["Name"] == name)
