"""``version`` and ``info``, laid out like docker's so habits and scripts carry over."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs start-up time
    from typing import Any

from silobox.cli import formatter, units
from silobox.cli.client import APIError, ConnectError
from silobox.cli.commands import Context, StatusError, parse, parser

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386"}


def client_version() -> dict[str, Any]:
    from silobox import API_VERSION, __version__

    return {
        "Platform": {"Name": ""},
        "Version": __version__,
        "ApiVersion": API_VERSION,
        "DefaultAPIVersion": API_VERSION,
        "PythonVersion": sys.version.split()[0],
        "GitCommit": "",
        "BuildTime": "",
        "Os": sys.platform,
        "Arch": _ARCH.get(os.uname().machine, os.uname().machine),
        "Context": "default",
    }


def _client_lines(c: dict[str, Any]) -> list[str]:
    lines = ["Client:" + (f" {c['Platform']['Name']}" if c["Platform"]["Name"] else "")]
    lines += [f" Version:\t{c['Version']}",
              f" API version:\t{c['ApiVersion']}",
              f" Python version:\t{c['PythonVersion']}",
              f" OS/Arch:\t{c['Os']}/{c['Arch']}",
              f" Context:\t{c['Context']}"]
    return lines


def _server_lines(s: dict[str, Any]) -> list[str]:
    name = (s.get("Platform") or {}).get("Name") or ""
    lines = ["", "Server:" + (f" {name}" if name else "")]
    components = s.get("Components") or [{
        "Name": "Engine", "Version": s.get("Version", ""),
        "Details": {"ApiVersion": s.get("ApiVersion", ""),
                    "MinAPIVersion": s.get("MinAPIVersion", ""),
                    "GitCommit": s.get("GitCommit", ""), "GoVersion": s.get("GoVersion", ""),
                    "Os": s.get("Os", ""), "Arch": s.get("Arch", ""),
                    "BuildTime": s.get("BuildTime", ""),
                    "KernelVersion": s.get("KernelVersion", ""),
                    "Experimental": str(s.get("Experimental", False)).lower()}}]
    for comp in components:
        d = comp.get("Details") or {}
        lines.append(f" {comp.get('Name', '')}:")
        if comp.get("Name") == "Engine":
            lines.append(f"  Version:\t{comp.get('Version', '')}")
            api = d.get("ApiVersion") or s.get("ApiVersion", "")
            minimum = d.get("MinAPIVersion") or s.get("MinAPIVersion", "")
            lines.append(f"  API version:\t{api} (minimum version {minimum})")
            runtime = str(d.get("GoVersion") or "")
            if runtime.startswith("python"):
                lines.append(f"  Python version:\t{runtime[len('python'):]}")
            elif runtime:
                lines.append(f"  Go version:\t{runtime}")
            lines.append(f"  Git commit:\t{d.get('GitCommit', '')}")
            lines.append(f"  Built:\t{d.get('BuildTime', '')}")
            lines.append(f"  OS/Arch:\t{d.get('Os', '')}/{d.get('Arch', '')}")
            lines.append(f"  Experimental:\t{d.get('Experimental', 'false')}")
        else:
            lines.append(f"  Version:\t{comp.get('Version', '')}")
            for key in sorted(d):
                lines.append(f"  {key}:\t{d[key]}")
    return lines


def version(ctx: Context, argv: list[str]) -> int:
    """``silo version``: client and server versions (docker's layout)."""
    p = parser(ctx, "version", "[OPTIONS]", "Show the silobox version information")
    p.add_argument("-f", "--format", metavar="string",
                   help="Format output using a custom template")
    ns = parse(p, argv)
    client = client_version()
    server: dict[str, Any] | None = None
    error: BaseException | None = None
    try:
        server = ctx.client.get("/version")
    except (APIError, ConnectError) as e:
        error = e
    if ns.format:
        doc = {"Client": client, "Server": server}
        text = formatter.go_json(doc) + "\n" if ns.format == "json" else \
            formatter.render_one(ns.format, doc)
        ctx.out(text)
    else:
        lines = _client_lines(client)
        if server is not None:
            lines += _server_lines(server)
        ctx.out(formatter.tabwrite("\n".join(lines) + "\n", minwidth=20, padding=1))
    if error is not None:
        raise StatusError(1, str(error))
    return 0


def _security_lines(opts: list[str]) -> list[str]:
    lines = [" Security Options:"]
    for opt in opts:
        fields = dict(kv.partition("=")[::2] for kv in opt.split(","))
        if "name" not in fields:
            lines.append(f"  {opt}")
            continue
        lines.append(f"  {fields.pop('name')}")
        for k, v in fields.items():
            lines.append(f"   {k[:1].upper() + k[1:]}: {v}")
    return lines


def info(ctx: Context, argv: list[str]) -> int:
    """``silo info``: the daemon's system-wide information (docker's layout)."""
    p = parser(ctx, "info", "[OPTIONS]", "Display system-wide information")
    p.add_argument("-f", "--format", metavar="string",
                   help="Format output using a custom template")
    ns = parse(p, argv)
    from silobox import __version__

    doc = ctx.client.get("/info") or {}
    if ns.format:
        full = dict(doc)
        full["ClientInfo"] = {"Version": __version__, "Context": "default",
                              "Debug": ctx.debug}
        ctx.out(formatter.go_json(full) + "\n" if ns.format == "json"
                else formatter.render_one(ns.format, full))
        return 0
    out = ["Client:", f" Version:    {__version__}", " Context:    default",
           f" Debug Mode: {str(ctx.debug).lower()}", "", "Server:"]

    def add(label: str, key: str, indent: int = 1) -> None:
        if key in doc and doc[key] not in (None, ""):
            value = doc[key]
            if isinstance(value, bool):
                value = str(value).lower()
            out.append(f"{' ' * indent}{label}: {value}")

    add("Containers", "Containers")
    add("Running", "ContainersRunning", 2)
    add("Paused", "ContainersPaused", 2)
    add("Stopped", "ContainersStopped", 2)
    add("Images", "Images")
    add("Server Version", "ServerVersion")
    add("Storage Driver", "Driver")
    for k, v in doc.get("DriverStatus") or []:
        out.append(f"  {k}: {v}")
    add("Logging Driver", "LoggingDriver")
    add("Cgroup Driver", "CgroupDriver")
    add("Cgroup Version", "CgroupVersion")
    add("Default Isolation", "Isolation")
    if doc.get("SecurityOptions"):
        out += _security_lines(doc["SecurityOptions"])
    add("Kernel Version", "KernelVersion")
    add("Operating System", "OperatingSystem")
    add("OSType", "OSType")
    add("Architecture", "Architecture")
    add("CPUs", "NCPU")
    if doc.get("MemTotal"):
        out.append(f" Total Memory: {units.bytes_size(doc['MemTotal'])}")
    add("Name", "Name")
    add("ID", "ID")
    add("Docker Root Dir", "DockerRootDir")
    add("Debug Mode", "Debug")
    add("Experimental", "ExperimentalBuild")
    add("Live Restore Enabled", "LiveRestoreEnabled")
    out += _forwarding_lines((doc.get("Silobox") or {}).get("HostForwarding"))
    out += _utility_vm_lines((doc.get("Silobox") or {}).get("UtilityVM"))
    ctx.out("\n".join(out) + "\n")
    for w in doc.get("Warnings") or []:
        ctx.err(f"{w}\n" if w.startswith("WARNING") else f"WARNING: {w}\n")
    return 0


def _utility_vm_lines(u: dict | None) -> list[str]:
    """The utility VM (--isolation hyperv, cgroup v2 tests): kernel and accelerator, or why not."""
    if not u:
        return []
    if not u.get("Available"):
        return [" Utility VM: unavailable", f"  Reason: {u.get('Reason', '')}"]
    return [" Utility VM:", f"  Kernel: {u.get('Kernel', '')}",
            f"  Accelerator: {u.get('Accelerator', '')} ({u.get('AcceleratorReason', '')})"]


def _forwarding_lines(f: dict | None) -> list[str]:
    """What silod did to the host's forwarding (sysctl and firewall accept rules)."""
    if not f:
        return []
    out = [" Host Forwarding:", f"  net.ipv4.ip_forward: {'1' if f.get('IPv4Forwarding') else '0'}"
           f" ({f.get('IPForward', '')})"]
    if "IPv6Forwarding" in f:
        out.append(f"  net.ipv6.conf.all.forwarding: {'1' if f.get('IPv6Forwarding') else '0'}"
                   f" ({f.get('IP6Forward', '')})")
    rules = f.get("ForwardRules")
    if isinstance(rules, str):
        out.append(f"  Forward rules: {rules}")
    elif rules:
        for r in rules:
            out.append(f"  Forward rules: {r['Rules']} accept rules in {r['Backend']} "
                       f"{r['Table']} {r['Chain']} (policy drop)")
    else:
        out.append("  Forward rules: none needed (no forward hook drops by default)")
    return out


def df(ctx: Context, argv: list[str]) -> int:
    """``silo system df``: docker's summary table of what images, containers and volumes use."""
    p = parser(ctx, "system df", "[OPTIONS]", "Show silobox disk usage")
    p.add_argument("--format", metavar="string", help="Format output using a custom template")
    ns = parse(p, argv)
    doc = ctx.client.get("/system/df") or {}
    images = doc.get("Images") or []
    ctrs = doc.get("Containers") or []
    vols = doc.get("Volumes") or []
    img_size = int(doc.get("LayersSize") or 0)
    img_active = [i for i in images if i.get("Containers")]
    img_reclaim = img_size - sum(int(i.get("Size") or 0) for i in img_active)
    ctr_size = sum(int(c.get("SizeRw") or 0) for c in ctrs)
    ctr_active = [c for c in ctrs if c.get("State") in ("running", "paused", "restarting")]
    ctr_reclaim = ctr_size - sum(int(c.get("SizeRw") or 0) for c in ctr_active)
    vol_size = sum(int((v.get("UsageData") or {}).get("Size") or 0) for v in vols)
    vol_active = [v for v in vols if (v.get("UsageData") or {}).get("RefCount")]
    vol_reclaim = vol_size - sum(int(v["UsageData"]["Size"]) for v in vol_active)

    def pct(part: int, whole: int) -> str:
        return f" ({part * 100 // whole}%)" if whole else ""

    rows = [
        {"Type": "Images", "TotalCount": len(images), "Active": len(img_active),
         "Size": units.human_size(img_size),
         "Reclaimable": units.human_size(max(img_reclaim, 0)) + pct(max(img_reclaim, 0),
                                                                    img_size)},
        {"Type": "Containers", "TotalCount": len(ctrs), "Active": len(ctr_active),
         "Size": units.human_size(ctr_size),
         "Reclaimable": units.human_size(ctr_reclaim) + pct(ctr_reclaim, ctr_size)},
        {"Type": "Local Volumes", "TotalCount": len(vols), "Active": len(vol_active),
         "Size": units.human_size(vol_size),
         "Reclaimable": units.human_size(vol_reclaim) + pct(vol_reclaim, vol_size)},
        {"Type": "Build Cache", "TotalCount": 0, "Active": 0, "Size": "0B",
         "Reclaimable": "0B"},
    ]
    fmt = ns.format or ("table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t"
                        "{{.Reclaimable}}")
    headers = {"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE",
               "Reclaimable": "RECLAIMABLE"}
    ctx.out(formatter.render_list(fmt, rows, headers))
    return 0
