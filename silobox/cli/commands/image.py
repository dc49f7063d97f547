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
from silobox.cli.client import APIError, quote
from silobox.cli.commands import Context, StatusError, parse, parser, short_id
from silobox.cli.progress import print_messages

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
    resp = _upload(ctx, "POST", "/images/create", params, ns.source)   # "-": as it is read
    print_messages(resp, ctx.out)   # bytes on a terminal; the image id on stdout
    return 0


# -- tag, history, prune -----------------------------------------------------------------------


def tag(ctx: Context, argv: list[str]) -> int:
    """``silo tag SOURCE TARGET``."""
    p = parser(ctx, "tag", "SOURCE_IMAGE[:TAG] TARGET_IMAGE[:TAG]",
               "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE")
    p.add_argument("source")
    p.add_argument("target")
    ns = parse(p, argv)
    repo, tag_ = split_reference(ns.target)
    ctx.client.request("POST", f"/images/{quote(ns.source, safe='/:@')}/tag",
                       {"repo": repo, "tag": tag_ or None})
    return 0


def history(ctx: Context, argv: list[str]) -> int:
    """``silo history IMAGE``: the layers and commands an image was made of, newest first."""
    p = parser(ctx, "history", "[OPTIONS] IMAGE", "Show the history of an image")
    p.add_argument("-H", "--human", action="store_true", default=True,
                   help="Print sizes and dates in human readable format")
    p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="Only show image IDs")
    p.add_argument("--format", metavar="string", help="Format output using a custom template")
    p.add_argument("image")
    ns = parse(p, argv)
    items = ctx.client.get(f"/images/{quote(ns.image, safe='/:@')}/history") or []
    if ns.quiet:
        for item in items:
            ctx.out((item["Id"] if ns.no_trunc or item["Id"] == "<missing>"
                     else short_id(item["Id"])) + "\n")
        return 0
    now = time.time()
    rows = [["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]]
    for item in items:
        image_id = item["Id"] if ns.no_trunc or item["Id"] == "<missing>" else short_id(item["Id"])
        created = units.human_duration(now - item["Created"]) + " ago" if item["Created"] \
            else "N/A"
        by = item.get("CreatedBy") or ""
        if not ns.no_trunc and len(by) > 45:
            by = by[:44] + "…"
        rows.append([image_id, created, by, units.human_size(item.get("Size") or 0),
                     item.get("Comment") or ""])
    ctx.out(_table(rows))
    return 0


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n"
                   for r in rows)


def prune(ctx: Context, argv: list[str]) -> int:
    """``silo image prune``: remove dangling images (all unused ones with ``-a``)."""
    p = parser(ctx, "image prune", "[OPTIONS]", "Remove unused images")
    p.add_argument("-a", "--all", action="store_true",
                   help="Remove all unused images, not just dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    p.add_argument("--filter", action="append", default=[], metavar="filter",
                   help='Provide filter values (e.g. "until=<timestamp>")')
    ns = parse(p, argv)
    if not ns.force:
        what = "all images without at least one container associated to them" if ns.all \
            else "all dangling images"
        ctx.out(f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ")
        sys.stdout.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            return 0
    from silobox.cli.commands.container import parse_filters
    import json

    filters = parse_filters(ns.filter)
    if ns.all:
        filters["dangling"] = ["false"]
    report = ctx.client.post("/images/prune",
                             {"filters": json.dumps(filters) if filters else None}) or {}
    deleted = report.get("ImagesDeleted") or []
    if deleted:
        ctx.out("Deleted Images:\n")
        for item in deleted:
            for key in ("Untagged", "Deleted"):
                if item.get(key):
                    ctx.out(f"{key.lower()}: {item[key]}\n")
        ctx.out("\n")
    ctx.out(f"Total reclaimed space: {units.human_size(report.get('SpaceReclaimed') or 0)}\n")
    return 0


# -- bodies and progress -----------------------------------------------------------------------


def _upload(ctx: Context, method: str, path: str, params: dict[str, Any],
            source: str) -> Any:
    """Send a file or stdin (``-``, chunked as it is read) as the request body."""
    if source == "-":
        return ctx.client.upload(method, path, params, sys.stdin.buffer, None)
    try:
        f = open(source, "rb")
    except OSError as e:
        raise StatusError(1, f"open {source}: {(e.strerror or str(e)).lower()}") from None
    with f:
        return ctx.client.upload(method, path, params, f, os.fstat(f.fileno()).st_size)


def bootstrap(ctx: Context, argv: list[str]) -> int:
    """``silo image bootstrap [NAME[:TAG]]``: a Debian base image built from Debian's archive."""
    p = parser(ctx, "image bootstrap", "[OPTIONS] [NAME[:TAG]]",
               "Build a Debian base image from the Debian package archive (no registry)")
    p.add_argument("name", nargs="?", default="debian:bookworm", metavar="NAME[:TAG]")
    p.add_argument("--suite", metavar="string", help="Debian suite (default: the tag)")
    p.add_argument("--variant", default="minbase", metavar="string",
                   help="mmdebstrap variant (minbase, essential, apt, required, ...)")
    p.add_argument("--mirror", metavar="url", help="Debian mirror (default: the host's apt)")
    ns = parse(p, argv)
    params = {"tag": ns.name, "variant": ns.variant}
    if ns.suite:
        params["suite"] = ns.suite
    if ns.mirror:
        params["mirror"] = ns.mirror
    resp = ctx.client.stream("POST", "/silobox/images/bootstrap", params, own_connection=True)
    print_messages(resp, ctx.out)
    return 0


# -- load, save --------------------------------------------------------------------------------


def load(ctx: Context, argv: list[str]) -> int:
    """``silo load``: images from a docker-archive or OCI layout tar (file or stdin)."""
    p = parser(ctx, "load", "[OPTIONS]", "Load an image from a tar archive or STDIN")
    p.add_argument("-i", "--input", metavar="string",
                   help="Read from tar archive file, instead of STDIN")
    p.add_argument("-q", "--quiet", action="store_true", help="Suppress the load output")
    ns = parse(p, argv)
    source = ns.input or "-"
    if source == "-" and sys.stdin.isatty():
        raise StatusError(1, "requested load from stdin, but stdin is empty")
    resp = _upload(ctx, "POST", "/images/load", {"quiet": "1" if ns.quiet else "0"}, source)
    print_messages(resp, ctx.out, progress=not ns.quiet)
    return 0


def save(ctx: Context, argv: list[str]) -> int:
    """``silo save``: one archive for all the images named (docker-archive + OCI layout; with
    ``--format oci`` a pure OCI layout)."""
    p = parser(ctx, "save", "[OPTIONS] IMAGE [IMAGE...]",
               "Save one or more images to a tar archive (streamed to STDOUT by default)")
    p.add_argument("-o", "--output", metavar="string", help="Write to a file, instead of STDOUT")
    p.add_argument("--format", default="docker", choices=("docker", "oci"),
                   help="Archive layout: docker (also an OCI layout) or oci (OCI layout only)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    ns = parse(p, argv)
    if not ns.output and sys.stdout.isatty():
        raise StatusError(1, "cowardly refusing to save to a terminal. Use the -o flag or "
                             "redirect")
    resp = ctx.client.stream("GET", "/images/get", {"names": ns.images, "format": ns.format},
                             own_connection=True)
    _download(resp, ns.output, "Saving")
    return 0


def _download(resp: Any, output: str | None, what: str) -> None:
    """Write a streamed body to a file (atomically, via a temp name) or stdout; show bytes."""
    tty = sys.stderr.isatty() and bool(output)
    target = None
    tmp = ""
    if output:
        tmp = f"{output}.tmp-{os.getpid()}"
        target = open(tmp, "wb")
    done = 0
    last = 0.0
    try:
        out = target if target is not None else sys.stdout.buffer
        while True:
            chunk = resp.read_some()
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            if tty and time.monotonic() - last > 0.2:
                last = time.monotonic()
                sys.stderr.write(f"\r{what} {units.human_size(done)}\x1b[K")
        out.flush()
        if target is not None:
            target.close()
            os.rename(tmp, output)
            tmp = ""
        if tty:
            sys.stderr.write(f"\r{what} {units.human_size(done)} done\x1b[K\n")
    finally:
        resp.conn.close()
        if target is not None and not target.closed:
            target.close()
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass


# -- container filesystems ---------------------------------------------------------------------


def commit(ctx: Context, argv: list[str]) -> int:
    """``silo commit``: a container's changes as a new image."""
    p = parser(ctx, "commit", "[OPTIONS] CONTAINER [REPOSITORY[:TAG]]",
               "Create a new image from a container's changes")
    p.add_argument("-a", "--author", metavar="string",
                   help='Author (e.g., "John Hannibal Smith <hannibal@a-team.com>")')
    p.add_argument("-c", "--change", action="append", default=[], metavar="list",
                   help="Apply Dockerfile instruction to the created image")
    p.add_argument("-m", "--message", metavar="string", help="Commit message")
    p.add_argument("-p", "--pause", default="true", nargs="?", const="true", metavar="",
                   help="Pause container during commit (default true)")
    p.add_argument("container")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")
    ns = parse(p, argv)
    repo, tag_ = split_reference(ns.reference) if ns.reference else ("", "")
    doc = ctx.client.post("/commit", {"container": ns.container, "repo": repo or None,
                                      "tag": tag_ or None, "comment": ns.message or None,
                                      "author": ns.author or None, "changes": ns.change or None,
                                      "pause": ns.pause.lower() not in ("false", "0")})
    ctx.out(f"{doc['Id']}\n")
    return 0


def export(ctx: Context, argv: list[str]) -> int:
    """``silo export``: a container's filesystem as a tar."""
    p = parser(ctx, "export", "[OPTIONS] CONTAINER",
               "Export a container's filesystem as a tar archive")
    p.add_argument("-o", "--output", metavar="string", help="Write to a file, instead of STDOUT")
    p.add_argument("container")
    ns = parse(p, argv)
    if not ns.output and sys.stdout.isatty():
        raise StatusError(1, "cowardly refusing to save to a terminal. Use the -o flag or "
                             "redirect")
    resp = ctx.client.stream("GET", f"/containers/{quote(ns.container)}/export",
                             own_connection=True)
    _download(resp, ns.output, "Exporting")
    return 0


def diff(ctx: Context, argv: list[str]) -> int:
    """``silo diff``: files changed in a container (A added, C changed, D deleted)."""
    p = parser(ctx, "diff", "CONTAINER",
               "Inspect changes to files or directories on a container's filesystem")
    p.add_argument("container")
    ns = parse(p, argv)
    for item in ctx.client.get(f"/containers/{quote(ns.container)}/changes") or []:
        ctx.out(f"{'CAD'[item['Kind']]} {item['Path']}\n")
    return 0


def _split_cp(arg: str) -> tuple[str, str]:
    """``container:path`` → (container, path); a local path gives ("", path)."""
    if arg.startswith(("/", ".")) or ":" not in arg:
        return "", arg
    name, _, path = arg.partition(":")
    return name, path


def cp(ctx: Context, argv: list[str]) -> int:
    """``silo cp``: copy files between a container and the local filesystem."""
    p = parser(ctx, "cp", "[OPTIONS] CONTAINER:SRC_PATH DEST_PATH|-\n"
               "        silo cp [OPTIONS] SRC_PATH|- CONTAINER:DEST_PATH",
               "Copy files/folders between a container and the local filesystem")
    p.add_argument("-a", "--archive", action="store_true", help="Archive mode (copy all uid/gid "
                   "information)")
    p.add_argument("-L", "--follow-link", action="store_true",
                   help="Always follow symbol link in SRC_PATH")
    p.add_argument("-q", "--quiet", action="store_true", help="Suppress progress output")
    p.add_argument("src")
    p.add_argument("dest")
    ns = parse(p, argv)
    src_c, src = _split_cp(ns.src)
    dst_c, dst = _split_cp(ns.dest)
    if bool(src_c) == bool(dst_c):
        raise StatusError(1, "must specify at least one container source" if not src_c else
                          "copying between containers is not supported")
    if src_c:
        return _cp_from(ctx, src_c, src, dst)
    return _cp_to(ctx, src, dst_c, dst, ns.archive)


def _cp_from(ctx: Context, container: str, src: str, dst: str) -> int:
    import io
    import tarfile

    resp = ctx.client.stream("GET", f"/containers/{quote(container)}/archive", {"path": src},
                             own_connection=True)
    if dst == "-":
        _download(resp, None, "Copying")
        return 0
    data = resp.read()
    resp.conn.close()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        top = members[0].name.split("/")[0] if members else ""
        if os.path.isdir(dst):
            base = dst
        else:
            if not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
                raise StatusError(1, f"no such directory: {os.path.dirname(dst)}")
            base = os.path.dirname(os.path.abspath(dst))
            new = os.path.basename(dst.rstrip("/"))
            for m in members:
                m.name = new + m.name[len(top):] if m.name.split("/")[0] == top else m.name
        kwargs = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
        tar.extractall(base, members=members, **kwargs)
    return 0


def _cp_to(ctx: Context, src: str, container: str, dst: str, archive: bool) -> int:
    import io
    import json
    import tarfile
    import base64

    if src == "-":
        target = dst
        data = sys.stdin.buffer.read()
    else:
        if not os.path.lexists(src):
            raise StatusError(1, f"lstat {os.path.abspath(src)}: no such file or directory")
        try:
            _, _, headers = ctx.client.request("HEAD", f"/containers/{quote(container)}/archive",
                                               {"path": dst})
            stat = json.loads(base64.b64decode(headers.get("x-docker-container-path-stat", "")
                                               or b"e30="))
            is_dir = bool(stat.get("mode", 0) & (1 << 31))
        except APIError as e:
            if e.status != 404:
                raise
            is_dir = None
        if is_dir:
            target, name = dst, os.path.basename(os.path.abspath(src))
        else:
            target = os.path.dirname(dst.rstrip("/")) or "/"
            name = os.path.basename(dst.rstrip("/"))
        buf = io.BytesIO()

        def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
            if not archive:
                info.uid = info.gid = 0
                info.uname = info.gname = ""
            return info

        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(src, arcname=name, filter=owner)
        data = buf.getvalue()
    # as the docker CLI: never replace a directory by a file or the reverse; -a also asks the
    # daemon for the container user's ownership (copyUIDGID)
    query = {"path": target, "noOverwriteDirNonDir": "true"}
    if archive:
        query["copyUIDGID"] = "true"
    ctx.client.request("PUT", f"/containers/{quote(container)}/archive", query,
                       headers={"Content-Type": "application/x-tar"}, raw=data)
    return 0
