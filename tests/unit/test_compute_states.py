"""The compute system's verb table (HCS states): what each verb is allowed from, the errors and
messages when it is not, and how pause, resume and an exit move the state. The job object is a
recording fake; nothing here touches the kernel."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from silobox.compute.system import VERBS, ComputeSystem, State
from silobox.errors import Conflict, NotModified, NotRunning

CID = "fedcba987654" + "01" * 26
SHORT = CID[:12]
CR, RU, PA, ST = State.CREATED, State.RUNNING, State.PAUSED, State.STOPPED

EXPECTED_ALLOWED: dict[str, set[State]] = {
    "start": {CR, ST},
    "reattach": {CR},
    "exit": {CR, RU, PA, ST},
    "pause": {RU},
    "resume": {PA},
    "shutdown": {RU, PA},
    "terminate": {RU, PA},
    "signal": {RU, PA},
    "attach": {RU, PA},
    "resize": {RU, PA},
    "exec": {RU},
}

EXPECTED_REFUSALS: dict[tuple[str, State], tuple[type, str]] = {
    ("start", RU): (NotModified, f"container {SHORT} is already running"),
    ("start", PA): (NotModified, f"container {SHORT} is already running"),
    ("shutdown", ST): (NotModified, f"container {SHORT} is not running"),
    ("shutdown", CR): (NotModified, f"container {SHORT} is not running"),
    ("terminate", ST): (NotModified, f"container {SHORT} is not running"),
    ("resume", RU): (Conflict, f"container {SHORT} is not paused"),
    ("resume", ST): (NotRunning, f"container {SHORT} is not running"),
    ("pause", PA): (Conflict, f"cannot pause container {SHORT}: it is paused"),
    ("pause", ST): (NotRunning, f"container {SHORT} is not running"),
    ("exec", PA): (Conflict, f"cannot exec container {SHORT}: it is paused"),
    ("exec", CR): (NotRunning, f"container {SHORT} is not running"),
    ("signal", ST): (NotRunning, f"container {SHORT} is not running"),
    ("reattach", RU): (Conflict, f"cannot reattach container {SHORT}: it is running"),
}


class Job:
    """Records freeze/thaw; ``during_freeze`` runs inside freeze (an exit racing a pause)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.during_freeze: Any = None

    def freeze(self) -> None:
        self.calls.append("freeze")
        if self.during_freeze:
            self.during_freeze()

    def thaw(self) -> None:
        self.calls.append("thaw")


def system(state: State, pending: str | None = None) -> ComputeSystem:
    s = object.__new__(ComputeSystem)   # the state machine only; no service, no shim
    s.id, s.state, s.pending, s.job, s.pid = CID, state, pending, Job(), 5
    s.on_exit, s.exit = [], None
    return s


def test_table_covers_every_verb_listed_here() -> None:
    assert set(VERBS) == set(EXPECTED_ALLOWED)


@pytest.mark.parametrize("verb", sorted(EXPECTED_ALLOWED))
@pytest.mark.parametrize("state", list(State))
def test_every_verb_from_every_state(verb: str, state: State) -> None:
    s = system(state)
    if state in EXPECTED_ALLOWED[verb]:
        s._check(verb)
        return
    with pytest.raises((Conflict, NotModified)) as err:
        s._check(verb)
    assert err.value.operation == verb and err.value.object_id == CID
    expected = EXPECTED_REFUSALS.get((verb, state))
    if expected is not None:
        assert (type(err.value), str(err.value)) == expected
    with pytest.raises((Conflict, NotModified)):
        s._enter(verb)
    assert s.state is state, "a refused verb leaves the state alone"


def test_attach_between_ready_and_release() -> None:
    s = system(CR)
    with pytest.raises(NotRunning):
        s._check("attach")
    s.pending = "start"   # the shim is up, the init waits for its clients
    s._check("attach")
    with pytest.raises(NotRunning):
        s._check("exec")


def test_enter_moves_to_the_tables_state() -> None:
    s = system(CR)
    s._enter("start")
    assert s.state is RU
    s._enter("exit")
    assert s.state is ST
    s._enter("start")
    assert s.state is RU
    r = system(CR)
    r._enter("reattach", PA)
    assert r.state is PA


def test_pause_and_resume_use_the_freezer_off_the_loop() -> None:
    s = system(RU)
    asyncio.run(s.pause())
    assert s.state is PA and s.job.calls == ["freeze"]
    with pytest.raises(Conflict, match="it is paused"):
        asyncio.run(s.pause())
    asyncio.run(s.resume())
    assert s.state is RU and s.job.calls == ["freeze", "thaw"]
    with pytest.raises(Conflict, match=f"container {SHORT} is not paused"):
        asyncio.run(s.resume())


def test_an_exit_while_freezing_wins() -> None:
    s = system(RU)
    s.job.during_freeze = lambda: setattr(s, "state", ST)   # the monitor recorded an exit
    with pytest.raises(NotRunning):
        asyncio.run(s.pause())
    assert s.state is ST


@pytest.mark.parametrize("pending, exit_type", [
    (None, "UnexpectedExit"), ("start", "UnexpectedExit"), ("shutdown", "GracefulExit"),
    ("terminate", "ForcedExit")])
def test_the_exit_is_named_by_the_verb_that_asked_for_it(pending: str | None,
                                                        exit_type: str) -> None:
    async def run() -> ComputeSystem:
        s = system(RU, pending)
        s._exited = asyncio.Event()
        s._record_exit({"ExitCode": 143, "FinishedAt": "2024-01-01T00:00:00Z"})
        return s
    s = asyncio.run(run())
    assert s.state is ST and s.pid == 0
    assert s.exit is not None and (s.exit.exit_code, s.exit.exit_type) == (143, exit_type)
