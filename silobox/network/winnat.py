"""WinNAT on Linux: the one nftables table of every nat network's OutBoundNAT and PortMapping.

The service renders the whole table from its records and swaps it in as one transaction
(add, delete, add: the table is replaced atomically, never edited rule by rule). Per nat
network: masquerade of the subnet's egress through any other link, hairpin and loopback
masquerade for published ports, no forwarding between nat networks, and for ``--internal``
ones no forwarding at all; per published port a ``dnat`` reached from prerouting and output
for local destinations. IPv6 subnets get the same OutBoundNAT in an ``ip6`` table, and nothing
from another link reaches their vNICs but replies (no published IPv6 ports)."""

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
    subnet6: str = ""       # IPv6 prefix of an --ipv6 network


def tables(table: str, networks: list[NatNetwork],
           published: list[tuple[str, PortMapping]]) -> list[dict[str, Any]]:
    """The batch replacing our ``ip`` and ``ip6`` tables named ``table``."""
    t4 = {"family": "ip", "name": table}
    t6 = {"family": "ip6", "name": table}
    cmds = [{"add": {"table": t4}}, {"delete": {"table": t4}}, {"add": {"table": t4}}]
    cmds += ruleset(table, networks, published)
    cmds += [{"add": {"table": t6}}, {"delete": {"table": t6}}]
    v6 = [n for n in networks if n.subnet6]
    if v6:
        cmds += [{"add": {"table": t6}}] + ruleset6(table, v6)
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


def ruleset6(table: str, networks: list[NatNetwork]) -> list[dict[str, Any]]:
    """IPv6 of nat networks: OutBoundNAT (masquerade) of a subnet leaving through another
    link, as Docker's default IPv6 bridge networks do; nothing from another link reaches a
    vNIC but replies (no published IPv6 ports); networks stay apart; internal ones route
    nothing. Host ↔ container and container ↔ container never pass this hook."""
    def chain(name: str, **kw: Any) -> dict[str, Any]:
        return {"add": {"chain": {"family": "ip6", "table": table, "name": name, **kw}}}

    def rule(ch: str, *expr: dict[str, Any]) -> dict[str, Any]:
        return {"add": {"rule": {"family": "ip6", "table": table, "chain": ch,
                                 "expr": list(expr)}}}

    cmds = [chain("postrouting", type="nat", hook="postrouting", prio=100, policy="accept"),
            chain("forward", type="filter", hook="forward", prio=-1, policy="accept")]
    ports = [n.host_port for n in networks]
    for n in networks:
        hp = n.host_port
        if n.internal:
            cmds.append(rule("forward", N.match(N.meta("iifname"), hp), {"drop": None}))
            cmds.append(rule("forward", N.match(N.meta("oifname"), hp), {"drop": None}))
            continue
        cmds.append(rule("postrouting",
                         N.match(N.payload("ip6", "saddr"), N.prefix(n.subnet6)),
                         N.match(N.meta("oifname"), hp, "!="), {"masquerade": None}))
        for other in ports:
            if other != hp:
                cmds.append(rule("forward", N.match(N.meta("iifname"), hp),
                                 N.match(N.meta("oifname"), other), {"drop": None}))
        cmds.append(rule("forward", N.match(N.meta("oifname"), hp),
                         N.match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                         {"accept": None}))
        cmds.append(rule("forward", N.match(N.meta("oifname"), hp), {"drop": None}))
    return cmds
