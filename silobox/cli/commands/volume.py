"""``silo volume``: create, ls, inspect, rm, prune (docker's volume verbs), and ``--mount``."""

from __future__ import annotations

import json

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs start-up time
    from typing import Any

from silobox.cli import formatter
from silobox.cli.client import quote
from silobox.cli.commands import (Context, StatusError, for_each, inspect_objects, parse,
                                  parser)

_HEADERS = {"Driver": "DRIVER", "Name": "VOLUME NAME", "Mountpoint": "MOUNTPOINT",
            "Scope": "SCOPE", "Labels": "LABELS", "Links": "LINKS", "Size": "SIZE",
            "CreatedAt": "CREATED AT"}
_DEFAULT = "table {{.Driver}}\t{{.Name}}"


class VolumeRow:
    def __init__(self, vol: dict[str, Any]) -> None:
        self.vol = vol

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.vol.get(name, "")

    @property
    def Labels(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted((self.vol.get("Labels") or {}).items()))

    def Label(self, name: str) -> str:
        return (self.vol.get("Labels") or {}).get(name, "")

    @property
    def Links(self) -> str:
        return "N/A"

    @property
    def Size(self) -> str:
        return "N/A"

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in ("Driver", "Labels", "Links", "Mountpoint", "Name",
                                              "Scope", "Size")}


def _filters(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep:
            raise StatusError(125, f"invalid argument \"{item}\" for \"-f, --filter\" flag: "
                              "bad format of filter (expected name=value)")
        out.setdefault(k.strip(), []).append(v)
    return out


def _kv(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        if not k:
            raise StatusError(125, f"invalid argument \"{item}\" for \"{what}\" flag")
        out[k] = v
    return out


def create(ctx: Context, argv: list[str]) -> int:
    """``silo volume create [NAME]``: POST /volumes/create; prints the name."""
    p = parser(ctx, "volume create", "[OPTIONS] [VOLUME]", "Create a volume")
    p.add_argument("-d", "--driver", default="local", metavar="string",
                   help='Specify volume driver name (default "local")')
    p.add_argument("--label", action="append", default=[], metavar="list",
                   help="Set metadata for a volume")
    p.add_argument("-o", "--opt", action="append", default=[], metavar="map",
                   help="Set driver specific options")
    p.add_argument("--name", metavar="string", help="Specify volume name")
    p.add_argument("volume", nargs="?", metavar="VOLUME")
    ns = parse(p, argv)
    if ns.name and ns.volume and ns.name != ns.volume:
        raise StatusError(125, "conflicting options: either specify --name or provide "
                          "positional arg, not both")
    body = {"Name": ns.volume or ns.name or "", "Driver": ns.driver,
            "DriverOpts": _kv(ns.opt, "-o, --opt"), "Labels": _kv(ns.label, "--label")}
    vol = ctx.client.post("/volumes/create", body=body)
    ctx.out(f"{vol['Name']}\n")
    return 0


def ls(ctx: Context, argv: list[str]) -> int:
    """``silo volume ls``: GET /volumes."""
    p = parser(ctx, "volume ls", "[OPTIONS]", "List volumes")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="filter",
                   help="Provide filter values (e.g. 'dangling=true')")
    p.add_argument("--format", metavar="string",
                   help="Format output: 'json', 'table' or a template")
    p.add_argument("-q", "--quiet", action="store_true", help="Only display volume names")
    ns = parse(p, argv)
    params = {}
    filters = _filters(ns.filter)
    if filters:
        params["filters"] = json.dumps(filters, separators=(",", ":"))
    res = ctx.client.get("/volumes", params or None) or {}
    rows = [VolumeRow(v) for v in res.get("Volumes") or []]
    rows.sort(key=lambda r: r.vol.get("Name", ""))
    if ns.quiet:
        ctx.out("".join(f"{r.vol['Name']}\n" for r in rows))
        return 0
    fmt = ns.format
    if fmt == "json":
        ctx.out("".join(formatter.go_json(r.to_json()) + "\n" for r in rows))
        return 0
    if not fmt or fmt == "table":
        fmt = _DEFAULT
    ctx.out(formatter.render_list(fmt, rows, _HEADERS))
    return 0


def inspect(ctx: Context, argv: list[str]) -> int:
    """``silo volume inspect NAME...``: GET /volumes/{name}, pretty JSON or a template."""
    p = parser(ctx, "volume inspect", "[OPTIONS] VOLUME [VOLUME...]",
               "Display detailed information on one or more volumes")
    p.add_argument("-f", "--format", metavar="string",
                   help="Format output using a custom template")
    p.add_argument("names", nargs="+", metavar="VOLUME")
    ns = parse(p, argv)
    return inspect_objects(ctx, ns.names, lambda ref: f"/volumes/{ref}", ns.format)


def rm(ctx: Context, argv: list[str]) -> int:
    """``silo volume rm NAME...``: DELETE /volumes/{name}; in-use volumes are refused."""
    p = parser(ctx, "volume rm", "[OPTIONS] VOLUME [VOLUME...]",
               "Remove one or more volumes. You cannot remove a volume that is in use by a "
               "container.")
    p.add_argument("-f", "--force", action="store_true",
                   help="Force the removal of one or more volumes")
    p.add_argument("names", nargs="+", metavar="VOLUME")
    ns = parse(p, argv)
    params = {"force": "1"} if ns.force else None
    return for_each(ctx, ns.names,
                    lambda c, n: c.request("DELETE", f"/volumes/{quote(n)}", params) and None)


def prune(ctx: Context, argv: list[str]) -> int:
    """``silo volume prune``: POST /volumes/prune (anonymous volumes; ``-a`` all unused)."""
    p = parser(ctx, "volume prune", "[OPTIONS]", "Remove unused local volumes")
    p.add_argument("-a", "--all", action="store_true",
                   help="Remove all unused volumes, not just anonymous ones")
    p.add_argument("--filter", action="append", default=[], metavar="filter",
                   help="Provide filter values (e.g. 'label=<label>')")
    p.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    ns = parse(p, argv)
    if not ns.force:
        import sys
        what = "all local volumes not used by at least one container" if ns.all else \
            "all anonymous local volumes not used by at least one container"
        ctx.out(f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ")
        sys.stdout.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            return 0
    filters = _filters(ns.filter)
    if ns.all:
        filters["all"] = ["true"]
    params = {"filters": json.dumps(filters, separators=(",", ":"))} if filters else None
    res = ctx.client.post("/volumes/prune", params) or {}
    deleted = res.get("VolumesDeleted") or []
    if deleted:
        ctx.out("Deleted Volumes:\n" + "".join(f"{n}\n" for n in deleted) + "\n")
    from silobox.cli import units
    ctx.out(f"Total reclaimed space: {units.human_size(res.get('SpaceReclaimed') or 0)}\n")
    return 0


# -- --mount ----------------------------------------------------------------------------------

_TRUE = ("", "1", "true", "yes")
_FALSE = ("0", "false", "no")


def parse_mount_flag(value: str) -> dict[str, Any]:
    """``--mount type=volume,src=v,dst=/d,readonly`` → a HostConfig.Mounts item (docker's
    keys: type, source/src, destination/dst/target, readonly/ro, volume-nocopy, volume-label,
    volume-driver, volume-opt, tmpfs-size, tmpfs-mode, bind-propagation)."""
    from silobox.cli.opts import OptError
    from silobox.cli.units import parse_bytes

    m: dict[str, Any] = {"Type": "volume"}
    for field in value.split(","):
        key, eq, val = field.partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro"):
            if val.lower() not in _TRUE + _FALSE:
                raise OptError(f"invalid value for {key}: {val}")
            m["ReadOnly"] = val.lower() in _TRUE
            continue
        if key == "volume-nocopy":
            m.setdefault("VolumeOptions", {})["NoCopy"] = val.lower() in _TRUE
            continue
        if not eq:
            raise OptError(f"invalid field '{field}' must be a key=value pair")
        if key == "type":
            m["Type"] = val
        elif key in ("source", "src"):
            m["Source"] = val
        elif key in ("destination", "dst", "target"):
            m["Target"] = val
        elif key == "volume-label":
            k, _, v = val.partition("=")
            m.setdefault("VolumeOptions", {}).setdefault("Labels", {})[k] = v
        elif key == "volume-driver":
            m.setdefault("VolumeOptions", {}).setdefault("DriverConfig", {})["Name"] = val
        elif key == "volume-opt":
            k, _, v = val.partition("=")
            dc = m.setdefault("VolumeOptions", {}).setdefault("DriverConfig", {})
            dc.setdefault("Options", {})[k] = v
        elif key == "volume-subpath":
            m.setdefault("VolumeOptions", {})["Subpath"] = val
        elif key == "tmpfs-size":
            try:
                m.setdefault("TmpfsOptions", {})["SizeBytes"] = parse_bytes(val)
            except ValueError:
                raise OptError(f"invalid value for tmpfs-size: {val}") from None
        elif key == "tmpfs-mode":
            try:
                m.setdefault("TmpfsOptions", {})["Mode"] = int(val, 8)
            except ValueError:
                raise OptError(f"invalid value for tmpfs-mode: {val}") from None
        elif key == "bind-propagation":
            m.setdefault("BindOptions", {})["Propagation"] = val
        elif key in ("consistency",):
            m["Consistency"] = val
        else:
            raise OptError(f"unexpected key '{key}' in '{field}'")
    if not m.get("Target"):
        raise OptError("target is required")
    return m
