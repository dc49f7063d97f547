"""Docker containers on top of compute systems (the container half of dockerd).

A Docker container is a record in silod's store (Config, HostConfig, State, name) plus, while it
runs, a compute system. Each start builds a fresh compute system from the stored record, as
Docker on Windows does; the writable sandbox and the log outlive it until ``rm``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal as _signal
import socket
import time
from typing import Any, AsyncIterator

from silobox.atomic import atomic_write
from silobox.compute.schema import ProcessParameters
from silobox.compute.system import ComputeSystem, StartError
from silobox.engine import spec as S
from silobox.engine.health import parse_healthcheck
from silobox.engine.devices import check_device_requests, device_rules, resolve_devices
from silobox.engine.hostconfig import (check_blkio, check_host_config, check_windows_cpu,
                                      hcs_settings, shared_host_namespaces)
from silobox.engine.hooks import ContainerHook
from silobox.engine.logs import read_log
from silobox.engine.names import random_name
from silobox.engine.networks import shown_networks
from silobox.timeutil import human_duration, now_iso, parse_iso, parse_until
from silobox.engine.sessions import AttachSession, ExecSession, FailedExecStart
from silobox.engine.state import (LIVE, Status, allowed, check, from_compute, initial_state,
                                  is_live, refusal, status, transition)
from silobox.errors import (AlreadyExists, Conflict, InvalidArgument, NotFound, NotModified,
                            NotRunning)
from silobox.filters import labels_match

class Container:
    """The stored record of one Docker container (what ``docker inspect`` shows)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @property
    def id(self) -> str:
        return self.data["Id"]

    @property
    def name(self) -> str:
        return self.data["Name"].lstrip("/")

    @property
    def state(self) -> dict[str, Any]:
        return self.data["State"]

    @property
    def config(self) -> dict[str, Any]:
        return self.data["Config"]

    @property
    def host_config(self) -> dict[str, Any]:
        return self.data["HostConfig"]

    @property
    def running(self) -> bool:
        return self.state["Status"] in LIVE


class ContainerService:
    """Implements ``api.backend.ContainerBackend``; shares the engine's store and services."""

    # Attributes provided by the Engine that mixes this in.
    config: Any
    db: Any
    compute: Any
    images: Any
    containers: dict[str, Container]
    execs: dict[str, dict[str, Any]]

    def _init_containers(self) -> None:
        self.db.migrate("containers", [
            "CREATE TABLE containers (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, "
            "data TEXT NOT NULL)",
        ])
        self.containers = {}
        self.execs = {}
        self._pending_attach: dict[str, list[AttachSession]] = {}
        self._exit_waiters: dict[str, list[asyncio.Future]] = {}
        self._removed_waiters: dict[str, list[asyncio.Future]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._backoff: dict[str, float] = {}
        self._restarts: dict[str, asyncio.Task] = {}   # policy restarts still in their back-off
        self._restart_tasks: set[asyncio.Task] = set()   # ... and those already starting
        self._closing = False
        self.container_hooks: list[ContainerHook] = []
        import json
        for row in self.db.query("SELECT data FROM containers"):
            c = Container(json.loads(row["data"]))
            self.containers[c.id] = c

    # ----- lookup & persistence ---------------------------------------------------------------
    def _find(self, ref: str) -> Container:
        if not ref:
            raise NotFound("No such container: ")
        ref = ref.lstrip("/") or ref
        c = self.containers.get(ref)
        if c:
            return c
        for c in self.containers.values():
            if c.name == ref:
                return c
        matches = [c for c in self.containers.values() if c.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"multiple IDs found with provided prefix: {ref}")
        raise NotFound(f"No such container: {ref}", object_id=ref)

    def _lock(self, cid: str) -> asyncio.Lock:
        return self._locks.setdefault(cid, asyncio.Lock())

    def _save(self, c: Container) -> None:
        with self.db.tx():
            self.db.execute("INSERT OR REPLACE INTO containers (id, name, data) VALUES (?, ?, ?)",
                            (c.id, c.name, S.dumps(c.data)))

    def _container_dir(self, cid: str) -> str:
        return os.path.join(self.config.containers_dir, cid)

    # ----- create ---------------------------------------------------------------------------
    async def container_create(self, name: str | None, body: dict[str, Any]) -> dict[str, Any]:
        body = S.check_create_body(body)
        if name:
            name = S.validate_name(name)
            self._check_name_free(name)
        hc = dict(body.get("HostConfig") or {})
        warnings = check_host_config(hc)
        check_device_requests(hc)
        iso = (hc.get("Isolation") or "").lower()
        if iso not in ("", "default", "process", "hyperv"):
            raise InvalidArgument(f'Invalid isolation: "{hc.get("Isolation")}" - silobox '
                                  "supports 'default', 'process' and 'hyperv'")
        if iso == "hyperv":   # the container in a utility VM (compute.uvm.hyperv)
            from silobox.compute.uvm.hyperv import check_host_config as check_hyperv
            await asyncio.get_running_loop().run_in_executor(None, check_hyperv, hc,
                                                             bool(body.get("Tty")))
        net = hc.get("NetworkMode") or "default"  # validated by the network hook
        resources = S.resources_from_hostconfig(hc)
        sec = S.parse_security_opts(hc.get("SecurityOpt") or [])
        from silobox.kernel.sandbox import capabilities
        capabilities.resolve_capabilities(hc.get("CapAdd") or [], hc.get("CapDrop") or [],
                                          bool(hc.get("Privileged")))
        ulimits = S.parse_ulimits(hc.get("Ulimits") or [])
        mounts = S.parse_binds(hc.get("Binds"))
        restart = S.parse_restart_policy(hc.get("RestartPolicy"), bool(hc.get("AutoRemove")))
        if hc.get("Init") and not os.path.exists(self.config.init_binary):
            raise InvalidArgument(f"--init needs {self.config.init_binary}: "
                                  "apt-get install tini")
        image = await self.image_for_create(body["Image"])
        icfg = image.config.get("config") or {}
        entry, cmd = S.command_of(body, icfg)
        argv = entry + cmd
        if not argv:
            raise InvalidArgument("No command specified")
        cid = secrets.token_hex(32)
        if not name:
            name = self._unique_random_name()
        if hc.get("UTSMode") == "host":
            if body.get("Hostname"):
                raise InvalidArgument("Conflicting options: hostname and the UTS mode")
            hostname = socket.gethostname()   # the host's, as dockerd shows it
        else:
            hostname = body.get("Hostname") or cid[:12]
        env = S.merge_env(icfg.get("Env") or [S.DEFAULT_PATH], body.get("Env") or [])
        config = {
            "Hostname": hostname, "Domainname": body.get("Domainname") or "",
            # dockerd's merge: an empty User (the CLI always sends one) takes the image's
            "User": body.get("User") or icfg.get("User") or "",
            "AttachStdin": bool(body.get("AttachStdin")),
            "AttachStdout": bool(body.get("AttachStdout", True)),
            "AttachStderr": bool(body.get("AttachStderr", True)),
            "ExposedPorts": body.get("ExposedPorts") or icfg.get("ExposedPorts"),
            "Tty": bool(body.get("Tty")), "OpenStdin": bool(body.get("OpenStdin")),
            "StdinOnce": bool(body.get("StdinOnce")), "Env": env,
            "Cmd": cmd, "Image": body["Image"],
            "Volumes": body.get("Volumes") or icfg.get("Volumes"),
            "WorkingDir": body.get("WorkingDir") or icfg.get("WorkingDir") or "",
            "Entrypoint": entry or None, "OnBuild": None,
            "Labels": {**(icfg.get("Labels") or {}), **(body.get("Labels") or {})},
            "StopSignal": body.get("StopSignal") or icfg.get("StopSignal"),
            "StopTimeout": body.get("StopTimeout"),
            "Healthcheck": parse_healthcheck(body.get("Healthcheck")
                                             or icfg.get("Healthcheck")),
        }
        if config["StopSignal"]:
            S.parse_signal(config["StopSignal"])
        host_config = {
            **hc, "NetworkMode": net,
            "Isolation": hc.get("Isolation") or "", "Ulimits": ulimits or None,
            "Runtime": hc.get("Runtime") or "silobox",   # dockerd fills in its default
            "CapAdd": hc.get("CapAdd"), "CapDrop": hc.get("CapDrop"),
            "SecurityOpt": hc.get("SecurityOpt"),
            "RestartPolicy": restart,
            "LogConfig": S.parse_log_config(hc.get("LogConfig")),
        }
        cdir = self._container_dir(cid)
        data = {
            "Id": cid, "Created": now_iso(), "Path": argv[0], "Args": argv[1:],
            "State": initial_state(),
            "Image": image.id, "ResolvConfPath": os.path.join(cdir, "resolv.conf"),
            "HostnamePath": os.path.join(cdir, "hostname"),
            "HostsPath": os.path.join(cdir, "hosts"),
            "LogPath": os.path.join(cdir, f"{cid}-json.log"),
            "Name": "/" + name, "RestartCount": 0, "Driver": "windowsfilter",
            "Platform": "linux", "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "",
            "ExecIDs": None, "HostConfig": host_config,
            "GraphDriver": {"Name": "windowsfilter",
                            "Data": {"dir": os.path.join(cdir, "sandbox")}},
            "Mounts": mounts, "Config": config,
            "NetworkSettings": {"Bridge": "", "SandboxID": "", "SandboxKey": "", "Ports": {},
                                "Networks": {"none": {"NetworkID": "", "EndpointID": "",
                                                      "Gateway": "", "IPAddress": "",
                                                      "IPPrefixLen": 0, "MacAddress": ""}}},
            "Silobox": {"Resources": resources, "Security": {
                "Seccomp": sec["seccomp"], "SeccompUnconfined": sec["seccomp_unconfined"],
                "NoNewPrivileges": sec["no_new_privileges"]}},
        }
        c = Container(data)
        done: list[ContainerHook] = []
        try:
            for hook in self.container_hooks:
                hook.on_create(c, body)
                done.append(hook)
            os.makedirs(cdir, mode=0o710, exist_ok=True)
            self._write_etc_files(c)
            self.sandbox_for(cid).create()
            self._check_name_free(name)
            self.containers[cid] = c
            self._save(c)
        except BaseException:
            self.containers.pop(cid, None)
            for hook in reversed(done):
                hook.undo_create(c)
            self.sandbox_for(cid).remove()
            shutil.rmtree(cdir, ignore_errors=True)
            raise
        if (hc.get("IOMaximumBandwidth") or hc.get("IOMaximumIOps")) \
                and self.sandbox_for(cid).kind != "disk":
            for field in ("IOMaximumBandwidth", "IOMaximumIOps"):
                if hc.get(field):
                    warnings.append(f"{field} applies to a container's sandbox disk and this "
                                    "container has a directory sandbox: "
                                    f"{field} discarded.")
                    c.host_config[field] = 0
            self._save(c)
        self.emit_event("container", "create", c)
        return {"Id": cid, "Warnings": warnings}

    def _check_name_free(self, name: str) -> None:
        for other in self.containers.values():
            if other.name == name:
                raise AlreadyExists(f'Conflict. The container name "/{name}" is already in use by '
                                    f'container "{other.id}". You have to remove (or rename) that '
                                    "container to be able to reuse that name.")

    def _unique_random_name(self) -> str:
        used = {c.name for c in self.containers.values()}
        for i in range(100):
            n = random_name(i > 10)
            if n not in used:
                return n
        return "silo_" + secrets.token_hex(6)

    def _write_etc_files(self, c: Container) -> None:
        cfg = c.config
        atomic_write(c.data["HostnamePath"], cfg["Hostname"] + "\n")
        hosts = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                 "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n"
                 "ff02::2\tip6-allrouters\n")
        atomic_write(c.data["HostsPath"], hosts)
        try:
            with open("/etc/resolv.conf") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        kept = [l for l in lines if not (l.startswith("nameserver") and
                                         (" 127." in l or " ::1" in l))]
        atomic_write(c.data["ResolvConfPath"], "\n".join(kept) + "\n")

    # ----- the compute document ----------------------------------------------------------------
    def _document(self, c: Container) -> dict[str, Any]:
        hc = c.host_config
        sec = c.data["Silobox"]["Security"]
        mapped = [
            {"HostPath": c.data["HostnamePath"], "ContainerPath": "/etc/hostname"},
            {"HostPath": c.data["HostsPath"], "ContainerPath": "/etc/hosts"},
            {"HostPath": c.data["ResolvConfPath"], "ContainerPath": "/etc/resolv.conf"},
        ]
        mapped += [{"HostPath": m["Source"], "ContainerPath": m["Destination"],
                    "ReadOnly": not m["RW"]} for m in c.data.get("Mounts") or []]
        if hc.get("Init"):
            mapped.append({"HostPath": self.config.init_binary,
                           "ContainerPath": "/sbin/docker-init", "ReadOnly": True})
        shared = shared_host_namespaces(hc)
        if "ipc" in shared:   # POSIX shared memory lives in /dev/shm: the host's, as on Docker
            mapped.append({"HostPath": "/dev/shm", "ContainerPath": "/dev/shm"})
        res = dict(c.data["Silobox"]["Resources"])
        processor, qos = hcs_settings(hc)
        hyperv = (hc.get("Isolation") or "").lower() == "hyperv"
        return {
            "Owner": "silod", "SchemaVersion": {"Major": 2, "Minor": 1},
            **({"HostingSystem": {"Type": "UtilityVM"}} if hyperv else {}),
            "ShouldTerminateOnLastHandleClosed": False,
            "Container": {
                "GuestOs": {"HostName": c.config["Hostname"]},
                "Storage": {"Layers": self.container_storage_layers(c),
                            "Path": self.sandbox_for(c.id).path,
                            **({"QoS": qos} if qos else {})},
                **({"Processor": processor} if processor else {}),
                "MappedDirectories": mapped,
                "Memory": {"SizeInMB": (res.get("memory") or 0) // 2**20},
                "Networking": {},
                "Linux": {
                    "Resources": res, "CapAdd": hc.get("CapAdd") or [],
                    "CapDrop": hc.get("CapDrop") or [],
                    "Seccomp": sec["Seccomp"], "SeccompUnconfined": sec["SeccompUnconfined"],
                    "NoNewPrivileges": sec["NoNewPrivileges"],
                    "ReadonlyRootfs": bool(hc.get("ReadonlyRootfs")),
                    "Privileged": bool(hc.get("Privileged")),
                    "Rlimits": hc.get("Ulimits") or [],
                    "Domainname": c.config.get("Domainname") or "",
                    "ShmSize": hc.get("ShmSize") or 64 * 1024 * 1024,
                    "Namespaces": [n for n in ("mnt", "uts", "ipc", "net", "cgroup")
                                   if n not in shared],
                    "HostPid": hc.get("PidMode") == "host",
                    "Sysctls": hc.get("Sysctls") or {},
                    "GroupAdd": hc.get("GroupAdd") or [],
                    "OomScoreAdj": hc.get("OomScoreAdj") or None,
                    "DeviceCgroupRules": device_rules(hc),
                    "MaskedPaths": hc.get("MaskedPaths"),
                    "ReadonlyPaths": hc.get("ReadonlyPaths"),
                },
            },
        }

    def _init_params(self, c: Container) -> ProcessParameters:
        cfg = c.config
        argv = [c.data["Path"]] + list(c.data["Args"])
        if c.host_config.get("Init"):
            argv = ["/sbin/docker-init", "--"] + argv
        # dockerd's daemon environment: HOSTNAME, then a legacy link's variables; the
        # container's own Env wins over both
        env = {"HOSTNAME": cfg.get("Hostname") or ""}
        linked = (c.data.get("Silobox") or {}).get("LinkEnv") or []
        for item in [*linked, *cfg["Env"]]:
            k, _, v = item.partition("=")
            env[k] = v
        return ProcessParameters(
            command_args=argv, working_directory=cfg.get("WorkingDir") or "/",
            environment=env, user=cfg.get("User") or "", emulate_console=cfg["Tty"],
            create_stdin_pipe=cfg["OpenStdin"], stdin_once=cfg["StdinOnce"])

    # ----- start / exit ----------------------------------------------------------------------
    async def container_start(self, ref: str) -> None:
        c = self._find(ref)
        try:
            async with self._lock(c.id):
                await self._start(c)
        except NotModified:
            raise
        except BaseException:
            # Docker removes an --rm container whose start failed, too (whatever the error:
            # a link or namespace target that is not running is a 409 but still a failed
            # start), unless it is running or already being removed.
            if c.host_config.get("AutoRemove") and c.id in self.containers \
                    and not c.running and status(c) is not Status.REMOVING:
                await self._remove(c, force=True)
            raise

    async def _start(self, c: Container) -> None:
        check(c, "start")
        self.compute.close_system(c.id)
        try:
            document = self._document(c)
            # Host devices are read at each start (not at recovery: a running one has them).
            document["Container"]["Linux"]["Devices"] = resolve_devices(c.host_config)
            for hook in self.container_hooks:
                await hook.on_start(c, document)
            system = self.compute.create(c.id, document)
        except BaseException:
            for hook in self.container_hooks:
                await hook.on_stop(c)
            # Clients attached before the start (docker run) learn it failed: their streams end.
            for sess in self._pending_attach.pop(c.id, []):
                sess.finish()
            raise
        system.on_exit.append(self._on_exit)
        pending = self._pending_attach.pop(c.id, [])

        async def before_release(shim: Any) -> None:
            for sess in pending:
                await sess.bind_system(system)

        try:
            log = c.host_config.get("LogConfig") or {}
            log_cfg = (log.get("Config") or {}) if log.get("Type") != "none" else {}
            await system.start(self._init_params(c),
                               log_path=None if log.get("Type") == "none" else c.data["LogPath"],
                               log_max_size=S.log_max_size(log_cfg),
                               log_max_files=int(log_cfg.get("max-file") or 1),
                               before_release=before_release if pending else None)
        except BaseException as e:
            if isinstance(e, StartError):
                transition(c, "start_failed", ExitCode=e.exit_code, Error=e.message)
                self._save(c)
            for sess in pending:
                sess.finish()
            self.compute.close_system(c.id)
            for hook in self.container_hooks:
                await hook.on_stop(c)
            raise
        transition(c, "start", Pid=system.pid, StartedAt=system.started_at)
        c.data["Silobox"]["StoppedByUser"] = False
        self._save(c)
        self.emit_event("container", "start", c)
        self._start_health(c, system)
        if c.state.get("Health"):
            self._save(c)

    async def _on_exit(self, system: ComputeSystem) -> None:
        c = self.containers.get(system.id)
        if c is None or system.exit is None:
            return
        ex = system.exit
        self._stop_health(c)
        transition(c, "exit", ExitCode=ex.exit_code, OOMKilled=ex.oom_killed,
                   FinishedAt=ex.finished_at, Error=ex.error)
        self._save(c)
        for hook in self.container_hooks:
            await hook.on_stop(c)
        if ex.oom_killed:
            self.emit_event("container", "oom", c)
        self.emit_event("container", "die", c, {"exitCode": str(ex.exit_code)})
        for fut in self._exit_waiters.pop(c.id, []):
            if not fut.done():
                fut.set_result(ex.exit_code)
        if c.host_config.get("AutoRemove"):
            try:
                await self._remove(c, force=True)
            except Exception:  # the record stays for a manual rm
                pass
        elif self._should_restart(c, ex.exit_code):
            task = asyncio.get_running_loop().create_task(self._restart_later(c))
            self._restarts[c.id] = task
            self._restart_tasks.add(task)
            task.add_done_callback(self._restart_tasks.discard)

    def _cancel_restart(self, c: Container) -> bool:
        """A user's stop or kill between two restarts: no more restarts; True if one was due."""
        task = self._restarts.pop(c.id, None)
        if task is None:
            return False
        task.cancel()
        transition(c, "cancel_restart")
        self._save(c)
        return True

    async def _stop_restarts(self) -> None:
        """silod is stopping: no policy restart may start a container while its networks and
        storage go away. Those waiting stay 'restarting' (recovery decides again at the next
        start); a start already under way finishes first."""
        self._closing = True
        for task in self._restarts.values():
            task.cancel()
        self._restarts.clear()
        if self._restart_tasks:
            await asyncio.wait(list(self._restart_tasks), timeout=30)

    def _should_restart(self, c: Container, exit_code: int) -> bool:
        """The restart policy, as Docker applies it after an exit nobody asked for."""
        rp = c.host_config.get("RestartPolicy") or {}
        name = rp.get("Name") or "no"
        if name == "no" or c.data["Silobox"].get("StoppedByUser"):
            return False
        if name == "on-failure":
            limit = rp.get("MaximumRetryCount") or 0
            return exit_code != 0 and (limit == 0 or c.data.get("RestartCount", 0) < limit)
        return name in ("always", "unless-stopped")

    async def _restart_later(self, c: Container) -> None:
        """Restart with Docker's back-off: 100 ms doubling, reset after 10 s of running."""
        started = parse_iso(c.state.get("StartedAt", ""))
        finished = parse_iso(c.state.get("FinishedAt", ""))
        backoff = self._backoff.get(c.id, 0.05)
        backoff = 0.1 if finished - started > 10 else min(backoff * 2, 60.0)
        self._backoff[c.id] = backoff
        if not allowed(c, "schedule_restart"):   # started or removed since it exited
            self._restarts.pop(c.id, None)
            return
        transition(c, "schedule_restart")
        self._save(c)
        try:
            await asyncio.sleep(backoff)
        finally:
            self._restarts.pop(c.id, None)
        try:
            async with self._lock(c.id):
                if c.id not in self.containers or c.running or self._closing:
                    return
                if c.data["Silobox"].get("StoppedByUser"):   # stopped while it waited
                    if allowed(c, "cancel_restart"):
                        transition(c, "cancel_restart")
                        self._save(c)
                    return
                c.data["RestartCount"] = c.data.get("RestartCount", 0) + 1
                await self._start(c)
        except Exception as e:  # recorded on the container; the policy tries again on exit
            if c.id in self.containers and allowed(c, "restart_failed"):
                transition(c, "restart_failed", Error=str(e))
                self._save(c)

    def system_of(self, c: Container) -> ComputeSystem | None:
        try:
            return self.compute.open(c.id)
        except NotFound:
            return None

    # ----- stop / kill / restart ----------------------------------------------------------
    async def container_stop(self, ref: str, timeout: int | None = None,
                             signal: str | None = None) -> None:
        c = self._find(ref)
        async with self._lock(c.id):   # a start in progress (a policy restart) finishes first
            self._stopped_by_user(c)
            if self._cancel_restart(c):
                return
            system = self.system_of(c)
            if not c.running or not is_live(system):
                raise refusal(c, "stop")
            if timeout is None:
                timeout = c.config.get("StopTimeout")
                if timeout is None:
                    timeout = self.config.default_stop_timeout
            sig = S.parse_signal(signal or c.config.get("StopSignal"))
            # Docker's events for a stop: kill (the stop signal), die, then stop.
            self.emit_event("container", "kill", c, {"signal": str(sig)})
            await system.shutdown(float(timeout), sig)
            await self._settled(c)
        self.emit_event("container", "stop", c)

    def _stopped_by_user(self, c: Container) -> None:
        """A stop or kill from a user: the restart policy no longer applies until a start."""
        c.data["Silobox"]["StoppedByUser"] = True
        self._save(c)

    async def _settled(self, c: Container) -> None:
        """Wait until the exit callback has recorded the exit (it runs as a task)."""
        for _ in range(200):
            if not c.running:
                return
            await asyncio.sleep(0.005)

    async def container_kill(self, ref: str, signal: str = "SIGKILL") -> None:
        c = self._find(ref)
        sig = S.parse_signal(signal or "SIGKILL", _signal.SIGKILL)
        async with self._lock(c.id):
            system = self.system_of(c)
            live = c.running and is_live(system)
            # between a policy's back-off and its start (out of _restarts, waiting for this
            # lock) the container is still "restarting": the kill must stop that start too
            restarting = c.id in self._restarts or status(c) is Status.RESTARTING
            if not live and not restarting:
                raise refusal(c, "kill", ref=ref)
            self._stopped_by_user(c)
            if self._cancel_restart(c) or not live:
                return
            if sig == _signal.SIGKILL:
                await system.terminate()  # type: ignore[union-attr]
                await self._settled(c)
            else:
                await system.signal(sig)  # type: ignore[union-attr]
        self.emit_event("container", "kill", c, {"signal": str(sig)})

    async def container_restart(self, ref: str, timeout: int | None = None,
                                signal: str | None = None) -> None:
        c = self._find(ref)
        try:
            await self.container_stop(ref, timeout, signal)
        except NotModified:
            pass
        async with self._lock(c.id):
            await self._start(c)
        self.emit_event("container", "restart", c)

    # ----- wait ------------------------------------------------------------------------------
    async def container_wait(self, ref: str, condition: str = "not-running") -> dict[str, Any]:
        condition = condition or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidArgument(f"invalid condition: \"{condition}\"")
        c = self._find(ref)
        loop = asyncio.get_running_loop()
        if condition == "removed":
            fut = loop.create_future()
            self._removed_waiters.setdefault(c.id, []).append(fut)
            code = await fut
        else:
            if condition == "not-running" and not c.running:
                return {"StatusCode": c.state["ExitCode"], "Error": None}
            fut = loop.create_future()
            self._exit_waiters.setdefault(c.id, []).append(fut)
            code = await fut
        return {"StatusCode": code, "Error": None}

    # ----- remove ----------------------------------------------------------------------------
    async def container_remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        c = self._find(ref)
        if not force:
            check(c, "remove")
        c.remove_volumes = volumes   # type: ignore[attr-defined]  # read by the storage hook
        await self._remove(c, force)

    async def _remove(self, c: Container, force: bool) -> None:
        pending = self._restarts.pop(c.id, None)
        if pending is not None:
            pending.cancel()
        async with self._lock(c.id):
            if c.id not in self.containers:
                return
            system = self.system_of(c)
            c.data["Silobox"]["StoppedByUser"] = True   # no policy restart during removal
            if is_live(system):
                await system.terminate()
                await self._settled(c)     # the exit is recorded (and "die" sent) first
            transition(c, "begin_removal")
            self.compute.close_system(c.id)
            for hook in self.container_hooks:
                await hook.on_remove(c)
            self.sandbox_for(c.id).remove()
            shutil.rmtree(self._container_dir(c.id), ignore_errors=True)
            with self.db.tx():
                self.db.execute("DELETE FROM containers WHERE id = ?", (c.id,))
            del self.containers[c.id]
            self._locks.pop(c.id, None)
            for eid in [e for e, x in self.execs.items() if x["ContainerID"] == c.id]:
                self.execs.pop(eid, None)
            code = c.state.get("ExitCode", 0)
            for fut in self._removed_waiters.pop(c.id, []) + self._exit_waiters.pop(c.id, []):
                if not fut.done():
                    fut.set_result(code)
            self.emit_event("container", "destroy", c)

    # ----- update / prune ------------------------------------------------------------------
    _UPDATABLE = ("Memory", "MemorySwap", "MemoryReservation", "NanoCpus", "CpuShares",
                  "CpuPeriod", "CpuQuota", "CpusetCpus", "CpusetMems", "PidsLimit",
                  "BlkioWeight", "CpuCount", "CpuPercent", "IOMaximumBandwidth",
                  "IOMaximumIOps")

    async def container_update(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        """``docker update``: new limits, applied live to the job object (HCS Modify)."""
        c = self._find(ref)
        if not isinstance(body, dict):
            raise InvalidArgument("update config must be a JSON object")
        hc = dict(c.host_config)
        for key in self._UPDATABLE:
            if body.get(key) not in (None, 0, ""):
                hc[key] = body[key]
        S.check_create_body({"Image": "-", "HostConfig": hc})
        warnings = check_blkio(hc) + check_windows_cpu(hc)
        if (hc.get("IOMaximumBandwidth") or hc.get("IOMaximumIOps")) \
                and self.sandbox_for(c.id).kind != "disk":
            raise InvalidArgument("IOMaximumBandwidth and IOMaximumIOps apply to a container's "
                                  "sandbox disk and this container has a directory sandbox")
        if "RestartPolicy" in body and body["RestartPolicy"] is not None:
            if hc.get("AutoRemove") and (body["RestartPolicy"].get("Name") or "no") != "no":
                raise InvalidArgument("Restart policy cannot be updated because AutoRemove is "
                                      "enabled for the container")
            hc["RestartPolicy"] = S.parse_restart_policy(body["RestartPolicy"], False)
        resources = S.resources_from_hostconfig(hc)
        system = self.system_of(c)
        if is_live(system):
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, system.modify, {
                "ResourcePath": "Container/Linux/Resources", "RequestType": "Update",
                "Settings": resources})
            # Windows' controls go through HCS's own resource paths (ModifySettingRequest).
            old_processor, old_qos = hcs_settings(c.host_config)
            processor, qos = hcs_settings(hc)
            if processor != old_processor:
                await loop.run_in_executor(None, system.modify, {
                    "ResourcePath": "Container/Processor", "RequestType": "Update",
                    "Settings": processor})
            if qos != old_qos:
                await loop.run_in_executor(None, system.modify, {
                    "ResourcePath": "Container/Storage/QoS", "RequestType": "Update",
                    "Settings": {"IopsMaximum": qos.get("IopsMaximum", 0),
                                 "BandwidthMaximum": qos.get("BandwidthMaximum", 0)}})
        c.data["HostConfig"] = hc
        c.data["Silobox"]["Resources"] = resources
        self._save(c)
        self.emit_event("container", "update", c)
        return {"Warnings": warnings}

    async def container_prune(self, filters: dict[str, list[str]] | None = None
                              ) -> dict[str, Any]:
        """Remove every stopped container (matching the label/until filters)."""
        filters = filters or {}
        for k in filters:
            if k not in ("label", "label!", "until"):
                raise InvalidArgument(f"invalid filter '{k}'")
        until = 0.0
        if filters.get("until"):
            v = filters["until"][0]
            try:
                until = parse_until(v)
            except ValueError:
                raise InvalidArgument(f"invalid filter 'until={v}'") from None
        deleted, reclaimed = [], 0
        for c in list(self.containers.values()):
            if c.running or status(c) in (Status.RESTARTING, Status.REMOVING):
                continue
            labels = c.config.get("Labels")
            if filters.get("label") and not labels_match(labels, filters["label"]):
                continue
            if labels_match(labels, filters.get("label!", []), any_of=True):
                continue
            if until and parse_iso(c.data["Created"]) >= until:
                continue
            size = self.sandbox_for(c.id).used_bytes()
            await self._remove(c, force=False)
            deleted.append(c.id)
            reclaimed += size
        return {"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    # ----- pause / rename / resize -----------------------------------------------------------
    async def container_pause(self, ref: str) -> None:
        await self._freeze(self._find(ref), "pause")

    async def container_unpause(self, ref: str) -> None:
        await self._freeze(self._find(ref), "unpause")

    async def _freeze(self, c: Container, verb: str) -> None:
        """Pause or unpause: under the container's lock, so a stop or a policy restart does not
        interleave with the freezer; the compute system waits for the freezer off the loop."""
        async with self._lock(c.id):
            system = self.system_of(c)
            check(c, verb)
            if system is None:
                raise refusal(c, verb)
            try:
                if verb == "pause":
                    await system.pause()
                else:
                    await system.resume()
            except NotFound:   # its job object went with its last process: it has just ended
                raise NotRunning(f"Container {c.id} is not running") from None
            transition(c, verb)
            self._save(c)
        self.emit_event("container", verb, c)

    async def container_rename(self, ref: str, new_name: str) -> None:
        c = self._find(ref)
        if not new_name:
            raise InvalidArgument("Neither old nor new names may be empty")
        new = S.validate_name(new_name)
        if new == c.name:
            raise InvalidArgument("Renaming a container with the same name as its current name")
        self._check_name_free(new)
        old = c.name
        c.data["Name"] = "/" + new
        try:
            self._save(c)
        except Exception:
            c.data["Name"] = "/" + old
            raise
        self.emit_event("container", "rename", c, {"oldName": "/" + old})

    async def container_resize(self, ref: str, height: int, width: int) -> None:
        c = self._find(ref)
        system = self.system_of(c)
        check(c, "resize")
        if system is None:
            raise refusal(c, "resize")
        if not c.config["Tty"]:
            return
        await system.resize_console(height, width)

    # ----- inspect / list ---------------------------------------------------------------------
    async def container_inspect(self, ref: str, size: bool = False) -> dict[str, Any]:
        c = self._find(ref)
        out = {k: v for k, v in c.data.items() if k != "Silobox"}
        out["ExecIDs"] = [e for e, x in self.execs.items() if x["ContainerID"] == c.id] or None
        hc = dict(out["HostConfig"])
        out["HostConfig"] = hc
        system = self.system_of(c)
        out["Silobox"] = {"ComputeSystem": system.state.value if system else None,
                          "JobObject": f"/{self.config.cgroup_parent}/{c.id}"}
        if size:
            out["SizeRw"] = self.sandbox_for(c.id).used_bytes()
            out["SizeRootFs"] = out["SizeRw"]
        for hook in self.container_hooks:
            hook.on_inspect(c, out)
        return out

    def _status_text(self, c: Container) -> str:
        st = c.state
        now = status(c)
        if now in LIVE:
            txt = "Up " + human_duration(time.time() - parse_iso(st["StartedAt"]))
            if now is Status.PAUSED:
                return txt + " (Paused)"
            health = (st.get("Health") or {}).get("Status")
            if health:
                txt += " (health: starting)" if health == "starting" else f" ({health})"
            return txt
        if now is Status.CREATED:
            return "Created"
        if now is Status.REMOVING:
            return "Removal In Progress"
        fin = parse_iso(st["FinishedAt"])
        return f"Exited ({st['ExitCode']}) {human_duration(time.time() - fin)} ago"

    async def container_list(self, all: bool = False, limit: int = -1, size: bool = False,
                             filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        filters = filters or {}
        known = {"id", "name", "status", "label", "exited", "ancestor", "before", "since",
                 "isolation", "health", "network", "volume", "publish", "expose", "is-task"}
        for k in filters:
            if k not in known:
                raise InvalidArgument(f"invalid filter '{k}'")
        for s in filters.get("status", []):
            if s not in {x.value for x in Status}:
                raise InvalidArgument(f"invalid filter 'status={s}'")
        items = sorted(self.containers.values(), key=lambda c: c.data["Created"], reverse=True)
        out = []
        resolved: dict[str, str] = {}   # image name → id, once per listing
        for c in items:
            if not all and not c.running and not filters.get("status") and \
                    not filters.get("exited"):
                continue
            if not self._match(c, filters):
                continue
            out.append(self._summary(c, size, resolved))
        if limit is not None and limit > 0:
            out = out[:limit]
        return out

    def _match(self, c: Container, f: dict[str, list[str]]) -> bool:
        if f.get("id") and not any(c.id.startswith(v) for v in f["id"]):
            return False
        if f.get("name") and not any(v.lstrip("/") in c.name for v in f["name"]):
            return False
        if f.get("status") and c.state["Status"] not in f["status"]:
            return False
        if f.get("exited"):
            if status(c) is not Status.EXITED or str(c.state["ExitCode"]) not in f["exited"]:
                return False
        if f.get("label") and not labels_match(c.config.get("Labels"), f["label"]):
            return False
        if f.get("ancestor"):
            ok = False
            for v in f["ancestor"]:
                try:
                    if self.images.resolve(v).id == c.data["Image"]:
                        ok = True
                except NotFound:
                    pass
            if not ok:
                return False
        isolation = c.host_config.get("Isolation") or "default"
        if f.get("isolation") and isolation not in f["isolation"]:
            return False
        if f.get("health"):
            if (c.state.get("Health") or {}).get("Status", "none") not in f["health"]:
                return False
        return True

    def _summary(self, c: Container, size: bool,
                 resolved: dict[str, str] | None = None) -> dict[str, Any]:
        argv = [c.data["Path"]] + c.data["Args"]
        d = {
            "Id": c.id, "Names": ["/" + c.name], "Image": self.image_shown(c, resolved),
            "ImageID": c.data["Image"], "Command": " ".join(argv),
            "Created": int(parse_iso(c.data["Created"])), "Ports": [],
            "Labels": c.config.get("Labels") or {}, "State": c.state["Status"],
            "Status": self._status_text(c),
            "HostConfig": {"NetworkMode": c.host_config.get("NetworkMode", "none")},
            "NetworkSettings": {"Networks": shown_networks(c)},
            "Mounts": c.data.get("Mounts") or [],
        }
        if size:
            d["SizeRw"] = self.sandbox_for(c.id).used_bytes()
        return d

    # ----- logs ------------------------------------------------------------------------------
    async def container_logs(self, ref: str, *, stdout: bool = True, stderr: bool = True,
                             follow: bool = False, since: float = 0, until: float = 0,
                             timestamps: bool = False, tail: str = "all"
                             ) -> tuple[bool, AsyncIterator[tuple[int, bytes]]]:
        c = self._find(ref)
        if not (stdout or stderr):
            raise InvalidArgument("You must choose at least one stream")

        def still_running() -> bool:
            return c.id in self.containers and c.running

        it = read_log(c.data["LogPath"], stdout=stdout, stderr=stderr, follow=follow,
                      since=since, until=until, timestamps=timestamps, tail=tail,
                      running=still_running)
        return bool(c.config["Tty"]), it

    # ----- attach ----------------------------------------------------------------------------
    async def container_attach(self, ref: str, *, stdin: bool, stdout: bool, stderr: bool,
                               logs: bool, stream: bool) -> AttachSession:
        c = self._find(ref)
        sess = AttachSession(tty=c.config["Tty"], stdin=stdin and c.config["OpenStdin"],
                             stdout=stdout, stderr=stderr)
        if logs:
            _tty, it = await self.container_logs(c.id, stdout=stdout, stderr=stderr)
            await sess.preload(it)
        if not stream:
            sess.finish()
            return sess
        system = self.system_of(c)
        if c.running and is_live(system):
            await sess.bind_system(system)
        elif status(c) in (Status.CREATED, Status.EXITED):
            self._pending_attach.setdefault(c.id, []).append(sess)
        else:
            sess.finish()
        return sess

    # ----- exec ------------------------------------------------------------------------------
    async def exec_create(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        c = self._find(ref)
        if not isinstance(body, dict):
            raise InvalidArgument("exec config must be a JSON object")
        cmd = body.get("Cmd")
        if isinstance(cmd, str):
            cmd = [cmd]
        if not isinstance(cmd, list) or not cmd or not all(isinstance(x, str) for x in cmd):
            raise InvalidArgument("No exec command specified")
        env = body.get("Env") or []
        if not isinstance(env, list) or not all(isinstance(x, str) for x in env):
            raise InvalidArgument("Env: expected a list of strings")
        check(c, "exec")
        eid = secrets.token_hex(32)
        size = body.get("ConsoleSize")
        self.execs[eid] = {
            "ID": eid, "Running": False, "ExitCode": None, "ContainerID": c.id,
            "ProcessConfig": {"tty": bool(body.get("Tty")), "entrypoint": cmd[0],
                              "arguments": cmd[1:], "privileged": bool(body.get("Privileged")),
                              "user": body.get("User") or ""},
            "OpenStdin": bool(body.get("AttachStdin")),
            "OpenStderr": bool(body.get("AttachStderr", True)),
            "OpenStdout": bool(body.get("AttachStdout", True)),
            "CanRemove": False, "DetachKeys": body.get("DetachKeys") or "", "Pid": 0,
            "_env": env, "_cwd": body.get("WorkingDir") or "", "_size": size,
        }
        # Docker's actions name the command: "exec_create: sh -c date".
        self.emit_event("container", f"exec_create: {' '.join(cmd)}", c, {"execID": eid})
        return {"Id": eid}

    def _find_exec(self, exec_id: str) -> dict[str, Any]:
        x = self.execs.get(exec_id)
        if x is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        return x

    async def exec_start(self, exec_id: str, detach: bool = False,
                         tty: bool | None = None) -> ExecSession | FailedExecStart | None:
        x = self._find_exec(exec_id)
        if x["Running"] or x["ExitCode"] is not None:
            raise Conflict(f"exec {exec_id} has already been started")
        c = self._find(x["ContainerID"])
        system = self.system_of(c)
        if system is None or from_compute(system.state) is not Status.RUNNING:
            raise Conflict(f"Container {c.id} is not running")
        pc = x["ProcessConfig"]
        # As dockerd: the create's Tty gives the process its pty; the start's Tty only says
        # whether the stream is raw or multiplexed (docker-py sends Tty false by default).
        use_tty = pc["tty"]
        framed_raw = pc["tty"] if tty is None else bool(tty)
        env = {"HOSTNAME": c.config.get("Hostname") or ""}   # as dockerd's exec
        for item in S.merge_env(c.config["Env"], x["_env"]):
            k, _, v = item.partition("=")
            env[k] = v
        size = x.get("_size")
        params = ProcessParameters(
            command_args=[pc["entrypoint"]] + pc["arguments"],
            working_directory=x["_cwd"] or c.config.get("WorkingDir") or "/",
            environment=env, user=pc["user"] or c.config.get("User") or "",
            emulate_console=use_tty, create_stdin_pipe=x["OpenStdin"] and not detach,
            console_size=(int(size[0]), int(size[1])) if size else None)
        x["Running"] = True
        try:
            proc = await system.create_process(exec_id, params, pc["privileged"])
        except InvalidArgument as e:   # e.g. an unknown user: in the stream, as dockerd does
            x["Running"] = False
            x["ExitCode"] = 126
            if detach:
                raise
            return FailedExecStart(e.message, tty=framed_raw)
        except BaseException:
            x["Running"] = False
            x["ExitCode"] = 126
            raise
        x["Pid"] = proc.pid
        if proc.start_error is not None:
            x["Running"] = False
            x["ExitCode"] = proc.start_error.exit_code
            await proc.stream.close()
            if detach:
                raise proc.start_error
            # As dockerd: the stream is already the client's, the error is its output
            return FailedExecStart(proc.start_error.message, tty=framed_raw)
        command = " ".join([pc["entrypoint"]] + pc["arguments"])
        self.emit_event("container", f"exec_start: {command}", c, {"execID": exec_id})

        def died(record: dict[str, Any]) -> None:
            self.emit_event("container", "exec_die", c,
                            {"execID": exec_id, "exitCode": str(record["ExitCode"])})
        sess = ExecSession(proc, x, tty=framed_raw, stdin=x["OpenStdin"], on_exit=died)
        if detach:
            asyncio.get_running_loop().create_task(sess.drain())
            return None
        return sess

    async def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        x = self._find_exec(exec_id)
        return {k: v for k, v in x.items() if not k.startswith("_")}

    async def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        x = self._find_exec(exec_id)
        if not x["Running"]:
            raise Conflict(f"exec {exec_id} is not running")
        c = self._find(x["ContainerID"])
        system = self.system_of(c)
        if system is None:
            raise Conflict(f"Container {c.id} is not running")
        await system.resize_console(height, width, target=exec_id)

    # ----- recovery ------------------------------------------------------------------------------
    async def recover_containers(self) -> None:
        """After a (re)start of silod: re-attach to the shims of containers still running."""
        for c in list(self.containers.values()):
            if status(c) is Status.REMOVING:
                await self._remove(c, force=True)
                continue
            if status(c) is Status.RESTARTING:   # silod stopped during a policy back-off:
                transition(c, "cancel_restart")   # the policy below decides again
                self._save(c)
            if not c.running:
                continue
            system = self.compute.create(c.id, self._document(c))
            system.on_exit.append(self._on_exit)
            await system.reattach()
            if is_live(system):
                transition(c, "recover", to=from_compute(system.state), Pid=system.pid)
                self._save(c)
                for hook in self.container_hooks:
                    await hook.on_recover(c)
            else:
                await self._on_exit(system)
        self._remove_orphans()
        for c in list(self.containers.values()):
            if c.running:
                continue
            name = (c.host_config.get("RestartPolicy") or {}).get("Name")
            if name == "always" or (name == "unless-stopped"
                                    and not c.data["Silobox"].get("StoppedByUser")):
                try:
                    async with self._lock(c.id):
                        await self._start(c)
                except Exception as e:  # keep going: one bad container must not stop silod
                    transition(c, "record_error", Error=str(e))
                    self._save(c)

    def _remove_orphans(self) -> None:
        """Reconcile the host with the store: job objects and shim state nobody owns go."""
        from silobox.kernel.jobobject import JobObject, list_job_objects
        live = {cid for cid, s in self.compute.systems.items()
                if is_live(s)}
        for name in list_job_objects(self.config.cgroup_parent):
            if name in live:
                continue
            job = JobObject(name, self.config.cgroup_parent)
            job.kill_all()
            job.wait_empty(5.0)
            job.delete()
        try:
            entries = os.listdir(self.config.compute_dir)
        except FileNotFoundError:
            entries = []
        for name in entries:
            if name not in live:
                shutil.rmtree(os.path.join(self.config.compute_dir, name), ignore_errors=True)
