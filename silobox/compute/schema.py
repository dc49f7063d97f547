"""HCS schema v2 documents, as the compute service accepts them.

A compute system is described by a JSON document shaped like HCS's ``ComputeSystem`` (schema
2.1): ``Owner``, ``SchemaVersion``, ``Container.{GuestOs, Storage, MappedDirectories, Memory,
Processor, Networking}``. What Linux needs beyond HCS's vocabulary (capabilities, seccomp, masked
paths, exact cgroup limits) travels in a ``Container.Linux`` block, the way hcsshim carries an OCI
spec for Linux containers. Processes are described by ``ProcessParameters``.

Parsing is strict: a malformed document is an ``InvalidArgument`` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from silobox.errors import InvalidArgument


def _get(d: dict, key: str, kind: type | tuple[type, ...], default: Any = None,
         where: str = "") -> Any:
    v = d.get(key, default)
    if v is None:
        return default
    if kind is int and isinstance(v, bool):
        raise InvalidArgument(f"{where}{key}: expected an integer")
    if not isinstance(v, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InvalidArgument(f"{where}{key}: expected {names}, got {type(v).__name__}")
    return v


@dataclass
class Layer:
    id: str
    path: str


@dataclass
class MappedDirectory:
    host_path: str
    container_path: str
    read_only: bool = False
    propagation: str = ""     # a bind's propagation in Docker's words (rprivate when empty)


@dataclass
class LinuxSettings:
    """silobox's ``Container.Linux`` block: the Linux half of a process-isolated container."""

    resources: dict[str, Any] = field(default_factory=dict)   # JobLimits fields
    capabilities: list[str] | None = None                      # None: Docker's default set
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    seccomp: dict | None = None                                 # None: default profile
    seccomp_unconfined: bool = False
    no_new_privileges: bool = False
    masked_paths: list[str] | None = None
    readonly_paths: list[str] | None = None
    readonly_rootfs: bool = False
    privileged: bool = False
    rlimits: list[dict] = field(default_factory=list)          # [{"Name", "Soft", "Hard"}]
    domainname: str = ""
    shm_size: int = 64 * 1024 * 1024
    namespaces: list[str] = field(default_factory=lambda: ["mnt", "uts", "ipc", "net", "cgroup"])
    tmpfs: list[dict] = field(default_factory=list)            # [{"ContainerPath", "Options"}]
    sysctls: dict[str, str] = field(default_factory=dict)      # namespaced kernel parameters
    group_add: list[str] = field(default_factory=list)         # --group-add: names or gids
    oom_score_adj: int | None = None                            # every process of the container
    devices: list[dict] = field(default_factory=list)           # host nodes made in the silo
    host_pid: bool = False                                      # no PID namespace of its own
    join_namespaces: dict[str, str] = field(default_factory=dict)  # {"ipc"|"pid"|"uts": path}
    device_rules: list[dict] = field(default_factory=list)      # extra job object device rules
    cgroup_parent: str = ""                                     # the job object's parent group


@dataclass
class ContainerDocument:
    owner: str
    hostname: str
    layers: list[Layer]
    sandbox_path: str
    mapped_directories: list[MappedDirectory]
    network_namespace: str | None
    linux: LinuxSettings
    raw: dict
    processor: dict = field(default_factory=dict)
    """HCS ``Container.Processor``: ``Count`` (CPUs), ``Maximum`` (share of the whole host in
    hundredths of a percent, 1–10000), ``Weight``."""
    storage_qos: dict = field(default_factory=dict)
    """HCS ``Container.Storage.QoS``: ``IopsMaximum``, ``BandwidthMaximum`` (bytes/s) of the
    container's sandbox disk."""

    def to_json(self) -> dict:
        return self.raw


def parse_document(doc: Any) -> ContainerDocument:
    """Validate a ComputeSystem document for a process-isolated container."""
    if not isinstance(doc, dict):
        raise InvalidArgument("compute system document must be a JSON object")
    sv = _get(doc, "SchemaVersion", dict, {})
    if sv and (sv.get("Major"), sv.get("Minor", 0)) < (2, 0):
        raise InvalidArgument("SchemaVersion: only schema 2.x documents are accepted")
    c = _get(doc, "Container", dict)
    if c is None:
        raise InvalidArgument("Container: required for a process-isolated compute system")
    guest = _get(c, "GuestOs", dict, {}, "Container.")
    storage = _get(c, "Storage", dict, {}, "Container.")
    layers = []
    for i, l in enumerate(_get(storage, "Layers", list, [], "Container.Storage.")):
        if not isinstance(l, dict) or not isinstance(l.get("Path"), str):
            raise InvalidArgument(f"Container.Storage.Layers[{i}].Path: expected a string")
        layers.append(Layer(str(l.get("Id", "")), l["Path"]))
    maps = []
    for i, m in enumerate(_get(c, "MappedDirectories", list, [], "Container.")):
        if not isinstance(m, dict) or not isinstance(m.get("HostPath"), str) \
                or not isinstance(m.get("ContainerPath"), str):
            raise InvalidArgument(f"Container.MappedDirectories[{i}]: HostPath and ContainerPath "
                                  "must be strings")
        if not m["ContainerPath"].startswith("/"):
            raise InvalidArgument(f"Container.MappedDirectories[{i}].ContainerPath: must be an "
                                  "absolute path")
        prop = m.get("Propagation") or ""
        if prop not in ("", "private", "rprivate", "slave", "rslave", "shared", "rshared"):
            raise InvalidArgument(f"Container.MappedDirectories[{i}].Propagation: {prop!r} is "
                                  "not one of private, rprivate, slave, rslave, shared, rshared")
        maps.append(MappedDirectory(m["HostPath"], m["ContainerPath"], bool(m.get("ReadOnly")),
                                    prop))
    net = _get(c, "Networking", dict, {}, "Container.")
    lx = _get(c, "Linux", dict, {}, "Container.")
    w = "Container.Linux."
    linux = LinuxSettings(
        resources=_get(lx, "Resources", dict, {}, w),
        capabilities=_get(lx, "Capabilities", list, None, w),
        cap_add=_get(lx, "CapAdd", list, [], w),
        cap_drop=_get(lx, "CapDrop", list, [], w),
        seccomp=_get(lx, "Seccomp", dict, None, w),
        seccomp_unconfined=_get(lx, "SeccompUnconfined", bool, False, w),
        no_new_privileges=_get(lx, "NoNewPrivileges", bool, False, w),
        masked_paths=_get(lx, "MaskedPaths", list, None, w),
        readonly_paths=_get(lx, "ReadonlyPaths", list, None, w),
        readonly_rootfs=_get(lx, "ReadonlyRootfs", bool, False, w),
        privileged=_get(lx, "Privileged", bool, False, w),
        rlimits=_get(lx, "Rlimits", list, [], w),
        domainname=_get(lx, "Domainname", str, "", w),
        shm_size=_get(lx, "ShmSize", int, 64 * 1024 * 1024, w),
        namespaces=_get(lx, "Namespaces", list, ["mnt", "uts", "ipc", "net", "cgroup"], w),
        tmpfs=_get(lx, "Tmpfs", list, [], w),
        sysctls=_get(lx, "Sysctls", dict, {}, w),
        group_add=_get(lx, "GroupAdd", list, [], w),
        oom_score_adj=_get(lx, "OomScoreAdj", int, None, w),
        devices=_get(lx, "Devices", list, [], w),
        device_rules=_get(lx, "DeviceCgroupRules", list, [], w),
        host_pid=_get(lx, "HostPid", bool, False, w),
        join_namespaces=_get(lx, "JoinNamespaces", dict, {}, w),
        cgroup_parent=_get(lx, "CgroupParent", str, "", w),
    )
    if linux.cgroup_parent:
        from silobox.kernel.jobobject import check_component_path
        linux.cgroup_parent = check_component_path(linux.cgroup_parent, f"{w}CgroupParent")
    if not all(k in ("ipc", "pid", "uts") and isinstance(v, str) and v.startswith("/proc/")
               for k, v in linux.join_namespaces.items()):
        raise InvalidArgument(f"{w}JoinNamespaces: only ipc, pid and uts, as /proc/<pid>/ns "
                              "paths")
    for i, d in enumerate(linux.devices):
        if not isinstance(d, dict) or not isinstance(d.get("Path"), str) \
                or not d["Path"].startswith("/") or d.get("Type") not in ("c", "b") \
                or not all(isinstance(d.get(k), int) for k in ("Major", "Minor", "FileMode",
                                                                "Uid", "Gid")) \
                or not isinstance(d.get("HostPath"), str) or not isinstance(d.get("Access"), str):
            raise InvalidArgument(f"{w}Devices[{i}]: Path, HostPath, Type (c or b), Major, Minor, "
                                  "FileMode, Uid, Gid and Access are required")
    for i, r in enumerate(linux.device_rules):
        if not isinstance(r, dict) or r.get("Type") not in ("a", "b", "c") \
                or not isinstance(r.get("Access"), str):
            raise InvalidArgument(f"{w}DeviceCgroupRules[{i}]: Type and Access are required")
    if not all(isinstance(g, str) and g for g in linux.group_add):
        raise InvalidArgument(f"{w}GroupAdd: expected a list of group names or ids")
    if linux.oom_score_adj is not None and not -1000 <= linux.oom_score_adj <= 1000:
        raise InvalidArgument(f"{w}OomScoreAdj: {linux.oom_score_adj} is outside -1000..1000")
    if not all(isinstance(k, str) and isinstance(v, str) and k and "/" not in k
               and ".." not in k for k, v in linux.sysctls.items()):
        raise InvalidArgument(f"{w}Sysctls: expected an object of dotted names to strings")
    for i, t in enumerate(linux.tmpfs):
        if not isinstance(t, dict) or not isinstance(t.get("ContainerPath"), str) \
                or not t["ContainerPath"].startswith("/") \
                or not isinstance(t.get("Options", ""), str):
            raise InvalidArgument(f"{w}Tmpfs[{i}]: ContainerPath must be an absolute path and "
                                  "Options a string")
    processor = _get(c, "Processor", dict, {}, "Container.")
    for key, top in (("Count", 1 << 16), ("Maximum", 10000), ("Weight", 10000)):
        v = _get(processor, key, int, 0, "Container.Processor.")
        if not 0 <= v <= top:
            raise InvalidArgument(f"Container.Processor.{key}: {v} is outside 0..{top}")
    qos = _get(storage, "QoS", dict, {}, "Container.Storage.")
    for key in ("IopsMaximum", "BandwidthMaximum"):
        if _get(qos, key, int, 0, "Container.Storage.QoS.") < 0:
            raise InvalidArgument(f"Container.Storage.QoS.{key}: must not be negative")
    return ContainerDocument(
        owner=_get(doc, "Owner", str, "silod"),
        processor=processor, storage_qos=qos,
        hostname=_get(guest, "HostName", str, "", "Container.GuestOs."),
        layers=layers,
        sandbox_path=_get(storage, "Path", str, "", "Container.Storage."),
        mapped_directories=maps,
        network_namespace=_get(net, "Namespace", str, None, "Container.Networking."),
        linux=linux,
        raw=doc,
    )


@dataclass
class ProcessParameters:
    """HCS ``ProcessParameters``, with ``CommandArgs`` (argv) as the primary form."""

    command_args: list[str]
    working_directory: str = "/"
    environment: dict[str, str] = field(default_factory=dict)
    user: str = ""
    emulate_console: bool = False
    create_stdin_pipe: bool = False
    create_stdout_pipe: bool = True
    create_stderr_pipe: bool = True
    console_size: tuple[int, int] | None = None
    stdin_once: bool = False

    @property
    def command_line(self) -> str:
        import shlex
        return shlex.join(self.command_args)

    @classmethod
    def from_json(cls, d: Any) -> "ProcessParameters":
        if not isinstance(d, dict):
            raise InvalidArgument("ProcessParameters must be a JSON object")
        args = d.get("CommandArgs")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            raise InvalidArgument("ProcessParameters.CommandArgs: a non-empty list of strings "
                                  "is required")
        env = d.get("Environment") or {}
        if not isinstance(env, dict):
            raise InvalidArgument("ProcessParameters.Environment: expected an object")
        size = d.get("ConsoleSize")
        return cls(
            command_args=list(args),
            working_directory=d.get("WorkingDirectory") or "/",
            environment={str(k): str(v) for k, v in env.items()},
            user=d.get("User") or "",
            emulate_console=bool(d.get("EmulateConsole")),
            create_stdin_pipe=bool(d.get("CreateStdInPipe")),
            create_stdout_pipe=bool(d.get("CreateStdOutPipe", True)),
            create_stderr_pipe=bool(d.get("CreateStdErrPipe", True)),
            console_size=(int(size[0]), int(size[1])) if size else None,
            stdin_once=bool(d.get("StdinOnce")),
        )

    def to_json(self) -> dict:
        return {"CommandArgs": self.command_args, "CommandLine": self.command_line,
                "WorkingDirectory": self.working_directory, "Environment": self.environment,
                "User": self.user, "EmulateConsole": self.emulate_console,
                "CreateStdInPipe": self.create_stdin_pipe,
                "CreateStdOutPipe": self.create_stdout_pipe,
                "CreateStdErrPipe": self.create_stderr_pipe,
                "ConsoleSize": list(self.console_size) if self.console_size else None}
