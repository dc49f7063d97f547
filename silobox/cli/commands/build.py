"""``silo build``: send a build context to ``POST /build`` and print the builder's progress.

Like the docker CLI, the client makes the context tar: it walks PATH, leaves out what
``.dockerignore`` excludes (but always sends the Dockerfile and ``.dockerignore`` themselves,
which the daemon drops after reading when excluded), and puts a Dockerfile given with ``-f`` from
outside the context into the tar under a private name. ``-`` reads the context tar (or a lone
Dockerfile) from stdin.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from silobox.cli.commands import Context, StatusError, parse, parser


def build(ctx: Context, argv: list[str]) -> int:
    """``silo build [OPTIONS] PATH | -``."""
    p = parser(ctx, "build", "[OPTIONS] PATH | -", "Build an image from a Dockerfile")
    p.add_argument("-t", "--tag", action="append", default=[], metavar="list",
                   help="Name and optionally a tag in the 'name:tag' format")
    p.add_argument("-f", "--file", metavar="string",
                   help="Name of the Dockerfile (Default is 'PATH/Dockerfile')")
    p.add_argument("--build-arg", action="append", default=[], metavar="list",
                   help="Set build-time variables")
    p.add_argument("--no-cache", action="store_true",
                   help="Do not use cache when building the image")
    p.add_argument("--target", metavar="string", help="Set the target build stage to build.")
    p.add_argument("--label", action="append", default=[], metavar="list",
                   help="Set metadata for an image")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="Suppress the build output and print image ID on success")
    p.add_argument("--rm", default="true", metavar="bool", nargs="?", const="true",
                   help="Remove intermediate containers after a successful build "
                        "(default true)")
    p.add_argument("--force-rm", action="store_true",
                   help="Always remove intermediate containers")
    p.add_argument("--network", metavar="string",
                   help="Set the networking mode for the RUN instructions during build")
    p.add_argument("path", metavar="PATH | -")
    ns = parse(p, argv)
    params: dict[str, Any] = {
        "t": ns.tag or None, "q": ns.quiet or None, "nocache": ns.no_cache or None,
        "target": ns.target or None, "rm": ns.rm.lower() not in ("false", "0"),
        "forcerm": ns.force_rm or None, "networkmode": ns.network or None,
        "buildargs": _json(_build_args(ns.build_arg)) if ns.build_arg else None,
        "labels": _json(dict(_pair(l) for l in ns.label)) if ns.label else None,
    }
    import tempfile
    with tempfile.TemporaryFile() as body:
        params["dockerfile"] = _write_context(ns.path, ns.file, body)
        body.seek(0)
        return _send(ctx, params, body, ns.quiet)


def _registry_config() -> str:
    """``X-Registry-Config``: every login of ``silo login``, for the pulls of FROM lines (the
    docker CLI sends all its credentials the same way)."""
    import base64
    import json
    from silobox.cli.commands import registry
    configs: dict[str, dict[str, str]] = {}
    for server, entry in (registry._load_config().get("auths") or {}).items():
        doc = {"serveraddress": server}
        try:
            user, _, password = base64.b64decode(entry.get("auth") or "").decode().partition(":")
        except (ValueError, UnicodeDecodeError, AttributeError):
            continue
        if user:
            doc.update(username=user, password=password)
        if isinstance(entry, dict) and entry.get("identitytoken"):
            doc["identitytoken"] = entry["identitytoken"]
        configs[server] = doc
    return base64.urlsafe_b64encode(json.dumps(configs).encode()).decode()


def _json(value: Any) -> str:
    import json
    return json.dumps(value)


def _pair(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


def _build_args(items: list[str]) -> dict[str, str | None]:
    """``K=V``, or ``K`` alone for the value of K in this environment (docker's rule)."""
    out: dict[str, str | None] = {}
    for item in items:
        key, eq, value = item.partition("=")
        out[key] = value if eq else os.environ.get(key)
    return out


def _write_context(path: str, dockerfile: str | None, out: Any) -> str:
    """Write the context tar to ``out``; returns the Dockerfile's name inside it."""
    import tarfile
    from silobox import dockerignore

    if path == "-":
        data = sys.stdin.buffer.read()
        if dockerfile == "-":
            raise StatusError(1, "invalid argument: can't use stdin for both build context "
                                 "and dockerfile")
        if _looks_like_archive(data):
            out.write(data)
            return dockerfile or "Dockerfile"
        with tarfile.open(fileobj=out, mode="w") as tar:
            _add_bytes(tar, "Dockerfile", data)
        return "Dockerfile"
    if not os.path.isdir(path):
        raise StatusError(1, f'unable to prepare context: path "{path}" not found')
    root = os.path.abspath(path)
    name = "Dockerfile"
    extra: bytes | None = None
    if dockerfile == "-":
        extra = sys.stdin.buffer.read()
        name = "__dockerfile-stdin__"
    elif dockerfile:
        full = os.path.abspath(dockerfile)
        rel = os.path.relpath(full, root)
        if rel.startswith(".."):
            try:
                with open(full, "rb") as f:
                    extra = f.read()
            except OSError as e:
                raise StatusError(1, f"unable to prepare context: {e}") from None
            name = f".dockerfile.{os.urandom(10).hex()}"
        else:
            name = rel
    if extra is None and not os.path.isfile(os.path.join(root, name)):
        raise StatusError(1, f"unable to prepare context: unable to evaluate symlinks in "
                             f"Dockerfile path: lstat {os.path.join(root, name)}: no such file "
                             "or directory")
    patterns: list[str] = []
    try:
        with open(os.path.join(root, ".dockerignore"), errors="replace") as f:
            patterns = dockerignore.parse(f.read())
    except OSError:
        pass
    try:
        matcher = dockerignore.PatternMatcher(patterns)
    except ValueError as e:
        raise StatusError(1, f"error checking context: {e}") from None
    keep = {name, ".dockerignore"}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            rel_dir = "" if rel_dir == "." else rel_dir
            for entry in sorted(dirnames + filenames):
                rel = f"{rel_dir}/{entry}" if rel_dir else entry
                if matcher.excluded(rel) and rel not in keep:
                    if entry in dirnames and not matcher.has_exclusions:
                        dirnames.remove(entry)
                    continue
                tar.add(os.path.join(dirpath, entry), arcname=rel, recursive=False)
        if extra is not None:
            _add_bytes(tar, name, extra)
    return name


def _add_bytes(tar: Any, name: str, data: bytes) -> None:
    import io
    import tarfile
    import time
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _looks_like_archive(data: bytes) -> bool:
    return data.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or \
        (len(data) >= 512 and data[257:262] == b"ustar")


def _send(ctx: Context, params: dict[str, Any], body: Any, quiet: bool) -> int:
    from silobox.cli.progress import print_messages
    size = os.fstat(body.fileno()).st_size
    resp = ctx.client.upload("POST", "/build", params, body, size,
                             {"X-Registry-Config": _registry_config()})
    if not quiet:
        ctx.out(f"Sending build context to silobox  {size / 1e3:.4g}kB\n")
    # the steps' text only: no updating byte counts between the build's lines
    image_id = print_messages(resp, ctx.out, quiet, progress=False)
    if quiet and image_id:
        ctx.out(image_id + "\n")
    return 0


def prune(ctx: Context, argv: list[str]) -> int:
    """``silo builder prune``: drop the build cache (intermediate images of builds)."""
    from silobox.cli import units
    p = parser(ctx, "builder prune", "[OPTIONS]", "Remove build cache")
    p.add_argument("-a", "--all", action="store_true", help="Remove all unused build cache")
    p.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    ns = parse(p, argv)
    if not ns.force:
        ctx.out("WARNING! This will remove all dangling build cache. Are you sure you want to "
                "continue? [y/N] ")
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    doc = ctx.client.post("/build/prune", {"all": ns.all or None})
    deleted = doc.get("CachesDeleted") or []
    if deleted:
        ctx.out("Deleted build cache objects:\n")
        for item in deleted:
            ctx.out(f"{item}\n")
        ctx.out("\n")
    ctx.out(f"Total reclaimed space: {units.human_size(doc.get('SpaceReclaimed') or 0)}\n")
    return 0
