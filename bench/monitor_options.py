#!/usr/bin/env python3
"""The memory side of the monitor choice, measured: one host process for every container
(option a) against one native monitor per container (option b, silobox-monitor).

(a) is modelled by what such a process must hold per container, in this interpreter with the
compute service's modules imported: a listening control socket, stdin/stdout/stderr pipes,
an open log file, each output end registered with an asyncio loop, and a record of the
container's state. Its PSS is read before and after N containers' worth. (b) is the real
monitor: N ``silobox-monitor`` processes are read from /proc (run while ``bench/scale.py`` or
any N containers run; ``--pids-of`` names the comm to look for).

    bench/monitor_options.py [--n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
import tempfile


def pss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("Pss:"))


@dataclasses.dataclass
class Held:
    listener: socket.socket
    fds: list[int]
    log: int
    state: dict


async def hold(n: int, base: str) -> list[Held]:
    loop = asyncio.get_running_loop()
    held = []
    for i in range(n):
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(os.path.join(base, f"{i}.sock"))
        lst.listen(64)
        lst.setblocking(False)
        loop.add_reader(lst.fileno(), lambda: None)
        fds = []
        for _ in range(3):
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            fds += [r, w]
            loop.add_reader(r, lambda: None)
        log = os.open(os.path.join(base, f"{i}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        held.append(Held(lst, fds, log, {"id": os.urandom(32).hex(), "pid": 1000 + i,
                                         "started_at": "2026-01-01T00:00:00.000000000Z",
                                         "execs": {}, "partial": {1: b"", 2: b""}}))
    return held


async def main_async(n: int) -> None:
    import silobox.compute.shim  # noqa: F401  (the service's own modules, as a host process has)
    import silobox.kernel.jobobject  # noqa: F401
    with tempfile.TemporaryDirectory(prefix="monopt") as base:
        await asyncio.sleep(0.1)
        before = pss_kib()
        held = await hold(n, base)
        await asyncio.sleep(0.5)
        after = pss_kib()
        print(f"(a) one host process: {before / 1024:.1f} MiB fixed, "
              f"{(after - before) / n:.1f} KiB per container (N={n}); fds per container: "
              f"{len(held[0].fds) + 2}")
    mons = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "silobox-monitor":
                mons.append(pss_kib(pid))
        except OSError:
            pass
    if mons:
        print(f"(b) native monitors running now: {len(mons)}, PSS {sum(mons) / len(mons):.1f} "
              f"KiB each (shared text divided among them)")
    else:
        print("(b) no silobox-monitor running now (start some containers to compare)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    a = ap.parse_args()
    asyncio.run(main_async(a.n))


if __name__ == "__main__":
    main()
