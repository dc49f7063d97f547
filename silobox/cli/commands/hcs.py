"""``silo hcs``: the compute service's own records, as ``hcsdiag list`` shows them on Windows.

These are the compute systems (container = job object + silo) that silod's compute service
holds, independent of the Docker-level view: useful to see what the engine asked for and what
the kernel objects look like.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs start-up time
    from typing import Any

from silobox.cli import formatter
from silobox.cli.commands import (Context, RecordRow, inspect_objects, is_full_id, parse,
                                  parser)

_HEADERS = {"Id": "ID", "ID": "ID", "Name": "NAME", "State": "STATE", "Owner": "OWNER",
            "SystemType": "SYSTEM TYPE", "Runtime": "RUNTIME", "RuntimeOsType": "RUNTIME"}
_DEFAULT = "table {{.ID}}\t{{.Name}}\t{{.State}}\t{{.Owner}}\t{{.SystemType}}\t{{.Runtime}}"


class ComputeSystemRow(RecordRow):
    """One compute system in the list."""

    @property
    def Name(self) -> str:
        name = str(self.rec.get("Name") or "")
        return name[:12] if self.trunc and is_full_id(name) else name

    @property
    def Runtime(self) -> str:
        return str(self.rec.get("RuntimeOsType") or self.rec.get("RuntimeId") or
                   self.rec.get("Runtime") or "")

    def to_json(self) -> dict[str, Any]:
        return self.rec


def ls(ctx: Context, argv: list[str]) -> int:
    """``silo hcs ls``: GET /silobox/compute-systems."""
    p = parser(ctx, "hcs ls", "[OPTIONS]", "List the compute service's compute systems")
    p.add_argument("--format", metavar="string",
                   help="Format output: 'json', 'table' or a template")
    p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="Only display IDs")
    ns = parse(p, argv)
    client = ctx.client
    records = client.call("GET", "/silobox/compute-systems") or []
    if isinstance(records, dict):  # tolerate {"ComputeSystems": [...]}
        records = next((v for v in records.values() if isinstance(v, list)), [])
    rows = [ComputeSystemRow(r, trunc=not ns.no_trunc) for r in records]
    if ns.quiet:
        ctx.out("".join(f"{r.ID}\n" for r in rows))
        return 0
    fmt = ns.format
    if fmt == "json":
        ctx.out("".join(formatter.go_json(r) + "\n" for r in records))
        return 0
    if not fmt or fmt == "table":
        fmt = _DEFAULT
    ctx.out(formatter.render_list(fmt, rows, _HEADERS))
    return 0


def inspect(ctx: Context, argv: list[str]) -> int:
    """``silo hcs inspect ID [--type Statistics,ProcessList]``: the record as pretty JSON."""
    p = parser(ctx, "hcs inspect", "[OPTIONS] ID [ID...]",
               "Show the compute service's record of compute systems")
    p.add_argument("--type", action="append", default=[], metavar="list",
                   help="Property types to query (Statistics, ProcessList, ...)")
    p.add_argument("-f", "--format", metavar="string",
                   help="Format output using a custom template")
    p.add_argument("ids", nargs="+", metavar="ID")
    ns = parse(p, argv)
    types = [t.strip() for item in ns.type for t in item.split(",") if t.strip()]
    params = {"types": ",".join(types)} if types else None
    return inspect_objects(ctx, ns.ids, lambda ref: f"/silobox/compute-systems/{ref}",
                           ns.format, params)
