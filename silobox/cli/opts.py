"""Turn ``run``/``create``/``exec`` flags into Docker API request bodies.

Pure functions (apart from reading ``--env-file`` and seccomp profile files), mirroring the docker
CLI's opts/parse.go rules, so a command line means the same thing to ``silo`` and to ``docker``.
"""

from __future__ import annotations

import argparse
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs start-up time
    from typing import Any, Callable, Mapping

from silobox.cli import units


class OptError(ValueError):
    """A flag value docker would reject; the message follows docker's wording."""


def _healthcheck(ns: Any) -> dict[str, Any] | None:
    """The --health-* flags as a Healthcheck config (durations in nanoseconds)."""
    if ns.no_healthcheck:
        if ns.health_cmd:
            raise OptError("--no-healthcheck conflicts with --health-* options")
        return {"Test": ["NONE"]}
    hc: dict[str, Any] = {}
    if ns.health_cmd:
        hc["Test"] = ["CMD-SHELL", ns.health_cmd]
    for flag, key, value in (("--health-interval", "Interval", ns.health_interval),
                             ("--health-timeout", "Timeout", ns.health_timeout),
                             ("--health-start-period", "StartPeriod", ns.health_start_period)):
        if value:
            hc[key] = int(_flag_value(flag, value, units.parse_go_duration) * 1e9)
    if ns.health_retries is not None:
        hc["Retries"] = ns.health_retries
    return hc or None


def _flag_value(flag: str, value: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(value)
    except ValueError as e:
        raise OptError(f'invalid argument "{value}" for "{flag}" flag: {e}') from None


def env_value(item: str, environ: dict[str, str] | None = None) -> str | None:
    """``K=V`` as given; a bare ``K`` takes the caller's value of K (or is passed bare)."""
    if "=" in item:
        if item.startswith("="):
            raise OptError(f"invalid environment variable: {item}")
        return item
    env: Mapping[str, str] = os.environ if environ is None else environ
    if item in env:
        return f"{item}={env[item]}"
    return item


def read_env_file(path: str, environ: dict[str, str] | None = None) -> list[str]:
    """docker's env file: one ``K=V`` or ``K`` per line, ``#`` comments and blanks skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise OptError(f"open {path}: {e.strerror.lower() if e.strerror else e}") from None
    out: list[str] = []
    for raw in lines:
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not name:
            raise OptError(f"invalid variable: '{line}' has no name")
        if any(c.isspace() for c in name):
            raise OptError(f"variable '{name.strip()}' contains whitespaces")
        if sep:
            out.append(f"{name}={value}")
        else:
            env: Mapping[str, str] = os.environ if environ is None else environ
            out.append(f"{name}={env[name]}" if name in env else name)
    return out


def parse_ulimit(value: str) -> dict[str, Any]:
    """``nofile=1024:2048`` → {"Name": "nofile", "Soft": 1024, "Hard": 2048}."""
    name, sep, limits = value.partition("=")
    if not sep or not name:
        raise OptError(f"invalid ulimit argument: {value}")
    soft_s, _, hard_s = limits.partition(":")
    try:
        soft = int(soft_s)
        hard = int(hard_s) if hard_s else soft
    except ValueError:
        raise OptError(f"invalid ulimit argument: {value}") from None
    if soft > hard and hard != -1:
        raise OptError(f"ulimit soft limit must be less than or equal to hard limit: "
                       f"{soft} > {hard}")
    return {"Name": name, "Soft": soft, "Hard": hard}


def compact_json(text: str) -> str:
    """Remove insignificant whitespace, keeping every token as written (Go's json.Compact)."""
    import json

    json.loads(text)  # reject invalid JSON with a clear error first
    out: list[str] = []
    in_str = False
    esc = False
    for c in text:
        if in_str:
            out.append(c)
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            out.append(c)
        elif c not in " \t\r\n":
            out.append(c)
    return "".join(out)


def parse_security_opts(opts: list[str]) -> list[str]:
    """A seccomp profile path is read here and sent inline as ``seccomp=<json>``, like docker."""
    result: list[str] = []
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep and key != "no-new-privileges":
            if ":" in opt:
                key, _, value = opt.partition(":")
            else:
                raise OptError(f"Invalid --security-opt: {opt!r}".replace("'", '"'))
        if key == "seccomp" and value != "unconfined":
            try:
                with open(value, encoding="utf-8") as f:
                    data = f.read()
            except OSError as e:
                raise OptError(f"opening seccomp profile ({value}) failed: open {value}: "
                               f"{(e.strerror or str(e)).lower()}") from None
            try:
                result.append("seccomp=" + compact_json(data))
            except ValueError as e:
                raise OptError(f"compacting json for seccomp profile ({value}) failed: "
                               f"{e}") from None
            continue
        result.append(opt)
    return result


def parse_publish(value: str) -> list[tuple[str, dict[str, str]]]:
    """``[ip:][hostPort:]containerPort[/proto]`` (ranges allowed) → [(port/proto, binding)]."""
    rest, _, proto = value.partition("/")
    proto = proto or "tcp"
    ip = ""
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise OptError(f"invalid IP address: {value}")
        ip, rest = rest[1:end], rest[end + 2:]
        parts = rest.split(":") if rest else []
        host_port = parts[0] if len(parts) == 2 else ""
        ctr = parts[-1] if parts else ""
    else:
        parts = rest.split(":")
        if len(parts) == 1:
            host_port, ctr = "", parts[0]
        elif len(parts) == 2:
            host_port, ctr = parts
        elif len(parts) == 3:
            ip, host_port, ctr = parts
        else:
            ip, host_port, ctr = ":".join(parts[:-2]), parts[-2], parts[-1]
    if not ctr:
        raise OptError(f"no port specified: {value}<empty>")

    def span(p: str) -> list[int]:
        a, sep, b = p.partition("-")
        try:
            lo = int(a)
            hi = int(b) if sep else lo
        except ValueError:
            raise OptError(f"invalid containerPort: {p}") from None
        if not (0 < lo <= hi <= 65535):
            raise OptError(f"invalid port range: {p}")
        return list(range(lo, hi + 1))

    cports = span(ctr)
    hports: list[str] = [""] * len(cports)
    if host_port:
        hs = span(host_port)
        if len(hs) == len(cports):
            hports = [str(h) for h in hs]
        elif len(cports) == 1:
            hports = [host_port]
        else:
            raise OptError(f"invalid ranges specified for container and host Ports: {value}")
    return [(f"{c}/{proto.lower()}", {"HostIp": ip, "HostPort": h})
            for c, h in zip(cports, hports)]


def parse_restart(value: str) -> dict[str, Any]:
    name, _, count = value.partition(":")
    if name not in ("no", "always", "on-failure", "unless-stopped"):
        raise OptError(f"invalid restart policy '{name}'")
    retries = 0
    if count:
        if name != "on-failure":
            raise OptError(f"maximum retry count cannot be used with restart policy '{name}'")
        try:
            retries = int(count)
        except ValueError:
            raise OptError(f"invalid restart policy format: {value}") from None
    return {"Name": "" if name == "no" else name, "MaximumRetryCount": retries}


def image_reference(image: str) -> str:
    """``busybox`` → ``busybox:latest``: the name docker says it could not find."""
    if "@" in image:
        return image
    last = image.rsplit("/", 1)[-1]
    return image if ":" in last else image + ":latest"


def add_windows_resource_flags(p: argparse.ArgumentParser) -> None:
    """The Windows resource controls (create, run and update)."""
    a = p.add_argument
    a("--cpu-count", type=int, metavar="int", help="CPU count: a CPU set of that many CPUs")
    a("--cpu-percent", type=int, metavar="int",
      help="CPU percent: a CFS quota of that share of the whole host")
    a("--io-maxbandwidth", metavar="bytes",
      help="Maximum IO bandwidth limit for the container's sandbox disk")
    a("--io-maxiops", type=int, metavar="uint", help="Maximum IOps limit for the container's "
      "sandbox disk")


def windows_resources(ns: argparse.Namespace) -> dict[str, Any]:
    """HostConfig fields of ``add_windows_resource_flags``."""
    hc: dict[str, Any] = {}
    if ns.cpu_count is not None:
        hc["CpuCount"] = ns.cpu_count
    if ns.cpu_percent is not None:
        hc["CpuPercent"] = ns.cpu_percent
    if ns.io_maxbandwidth:
        hc["IOMaximumBandwidth"] = _flag_value("--io-maxbandwidth", ns.io_maxbandwidth,
                                               units.parse_bytes)
    if ns.io_maxiops is not None:
        hc["IOMaximumIOps"] = ns.io_maxiops
    return hc


def _device_rate(flag: str, value: str, parse: Callable[[str], int]) -> dict[str, Any]:
    """``/dev/sda:1mb`` → {"Path", "Rate"}, as docker's ValidateThrottle*Device."""
    path, sep, rate = value.rpartition(":")
    if not sep or not path:
        raise OptError(f'invalid argument "{value}" for "{flag}" flag: bad format {value}')
    if not path.startswith("/dev/"):
        raise OptError(f'invalid argument "{value}" for "{flag}" flag: bad format for device '
                       f'path: {value}')
    try:
        n = parse(rate)
    except ValueError:
        n = -1
    if n < 0:
        raise OptError(f'invalid argument "{value}" for "{flag}" flag: invalid rate for device: '
                       f'{value}. The correct format is <device-path>:<number>[<unit>]. '
                       "Number must be a positive integer. Unit is optional and can be kb, "
                       "mb, or gb")
    return {"Path": path, "Rate": n}


def blkio_flags(ns: argparse.Namespace) -> dict[str, Any]:
    """HostConfig fields of the block I/O flags."""
    hc: dict[str, Any] = {}
    if ns.blkio_weight:
        hc["BlkioWeight"] = ns.blkio_weight
    weights = []
    for v in ns.blkio_weight_device:
        d = _device_rate("--blkio-weight-device", v, int)
        weights.append({"Path": d["Path"], "Weight": d["Rate"]})
    if weights:
        hc["BlkioWeightDevice"] = weights
    for flag, field, parse in (("--device-read-bps", "BlkioDeviceReadBps", units.parse_bytes),
                               ("--device-write-bps", "BlkioDeviceWriteBps", units.parse_bytes),
                               ("--device-read-iops", "BlkioDeviceReadIOps", int),
                               ("--device-write-iops", "BlkioDeviceWriteIOps", int)):
        items = [_device_rate(flag, v, parse) for v in getattr(ns, field_attr(flag))]
        if items:
            hc[field] = items
    return hc


def field_attr(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_create_flags(p: argparse.ArgumentParser) -> None:
    """The flags shared by ``run`` and ``create``."""
    a = p.add_argument
    a("-a", "--attach", action="append", default=[], metavar="list",
      help="Attach to STDIN, STDOUT or STDERR")
    a("--cap-add", action="append", default=[], metavar="list", help="Add Linux capabilities")
    a("--cap-drop", action="append", default=[], metavar="list", help="Drop Linux capabilities")
    a("-c", "--cpu-shares", type=int, metavar="int", help="CPU shares (relative weight)")
    a("--blkio-weight", type=int, metavar="uint16",
      help="Block IO (relative weight), between 10 and 1000, or 0 to disable (default 0)")
    a("--blkio-weight-device", action="append", default=[], metavar="list",
      help="Block IO weight (relative device weight)")
    a("--device-read-bps", action="append", default=[], metavar="list",
      help="Limit read rate (bytes per second) from a device")
    a("--device-write-bps", action="append", default=[], metavar="list",
      help="Limit write rate (bytes per second) to a device")
    a("--device-read-iops", action="append", default=[], metavar="list",
      help="Limit read rate (IO per second) from a device")
    a("--device-write-iops", action="append", default=[], metavar="list",
      help="Limit write rate (IO per second) to a device")
    add_windows_resource_flags(p)
    a("--cpu-period", type=int, metavar="int", help="Limit CPU CFS period")
    a("--cpu-quota", type=int, metavar="int", help="Limit CPU CFS quota")
    a("--cpus", metavar="decimal", help="Number of CPUs")
    a("--cpuset-cpus", metavar="string", help="CPUs in which to allow execution (0-3, 0,1)")
    a("--cpuset-mems", metavar="string", help="MEMs in which to allow execution (0-3, 0,1)")
    a("--dns", action="append", default=[], metavar="list", help="Set custom DNS servers")
    a("--dns-search", action="append", default=[], metavar="list",
      help="Set custom DNS search domains")
    a("--dns-option", action="append", default=[], metavar="list", help="Set DNS options")
    a("--add-host", action="append", default=[], metavar="list",
      help="Add a custom host-to-IP mapping (host:ip)")
    a("--ip", metavar="string", help="IPv4 address (e.g., 172.30.100.104)")
    a("--ip6", metavar="string", help="IPv6 address (e.g., 2001:db8::33)")
    a("--mac-address", metavar="string", help="Container MAC address (e.g., 92:d0:c6:0a:29:33)")
    a("--network-alias", action="append", default=[], metavar="list",
      help="Add network-scoped alias for the container")
    a("-P", "--publish-all", action="store_true",
      help="Publish all exposed ports to random ports")
    a("--domainname", metavar="string", help="Container NIS domain name")
    a("--entrypoint", metavar="string", help="Overwrite the default ENTRYPOINT of the image")
    a("-e", "--env", action="append", default=[], metavar="list",
      help="Set environment variables")
    a("--env-file", action="append", default=[], metavar="list",
      help="Read in a file of environment variables")
    a("--expose", action="append", default=[], metavar="list",
      help="Expose a port or a range of ports")
    a("-h", "--hostname", metavar="string", help="Container host name")
    a("--init", action="store_true", default=None,
      help="Run an init inside the container that forwards signals and reaps processes")
    a("-i", "--interactive", action="store_true", help="Keep STDIN open even if not attached")
    a("--ipc", metavar="string", help="IPC mode to use")
    a("--isolation", metavar="string", help="Container isolation technology (process, hyperv)")
    a("-l", "--label", action="append", default=[], metavar="list",
      help="Set meta data on a container")
    a("--health-cmd", metavar="string", help="Command to run to check health")
    a("--health-interval", metavar="duration", help="Time between running the check (ms|s|m|h)")
    a("--health-timeout", metavar="duration",
      help="Maximum time to allow one check to run (ms|s|m|h)")
    a("--health-retries", type=int, metavar="int",
      help="Consecutive failures needed to report unhealthy")
    a("--health-start-period", metavar="duration",
      help="Start period for the container to initialize before counting retries")
    a("--no-healthcheck", action="store_true", help="Disable any container-specified HEALTHCHECK")
    a("--log-driver", metavar="string", help="Logging driver for the container")
    a("--log-opt", action="append", default=[], metavar="list", help="Log driver options")
    a("-m", "--memory", metavar="bytes", help="Memory limit")
    a("--memory-reservation", metavar="bytes", help="Memory soft limit")
    a("--memory-swap", metavar="bytes",
      help="Swap limit equal to memory plus swap: '-1' to enable unlimited swap")
    a("--mount", action="append", default=[], metavar="mount",
      help="Attach a filesystem mount to the container (type=bind|volume|tmpfs,src=,dst=,...)")
    a("--name", metavar="string", help="Assign a name to the container")
    a("--network", "--net", metavar="network", help="Connect a container to a network")
    a("--oom-kill-disable", action="store_true", default=None, help="Disable OOM Killer")
    a("-p", "--publish", action="append", default=[], metavar="list",
      help="Publish a container's port(s) to the host")
    a("--pid", metavar="string", help="PID namespace to use")
    a("--pids-limit", type=int, metavar="int", help="Tune container pids limit (-1 unlimited)")
    a("--platform", metavar="string", help="Set platform if server is multi-platform capable")
    a("--privileged", action="store_true", help="Give extended privileges to this container")
    a("--pull", metavar="string", default="missing",
      help='Pull image before running ("always", "missing", "never")')
    a("--read-only", action="store_true", help="Mount the container's root filesystem as read only")
    a("--restart", metavar="string", default="no", help="Restart policy to apply")
    a("--rm", action="store_true", help="Automatically remove the container when it exits")
    a("--security-opt", action="append", default=[], metavar="list", help="Security Options")
    a("--shm-size", metavar="bytes", help="Size of /dev/shm")
    a("--storage-opt", action="append", default=[], metavar="list",
      help="Storage driver options for the container (size=20G, sandbox=disk|dir)")
    a("--stop-signal", metavar="string", help="Signal to stop the container")
    a("--stop-timeout", type=int, metavar="int", help="Timeout (in seconds) to stop a container")
    a("--tmpfs", action="append", default=[], metavar="list", help="Mount a tmpfs directory")
    a("-t", "--tty", action="store_true", help="Allocate a pseudo-TTY")
    a("--ulimit", action="append", default=[], metavar="ulimit", help="Ulimit options")
    a("-u", "--user", metavar="string", help="Username or UID (format: <name|uid>[:<group|gid>])")
    a("--uts", metavar="string", help="UTS namespace to use")
    a("-v", "--volume", action="append", default=[], metavar="list", help="Bind mount a volume")
    a("-w", "--workdir", metavar="string", help="Working directory inside the container")
    a("image", metavar="IMAGE")
    a("command", nargs=argparse.REMAINDER, metavar="[COMMAND] [ARG...]")


def build_create_body(ns: argparse.Namespace, detach: bool = True,
                      console_size: tuple[int, int] | None = None,
                      environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The POST /containers/create body for ``ns`` (parsed ``run``/``create`` flags).

    ``detach`` is false for an attached ``run``: stdout/stderr (and stdin with ``-i``) are then
    attached, and StdinOnce closes the container's stdin when this client goes away.
    """
    env = _environment(ns, environ)

    labels: dict[str, str] = {}
    for item in ns.label:
        k, _, v = item.partition("=")
        if not k:
            raise OptError(f"invalid label: {item}")
        labels[k] = v

    attach = [s.lower() for s in ns.attach]
    for s in attach:
        if s not in ("stdin", "stdout", "stderr"):
            raise OptError(f"invalid argument \"{s}\" for \"-a, --attach\" flag: "
                           "valid streams are STDIN, STDOUT and STDERR")
    if detach:
        if attach:
            raise OptError("Conflicting options: -a and -d")
        a_in = a_out = a_err = False
    elif attach:
        a_in, a_out, a_err = "stdin" in attach, "stdout" in attach, "stderr" in attach
    else:
        a_in, a_out, a_err = ns.interactive, True, True
    if ns.interactive and not detach:
        a_in = True

    config: dict[str, Any] = {
        "Hostname": ns.hostname or "",
        "Domainname": ns.domainname or "",
        "User": ns.user or "",
        "AttachStdin": a_in,
        "AttachStdout": a_out,
        "AttachStderr": a_err,
        "Tty": ns.tty,
        "OpenStdin": ns.interactive,
        "StdinOnce": bool(ns.interactive and a_in and not detach),
        "Env": env,
        "Cmd": list(ns.command) if ns.command else None,
        "Image": ns.image,
        "WorkingDir": ns.workdir or "",
        "Labels": labels,
    }
    if ns.entrypoint is not None:
        config["Entrypoint"] = [ns.entrypoint] if ns.entrypoint else [""]
    if ns.stop_signal:
        config["StopSignal"] = ns.stop_signal
    if ns.stop_timeout is not None:
        config["StopTimeout"] = ns.stop_timeout
    health = _healthcheck(ns)
    if health is not None:
        config["Healthcheck"] = health

    hc: dict[str, Any] = {
        "AutoRemove": ns.rm,
        "Privileged": ns.privileged,
        "ReadonlyRootfs": ns.read_only,
        "NetworkMode": ns.network or "default",
    }
    if ns.memory:
        hc["Memory"] = _flag_value("-m, --memory", ns.memory, units.parse_bytes)
    if ns.memory_swap:
        hc["MemorySwap"] = _flag_value("--memory-swap", ns.memory_swap, units.parse_swap)
    if ns.memory_reservation:
        hc["MemoryReservation"] = _flag_value("--memory-reservation", ns.memory_reservation,
                                              units.parse_bytes)
    if ns.cpus:
        hc["NanoCpus"] = _flag_value("--cpus", ns.cpus, units.parse_cpus)
    if ns.cpu_shares is not None:
        hc["CpuShares"] = ns.cpu_shares
    if ns.cpu_period is not None:
        hc["CpuPeriod"] = ns.cpu_period
    if ns.cpu_quota is not None:
        hc["CpuQuota"] = ns.cpu_quota
    if ns.cpuset_cpus:
        hc["CpusetCpus"] = ns.cpuset_cpus
    if ns.cpuset_mems:
        hc["CpusetMems"] = ns.cpuset_mems
    if ns.pids_limit is not None:
        hc["PidsLimit"] = ns.pids_limit
    hc.update(blkio_flags(ns))
    hc.update(windows_resources(ns))
    if ns.shm_size:
        hc["ShmSize"] = _flag_value("--shm-size", ns.shm_size, units.parse_bytes)
    if ns.oom_kill_disable:
        hc["OomKillDisable"] = True
    if ns.cap_add:
        hc["CapAdd"] = list(ns.cap_add)
    if ns.cap_drop:
        hc["CapDrop"] = list(ns.cap_drop)
    if ns.security_opt:
        hc["SecurityOpt"] = parse_security_opts(ns.security_opt)
    if ns.ulimit:
        hc["Ulimits"] = [parse_ulimit(u) for u in ns.ulimit]
    if ns.init:
        hc["Init"] = True
    if ns.isolation:
        hc["Isolation"] = ns.isolation
    if ns.dns:
        hc["Dns"] = list(ns.dns)
    if ns.dns_search:
        hc["DnsSearch"] = list(ns.dns_search)
    if ns.dns_option:
        hc["DnsOptions"] = list(ns.dns_option)
    for item in ns.add_host:
        host, sep, addr = item.partition(":")
        if not sep or not host or not addr:
            raise OptError(f'invalid argument "{item}" for "--add-host" flag: bad format for '
                           "add-host: " + repr(item))
    if ns.add_host:
        hc["ExtraHosts"] = list(ns.add_host)
    if ns.publish_all:
        hc["PublishAllPorts"] = True
    for key, val in (("IpcMode", ns.ipc), ("PidMode", ns.pid), ("UTSMode", ns.uts)):
        if val:
            hc[key] = val
    if ns.log_driver or ns.log_opt:
        hc["LogConfig"] = {"Type": ns.log_driver or "",
                           "Config": dict(o.partition("=")[::2] for o in ns.log_opt)}
    restart = parse_restart(ns.restart or "no")
    if restart["Name"]:
        if ns.rm:
            raise OptError("Conflicting options: --restart and --rm")
        hc["RestartPolicy"] = restart
    if ns.tmpfs:
        tmpfs: dict[str, str] = {}
        for t in ns.tmpfs:
            path, _, options = t.partition(":")
            tmpfs[path] = options
        hc["Tmpfs"] = tmpfs
    binds: list[str] = []
    volumes: dict[str, dict[str, Any]] = {}
    for v in ns.volume:
        if ":" in v:
            binds.append(v)
        else:
            volumes[v] = {}
    if binds:
        hc["Binds"] = binds
    if ns.mount:
        from silobox.cli.commands.volume import parse_mount_flag
        hc["Mounts"] = [parse_mount_flag(m) for m in ns.mount]
    if ns.storage_opt:
        hc["StorageOpt"] = dict(o.partition("=")[::2] for o in ns.storage_opt)
    if volumes:
        config["Volumes"] = volumes
    exposed: dict[str, dict[str, Any]] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for pub in ns.publish:
        for port, binding in parse_publish(pub):
            exposed[port] = {}
            bindings.setdefault(port, []).append(binding)
    for e in ns.expose:
        port, _, proto = e.partition("/")
        lo, _, hi = port.partition("-")
        for n in range(int(lo), int(hi or lo) + 1):
            exposed[f"{n}/{proto or 'tcp'}"] = {}
    if exposed:
        config["ExposedPorts"] = exposed
    if bindings:
        hc["PortBindings"] = bindings
    if console_size and ns.tty:
        hc["ConsoleSize"] = [console_size[0], console_size[1]]
    config["HostConfig"] = hc
    endpoint: dict[str, Any] = {}
    if ns.ip:
        endpoint["IPAMConfig"] = {"IPv4Address": ns.ip}
    if ns.ip6:
        endpoint.setdefault("IPAMConfig", {})["IPv6Address"] = ns.ip6
    if ns.mac_address:
        endpoint["MacAddress"] = ns.mac_address
        config["MacAddress"] = ns.mac_address
    if ns.network_alias:
        endpoint["Aliases"] = list(ns.network_alias)
    if endpoint:
        net = ns.network or "default"
        if net in ("default", "bridge", "none", "host"):
            raise OptError("user specified IP address or aliases are supported only on "
                           "user defined networks" if (ns.ip or ns.ip6 or ns.network_alias)
                           else "a MAC address needs a network to apply to")
        config["NetworkingConfig"] = {"EndpointsConfig": {net: endpoint}}
    else:
        config["NetworkingConfig"] = {"EndpointsConfig": {}}
    return config


def _environment(ns: argparse.Namespace, environ: dict[str, str] | None) -> list[str]:
    """``--env-file`` entries first, then ``-e``, as docker merges them."""
    env: list[str] = []
    for path in ns.env_file:
        env.extend(read_env_file(path, environ))
    for item in ns.env:
        v = env_value(item, environ)
        if v is not None:
            env.append(v)
    return env


def build_exec_body(ns: argparse.Namespace, environ: dict[str, str] | None = None
                    ) -> dict[str, Any]:
    """The POST /containers/{id}/exec body for parsed ``exec`` flags."""
    env = _environment(ns, environ)
    body: dict[str, Any] = {
        "User": ns.user or "",
        "Privileged": ns.privileged,
        "Tty": ns.tty,
        "AttachStdin": bool(ns.interactive and not ns.detach),
        "AttachStdout": not ns.detach,
        "AttachStderr": not ns.detach,
        "Env": env,
        "WorkingDir": ns.workdir or "",
        "Cmd": list(ns.command),
    }
    if ns.detach_keys:
        body["DetachKeys"] = ns.detach_keys
    return body


def start_error_status(message: str) -> int:
    """docker's exit status for a failed start: 127 not found, 126 cannot invoke, else 125."""
    if ("executable file not found" in message or "no such file or directory" in message
            or "system cannot find the file specified" in message):
        return 127
    if "permission denied" in message or "is a directory" in message \
            or "cannot execute" in message:
        return 126
    return 125
