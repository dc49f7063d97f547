"""cgroup v1 backend of the job object: one directory per controller hierarchy.

On a v1 (or hybrid) host every controller has its own mounted hierarchy, so one Windows job object
is a set of same-named directories (``<mount>/<parent>/<id>``), and every operation addresses the
hierarchy of the controller that implements it: limits in memory/cpu/cpuset/pids, accounting in
memory/cpuacct/cpu/blkio/pids, suspension in freezer, device access in devices.
"""

from __future__ import annotations

import os
import signal
import time

from silobox.errors import Conflict, InvalidArgument, NotFound, SystemFailure, Unavailable
from silobox.kernel.features import CgroupLayout
from silobox.kernel.jobobject import (THROTTLES, UNLIMITED, JobLimits, JobStatistics, parse_int, parse_keyed,
                                      read_file, read_optional, read_pids, remove_tree,
                                      signal_pids, tree_dirs, wait_until, write_file)
from silobox.kernel.jobobject.devices import effective_rules, v1_expected_list

CONTROLLERS = ("cpuset", "cpu", "cpuacct", "memory", "devices", "freezer", "blkio", "pids")
"""The v1 hierarchies a job object lives in; cpuset first, as it must be set up before joining."""

_UNLIMITED_FLOOR = 1 << 62
"""v1 reports "no memory limit" as PAGE_COUNTER_MAX pages (≈ 2^63); anything above is none."""

_MEMBERSHIP_ORDER = ("freezer", "pids", "memory", "cpu", "cpuacct", "cpuset", "devices", "blkio")


def hierarchy_mounts(layout: CgroupLayout) -> list[str]:
    """Distinct mount points of the hierarchies we use (co-mounted controllers share one)."""
    mounts: list[str] = []
    for controller in CONTROLLERS:
        mount = layout.v1_mount(controller)
        if mount and mount not in mounts:
            mounts.append(mount)
    return mounts


class V1JobObject:
    """A job object as same-named groups in each cgroup v1 hierarchy."""

    def __init__(self, path: str, layout: CgroupLayout, object_id: str) -> None:
        self.path = path
        self.object_id = object_id
        self._dirs: dict[str, str] = {}
        self._mounts: dict[str, str] = {}
        for controller in CONTROLLERS:
            mount = layout.v1_mount(controller)
            if mount:
                self._dirs[controller] = mount + path
                self._mounts[controller] = mount
        self.directories: list[str] = list(dict.fromkeys(self._dirs.values()))
        if not self.directories:
            raise Unavailable("no cgroup v1 hierarchy is mounted for any of "
                              f"{', '.join(CONTROLLERS)}")

    # -- helpers ---------------------------------------------------------------------------------

    def _file(self, controller: str, name: str) -> str:
        directory = self._dirs.get(controller)
        if directory is None:
            raise Unavailable(f"the cgroup v1 {controller} controller is not mounted on this host; "
                              f"mount it to use {name}", object_id=self.object_id)
        return os.path.join(directory, name)

    def _write(self, controller: str, name: str, value: str | int, operation: str) -> None:
        write_file(self._file(controller, name), value, self.object_id, operation)

    def _read(self, controller: str, name: str) -> str:
        return read_file(self._file(controller, name), self.object_id)

    def _optional(self, controller: str, name: str) -> str | None:
        directory = self._dirs.get(controller)
        return read_optional(os.path.join(directory, name)) if directory else None

    def _membership_dir(self) -> str:
        for controller in _MEMBERSHIP_ORDER:
            if controller in self._dirs:
                return self._dirs[controller]
        return self.directories[0]

    def _require(self) -> None:
        if not self.exists():
            raise NotFound(f"job object {self.object_id} does not exist ({self.path})",
                           object_id=self.object_id)

    # -- lifecycle -------------------------------------------------------------------------------

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.directories)

    def create(self, limits: JobLimits) -> None:
        existed = self.exists()
        try:
            for mount in dict.fromkeys(self._mounts.values()):
                self._make_groups(mount)
            self._apply_devices(limits)
            self.set_limits(limits)
        except BaseException:
            if not existed:
                try:
                    self.delete(1.0)
                except Exception:  # the original error is the one to report
                    pass
            raise

    def _make_groups(self, mount: str) -> None:
        """mkdir the parent groups on demand and the job's own group in one hierarchy.

        A new cpuset group starts with empty ``cpus``/``mems`` and refuses tasks until they are
        filled in, so each level copies them from its parent.
        """
        is_cpuset = self._mounts.get("cpuset") == mount
        current = mount
        for part in self.path.strip("/").split("/"):
            parent, current = current, os.path.join(current, part)
            try:
                os.mkdir(current, 0o755)
            except FileExistsError:
                pass
            except OSError as e:
                raise SystemFailure(f"creating cgroup {current} failed: {e.strerror}",
                                    operation="create", object_id=self.object_id, cause=e) from e
            if is_cpuset:
                for name in ("cpuset.cpus", "cpuset.mems"):
                    own = os.path.join(current, name)
                    if not read_file(own, self.object_id).strip():
                        write_file(own, read_file(os.path.join(parent, name)).strip() or "\n",
                                   self.object_id, "create")

    def _apply_devices(self, limits: JobLimits) -> None:
        """Deny every device, then allow Docker's default set (or everything when privileged)."""
        rules = effective_rules(limits.privileged, limits.devices)
        if "devices" not in self._dirs:
            if limits.privileged:
                return
            raise Unavailable("the cgroup v1 devices controller is not mounted: device access of "
                              "a container could not be restricted", object_id=self.object_id)
        shown = {line.strip() for line in self._read("devices", "devices.list").splitlines()
                 if line.strip()}
        if shown == v1_expected_list(rules):
            return
        for rule in rules:
            target = "devices.allow" if rule.allow else "devices.deny"
            for entry in rule.v1_entries():
                self._write("devices", target, entry, "create")

    def delete(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = self.pids()
            if left and os.path.isdir(self._dirs.get("freezer", "")):
                self.kill_all(signal.SIGKILL)
            elif left:
                signal_pids(left, signal.SIGKILL)
            busy = [d for d in self.directories if not remove_tree(d)]
            if not busy:
                return
            if time.monotonic() >= deadline:
                raise Conflict(f"job object {self.object_id} could not be removed within "
                               f"{timeout}s: {', '.join(busy)} still busy (pids {self.pids()})",
                               operation="delete", object_id=self.object_id)
            time.sleep(0.005)

    # -- membership ------------------------------------------------------------------------------

    def procs_files(self) -> list[str]:
        # ``tasks``, not ``cgroup.procs``: a thread writing "0" to ``tasks`` moves only itself,
        # and the kernel then skips the global threadgroup lock, whose first writer waits for an
        # RCU grace period (6-15 ms measured here). A freshly forked child has one thread, so
        # this moves the whole process.
        return [os.path.join(d, "tasks") for d in self.directories]

    def assign(self, pid: int) -> None:
        self._require()
        for d in self.directories:
            write_file(os.path.join(d, "cgroup.procs"), pid, self.object_id, "assign")

    def pids(self) -> list[int]:
        found: set[int] = set()
        for directory in tree_dirs(self._membership_dir()):
            found.update(read_pids(os.path.join(directory, "cgroup.procs")))
        return sorted(found)

    # -- limits ----------------------------------------------------------------------------------

    def set_limits(self, limits: JobLimits) -> None:
        self._require()
        self._set_memory(limits)
        if limits.memory_reservation:
            self._write("memory", "memory.soft_limit_in_bytes", limits.memory_reservation,
                        "set_limits")
        self._set_cpu(limits)
        if limits.cpuset_cpus:
            self._write("cpuset", "cpuset.cpus", limits.cpuset_cpus, "set_limits")
        if limits.cpuset_mems:
            self._write("cpuset", "cpuset.mems", limits.cpuset_mems, "set_limits")
        if limits.pids_limit is not None:
            self._write("pids", "pids.max", "max" if limits.pids_limit <= 0 else limits.pids_limit,
                        "set_limits")
        self._set_blkio(limits)

    def _set_blkio(self, limits: JobLimits) -> None:
        """``blkio.weight[_device]`` (CFQ/BFQ only; BFQ names them ``blkio.bfq.*``) and the
        ``blkio.throttle.*_device`` files, one ``major:minor value`` line per device."""
        if limits.blkio_weight or limits.blkio_weight_device:
            prefix = "blkio.bfq." if self._optional("blkio", "blkio.bfq.weight") is not None \
                and self._optional("blkio", "blkio.weight") is None else "blkio."
            if limits.blkio_weight:
                self._write("blkio", prefix + "weight", limits.blkio_weight, "set_limits")
            for major, minor, weight in limits.blkio_weight_device or []:
                self._write("blkio", prefix + "weight_device", f"{major}:{minor} {weight}",
                            "set_limits")
        for name, fname in zip(THROTTLES, ("read_bps_device", "write_bps_device",
                                           "read_iops_device", "write_iops_device")):
            for major, minor, rate in getattr(limits, name) or []:
                self._write("blkio", f"blkio.throttle.{fname}", f"{major}:{minor} {rate}",
                            "set_limits")

    def _set_memory(self, limits: JobLimits) -> None:
        """Write memory and memory+swap limits in the order the kernel accepts.

        v1 insists on memory ≤ memory+swap after every single write, so when the new memory+swap
        is below the current memory limit, memory goes first; otherwise memory+swap goes first.
        """
        memory = limits.memory or None
        swap = limits.swap_total()
        if memory is None and swap is None:
            return
        if not os.path.exists(self._file("memory", "memory.memsw.limit_in_bytes")):
            # no swap accounting (swapaccount=0): only the memory limit can be set
            if memory is not None:
                self._write("memory", "memory.limit_in_bytes", memory, "set_limits")
            return
        current = parse_int(self._read("memory", "memory.limit_in_bytes"))
        new_memory = current if memory is None else memory
        memory_limited = new_memory != UNLIMITED and new_memory < _UNLIMITED_FLOOR
        assert swap is not None  # swap_total() only returns None when memory is None too
        if swap != UNLIMITED:
            if not memory_limited:
                raise InvalidArgument("a memory+swap limit needs a memory limit",
                                      object_id=self.object_id)
            if swap < new_memory:
                raise InvalidArgument("Minimum memoryswap limit should be larger than memory "
                                      "limit, see usage", object_id=self.object_id)
        steps = [("memory.memsw.limit_in_bytes", swap)]
        if memory is not None:
            steps.append(("memory.limit_in_bytes", memory))
        if swap != UNLIMITED and swap < current:
            steps.reverse()
        for name, value in steps:
            self._write("memory", name, value, "set_limits")

    def _set_cpu(self, limits: JobLimits) -> None:
        steps: list[tuple[str, int]] = []
        if limits.cpu_period:
            steps.append(("cpu.cfs_period_us", limits.cpu_period))
        if limits.cpu_quota:
            steps.append(("cpu.cfs_quota_us", limits.cpu_quota))
        try:
            for name, value in steps:
                self._write("cpu", name, value, "set_limits")
        except InvalidArgument:
            if len(steps) < 2:
                raise
            # the intermediate period/quota pair may break the parent's bandwidth: other order
            for name, value in reversed(steps):
                self._write("cpu", name, value, "set_limits")
        if limits.cpu_shares:
            self._write("cpu", "cpu.shares", limits.cpu_shares, "set_limits")

    # -- suspension and termination --------------------------------------------------------------

    def _freezer_state(self) -> str:
        return self._read("freezer", "freezer.state").strip()

    def freeze(self, timeout: float) -> None:
        """Write FROZEN, then poll: the v1 freezer is asynchronous (FREEZING until all stop)."""
        self._require()
        self._write("freezer", "freezer.state", "FROZEN", "freeze")
        if not wait_until(lambda: self._freezer_state() == "FROZEN", timeout):
            self._write("freezer", "freezer.state", "THAWED", "freeze")
            raise SystemFailure(f"job object {self.object_id} did not freeze within {timeout}s "
                                "(a task may be stuck in uninterruptible sleep); thawed again",
                                operation="freeze", object_id=self.object_id)

    def thaw(self) -> None:
        self._require()
        self._write("freezer", "freezer.state", "THAWED", "thaw")

    def frozen(self) -> bool:
        self._require()
        return self._freezer_state() == "FROZEN"

    def kill_all(self, sig: int) -> None:
        """v1 has no cgroup.kill: freeze so nothing can fork, signal every task, thaw."""
        self._require()
        if not self.pids():
            return  # nothing to stop forking: skip the freeze round trip
        if "freezer" not in self._dirs:
            signal_pids(self.pids(), sig)
            return
        was_frozen = self.frozen()
        try:
            self.freeze(1.0)
        except SystemFailure:
            pass  # signal anyway: SIGKILL also reaches tasks that have not frozen yet
        signal_pids(self.pids(), sig)
        if sig == signal.SIGKILL or not was_frozen:
            self.thaw()

    # -- accounting ------------------------------------------------------------------------------

    def oom_killed(self) -> bool:
        self._require()
        return parse_keyed(self._read("memory", "memory.oom_control")).get("oom_kill", 0) > 0

    def statistics(self) -> JobStatistics:
        self._require()
        st = JobStatistics()
        if "memory" in self._dirs:
            st.memory_usage = parse_int(self._optional("memory", "memory.usage_in_bytes"))
            st.memory_max_usage = parse_int(self._optional("memory", "memory.max_usage_in_bytes"))
            limit = parse_int(self._optional("memory", "memory.limit_in_bytes"), UNLIMITED)
            st.memory_limit = None if limit < 0 or limit >= _UNLIMITED_FLOOR else limit
            st.memory_stat = parse_keyed(self._optional("memory", "memory.stat"))
            st.oom_kill_count = parse_keyed(
                self._optional("memory", "memory.oom_control")).get("oom_kill", 0)
        if "cpuacct" in self._dirs:
            st.cpu_usage_ns = parse_int(self._optional("cpuacct", "cpuacct.usage"))
            user = self._optional("cpuacct", "cpuacct.usage_user")
            system = self._optional("cpuacct", "cpuacct.usage_sys")
            if user is not None and system is not None:
                st.cpu_user_ns, st.cpu_system_ns = parse_int(user), parse_int(system)
            else:
                ticks = parse_keyed(self._optional("cpuacct", "cpuacct.stat"))
                ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
                st.cpu_user_ns = ticks.get("user", 0) * ns_per_tick
                st.cpu_system_ns = ticks.get("system", 0) * ns_per_tick
            st.percpu_usage = [int(v) for v in
                               (self._optional("cpuacct", "cpuacct.usage_percpu") or "").split()]
        if "cpu" in self._dirs:
            cpu = parse_keyed(self._optional("cpu", "cpu.stat"))
            st.nr_periods = cpu.get("nr_periods", 0)
            st.throttled_periods = cpu.get("nr_throttled", 0)
            st.throttled_time_ns = cpu.get("throttled_time", 0)
        if "pids" in self._dirs:
            st.pids_current = parse_int(self._optional("pids", "pids.current"))
            raw = (self._optional("pids", "pids.max") or "max").strip()
            st.pids_limit = None if raw == "max" else parse_int(raw)
        if "blkio" in self._dirs:
            st.blkio_read_bytes, st.blkio_write_bytes = _blkio_totals(
                self._optional("blkio", "blkio.throttle.io_service_bytes_recursive"))
            st.blkio_read_ops, st.blkio_write_ops = _blkio_totals(
                self._optional("blkio", "blkio.throttle.io_serviced_recursive"))
        return st


def _blkio_totals(text: str | None) -> tuple[int, int]:
    """Sum the per-device ``MAJ:MIN Read|Write N`` lines of a blkio throttle file."""
    read = write = 0
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        if parts[1] == "Read":
            read += parse_int(parts[2])
        elif parts[1] == "Write":
            write += parse_int(parts[2])
    return read, write
