"""Image commands: ls (``images``), inspect, rm (``rmi``), import.

silobox never contacts a registry, so images arrive by ``import`` (a root filesystem tarball) and
the listing and removal output follows docker's.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs start-up time
    from typing import Any

from silobox.cli import formatter, units
from silobox.cli.client import APIError, error_message, quote
from silobox.cli.commands import Context, StatusError, parse, parser, short_id

_HEADERS = {
    "Repository": "REPOSITORY", "Tag": "TAG", "ID": "IMAGE ID", "Digest": "DIGEST",
    "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE",
    "Containers": "CONTAINERS", "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE",
    "VirtualSize": "VIRTUAL SIZE",
}
_DEFAULT = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"


def split_reference(ref: str) -> tuple[str, str]:
    """``repo/name:tag`` → (``repo/name``, ``tag``); a registry port is not a tag."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, ""
    return name, tag


class ImageRow:
    """One ``images`` line; attribute names are docker's template fields."""

    def __init__(self, img: dict[str, Any], repo: str, tag: str, digest: str,
                 trunc: bool = True, now: float | None = None) -> None:
        self.img = img
        self.Repository = repo
        self.Tag = tag
        self.Digest = digest
        self.trunc = trunc
        self.now = time.time() if now is None else now

    @property
    def ID(self) -> str:
        iid = self.img.get("Id", "")
        return short_id(iid) if self.trunc else iid

    @property
    def CreatedSince(self) -> str:
        created = self.img.get("Created") or 0
        if not created:
            return "N/A"
        return units.human_duration(self.now - float(created)) + " ago"

    @property
    def CreatedAt(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S %z %Z",
                             time.localtime(int(self.img.get("Created") or 0)))

    @property
    def Size(self) -> str:
        return units.human_size(self.img.get("Size") or 0)

    @property
    def VirtualSize(self) -> str:
        return units.human_size(self.img.get("VirtualSize") or self.img.get("Size") or 0)

    @property
    def SharedSize(self) -> str:
        shared = self.img.get("SharedSize", -1)
        return "N/A" if shared is None or shared < 0 else units.human_size(shared)

    @property
    def UniqueSize(self) -> str:
        shared = self.img.get("SharedSize", -1)
        if shared is None or shared < 0:
            return "N/A"
        return units.human_size((self.img.get("Size") or 0) - shared)

    @property
    def Containers(self) -> str:
        n = self.img.get("Containers", -1)
        return "N/A" if n is None or n < 0 else str(n)

    def to_json(self) -> dict[str, str]:
        return {f: getattr(self, f) for f in ("Containers", "CreatedAt", "CreatedSince",
                                              "Digest", "ID", "Repository", "SharedSize",
                                              "Size", "Tag", "UniqueSize", "VirtualSize")}


def image_rows(images: list[dict[str, Any]], trunc: bool = True,
               now: float | None = None) -> list[ImageRow]:
    """One row per tag; untagged images show ``<none>`` as docker does."""
    rows: list[ImageRow] = []
    for img in images:
        tags = [t for t in img.get("RepoTags") or [] if t != "<none>:<none>"]
        digests = [d for d in img.get("RepoDigests") or [] if d != "<none>@<none>"]
        digest = digests[0].split("@", 1)[1] if digests else "<none>"
        if tags:
            for t in tags:
                repo, tag = split_reference(t)
                rows.append(ImageRow(img, repo, tag or "<none>", digest, trunc, now))
        elif digests:
            repo = digests[0].split("@", 1)[0]
            rows.append(ImageRow(img, repo, "<none>", digest, trunc, now))
        else:
            rows.append(ImageRow(img, "<none>", "<none>", digest, trunc, now))
    return rows


def ls(ctx: Context, argv: list[str]) -> int:
    """``silo images`` / ``image ls``."""
    p = parser(ctx, "images", "[OPTIONS] [REPOSITORY[:TAG]]", "List images")
    p.add_argument("-a", "--all", action="store_true",
                   help="Show all images (default hides intermediate images)")
    p.add_argument("--digests", action="store_true", help="Show digests")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="filter",
                   help="Filter output based on conditions provided")
    p.add_argument("--format", metavar="string", help="Format output using a custom template")
    p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="Only show image IDs")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")
    ns = parse(p, argv)
    from silobox.cli.commands.container import parse_filters

    filters = parse_filters(ns.filter)
    if ns.reference:
        filters.setdefault("reference", []).append(ns.reference)
    params: dict[str, Any] = {"all": ns.all or None}
    if filters:
        import json

        params["filters"] = json.dumps(filters, separators=(",", ":"))
    images = ctx.client.get("/images/json", params) or []
    rows = image_rows(images, trunc=not ns.no_trunc)
    if ns.quiet:
        seen: set[str] = set()
        for r in rows:
            if r.ID not in seen:
                seen.add(r.ID)
                ctx.out(r.ID + "\n")
        return 0
    fmt = ns.format
    if not fmt or fmt == "table":
        fmt = _DEFAULT if not ns.digests else \
            "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
    elif fmt == "json":
        fmt = "{{json .}}"
    ctx.out(formatter.render_list(fmt, rows, _HEADERS))
    return 0


def inspect(ctx: Context, argv: list[str]) -> int:
    """``silo image inspect``."""
    from silobox.cli.commands.container import _inspect

    return _inspect(ctx, argv, "image")


def rm(ctx: Context, argv: list[str]) -> int:
    """``silo rmi`` / ``image rm``: prints ``Untagged:`` / ``Deleted:`` lines like docker."""
    p = parser(ctx, "rmi", "[OPTIONS] IMAGE [IMAGE...]", "Remove one or more images")
    p.add_argument("-f", "--force", action="store_true", help="Force removal of the image")
    p.add_argument("--no-prune", action="store_true", help="Do not delete untagged parents")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    ns = parse(p, argv)
    failed = []
    for name in ns.images:
        try:
            items = ctx.client.call("DELETE", f"/images/{quote(name, safe='/:@')}",
                                    {"force": ns.force or None, "noprune": ns.no_prune or None})
        except APIError as e:
            failed.append(str(e))
            continue
        for item in items or []:
            for key in ("Untagged", "Deleted"):
                if item.get(key):
                    ctx.out(f"{key}: {item[key]}\n")
    if failed:
        raise StatusError(1, "\n".join(failed))
    return 0


def import_(ctx: Context, argv: list[str]) -> int:
    """``silo import FILE|- [REPOSITORY[:TAG]]``: create an image from a rootfs tarball."""
    p = parser(ctx, "import", "[OPTIONS] file|URL|- [REPOSITORY[:TAG]]",
               "Import the contents from a tarball to create a filesystem image")
    p.add_argument("-c", "--change", action="append", default=[], metavar="list",
                   help="Apply Dockerfile instruction to the created image")
    p.add_argument("-m", "--message", metavar="string",
                   help="Set commit message for imported image")
    p.add_argument("--platform", metavar="string", help="Set platform")
    p.add_argument("source", metavar="file|URL|-")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")
    ns = parse(p, argv)
    if "://" in ns.source:
        raise StatusError(1, "importing from a URL is not supported: silobox never downloads")
    repo, tag = split_reference(ns.reference) if ns.reference else ("", "")
    params: dict[str, Any] = {"fromSrc": "-", "repo": repo or None, "tag": tag or None,
                              "message": ns.message or None, "changes": ns.change or None,
                              "platform": ns.platform or None}
    client = ctx.client
    headers = {"Content-Type": "application/x-tar"}
    if ns.source == "-":
        data = sys.stdin.buffer.read()
        resp = client.send("POST", "/images/create", params, headers=headers, raw=data)
    else:
        try:
            f = open(ns.source, "rb")
        except OSError as e:
            raise StatusError(1, f"open {ns.source}: {(e.strerror or str(e)).lower()}") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            conn = client.connect()
            url = client.url("/images/create", params)
            client.log_request("POST", url)
            head = (f"POST {url} HTTP/1.1\r\nHost: docker\r\nUser-Agent: silo\r\n"
                    f"Content-Type: application/x-tar\r\nContent-Length: {size}\r\n\r\n")
            conn.sock.sendall(head.encode("latin-1"))
            while chunk := f.read(1 << 20):
                conn.sock.sendall(chunk)
            resp = conn.read_response("POST")
    if resp.status >= 400:
        body = resp.read()
        resp.conn.close()
        raise APIError(resp.status, error_message(resp.status, body))
    import json

    failed = ""
    for line in resp.iter_lines():
        try:
            msg = json.loads(line)
        except ValueError:
            ctx.out(line.decode("utf-8", "replace") + "\n")
            continue
        if msg.get("error") or msg.get("errorDetail"):
            failed = msg.get("error") or (msg.get("errorDetail") or {}).get("message", "")
            continue
        if msg.get("status"):
            ctx.out(f"{msg['status']}\n")
    resp.conn.close()
    if failed:
        raise StatusError(1, failed)
    return 0
