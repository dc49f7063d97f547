"""Container commands that do not stream a terminal: lifecycle verbs, ps, inspect, logs, top, stats.

Output shapes (columns, truncation, human durations, exit statuses) follow the docker CLI, since
scripts parse them.
"""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs start-up time
    from typing import Any, Callable

from silobox.cli import formatter, units
from silobox.cli.client import MULTIPLEXED, RAW_STREAM, APIError, Client, ConnectError, quote
from silobox.cli.commands import (Context, StatusError, for_each, parse, parser, short_id)


# --------------------------------------------------------------------------- lifecycle verbs

def _containers_arg(p: Any) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def _verb(method: str, suffix: str, params: dict[str, Any] | None = None
          ) -> Callable[[Client, str], None]:
    """The per-container request of a lifecycle verb, for :func:`for_each`."""
    def act(c: Client, name: str) -> None:
        c.request(method, f"/containers/{quote(name)}{suffix}", params)
    return act


def stop(ctx: Context, argv: list[str]) -> int:
    """``silo stop [-t N] [-s SIG] C...``: prints each container as given."""
    return _stop_or_restart(ctx, argv, "stop", "Stop one or more running containers")


def restart(ctx: Context, argv: list[str]) -> int:
    """``silo restart [-t N] [-s SIG] C...``."""
    return _stop_or_restart(ctx, argv, "restart", "Restart one or more containers")


def _stop_or_restart(ctx: Context, argv: list[str], verb: str, description: str) -> int:
    p = parser(ctx, verb, "[OPTIONS] CONTAINER [CONTAINER...]", description)
    p.add_argument("-s", "--signal", metavar="string", help="Signal to send to the container")
    p.add_argument("-t", "--timeout", "--time", dest="timeout", type=int, metavar="int",
                   help="Seconds to wait before killing the container")
    _containers_arg(p)
    ns = parse(p, argv)
    params = {"t": ns.timeout, "signal": ns.signal}
    return for_each(ctx, ns.containers, _verb("POST", f"/{verb}", params))


def kill(ctx: Context, argv: list[str]) -> int:
    """``silo kill [-s SIG] C...``."""
    p = parser(ctx, "kill", "[OPTIONS] CONTAINER [CONTAINER...]",
               "Kill one or more running containers")
    p.add_argument("-s", "--signal", metavar="string", help="Signal to send to the container")
    _containers_arg(p)
    ns = parse(p, argv)
    params = {"signal": ns.signal}
    return for_each(ctx, ns.containers, _verb("POST", "/kill", params))


def rm(ctx: Context, argv: list[str]) -> int:
    """``silo rm [-f] [-v] C...``: force kills at once, as the Docker API defines it."""
    p = parser(ctx, "rm", "[OPTIONS] CONTAINER [CONTAINER...]",
               "Remove one or more containers")
    p.add_argument("-f", "--force", action="store_true",
                   help="Force the removal of a running container (uses SIGKILL)")
    p.add_argument("-l", "--link", action="store_true", help="Remove the specified link")
    p.add_argument("-v", "--volumes", action="store_true",
                   help="Remove anonymous volumes associated with the container")
    _containers_arg(p)
    ns = parse(p, argv)
    params = {"force": ns.force or None, "v": ns.volumes or None, "link": ns.link or None}
    return for_each(ctx, ns.containers, _verb("DELETE", "", params))


def pause(ctx: Context, argv: list[str]) -> int:
    """``silo pause C...``: freeze the container's job object (cgroup freezer)."""
    p = parser(ctx, "pause", "CONTAINER [CONTAINER...]",
               "Pause all processes within one or more containers")
    _containers_arg(p)
    ns = parse(p, argv)
    return for_each(ctx, ns.containers, _verb("POST", "/pause"))


def unpause(ctx: Context, argv: list[str]) -> int:
    """``silo unpause C...``."""
    p = parser(ctx, "unpause", "CONTAINER [CONTAINER...]",
               "Unpause all processes within one or more containers")
    _containers_arg(p)
    ns = parse(p, argv)
    return for_each(ctx, ns.containers, _verb("POST", "/unpause"))


def wait(ctx: Context, argv: list[str]) -> int:
    """``silo wait C...``: print each container's exit code."""
    p = parser(ctx, "wait", "CONTAINER [CONTAINER...]",
               "Block until one or more containers stop, then print their exit codes")
    _containers_arg(p)
    ns = parse(p, argv)

    def act(c: Client, n: str) -> str:
        resp = c.stream("POST", f"/containers/{quote(n)}/wait")
        doc = resp.json()
        c.finish(resp)
        return str((doc or {}).get("StatusCode", ""))

    return for_each(ctx, ns.containers, act)


def rename(ctx: Context, argv: list[str]) -> int:
    """``silo rename OLD NEW``."""
    p = parser(ctx, "rename", "CONTAINER NEW_NAME", "Rename a container")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("new_name", metavar="NEW_NAME")
    ns = parse(p, argv)
    new = ns.new_name.strip().lstrip("/")
    if not new:
        raise StatusError(1, "Error: Neither old nor new names may be empty")
    try:
        ctx.client.request("POST", f"/containers/{quote(ns.container)}/rename", {"name": new})
    except APIError as e:
        raise StatusError(1, f"{e}\nError: failed to rename container named {ns.container}")
    return 0


# --------------------------------------------------------------------------- ps

_PS_HEADERS = {
    "ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
    "RunningFor": "CREATED", "Ports": "PORTS", "State": "STATE", "Status": "STATUS",
    "Size": "SIZE", "Names": "NAMES", "Labels": "LABELS", "Label": "LABEL", "Mounts": "MOUNTS",
    "Networks": "NETWORKS", "LocalVolumes": "LOCAL VOLUMES", "Platform": "PLATFORM",
}
_PS_DEFAULT = ("table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t"
               "{{.Ports}}\t{{.Names}}")


def display_ports(ports: list[dict[str, Any]]) -> str:
    """docker's DisplayablePorts: contiguous ports grouped into ranges, mappings listed last."""
    def key(p: dict[str, Any]) -> tuple[int, str, int, str]:
        return (p.get("PrivatePort", 0), p.get("IP", ""), p.get("PublicPort", 0),
                p.get("Type", ""))

    groups: dict[str, list[int]] = {}
    order: list[str] = []
    result: list[str] = []
    mappings: list[str] = []

    def form(k: str, first: int, last: int) -> str:
        ip, _, kind = k.rpartition("/") if k.count("/") else ("", "", k)
        g = str(first) if first == last else f"{first}-{last}"
        if ip:
            g = f"{ip}:{g}->{g}"
        return f"{g}/{kind}"

    for p in sorted(ports, key=key):
        cur = int(p.get("PrivatePort", 0))
        kind = p.get("Type", "tcp")
        k = kind
        ip = p.get("IP") or ""
        if ip:
            pub = int(p.get("PublicPort") or 0)
            if pub != cur:
                host = f"[{ip}]" if ":" in ip else ip
                mappings.append(f"{host}:{pub}->{cur}/{kind}")
                continue
            k = f"{ip}/{kind}"
        g = groups.get(k)
        if g is None:
            groups[k] = [cur, cur]
            order.append(k)
            continue
        if cur == g[1] + 1:
            g[1] = cur
            continue
        result.append(form(k, g[0], g[1]))
        groups[k] = [cur, cur]
    for k in order:
        result.append(form(k, groups[k][0], groups[k][1]))
    return ", ".join(result + mappings)


def status_text(state: dict[str, Any], now: float | None = None) -> str:
    """``Up 3 seconds`` / ``Exited (0) 2 minutes ago`` from an inspect State (daemon-less)."""
    now = time.time() if now is None else now
    status = state.get("Status", "")
    if state.get("Running") or status in ("running", "paused", "restarting"):
        if state.get("Restarting") or status == "restarting":
            fin = state.get("FinishedAt")
            ago = units.human_duration(now - units.parse_iso(fin)) if fin and \
                not units.go_time_zero(fin) else "Less than a second"
            return f"Restarting ({state.get('ExitCode', 0)}) {ago} ago"
        started = state.get("StartedAt")
        up = units.human_duration(now - units.parse_iso(started)) if started and \
            not units.go_time_zero(started) else "Less than a second"
        paused = " (Paused)" if state.get("Paused") or status == "paused" else ""
        return f"Up {up}{paused}"
    if status == "removing":
        return "Removal In Progress"
    if status == "dead":
        return "Dead"
    if status == "created" or units.go_time_zero(state.get("StartedAt")):
        return "Created"
    fin = state.get("FinishedAt")
    if fin and not units.go_time_zero(fin):
        return f"Exited ({state.get('ExitCode', 0)}) " \
               f"{units.human_duration(now - units.parse_iso(fin))} ago"
    return f"Exited ({state.get('ExitCode', 0)})"


class ContainerRow:
    """One ``ps`` line as docker's formatter sees it; attribute names are the template fields."""

    def __init__(self, c: dict[str, Any], trunc: bool = True, now: float | None = None) -> None:
        self.c = c
        self.trunc = trunc
        self.now = time.time() if now is None else now

    @property
    def ID(self) -> str:
        cid = self.c.get("Id", "")
        return short_id(cid) if self.trunc else cid

    @property
    def Names(self) -> str:
        names = [n[1:] if n.startswith("/") else n for n in self.c.get("Names") or []]
        if self.trunc:
            names = [n for n in names if "/" not in n] or names[:1]
        return ",".join(names)

    @property
    def Image(self) -> str:
        image = self.c.get("Image") or ""
        if not image:
            return "<no image>"
        if self.trunc:
            if image.startswith("sha256:") or (len(image) == 64 and
                                               all(ch in "0123456789abcdef" for ch in image)):
                return short_id(image)
            if "@sha256:" in image:
                image = image.split("@", 1)[0]
        return image

    @property
    def Command(self) -> str:
        import json

        command = self.c.get("Command") or ""
        if self.trunc and not (len(command) <= 20 and command.isascii()):
            command = formatter.ellipsis(command, 20)
        return json.dumps(command, ensure_ascii=False)

    @property
    def CreatedAt(self) -> str:
        t = time.localtime(int(self.c.get("Created") or 0))
        return time.strftime("%Y-%m-%d %H:%M:%S %z %Z", t)

    @property
    def RunningFor(self) -> str:
        created = float(self.c.get("Created") or 0)
        return units.human_duration(self.now - created) + " ago"

    @property
    def Ports(self) -> str:
        ports = self.c.get("Ports")
        return display_ports(ports) if ports else ""

    @property
    def State(self) -> str:
        return self.c.get("State") or ""

    @property
    def Status(self) -> str:
        st = self.c.get("Status")
        if st:
            return str(st)
        state = self.c.get("State")
        return status_text({"Status": state} if isinstance(state, str) else state or {},
                           self.now)

    @property
    def Size(self) -> str:
        srw = units.human_size(self.c.get("SizeRw") or 0)
        sv = units.human_size(self.c.get("SizeRootFs") or 0)
        if self.c.get("SizeRootFs"):
            return f"{srw} (virtual {sv})"
        return srw

    @property
    def Labels(self) -> str:
        labels = self.c.get("Labels") or {}
        return ",".join(f"{k}={labels[k]}" for k in sorted(labels))

    def Label(self, name: str) -> str:
        return str((self.c.get("Labels") or {}).get(name, ""))

    @property
    def Mounts(self) -> str:
        names = []
        for m in self.c.get("Mounts") or []:
            n = m.get("Name") or m.get("Source") or ""
            if self.trunc and not m.get("Name"):
                n = formatter.ellipsis(n, 15)
            names.append(n)
        return ",".join(names)

    @property
    def LocalVolumes(self) -> str:
        return str(sum(1 for m in self.c.get("Mounts") or [] if m.get("Driver") == "local"))

    @property
    def Networks(self) -> str:
        nets = ((self.c.get("NetworkSettings") or {}).get("Networks") or {})
        return ",".join(sorted(nets))

    @property
    def Platform(self) -> str:
        return ""

    _FIELDS = ("Command", "CreatedAt", "ID", "Image", "Labels", "LocalVolumes", "Mounts",
               "Names", "Networks", "Ports", "RunningFor", "Size", "State", "Status")

    def to_json(self) -> dict[str, str]:
        """``{{json .}}``: every field, as strings, the way docker marshals its context."""
        return {f: getattr(self, f) for f in self._FIELDS}


def parse_filters(items: list[str]) -> dict[str, list[str]]:
    """``-f status=exited -f name=x`` → {"status": ["exited"], "name": ["x"]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep:
            raise StatusError(125, f"invalid argument \"{item}\" for \"-f, --filter\" flag: "
                              "bad format of filter (expected name=value)")
        out.setdefault(k.strip().lower(), []).append(v)
    return out


def _format_arg(value: str | None, default: str) -> str:
    if not value or value == "table":
        return default
    if value == "json":
        return "{{json .}}"
    return value


def ps(ctx: Context, argv: list[str]) -> int:
    """``silo ps`` / ``container ls``."""
    p = parser(ctx, "ps", "[OPTIONS]", "List containers")
    p.add_argument("-a", "--all", action="store_true",
                   help="Show all containers (default shows just running)")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="filter",
                   help="Filter output based on conditions provided")
    p.add_argument("--format", metavar="string", help="Format output using a custom template")
    p.add_argument("-n", "--last", type=int, default=-1, metavar="int",
                   help="Show n last created containers (includes all states)")
    p.add_argument("-l", "--latest", action="store_true",
                   help="Show the latest created container (includes all states)")
    p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="Only display container IDs")
    p.add_argument("-s", "--size", action="store_true", help="Display total file sizes")
    ns = parse(p, argv)
    limit = 1 if ns.latest else ns.last
    filters = parse_filters(ns.filter)
    params: dict[str, Any] = {
        "all": True if (ns.all or limit > 0) else None,
        "limit": limit if limit > 0 else None,
        "size": True if ns.size else None,
    }
    if filters:
        import json

        params["filters"] = json.dumps(filters, separators=(",", ":"))
    fmt_value = ns.format
    if ns.quiet:
        fmt = "{{.ID}}"
    else:
        default = _PS_DEFAULT + ("\t{{.Size}}" if ns.size else "")
        fmt = _format_arg(fmt_value, default)
        if ".Size" in fmt and not ns.size:
            params["size"] = True
    containers = ctx.client.get("/containers/json", params) or []
    now = time.time()
    rows = [ContainerRow(c, trunc=not ns.no_trunc, now=now) for c in containers]
    ctx.out(formatter.render_list(fmt, rows, _PS_HEADERS))
    return 0


# --------------------------------------------------------------------------- inspect

def _inspect(ctx: Context, argv: list[str], kind: str | None) -> int:
    name = "inspect" if kind is None else f"{kind} inspect"
    p = parser(ctx, name, "[OPTIONS] NAME|ID [NAME|ID...]",
               "Return low-level information on silobox objects")
    p.add_argument("-f", "--format", metavar="string",
                   help="Format output using a custom template")
    p.add_argument("-s", "--size", action="store_true",
                   help="Display total file sizes if the type is container")
    if kind is None:
        p.add_argument("--type", metavar="string", help="Only inspect objects of the given type")
    p.add_argument("names", nargs="+", metavar="NAME")
    ns = parse(p, argv)
    want = kind or ns.type
    if want not in (None, "container", "image"):
        raise StatusError(1, f'"{want}" is not a valid value for --type')
    tmpl = formatter.Template(ns.format) if ns.format and ns.format != "json" else None
    found: list[Any] = []
    errors: list[str] = []
    client = ctx.client
    for n in ns.names:
        obj = None
        if want in (None, "container"):
            try:
                obj = client.get(f"/containers/{quote(n)}/json", {"size": ns.size or None})
            except APIError as e:
                if e.status != 404:
                    errors.append(str(e))
                    continue
        if obj is None and want in (None, "image"):
            try:
                obj = client.get(f"/images/{quote(n, safe='/:@')}/json")
            except APIError as e:
                if e.status != 404:
                    errors.append(str(e))
                    continue
        if obj is None:
            errors.append(f"Error: No such {want or 'object'}: {n}")
            continue
        found.append(obj)
    if tmpl is not None:
        for obj in found:
            try:
                ctx.out(tmpl.execute(obj) + "\n")
            except formatter.TemplateError as e:
                raise StatusError(1, f"template: executing: {e}") from None
    elif ns.format == "json":
        for obj in found:
            ctx.out(formatter.go_json(obj) + "\n")
    else:
        ctx.out(formatter.pretty_json(found) + "\n")
    if errors:
        sys.stdout.flush()
        raise StatusError(1, "\n".join(errors))
    return 0


def inspect(ctx: Context, argv: list[str]) -> int:
    """``silo inspect``: containers, falling back to images, like docker's generic inspect."""
    return _inspect(ctx, argv, None)


def container_inspect(ctx: Context, argv: list[str]) -> int:
    """``silo container inspect``: containers only."""
    return _inspect(ctx, argv, "container")


# --------------------------------------------------------------------------- logs

def logs(ctx: Context, argv: list[str]) -> int:
    """``silo logs [-f] [--tail N] [-t] [--since] [--until] C``."""
    p = parser(ctx, "logs", "[OPTIONS] CONTAINER", "Fetch the logs of a container")
    p.add_argument("--details", action="store_true", help="Show extra details provided to logs")
    p.add_argument("-f", "--follow", action="store_true", help="Follow log output")
    p.add_argument("--since", metavar="string",
                   help='Show logs since timestamp (e.g. "2013-01-02T13:23:37Z") or relative '
                        '(e.g. "42m" for 42 minutes)')
    p.add_argument("-n", "--tail", default="all", metavar="string",
                   help='Number of lines to show from the end of the logs (default "all")')
    p.add_argument("-t", "--timestamps", action="store_true", help="Show timestamps")
    p.add_argument("--until", metavar="string",
                   help="Show logs before a timestamp or relative (e.g. 42m)")
    p.add_argument("container", metavar="CONTAINER")
    ns = parse(p, argv)
    try:
        since = units.parse_timestamp(ns.since) if ns.since else None
        until = units.parse_timestamp(ns.until) if ns.until else None
    except ValueError as e:
        raise StatusError(1, str(e)) from None
    params = {"stdout": True, "stderr": True, "follow": ns.follow or None, "tail": ns.tail,
              "timestamps": ns.timestamps or None, "since": since, "until": until,
              "details": ns.details or None}
    client = ctx.client
    resp = client.stream("GET", f"/containers/{quote(ns.container)}/logs", params)
    ctype = resp.content_type
    if ctype == MULTIPLEXED:
        raw = False
    elif ctype == RAW_STREAM:
        raw = True
    else:
        info = Client(ctx.host, debug=ctx.debug).get(f"/containers/{quote(ns.container)}/json")
        raw = bool((info.get("Config") or {}).get("Tty"))
    from silobox.cli.attach import _Out
    from silobox.cli.client import StdDemux

    out, err = _Out(1), _Out(2)
    demux = StdDemux()
    sys.stdout.flush()
    try:
        while True:
            data = resp.read_some()
            if not data:
                break
            if raw:
                out.write(data)
                continue
            for kind, payload in demux.feed(data):
                (err if kind in (2, 3) else out).write(payload)
    except KeyboardInterrupt:
        return 0
    finally:
        resp.conn.close()
    return 0


# --------------------------------------------------------------------------- top

def top(ctx: Context, argv: list[str]) -> int:
    """``silo top C [ps OPTIONS]``."""
    p = parser(ctx, "top", "CONTAINER [ps OPTIONS]",
               "Display the running processes of a container")
    import argparse

    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="ps OPTIONS")
    ns = parse(p, argv, intermixed=False)
    params = {"ps_args": " ".join(ns.ps_args) if ns.ps_args else None}
    doc = ctx.client.get(f"/containers/{quote(ns.container)}/top", params) or {}
    lines = ["\t".join(doc.get("Titles") or [])]
    for proc in doc.get("Processes") or []:
        lines.append("\t".join(str(x) for x in proc))
    ctx.out(formatter.tabwrite("\n".join(lines) + "\n", minwidth=20, padding=3))
    return 0


# --------------------------------------------------------------------------- stats

_STATS_HEADERS = {
    "Container": "CONTAINER", "ID": "CONTAINER ID", "Name": "NAME", "CPUPerc": "CPU %",
    "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O",
    "BlockIO": "BLOCK I/O", "PIDs": "PIDS",
}
_STATS_DEFAULT = ("table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t"
                  "{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}")


def cpu_percent(s: dict[str, Any]) -> float:
    """docker's calculateCPUPercentUnix: share of host CPU time × online CPUs × 100."""
    cpu = s.get("cpu_stats") or {}
    pre = s.get("precpu_stats") or {}
    cpu_delta = float((cpu.get("cpu_usage") or {}).get("total_usage") or 0) - \
        float((pre.get("cpu_usage") or {}).get("total_usage") or 0)
    sys_delta = float(cpu.get("system_cpu_usage") or 0) - float(pre.get("system_cpu_usage") or 0)
    online = float(cpu.get("online_cpus") or 0)
    if online == 0.0:
        online = float(len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []))
    if sys_delta > 0.0 and cpu_delta > 0.0:
        return cpu_delta / sys_delta * online * 100.0
    return 0.0


def mem_usage(s: dict[str, Any]) -> float:
    """Usage minus inactive page cache (v1 total_inactive_file, v2 inactive_file)."""
    mem = s.get("memory_stats") or {}
    usage = float(mem.get("usage") or 0)
    stats = mem.get("stats") or {}
    if "total_inactive_file" in stats and stats["total_inactive_file"] < usage:
        return usage - float(stats["total_inactive_file"])
    v = float(stats.get("inactive_file", 0) or 0)
    if v < usage:
        return usage - v
    return usage


class StatsRow:
    """One ``stats`` line; attribute names are docker's template fields."""

    def __init__(self, container: str, s: dict[str, Any] | None, trunc: bool = True) -> None:
        self.Container = container
        self.s = s
        self.trunc = trunc

    @property
    def ID(self) -> str:
        cid = (self.s or {}).get("id") or self.Container
        return short_id(cid) if self.trunc else cid

    @property
    def Name(self) -> str:
        name = (self.s or {}).get("name") or ""
        return name[1:] if name.startswith("/") else (name or "--")

    @property
    def CPUPerc(self) -> str:
        return "--" if self.s is None else f"{cpu_percent(self.s):.2f}%"

    @property
    def MemUsage(self) -> str:
        if self.s is None:
            return "-- / --"
        limit = float((self.s.get("memory_stats") or {}).get("limit") or 0)
        return f"{units.bytes_size(mem_usage(self.s))} / {units.bytes_size(limit)}"

    @property
    def MemPerc(self) -> str:
        if self.s is None:
            return "--"
        limit = float((self.s.get("memory_stats") or {}).get("limit") or 0)
        return f"{(mem_usage(self.s) / limit * 100.0) if limit else 0.0:.2f}%"

    @property
    def NetIO(self) -> str:
        if self.s is None:
            return "--"
        rx = tx = 0.0
        for n in (self.s.get("networks") or {}).values():
            rx += float(n.get("rx_bytes") or 0)
            tx += float(n.get("tx_bytes") or 0)
        return f"{units.human_size(rx)} / {units.human_size(tx)}"

    @property
    def BlockIO(self) -> str:
        if self.s is None:
            return "--"
        r = w = 0.0
        for e in (self.s.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
            op = (e.get("op") or "")[:1].lower()
            if op == "r":
                r += float(e.get("value") or 0)
            elif op == "w":
                w += float(e.get("value") or 0)
        return f"{units.human_size(r)} / {units.human_size(w)}"

    @property
    def PIDs(self) -> str:
        if self.s is None:
            return "--"
        return str(int((self.s.get("pids_stats") or {}).get("current") or 0))

    def to_json(self) -> dict[str, str]:
        return {f: getattr(self, f) for f in ("BlockIO", "CPUPerc", "Container", "ID",
                                              "MemPerc", "MemUsage", "Name", "NetIO", "PIDs")}


def _collect_stats(ctx: Context, names: list[str]) -> list[dict[str, Any] | None]:
    """One stats sample per container (the daemon takes two readings for precpu), in parallel."""
    import threading

    results: list[dict[str, Any] | None] = [None] * len(names)

    def one(i: int, n: str) -> None:
        c = Client(ctx.host, debug=ctx.debug)
        try:
            results[i] = c.get(f"/containers/{quote(n)}/stats", {"stream": False})
        except (APIError, ConnectError, OSError):
            results[i] = None
        finally:
            c.close()

    threads = [threading.Thread(target=one, args=(i, n)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def stats(ctx: Context, argv: list[str]) -> int:
    """``silo stats [--no-stream] [-a] [--format] [C...]``."""
    p = parser(ctx, "stats", "[OPTIONS] [CONTAINER...]",
               "Display a live stream of container(s) resource usage statistics")
    p.add_argument("-a", "--all", action="store_true",
                   help="Show all containers (default shows just running)")
    p.add_argument("--format", metavar="string", help="Format output using a custom template")
    p.add_argument("--no-stream", action="store_true",
                   help="Disable streaming stats and only pull the first result")
    p.add_argument("--no-trunc", action="store_true", help="Do not truncate output")
    p.add_argument("containers", nargs="*", metavar="CONTAINER")
    ns = parse(p, argv)
    fmt = _format_arg(ns.format, _STATS_DEFAULT)
    client = ctx.client
    while True:
        names = list(ns.containers)
        if not names:
            listed = client.get("/containers/json", {"all": ns.all or None}) or []
            names = [c["Id"] for c in listed]
        else:
            for n in names:  # docker fails up front for an unknown container
                client.get(f"/containers/{quote(n)}/json")
        samples = _collect_stats(ctx, names) if names else []
        rows = [StatsRow(n, s, trunc=not ns.no_trunc) for n, s in zip(names, samples)]
        text = formatter.render_list(fmt, rows, _STATS_HEADERS)
        if ns.no_stream:
            ctx.out(text)
            return 0
        ctx.out("\033[2J\033[H" + text)
        sys.stdout.flush()
        try:
            time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
