"""Endpoint ACL and Route policies: validation and their kernel form.

HNS (VFP and the compartment-aware Windows Firewall) enforces ``ACL`` policies per endpoint;
here they are an ``inet`` nftables table of silobox's own *inside the container's network
namespace* (the compartment), where conntrack works, so the rules are stateful like the
firewall's: replies of an allowed flow pass whatever the rules say about their direction.
The container cannot change the table (it has no CAP_NET_ADMIN by default).

Rule order is HNS's: lower ``Priority`` first; at equal priority Block before Allow; the first
matching rule decides. Traffic no rule matches is allowed, so a default-deny endpoint carries
a ``Block`` with the highest Priority number and no other condition.

``Route`` policies (HCN ``SDNRoute``) are routes of the compartment through the endpoint's
vNIC: ``DestinationPrefix`` via ``NextHop``, or on-link when ``NeedEncap`` is set and there is
no next hop (the overlay's VXLAN port carries it).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from silobox.errors import InvalidArgument

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "igmp": 2, "any": 256}
_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp", 2: "igmp"}
TABLE = "silobox"
MUTABLE = ("ACL", "Route")


def _split(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(x).strip() for x in value if str(x).strip()]
    return [x.strip() for x in str(value).split(",") if x.strip()]


def _protocols(value: Any) -> list[int]:
    out = []
    for p in _split(value):
        n = PROTOCOLS.get(p.lower())
        if n is None:
            try:
                n = int(p)
            except ValueError:
                raise InvalidArgument(f"ACL: unknown protocol {p!r}") from None
        if not 0 <= n <= 256:
            raise InvalidArgument(f"ACL: protocol {p} is out of range 0-256")
        if n != 256:
            out.append(n)
    return sorted(set(out))


def _addresses(value: Any, what: str) -> list[str]:
    out = []
    for a in _split(value):
        try:
            out.append(str(ipaddress.IPv4Network(a, strict=False)))
        except ValueError:
            raise InvalidArgument(f"ACL: invalid {what} {a!r} (IPv4 address or prefix)") from None
    return out


def _ports(value: Any, what: str) -> list[tuple[int, int]]:
    out = []
    for p in _split(value):
        lo, _, hi = p.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise InvalidArgument(f"ACL: invalid {what} {p!r}") from None
        if not 0 < a <= b <= 65535:
            raise InvalidArgument(f"ACL: invalid {what} {p!r}")
        out.append((a, b))
    return out


def normalise(policy: dict[str, Any]) -> dict[str, Any]:
    """A policy as the HNS API takes it (``{"Type", "Settings"}``, or v1's flat form) →
    the stored form with validated, canonical settings; InvalidArgument on anything wrong."""
    if not isinstance(policy, dict):
        raise InvalidArgument("a policy is an object with Type and Settings")
    kind = policy.get("Type")
    s = policy.get("Settings")
    if s is None:
        s = {k: v for k, v in policy.items() if k != "Type"}
    if not isinstance(s, dict):
        raise InvalidArgument("policy Settings must be an object")
    if kind == "ACL":
        action = str(s.get("Action", "Allow")).capitalize()
        direction = str(s.get("Direction", "In")).capitalize()
        if action not in ("Allow", "Block"):
            raise InvalidArgument(f"ACL: Action must be Allow or Block, not {s.get('Action')!r}")
        if direction not in ("In", "Out"):
            raise InvalidArgument(f"ACL: Direction must be In or Out, not {s.get('Direction')!r}")
        protos = _protocols(s.get("Protocols"))
        lp, rp = _ports(s.get("LocalPorts"), "LocalPorts"), _ports(s.get("RemotePorts"),
                                                                    "RemotePorts")
        if (lp or rp) and (not protos or any(p not in (6, 17) for p in protos)):
            raise InvalidArgument("ACL: LocalPorts/RemotePorts need Protocols TCP (6) and/or "
                                  "UDP (17)")
        try:
            prio = int(s.get("Priority", 0))
        except (TypeError, ValueError):
            raise InvalidArgument(f"ACL: invalid Priority {s.get('Priority')!r}") from None
        if not 0 <= prio <= 65535:
            raise InvalidArgument("ACL: Priority must be within 0-65535")
        return {"Type": "ACL", "Settings": {
            "Id": str(s.get("Id", "")), "Action": action, "Direction": direction,
            "Protocols": ",".join(str(p) for p in protos),
            "LocalAddresses": ",".join(_addresses(s.get("LocalAddresses"), "LocalAddresses")),
            "RemoteAddresses": ",".join(_addresses(s.get("RemoteAddresses"),
                                                   "RemoteAddresses")),
            "LocalPorts": ",".join(f"{a}-{b}" if a != b else str(a) for a, b in lp),
            "RemotePorts": ",".join(f"{a}-{b}" if a != b else str(a) for a, b in rp),
            "Priority": prio, "RuleType": str(s.get("RuleType", "Switch"))}}
    if kind == "Route":
        dst = s.get("DestinationPrefix")
        try:
            dst = str(ipaddress.IPv4Network(str(dst), strict=False))
        except ValueError:
            raise InvalidArgument(f"Route: invalid DestinationPrefix {dst!r}") from None
        hop = str(s.get("NextHop") or "")
        if hop:
            try:
                hop = str(ipaddress.IPv4Address(hop))
            except ValueError:
                raise InvalidArgument(f"Route: invalid NextHop {hop!r}") from None
        encap = bool(s.get("NeedEncap", False))
        if not hop and not encap:
            raise InvalidArgument("Route: NextHop is required unless NeedEncap is set "
                                  "(an on-link route)")
        return {"Type": "Route", "Settings": {"DestinationPrefix": dst, "NextHop": hop,
                                              "NeedEncap": encap}}
    if kind in ("PortMapping", "OutBoundNAT", "VSID"):
        raise InvalidArgument(f"{kind} policies are set when the endpoint is created and "
                              "cannot be modified")
    raise InvalidArgument(f"unknown policy type {kind!r} (ACL or Route can be modified)")


def routes(endpoint: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["Settings"]["DestinationPrefix"], p["Settings"]["NextHop"])
            for p in endpoint["Policies"] if p["Type"] == "Route"]


# ----- the compartment's nft table ------------------------------------------------------------

def _m(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _set_of(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else {"set": values}


def _prefixes(cidrs: str) -> Any:
    out: list[Any] = []
    for c in cidrs.split(","):
        a, _, l = c.partition("/")
        out.append(a if l == "32" else {"prefix": {"addr": a, "len": int(l)}})
    return _set_of(out)


def _portset(ports: str) -> Any:
    out: list[Any] = []
    for p in ports.split(","):
        lo, _, hi = p.partition("-")
        out.append({"range": [int(lo), int(hi)]} if hi else int(lo))
    return _set_of(out)


def acl_ruleset(endpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The body of ``inet silobox`` in one compartment: a chain per vNIC and direction."""
    T = TABLE

    def chain(name: str, **kw: Any) -> dict[str, Any]:
        return {"add": {"chain": {"family": "inet", "table": T, "name": name, **kw}}}

    def rule(ch: str, *expr: dict[str, Any]) -> dict[str, Any]:
        return {"add": {"rule": {"family": "inet", "table": T, "chain": ch, "expr": list(expr)}}}

    meta = lambda k: {"meta": {"key": k}}  # noqa: E731
    cmds = [chain("input", type="filter", hook="input", prio=0, policy="accept"),
            chain("output", type="filter", hook="output", prio=0, policy="accept"),
            rule("input", _m({"ct": {"key": "state"}}, ["established", "related"], "in"),
                 {"accept": None}),
            rule("output", _m({"ct": {"key": "state"}}, ["established", "related"], "in"),
                 {"accept": None})]
    for e in endpoints:
        acls = [p["Settings"] for p in e["Policies"] if p["Type"] == "ACL"]
        if not acls:
            continue
        ifname = e["IfName"]
        cin, cout = f"in_{ifname}", f"out_{ifname}"
        cmds += [chain(cin), chain(cout),
                 rule("input", _m(meta("iifname"), ifname), {"jump": {"target": cin}}),
                 rule("output", _m(meta("oifname"), ifname), {"jump": {"target": cout}})]
        for a in sorted(acls, key=lambda a: (a["Priority"], a["Action"] != "Block")):
            inbound = a["Direction"] == "In"
            local, remote = ("daddr", "saddr") if inbound else ("saddr", "daddr")
            lport, rport = ("dport", "sport") if inbound else ("sport", "dport")
            expr: list[dict[str, Any]] = []
            if a["LocalAddresses"] or a["RemoteAddresses"]:
                expr.append(_m(meta("nfproto"), "ipv4"))
            if a["LocalAddresses"]:
                expr.append(_m({"payload": {"protocol": "ip", "field": local}},
                               _prefixes(a["LocalAddresses"])))
            if a["RemoteAddresses"]:
                expr.append(_m({"payload": {"protocol": "ip", "field": remote}},
                               _prefixes(a["RemoteAddresses"])))
            protos = [int(p) for p in a["Protocols"].split(",") if p]
            if protos:
                expr.append(_m(meta("l4proto"), _set_of(protos)))
            if a["LocalPorts"]:
                expr.append(_m({"payload": {"protocol": "th", "field": lport}},
                               _portset(a["LocalPorts"])))
            if a["RemotePorts"]:
                expr.append(_m({"payload": {"protocol": "th", "field": rport}},
                               _portset(a["RemotePorts"])))
            verdict = {"accept": None} if a["Action"] == "Allow" else {"drop": None}
            cmds.append(rule(cin if inbound else cout, *expr, verdict))
    return cmds
