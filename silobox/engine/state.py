"""A Docker container's ``State``: its statuses, the verbs that move between them, one writer.

The record keeps Docker's ``State`` dict (Status, Running, Paused, Restarting, OOMKilled, Dead,
Pid, ExitCode, Error, StartedAt, FinishedAt, Health) because that is what ``inspect`` shows and
what the store holds. Only :func:`transition` writes it, and only as :data:`TRANSITIONS` allows:
a verb names the statuses it may start from and the status it leaves. A verb that is not
allowed raises the error Docker answers with (mostly a 409 ``Conflict``) naming the verb and the
container. :func:`check` asks the same table for verbs that do not write (exec, kill, remove).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Protocol

from silobox.compute.system import State as ComputeState
from silobox.errors import Conflict, NotFound, NotModified, SiloboxError
from silobox.timeutil import ZERO_TIME


class Status(str, Enum):
    """Docker's container statuses (``State.Status``, ``ps --filter status=``)."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"


ALL = frozenset(Status)
LIVE = frozenset({Status.RUNNING, Status.PAUSED})   # a compute system holds the processes


class HasState(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def state(self) -> dict[str, Any]: ...


# A refusal: the error class and its message; {id} is the full id, {short} the first 12 digits,
# {verb} and {status} what was asked and what the container is, {ref} the name the user gave.
Refusal = tuple[type[SiloboxError], str]


@dataclass(frozen=True)
class Rule:
    """One verb: where it may start, where it leaves the container, what else it writes."""

    allowed: frozenset[Status]
    to: Status | Callable[[dict[str, Any]], Status] | None = None   # None: the status stays
    sets: dict[str, Any] = field(default_factory=dict)              # fixed State fields
    fields: frozenset[str] = frozenset()                            # fields the caller gives
    refusals: dict[Status | None, Refusal] = field(default_factory=dict)   # None: any other


def _created_or_exited(st: dict[str, Any]) -> Status:
    """A start that failed leaves a container that never ran as created, as Docker does."""
    return Status.CREATED if st.get("StartedAt", ZERO_TIME) == ZERO_TIME else Status.EXITED


_NOT_RUNNING: Refusal = (Conflict, "Container {id} is not running")
_ALREADY_RUNNING: Refusal = (NotModified, "container {short} is already running")
_MARKED_FOR_REMOVAL: Refusal = (Conflict, "container {short} is marked for removal and cannot be "
                                          "started")

TRANSITIONS: dict[str, Rule] = {
    # --- verbs that write State -------------------------------------------------------------
    "start": Rule(
        {Status.CREATED, Status.EXITED, Status.RESTARTING}, Status.RUNNING,
        sets={"Running": True, "Paused": False, "Restarting": False, "ExitCode": 0, "Error": "",
              "OOMKilled": False, "FinishedAt": ZERO_TIME},
        fields=frozenset({"Pid", "StartedAt"}),
        refusals={Status.RUNNING: _ALREADY_RUNNING,
                  Status.PAUSED: (Conflict, "cannot start a paused container, try unpause "
                                            "instead"),
                  Status.REMOVING: _MARKED_FOR_REMOVAL, Status.DEAD: _MARKED_FOR_REMOVAL}),
    "start_failed": Rule(   # the command could not be started (exit code 126/127)
        {Status.CREATED, Status.EXITED, Status.RESTARTING}, _created_or_exited,
        sets={"Running": False, "Pid": 0}, fields=frozenset({"ExitCode", "Error"})),
    "exit": Rule(           # the compute system stopped, whoever asked (or nobody)
        ALL, Status.EXITED, sets={"Running": False, "Paused": False, "Pid": 0},
        fields=frozenset({"ExitCode", "OOMKilled", "FinishedAt", "Error"})),
    "pause": Rule(
        {Status.RUNNING}, Status.PAUSED, sets={"Paused": True},
        refusals={Status.PAUSED: (Conflict, "Container {id} is already paused"),
                  None: _NOT_RUNNING}),
    "unpause": Rule(
        {Status.PAUSED}, Status.RUNNING, sets={"Paused": False},
        refusals={None: (Conflict, "Container {id} is not paused")}),
    "schedule_restart": Rule(   # the restart policy will start it after the back-off
        {Status.EXITED}, Status.RESTARTING, sets={"Restarting": True}),
    "cancel_restart": Rule(     # a user's stop or kill between two policy restarts
        {Status.RESTARTING, Status.EXITED}, Status.EXITED, sets={"Restarting": False}),
    "restart_failed": Rule(
        {Status.RESTARTING, Status.EXITED, Status.CREATED}, Status.EXITED,
        sets={"Restarting": False}, fields=frozenset({"Error"})),
    "recover": Rule(            # silod re-attached to a running shim; to= says which status
        LIVE, None, fields=frozenset({"Pid"})),
    "begin_removal": Rule(ALL, Status.REMOVING),
    "record_error": Rule(ALL, None, fields=frozenset({"Error"})),
    "health": Rule(ALL, None, fields=frozenset({"Health"})),   # Health=None removes it
    # --- verbs that only ask (check) ----------------------------------------------------------
    "exec": Rule(
        {Status.RUNNING},
        refusals={Status.PAUSED: (Conflict, "Container {id} is paused, unpause the container "
                                            "before exec"),
                  None: _NOT_RUNNING}),
    "kill": Rule(
        {Status.RUNNING, Status.PAUSED, Status.RESTARTING},
        refusals={None: (Conflict, "Cannot kill container: {ref}: Container {id} is not "
                                   "running")}),
    "stop": Rule(
        LIVE | {Status.RESTARTING},
        refusals={None: (NotModified, "container {short} is not running")}),
    "remove": Rule(             # without force
        ALL - LIVE - {Status.RESTARTING},
        refusals={Status.RESTARTING: (Conflict, "You cannot remove a restarting container "
                                                "{id}. Stop the container before attempting "
                                                "removal or force remove"),
                  None: (Conflict, "You cannot remove a running container {id}. Stop the "
                                   "container before attempting removal or force remove")}),
    "resize": Rule(LIVE, refusals={None: _NOT_RUNNING}),
}


def status(c: HasState) -> Status:
    """The container's status as the enum (the record stores the string)."""
    return Status(c.state["Status"])


def refusal(c: HasState, verb: str, **context: Any) -> SiloboxError:
    """The error for ``verb`` not being allowed now: Docker's message where it has one."""
    st = status(c)
    rule = TRANSITIONS[verb]
    cls, template = rule.refusals.get(st) or rule.refusals.get(None) or (
        Conflict, "cannot {verb} container {short}: it is {status}")
    fields = {"id": c.id, "short": c.id[:12], "verb": verb, "status": st.value, "ref": c.id}
    message = template.format(**{**fields, **context})   # ref: the name the user gave
    return cls(message, operation=verb, object_id=c.id)


def allowed(c: HasState, verb: str) -> bool:
    return status(c) in TRANSITIONS[verb].allowed


def check(c: HasState, verb: str, **context: Any) -> None:
    """Raise :func:`refusal` unless ``verb`` is allowed from the container's status."""
    if not allowed(c, verb):
        raise refusal(c, verb, **context)


def transition(c: HasState, verb: str, *, to: Status | None = None, **details: Any) -> Status:
    """The only writer of ``c.state``: check ``verb``, then write its status and fields.

    ``details`` are the State fields the verb takes from its caller (``Pid``, ``ExitCode``...);
    ``to`` picks the status for a verb whose table entry leaves it to the caller (``recover``).
    Returns the new status.
    """
    rule = TRANSITIONS[verb]
    unknown = set(details) - rule.fields
    if unknown:
        raise TypeError(f"{verb} does not write {sorted(unknown)}")
    check(c, verb)
    st = c.state
    if to is None:
        target = rule.to(st) if callable(rule.to) else rule.to
    elif rule.to is None:
        target = to
    else:
        raise TypeError(f"{verb} always leaves the container {rule.to}")
    if target is not None:
        st["Status"] = target.value
    st.update(rule.sets)
    for key, value in details.items():
        if key == "Health" and value is None:
            st.pop("Health", None)
        else:
            st[key] = value
    if verb == "recover":
        st["Paused"] = target is Status.PAUSED
    return status(c)


def initial_state() -> dict[str, Any]:
    """The State of a container just created."""
    return {"Status": Status.CREATED.value, "Running": False, "Paused": False,
            "Restarting": False, "OOMKilled": False, "Dead": False, "Pid": 0, "ExitCode": 0,
            "Error": "", "StartedAt": ZERO_TIME, "FinishedAt": ZERO_TIME}


# ----- compute system → Docker ----------------------------------------------------------------
_FROM_COMPUTE = {
    ComputeState.CREATED: Status.CREATED,
    ComputeState.RUNNING: Status.RUNNING,
    ComputeState.PAUSED: Status.PAUSED,
    ComputeState.STOPPED: Status.EXITED,
}


def from_compute(state: ComputeState) -> Status:
    """The Docker status a compute system in HCS state ``state`` stands for."""
    return _FROM_COMPUTE[state]


def is_live(system: Any) -> bool:
    """True if ``system`` (a ComputeSystem or None) holds running or paused processes."""
    return system is not None and from_compute(system.state) in LIVE


def system_of(compute: Any, cid: str) -> Any:
    """The compute system of container ``cid`` if silod holds one (running or not), else None."""
    try:
        return compute.open(cid)
    except NotFound:
        return None
