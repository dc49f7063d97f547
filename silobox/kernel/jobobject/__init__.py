"""Job objects: the group of processes of one container, with its limits and accounting.

A Windows job object groups processes, limits what they may use together, counts what they used
and terminates them all at once. On Linux the same object is a control group: a directory named by
the container's full id under our parent group (``silobox`` by default) in every cgroup v1
hierarchy we use, or one directory in the cgroup v2 unified hierarchy. Membership is inherited by
fork and cannot be left, so there is no breakaway, exactly like a job without
``JOB_OBJECT_LIMIT_BREAKAWAY_OK``.

:class:`JobObject` is the one entry point; it picks the backend once from the cgroup layout probe
(:func:`silobox.kernel.features.cgroup_layout`): :mod:`.v2` when the unified hierarchy carries the
cpu, memory and pids controllers, otherwise :mod:`.v1`.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from silobox.errors import (Conflict, InvalidArgument, NotFound, SiloboxError,
                            SystemFailure, Unavailable)
from silobox.kernel import features
from silobox.kernel.jobobject.devices import DeviceRule

DEFAULT_PARENT = "silobox"
FREEZE_TIMEOUT = 5.0
"""Bound on waiting for a freeze to complete (v1 FREEZING → FROZEN, v2 ``frozen 1``)."""
UNLIMITED = -1
V2_REQUIRED_CONTROLLERS = frozenset({"cpu", "memory", "pids"})

THROTTLES = ("blkio_read_bps", "blkio_write_bps", "blkio_read_iops", "blkio_write_iops")
"""JobLimits' per-device throttle fields, in the order of v1's files and v2's io.max keys."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")

__all__ = [
    "DEFAULT_PARENT", "DeviceRule", "JobLimits", "JobObject", "JobStatistics", "UNLIMITED",
    "backend_name", "cleanup_parent", "list_job_objects", "missing_groups", "remove_groups",
]


@dataclass
class JobLimits:
    """What a job object may use (SetInformationJobObject), in Docker's units.

    ``None`` (and ``0`` for the numeric fields, as in ``docker update``) leaves a value unchanged;
    a fresh job object starts without limits. ``-1`` removes a memory, swap or CPU quota limit.
    """

    memory: int | None = None
    """Bytes of RAM (``-m``): JOB_OBJECT_LIMIT_JOB_MEMORY → ``memory.limit_in_bytes`` (v1),
    ``memory.max`` (v2)."""
    memory_swap: int | None = None
    """Bytes of memory + swap together (``--memory-swap``); ``-1`` unlimited swap. When only
    ``memory`` is given, Docker's default applies: memory + swap = 2 × memory."""
    memory_reservation: int | None = None
    """Soft limit (``--memory-reservation``): ``memory.soft_limit_in_bytes``/``memory.low``;
    ``-1`` removes it."""
    cpu_quota: int | None = None
    """µs of CPU time per period (``--cpus 0.5`` → 50000 per 100000): the CPU rate hard cap."""
    cpu_period: int | None = None
    cpu_shares: int | None = None
    """Relative weight (``--cpu-shares``, 2–262144; v2 converts it to ``cpu.weight``)."""
    cpuset_cpus: str | None = None
    """CPU affinity of the whole job (``--cpuset-cpus``, e.g. ``"0-1"``)."""
    cpuset_mems: str | None = None
    pids_limit: int | None = None
    """Active process limit (``--pids-limit``; counts threads); ``<= 0`` means unlimited."""
    blkio_weight: int | None = None
    """Relative block I/O weight (``--blkio-weight``, 10–1000): ``blkio.weight`` (v1),
    ``io.weight`` (v2, scaled to 1–10000). Only where the host's I/O scheduler offers it."""
    blkio_weight_device: list | None = None
    """[[major, minor, weight]] (``--blkio-weight-device``)."""
    blkio_read_bps: list | None = None
    """[[major, minor, bytes/s]] (``--device-read-bps``; the Windows ``--io-maxbandwidth`` on
    the sandbox disk): ``blkio.throttle.read_bps_device`` (v1), ``io.max rbps`` (v2). A rate
    of 0 removes the device's throttle."""
    blkio_write_bps: list | None = None
    blkio_read_iops: list | None = None
    blkio_write_iops: list | None = None
    privileged: bool = False
    """Device policy: allow every device. Applied by :meth:`JobObject.create`."""
    devices: tuple[DeviceRule, ...] = ()
    """Extra device rules after Docker's defaults (``--device``). Applied by ``create``."""

    def validate(self) -> None:
        """Reject values no kernel would accept, with Docker's wording where it has one."""
        for name in ("memory", "memory_swap", "cpu_quota"):
            value = getattr(self, name)
            if value is not None and value < UNLIMITED:
                unit = "µs" if name == "cpu_quota" else "bytes"
                raise InvalidArgument(f"{name} must be a positive number of {unit} or -1, "
                                      f"not {value}")
        if self.memory_reservation is not None and self.memory_reservation < UNLIMITED:
            raise InvalidArgument(f"memory_reservation must be a positive number of bytes or -1, "
                                  f"not {self.memory_reservation}")
        if self.memory and self.memory > 0 and self.memory_swap and self.memory_swap > 0 \
                and self.memory_swap < self.memory:
            raise InvalidArgument("Minimum memoryswap limit should be larger than memory limit, "
                                  "see usage")
        if self.memory == UNLIMITED and self.memory_swap and self.memory_swap > 0:
            raise InvalidArgument("a memory+swap limit needs a memory limit")
        if self.cpu_period and not 1000 <= self.cpu_period <= 1_000_000:
            raise InvalidArgument("CPU cfs period can not be less than 1ms (i.e. 1000) or larger "
                                  "than 1s (i.e. 1000000)")
        if self.cpu_quota and self.cpu_quota > 0 and self.cpu_quota < 1000:
            raise InvalidArgument("CPU cfs quota can not be less than 1ms (i.e. 1000)")
        if self.cpu_shares is not None and self.cpu_shares < 0:
            raise InvalidArgument(f"cpu_shares must not be negative: {self.cpu_shares}")
        if self.blkio_weight and not 10 <= self.blkio_weight <= 1000:
            raise InvalidArgument("Range of blkio weight is from 10 to 1000")
        for name in ("blkio_weight_device",) + THROTTLES:
            for entry in getattr(self, name) or []:
                if not (isinstance(entry, (list, tuple)) and len(entry) == 3
                        and all(isinstance(x, int) and x >= 0 for x in entry)):
                    raise InvalidArgument(f"{name}: [major, minor, value] entries expected")

    def swap_total(self) -> int | None:
        """The memory + swap limit to apply: the explicit value, or Docker's 2 × memory default."""
        if self.memory_swap:
            return self.memory_swap
        if self.memory and self.memory > 0:
            return 2 * self.memory
        if self.memory == UNLIMITED:
            return UNLIMITED
        return None


@dataclass
class JobStatistics:
    """What the job used (QueryInformationJobObject), read from the cgroup's accounting files."""

    memory_usage: int = 0
    memory_max_usage: int = 0
    memory_limit: int | None = None
    """``None`` when there is no memory limit."""
    memory_stat: dict[str, int] = field(default_factory=dict)
    cpu_usage_ns: int = 0
    cpu_user_ns: int = 0
    cpu_system_ns: int = 0
    percpu_usage: list[int] = field(default_factory=list)
    """Per-CPU usage in ns (v1 ``cpuacct.usage_percpu``; empty on v2, which does not count it)."""
    throttled_periods: int = 0
    throttled_time_ns: int = 0
    nr_periods: int = 0
    pids_current: int = 0
    pids_limit: int | None = None
    """``None`` when there is no process limit."""
    blkio_read_bytes: int = 0
    blkio_write_bytes: int = 0
    blkio_read_ops: int = 0
    blkio_write_ops: int = 0
    oom_kill_count: int = 0


# --- cgroupfs file access, shared by both backends ---------------------------------------------

def cgroup_error(err: OSError, path: str, value: str | None = None,
                 object_id: str = "", operation: str = "") -> SiloboxError:
    """Translate a failed cgroupfs access into the closed error set, naming the file and value."""
    what = f"writing {value!r} to {path}" if value is not None else f"accessing {path}"
    reason = os.strerror(err.errno) if err.errno else str(err)
    kwargs = {"operation": operation, "object_id": object_id, "cause": err}
    if err.errno == errno.ENOENT:
        return NotFound(f"{what}: {reason} (job object not created, or controller not enabled)",
                        **kwargs)
    if err.errno in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW):
        return InvalidArgument(f"{what}: the kernel rejected the value ({reason})", **kwargs)
    if err.errno == errno.EBUSY:
        return Conflict(f"{what}: {reason}", **kwargs)
    if err.errno == errno.ESRCH:
        return NotFound(f"{what}: no such process", **kwargs)
    if err.errno == errno.ENODEV:   # a file of a cgroup removed meanwhile (its last task ended)
        return NotFound(f"{what}: the job object was removed meanwhile", **kwargs)
    return SystemFailure(f"{what}: {reason}", **kwargs)


def write_file(path: str, value: str | int, object_id: str = "", operation: str = "") -> None:
    """One write(2) of one value: cgroupfs parses each write as a whole."""
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        raise cgroup_error(e, path, str(value), object_id, operation) from e


def read_file(path: str, object_id: str = "") -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise cgroup_error(e, path, object_id=object_id) from e


def read_optional(path: str) -> str | None:
    """The file's text, or ``None`` if this kernel or controller does not provide it."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def parse_keyed(text: str | None) -> dict[str, int]:
    """``key value`` lines (``memory.stat``, ``cpu.stat``, ``memory.events``) as a dict."""
    result: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            result[key] = int(value)
        except ValueError:
            continue
    return result


def parse_int(text: str | None, default: int = 0) -> int:
    if text is None:
        return default
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return default


def read_pids(procs_file: str) -> list[int]:
    """The pids in a cgroup's procs file; none once the cgroup is gone. A cgroup removed by
    someone else after we opened its file reads as ENODEV, which means the same."""
    try:
        with open(procs_file) as f:
            return [int(line) for line in f.read().split()]
    except FileNotFoundError:
        return []
    except OSError as e:
        if e.errno == errno.ENODEV:
            return []
        raise


def signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def tree_dirs(top: str) -> list[str]:
    """``top`` and its sub-groups, deepest first: the order rmdir needs."""
    if not os.path.isdir(top):
        return []
    return [root for root, _dirs, _files in os.walk(top, topdown=False)]


def remove_tree(top: str) -> bool:
    """rmdir a cgroup and its sub-groups; True when gone, False while busy (tasks still exiting)."""
    for directory in tree_dirs(top):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno == errno.EBUSY:
                return False
            raise cgroup_error(e, directory, operation="rmdir") from e
    return True


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` with a short, growing sleep; True as soon as it holds."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def check_component_path(value: str, what: str) -> str:
    """A relative cgroup path made of safe names (no ``..``, no empty parts)."""
    parts = value.strip("/").split("/")
    if not value.strip("/") or not all(_NAME.fullmatch(p) and p not in (".", "..") for p in parts):
        raise InvalidArgument(f"invalid {what} {value!r}: use names of letters, digits, '_', '.', "
                              "'-' separated by '/'")
    return "/".join(parts)


# --- backend selection ---------------------------------------------------------------------------

class _Backend(Protocol):
    directories: list[str]

    def create(self, limits: JobLimits) -> None: ...
    def exists(self) -> bool: ...
    def procs_files(self) -> list[str]: ...
    def assign(self, pid: int) -> None: ...
    def set_limits(self, limits: JobLimits) -> None: ...
    def pids(self) -> list[int]: ...
    def freeze(self, timeout: float) -> None: ...
    def thaw(self) -> None: ...
    def frozen(self) -> bool: ...
    def kill_all(self, sig: int) -> None: ...
    def statistics(self) -> JobStatistics: ...
    def oom_killed(self) -> bool: ...
    def delete(self, timeout: float) -> None: ...


def io_support() -> frozenset[str]:
    """What block I/O control the host offers a job object: ``throttle`` (per-device bps and
    iops limits) and ``weight`` (a proportional weight, which needs an I/O scheduler with one:
    BFQ or CFQ). Docker asks the same of its kernel and drops what is missing."""
    layout = features.cgroup_layout()
    out = set()
    if backend_name() == "v2":
        root = layout.unified_mount or ""
        if "io" in layout.unified_controllers:
            out.add("throttle")
            parent = os.path.join(root, DEFAULT_PARENT)
            for base in (parent, root):
                if os.path.exists(os.path.join(base, "io.weight")) or \
                        os.path.exists(os.path.join(base, "io.bfq.weight")):
                    out.add("weight")
                    break
        return frozenset(out)
    mount = layout.v1_mount("blkio")
    if mount:
        if os.path.exists(os.path.join(mount, "blkio.throttle.read_bps_device")):
            out.add("throttle")
        if os.path.exists(os.path.join(mount, "blkio.weight")) or \
                os.path.exists(os.path.join(mount, "blkio.bfq.weight")):
            out.add("weight")
    return frozenset(out)


def backend_name() -> str:
    """``"v2"`` if the unified hierarchy has the controllers a job object needs, else ``"v1"``."""
    layout = features.cgroup_layout()
    if layout.unified_mount and V2_REQUIRED_CONTROLLERS <= layout.unified_controllers:
        return "v2"
    if layout.v1_controllers:
        return "v1"
    if layout.unified_mount:
        missing = ", ".join(sorted(V2_REQUIRED_CONTROLLERS - layout.unified_controllers))
        raise Unavailable(f"cgroup v2 is mounted at {layout.unified_mount} without the {missing} "
                          "controller(s) and no cgroup v1 hierarchy is mounted; job objects need "
                          "them (are the controllers bound to another hierarchy?)")
    raise Unavailable("no cgroup filesystem is mounted (expected /sys/fs/cgroup); job objects "
                      "need cgroups")


def _make_backend(kind: str, path: str, object_id: str) -> _Backend:
    if kind == "v1":
        from silobox.kernel.jobobject.v1 import V1JobObject
        return V1JobObject(path, features.cgroup_layout(), object_id)
    if kind == "v2":
        from silobox.kernel.jobobject.v2 import V2JobObject
        mount = features.cgroup_layout().unified_mount
        if mount is None:
            raise Unavailable("cgroup v2 is not mounted on this host")
        return V2JobObject(path, mount, object_id)
    raise InvalidArgument(f"unknown job object backend {kind!r} (expected 'v1' or 'v2')")


class JobObject:
    """The job object of one container: a cgroup named by the container's full id.

    ``backend`` forces ``"v1"`` or ``"v2"``; by default the cgroup layout probe decides.
    """

    def __init__(self, name: str, parent: str = DEFAULT_PARENT, *, backend: str | None = None
                 ) -> None:
        if not _NAME.fullmatch(name) or name in (".", ".."):
            raise InvalidArgument(f"invalid job object name {name!r}: use the container's id")
        self.name = name
        self.parent = check_component_path(parent, "parent group")
        self.path = f"/{self.parent}/{name}"
        self.backend = backend or backend_name()
        self._impl = _make_backend(self.backend, self.path, name)

    def __repr__(self) -> str:
        return f"JobObject({self.path!r}, backend={self.backend!r})"

    @property
    def directories(self) -> list[str]:
        """Absolute cgroupfs directories of this job object (one per hierarchy, or one on v2)."""
        return list(self._impl.directories)

    def create(self, limits: JobLimits | None = None) -> None:
        """Create the cgroup(s), device policy and limits; on an existing one, re-apply them."""
        limits = limits or JobLimits()
        limits.validate()
        self._impl.create(limits)

    def exists(self) -> bool:
        """True if the job object's directory exists in any hierarchy."""
        return self._impl.exists()

    def procs_files(self) -> list[str]:
        """Files a freshly forked, single-threaded child writes ``0`` to, to join the job.

        Computed before fork so that the child does nothing but open(2) and write(2). On v1 these
        are the ``tasks`` files (see the v1 backend: no grace-period wait), on v2 ``cgroup.procs``.
        """
        return self._impl.procs_files()

    def assign(self, pid: int) -> None:
        """Move a process (all its threads) into the job (AssignProcessToJobObject)."""
        self._impl.assign(pid)

    def set_limits(self, limits: JobLimits) -> None:
        """Change limits, also on a running job (``docker update``, HCS Modify)."""
        limits.validate()
        self._impl.set_limits(limits)

    def pids(self) -> list[int]:
        """Host pids of every process in the job, nested groups included (sorted)."""
        return self._impl.pids()

    def freeze(self, timeout: float = FREEZE_TIMEOUT) -> None:
        """Stop every process of the job (HCS Pause) and wait until the kernel reports frozen."""
        self._impl.freeze(timeout)

    def thaw(self) -> None:
        """Let the job's processes run again (HCS Resume)."""
        self._impl.thaw()

    def frozen(self) -> bool:
        return self._impl.frozen()

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process of the job at once (TerminateJobObject for SIGKILL).

        Does not wait for the processes to exit; see :meth:`wait_empty`. A paused job stays paused
        for signals other than SIGKILL.
        """
        self._impl.kill_all(sig)

    def wait_empty(self, timeout: float = 5.0) -> bool:
        """Wait until no process is left in the job (ACTIVE_PROCESS_ZERO); False on timeout."""
        return wait_until(lambda: not self._impl.pids(), timeout)

    def statistics(self) -> JobStatistics:
        return self._impl.statistics()

    def oom_killed(self) -> bool:
        """True if the kernel's OOM killer killed a process of this job for its memory limit."""
        return self._impl.oom_killed()

    def delete(self, timeout: float = 5.0) -> None:
        """Kill what is left, then remove the cgroup(s); a missing job object is fine."""
        self._impl.delete(timeout)

    def rename(self, new_name: str) -> "JobObject":
        """Give the job object another name under the same parent; members and limits stay.

        A cgroupfs rename moves no process, so it costs none of the attach's RCU grace period:
        this is how a job object prepared ahead of time becomes a container's. cgroup v2 has
        no rename, so there the members move to a new group with the same limits.
        """
        new = JobObject(new_name, self.parent, backend=self.backend)
        if self.backend == "v2":
            self._impl.move_to(new._impl)  # type: ignore[attr-defined]
            return new
        done: list[tuple[str, str]] = []
        try:
            for old_dir, new_dir in zip(self.directories, new.directories):
                os.rename(old_dir, new_dir)
                done.append((old_dir, new_dir))
        except OSError as e:
            for old_dir, new_dir in reversed(done):
                os.rename(new_dir, old_dir)
            raise cgroup_error(e, new.path) from None
        return new


def list_job_objects(parent: str = DEFAULT_PARENT, *, backend: str | None = None) -> list[str]:
    """Names of the job objects under ``parent`` (present in any hierarchy), sorted."""
    parent = check_component_path(parent, "parent group")
    directories = _parent_directories(parent, backend)
    names: set[str] = set()
    for directory in directories:
        try:
            with os.scandir(directory) as entries:
                names.update(e.name for e in entries if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            continue
    return sorted(n for n in names if _NAME.fullmatch(n))


def cleanup_parent(parent: str, *, backend: str | None = None) -> None:
    """Remove an empty parent group (only its last component) from every hierarchy."""
    parent = check_component_path(parent, "parent group")
    left = list_job_objects(parent, backend=backend)
    if left:
        raise Conflict(f"parent group {parent} still holds job objects: {', '.join(left)}",
                       operation="cleanup_parent", object_id=parent)
    for directory in _parent_directories(parent, backend):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise cgroup_error(e, directory, operation="cleanup_parent", object_id=parent) from e


def missing_groups(parent: str, *, backend: str | None = None) -> list[str]:
    """The directories of ``parent`` and of each group above it, in every hierarchy, that do
    not exist yet (outermost first): what creating a job object below it will make."""
    parent = check_component_path(parent, "parent group")
    parts = parent.split("/")
    out = []
    for depth in range(1, len(parts) + 1):
        for directory in _parent_directories("/".join(parts[:depth]), backend):
            if not os.path.isdir(directory):
                out.append(directory)
    return out


def remove_groups(directories: list[str]) -> list[str]:
    """rmdir cgroup directories, deepest first, where empty (no sub-group, no process): the
    parent groups we made once nothing uses them. Returns those still there."""
    left = []
    for directory in sorted(directories, key=lambda d: d.count("/"), reverse=True):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise cgroup_error(e, directory, operation="rmdir") from e
            left.append(directory)
    return left


def _parent_directories(parent: str, backend: str | None) -> list[str]:
    kind = backend or backend_name()
    layout = features.cgroup_layout()
    if kind == "v2":
        if layout.unified_mount is None:
            raise Unavailable("cgroup v2 is not mounted on this host")
        return [os.path.join(layout.unified_mount, parent)]
    if kind != "v1":
        raise InvalidArgument(f"unknown job object backend {kind!r} (expected 'v1' or 'v2')")
    from silobox.kernel.jobobject.v1 import hierarchy_mounts
    return [os.path.join(mount, parent) for mount in hierarchy_mounts(layout)]

