"""WinNAT on Linux: the one nftables table of every nat network's OutBoundNAT and PortMapping.

The service renders the whole table from its records and swaps it in as one transaction
(add, delete, add: the table is replaced atomically, never edited rule by rule). Per nat
network: masquerade of the subnet's egress through any other link, hairpin and loopback
masquerade for published ports, no forwarding between nat networks, and for ``--internal``
ones no forwarding at all; per published port a ``dnat`` reached from prerouting and output
for local destinations. IPv6 is not NATed: its own table only keeps vNICs from forwarding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from silobox.network import nft as N
from silobox.network.objects import PortMapping


@dataclass
class NatNetwork:
    host_port: str          # the host vNIC holding the gateway
    subnet: str             # IPv4 prefix
    internal: bool
    ipv6: bool


def tables(table: str, networks: list[NatNetwork],
           published: list[tuple[str, PortMapping]]) -> list[dict[str, Any]]:
    """The batch replacing our ``ip`` and ``ip6`` tables named ``table``."""
    t4 = {"family": "ip", "name": table}
    t6 = {"family": "ip6", "name": table}
    cmds = [{"add": {"table": t4}}, {"delete": {"table": t4}}, {"add": {"table": t4}}]
    cmds += ruleset(table, networks, published)
    cmds += [{"add": {"table": t6}}, {"delete": {"table": t6}}]
    v6 = [n.host_port for n in networks if n.ipv6]
    if v6:
        # Containers' IPv6 reaches their own network and the host, nothing beyond (no
        # IPv6 NAT): whatever the host's forwarding setting, nothing is forwarded from or
        # to a vNIC, which also keeps IPv6 networks isolated from each other.
        cmds += [{"add": {"table": t6}},
                 {"add": {"chain": {"family": "ip6", "table": table, "name": "forward",
                                    "type": "filter", "hook": "forward", "prio": -1,
                                    "policy": "accept"}}}]
        for hp in v6:
            for key in ("iifname", "oifname"):
                cmds.append({"add": {"rule": {
                    "family": "ip6", "table": table, "chain": "forward",
                    "expr": [N.match(N.meta(key), hp), {"drop": None}]}}})
    return cmds


def ruleset(table: str, networks: list[NatNetwork],
            published: list[tuple[str, PortMapping]]) -> list[dict[str, Any]]:
    """Chains and rules of the ``ip`` table (to add to an empty table of that name)."""
    def chain(name: str, **kw: Any) -> dict[str, Any]:
        return {"add": {"chain": {"family": "ip", "table": table, "name": name, **kw}}}

    def rule(ch: str, *expr: dict[str, Any]) -> dict[str, Any]:
        return {"add": {"rule": {"family": "ip", "table": table, "chain": ch,
                                 "expr": list(expr)}}}

    cmds = [
        chain("publish"),
        chain("prerouting", type="nat", hook="prerouting", prio=-100, policy="accept"),
        chain("output", type="nat", hook="output", prio=-100, policy="accept"),
        chain("postrouting", type="nat", hook="postrouting", prio=100, policy="accept"),
        chain("forward", type="filter", hook="forward", prio=-1, policy="accept"),
        rule("prerouting", N.fib_daddr_local(), {"jump": {"target": "publish"}}),
        rule("output", N.fib_daddr_local(), {"jump": {"target": "publish"}}),
    ]
    for address, m in published:
        expr = []
        if m.VIP:
            expr.append(N.match(N.payload("ip", "daddr"), m.VIP))
        expr += [N.match(N.meta("l4proto"), m.proto_name),
                 N.match(N.payload("th", "dport"), m.ExternalPort),
                 {"dnat": {"addr": address, "port": m.InternalPort}}]
        cmds.append(rule("publish", *expr))
    for n in networks:
        hp = n.host_port
        # 127.0.0.1 → published port: the source must become the gateway for the reply.
        cmds.append(rule("postrouting", N.match(N.meta("oifname"), hp),
                         N.match(N.payload("ip", "saddr"), N.prefix("127.0.0.0/8")),
                         {"masquerade": None}))
        # Hairpin: a container reaching a published port through a host address.
        cmds.append(rule("postrouting", N.match(N.meta("oifname"), hp),
                         N.match(N.payload("ip", "saddr"), N.prefix(n.subnet)),
                         N.match({"ct": {"key": "status"}}, "dnat", "in"),
                         {"masquerade": None}))
        if n.internal:
            cmds.append(rule("forward", N.match(N.meta("iifname"), hp), {"drop": None}))
            cmds.append(rule("forward", N.match(N.meta("oifname"), hp), {"drop": None}))
            continue
        # OutBoundNAT: egress of the subnet leaving through any other link.
        cmds.append(rule("postrouting", N.match(N.payload("ip", "saddr"), N.prefix(n.subnet)),
                         N.match(N.meta("oifname"), hp, "!="), {"masquerade": None}))
        for other in networks:
            if other is not n:
                cmds.append(rule("forward", N.match(N.meta("iifname"), hp),
                                 N.match(N.meta("oifname"), other.host_port), {"drop": None}))
    return cmds
