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


def endpoint(ctx: Context, argv: list[str]) -> int:
    """``silo hns endpoint ls|inspect``."""
    verb = argv[0] if argv else ""
    if verb in ("ls", "list"):
        return _run(ctx, argv[1:], "endpoints", "ls")
    if verb == "inspect":
        return _run(ctx, argv[1:], "endpoints", "inspect")
    raise StatusError(1, "Usage:  silo hns endpoint ls|inspect")
