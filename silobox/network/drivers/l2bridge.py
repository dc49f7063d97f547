"""``l2bridge`` and ``l2tunnel``: an external vSwitch whose frames leave with the NIC's MAC.

HNS/VFP rewrites the source MAC of container frames; here a bridge-family nftables table in
the vSwitch namespace (``mac_rewrite_rules``) rewrites Ethernet and ARP source addresses on the
way out and, by destination IP, the destination MAC on the way in. The NIC's own port takes
another MAC of the pool so that its original address is free to stand for the containers.
Containers on the same host still talk directly through the bridge, except on ``l2tunnel``,
whose container ports are *isolated* bridge ports: they only forward to the uplink, so even
traffic between two containers of the host goes out to the external switch and must be
reflected back by it (hairpin/VEPA), as VFP does.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

from silobox.network.drivers.base import DriverSettings
from silobox.network.drivers.transparent import ExternalSwitchDriver
from silobox.network.objects import HostComputeNetwork


class L2BridgeDriver(ExternalSwitchDriver):
    name: ClassVar[str] = "l2bridge"
    hns_type: ClassVar[str] = "L2Bridge"
    rewrites_macs: ClassVar[bool] = True

    def prepare(self, n: HostComputeNetwork, s: DriverSettings) -> None:
        n.SourceMac = n.Uplink["Mac"]     # the NIC's MAC stands for the containers outside

    def reserve(self, n: HostComputeNetwork, allocate_mac: Callable[[str], str]) -> None:
        n.UplinkPortMac = allocate_mac("uplink")


class L2TunnelDriver(L2BridgeDriver):
    name: ClassVar[str] = "l2tunnel"
    hns_type: ClassVar[str] = "L2Tunnel"
    learning: ClassVar[bool] = False
    isolated_ports: ClassVar[bool] = True


# ----- the MAC rewrite (VFP's job), a bridge-family table ------------------------------------

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
