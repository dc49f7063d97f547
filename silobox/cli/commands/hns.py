"""``silo hns …``: the networking service's own records, as Get-HnsNetwork/Get-HnsEndpoint."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from silobox.cli import formatter
from silobox.cli.client import APIError, quote
from silobox.cli.commands import Context, StatusError, parse, parser

_NET_FIELDS = ("ActivityId", "AdditionalParams", "CurrentEndpointCount", "Extensions", "Flags",
               "Health", "ID", "IPv6", "LayeredOn", "MacPools", "MaxConcurrentEndpoints", "Name",
               "NatName", "Policies", "Resources", "State", "Subnets", "TotalEndpoints", "Type",
               "Version")
_NET_EXTRA = ("NetworkAdapterName", "SourceMac", "DrMacAddress", "ManagementIP", "VSID")
"""Get-HnsNetwork's fields that only networks on an external vSwitch have."""
_EP_FIELDS = ("ID", "Name", "VirtualNetwork", "VirtualNetworkName", "IPAddress", "PrefixLength",
              "GatewayAddress", "MacAddress", "Namespace", "Policies", "SharedContainers",
              "State", "IsRemoteEndpoint", "EnableInternalDNS")


def _value(v: Any) -> str:
    """PowerShell's list view renders nested objects as @{k=v; …} and arrays as {…}."""
    if isinstance(v, dict):
        return "@{" + "; ".join(f"{k}={_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "{" + ", ".join(_value(x) for x in v) + "}"
    if isinstance(v, bool):
        return "True" if v else "False"
    return "" if v is None else str(v)


def _list_view(records: list[dict[str, Any]], fields: tuple[str, ...],
               extra: tuple[str, ...] = ()) -> str:
    width = max(len(f) for f in fields + extra)
    out = []
    for r in records:
        shown = sorted(fields + tuple(f for f in extra if f in r))
        out.append("\n" + "".join(f"{f.ljust(width)} : {_value(r.get(f))}\n" for f in shown))
    return "".join(out) + ("\n" if out else "")


def _run(ctx: Context, argv: list[str], kind: str, verb: str) -> int:
    fields = _NET_FIELDS if kind == "networks" else _EP_FIELDS
    what = "network" if kind == "networks" else "endpoint"
    if verb == "ls":
        p = parser(ctx, f"hns {what} ls", "[OPTIONS]", f"List the HNS {what}s")
    else:
        p = parser(ctx, f"hns {what} inspect", "[OPTIONS] ID|NAME [...]",
                   f"Show HNS {what} records")
        p.add_argument("refs", nargs="+", metavar="ID")
    p.add_argument("--format", metavar="string", help="'json' or a template")
    ns = parse(p, argv)
    errors: list[str] = []
    if verb == "ls":
        records = ctx.client.get(f"/silobox/hns/{kind}") or []
    else:
        records = []
        for ref in ns.refs:
            try:
                records.append(ctx.client.get(f"/silobox/hns/{kind}/{quote(ref)}"))
            except APIError as e:
                errors.append(str(e))
    if ns.format == "json":
        ctx.out(formatter.pretty_json(records if verb == "ls" or len(records) != 1
                                      else records[0]) + "\n")
    elif ns.format:
        tmpl = formatter.Template(ns.format)
        ctx.out("".join(tmpl.execute(r) + "\n" for r in records))
    else:
        ctx.out(_list_view(records, fields, _NET_EXTRA if kind == "networks" else ()))
    if errors:
        raise StatusError(1, "\n".join(errors))
    return 0


def network(ctx: Context, argv: list[str]) -> int:
    """``silo hns network ls|inspect``."""
    verb = argv[0] if argv else ""
    if verb in ("ls", "list"):
        return _run(ctx, argv[1:], "networks", "ls")
    if verb == "inspect":
        return _run(ctx, argv[1:], "networks", "inspect")
    raise StatusError(1, "Usage:  silo hns network ls|inspect")


_REQUESTS = {"add": "Add", "rm": "Remove", "remove": "Remove", "set": "Refresh"}


def policy(ctx: Context, argv: list[str]) -> int:
    """``silo hns endpoint policy add|rm|set ENDPOINT POLICY...``: HCN ModifyEndpoint.

    A POLICY is JSON, ``{"Type": "ACL", "Settings": {...}}`` or a list of them; ``-`` reads
    them from stdin. ``set`` replaces every ACL and Route policy (none given: removes all)."""
    import json
    import sys
    verb = argv[0] if argv else ""
    if verb not in _REQUESTS:
        raise StatusError(1, "Usage:  silo hns endpoint policy add|rm|set ENDPOINT POLICY...")
    p = parser(ctx, f"hns endpoint policy {verb}", "ENDPOINT [POLICY...]",
               "Add, remove or replace an endpoint's ACL and Route policies")
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument("policies", nargs="*", metavar="POLICY")
    p.add_argument("--format", metavar="string", help="'json' to print the endpoint")
    ns = parse(p, argv[1:])
    items: list[Any] = []
    for text in ns.policies:
        if text == "-":
            text = sys.stdin.read()
        try:
            v = json.loads(text)
        except ValueError as e:
            raise StatusError(1, f"invalid policy JSON {text!r}: {e}") from None
        items += v if isinstance(v, list) else [v]
    if not items and verb != "set":
        raise StatusError(1, f"silo hns endpoint policy {verb} needs at least one POLICY")
    rec = ctx.client.post(f"/silobox/hns/endpoints/{quote(ns.endpoint)}/policies",
                          body={"RequestType": _REQUESTS[verb], "Policies": items})
    if ns.format == "json":
        ctx.out(formatter.pretty_json(rec) + "\n")
    else:
        ctx.out(_list_view([rec], _EP_FIELDS))
    return 0


def endpoint(ctx: Context, argv: list[str]) -> int:
    """``silo hns endpoint ls|inspect|policy``."""
    verb = argv[0] if argv else ""
    if verb in ("ls", "list"):
        return _run(ctx, argv[1:], "endpoints", "ls")
    if verb == "inspect":
        return _run(ctx, argv[1:], "endpoints", "inspect")
    if verb == "policy":
        return policy(ctx, argv[1:])
    raise StatusError(1, "Usage:  silo hns endpoint ls|inspect|policy")
