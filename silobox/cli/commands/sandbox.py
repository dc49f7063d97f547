"""``silo sandbox``: each container's writable sandbox, as diskpart shows a container's VHDX.

``ls``/``inspect`` list the disks (size, used, file, loop device); ``expand`` grows one
(ExpandSandboxSize); ``attach``/``detach`` mount a stopped container's sandbox on the host,
read-only unless ``--rw`` (``attach vdisk`` + ``assign letter`` in the talk).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs start-up time
    from typing import Any

from silobox.cli import formatter, units
from silobox.cli.client import quote
from silobox.cli.commands import Context, RecordRow, inspect_objects, parse, parser

_HEADERS = {"ID": "CONTAINER ID", "Name": "NAME", "Kind": "KIND", "Size": "SIZE",
            "Used": "USED", "FileSize": "ON DISK", "Device": "DEVICE", "State": "STATE",
            "Attached": "ATTACHED", "Path": "PATH", "Disk": "DISK"}
_DEFAULT = ("table {{.ID}}\t{{.Name}}\t{{.Kind}}\t{{.Size}}\t{{.Used}}\t{{.FileSize}}\t"
            "{{.Device}}\t{{.Attached}}")


class SandboxRow(RecordRow):
    @property
    def Size(self) -> str:
        return units.bytes_size(self.rec["Size"]) if self.rec.get("Kind") == "disk" else "-"

    @property
    def Used(self) -> str:
        return units.bytes_size(self.rec.get("Used") or 0)

    @property
    def FileSize(self) -> str:
        return units.bytes_size(self.rec["FileSize"]) if self.rec.get("Kind") == "disk" else "-"

    @property
    def Device(self) -> str:
        return self.rec.get("LoopDevice") or "-"

    @property
    def Attached(self) -> str:
        att = self.rec.get("Attached")
        return att["MountPoint"] if att else "-"

    def to_json(self) -> dict[str, Any]:
        return self.rec


def ls(ctx: Context, argv: list[str]) -> int:
    """``silo sandbox ls``: GET /silobox/sandboxes."""
    p = parser(ctx, "sandbox ls", "[OPTIONS]", "List the containers' sandboxes")
    p.add_argument("--format", metavar="string",
                   help="Format output: 'json', 'table' or a template")
    p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="Only display container IDs")
    ns = parse(p, argv)
    rows = [SandboxRow(r, not ns.no_trunc) for r in ctx.client.get("/silobox/sandboxes") or []]
    if ns.quiet:
        ctx.out("".join(f"{r.ID}\n" for r in rows))
        return 0
    fmt = ns.format
    if fmt == "json":
        ctx.out("".join(formatter.go_json(r.rec) + "\n" for r in rows))
        return 0
    ctx.out(formatter.render_list(_DEFAULT if not fmt or fmt == "table" else fmt, rows,
                                  _HEADERS))
    return 0


def inspect(ctx: Context, argv: list[str]) -> int:
    """``silo sandbox inspect C...``: size, used, path, loop device as JSON (or a template)."""
    p = parser(ctx, "sandbox inspect", "[OPTIONS] CONTAINER [CONTAINER...]",
               "Display the sandbox of one or more containers")
    p.add_argument("-f", "--format", metavar="string",
                   help="Format output using a custom template")
    p.add_argument("refs", nargs="+", metavar="CONTAINER")
    ns = parse(p, argv)
    return inspect_objects(ctx, ns.refs, lambda ref: f"/silobox/sandboxes/{ref}", ns.format)


def expand(ctx: Context, argv: list[str]) -> int:
    """``silo sandbox expand C SIZE``: grow the sandbox disk (never shrinks)."""
    p = parser(ctx, "sandbox expand", "CONTAINER SIZE",
               "Grow a container's sandbox disk (online while it runs)")
    p.add_argument("ref", metavar="CONTAINER")
    p.add_argument("size", metavar="SIZE")
    ns = parse(p, argv)
    rec = ctx.client.post(f"/silobox/sandboxes/{quote(ns.ref)}/expand", body={"Size": ns.size})
    ctx.out(f"{units.bytes_size(rec.get('Size') or 0)}\n")
    return 0


def attach(ctx: Context, argv: list[str]) -> int:
    """``silo sandbox attach C [MOUNTPOINT] [--merged] [--rw] [--exec]``: prints the mount
    point."""
    p = parser(ctx, "sandbox attach", "[OPTIONS] CONTAINER [MOUNTPOINT]",
               "Mount a stopped container's sandbox on the host (read-only by default)")
    p.add_argument("--merged", action="store_true",
                   help="Mount the container's whole filesystem, not only its changes")
    p.add_argument("--rw", action="store_true", help="Mount read-write")
    p.add_argument("--exec", action="store_true",
                   help="Allow running the container's programs from the mount (never setuid)")
    p.add_argument("ref", metavar="CONTAINER")
    p.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT")
    ns = parse(p, argv)
    import os
    body = {"MountPoint": os.path.abspath(ns.mountpoint) if ns.mountpoint else "",
            "Merged": ns.merged, "ReadWrite": ns.rw, "Exec": ns.exec}
    rec = ctx.client.post(f"/silobox/sandboxes/{quote(ns.ref)}/attach", body=body)
    ctx.out(f"{rec['MountPoint']}\n")
    return 0


def detach(ctx: Context, argv: list[str]) -> int:
    """``silo sandbox detach C``: unmount what ``attach`` mounted."""
    p = parser(ctx, "sandbox detach", "CONTAINER", "Unmount an attached sandbox")
    p.add_argument("ref", metavar="CONTAINER")
    ns = parse(p, argv)
    rec = ctx.client.post(f"/silobox/sandboxes/{quote(ns.ref)}/detach")
    ctx.out(f"{rec['MountPoint']}\n")
    return 0
