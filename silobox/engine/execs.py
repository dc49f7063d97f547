"""``docker exec``: processes started in a running container's compute system.

An exec is a record (Docker's ``ExecInspect`` shape plus the process's private settings) kept
in memory, as dockerd keeps them: it does not survive silod, and goes with its container.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from silobox.compute.schema import ProcessParameters
from silobox.engine import spec as S
from silobox.engine.sessions import ExecSession, FailedExecStart
from silobox.engine.state import Status, check, from_compute, system_of
from silobox.errors import Conflict, InvalidArgument, NotFound


class ExecService:
    """The exec verbs of ``api.backend.ContainerBackend``; the records of the execs."""

    def __init__(self, store: Any, compute: Any, events: Any) -> None:
        self.store = store
        self.compute = compute
        self.events = events
        self.execs: dict[str, dict[str, Any]] = {}

    def ids_of(self, cid: str) -> list[str]:
        """The execs of container ``cid`` (``ExecIDs`` of its inspect)."""
        return [e for e, x in self.execs.items() if x["ContainerID"] == cid]

    def forget(self, cid: str) -> None:
        """Container ``cid`` is removed: its execs go with it."""
        for eid in self.ids_of(cid):
            self.execs.pop(eid, None)

    async def exec_create(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        c = self.store.find(ref)
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
        self.events.emit_event("container", f"exec_create: {' '.join(cmd)}", c, {"execID": eid})
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
        c = self.store.find(x["ContainerID"])
        system = system_of(self.compute, c.id)
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
        self.events.emit_event("container", f"exec_start: {command}", c, {"execID": exec_id})

        def died(record: dict[str, Any]) -> None:
            self.events.emit_event("container", "exec_die", c,
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
        c = self.store.find(x["ContainerID"])
        system = system_of(self.compute, c.id)
        if system is None:
            raise Conflict(f"Container {c.id} is not running")
        await system.resize_console(height, width, target=exec_id)
