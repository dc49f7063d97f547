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
from typing import Any, AsyncIterator

from silobox.atomic import atomic_write
from silobox.compute.system import ComputeSystem, StartError
from silobox.engine import restart
from silobox.engine import spec as S
from silobox.engine.devices import check_device_requests, resolve_devices
from silobox.engine.document import compute_document, init_params
from silobox.engine.execs import ExecService
from silobox.engine.health import parse_healthcheck
from silobox.engine.hooks import ContainerHook
from silobox.engine.host import Host
from silobox.engine.hostconfig import (check_blkio, check_host_config, check_windows_cpu,
                                      hcs_settings)
from silobox.engine.logs import read_log
from silobox.engine.sessions import AttachSession
from silobox.engine.state import (Status, allowed, check, from_compute,
                                  is_live, refusal, status, system_of, transition)
from silobox.engine.record import Container
from silobox.engine.store import ContainerStore
from silobox.errors import InvalidArgument, NotFound, NotModified, NotRunning
from silobox.timeutil import now_iso, parse_iso, parse_until
from silobox.filters import labels_match

class ContainerService:
    """Docker's container verbs (``api.backend.ContainerBackend``) over compute systems.

    ``store`` owns the records and their locks; ``compute`` runs them; ``storage`` gives each
    its sandbox and image layers; ``hooks`` (volumes, networks, links, shared namespaces) take
    part at each point of a container's life, in their order; ``health`` runs health checks."""

    def __init__(self, config: Any, store: ContainerStore, compute: Any, images: Any,
                 image_service: Any, storage: Any, hooks: list[ContainerHook], events: Any,
                 health: Any, execs: ExecService, host: Host) -> None:
        self.config = config
        self.store = store
        self.compute = compute
        self.images = images                # the image store (``ancestor`` filters)
        self.image_service = image_service  # a new container's image, names shown in lists
        self.storage = storage
        self.hooks = hooks
        self.events = events
        self.health = health
        self.execs = execs
        self.host = host
        self._pending_attach: dict[str, list[AttachSession]] = {}
        self._exit_waiters: dict[str, list[asyncio.Future]] = {}
        self._exiting: set[str] = set()     # exit seen, "die" not yet sent
        self._removed_waiters: dict[str, list[asyncio.Future]] = {}
        self._backoff: dict[str, float] = {}
        self._restarts: dict[str, asyncio.Task] = {}   # policy restarts still in their back-off
        self._restart_tasks: set[asyncio.Task] = set()   # ... and those already starting
        self._closing = False

    # ----- create ---------------------------------------------------------------------------
    async def container_create(self, name: str | None, body: dict[str, Any],
                               platform: str = "") -> dict[str, Any]:
        body = S.check_create_body(body)
        if platform:
            if not S.runs_here(platform):
                raise InvalidArgument(f"image with reference {body['Image']} was found but does "
                                      f"not match the specified platform: wanted {platform}")
        if name:
            name = S.validate_name(name)
            self.store.check_name_free(name)
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
        if hc.get("Init") and not self.host.exists(self.config.init_binary):
            raise InvalidArgument(f"--init needs {self.config.init_binary}: "
                                  "apt-get install tini")
        image = await self.image_service.image_for_create(body["Image"])
        icfg = image.config.get("config") or {}
        entry, cmd = S.command_of(body, icfg)
        argv = entry + cmd
        if not argv:
            raise InvalidArgument("No command specified")
        cid = secrets.token_hex(32)
        if not name:
            name = self.store.unique_random_name()
        if hc.get("UTSMode") == "host":
            if body.get("Hostname"):
                raise InvalidArgument("Conflicting options: hostname and the UTS mode")
            hostname = self.host.hostname()   # the host's, as dockerd shows it
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
        cdir = self.store.directory(cid)
        c = Container(
            id=cid, name=name, image=image.id, config=config, host_config=host_config,
            created=now_iso(), path=argv[0], args=argv[1:], mounts=mounts,
            resolv_conf_path=os.path.join(cdir, "resolv.conf"),
            hostname_path=os.path.join(cdir, "hostname"), hosts_path=os.path.join(cdir, "hosts"),
            log_path=os.path.join(cdir, f"{cid}-json.log"),
            graph_driver={"Name": "windowsfilter", "Data": {"dir": os.path.join(cdir, "sandbox")}},
            network_settings={"Bridge": "", "SandboxID": "", "SandboxKey": "", "Ports": {},
                              "Networks": {"none": {"NetworkID": "", "EndpointID": "",
                                                    "Gateway": "", "IPAddress": "",
                                                    "IPPrefixLen": 0, "MacAddress": ""}}},
            silobox={"Resources": resources, "Security": {
                "Seccomp": sec["seccomp"], "SeccompUnconfined": sec["seccomp_unconfined"],
                "NoNewPrivileges": sec["no_new_privileges"]}})
        done: list[ContainerHook] = []
        try:
            for hook in self.hooks:
                hook.on_create(c, body)
                done.append(hook)
            os.makedirs(cdir, mode=0o710, exist_ok=True)
            self._write_etc_files(c)
            self.storage.sandbox_for(cid).create()
            self.store.add(c)
        except BaseException:
            for hook in reversed(done):
                hook.undo_create(c)
            self.storage.sandbox_for(cid).remove()
            shutil.rmtree(cdir, ignore_errors=True)
            raise
        if (hc.get("IOMaximumBandwidth") or hc.get("IOMaximumIOps")) \
                and self.storage.sandbox_for(cid).kind != "disk":
            for field in ("IOMaximumBandwidth", "IOMaximumIOps"):
                if hc.get(field):
                    warnings.append(f"{field} applies to a container's sandbox disk and this "
                                    "container has a directory sandbox: "
                                    f"{field} discarded.")
                    c.host_config[field] = 0
            self.store.save(c)
        self.events.emit_event("container", "create", c)
        return {"Id": cid, "Warnings": warnings}

    def _write_etc_files(self, c: Container) -> None:
        """hostname, hosts, resolv.conf: derived from the record, so written without fsync."""
        cfg = c.config
        atomic_write(c.hostname_path, cfg["Hostname"] + "\n", durable=False)
        hosts = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                 "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n"
                 "ff02::2\tip6-allrouters\n")
        atomic_write(c.hosts_path, hosts, durable=False)
        try:
            with open("/etc/resolv.conf") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        kept = [l for l in lines if not (l.startswith("nameserver") and
                                         (" 127." in l or " ::1" in l))]
        atomic_write(c.resolv_conf_path, "\n".join(kept) + "\n", durable=False)

    def _document(self, c: Container) -> dict[str, Any]:
        return compute_document(c, self.config.init_binary,
                                self.storage.container_storage_layers(c),
                                self.storage.sandbox_for(c.id).path)

    # ----- start / exit ----------------------------------------------------------------------
    async def container_start(self, ref: str) -> None:
        c = self.store.find(ref)
        try:
            async with self.store.lock(c.id):
                await self._start(c)
        except NotModified:
            raise
        except BaseException:
            # Docker removes an --rm container whose start failed, too (whatever the error:
            # a link or namespace target that is not running is a 409 but still a failed
            # start), unless it is running or already being removed.
            if c.host_config.get("AutoRemove") and c.id in self.store \
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
            for hook in self.hooks:
                await hook.on_start(c, document)
            system = self.compute.create(c.id, document)
        except BaseException:
            for hook in self.hooks:
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
            await system.start(init_params(c),
                               log_path=None if log.get("Type") == "none" else c.log_path,
                               log_max_size=S.log_max_size(log_cfg),
                               log_max_files=int(log_cfg.get("max-file") or 1),
                               before_release=before_release if pending else None)
        except BaseException as e:
            if isinstance(e, StartError):
                transition(c, "start_failed", ExitCode=e.exit_code, Error=e.message)
                self.store.save(c)
            for sess in pending:
                sess.finish()
            self.compute.close_system(c.id)
            for hook in self.hooks:
                await hook.on_stop(c)
            raise
        transition(c, "start", Pid=system.pid, StartedAt=system.started_at)
        c.silobox["StoppedByUser"] = False
        self.store.save(c)
        self.events.emit_event("container", "start", c)
        self.health.start(c, system)
        if c.state.get("Health"):
            self.store.save(c)

    async def _on_exit(self, system: ComputeSystem) -> None:
        c = self.store.get(system.id)
        if c is None or system.exit is None:
            return
        ex = system.exit
        self.health.stop(c)
        transition(c, "exit", ExitCode=ex.exit_code, OOMKilled=ex.oom_killed,
                   FinishedAt=ex.finished_at, Error=ex.error)
        self.store.save(c)
        self._exiting.add(c.id)
        try:
            for hook in self.hooks:
                await hook.on_stop(c)
        finally:
            self._exiting.discard(c.id)
            if ex.oom_killed:
                self.events.emit_event("container", "oom", c)
            self.events.emit_event("container", "die", c, {"exitCode": str(ex.exit_code)})
        for fut in self._exit_waiters.pop(c.id, []):
            if not fut.done():
                fut.set_result(ex.exit_code)
        if c.host_config.get("AutoRemove"):
            try:
                await self._remove(c, force=True)
            except Exception:  # the record stays for a manual rm
                pass
        elif restart.restart_after_exit(c, ex.exit_code):
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
        self.store.save(c)
        return True

    async def stop_restarts(self) -> None:
        """silod is stopping: no policy restart may start a container while its networks and
        storage go away. Those waiting stay 'restarting' (recovery decides again at the next
        start); a start already under way finishes first."""
        self._closing = True
        for task in self._restarts.values():
            task.cancel()
        self._restarts.clear()
        if self._restart_tasks:
            await asyncio.wait(list(self._restart_tasks), timeout=30)

    async def _restart_later(self, c: Container) -> None:
        """Restart with Docker's back-off: 100 ms doubling, reset after 10 s of running."""
        started = parse_iso(c.state.get("StartedAt", ""))
        finished = parse_iso(c.state.get("FinishedAt", ""))
        backoff = restart.next_backoff(self._backoff.get(c.id), finished - started)
        self._backoff[c.id] = backoff
        if not allowed(c, "schedule_restart"):   # started or removed since it exited
            self._restarts.pop(c.id, None)
            return
        transition(c, "schedule_restart")
        self.store.save(c)
        try:
            await asyncio.sleep(backoff)
        finally:
            self._restarts.pop(c.id, None)
        try:
            async with self.store.lock(c.id):
                if c.id not in self.store or c.running or self._closing:
                    return
                if c.stopped_by_user:   # stopped while it waited
                    if allowed(c, "cancel_restart"):
                        transition(c, "cancel_restart")
                        self.store.save(c)
                    return
                c.restart_count += 1
                await self._start(c)
        except Exception as e:  # recorded on the container; the policy tries again on exit
            if c.id in self.store and allowed(c, "restart_failed"):
                transition(c, "restart_failed", Error=str(e))
                self.store.save(c)

    def system_of(self, c: Container) -> ComputeSystem | None:
        return system_of(self.compute, c.id)

    # ----- stop / kill / restart ----------------------------------------------------------
    async def container_stop(self, ref: str, timeout: int | None = None,
                             signal: str | None = None) -> None:
        c = self.store.find(ref)
        async with self.store.lock(c.id):   # a start in progress (a policy restart) finishes first
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
            self.events.emit_event("container", "kill", c, {"signal": str(sig)})
            await system.shutdown(float(timeout), sig)
            await self._settled(c)
        self.events.emit_event("container", "stop", c)

    def _stopped_by_user(self, c: Container) -> None:
        """A stop or kill from a user: the restart policy no longer applies until a start."""
        c.silobox["StoppedByUser"] = True
        self.store.save(c)

    async def _settled(self, c: Container, timeout: float = 30.0) -> None:
        """Wait until the exit callback (a task) has recorded the exit, run the stop hooks and
        sent "die": Docker's stop sends kill, die, then stop, whatever the hooks cost."""
        if not c.running and c.id not in self._exiting:
            return
        fut = asyncio.get_running_loop().create_future()
        self._exit_waiters.setdefault(c.id, []).append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            waiters = self._exit_waiters.get(c.id)
            if waiters and fut in waiters:
                waiters.remove(fut)

    async def container_kill(self, ref: str, signal: str = "SIGKILL") -> None:
        c = self.store.find(ref)
        sig = S.parse_signal(signal or "SIGKILL", _signal.SIGKILL)
        async with self.store.lock(c.id):
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
        self.events.emit_event("container", "kill", c, {"signal": str(sig)})

    async def container_restart(self, ref: str, timeout: int | None = None,
                                signal: str | None = None) -> None:
        c = self.store.find(ref)
        try:
            await self.container_stop(ref, timeout, signal)
        except NotModified:
            pass
        async with self.store.lock(c.id):
            await self._start(c)
        self.events.emit_event("container", "restart", c)

    # ----- wait ------------------------------------------------------------------------------
    async def container_wait(self, ref: str, condition: str = "not-running") -> dict[str, Any]:
        condition = condition or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidArgument(f"invalid condition: \"{condition}\"")
        c = self.store.find(ref)
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
        c = self.store.find(ref)
        if not force:
            check(c, "remove")
        c.remove_volumes = volumes   # type: ignore[attr-defined]  # read by the storage hook
        await self._remove(c, force)

    async def _remove(self, c: Container, force: bool) -> None:
        pending = self._restarts.pop(c.id, None)
        if pending is not None:
            pending.cancel()
        async with self.store.lock(c.id):
            if c.id not in self.store:
                return
            system = self.system_of(c)
            c.silobox["StoppedByUser"] = True   # no policy restart during removal
            if is_live(system):
                await system.terminate()
                await self._settled(c)     # the exit is recorded (and "die" sent) first
            transition(c, "begin_removal")
            self.compute.close_system(c.id, delete_state=False)   # deleted in _remove_files
            for hook in self.hooks:
                await hook.on_remove(c)
            # Unmounts, renames and unlinks wait on the filesystem's journal: in a thread, so
            # the loop serves other requests and parallel removals overlap their waits.
            await asyncio.get_running_loop().run_in_executor(None, self._remove_files, c.id)
            self.store.delete(c)
            self.execs.forget(c.id)
            code = c.state.get("ExitCode", 0)
            for fut in self._removed_waiters.pop(c.id, []) + self._exit_waiters.pop(c.id, []):
                if not fut.done():
                    fut.set_result(code)
            self.events.emit_event("container", "destroy", c)

    def _remove_files(self, cid: str) -> None:
        from silobox.compute.uvm.hyperv import remove_container_disk
        shutil.rmtree(self.compute.state_dir(cid), ignore_errors=True)
        self.storage.sandbox_for(cid).remove()
        remove_container_disk(cid)   # a hyperv container's writable disk (kept from stop to start)
        shutil.rmtree(self.store.directory(cid), ignore_errors=True)

    # ----- update / prune ------------------------------------------------------------------
    _UPDATABLE = ("Memory", "MemorySwap", "MemoryReservation", "NanoCpus", "CpuShares",
                  "CpuPeriod", "CpuQuota", "CpusetCpus", "CpusetMems", "PidsLimit",
                  "BlkioWeight", "CpuCount", "CpuPercent", "IOMaximumBandwidth",
                  "IOMaximumIOps")

    async def container_update(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        """``docker update``: new limits, applied live to the job object (HCS Modify)."""
        c = self.store.find(ref)
        if not isinstance(body, dict):
            raise InvalidArgument("update config must be a JSON object")
        hc = dict(c.host_config)
        for key in self._UPDATABLE:
            if body.get(key) not in (None, 0, ""):
                hc[key] = body[key]
        warnings = check_blkio(hc) + check_windows_cpu(hc)
        if (hc.get("IOMaximumBandwidth") or hc.get("IOMaximumIOps")) \
                and self.storage.sandbox_for(c.id).kind != "disk":
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
        c.host_config = hc
        c.silobox["Resources"] = resources
        self.store.save(c)
        self.events.emit_event("container", "update", c)
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
        for c in list(self.store.values()):
            if c.running or status(c) in (Status.RESTARTING, Status.REMOVING):
                continue
            labels = c.config.get("Labels")
            if filters.get("label") and not labels_match(labels, filters["label"]):
                continue
            if labels_match(labels, filters.get("label!", []), any_of=True):
                continue
            if until and parse_iso(c.created) >= until:
                continue
            size = self.storage.sandbox_for(c.id).used_bytes()
            await self._remove(c, force=False)
            deleted.append(c.id)
            reclaimed += size
        return {"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    # ----- pause / rename / resize -----------------------------------------------------------
    async def container_pause(self, ref: str) -> None:
        await self._freeze(self.store.find(ref), "pause")

    async def container_unpause(self, ref: str) -> None:
        await self._freeze(self.store.find(ref), "unpause")

    async def _freeze(self, c: Container, verb: str) -> None:
        """Pause or unpause: under the container's lock, so a stop or a policy restart does not
        interleave with the freezer; the compute system waits for the freezer off the loop."""
        async with self.store.lock(c.id):
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
            self.store.save(c)
        self.events.emit_event("container", verb, c)

    async def container_rename(self, ref: str, new_name: str) -> None:
        c = self.store.find(ref)
        if not new_name:
            raise InvalidArgument("Neither old nor new names may be empty")
        new = S.validate_name(new_name)
        if new == c.name:
            raise InvalidArgument("Renaming a container with the same name as its current name")
        old = c.name
        self.store.rename(c, new)
        self.events.emit_event("container", "rename", c, {"oldName": "/" + old})

    async def container_resize(self, ref: str, height: int, width: int) -> None:
        c = self.store.find(ref)
        system = self.system_of(c)
        check(c, "resize")
        if system is None:
            raise refusal(c, "resize")
        if not c.config["Tty"]:
            return
        await system.resize_console(height, width)

    # ----- logs ------------------------------------------------------------------------------
    async def container_logs(self, ref: str, *, stdout: bool = True, stderr: bool = True,
                             follow: bool = False, since: float = 0, until: float = 0,
                             timestamps: bool = False, tail: str = "all"
                             ) -> tuple[bool, AsyncIterator[tuple[int, bytes]]]:
        c = self.store.find(ref)
        if not (stdout or stderr):
            raise InvalidArgument("You must choose at least one stream")

        def still_running() -> bool:
            return c.id in self.store and c.running

        it = read_log(c.log_path, stdout=stdout, stderr=stderr, follow=follow,
                      since=since, until=until, timestamps=timestamps, tail=tail,
                      running=still_running)
        return bool(c.config["Tty"]), it

    # ----- attach ----------------------------------------------------------------------------
    async def container_attach(self, ref: str, *, stdin: bool, stdout: bool, stderr: bool,
                               logs: bool, stream: bool) -> AttachSession:
        c = self.store.find(ref)
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

    # ----- recovery ------------------------------------------------------------------------------
    async def recover_containers(self) -> None:
        """After a (re)start of silod: re-attach to the shims of containers still running."""
        for c in list(self.store.values()):
            if status(c) is Status.REMOVING:
                await self._remove(c, force=True)
                continue
            if status(c) is Status.RESTARTING:   # silod stopped during a policy back-off:
                transition(c, "cancel_restart")   # the policy below decides again
                self.store.save(c)
            if not c.running:
                continue
            system = self.compute.create(c.id, self._document(c))
            await system.reattach()
            # Only now: a system found ended records its exit in reattach, and that exit is
            # handled once, below (it was twice: two "die" events, two policy restarts).
            system.on_exit.append(self._on_exit)
            if is_live(system):
                transition(c, "recover", to=from_compute(system.state), Pid=system.pid)
                self.store.save(c)
                for hook in self.hooks:
                    await hook.on_recover(c)
            else:
                await self._on_exit(system)
        self._remove_orphans()
        for c in list(self.store.values()):
            if c.running:
                continue
            if restart.start_with_daemon(c):
                try:
                    async with self.store.lock(c.id):
                        await self._start(c)
                except Exception as e:  # keep going: one bad container must not stop silod
                    transition(c, "record_error", Error=str(e))
                    self.store.save(c)

    def _remove_orphans(self) -> None:
        """Reconcile the host with the store: job objects and shim state nobody owns go."""
        live = {cid for cid, s in self.compute.systems.items() if is_live(s)}
        for name in self.host.job_objects(self.config.cgroup_parent):
            if name not in live:
                self.host.remove_job_object(name, self.config.cgroup_parent)
        try:
            entries = os.listdir(self.config.compute_dir)
        except FileNotFoundError:
            entries = []
        for name in entries:
            if name not in live:
                self.host.remove_tree(os.path.join(self.config.compute_dir, name))
