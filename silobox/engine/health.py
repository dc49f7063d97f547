"""Container health checks (``HEALTHCHECK``, ``--health-cmd``), run as processes in the silo.

Each probe is a process created in the running compute system, exactly like ``docker exec``;
its exit code and the start of its output go into ``State.Health`` with Docker's rules: a
success makes the container healthy, ``Retries`` failures in a row make it unhealthy, and
failures during ``StartPeriod`` do not count. Status changes are events (``health_status: …``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from silobox.compute.schema import ProcessParameters
from silobox.engine.state import Status, status, system_of, transition
from silobox.errors import InvalidArgument, SiloboxError
from silobox.timeutil import now_iso

SECOND = 1_000_000_000
DEFAULTS = {"Interval": 30 * SECOND, "Timeout": 30 * SECOND, "Retries": 3, "StartPeriod": 0}
MAX_OUTPUT = 4096
LOG_ENTRIES = 5


def parse_healthcheck(hc: Any) -> dict[str, Any] | None:
    """Validate a ``Healthcheck`` config (body or image); None when there is none."""
    if hc is None:
        return None
    if not isinstance(hc, dict):
        raise InvalidArgument("Healthcheck: expected an object")
    test = hc.get("Test")
    if test is not None and (not isinstance(test, list)
                             or not all(isinstance(t, str) for t in test)):
        raise InvalidArgument("Healthcheck.Test: expected a list of strings")
    if test and test[0] not in ("NONE", "CMD", "CMD-SHELL"):
        raise InvalidArgument(f"Healthcheck.Test: unknown kind {test[0]!r} (use CMD, CMD-SHELL "
                              "or NONE)")
    if test and test[0] in ("CMD", "CMD-SHELL") and len(test) < 2:
        raise InvalidArgument("Healthcheck.Test: a command is required")
    for key in ("Interval", "Timeout", "StartPeriod", "StartInterval"):
        v = hc.get(key) or 0
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise InvalidArgument(f"Healthcheck.{key}: expected a non-negative integer")
        if 0 < v < 1_000_000:
            raise InvalidArgument(f"{key} in Healthcheck cannot be less than 1ms")
    retries = hc.get("Retries") or 0
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise InvalidArgument("Retries in Healthcheck cannot be negative")
    return dict(hc)


def effective(config: dict[str, Any]) -> dict[str, Any] | None:
    """The probe settings with Docker's defaults, or None when no check is configured."""
    hc = config.get("Healthcheck") or {}
    test = hc.get("Test") or []
    if not test or test[0] == "NONE":
        return None
    out = {k: (hc.get(k) or v) for k, v in DEFAULTS.items()}
    out["Test"] = test
    return out


class HealthMonitor:
    """One probe loop per running container that has a health check."""

    def __init__(self, store: Any, compute: Any, events: Any) -> None:
        self.store = store
        self.compute = compute
        self.events = events
        self._tasks: dict[str, asyncio.Task] = {}

    def start(self, c: Any, system: Any) -> None:
        """The container started: its Health begins as "starting" (or goes if none is set)."""
        settings = effective(c.config)
        if settings is None:
            transition(c, "health", Health=None)
            return
        transition(c, "health", Health={"Status": "starting", "FailingStreak": 0, "Log": []})
        self.stop(c)
        self._tasks[c.id] = asyncio.get_running_loop().create_task(
            self._loop(c, system, settings))

    def stop(self, c: Any) -> None:
        task = self._tasks.pop(c.id, None)
        if task is not None:
            task.cancel()

    async def _loop(self, c: Any, system: Any, s: dict[str, Any]) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(s["Interval"] / SECOND)
            if not c.running or system_of(self.compute, c.id) is not system:
                return
            if status(c) is Status.PAUSED:
                continue
            entry = await self._probe(c, system, s)
            health = dict(c.state.get("Health") or {"Status": "starting", "FailingStreak": 0,
                                                    "Log": []})
            health["Log"] = (health.get("Log") or [])[-(LOG_ENTRIES - 1):] + [entry]
            before = health["Status"]
            if entry["ExitCode"] == 0:
                health["Status"], health["FailingStreak"] = "healthy", 0
            elif time.monotonic() - started >= s["StartPeriod"] / SECOND:
                health["FailingStreak"] = health.get("FailingStreak", 0) + 1
                if health["FailingStreak"] >= s["Retries"]:
                    health["Status"] = "unhealthy"
            transition(c, "health", Health=health)
            if health["Status"] != before:
                self.events.emit_event("container", f"health_status: {health['Status']}", c)
            self.store.save(c)

    async def _probe(self, c: Any, system: Any, s: dict[str, Any]) -> dict[str, Any]:
        test = s["Test"]
        argv = ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else list(test[1:])
        env = {}
        for item in c.config.get("Env") or []:
            k, _, v = item.partition("=")
            env[k] = v
        params = ProcessParameters(command_args=argv,
                                   working_directory=c.config.get("WorkingDir") or "/",
                                   environment=env, user=c.config.get("User") or "")
        start = now_iso()
        output = b""
        code = -1
        try:
            proc = await system.create_process(f"health-{secrets.token_hex(8)}", params)
        except SiloboxError as e:
            return {"Start": start, "End": now_iso(), "ExitCode": -1, "Output": str(e)}
        if proc.start_error is not None:
            await proc.stream.close()
            return {"Start": start, "End": now_iso(), "ExitCode": proc.start_error.exit_code,
                    "Output": proc.start_error.message}
        try:
            async with asyncio.timeout(s["Timeout"] / SECOND):
                while (item := await proc.stream.read()) is not None:
                    if len(output) < MAX_OUTPUT:
                        output += item[1]
            code = (proc.stream.exit or {}).get("ExitCode", -1)
        except TimeoutError:
            try:
                await proc.signal(9)
            except SiloboxError:
                pass
            output = (f"Health check exceeded timeout ({s['Timeout'] / SECOND:g}s)").encode()
        finally:
            await proc.stream.close()
        return {"Start": start, "End": now_iso(), "ExitCode": code,
                "Output": output[:MAX_OUTPUT].decode("utf-8", "replace")}
