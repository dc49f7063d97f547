"""Registry commands: pull, push, login, logout.

As with the docker CLI, credentials stay on the client: ``login`` has the daemon check them
(``POST /auth``) and then keeps them in ``config.json`` (Docker's ``auths`` format, mode 0600)
under ``$SILOBOX_CONFIG`` (default ``~/.silobox``); ``pull`` and ``push`` send the registry's entry
as ``X-Registry-Auth``.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from silobox.cli.client import APIError, quote
from silobox.cli.commands import Context, StatusError, parse, parser
from silobox.cli.progress import print_messages

INDEX_SERVER = "https://index.docker.io/v1/"


# -- the credentials file ------------------------------------------------------------------------


def config_path() -> str:
    base = os.environ.get("SILOBOX_CONFIG") or os.path.join(os.path.expanduser("~"), ".silobox")
    return os.path.join(base, "config.json")


def _load_config() -> dict:
    import json
    try:
        with open(config_path()) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise StatusError(1, f"cannot read {config_path()}: {e}") from None
    return doc if isinstance(doc, dict) else {}


def _save_config(doc: dict) -> None:
    """Written atomically, readable by its owner only (it holds passwords)."""
    import json
    import tempfile
    path = config_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config.json.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent="\t")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def server_key(server: str) -> str:
    """The ``auths`` key of a registry: Docker Hub is ``https://index.docker.io/v1/``, others
    are ``host[:port]``."""
    text = server.strip()
    for prefix in ("https://", "http://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = text.split("/", 1)[0]
    if text in ("", "docker.io", "index.docker.io", "registry-1.docker.io"):
        return INDEX_SERVER
    return text


def registry_of(name: str) -> str:
    """The registry an image name points at (Docker's domain rule)."""
    first, slash, _ = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"
                  or first.lower() != first):
        return server_key(first)
    return INDEX_SERVER


def auth_header(server: str) -> dict[str, str]:
    """``X-Registry-Auth`` for ``server`` from the credentials file (``{}`` when none)."""
    import base64
    import json
    entry = (_load_config().get("auths") or {}).get(server_key(server)) or {}
    doc: dict[str, str] = {"serveraddress": server_key(server)}
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise StatusError(1, f"invalid credentials for {server} in {config_path()}") \
                from None
        doc.update(username=user, password=password)
    if entry.get("identitytoken"):
        doc["identitytoken"] = entry["identitytoken"]
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return {"X-Registry-Auth": base64.urlsafe_b64encode(raw).decode()}


# -- commands ------------------------------------------------------------------------------------


def pull(ctx: Context, argv: list[str]) -> int:
    """``silo pull NAME[:TAG|@DIGEST]``."""
    p = parser(ctx, "pull", "[OPTIONS] NAME[:TAG|@DIGEST]",
               "Download an image from a registry")
    p.add_argument("-q", "--quiet", action="store_true", help="Suppress verbose output")
    p.add_argument("--platform", metavar="string", help="Set platform if server is "
                                                        "multi-platform capable")
    p.add_argument("name", metavar="NAME[:TAG|@DIGEST]")
    ns = parse(p, argv)
    name, tag = _split(ns.name)
    _pull_stream(ctx, name, tag, ns.platform, ctx.out, ns.quiet)
    sep = "@" if tag.startswith("sha256:") else ":"
    ctx.out(f"{_full_name(name)}{sep}{tag or 'latest'}\n")
    return 0


def pull_image(ctx: Context, image: str, platform: str | None) -> None:
    """The pull ``run`` and ``create`` make for a missing image; messages go to stderr."""
    name, tag = _split(image)
    _pull_stream(ctx, name, tag, platform, ctx.err, False)


def _pull_stream(ctx: Context, name: str, tag: str, platform: str | None,
                 write: Any, quiet: bool) -> None:
    params = {"fromImage": name, "tag": tag or "latest", "platform": platform or None}
    resp = ctx.client.stream("POST", "/images/create", params, own_connection=True,
                             headers=auth_header(registry_of(name)))
    print_messages(resp, write, quiet)


def push(ctx: Context, argv: list[str]) -> int:
    """``silo push NAME[:TAG]`` (every tag of the repository without a tag, as docker -a)."""
    p = parser(ctx, "push", "[OPTIONS] NAME[:TAG]", "Upload an image to a registry")
    p.add_argument("-a", "--all-tags", action="store_true",
                   help="Push all tags of an image to the repository")
    p.add_argument("-q", "--quiet", action="store_true", help="Suppress verbose output")
    p.add_argument("name", metavar="NAME[:TAG]")
    ns = parse(p, argv)
    name, tag = _split(ns.name)
    if tag.startswith("sha256:"):
        raise StatusError(1, "cannot push a digest reference")
    if ns.all_tags and tag:
        raise StatusError(1, "tag can't be used with --all-tags/-a")
    if not ns.all_tags and not tag:
        tag = "latest"
    resp = ctx.client.stream("POST", f"/images/{quote(name, safe='/:')}/push",
                             {"tag": tag or None}, own_connection=True,
                             headers=auth_header(registry_of(name)))
    print_messages(resp, ctx.out, ns.quiet)
    return 0


def login(ctx: Context, argv: list[str]) -> int:
    """``silo login [-u USER] [-p PASSWORD | --password-stdin] [SERVER]``."""
    import base64
    p = parser(ctx, "login", "[OPTIONS] [SERVER]",
               "Log in to a registry (Docker Hub when no server is given)")
    p.add_argument("-u", "--username", metavar="string", help="Username")
    p.add_argument("-p", "--password", metavar="string", help="Password")
    p.add_argument("--password-stdin", action="store_true", help="Take the password from stdin")
    p.add_argument("server", nargs="?", default=INDEX_SERVER, metavar="SERVER")
    ns = parse(p, argv)
    if ns.password and ns.password_stdin:
        raise StatusError(1, "--password and --password-stdin are mutually exclusive")
    password = ns.password
    if ns.password_stdin:
        if not ns.username:
            raise StatusError(1, "Must provide --username with --password-stdin")
        password = sys.stdin.read().rstrip("\r\n")
    username = ns.username
    if not username:
        if not sys.stdin.isatty():
            raise StatusError(1, "Cannot perform an interactive login from a non TTY device")
        username = input("Username: ").strip()
    if not password:
        import getpass
        if not sys.stdin.isatty():
            raise StatusError(1, "Cannot perform an interactive login from a non TTY device")
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise StatusError(1, "Error: Non-null Username and Password Required")
    key = server_key(ns.server)
    try:
        ctx.client.call("POST", "/auth", body={"username": username, "password": password,
                                               "serveraddress": key})
    except APIError as e:
        raise StatusError(1, f"Error response from daemon: {e}") from None
    doc = _load_config()
    auths = doc.setdefault("auths", {})
    auths[key] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    _save_config(doc)
    ctx.out("Login Succeeded\n")
    return 0


def logout(ctx: Context, argv: list[str]) -> int:
    """``silo logout [SERVER]``: forget the stored credentials."""
    p = parser(ctx, "logout", "[SERVER]", "Log out from a registry")
    p.add_argument("server", nargs="?", default=INDEX_SERVER, metavar="SERVER")
    ns = parse(p, argv)
    key = server_key(ns.server)
    doc = _load_config()
    auths = doc.get("auths") or {}
    if key not in auths:
        ctx.out(f"Not logged in to {key}\n")
        return 0
    ctx.out(f"Removing login credentials for {key}\n")
    del auths[key]
    _save_config(doc)
    return 0


def _split(name: str) -> tuple[str, str]:
    if "@" in name:
        base, _, digest = name.partition("@")
        return base, digest
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, ""


def _full_name(name: str) -> str:
    """docker prints the normalised name after a pull (``docker.io/library/busybox``)."""
    if registry_of(name) != INDEX_SERVER:
        return name
    return f"docker.io/{name if '/' in name else 'library/' + name}"

