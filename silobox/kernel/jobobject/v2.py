"""cgroup v2 backend of the job object: one directory in the unified hierarchy.

The unified hierarchy puts every controller on one tree, so a job object is a single leaf group
``<mount>/<parent>/<id>``. Controllers reach it only when each ancestor lists them in
``cgroup.subtree_control``, and an ancestor that enables them must hold no processes itself (the
"no internal processes" rule). Suspension is ``cgroup.freeze``, termination ``cgroup.kill``, and
device access is a BPF program (see :mod:`.devices`) because v2 has no devices controller.
"""

from __future__ import annotations

import os
import signal
import time

from silobox.errors import (Conflict, InvalidArgument, NotFound, SiloboxError, SystemFailure,
                            Unavailable)
from silobox.kernel.jobobject import (THROTTLES, UNLIMITED, JobLimits, JobStatistics, parse_int, parse_keyed,
                                      read_file, read_optional, read_pids, remove_tree,
                                      signal_pids, tree_dirs, wait_until, write_file)
from silobox.kernel.jobobject.devices import apply_device_filter, copy_device_filters, effective_rules

FREEZE_TIMEOUT = 5.0

DELEGATED_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")
"""Controllers enabled down to the job objects, where the host offers them."""


def shares_to_weight(shares: int) -> int:
    """Convert v1 ``cpu.shares`` (2–262144, default 1024) to v2 ``cpu.weight`` (1–10000).

    The same linear map runc and crun use, so ``--cpu-shares`` means the same on both versions.
    """
    shares = max(2, min(262144, shares))
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_to_io_weight(weight: int) -> int:
    """Docker's ``--blkio-weight`` (10–1000) → ``io.weight`` (1–10000), as runc maps it."""
    return 1 + (max(10, min(1000, weight)) - 10) * 9999 // 990


class V2JobObject:
    """A job object as one leaf group of the unified cgroup v2 hierarchy."""

    def __init__(self, path: str, mount: str, object_id: str) -> None:
        self.path = path
        self.mount = mount
        self.object_id = object_id
        self.dir = mount + path
        self.directories: list[str] = [self.dir]

    # -- helpers ---------------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _limit_file(self, name: str) -> str:
        """Path of a controller's interface file, or Unavailable naming the missing controller."""
        path = self._path(name)
        if not os.path.exists(path):
            self._require()
            controller = name.split(".", 1)[0]
            if controller == "cgroup":
                raise Unavailable(f"{name} is not available: this kernel is too old for it",
                                  object_id=self.object_id)
            raise Unavailable(f"{name} is not available: the cgroup v2 {controller} controller is "
                              f"not enabled for {self.dir} (not offered by "
                              f"{os.path.dirname(self.dir)}/cgroup.controllers?)",
                              object_id=self.object_id)
        return path

    def _write(self, name: str, value: str | int, operation: str) -> None:
        write_file(self._limit_file(name), value, self.object_id, operation)

    def _require(self) -> None:
        if not os.path.isdir(self.dir):
            raise NotFound(f"job object {self.object_id} does not exist ({self.dir})",
                           object_id=self.object_id)

    def _events(self, name: str) -> dict[str, int]:
        return parse_keyed(read_optional(self._path(name)))

    # -- lifecycle -------------------------------------------------------------------------------

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def create(self, limits: JobLimits) -> None:
        existed = self.exists()
        try:
            self._make_groups()
            apply_device_filter(self.dir, effective_rules(limits.privileged, limits.devices))
            self.set_limits(limits)
        except BaseException:
            if not existed:
                try:
                    self.delete(1.0)
                except Exception:  # the original error is the one to report
                    pass
            raise

    def _make_groups(self) -> None:
        current = self.mount
        for part in self.path.strip("/").split("/"):
            self._delegate(current)
            current = os.path.join(current, part)
            try:
                os.mkdir(current, 0o755)
            except FileExistsError:
                pass
            except OSError as e:
                raise SystemFailure(f"creating cgroup {current} failed: {e.strerror}",
                                    operation="create", object_id=self.object_id, cause=e) from e

    def _delegate(self, group: str) -> None:
        """Enable our controllers for the children of ``group`` (only those it offers)."""
        offered = set(read_file(os.path.join(group, "cgroup.controllers")).split())
        enabled = set(read_file(os.path.join(group, "cgroup.subtree_control")).split())
        wanted = [c for c in DELEGATED_CONTROLLERS if c in offered and c not in enabled]
        if not wanted:
            return
        try:
            write_file(os.path.join(group, "cgroup.subtree_control"),
                       " ".join(f"+{c}" for c in wanted), self.object_id, "create")
        except Conflict as e:
            holders = read_pids(os.path.join(group, "cgroup.procs"))
            raise Conflict(f"cannot enable {', '.join(wanted)} below {group}: it holds processes "
                           f"{holders[:8]} and cgroup v2 only delegates controllers from groups "
                           "without processes; move them into a leaf group first",
                           operation="create", object_id=self.object_id, cause=e) from e

    def delete(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.exists() and self.pids():
                self.kill_all(signal.SIGKILL)
            if remove_tree(self.dir):
                return
            if time.monotonic() >= deadline:
                raise Conflict(f"job object {self.object_id} could not be removed within "
                               f"{timeout}s: {self.dir} still busy (pids {self.pids()})",
                               operation="delete", object_id=self.object_id)
            time.sleep(0.005)

    _CARRIED = ("memory.max", "memory.swap.max", "memory.low", "cpu.max", "cpu.weight",
                "pids.max", "io.max", "io.weight", "cpuset.cpus", "cpuset.mems")
    """Interface files a rename carries over (one value per line is written back as is)."""

    def move_to(self, new: "V2JobObject") -> None:
        """The rename of a v2 job object: cgroup v2 refuses rename(2) (kernfs has no rename
        for the unified hierarchy), so the new group is made with this one's limits and device
        filter, the members move (frozen, so none forks past the move) and this group goes."""
        self._require()
        if new.exists():
            raise Conflict(f"job object {new.object_id} exists already", operation="rename",
                           object_id=new.object_id)
        new._make_groups()
        was_frozen = self.frozen()
        try:
            for name in self._CARRIED:
                value = read_optional(self._path(name))
                target = new._path(name)
                if value is None or not os.path.exists(target):
                    continue
                for line in value.splitlines():
                    if line.strip() and line.strip() != (read_optional(target) or "").strip():
                        write_file(target, line.strip(), new.object_id, "rename")
            copy_device_filters(self.dir, new.dir)
            if self.pids():
                self.freeze(FREEZE_TIMEOUT)
                write_file(new._path("cgroup.freeze"), 1, new.object_id, "rename")
                for pid in self.pids():
                    try:
                        new.assign(pid)
                    except NotFound:
                        pass   # it exited meanwhile
                if not was_frozen:
                    write_file(new._path("cgroup.freeze"), 0, new.object_id, "rename")
            if not remove_tree(self.dir):
                raise Conflict(f"job object {self.object_id}: {self.dir} still busy after its "
                               "members moved", operation="rename", object_id=self.object_id)
        except BaseException:
            for pid in new.pids():
                try:
                    self.assign(pid)
                except SiloboxError:
                    pass
            if self.exists() and not was_frozen:
                self.thaw()
            new.delete(1.0)
            raise

    # -- membership ------------------------------------------------------------------------------

    def procs_files(self) -> list[str]:
        return [self._path("cgroup.procs")]

    def assign(self, pid: int) -> None:
        self._require()
        write_file(self._path("cgroup.procs"), pid, self.object_id, "assign")

    def pids(self) -> list[int]:
        found: set[int] = set()
        for directory in tree_dirs(self.dir):
            found.update(read_pids(os.path.join(directory, "cgroup.procs")))
        return sorted(found)

    # -- limits ----------------------------------------------------------------------------------

    def set_limits(self, limits: JobLimits) -> None:
        self._require()
        self._set_memory(limits)
        if limits.memory_reservation:
            reservation = 0 if limits.memory_reservation == UNLIMITED else limits.memory_reservation
            self._write("memory.low", reservation, "set_limits")
        if limits.cpu_quota or limits.cpu_period:
            quota_now, _, period_now = read_file(self._limit_file("cpu.max")).strip().partition(" ")
            quota = quota_now if not limits.cpu_quota else (
                "max" if limits.cpu_quota == UNLIMITED else str(limits.cpu_quota))
            period = str(limits.cpu_period) if limits.cpu_period else period_now
            self._write("cpu.max", f"{quota} {period}", "set_limits")
        if limits.cpu_shares:
            self._write("cpu.weight", shares_to_weight(limits.cpu_shares), "set_limits")
        if limits.cpuset_cpus:
            self._write("cpuset.cpus", limits.cpuset_cpus, "set_limits")
        if limits.cpuset_mems:
            self._write("cpuset.mems", limits.cpuset_mems, "set_limits")
        if limits.pids_limit is not None:
            self._write("pids.max", "max" if limits.pids_limit <= 0 else limits.pids_limit,
                        "set_limits")
        self._set_io(limits)

    def _set_io(self, limits: JobLimits) -> None:
        """``io.weight`` (or BFQ's ``io.bfq.weight``), Docker's 10–1000 scaled to 1–10000, and
        ``io.max`` (``major:minor rbps=… wbps=… riops=… wiops=…``; 0 → ``max``)."""
        if limits.blkio_weight or limits.blkio_weight_device:
            name = "io.bfq.weight" if os.path.exists(self._path("io.bfq.weight")) else "io.weight"
            scale = (lambda w: w) if name == "io.bfq.weight" else blkio_to_io_weight
            if limits.blkio_weight:
                self._write(name, f"default {scale(limits.blkio_weight)}", "set_limits")
            for major, minor, weight in limits.blkio_weight_device or []:
                self._write(name, f"{major}:{minor} {scale(weight)}", "set_limits")
        per_device: dict[tuple[int, int], list[str]] = {}
        for name, key in zip(THROTTLES, ("rbps", "wbps", "riops", "wiops")):
            for major, minor, rate in getattr(limits, name) or []:
                per_device.setdefault((major, minor), []).append(f"{key}={rate or 'max'}")
        for (major, minor), settings in per_device.items():
            self._write("io.max", f"{major}:{minor} {' '.join(settings)}", "set_limits")

    def _set_memory(self, limits: JobLimits) -> None:
        """``memory.max``, ``memory.swap.max``: v2 limits swap alone, so swap = total − memory."""
        memory = limits.memory or None
        swap = limits.swap_total()
        if memory is not None:
            self._write("memory.max", "max" if memory == UNLIMITED else memory, "set_limits")
        if swap is None:
            return
        swap_file = self._path("memory.swap.max")
        if not os.path.exists(swap_file):
            return  # no swap accounting on this kernel: nothing to limit
        if swap == UNLIMITED:
            self._write("memory.swap.max", "max", "set_limits")
            return
        current = read_file(self._limit_file("memory.max")).strip()
        if current == "max":
            raise InvalidArgument("a memory+swap limit needs a memory limit",
                                  object_id=self.object_id)
        if swap < int(current):
            raise InvalidArgument("Minimum memoryswap limit should be larger than memory limit, "
                                  "see usage", object_id=self.object_id)
        self._write("memory.swap.max", swap - int(current), "set_limits")

    # -- suspension and termination --------------------------------------------------------------

    def freeze(self, timeout: float) -> None:
        """Write ``cgroup.freeze`` and wait for ``frozen 1`` in ``cgroup.events``."""
        self._require()
        self._write("cgroup.freeze", 1, "freeze")
        if not wait_until(lambda: self._events("cgroup.events").get("frozen") == 1, timeout):
            self._write("cgroup.freeze", 0, "freeze")
            raise SystemFailure(f"job object {self.object_id} did not freeze within {timeout}s; "
                                "thawed again", operation="freeze", object_id=self.object_id)

    def thaw(self) -> None:
        self._require()
        self._write("cgroup.freeze", 0, "thaw")

    def frozen(self) -> bool:
        self._require()
        return self._events("cgroup.events").get("frozen") == 1

    def kill_all(self, sig: int) -> None:
        """SIGKILL through ``cgroup.kill`` (5.14+, race-free); otherwise freeze, signal, thaw."""
        self._require()
        if sig == signal.SIGKILL and os.path.exists(self._path("cgroup.kill")):
            self._write("cgroup.kill", 1, "kill_all")
            return
        was_frozen = self.frozen()
        try:
            self.freeze(1.0)
        except SystemFailure:
            pass
        signal_pids(self.pids(), sig)
        if sig == signal.SIGKILL or not was_frozen:
            self.thaw()

    # -- accounting ------------------------------------------------------------------------------

    def oom_killed(self) -> bool:
        self._require()
        return self._events("memory.events").get("oom_kill", 0) > 0

    def statistics(self) -> JobStatistics:
        self._require()
        st = JobStatistics()
        st.memory_usage = parse_int(read_optional(self._path("memory.current")))
        st.memory_max_usage = parse_int(read_optional(self._path("memory.peak")))
        limit = (read_optional(self._path("memory.max")) or "max").strip()
        st.memory_limit = None if limit == "max" else parse_int(limit)
        st.memory_stat = parse_keyed(read_optional(self._path("memory.stat")))
        st.oom_kill_count = self._events("memory.events").get("oom_kill", 0)
        cpu = parse_keyed(read_optional(self._path("cpu.stat")))
        st.cpu_usage_ns = cpu.get("usage_usec", 0) * 1000
        st.cpu_user_ns = cpu.get("user_usec", 0) * 1000
        st.cpu_system_ns = cpu.get("system_usec", 0) * 1000
        st.nr_periods = cpu.get("nr_periods", 0)
        st.throttled_periods = cpu.get("nr_throttled", 0)
        st.throttled_time_ns = cpu.get("throttled_usec", 0) * 1000
        st.pids_current = parse_int(read_optional(self._path("pids.current")))
        raw = (read_optional(self._path("pids.max")) or "max").strip()
        st.pids_limit = None if raw == "max" else parse_int(raw)
        io = _io_totals(read_optional(self._path("io.stat")))
        st.blkio_read_bytes, st.blkio_write_bytes = io["rbytes"], io["wbytes"]
        st.blkio_read_ops, st.blkio_write_ops = io["rios"], io["wios"]
        return st


def _io_totals(text: str | None) -> dict[str, int]:
    """Sum ``MAJ:MIN rbytes=… wbytes=… rios=… wios=…`` lines of ``io.stat`` over devices."""
    totals = {"rbytes": 0, "wbytes": 0, "rios": 0, "wios": 0}
    for line in (text or "").splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key in totals:
                totals[key] += parse_int(value)
    return totals
