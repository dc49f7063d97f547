"""``silo network …`` (Docker's network verbs) and ``silo port``."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from silobox.cli import formatter
from silobox.cli.client import quote
from silobox.cli.commands import (Context, StatusError, for_each, inspect_objects, parse,
                                  parser)

_HEADERS = {"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE",
            "IPv6": "IPV6", "Internal": "INTERNAL", "CreatedAt": "CREATED AT",
            "Labels": "LABELS"}
_DEFAULT = "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}"


class NetworkRow:
    def __init__(self, rec: dict[str, Any], trunc: bool = True) -> None:
        self.rec = rec
        self.trunc = trunc

    @property
    def ID(self) -> str:
        i = str(self.rec.get("Id", ""))
        return i[:12] if self.trunc else i

    @property
    def Name(self) -> str:
        return self.rec.get("Name", "")

    @property
    def Driver(self) -> str:
        return self.rec.get("Driver", "")

    @property
    def Scope(self) -> str:
        return self.rec.get("Scope", "")

    @property
    def IPv6(self) -> str:
        return str(bool(self.rec.get("EnableIPv6"))).lower()

    @property
    def Internal(self) -> str:
        return str(bool(self.rec.get("Internal"))).lower()

    @property
    def CreatedAt(self) -> str:
        return self.rec.get("Created", "")

    @property
    def Labels(self) -> str:
        return ",".join(f"{k}={v}" for k, v in (self.rec.get("Labels") or {}).items())


def _filters(items: list[str]) -> dict[str, Any] | None:
    if not items:
        return None
    import json
    f: dict[str, list[str]] = {}
    for item in items:
        k, _, v = item.partition("=")
        f.setdefault(k, []).append(v)
    return {"filters": json.dumps(f)}


def ls(ctx: Context, argv: list[str]) -> int:
    p = parser(ctx, "network ls", "[OPTIONS]", "List networks")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="filter")
    p.add_argument("--format", metavar="string")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    ns = parse(p, argv)
    nets = ctx.client.get("/networks", _filters(ns.filter)) or []
    rows = [NetworkRow(n, trunc=not ns.no_trunc) for n in nets]
    if ns.quiet:
        ctx.out("".join(f"{r.ID}\n" for r in rows))
        return 0
    if ns.format == "json":
        ctx.out("".join(formatter.go_json(n) + "\n" for n in nets))
        return 0
    ctx.out(formatter.render_list(ns.format or _DEFAULT, rows, _HEADERS))
    return 0


def inspect(ctx: Context, argv: list[str]) -> int:
    p = parser(ctx, "network inspect", "[OPTIONS] NETWORK [NETWORK...]",
               "Display detailed information on one or more networks")
    p.add_argument("-f", "--format", metavar="string")
    p.add_argument("names", nargs="+", metavar="NETWORK")
    ns = parse(p, argv)
    return inspect_objects(ctx, ns.names, lambda ref: f"/networks/{ref}", ns.format)


def create(ctx: Context, argv: list[str]) -> int:
    p = parser(ctx, "network create", "[OPTIONS] NETWORK", "Create a network")
    p.add_argument("-d", "--driver", default="nat", metavar="string",
                   help="nat (default), transparent, l2bridge, l2tunnel or overlay")
    p.add_argument("--subnet", action="append", default=[], metavar="strings")
    p.add_argument("--gateway", action="append", default=[], metavar="strings")
    p.add_argument("--ip-range", action="append", default=[], metavar="strings")
    p.add_argument("--internal", action="store_true")
    p.add_argument("--ipv6", action="store_true", help="Enable IPv6 networking")
    p.add_argument("--label", action="append", default=[], metavar="list")
    p.add_argument("-o", "--opt", action="append", default=[], metavar="map")
    p.add_argument("name", metavar="NETWORK")
    ns = parse(p, argv)
    cfg: list[dict[str, str]] = []
    for i, s in enumerate(ns.subnet):
        c = {"Subnet": s}
        if i < len(ns.gateway):
            c["Gateway"] = ns.gateway[i]
        if i < len(ns.ip_range):
            c["IPRange"] = ns.ip_range[i]
        cfg.append(c)
    body = {"Name": ns.name, "Driver": ns.driver, "Internal": ns.internal,
            "EnableIPv6": ns.ipv6,
            "IPAM": {"Driver": "default", "Config": cfg},
            "Labels": dict(l.partition("=")[::2] for l in ns.label),
            "Options": dict(o.partition("=")[::2] for o in ns.opt)}
    r = ctx.client.post("/networks/create", body=body)
    ctx.out(f"{r['Id']}\n")
    return 0


def rm(ctx: Context, argv: list[str]) -> int:
    p = parser(ctx, "network rm", "NETWORK [NETWORK...]", "Remove one or more networks")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("names", nargs="+", metavar="NETWORK")
    ns = parse(p, argv)
    return for_each(ctx, ns.names, lambda c, n: c.call("DELETE", f"/networks/{quote(n)}"))


def prune(ctx: Context, argv: list[str]) -> int:
    p = parser(ctx, "network prune", "[OPTIONS]", "Remove all unused networks")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("--filter", action="append", default=[], metavar="filter")
    ns = parse(p, argv)
    r = ctx.client.post("/networks/prune", _filters(ns.filter)) or {}
    deleted = r.get("NetworksDeleted") or []
    if deleted:
        ctx.out("Deleted Networks:\n" + "".join(f"{n}\n" for n in deleted))
    return 0


def connect(ctx: Context, argv: list[str]) -> int:
    p = parser(ctx, "network connect", "[OPTIONS] NETWORK CONTAINER",
               "Connect a container to a network")
    p.add_argument("--alias", action="append", default=[], metavar="strings")
    p.add_argument("--ip", metavar="string")
    p.add_argument("--ip6", metavar="string")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("container", metavar="CONTAINER")
    ns = parse(p, argv)
    ec: dict[str, Any] = {"Aliases": ns.alias or None}
    if ns.ip or ns.ip6:
        ec["IPAMConfig"] = {k: v for k, v in (("IPv4Address", ns.ip), ("IPv6Address", ns.ip6))
                            if v}
    ctx.client.post(f"/networks/{quote(ns.network)}/connect",
                    body={"Container": ns.container, "EndpointConfig": ec})
    return 0


def disconnect(ctx: Context, argv: list[str]) -> int:
    p = parser(ctx, "network disconnect", "[OPTIONS] NETWORK CONTAINER",
               "Disconnect a container from a network")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("container", metavar="CONTAINER")
    ns = parse(p, argv)
    ctx.client.post(f"/networks/{quote(ns.network)}/disconnect",
                    body={"Container": ns.container, "Force": ns.force})
    return 0


def port(ctx: Context, argv: list[str]) -> int:
    """``silo port CONTAINER [PRIVATE_PORT[/PROTO]]``: NetworkSettings.Ports, docker's lines."""
    p = parser(ctx, "port", "CONTAINER [PRIVATE_PORT[/PROTO]]",
               "List port mappings or a specific mapping for the container")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("private", nargs="?", metavar="PRIVATE_PORT[/PROTO]")
    ns = parse(p, argv)
    info = ctx.client.get(f"/containers/{quote(ns.container)}/json")
    ports = (info.get("NetworkSettings") or {}).get("Ports") or {}
    want = None
    if ns.private:
        want = ns.private if "/" in ns.private else f"{ns.private}/tcp"
    lines = []
    for key in sorted(ports, key=lambda k: (int(k.split("/")[0]), k)):
        if want and key != want:
            continue
        for b in ports[key] or []:
            addr = f"{b.get('HostIp') or '0.0.0.0'}:{b.get('HostPort')}"
            lines.append(addr if want else f"{key} -> {addr}")
    if want and not lines:
        raise StatusError(1, f"Error: No public port '{want}' published for {ns.container}")
    ctx.out("".join(l + "\n" for l in lines))
    return 0
