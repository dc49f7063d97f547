"""``silo``: the silobox command line, a Docker Engine API client with docker's verbs.

Start-up time is the CLI's main cost (Python itself takes ~16 ms here), so this module imports
nothing beyond ``os``/``sys`` at load time: ``--version`` answers without building any parser, and
a command loads only the one module that implements it and builds only its own options.
"""

from __future__ import annotations

import os
import sys

PROG = "silo"

# command → (module under silobox.cli.commands, function)
_TOP: dict[str, tuple[str, str]] = {
    "run": ("run", "run"),
    "create": ("run", "create"),
    "start": ("run", "start"),
    "attach": ("run", "attach"),
    "exec": ("run", "exec_"),
    "stop": ("container", "stop"),
    "kill": ("container", "kill"),
    "restart": ("container", "restart"),
    "rm": ("container", "rm"),
    "wait": ("container", "wait"),
    "pause": ("container", "pause"),
    "unpause": ("container", "unpause"),
    "ps": ("container", "ps"),
    "inspect": ("container", "inspect"),
    "logs": ("container", "logs"),
    "top": ("container", "top"),
    "stats": ("container", "stats"),
    "rename": ("container", "rename"),
    "update": ("lifecycle", "update"),
    "events": ("lifecycle", "events"),
    "images": ("image", "ls"),
    "rmi": ("image", "rm"),
    "import": ("image", "import_"),
    "build": ("build", "build"),
    "load": ("image", "load"),
    "save": ("image", "save"),
    "tag": ("image", "tag"),
    "history": ("image", "history"),
    "commit": ("image", "commit"),
    "export": ("image", "export"),
    "cp": ("image", "cp"),
    "diff": ("image", "diff"),
    "version": ("system", "version"),
    "info": ("system", "info"),
    "port": ("network", "port"),
    "pull": ("registry", "pull"),
    "push": ("registry", "push"),
    "login": ("registry", "login"),
    "logout": ("registry", "logout"),
}

_CONTAINER_VERBS = ("run", "create", "start", "attach", "exec", "stop", "kill", "restart", "rm",
                    "wait", "pause", "unpause", "ps", "logs", "top", "stats", "rename")

_GROUPS: dict[str, dict[str, tuple[str, str]]] = {
    "container": {
        **{v: _TOP[v] for v in _CONTAINER_VERBS},
        "ls": ("container", "ps"),
        "list": ("container", "ps"),
        "inspect": ("container", "container_inspect"),
        "update": ("lifecycle", "update"),
        "prune": ("lifecycle", "prune"),
        "commit": ("image", "commit"),
        "export": ("image", "export"),
        "cp": ("image", "cp"),
        "diff": ("image", "diff"),
    },
    "image": {
        "ls": ("image", "ls"),
        "list": ("image", "ls"),
        "inspect": ("image", "inspect"),
        "rm": ("image", "rm"),
        "remove": ("image", "rm"),
        "import": ("image", "import_"),
        "bootstrap": ("image", "bootstrap"),
        "build": ("build", "build"),
        "load": ("image", "load"),
        "save": ("image", "save"),
        "tag": ("image", "tag"),
        "history": ("image", "history"),
        "prune": ("image", "prune"),
        "pull": ("registry", "pull"),
        "push": ("registry", "push"),
    },
    "system": {
        "info": ("system", "info"),
        "events": ("lifecycle", "events"),
        "df": ("system", "df"),
        "prune": ("lifecycle", "system_prune"),
        "version": ("system", "version"),
    },
    "network": {
        "ls": ("network", "ls"),
        "list": ("network", "ls"),
        "inspect": ("network", "inspect"),
        "create": ("network", "create"),
        "rm": ("network", "rm"),
        "remove": ("network", "rm"),
        "prune": ("network", "prune"),
        "connect": ("network", "connect"),
        "disconnect": ("network", "disconnect"),
    },
    "hns": {
        "network": ("hns", "network"),
        "endpoint": ("hns", "endpoint"),
    },
    "volume": {
        "create": ("volume", "create"),
        "ls": ("volume", "ls"),
        "list": ("volume", "ls"),
        "inspect": ("volume", "inspect"),
        "rm": ("volume", "rm"),
        "remove": ("volume", "rm"),
        "prune": ("volume", "prune"),
    },
    "sandbox": {
        "ls": ("sandbox", "ls"),
        "list": ("sandbox", "ls"),
        "inspect": ("sandbox", "inspect"),
        "expand": ("sandbox", "expand"),
        "attach": ("sandbox", "attach"),
        "detach": ("sandbox", "detach"),
    },
    "builder": {
        "build": ("build", "build"),
        "prune": ("build", "prune"),
    },
    "hcs": {
        "ls": ("hcs", "ls"),
        "list": ("hcs", "ls"),
        "inspect": ("hcs", "inspect"),
    },
}

_GROUP_HELP = {
    "container": "Manage containers",
    "image": "Manage images",
    "builder": "Manage builds",
    "system": "Manage silobox",
    "hcs": "Show the compute service's own records of compute systems",
    "volume": "Manage volumes",
    "sandbox": "Show and manage the containers' sandbox disks",
    "network": "Manage networks",
    "hns": "Show the networking service's own records of networks and endpoints",
}

_HELP = """\
Usage:  silo [OPTIONS] COMMAND

A container engine for Linux built on the architecture of Windows containers

Common Commands:
  run         Create and run a new container from an image
  exec        Execute a command in a running container
  ps          List containers
  images      List images
  version     Show the silobox version information
  info        Display system-wide information

Management Commands:
  container   Manage containers
  image       Manage images
  builder     Manage builds
  system      Manage silobox
  hcs         Show the compute service's own records of compute systems
  sandbox     Show and manage the containers' sandbox disks
  volume      Manage volumes
  network     Manage networks
  hns         Show the networking service's own records of networks and endpoints

Commands:
  attach      Attach local standard input, output, and error streams to a running container
  build       Build an image from a Dockerfile
  commit      Create a new image from a container's changes
  cp          Copy files/folders between a container and the local filesystem
  create      Create a new container
  diff        Inspect changes to files or directories on a container's filesystem
  export      Export a container's filesystem as a tar archive
  history     Show the history of an image
  import      Import the contents from a tarball to create a filesystem image
  inspect     Return low-level information on silobox objects
  kill        Kill one or more running containers
  load        Load an image from a tar archive or STDIN
  login       Log in to a registry
  logout      Log out from a registry
  logs        Fetch the logs of a container
  pause       Pause all processes within one or more containers
  port        List port mappings or a specific mapping for the container
  pull        Download an image from a registry
  push        Upload an image to a registry
  rename      Rename a container
  restart     Restart one or more containers
  rm          Remove one or more containers
  rmi         Remove one or more images
  save        Save one or more images to a tar archive (streamed to STDOUT by default)
  start       Start one or more stopped containers
  stats       Display a live stream of container(s) resource usage statistics
  stop        Stop one or more running containers
  tag         Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
  top         Display the running processes of a container
  unpause     Unpause all processes within one or more containers
  wait        Block until one or more containers stop, then print their exit codes

Global Options:
  -D, --debug          Enable debug mode
  -H, --host string    Daemon socket to connect to (env SILOBOX_HOST, DOCKER_HOST;
                       default unix:///run/silobox/silod.sock)
  -v, --version        Print version information and quit

Run 'silo COMMAND --help' for more information on a command.
"""


def _version_line() -> str:
    from silobox import API_VERSION, __version__

    return f"silo version {__version__}, API {API_VERSION}\n"


class _GlobalUsage(Exception):
    pass


def _parse_globals(argv: list[str]) -> tuple[dict[str, object], list[str]]:
    """Global flags precede the command word; parsed by hand to keep start-up cheap."""
    opts: dict[str, object] = {"host": None, "debug": False, "version": False, "help": False}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        if a in ("-H", "--host"):
            if i + 1 >= len(argv):
                raise _GlobalUsage(f"flag needs an argument: {a}")
            opts["host"] = argv[i + 1]
            i += 2
            continue
        if a.startswith("--host="):
            opts["host"] = a.split("=", 1)[1]
        elif a.startswith("-H") and len(a) > 2:
            opts["host"] = a[2:].lstrip("=")
        elif a in ("-D", "--debug"):
            opts["debug"] = True
        elif a in ("-v", "--version"):
            opts["version"] = True
        elif a in ("-h", "--help"):
            opts["help"] = True
        elif a in ("-l", "--log-level"):
            i += 1  # accepted for docker compatibility; the CLI logs nothing by level
        elif a.startswith("--log-level="):
            pass
        else:
            raise _GlobalUsage(f"unknown flag: {a}")
        i += 1
    return opts, argv[i:]


def _group_help(group: str) -> str:
    verbs = sorted(_GROUPS[group])
    lines = [f"Usage:  silo {group} COMMAND", "", _GROUP_HELP[group], "", "Commands:"]
    lines += [f"  {v}" for v in verbs]
    lines += ["", f"Run 'silo {group} COMMAND --help' for more information on a command.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``silo`` console script; returns the process exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) == 1 and args[0] in ("--version", "-v"):
        sys.stdout.write(_version_line())
        return 0
    try:
        opts, rest = _parse_globals(args)
    except _GlobalUsage as e:
        sys.stderr.write(f"{PROG}: {e}\nSee '{PROG} --help'.\n")
        return 125
    if opts["version"]:
        sys.stdout.write(_version_line())
        return 0
    if opts["help"] or not rest:
        (sys.stdout if opts["help"] else sys.stderr).write(_HELP)
        return 0
    word = rest[0]
    cmd_path = f"{PROG} {word}"
    if word in _GROUPS:
        if len(rest) < 2 or rest[1] in ("-h", "--help"):
            sys.stdout.write(_group_help(word))
            return 0
        target = _GROUPS[word].get(rest[1])
        if target is None:
            sys.stderr.write(f"{PROG}: '{rest[1]}' is not a {PROG} {word} command.\n"
                             f"See '{PROG} {word} --help'\n")
            return 1
        cmd_path = f"{PROG} {word} {rest[1]}"
        cmd_args = rest[2:]
    elif word in _TOP:
        target = _TOP[word]
        cmd_args = rest[1:]
    elif word == "help":
        sys.stdout.write(_HELP)
        return 0
    else:
        sys.stderr.write(f"{PROG}: '{word}' is not a {PROG} command.\nSee '{PROG} --help'\n")
        return 1

    from silobox.cli.client import default_host

    host = str(opts["host"] or default_host())
    return _dispatch(target, cmd_path, cmd_args, host, bool(opts["debug"]))


def _dispatch(target: tuple[str, str], cmd_path: str, cmd_args: list[str], host: str,
              debug: bool) -> int:
    import importlib

    from silobox.cli.client import APIError, ConnectError, ProtocolError
    from silobox.cli.commands import Context, StatusError, UsageError

    module = importlib.import_module(f"silobox.cli.commands.{target[0]}")
    func = getattr(module, target[1])
    ctx = Context(host, debug, PROG)
    ctx.cmd_path = cmd_path
    try:
        status = func(ctx, cmd_args)
        sys.stdout.flush()
        return int(status or 0)
    except UsageError as e:
        sys.stderr.write(f"{PROG}: {e}\nSee '{cmd_path} --help'.\n")
        return 125
    except StatusError as e:
        if e.message:
            sys.stderr.write(e.message.rstrip("\n") + "\n")
        return e.status
    except (APIError, ConnectError) as e:
        sys.stderr.write(f"{e}\n")
        return 1
    except ProtocolError as e:
        sys.stderr.write(f"error talking to the daemon: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (silo ps | head); stop quietly like other Unix tools
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 141
    except Exception as e:
        # Only a command that loaded the template engine can have raised its error; importing
        # it here for the isinstance check alone cost every ``run`` and ``exec`` ~1 ms.
        fmt = sys.modules.get("silobox.cli.formatter")
        if fmt is not None and isinstance(e, fmt.TemplateError):
            sys.stderr.write(f"template parsing error: {e}\n")
            return 1
        if debug:
            raise
        exc = sys.exc_info()[1]
        sys.stderr.write(f"{PROG}: {type(exc).__name__}: {exc}\n")
        return 1
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
