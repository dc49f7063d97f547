"""``silo update``, ``silo container prune`` and ``silo events``."""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

from silobox.cli import units
from silobox.cli.client import APIError
from silobox.cli.commands import Context, StatusError, for_each, parse, parser
from silobox.cli.commands.container import parse_filters


def update(ctx: Context, argv: list[str]) -> int:
    """``silo update [--memory] [--memory-swap] [--cpus] [--cpu-shares] ... C...``."""
    p = parser(ctx, "update", "[OPTIONS] CONTAINER [CONTAINER...]",
               "Update configuration of one or more containers")
    a = p.add_argument
    a("-m", "--memory", metavar="bytes", help="Memory limit")
    a("--memory-swap", metavar="bytes", help="Swap limit equal to memory plus swap: -1 to "
      "enable unlimited swap")
    a("--memory-reservation", metavar="bytes", help="Memory soft limit")
    a("--cpus", metavar="decimal", help="Number of CPUs")
    a("-c", "--cpu-shares", type=int, metavar="int", help="CPU shares (relative weight)")
    a("--cpu-period", type=int, metavar="int", help="Limit CPU CFS period")
    a("--cpu-quota", type=int, metavar="int", help="Limit CPU CFS quota")
    a("--cpuset-cpus", metavar="string", help="CPUs in which to allow execution (0-3, 0,1)")
    a("--cpuset-mems", metavar="string", help="MEMs in which to allow execution (0-3, 0,1)")
    a("--pids-limit", type=int, metavar="int", help="Tune container pids limit (-1 unlimited)")
    a("--blkio-weight", type=int, metavar="uint16",
      help="Block IO (relative weight), between 10 and 1000, or 0 to disable (default 0)")
    from silobox.cli.opts import add_windows_resource_flags, windows_resources
    add_windows_resource_flags(p)
    a("--restart", metavar="string", help="Restart policy to apply when a container exits")
    a("containers", nargs="+", metavar="CONTAINER")
    ns = parse(p, argv)
    body: dict[str, Any] = {}
    try:
        if ns.memory:
            body["Memory"] = units.parse_bytes(ns.memory)
        if ns.memory_swap:
            body["MemorySwap"] = units.parse_swap(ns.memory_swap)
        if ns.memory_reservation:
            body["MemoryReservation"] = units.parse_bytes(ns.memory_reservation)
        if ns.cpus:
            body["NanoCpus"] = units.parse_cpus(ns.cpus)
        if ns.blkio_weight:
            body["BlkioWeight"] = ns.blkio_weight
        body.update(windows_resources(ns))
    except ValueError as e:
        raise StatusError(125, f"invalid argument: {e}") from None
    for key, value in (("CpuShares", ns.cpu_shares), ("CpuPeriod", ns.cpu_period),
                       ("CpuQuota", ns.cpu_quota), ("CpusetCpus", ns.cpuset_cpus),
                       ("CpusetMems", ns.cpuset_mems), ("PidsLimit", ns.pids_limit)):
        if value is not None:
            body[key] = value
    if ns.restart:
        from silobox.cli.opts import OptError, parse_restart
        try:
            body["RestartPolicy"] = parse_restart(ns.restart)
        except OptError as e:
            raise StatusError(125, str(e)) from None
    if not body:
        raise StatusError(1, "you must provide one or more flags when using this command")
    return for_each(ctx, ns.containers,
                    lambda c, n: c.post(f"/containers/{quote(n)}/update", body=body))


def prune(ctx: Context, argv: list[str]) -> int:
    """``silo container prune [-f] [--filter k=v]``."""
    p = parser(ctx, "container prune", "[OPTIONS]", "Remove all stopped containers")
    p.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    p.add_argument("--filter", action="append", default=[], metavar="filter",
                   help="Provide filter values (e.g. \"until=<timestamp>\")")
    ns = parse(p, argv)
    if not ns.force:
        if not sys.stdin.isatty():
            raise StatusError(1, "WARNING! This will remove all stopped containers.\n"
                              "refusing to prune without a terminal: use --force")
        answer = input("WARNING! This will remove all stopped containers.\n"
                       "Are you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    import json
    filters = parse_filters(ns.filter)
    res = ctx.client.post("/containers/prune",
                          {"filters": json.dumps(filters)} if filters else None) or {}
    deleted = res.get("ContainersDeleted") or []
    if deleted:
        print("Deleted Containers:")
        for cid in deleted:
            print(cid)
        print()
    print(f"Total reclaimed space: {units.human_size(res.get('SpaceReclaimed') or 0)}")
    return 0


def events(ctx: Context, argv: list[str]) -> int:
    """``silo events [--since] [--until] [--filter k=v] [--format]``: follows until Ctrl-C."""
    p = parser(ctx, "events", "[OPTIONS]", "Get real time events from the server")
    p.add_argument("--since", metavar="string", help="Show all events created since timestamp")
    p.add_argument("--until", metavar="string", help="Stream events until this timestamp")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="filter",
                   help="Filter output based on conditions provided")
    p.add_argument("--format", metavar="string", help="Format output using a Go template "
                   "(or 'json')")
    ns = parse(p, argv)
    import json
    params: dict[str, Any] = {}
    try:
        if ns.since:
            params["since"] = units.parse_timestamp(ns.since)
        if ns.until:
            params["until"] = units.parse_timestamp(ns.until)
    except ValueError as e:
        raise StatusError(125, str(e)) from None
    filters = parse_filters(ns.filter)
    if filters:
        params["filters"] = json.dumps(filters)
    try:
        resp = ctx.client.stream("GET", "/events", params, own_connection=True)
    except APIError as e:
        raise StatusError(1, f"Error response from daemon: {e}") from None
    buf = b""
    try:
        while chunk := resp.read_some():
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    print(_event_line(json.loads(line), ns.format), flush=True)
    except KeyboardInterrupt:
        return 0
    return 0


def _event_line(ev: dict[str, Any], fmt: str | None) -> str:
    """docker's default event line: time, type, action, actor id and its attributes."""
    import json
    if fmt == "json" or fmt == "{{json .}}":
        return json.dumps(ev)
    if fmt:
        from silobox.cli import formatter
        return formatter.render_one(fmt, ev)
    import time
    ns = ev.get("timeNano") or ev.get("time", 0) * 10**9
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ns // 10**9))
    stamp += f".{ns % 10**9:09d}" + time.strftime("%z")[:3] + ":" + time.strftime("%z")[3:]
    actor = ev.get("Actor") or {}
    attrs = ", ".join(f"{k}={v}" for k, v in sorted((actor.get("Attributes") or {}).items()))
    return f"{stamp} {ev.get('Type')} {ev.get('Action')} {actor.get('ID', '')}" + \
        (f" ({attrs})" if attrs else "")


def system_prune(ctx: Context, argv: list[str]) -> int:
    """``silo system prune [-a] [--volumes] [-f] [--filter]``: stopped containers, unused
    networks, dangling (or with -a unused) images and, with --volumes, unused volumes."""
    p = parser(ctx, "system prune", "[OPTIONS]", "Remove unused data")
    p.add_argument("-a", "--all", action="store_true", help="Remove all unused images not just "
                   "dangling ones")
    p.add_argument("--volumes", action="store_true", help="Prune anonymous volumes")
    p.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    p.add_argument("--filter", action="append", default=[], metavar="filter",
                   help="Provide filter values (e.g. \"label=<key>=<value>\")")
    ns = parse(p, argv)
    if not ns.force:
        if not sys.stdin.isatty():
            raise StatusError(1, "refusing to prune without a terminal: use --force")
        answer = input("WARNING! This will remove:\n  - all stopped containers\n"
                       "  - all networks not used by at least one container\n"
                       + ("  - all anonymous volumes not used by at least one container\n"
                          if ns.volumes else "")
                       + ("  - all images without at least one container associated to them\n"
                          if ns.all else "  - all dangling images\n")
                       + "\nAre you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    import json
    filters = parse_filters(ns.filter)
    params = {"filters": json.dumps(filters)} if filters else None
    reclaimed = 0
    res = ctx.client.post("/containers/prune", params) or {}
    reclaimed += int(res.get("SpaceReclaimed") or 0)
    _listing("Deleted Containers:", res.get("ContainersDeleted"))
    res = ctx.client.post("/networks/prune", params) or {}
    _listing("Deleted Networks:", res.get("NetworksDeleted"))
    if ns.volumes:
        res = ctx.client.post("/volumes/prune", params) or {}
        reclaimed += int(res.get("SpaceReclaimed") or 0)
        _listing("Deleted Volumes:", res.get("VolumesDeleted"))
    image_filters = dict(filters)
    image_filters["dangling"] = ["false" if ns.all else "true"]
    res = ctx.client.post("/images/prune", {"filters": json.dumps(image_filters)}) or {}
    reclaimed += int(res.get("SpaceReclaimed") or 0)
    deleted = [next(iter(d.items())) for d in res.get("ImagesDeleted") or []]
    if deleted:
        print("Deleted Images:")
        for kind, ref in deleted:
            print(f"{kind.lower()}: {ref}")
        print()
    print(f"Total reclaimed space: {units.human_size(reclaimed)}")
    return 0


def _listing(title: str, items: list[str] | None) -> None:
    if items:
        print(title)
        for item in items:
            print(item)
        print()
