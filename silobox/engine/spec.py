"""Docker's container create body → validated settings and an HCS compute-system document.

This is the engine's translation step (moby's ``daemon/oci_windows.go`` on Windows): every
option of ``POST /containers/create`` is checked here, once, with Docker's error messages, and
turned into the JSON document the compute service consumes.
"""

from __future__ import annotations

import json
import os
import re
import signal as _signal
from typing import Any

from silobox.errors import InvalidArgument
from silobox.storage.mounts import PROPAGATIONS, bind_propagation, check_propagation

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidArgument(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                              "are allowed")
    return name.lstrip("/")


def runs_here(platform: str) -> bool:
    """Whether ``os[/arch[/variant]]`` names this host's platform (no emulation here)."""
    from silobox.storage.images import host_architecture
    os_name, _, arch = platform.lower().partition("/")
    return os_name == "linux" and (not arch or arch.split("/")[0] == host_architecture())


def parse_signal(value: str | int | None, default: int = _signal.SIGTERM) -> int:
    """Docker accepts SIGTERM, TERM and 15."""
    if value is None or value == "":
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        num = value
    else:
        s = str(value).strip().upper()
        if s.isdigit():
            num = int(s) if len(s) <= 3 else 0   # no signal has more digits
        else:
            name = s if s.startswith("SIG") else "SIG" + s
            try:
                num = int(getattr(_signal.Signals, name))
            except AttributeError:
                raise InvalidArgument(f"Invalid signal: {value}") from None
    if not 0 < num < 65:
        raise InvalidArgument(f"Invalid signal: {value}")
    return num


def check_create_body(body: Any) -> dict:
    """What the engine itself requires of a create body. Its JSON types are checked once, where
    the body is decoded (``api/routers/containers.py:CREATE_BODY``); the engine's own callers
    (the builder's RUN containers) build well-typed bodies."""
    if not isinstance(body, dict):
        raise InvalidArgument("invalid JSON: the container config must be an object")
    if not body.get("Image"):
        raise InvalidArgument("config: image name is required")
    return body


def parse_security_opts(opts: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"seccomp": None, "seccomp_unconfined": False, "no_new_privileges": False}
    for opt in opts or []:
        if opt in ("no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"):
            out["no_new_privileges"] = True
            continue
        if opt in ("no-new-privileges:false", "no-new-privileges=false"):
            continue
        key, sep, value = opt.partition("=")
        if not sep:
            key, sep, value = opt.partition(":")
        if key == "seccomp" and sep:
            if value == "unconfined":
                out["seccomp_unconfined"] = True
            elif value in ("builtin", ""):
                pass
            else:
                from silobox.kernel.sandbox import seccomp
                out["seccomp"] = seccomp.load_profile(value)
            continue
        if key in ("label", "apparmor") and sep:
            if value in ("disable", "unconfined"):
                continue
            raise InvalidArgument(f"Invalid --security-opt: {key} profiles are not available on "
                                  "this host")
        raise InvalidArgument(f'Invalid --security-opt: "{opt}"')
    return out


def _available_cpus() -> set[int]:
    return set(os.sched_getaffinity(0))


def _available_mems() -> set[int]:
    """The host's online memory nodes (node 0 alone on a machine without NUMA)."""
    try:
        with open("/sys/devices/system/node/online") as f:
            text = f.read().strip()
    except OSError:
        return {0}
    nodes: set[int] = set()
    for lo, hi in _cpuset_ranges(text, "cpuset mems") if text else []:
        nodes.update(range(lo, hi + 1))
    return nodes or {0}


_CPUSET_PART = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9}))?")


def _cpuset_ranges(spec: str, what: str) -> list[tuple[int, int]]:
    """``"0-2,5"`` → ``[(0, 2), (5, 5)]``: the list as written, never expanded, so a request for
    ``"0-99999999999"`` costs nothing before it is refused."""
    ranges = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        match = _CPUSET_PART.fullmatch(part)
        if match is None:
            raise InvalidArgument(f"Invalid value {_cut(spec)} for {what}")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if lo > hi:
            raise InvalidArgument(f"Invalid value {_cut(spec)} for {what}")
        ranges.append((lo, hi))
    return ranges


def check_cpuset(spec: str, available: set[int], what: str, noun: str) -> None:
    """Refuse a CPU or memory-node list that names anything the host does not have. Ranges are
    compared by their ends first, so no set larger than the host's is ever built."""
    top = max(available)
    for lo, hi in _cpuset_ranges(spec, what):
        if hi > top or not set(range(lo, hi + 1)) <= available:
            raise InvalidArgument(f"Requested {noun} are not available - requested "
                                  f"{_cut(spec)}, available: {_ranges_text(available)}")


def _ranges_text(values: set[int]) -> str:
    """``{0, 1, 2, 5}`` → ``"0-2,5"``."""
    out: list[str] = []
    run: list[int] = []
    for v in sorted(values):
        if run and v == run[-1] + 1:
            run.append(v)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [v]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def _cut(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def resources_from_hostconfig(hc: dict) -> dict[str, Any]:
    """HostConfig's resource fields → JobLimits fields, with Docker's range checks."""
    res: dict[str, Any] = {}
    mem = hc.get("Memory") or 0
    if mem:
        if mem < 6 * 1024 * 1024:
            raise InvalidArgument("Minimum memory limit allowed is 6MB")
        res["memory"] = mem
    swap = hc.get("MemorySwap") or 0
    if swap:
        if swap != -1 and not mem:
            raise InvalidArgument("You should always set the Memory limit when using Memoryswap "
                                  "limit, see usage")
        if swap != -1 and swap < mem:
            raise InvalidArgument("Minimum memoryswap limit should be larger than memory limit, "
                                  "see usage")
        res["memory_swap"] = swap
    elif mem:
        res["memory_swap"] = 2 * mem
    if hc.get("MemoryReservation"):
        res["memory_reservation"] = hc["MemoryReservation"]
    ncpu = os.cpu_count() or 1
    if hc.get("NanoCpus"):
        if hc.get("CpuQuota") or hc.get("CpuPeriod"):
            raise InvalidArgument("Conflicting options: Nano CPUs and CPU Period cannot both be set")
        n = hc["NanoCpus"]
        if n < 10**7 or n > ncpu * 10**9:
            raise InvalidArgument(f"Range of CPUs is from 0.01 to {ncpu:.2f}, as there are only "
                                  f"{ncpu} CPUs available")
        res["cpu_period"] = 100000
        res["cpu_quota"] = n * 100000 // 10**9
    else:
        if hc.get("CpuPeriod"):
            if not 1000 <= hc["CpuPeriod"] <= 1000000:
                raise InvalidArgument("CPU cfs period can not be less than 1ms (i.e. 1000) or "
                                      "larger than 1s (i.e. 1000000)")
            res["cpu_period"] = hc["CpuPeriod"]
        if hc.get("CpuQuota"):
            if 0 < hc["CpuQuota"] < 1000:
                raise InvalidArgument("CPU cfs quota can not be less than 1ms (i.e. 1000)")
            res["cpu_quota"] = hc["CpuQuota"]
    if hc.get("CpuShares"):
        if hc["CpuShares"] < 0:
            raise InvalidArgument("invalid CPU shares: must be positive")
        res["cpu_shares"] = max(2, hc["CpuShares"])
    if hc.get("CpusetCpus"):
        check_cpuset(hc["CpusetCpus"], _available_cpus(), "cpuset cpus", "CPUs")
        res["cpuset_cpus"] = hc["CpusetCpus"]
    if hc.get("CpusetMems"):
        check_cpuset(hc["CpusetMems"], _available_mems(), "cpuset mems", "memory nodes")
        res["cpuset_mems"] = hc["CpusetMems"]
    pids = hc.get("PidsLimit")
    if pids is not None and pids > 0:
        res["pids_limit"] = pids
    res.update(blkio_from_hostconfig(hc))
    return res


_THROTTLE_FIELDS = (("BlkioDeviceReadBps", "blkio_read_bps"),
                    ("BlkioDeviceWriteBps", "blkio_write_bps"),
                    ("BlkioDeviceReadIOps", "blkio_read_iops"),
                    ("BlkioDeviceWriteIOps", "blkio_write_iops"))


def block_device(path: Any, field: str) -> tuple[int, int]:
    """major, minor of the host block device at ``path`` (as dockerd stats it)."""
    import stat
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgument(f"invalid {field}: {path!r} is not an absolute device path")
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidArgument(f"invalid {field}: stat {path}: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise InvalidArgument(f"invalid {field}: {path} is not a block device")
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def blkio_from_hostconfig(hc: dict) -> dict[str, Any]:
    """``BlkioWeight``, ``BlkioWeightDevice`` and the ``BlkioDevice*`` throttles → JobLimits
    fields, devices resolved to major:minor (fields the host lacks were dropped before)."""
    res: dict[str, Any] = {}
    weight = hc.get("BlkioWeight") or 0
    if weight:
        if not isinstance(weight, int) or not 10 <= weight <= 1000:
            raise InvalidArgument("Range of blkio weight is from 10 to 1000")
        res["blkio_weight"] = weight
    entries = []
    for d in hc.get("BlkioWeightDevice") or []:
        w = d.get("Weight") if isinstance(d, dict) else None
        if not isinstance(w, int) or not 10 <= w <= 1000:
            raise InvalidArgument("invalid BlkioWeightDevice: Range of blkio weight is from 10 "
                                  "to 1000")
        entries.append([*block_device(d.get("Path"), "BlkioWeightDevice"), w])
    if entries:
        res["blkio_weight_device"] = entries
    for field, key in _THROTTLE_FIELDS:
        entries = []
        for d in hc.get(field) or []:
            rate = d.get("Rate") if isinstance(d, dict) else None
            if not isinstance(rate, int) or isinstance(rate, bool) or rate < 0:
                raise InvalidArgument(f"invalid {field}: Rate must be a non-negative integer")
            entries.append([*block_device(d.get("Path"), field), rate])
        if entries:
            res[key] = entries
    return res


def parse_ulimits(items: list[Any]) -> list[dict[str, Any]]:
    from silobox.kernel.sandbox import rlimits
    out = []
    parsed = []
    for u in items or []:
        if not isinstance(u, dict) or not isinstance(u.get("Name"), str):
            raise InvalidArgument("Ulimits: each entry needs Name, Soft and Hard")
        ul = rlimits.parse_ulimit(f"{u['Name']}={int(u.get('Soft', 0))}:{int(u.get('Hard', 0))}")
        parsed.append(ul)
        out.append({"Name": ul.name, "Soft": ul.soft, "Hard": ul.hard})
    rlimits.check_ulimits(parsed)
    return out


def parse_binds(binds: list[str] | None) -> list[dict[str, Any]]:
    """``-v /host:/ctr[:ro|rw]`` → mount records; host directories are created as Docker does."""
    out = []
    for b in binds or []:
        parts = b.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise InvalidArgument(f"invalid volume specification: '{b}'")
        src, dst = parts[0], parts[1]
        mode = parts[2] if len(parts) == 3 else ""
        if not src.startswith("/"):
            continue   # NAME:/path is a named volume: the volume service's (engine/storageops)
        if not dst.startswith("/") or dst == "/":
            raise InvalidArgument(f"invalid volume specification: '{b}': mount path must be "
                                  "absolute and not /")
        opts = [o for o in mode.split(",") if o]
        if any(o not in ("ro", "rw", "z", "Z", *PROPAGATIONS) for o in opts):
            raise InvalidArgument(f"invalid mode: {mode}")
        propagation = bind_propagation(opts)
        if not os.path.exists(src):
            os.makedirs(src, 0o755, exist_ok=True)
        check_propagation(src, propagation)
        out.append({"Type": "bind", "Source": src, "Destination": dst, "Mode": mode,
                    "RW": "ro" not in opts, "Propagation": propagation})
    return out


LOG_OPTS = ("max-size", "max-file", "compress", "labels", "labels-regex", "env", "env-regex",
            "tag")
"""The json-file driver's options (dockerd's ``jsonfilelog.ValidateLogOpt``)."""

DOCKER_LOG_DRIVERS = ("local", "syslog", "journald", "gelf", "fluentd", "awslogs", "splunk",
                      "etwlogs", "gcplogs", "logentries")
"""Drivers dockerd has built in that silobox does not write: refused by name, not as plugins."""


def parse_log_config(lc: Any) -> dict[str, Any]:
    """HostConfig.LogConfig: the json-file driver (the shim writes it) and its rotation.

    The words are dockerd's (``logger.ValidateLogOpts``, then the driver's own checks). Values
    dockerd only rejects when the container starts (a 500 there) are client errors found here.
    """
    if lc is None:
        lc = {}
    if not isinstance(lc, dict):
        raise InvalidArgument("LogConfig: expected an object")
    kind = lc.get("Type") or "json-file"
    cfg = lc.get("Config") or {}
    if not isinstance(cfg, dict) or not all(isinstance(v, str) for v in cfg.values()):
        raise InvalidArgument("LogConfig.Config: expected an object of strings")
    if kind == "none":   # dockerd validates nothing for it
        return {"Type": kind, "Config": dict(cfg)}
    if kind in DOCKER_LOG_DRIVERS:
        raise InvalidArgument(f'logging driver "{kind}" is not supported by silobox: '
                              "use json-file or none")
    if kind != "json-file":
        raise InvalidArgument(f'error looking up logging plugin {kind}: plugin "{kind}" '
                              "not found")
    mode = cfg.get("mode", "")
    if mode not in ("", "blocking", "non-blocking"):
        raise InvalidArgument(f"logger: logging mode not supported: {mode}")
    if "max-buffer-size" in cfg:
        if mode != "non-blocking":
            raise InvalidArgument("logger: max-buffer-size option is only supported with "
                                  "'mode=non-blocking'")
        if not re.fullmatch(r"\s*\d+(\.\d+)?\s*([kmgtp]i?b?|b)?\s*", cfg["max-buffer-size"],
                            re.IGNORECASE):
            raise InvalidArgument("error parsing option max-buffer-size: invalid size: "
                                  f"'{cfg['max-buffer-size']}'")
    for key in cfg:
        if key not in LOG_OPTS and key not in ("mode", "max-buffer-size"):
            raise InvalidArgument(f"unknown log opt '{key}' for {kind} log driver")
    if "max-size" in cfg:
        log_max_size(cfg)
    if "max-file" in cfg:
        raw = cfg["max-file"]
        if not re.fullmatch(r"[+-]?[0-9]+", raw):
            raise InvalidArgument(f'strconv.Atoi: parsing "{raw[:64]}": invalid syntax')
        if len(raw.lstrip("+-")) > 18:   # past int64, as Go's Atoi refuses it
            raise InvalidArgument(f'strconv.Atoi: parsing "{raw[:64]}": value out of range')
        if int(raw) < 1:
            raise InvalidArgument("max-file cannot be less than 1")
    if "compress" in cfg and cfg["compress"] not in (
            "1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"):
        raise InvalidArgument(f'strconv.ParseBool: parsing "{cfg["compress"]}": invalid syntax')
    return {"Type": kind, "Config": dict(cfg)}


def log_max_size(cfg: dict[str, str]) -> int:
    """``max-size`` in bytes (Docker's units: 10k, 10m, 1g); 0 = no rotation."""
    raw = (cfg.get("max-size") or "").strip().lower()
    if not raw or raw == "-1":
        return 0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", raw)
    if not m:
        raise InvalidArgument(f"invalid size: '{cfg.get('max-size', '')[:64]}'")
    number = float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " ")
    if number >= 2**63:
        raise InvalidArgument(f"invalid size: '{cfg.get('max-size', '')[:64]}'")
    size = int(number)
    if size <= 0:
        raise InvalidArgument("max-size must be a positive number")
    return size


RESTART_POLICIES = ("", "no", "always", "unless-stopped", "on-failure")


def parse_restart_policy(rp: Any, auto_remove: bool) -> dict[str, Any]:
    """HostConfig.RestartPolicy with Docker's checks."""
    if rp is None:
        rp = {}
    if not isinstance(rp, dict):
        raise InvalidArgument("RestartPolicy: expected an object")
    name = rp.get("Name") or "no"
    count = rp.get("MaximumRetryCount") or 0
    if name not in RESTART_POLICIES:
        raise InvalidArgument(f"invalid restart policy: unknown policy '{name}'; use one of "
                              "'no', 'always', 'on-failure', or 'unless-stopped'")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise InvalidArgument("invalid restart policy: maximum retry count cannot be negative")
    if count and name != "on-failure":
        raise InvalidArgument("invalid restart policy: maximum retry count can only be used "
                              "with 'on-failure'")
    if auto_remove and name != "no":
        raise InvalidArgument("conflicting options: cannot specify both --restart and --rm")
    return {"Name": name, "MaximumRetryCount": count}


def merge_env(image_env: list[str], env: list[str]) -> list[str]:
    merged: dict[str, str] = {}
    order: list[str] = []
    for item in list(image_env or []) + list(env or []):
        k, _, _v = item.partition("=")
        if k not in merged:
            order.append(k)
        merged[k] = item
    return [merged[k] for k in order]


def command_of(body: dict, image_config: dict) -> tuple[list[str], list[str]]:
    """(Entrypoint, Cmd) with Docker's rules: --entrypoint resets the image's Cmd."""
    entry = body.get("Entrypoint")
    cmd = body.get("Cmd")
    if isinstance(entry, str):
        entry = [entry]
    if isinstance(cmd, str):
        cmd = [cmd]
    if entry is not None:
        if entry == [""]:
            entry = []
        if cmd is None:
            cmd = []
    else:
        entry = list(image_config.get("Entrypoint") or [])
        if cmd is None:
            cmd = list(image_config.get("Cmd") or [])
    return list(entry), list(cmd)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
