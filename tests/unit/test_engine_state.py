"""The container state table: every verb from every status, the fields each verb writes, Docker's
refusal messages, and the compute-state → Docker mapping. No kernel, no daemon."""

from __future__ import annotations

from typing import Any

import pytest

from silobox.compute.system import State as ComputeState
from silobox.engine import state as S
from silobox.engine.state import Status
from silobox.errors import Conflict, NotModified
from silobox.timeutil import ZERO_TIME

CID = "0123456789ab" + "cd" * 26
SHORT = CID[:12]


class Record:
    """Just what the state module reads of a container: its id and its State dict."""

    def __init__(self, status: Status, **fields: Any) -> None:
        self.id = CID
        self.state = S.initial_state()
        self.state["Status"] = status.value
        self.state.update(fields)


C, R, P, RS, RM, E, D = (Status.CREATED, Status.RUNNING, Status.PAUSED, Status.RESTARTING,
                         Status.REMOVING, Status.EXITED, Status.DEAD)

# verb → the statuses it is allowed from, written out here independently of the table.
EXPECTED_ALLOWED: dict[str, set[Status]] = {
    "start": {C, E, RS},
    "start_failed": {C, E, RS},
    "exit": {C, R, P, RS, RM, E, D},
    "pause": {R},
    "unpause": {P},
    "schedule_restart": {E},
    "cancel_restart": {RS, E},
    "restart_failed": {RS, E, C},
    "recover": {R, P},
    "begin_removal": {C, R, P, RS, RM, E, D},
    "record_error": {C, R, P, RS, RM, E, D},
    "health": {C, R, P, RS, RM, E, D},
    "exec": {R},
    "kill": {R, P, RS},
    "stop": {R, P, RS},
    "remove": {C, RM, E, D},
    "resize": {R, P},
}

# (verb, status) → the error class and the exact message Docker's API answers with.
EXPECTED_REFUSALS: dict[tuple[str, Status], tuple[type, str]] = {
    ("start", R): (NotModified, f"container {SHORT} is already running"),
    ("start", P): (Conflict, "cannot start a paused container, try unpause instead"),
    ("start", RM): (Conflict, f"container {SHORT} is marked for removal and cannot be started"),
    ("start", D): (Conflict, f"container {SHORT} is marked for removal and cannot be started"),
    ("pause", P): (Conflict, f"Container {CID} is already paused"),
    ("pause", E): (Conflict, f"Container {CID} is not running"),
    ("pause", C): (Conflict, f"Container {CID} is not running"),
    ("unpause", R): (Conflict, f"Container {CID} is not paused"),
    ("unpause", E): (Conflict, f"Container {CID} is not paused"),
    ("exec", P): (Conflict, f"Container {CID} is paused, unpause the container before exec"),
    ("exec", E): (Conflict, f"Container {CID} is not running"),
    ("exec", RS): (Conflict, f"Container {CID} is not running"),
    ("kill", E): (Conflict, f"Cannot kill container: web: Container {CID} is not running"),
    ("stop", E): (NotModified, f"container {SHORT} is not running"),
    ("stop", C): (NotModified, f"container {SHORT} is not running"),
    ("remove", R): (Conflict, f"You cannot remove a running container {CID}. Stop the container "
                              "before attempting removal or force remove"),
    ("remove", P): (Conflict, f"You cannot remove a running container {CID}. Stop the container "
                              "before attempting removal or force remove"),
    ("remove", RS): (Conflict, f"You cannot remove a restarting container {CID}. Stop the "
                               "container before attempting removal or force remove"),
    ("resize", E): (Conflict, f"Container {CID} is not running"),
    ("schedule_restart", R): (Conflict, f"cannot schedule_restart container {SHORT}: it is "
                                        "running"),
    ("recover", E): (Conflict, f"cannot recover container {SHORT}: it is exited"),
}


def test_table_covers_every_verb_listed_here() -> None:
    assert set(S.TRANSITIONS) == set(EXPECTED_ALLOWED)


@pytest.mark.parametrize("verb", sorted(EXPECTED_ALLOWED))
@pytest.mark.parametrize("status", list(Status))
def test_every_verb_from_every_status(verb: str, status: Status) -> None:
    c = Record(status)
    allowed = status in EXPECTED_ALLOWED[verb]
    assert S.allowed(c, verb) is allowed
    if allowed:
        S.check(c, verb, ref="web")
        return
    with pytest.raises((Conflict, NotModified)) as err:
        S.check(c, verb, ref="web")
    # every refusal names the container and says what was asked
    assert err.value.object_id == CID and err.value.operation == verb
    expected = EXPECTED_REFUSALS.get((verb, status))
    if expected is not None:
        assert type(err.value) is expected[0]
        assert str(err.value) == expected[1]
    before = dict(c.state)
    with pytest.raises((Conflict, NotModified)):
        S.transition(c, verb)
    assert c.state == before, "a refused verb writes nothing"


def test_refusal_messages_are_dockers() -> None:
    for (verb, status), (cls, message) in EXPECTED_REFUSALS.items():
        err = S.refusal(Record(status), verb, ref="web")
        assert (type(err), str(err)) == (cls, message), (verb, status)


def test_start_writes_a_running_state() -> None:
    c = Record(E, ExitCode=3, Error="boom", OOMKilled=True, FinishedAt="2024-01-01T00:00:00Z")
    assert S.transition(c, "start", Pid=42, StartedAt="2024-01-02T00:00:00Z") is R
    assert c.state == {**S.initial_state(), "Status": "running", "Running": True, "Pid": 42,
                       "StartedAt": "2024-01-02T00:00:00Z", "FinishedAt": ZERO_TIME}


def test_exit_then_paused_fields() -> None:
    c = Record(R, Running=True, Pid=42, StartedAt="2024-01-02T00:00:00Z")
    S.transition(c, "pause")
    assert (c.state["Status"], c.state["Paused"], c.state["Running"]) == ("paused", True, True)
    S.transition(c, "exit", ExitCode=137, OOMKilled=True, FinishedAt="2024-01-03T00:00:00Z",
                 Error="")
    assert c.state["Status"] == "exited"
    assert (c.state["Running"], c.state["Paused"], c.state["Pid"]) == (False, False, 0)
    assert (c.state["ExitCode"], c.state["OOMKilled"]) == (137, True)
    assert c.state["StartedAt"] == "2024-01-02T00:00:00Z"   # kept: docker shows the last run


def test_a_failed_start_leaves_created_if_it_never_ran() -> None:
    c = Record(C)
    assert S.transition(c, "start_failed", ExitCode=127, Error="not found") is C
    assert (c.state["ExitCode"], c.state["Error"], c.state["Pid"]) == (127, "not found", 0)
    ran = Record(E, StartedAt="2024-01-02T00:00:00Z")
    assert S.transition(ran, "start_failed", ExitCode=126, Error="denied") is E


def test_restart_policy_cycle() -> None:
    c = Record(E, StartedAt="2024-01-02T00:00:00Z")
    assert S.transition(c, "schedule_restart") is RS
    assert c.state["Restarting"] is True
    assert S.transition(c, "restart_failed", Error="no such file") is E
    assert (c.state["Restarting"], c.state["Error"]) == (False, "no such file")
    S.transition(c, "schedule_restart")
    assert S.transition(c, "cancel_restart") is E and c.state["Restarting"] is False
    S.transition(c, "schedule_restart")
    assert S.transition(c, "start", Pid=7, StartedAt="2024-01-03T00:00:00Z") is R
    assert c.state["Restarting"] is False


def test_recover_takes_the_compute_systems_status() -> None:
    c = Record(R, Running=True, Pid=1)
    assert S.transition(c, "recover", to=P, Pid=99) is P
    assert (c.state["Pid"], c.state["Paused"]) == (99, True)
    assert S.transition(c, "recover", to=R, Pid=99) is R and c.state["Paused"] is False


def test_health_is_written_and_removed() -> None:
    c = Record(R)
    S.transition(c, "health", Health={"Status": "starting", "FailingStreak": 0, "Log": []})
    assert c.state["Health"]["Status"] == "starting"
    S.transition(c, "health", Health=None)
    assert "Health" not in c.state


def test_removal_keeps_the_rest_of_the_state() -> None:
    c = Record(E, ExitCode=2)
    assert S.transition(c, "begin_removal") is RM
    assert c.state["ExitCode"] == 2


def test_a_verb_writes_only_its_own_fields() -> None:
    with pytest.raises(TypeError):
        S.transition(Record(R), "pause", Pid=3)
    with pytest.raises(TypeError):
        S.transition(Record(R), "exit", Status="running")
    with pytest.raises(TypeError):   # start always leaves running: no caller picks
        S.transition(Record(C), "start", to=P, Pid=1, StartedAt=ZERO_TIME)


def test_the_stored_shape_stays_dockers() -> None:
    c = Record(C)
    S.transition(c, "start", Pid=1, StartedAt="2024-01-02T00:00:00Z")
    assert type(c.state["Status"]) is str     # the store holds plain JSON strings
    assert set(c.state) == {"Status", "Running", "Paused", "Restarting", "OOMKilled", "Dead",
                            "Pid", "ExitCode", "Error", "StartedAt", "FinishedAt"}


@pytest.mark.parametrize("compute, docker", [
    (ComputeState.CREATED, Status.CREATED), (ComputeState.RUNNING, Status.RUNNING),
    (ComputeState.PAUSED, Status.PAUSED), (ComputeState.STOPPED, Status.EXITED)])
def test_compute_state_maps_to_docker(compute: ComputeState, docker: Status) -> None:
    assert S.from_compute(compute) is docker


def test_every_compute_state_is_mapped() -> None:
    assert {S.from_compute(s) for s in ComputeState} <= set(Status)


def test_is_live() -> None:
    class System:
        def __init__(self, state: ComputeState) -> None:
            self.state = state
    assert S.is_live(System(ComputeState.RUNNING)) and S.is_live(System(ComputeState.PAUSED))
    assert not S.is_live(System(ComputeState.STOPPED))
    assert not S.is_live(System(ComputeState.CREATED))
    assert not S.is_live(None)


def test_no_other_writer_of_a_containers_state() -> None:
    """transition() stays the only writer: no module assigns into or updates ``.state``."""
    import pathlib
    import re

    import silobox
    write = re.compile(r"\.state(\[[^]]+\] *=[^=]|\.(update|pop|setdefault|clear)\()"
                       r"|\.data\[\"State\"\] *=[^=]")
    root = pathlib.Path(silobox.__file__).parent
    offenders = [f"{path.relative_to(root)}:{n}"
                 for path in sorted((root / "engine").rglob("*.py")) if path.name != "state.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if write.search(line)]
    assert offenders == []
