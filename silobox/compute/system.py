"""Compute systems and their processes: the Host Compute Service (HCS) on Linux.

A ``ComputeSystem`` is one process-isolated container: a job object (cgroup), a silo
(namespaces + root filesystem) and a shim that holds its first process. The verbs are HCS's:
create, start, pause, resume, shutdown (the stop signal, then terminate after the timeout),
terminate, properties, modify, create process, wait. Every verb checks :data:`VERBS`, the state
machine (Created → Running ⇄ Paused → Stopped, and Stopped → Running again), before acting.

The daemon side only: documents are translated to plain specs here (the part hcsshim calls
``hcsoci``) and handed to the spawner; nothing here forks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal as _signal
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Awaitable, Callable

from silobox.errors import (AlreadyExists, Conflict, InvalidArgument, NotFound, NotModified,
                            NotRunning, SiloboxError, SystemFailure)
from silobox.compute.schema import ContainerDocument, ProcessParameters, parse_document
from silobox.compute.shimclient import ShimClient, ShimStream
from silobox.compute.spawner import Spawner
from silobox.kernel import entry
from silobox.kernel.jobobject import UNLIMITED, JobLimits, JobObject
from silobox.kernel.jobobject.devices import DeviceRule
from silobox.kernel.silo import BindMount, SiloSpec
from silobox.timeutil import iso as _iso, now_iso as _now, parse_iso
from silobox.kernel.spawn import EXIT_CANNOT_INVOKE, EXIT_NOT_FOUND, ProcessSpec


class State(str, Enum):
    CREATED = "Created"
    RUNNING = "Running"
    PAUSED = "Paused"
    STOPPED = "Stopped"


_LIVE = frozenset({State.RUNNING, State.PAUSED})
_IDLE = frozenset({State.CREATED, State.STOPPED})


@dataclass(frozen=True)
class Verb:
    """What one HCS verb may start from, where it leaves the system, what an exit after it means.

    ``during`` names verbs in flight that allow this one whatever the state (attach while a start
    waits for its clients); ``exit_type`` is what an exit is called once this verb has been asked.
    """

    allowed: frozenset[State]
    to: State | None = None
    during: frozenset[str] = frozenset()
    exit_type: str = ""
    refusals: dict[State, tuple[type[SiloboxError], str]] = dataclasses.field(default_factory=dict)


_NOT_RUNNING: tuple[type[SiloboxError], str] = (NotModified, "container {short} is not running")
_ALREADY_RUNNING: tuple[type[SiloboxError], str] = (NotModified,
                                                    "container {short} is already running")

VERBS: dict[str, Verb] = {
    "start": Verb(_IDLE, State.RUNNING,
                  refusals={State.RUNNING: _ALREADY_RUNNING, State.PAUSED: _ALREADY_RUNNING}),
    "reattach": Verb(frozenset({State.CREATED})),   # to Running or Paused, as the freezer says
    "exit": Verb(frozenset(State), State.STOPPED),
    "pause": Verb(frozenset({State.RUNNING}), State.PAUSED),
    "resume": Verb(frozenset({State.PAUSED}), State.RUNNING,
                   refusals={State.RUNNING: (Conflict, "container {short} is not paused")}),
    "shutdown": Verb(_LIVE, exit_type="GracefulExit",
                     refusals={State.CREATED: _NOT_RUNNING, State.STOPPED: _NOT_RUNNING}),
    "terminate": Verb(_LIVE, exit_type="ForcedExit",
                      refusals={State.CREATED: _NOT_RUNNING, State.STOPPED: _NOT_RUNNING}),
    "signal": Verb(_LIVE),
    "attach": Verb(_LIVE, during=frozenset({"start"})),
    "resize": Verb(_LIVE),
    "exec": Verb(frozenset({State.RUNNING})),
}


@dataclass
class ExitStatus:
    exit_code: int
    oom_killed: bool = False
    finished_at: str = ""
    exit_type: str = "UnexpectedExit"   # GracefulExit | ForcedExit | UnexpectedExit
    error: str = ""


class StartError(InvalidArgument):
    """The container's command could not be started; ``exit_code`` is 126 or 127 as Docker's."""

    def __init__(self, message: str, exit_code: int, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.exit_code = exit_code


_LIMIT_FIELDS = {f for f in JobLimits.__dataclass_fields__}


def device_rules_of(lx: Any) -> tuple[DeviceRule, ...]:
    """The job object's allow rules for the container's devices and its extra device rules."""
    rules = [DeviceRule(True, d["Type"], d["Major"], d["Minor"], d["Access"])
             for d in lx.devices]
    rules += [DeviceRule(True, r["Type"], r.get("Major"), r.get("Minor"), r["Access"])
              for r in lx.device_rules]
    return tuple(rules)


def job_limits(resources: dict[str, Any], privileged: bool = False) -> JobLimits:
    unknown = set(resources) - _LIMIT_FIELDS
    if unknown:
        raise InvalidArgument(f"Container.Linux.Resources: unknown field(s) {sorted(unknown)}")
    return JobLimits(**{**resources, "privileged": privileged or resources.get("privileged", False)})


def _first_cpus(count: int) -> str:
    """A CPU set of ``count`` CPUs of those silod may use (Windows' processor count)."""
    cpus = sorted(os.sched_getaffinity(0))
    return ",".join(str(c) for c in cpus[:max(1, min(count, len(cpus)))])


def sandbox_device(sandbox_path: str) -> tuple[int, int] | None:
    """The block device of the container's sandbox disk (the loop device mounted over its
    sandbox directory), or None for a directory sandbox."""
    if not sandbox_path or not os.path.ismount(sandbox_path):
        return None
    dev = os.stat(sandbox_path).st_dev
    return os.major(dev), os.minor(dev)


def hcs_resources(doc: ContainerDocument, processor: dict | None = None,
                  qos: dict | None = None) -> dict[str, Any]:
    """HCS's ``Processor`` and ``Storage.QoS`` settings as JobLimits fields: ``Count`` → a
    CPU set of that many CPUs, ``Maximum`` (1/100 % of the whole host) → a CFS quota,
    ``IopsMaximum``/``BandwidthMaximum`` → read and write throttles on the sandbox disk."""
    processor = doc.processor if processor is None else processor
    qos = doc.storage_qos if qos is None else qos
    out: dict[str, Any] = {}
    if processor.get("Count"):
        out["cpuset_cpus"] = _first_cpus(int(processor["Count"]))
    if processor.get("Maximum"):
        out["cpu_period"] = 100000
        out["cpu_quota"] = max(1000, int(processor["Maximum"]) * (os.cpu_count() or 1) * 10)
    if "IopsMaximum" in qos or "BandwidthMaximum" in qos:
        dev = sandbox_device(doc.sandbox_path)
        if dev is not None:
            bw, iops = int(qos.get("BandwidthMaximum") or 0), int(qos.get("IopsMaximum") or 0)
            out["blkio_read_bps"] = out["blkio_write_bps"] = [[*dev, bw]]
            out["blkio_read_iops"] = out["blkio_write_iops"] = [[*dev, iops]]
    return out


def effective_resources(doc: ContainerDocument) -> dict[str, Any]:
    """``Container.Linux.Resources`` with the HCS settings merged in (throttle lists joined)."""
    res = dict(doc.linux.resources)
    for key, value in hcs_resources(doc).items():
        if key.startswith("blkio_") and res.get(key):
            res[key] = list(res[key]) + value
        else:
            res[key] = value
    return res


def exec_entry(proc: ProcessSpec) -> dict[str, Any]:
    """What the native monitor needs for an exec besides the fds it holds: the entry helper's
    spec, made here so the monitor never interprets a process (it appends the sync fd, the PID
    namespace fd and the path it resolves inside the root), and the lookup inputs."""
    spec = entry.encode_spec(
        mode=entry.MODE_FORK, sync_fd=0, path=proc.argv[0], argv=proc.argv, env=proc.env,
        cwd=proc.cwd, uid=proc.uid, gid=proc.gid, groups=proc.groups,
        capabilities=proc.capabilities, last_cap=proc.last_cap,
        no_new_privs=proc.no_new_privs, seccomp=proc.seccomp, rlimits=proc.rlimits,
        umask=proc.umask, oom_score_adj=proc.oom_score_adj, tty=proc.tty)
    search = next((e[5:] for e in proc.env if e.startswith("PATH=")), None)
    return {"spec": spec.hex(), "argv0": proc.argv[0], "search_path": search, "cwd": proc.cwd,
            "tty": proc.tty}


class ComputeSystem:
    in_vm = False
    """True for a container in a utility VM (``--isolation hyperv``; see compute.uvm.hyperv)."""

    def __init__(self, service: "ComputeService", cid: str, doc: ContainerDocument) -> None:
        self.service = service
        self.id = cid
        self.doc = doc
        self.state = State.CREATED
        self.state_dir = os.path.join(service.state_root, cid)
        self.job = JobObject(cid, doc.linux.cgroup_parent or service.cgroup_parent)
        self.shim = ShimClient(self.state_dir, cid)
        self.pid = 0
        self.shim_pid = 0
        self.started_at = ""
        self.exit: ExitStatus | None = None
        self.on_exit: list[Callable[["ComputeSystem"], Awaitable[None] | None]] = []
        self._exited = asyncio.Event()
        self._monitor: asyncio.Task | None = None
        # The verb in flight that the state alone does not show: "start" while clients attach
        # before the release, "shutdown"/"terminate" once a stop was asked (names the exit).
        self.pending: str | None = None
        self._lock = asyncio.Lock()

    # ----- state machine ------------------------------------------------------------------
    def _check(self, verb: str) -> None:
        """Raise unless :data:`VERBS` allows ``verb`` now."""
        rule = VERBS[verb]
        if self.state in rule.allowed or self.pending in rule.during:
            return
        cls, template = rule.refusals.get(self.state) or (
            (NotRunning, "container {short} is not running") if self.state in _IDLE else
            (Conflict, "cannot {verb} container {short}: it is {state}"))
        raise cls(template.format(short=self.id[:12], verb=verb, state=self.state.value.lower()),
                  operation=verb, object_id=self.id)

    def _enter(self, verb: str, to: State | None = None) -> None:
        """Check ``verb``, then take the state its entry (or ``to``) names."""
        self._check(verb)
        target = to or VERBS[verb].to
        if target is not None:
            self.state = target

    # ----- start ----------------------------------------------------------------------------
    async def start(self, init: ProcessParameters, *, log_path: str | None = None,
                    log_max_size: int = 0, log_max_files: int = 1,
                    before_release: Callable[[ShimClient], Awaitable[None]] | None = None) -> None:
        """Create the job object, spawn the shim, let ``before_release`` attach, then exec."""
        async with self._lock:
            self._check("start")
            os.makedirs(self.state_dir, exist_ok=True)
            for stale in ("exit.json", "shim.sock", "shim.json"):
                try:
                    os.unlink(os.path.join(self.state_dir, stale))
                except FileNotFoundError:
                    pass
            lx = self.doc.linux
            resources = effective_resources(self.doc)
            limits = job_limits(resources, lx.privileged)
            extra = device_rules_of(lx)
            if extra:
                limits = dataclasses.replace(limits, devices=extra)
            # A warm shim's job object has the default device rules and it has entered a new
            # PID namespace: privileged containers (all devices), containers given devices and
            # those in the host's PID namespace take the cold path.
            joins_pid = "pid" in lx.join_namespaces
            pooled = self.service.pool and not lx.privileged and not extra and not lx.host_pid \
                and not joins_pid and not self.in_vm and not lx.cgroup_parent
            if not pooled and not self.in_vm:
                self.job.create(limits)
            try:
                silo, proc = await asyncio.get_running_loop().run_in_executor(
                    None, self.service.translate, self.doc, init)
                cfg = {
                    "id": self.id, "state_dir": self.state_dir, "log_path": log_path,
                    "log_max_size": log_max_size, "log_max_files": log_max_files,
                    "exit_path": os.path.join(self.state_dir, "exit.json"),
                    "tty": init.emulate_console, "open_stdin": init.create_stdin_pipe,
                    "stdin_once": init.stdin_once,
                    "console_size": list(init.console_size) if init.console_size else None,
                    "silo": silo.__dict__ | {"binds": [b.__dict__ for b in silo.binds]},
                    "process": proc.to_dict(), "procs_files": self.job.procs_files(),
                    "job": {"name": self.id, "parent": self.job.parent},
                    "autostart": before_release is None,
                    "pool": pooled, "limits": resources, "host_pid": lx.host_pid,
                    "pid_namespace": lx.join_namespaces.get("pid"),
                }
                report = await self._spawn_shim(cfg)
            except BaseException:
                self.job.delete()
                raise
            if report.get("t") != "ready":
                self.job.delete()
                raise self._start_error(report)
            self.pid, self.shim_pid = report["pid"], report["shim_pid"]
            self._exited = asyncio.Event()
            self.exit = None
            self.pending = None
            self._monitor = asyncio.get_running_loop().create_task(self._watch())
            if before_release is not None:
                self.pending = "start"
                try:
                    await before_release(self.shim)
                finally:
                    if self.pending == "start":
                        self.pending = None
                    result = await self.shim.request({"op": "start"})
            else:
                result = report
            if result.get("ok") is False:
                # The init exits with 126/127; the monitor records that.
                await self._exited.wait()
                raise self._start_error(result)
            self.started_at = result.get("started_at") or _now()
            if not self._exited.is_set():   # a command that ended at once has been recorded
                self._enter("start")

    async def _spawn_shim(self, cfg: dict) -> dict:
        """The shim's first report; a utility VM's system starts its shim in the guest."""
        report, report_sock = await self.service.spawner.spawn_shim(cfg)
        report_sock.close()
        return report

    def _start_error(self, report: dict) -> StartError:
        import errno as _errno
        err = report.get("errno") or 0
        msg = report.get("msg") or "failed to start"
        stage = report.get("stage") or ""
        code = EXIT_NOT_FOUND if err == _errno.ENOENT and stage == "exec" else EXIT_CANNOT_INVOKE
        text = (f"failed to create task for container: {msg}" if stage == "exec"
                else f"failed to create silo: stage {stage}: {msg}")
        return StartError(text, code, operation="start", object_id=self.id)

    async def _watch(self) -> None:
        record = await self.shim.wait()
        if record is None:
            record = self._read_exit_file()
        if record is None:
            # The monitor is gone without an exit record (killed): nothing holds the
            # container's stdio or can learn its exit status any more. End what is left of
            # it, as containerd does when a shim dies (docs/architecture.md).
            await asyncio.get_running_loop().run_in_executor(None, self._end_orphaned_job)
        self._record_exit(record)

    def _end_orphaned_job(self) -> None:
        try:
            self.job.kill_all()
            self.job.delete()
        except Exception:
            pass   # already gone, or left for remove's own delete

    def _read_exit_file(self) -> dict | None:
        try:
            with open(os.path.join(self.state_dir, "exit.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _record_exit(self, record: dict | None) -> None:
        if record is None:
            record = {"ExitCode": 255, "FinishedAt": _now()}
            error = "the container's shim exited unexpectedly"
        else:
            error = ""
        asked = VERBS.get(self.pending or "")
        exit_type = asked.exit_type if asked and asked.exit_type else "UnexpectedExit"
        self.exit = ExitStatus(int(record.get("ExitCode", 255)), bool(record.get("OOMKilled")),
                               record.get("FinishedAt") or _now(), exit_type, error)
        self._enter("exit")
        self.pid = 0
        self._exited.set()
        for cb in list(self.on_exit):
            res = cb(self)
            if asyncio.iscoroutine(res):
                asyncio.get_running_loop().create_task(res)

    # ----- recovery after a silod restart --------------------------------------------------
    async def reattach(self) -> None:
        """Find the shim of a system that was running when silod stopped."""
        info = None
        try:
            with open(os.path.join(self.state_dir, "shim.json")) as f:
                info = json.load(f)
        except (OSError, ValueError):
            pass
        if info and self.shim.alive():
            try:
                st = await self.shim.request({"op": "state"}, timeout=5)
            except (NotRunning, SystemFailure):
                st = None
            if st and st.get("ok"):
                self.pid = st.get("pid", 0)
                self.shim_pid = info.get("ShimPid", 0)
                self.started_at = st.get("started_at") or ""
                self._enter("reattach", State.PAUSED if self._frozen() else State.RUNNING)
                self._exited = asyncio.Event()
                self._monitor = asyncio.get_running_loop().create_task(self._watch())
                return
        record = self._read_exit_file()
        self._record_exit(record)
        try:
            self.job.kill_all()
            self.job.delete()
        except NotFound:
            pass

    def _frozen(self) -> bool:
        try:
            return self.job.frozen()
        except Exception:
            return False

    # ----- verbs ------------------------------------------------------------------------------
    async def signal(self, sig: int) -> None:
        self._check("signal")
        if sig == _signal.SIGKILL:
            await self.terminate()
            return
        res = await self.shim.request({"op": "signal", "signal": sig})
        if not res.get("ok"):
            raise NotRunning(res.get("msg", "not running"), object_id=self.id)

    async def shutdown(self, timeout: float = 10.0, sig: int = _signal.SIGTERM) -> None:
        """Graceful stop: the stop signal to PID 1, then terminate once ``timeout`` passes."""
        self._check("shutdown")
        self.pending = "shutdown"
        if self.state == State.PAUSED:
            self.job.thaw()
            self._enter("resume")
        if sig != _signal.SIGKILL and timeout != 0:
            try:
                await self.shim.request({"op": "signal", "signal": sig})
            except NotRunning:
                pass
            try:
                async with asyncio.timeout(timeout if timeout >= 0 else None):
                    await self._exited.wait()
                return
            except TimeoutError:
                pass
        await self.terminate()

    async def terminate(self) -> None:
        """Forced stop: kill every process of the job object (TerminateComputeSystem)."""
        self._check("terminate")
        if self.pending is None:
            self.pending = "terminate"
        try:
            self.job.kill_all(_signal.SIGKILL)
            if self.state == State.PAUSED:
                self.job.thaw()
        except NotFound:
            pass   # the last process is already gone and the shim removed the job object
        try:
            async with asyncio.timeout(10):
                await self._exited.wait()
        except TimeoutError:
            raise SystemFailure(f"container {self.id[:12]} did not exit after SIGKILL",
                                operation="terminate", object_id=self.id) from None

    async def pause(self) -> None:
        """Freeze the job object; the freezer is waited for off the loop (v1 polls)."""
        self._check("pause")
        await asyncio.get_running_loop().run_in_executor(None, self.job.freeze)
        self._enter("pause")   # an exit while freezing wins: not running

    async def resume(self) -> None:
        self._check("resume")
        await asyncio.get_running_loop().run_in_executor(None, self.job.thaw)
        self._enter("resume")

    async def wait(self) -> ExitStatus:
        await self._exited.wait()
        assert self.exit is not None
        return self.exit

    def modify(self, request: dict) -> None:
        """HCS ModifySettingRequest: live resource changes on the job object."""
        if not isinstance(request, dict):
            raise InvalidArgument("modify request must be a JSON object")
        path = request.get("ResourcePath")
        settings = request.get("Settings")
        if request.get("RequestType", "Update") != "Update":
            raise InvalidArgument(f"RequestType {request.get('RequestType')!r} is not supported "
                                  f"for {path}")
        if path == "Container/Memory/SizeInMB":
            if not isinstance(settings, int) or settings <= 0:
                raise InvalidArgument("Container/Memory/SizeInMB: a positive integer is required")
            limits = JobLimits(memory=settings * 1024 * 1024)
        elif path == "Container/Processor":
            if not isinstance(settings, dict):
                raise InvalidArgument("Container/Processor: an object is required")
            for key in ("Count", "Maximum", "Weight"):
                v = settings.get(key)
                if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                    raise InvalidArgument(f"Container/Processor: {key} must be a non-negative "
                                          "integer")
            if not 0 <= (settings.get("Maximum") or 0) <= 10000:
                raise InvalidArgument("Container/Processor: Maximum is outside 0..10000")
            limits = JobLimits(**hcs_resources(self.doc, settings, {}))
            if "Maximum" in settings and not settings["Maximum"]:
                limits.cpu_quota = UNLIMITED   # 0: no cap any more
            if "Count" in settings and not settings["Count"]:
                limits.cpuset_cpus = _first_cpus(len(os.sched_getaffinity(0)))
            if settings.get("Weight"):
                limits.cpu_shares = int(settings["Weight"])
            self.doc.processor.update({k: settings[k] for k in ("Count", "Maximum", "Weight")
                                       if k in settings})
            self.doc.raw.setdefault("Container", {})["Processor"] = dict(self.doc.processor)
        elif path == "Container/Storage/QoS":
            if not isinstance(settings, dict) or not all(
                    isinstance(settings.get(k, 0), int) and settings.get(k, 0) >= 0
                    for k in ("IopsMaximum", "BandwidthMaximum")):
                raise InvalidArgument("Container/Storage/QoS: IopsMaximum and BandwidthMaximum "
                                      "must be non-negative integers")
            qos = {**self.doc.storage_qos, **{k: settings[k] for k in
                                              ("IopsMaximum", "BandwidthMaximum")
                                              if k in settings}}
            limits = JobLimits(**hcs_resources(self.doc, {}, qos))
            self.doc.storage_qos = qos
            self.doc.raw.setdefault("Container", {}).setdefault("Storage", {})["QoS"] = dict(qos)
        elif path == "Container/Linux/Resources":
            if not isinstance(settings, dict):
                raise InvalidArgument("Container/Linux/Resources: an object is required")
            limits = job_limits(settings)
            self.doc.linux.resources.update({k: v for k, v in settings.items() if v is not None})
        else:
            raise InvalidArgument(f"unsupported ResourcePath {path!r}")
        if self.state in _LIVE:
            self.job.set_limits(limits)

    async def attach(self, stdin: bool) -> ShimStream:
        # between shim ready and release ("start" pending), attach is how clients get all output
        self._check("attach")
        res, stream = await self.shim.stream({"op": "attach", "stdin": stdin})
        if not res.get("ok"):
            await stream.close()
            raise NotRunning(res.get("msg", "not running"), object_id=self.id)
        return stream

    async def resize_console(self, height: int, width: int, target: str | None = None) -> None:
        self._check("resize")
        res = await self.shim.request({"op": "resize", "target": target, "height": height,
                                       "width": width})
        if not res.get("ok"):
            raise Conflict(res.get("msg", "cannot resize"), object_id=self.id)

    async def create_process(self, exec_id: str, params: ProcessParameters,
                             privileged: bool = False) -> "Process":
        """HCS CreateProcess: a new process in the running silo, joined through setns."""
        self._check("exec")
        proc = await asyncio.get_running_loop().run_in_executor(
            None, self.service.translate_process, self.doc, params, privileged)
        res, stream = await self.shim.stream({
            "op": "exec", "id": exec_id, "process": proc.to_dict(),
            "stdin": params.create_stdin_pipe,
            "console_size": list(params.console_size) if params.console_size else None,
            **exec_entry(proc)})
        if not res.get("ok") and not res.get("pid"):
            await stream.close()
            raise NotRunning(res.get("msg", "cannot exec"), object_id=self.id)
        p = Process(self, exec_id, res.get("pid", 0), stream)
        if not res.get("ok"):
            p.start_error = self._start_error(res)
        return p

    # ----- properties -------------------------------------------------------------------------
    def properties(self, types: list[str] | None = None) -> dict[str, Any]:
        """HCS Properties: state plus Statistics and ProcessList read from the job object."""
        types = types or ["Statistics", "ProcessList"]
        props: dict[str, Any] = {
            "Id": self.id, "SystemType": "Container", "Name": self.id, "Owner": self.doc.owner,
            "RuntimeOsType": "Linux", "RuntimeId": self.id, "State": self.state.value,
            "Stopped": self.state == State.STOPPED,
            "ExitType": self.exit.exit_type if self.exit else "",
            "ShimPid": self.shim_pid, "InitPid": self.pid,
            "JobObject": {"Name": self.id, "Path": self.job.path,
                          "Exists": self.job.exists()},
        }
        running = self.state in _LIVE and self.job.exists()
        if "Statistics" in types:
            props["Statistics"] = self._statistics() if running else None
        if "ProcessList" in types:
            props["ProcessList"] = process_list(self.job.pids()) if running else []
        if "Memory" in types:
            props["Memory"] = {"SizeInMB": (self.doc.linux.resources.get("memory") or 0) // 2**20}
        # The resource controls HCS documents carry, as given (Windows' --cpu-count,
        # --cpu-percent, --io-maxiops, --io-maxbandwidth).
        props["Processor"] = {k: self.doc.processor.get(k, 0)
                              for k in ("Count", "Maximum", "Weight")}
        props["Storage"] = {"QoS": {k: self.doc.storage_qos.get(k, 0)
                                    for k in ("IopsMaximum", "BandwidthMaximum")}}
        return props

    def _statistics(self) -> dict[str, Any]:
        st = self.job.statistics()
        now = time.time()
        started = parse_iso(self.started_at) or now
        return {
            "Timestamp": _now(), "ContainerStartTime": self.started_at,
            "Uptime100ns": int((now - started) * 1e7),
            "Processor": {"TotalRuntime100ns": st.cpu_usage_ns // 100,
                          "RuntimeUser100ns": st.cpu_user_ns // 100,
                          "RuntimeKernel100ns": st.cpu_system_ns // 100},
            "Memory": {"MemoryUsageCommitBytes": st.memory_usage,
                       "MemoryUsageCommitPeakBytes": st.memory_max_usage,
                       "MemoryUsagePrivateWorkingSetBytes": int(
                           st.memory_stat.get("rss", st.memory_stat.get("anon", 0)))},
            "Storage": {"ReadCountNormalized": st.blkio_read_ops, "ReadSizeBytes": st.blkio_read_bytes,
                        "WriteCountNormalized": st.blkio_write_ops,
                        "WriteSizeBytes": st.blkio_write_bytes},
        }

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()


class Process:
    """A process created in a compute system (an exec), with its stdio stream."""

    def __init__(self, system: ComputeSystem, exec_id: str, pid: int, stream: ShimStream) -> None:
        self.system = system
        self.exec_id = exec_id
        self.pid = pid
        self.stream = stream
        self.start_error: StartError | None = None

    async def signal(self, sig: int) -> None:
        res = await self.system.shim.request({"op": "signal", "target": self.exec_id,
                                              "signal": sig})
        if not res.get("ok"):
            raise NotRunning(res.get("msg", "process is not running"), object_id=self.exec_id)

    async def resize_console(self, height: int, width: int) -> None:
        await self.system.resize_console(height, width, target=self.exec_id)


class ComputeService:
    """The registry of compute systems (HcsEnumerateComputeSystems / HcsOpenComputeSystem)."""

    def __init__(self, spawner: Spawner, state_root: str, cgroup_parent: str = "silobox",
                 pool: bool = True) -> None:
        self.spawner = spawner
        self.pool = pool
        self.state_root = state_root
        self.cgroup_parent = cgroup_parent
        self.systems: dict[str, ComputeSystem] = {}
        os.makedirs(state_root, mode=0o700, exist_ok=True)

    def create(self, cid: str, document: dict | ContainerDocument) -> ComputeSystem:
        if cid in self.systems:
            raise AlreadyExists(f"compute system {cid} already exists", operation="create",
                                object_id=cid)
        doc = document if isinstance(document, ContainerDocument) else parse_document(document)
        if doc.raw.get("HostingSystem"):   # --isolation hyperv: the container in a utility VM
            from silobox.compute.uvm.hyperv import HypervComputeSystem
            system: ComputeSystem = HypervComputeSystem(self, cid, doc)
        else:
            system = ComputeSystem(self, cid, doc)
        self.systems[cid] = system
        return system

    def open(self, cid: str) -> ComputeSystem:
        try:
            return self.systems[cid]
        except KeyError:
            for system in self.systems.values():   # a hyperv container's utility VM
                if system.in_vm and system.vm_summary() and system.vm_id == cid:
                    return system.vm_view()
            raise NotFound(f"compute system {cid} does not exist", object_id=cid) from None

    def enumerate(self) -> list[dict[str, Any]]:
        out = [{"Id": s.id, "SystemType": "Container", "Name": s.id, "Owner": s.doc.owner,
                "State": s.state.value, "RuntimeOsType": "Linux", "InitPid": s.pid,
                "ShimPid": s.shim_pid, "JobObject": s.job.path}
               for s in self.systems.values()]
        out += [s.vm_summary() for s in self.systems.values() if s.in_vm and s.vm_summary()]
        return out

    def close_system(self, cid: str) -> None:
        """Forget a stopped system and remove its state directory (HcsCloseComputeSystem)."""
        system = self.systems.get(cid)
        if system is not None and system.state in _LIVE:
            raise Conflict(f"compute system {cid[:12]} is running", object_id=cid)
        if system is not None:
            system.close()
            try:   # the shim may be deleting it at this very moment
                system.job.kill_all()
                system.job.delete()
            except NotFound:
                pass
        self.systems.pop(cid, None)
        shutil.rmtree(os.path.join(self.state_root, cid), ignore_errors=True)

    # ----- translation (hcsoci): documents → plain specs for the child ----------------------
    def translate(self, doc: ContainerDocument, init: ProcessParameters) -> tuple[SiloSpec, ProcessSpec]:
        from silobox.kernel.sandbox import paths
        lx = doc.linux
        sandbox = doc.sandbox_path
        if sandbox:
            upper, work, rootfs = (os.path.join(sandbox, "upper"), os.path.join(sandbox, "work"),
                                   os.path.join(sandbox, "rootfs"))
        else:
            upper = work = ""
            rootfs = os.path.join(self.state_root, "rootfs-unused")
        silo = SiloSpec(
            rootfs=rootfs, lower_dirs=[l.path for l in doc.layers], upper_dir=upper, work_dir=work,
            namespaces=list(lx.namespaces), netns_path=doc.network_namespace,
            hostname=doc.hostname, domainname=lx.domainname,
            binds=[BindMount(m.host_path, m.container_path, m.read_only, m.propagation)
                   for m in doc.mapped_directories],
            masked_paths=list(paths.MASKED_PATHS if lx.masked_paths is None else lx.masked_paths),
            readonly_paths=list(paths.READONLY_PATHS if lx.readonly_paths is None
                                else lx.readonly_paths),
            readonly_rootfs=lx.readonly_rootfs, privileged=lx.privileged, shm_size=lx.shm_size,
            tmpfs=[[t["ContainerPath"], *_tmpfs(t.get("Options") or "")] for t in lx.tmpfs],
            sysctls=dict(lx.sysctls),
            join={k: v for k, v in lx.join_namespaces.items() if k != "pid"},
            devices=[[d["Path"], d["HostPath"], d["Type"], d["Major"], d["Minor"],
                      d["FileMode"], d["Uid"], d["Gid"]] for d in lx.devices],
        )
        return silo, self.translate_process(doc, init, False)

    def translate_process(self, doc: ContainerDocument, params: ProcessParameters,
                          privileged: bool) -> ProcessSpec:
        from silobox.kernel.sandbox import capabilities, rlimits, seccomp, user
        lx = doc.linux
        priv = lx.privileged or privileged
        if lx.capabilities is not None and not priv:
            caps = capabilities.resolve_capabilities(
                [c for c in lx.capabilities], ["ALL"], False) if lx.capabilities else []
        else:
            caps = capabilities.resolve_capabilities(lx.cap_add, lx.cap_drop, priv)
        mask = capabilities.capability_mask(caps)
        bpf = None
        if not (priv or lx.seccomp_unconfined):
            profile = lx.seccomp if lx.seccomp is not None else seccomp.default_profile()
            bpf = seccomp.compile_profile(profile, caps, lx.no_new_privileges)
        ulimits = [rlimits.Ulimit(r["Name"], int(r["Soft"]), int(r["Hard"])) for r in lx.rlimits]
        rlimits.check_ulimits(ulimits)
        resolved = user.resolve_user(self._passwd_root(doc), params.user or None,
                                     lx.group_add)
        env = [f"{k}={v}" for k, v in params.environment.items()]
        if not any(e.startswith("HOME=") for e in env):
            env.append(f"HOME={resolved.home or '/'}")
        if not any(e.startswith("PATH=") for e in env):
            env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        if params.emulate_console and not any(e.startswith("TERM=") for e in env):
            env.append("TERM=xterm")
        return ProcessSpec(
            argv=list(params.command_args), env=env, cwd=params.working_directory or "/",
            uid=resolved.uid, gid=resolved.gid, groups=list(resolved.additional_gids),
            capabilities=mask, last_cap=capabilities.last_capability(),
            no_new_privs=lx.no_new_privileges, seccomp=bpf,
            rlimits=rlimits.to_child(ulimits), tty=params.emulate_console,
            oom_score_adj=lx.oom_score_adj,
        )

    @staticmethod
    def _passwd_root(doc: ContainerDocument) -> str:
        """The topmost layer holding /etc/passwd: where user names resolve."""
        candidates = []
        if doc.sandbox_path:
            candidates.append(os.path.join(doc.sandbox_path, "upper"))
        candidates += [l.path for l in doc.layers]
        from silobox.kernel.saferoot import SafeRoot
        for root in candidates:
            try:
                with SafeRoot(root) as tree:   # the layer's links stay inside the layer
                    if tree.exists("etc/passwd"):
                        return root
            except OSError:
                continue
        return candidates[0] if candidates else "/nonexistent"


def _tmpfs(options: str) -> tuple[int, str]:
    """A tmpfs mount's Options (Docker's syntax, defaults already merged) → (flags, data)."""
    from silobox.kernel.silo import tmpfs_options
    try:
        return tmpfs_options(options)
    except ValueError as e:
        raise InvalidArgument(f"Container.Linux.Tmpfs: {e}") from None


def process_list(pids: list[int]) -> list[dict[str, Any]]:
    """HCS ProcessDetails for each member of a job object, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    boot = _boot_time()
    out = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/status") as f:
                status = {k: v.strip() for k, _, v in (l.partition(":") for l in f)}
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        utime, stime, start = int(fields[11]), int(fields[12]), int(fields[19])
        rss_anon = _kb(status.get("RssAnon"))
        rss_shared = _kb(status.get("RssFile")) + _kb(status.get("RssShmem"))
        out.append({
            "ProcessId": pid, "ImageName": comm,
            "CreateTimestamp": _iso(boot + start / tick),
            "UserTime100ns": utime * 10**7 // tick, "KernelTime100ns": stime * 10**7 // tick,
            "MemoryCommitBytes": _kb(status.get("VmData")) + _kb(status.get("VmStk")),
            "MemoryWorkingSetPrivateBytes": rss_anon, "MemoryWorkingSetSharedBytes": rss_shared,
        })
    return out


def _kb(v: str | None) -> int:
    if not v:
        return 0
    return int(v.split()[0]) * 1024


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime"):
                return float(line.split()[1])
    return 0.0


