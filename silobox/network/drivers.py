"""HNS network types other than nat: transparent, l2bridge, l2tunnel and overlay.

All four use an *external* vSwitch: a bridge of ours in silobox's vSwitch namespace with an
uplink, where Hyper-V binds a physical NIC or a VXLAN tunnel to the switch:

* ``transparent``: the host NIC (``-o com.docker.network.windowsshim.interface=IF``, or
  ``-o parent=IF``) moves into the vSwitch namespace as a bridge port; containers are on that
  NIC's L2 segment with their own MACs, addresses from the network's subnet (static IPAM), the
  gateway is a router outside; no NAT.
* ``l2bridge``: the same, but frames leave with the NIC's MAC (HNS/VFP rewrites the source
  MAC). A bridge-family nftables table in the vSwitch namespace rewrites Ethernet and ARP
  source addresses on the way out and, by destination IP, the destination MAC on the way in.
  The NIC's own port takes another MAC so that its original address is free to stand for the
  containers. Containers on the same host still talk directly through the bridge.
* ``l2tunnel``: l2bridge whose container ports are *isolated* bridge ports: they only forward
  to the uplink, so even traffic between two containers of the host goes out to the external
  switch and must be reflected back by it (hairpin/VEPA), as VFP does.
* ``overlay``: a VXLAN device (VNI from ``-o com.docker.network.driver.overlay.vxlanid_list``
  or the first free one from 4096) on the bridge; its underlay socket stays in the host
  namespace, bound to the NIC's address; remote VTEPs from ``-o silobox.overlay.peers=IP,...``.
  Endpoints get an MTU 50 bytes below the NIC's (HNS's ``EncapOverhead``).

The NIC is dedicated to the network while it exists (Hyper-V's external switch without a
management vNIC): it leaves the host's namespace and comes back, with its MAC, when the
network is removed or silod stops with no endpoint left.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from silobox.errors import Conflict, InvalidArgument

EXTERNAL = ("transparent", "l2bridge", "l2tunnel")
DRIVERS = ("nat",) + EXTERNAL + ("overlay",)
HNS_TYPES = {"nat": "nat", "transparent": "Transparent", "l2bridge": "L2Bridge",
             "l2tunnel": "L2Tunnel", "overlay": "Overlay"}

OPT_INTERFACE = "com.docker.network.windowsshim.interface"
OPT_PARENT = "parent"
OPT_VXLANID = "com.docker.network.driver.overlay.vxlanid_list"
OPT_PEERS = "silobox.overlay.peers"
OPT_VXLAN_PORT = "silobox.overlay.port"
KNOWN_OPTIONS = {OPT_INTERFACE, OPT_PARENT, OPT_VXLANID, OPT_PEERS, OPT_VXLAN_PORT,
                 "com.docker.network.windowsshim.networkname",
                 "com.docker.network.windowsshim.hnsid"}
VXLAN_OVERHEAD = 50
FIRST_VNI = 4096


@dataclass
class DriverSettings:
    """What a driver needs besides the subnet, validated at ``network create``."""

    driver: str
    interface: str = ""
    vni: int = 0
    peers: list[str] = field(default_factory=list)
    vxlan_port: int = 4789


def parse(driver: str, options: dict[str, str], *, subnet: str | None, internal: bool,
          ipv6: bool, used_interfaces: set[str], used_vnis: set[int]) -> DriverSettings:
    """Docker's ``network create`` driver and ``-o`` options → settings, or a precise error."""
    driver = {"bridge": "nat"}.get(driver, driver)
    if driver not in DRIVERS:
        raise InvalidArgument(f'plugin "{driver}" not found: silobox supports the drivers '
                              + ", ".join(DRIVERS))
    opts = dict(options or {})
    for k in opts:
        if k.startswith(("com.docker.network.windowsshim.", "com.docker.network.driver.overlay.",
                         "silobox.")) and k not in KNOWN_OPTIONS:
            raise InvalidArgument(f"option {k} is not supported by silobox")
    iface = opts.get(OPT_INTERFACE) or opts.get(OPT_PARENT) or ""
    if opts.get(OPT_INTERFACE) and opts.get(OPT_PARENT) and \
            opts[OPT_INTERFACE] != opts[OPT_PARENT]:
        raise InvalidArgument(f"options {OPT_INTERFACE} and {OPT_PARENT} name different "
                              "interfaces")
    s = DriverSettings(driver, interface=iface)
    if driver == "nat":
        if iface:
            raise InvalidArgument(f"the nat driver has no uplink: option {OPT_INTERFACE} "
                                  "needs -d transparent, l2bridge, l2tunnel or overlay")
    if driver != "overlay":
        for k in (OPT_VXLANID, OPT_PEERS, OPT_VXLAN_PORT):
            if k in opts:
                raise InvalidArgument(f"option {k} is only valid with -d overlay")
    if driver == "nat":
        return s
    if internal:
        raise InvalidArgument(f"--internal is not supported by the {driver} driver (its "
                              "containers are on the external network by definition)")
    if ipv6:
        raise InvalidArgument(f"IPv6 is not supported by the {driver} driver")
    if not subnet:
        raise InvalidArgument(f"the {driver} driver needs --subnet (and usually --gateway): "
                              "silobox assigns addresses statically, it has no DHCP client")
    if driver in EXTERNAL:
        if not iface:
            raise InvalidArgument(f"the {driver} driver needs the host interface to bind: "
                                  f"-o {OPT_INTERFACE}=IFNAME")
        if iface in used_interfaces:
            raise Conflict(f"network interface {iface} is already used by another network")
        return s
    # overlay
    if iface and iface in used_interfaces:
        raise Conflict(f"network interface {iface} is already used by another network")
    if OPT_VXLANID in opts:
        text = opts[OPT_VXLANID].split(",")[0].strip()
        try:
            s.vni = int(text)
        except ValueError:
            raise InvalidArgument(f"invalid VXLAN id {opts[OPT_VXLANID]!r}") from None
        if not 1 <= s.vni <= 0xFFFFFF:
            raise InvalidArgument(f"VXLAN id {s.vni} is out of range 1-16777215")
        if s.vni in used_vnis:
            raise Conflict(f"VXLAN id {s.vni} is already used by another network")
    else:
        s.vni = next(v for v in range(FIRST_VNI, 0xFFFFFF) if v not in used_vnis)
    for peer in filter(None, (p.strip() for p in opts.get(OPT_PEERS, "").split(","))):
        try:
            s.peers.append(str(ipaddress.IPv4Address(peer)))
        except ValueError:
            raise InvalidArgument(f"invalid VTEP address {peer!r} in {OPT_PEERS}") from None
    if OPT_VXLAN_PORT in opts:
        try:
            s.vxlan_port = int(opts[OPT_VXLAN_PORT])
        except ValueError:
            s.vxlan_port = 0
        if not 1 <= s.vxlan_port <= 65535:
            raise InvalidArgument(f"invalid VXLAN UDP port {opts[OPT_VXLAN_PORT]!r}")
    return s


def check_interface(driver: str, name: str, info: dict[str, Any] | None, ours: bool) -> None:
    """Refuse NICs that cannot be bound: missing, enslaved, silobox's own (``ours``), or (for
    the bridged drivers) carrying host addresses, which the host would lose with the NIC."""
    if info is None:
        raise InvalidArgument(f"network interface {name} not found on the host")
    if name == "lo" or ours:
        raise InvalidArgument(f"network interface {name} cannot be an uplink")
    if driver == "overlay":
        if not info["ipv4"]:
            raise InvalidArgument(f"network interface {name} has no IPv4 address to use as the "
                                  "local VXLAN tunnel endpoint")
        return
    if info["master"]:
        raise Conflict(f"network interface {name} is already enslaved to another device")
    if info["ipv4"]:
        raise Conflict(f"network interface {name} carries host addresses "
                       f"({', '.join(info['ipv4'])}); the {driver} driver takes the whole NIC "
                       "into the vSwitch, so use a NIC dedicated to containers")


# ----- the l2bridge/l2tunnel MAC rewrite (VFP's job), a bridge-family table ------------------

def _m(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def _pl(proto: str, fld: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": fld}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _set(proto: str, fld: str, value: str) -> dict[str, Any]:
    return {"mangle": {"key": _pl(proto, fld), "value": value}}


def mac_rewrite_rules(table: str, networks: list[tuple[str, str, list[tuple[str, str]]]]
                      ) -> list[dict[str, Any]]:
    """Chains and rules of the vSwitch's ``bridge`` table.

    ``networks``: (uplink NIC, the MAC the containers present outside, [(container IP, its
    MAC)]). Out: Ethernet and ARP sender addresses become the NIC's MAC. In: frames for a
    container's IP (IPv4 or ARP) get its MAC back as destination, before the bridge looks the
    destination up."""
    def chain(name: str, hook: str, prio: int) -> dict[str, Any]:
        return {"add": {"chain": {"family": "bridge", "table": table, "name": name,
                                  "type": "filter", "hook": hook, "prio": prio,
                                  "policy": "accept"}}}

    def rule(ch: str, *expr: dict[str, Any]) -> dict[str, Any]:
        return {"add": {"rule": {"family": "bridge", "table": table, "chain": ch,
                                 "expr": list(expr)}}}

    cmds = [chain("ingress", "prerouting", -300), chain("egress", "postrouting", 300)]
    for nic, outside_mac, endpoints in networks:
        cmds.append(rule("egress", _m(_meta("oifname"), nic),
                         _set("ether", "saddr", outside_mac)))
        cmds.append(rule("egress", _m(_meta("oifname"), nic),
                         _m(_pl("ether", "type"), "arp"),
                         _set("arp", "saddr ether", outside_mac)))
        for ip, mac in endpoints:
            cmds.append(rule("ingress", _m(_meta("iifname"), nic), _m(_pl("ip", "daddr"), ip),
                             _set("ether", "daddr", mac)))
            cmds.append(rule("ingress", _m(_meta("iifname"), nic),
                             _m(_pl("arp", "daddr ip"), ip),
                             _set("ether", "daddr", mac), _set("arp", "daddr ether", mac)))
    return cmds
