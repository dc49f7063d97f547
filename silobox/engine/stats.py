"""Docker's stats and top documents, read from the job object and /proc (as hcsshim does)."""

from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterator

from silobox.engine.state import is_live, system_of
from silobox.errors import Conflict, InvalidArgument
from silobox.timeutil import now_iso, ZERO_TIME


def _system_cpu_ns() -> int:
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:8]
    return sum(int(p) for p in parts) * 10**9 // os.sysconf("SC_CLK_TCK")


def _mem_total() -> int:
    """Docker reports the host's RAM as the limit of an unlimited container."""
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


def _network_counters(pid: int) -> dict[str, dict[str, int]]:
    """Docker's ``networks`` section: per interface of the container's network namespace
    (read through its init's /proc/<pid>/net/dev, which the kernel answers from that
    namespace), loopback left out as dockerd does."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, _, counters = line.partition(":")
        name, v = name.strip(), counters.split()
        if name == "lo" or len(v) < 16:
            continue
        out[name] = {"rx_bytes": int(v[0]), "rx_packets": int(v[1]), "rx_errors": int(v[2]),
                     "rx_dropped": int(v[3]), "tx_bytes": int(v[8]), "tx_packets": int(v[9]),
                     "tx_errors": int(v[10]), "tx_dropped": int(v[11])}
    return out


class StatsService:
    """``docker stats`` and ``docker top`` of the containers in the store."""

    def __init__(self, store: Any, compute: Any) -> None:
        self.store = store
        self.compute = compute

    def _stats_doc(self, c: Any, pre: dict[str, Any] | None) -> dict[str, Any]:
        system = system_of(self.compute, c.id)
        base: dict[str, Any] = {"read": now_iso(), "preread": pre["read"] if pre else ZERO_TIME,
                                "name": "/" + c.name, "id": c.id, "num_procs": 0}
        if not is_live(system) or not system.job.exists():
            base.update(cpu_stats={"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0,
                                                 "usage_in_usermode": 0},
                                   "throttling_data": {"periods": 0, "throttled_periods": 0,
                                                       "throttled_time": 0}},
                        memory_stats={}, pids_stats={}, blkio_stats={
                            "io_service_bytes_recursive": None, "io_serviced_recursive": None},
                        storage_stats={})
            base["precpu_stats"] = pre["cpu_stats"] if pre else base["cpu_stats"]
            return base
        st = system.job.statistics()
        ncpu = os.cpu_count() or 1
        cpu = {
            "cpu_usage": {"total_usage": st.cpu_usage_ns, "percpu_usage": st.percpu_usage or None,
                          "usage_in_kernelmode": st.cpu_system_ns,
                          "usage_in_usermode": st.cpu_user_ns},
            "system_cpu_usage": _system_cpu_ns(), "online_cpus": ncpu,
            "throttling_data": {"periods": st.nr_periods, "throttled_periods": st.throttled_periods,
                                "throttled_time": st.throttled_time_ns},
        }
        mem_stats = {k: int(v) for k, v in (st.memory_stat or {}).items()}
        base.update(
            cpu_stats=cpu,
            precpu_stats=pre["cpu_stats"] if pre else {
                "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
                "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}},
            memory_stats={"usage": st.memory_usage, "max_usage": st.memory_max_usage,
                          "limit": st.memory_limit or _mem_total(), "stats": mem_stats},
            pids_stats={"current": st.pids_current,
                        **({"limit": st.pids_limit} if st.pids_limit else {})},
            blkio_stats={
                "io_service_bytes_recursive": [
                    {"major": 0, "minor": 0, "op": "read", "value": st.blkio_read_bytes},
                    {"major": 0, "minor": 0, "op": "write", "value": st.blkio_write_bytes}],
                "io_serviced_recursive": [
                    {"major": 0, "minor": 0, "op": "read", "value": st.blkio_read_ops},
                    {"major": 0, "minor": 0, "op": "write", "value": st.blkio_write_ops}],
                "io_queue_recursive": None, "io_service_time_recursive": None,
                "io_wait_time_recursive": None, "io_merged_recursive": None,
                "io_time_recursive": None, "sectors_recursive": None},
            storage_stats={},
        )
        pid = int(c.state.get("Pid") or 0)
        if pid and c.host_config.get("NetworkMode") != "host" and pid in system.job.pids():
            networks = _network_counters(pid)
            if networks:
                base["networks"] = networks
        return base

    async def container_stats(self, ref: str, stream: bool = True,
                              one_shot: bool = False) -> AsyncIterator[dict[str, Any]]:
        c = self.store.find(ref)

        async def gen() -> AsyncIterator[dict[str, Any]]:
            pre = None
            if not stream and not one_shot:
                pre = self._stats_doc(c, None)
                await asyncio.sleep(1.0)
            while True:
                doc = self._stats_doc(c, pre)
                yield doc
                if not stream or c.id not in self.store or not c.running:
                    return
                pre = doc
                await asyncio.sleep(1.0)

        return gen()

    async def container_top(self, ref: str, ps_args: str | None = None) -> dict[str, Any]:
        c = self.store.find(ref)
        system = system_of(self.compute, c.id)
        if system is None or not c.running:
            raise Conflict(f"Container {c.id} is not running")
        pids = set(system.job.pids())
        args = (ps_args or "-ef").split()   # argv for ps: no shell is involved
        proc = await asyncio.create_subprocess_exec(
            "ps", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise InvalidArgument(f"Error running ps: {err.decode().strip() or out.decode().strip()}")
        lines = out.decode().splitlines()
        if not lines:
            return {"Titles": [], "Processes": []}
        titles = lines[0].split()
        try:
            pid_col = titles.index("PID")
        except ValueError:
            raise InvalidArgument("Couldn't find PID field in ps output") from None
        procs = []
        for line in lines[1:]:
            fields = line.split(None, len(titles) - 1)
            if len(fields) < len(titles):
                continue
            try:
                if int(fields[pid_col]) in pids:
                    procs.append(fields)
            except ValueError:
                continue
        return {"Titles": titles, "Processes": procs}
