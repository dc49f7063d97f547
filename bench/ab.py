#!/usr/bin/env python3
"""A/B two silobox daemons (say, before and after a change) on exec and run, interleaved.

Each iteration times one call on each daemon, in alternating order, so the load of a shared
machine falls on both alike; the medians are comparable even when absolute times are noisy.

    bench/ab.py --a unix:///tmp/before/silod.sock --b unix:///tmp/after/silod.sock [--n 200]

exec: ``exec_create`` + ``exec_start`` of ``true`` in a running busybox container;
run: create + start + wait + remove of ``busybox true`` (the API calls ``docker run --rm`` makes).

With ``--a-src``/``--b-src`` (the two checkouts) the same also goes through each checkout's own
``silo`` (started as scripts/install.sh's launcher starts it: ``python -IS``), so what the CLI
does (its start-up, its requests: one for ``silo exec`` where the daemon serves it) counts too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import docker

NAME = "bench-ab"


def _exec(c: docker.APIClient) -> float:
    t = time.perf_counter()
    c.exec_start(c.exec_create(NAME, ["true"]))
    return (time.perf_counter() - t) * 1000


def _run(c: docker.APIClient) -> float:
    t = time.perf_counter()
    x = c.create_container("busybox", ["true"])
    c.start(x)
    c.wait(x)
    c.remove_container(x)
    return (time.perf_counter() - t) * 1000


def _silo(src: str, host: str, *args: str) -> list[str]:
    code = f"import sys; sys.path.insert(0, {src!r}); from silobox.cli.main import main; " \
           "sys.exit(main())"
    return [sys.executable, "-IS", "-c", code, "-H", host, *args]


def _cli(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - t) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="daemon A (e.g. before), unix://PATH")
    ap.add_argument("--b", required=True, help="daemon B (e.g. after), unix://PATH")
    ap.add_argument("--n", type=int, default=200, help="calls per daemon and test")
    ap.add_argument("--a-src", help="checkout of daemon A: also time its silo")
    ap.add_argument("--b-src", help="checkout of daemon B: also time its silo")
    a = ap.parse_args()
    clients = {"A": docker.APIClient(base_url=a.a, version="auto", timeout=60),
               "B": docker.APIClient(base_url=a.b, version="auto", timeout=60)}
    for c in clients.values():
        c.remove_container(NAME, force=True) if c.containers(all=True, filters={"name": NAME}) \
            else None
        c.create_container("busybox", ["sleep", "1000"], name=NAME)
        c.start(NAME)
    try:
        tests = [("exec c true", _exec), ("run --rm busybox true", _run)]
        if a.a_src and a.b_src:
            hosts = {"A": (os.path.abspath(a.a_src), a.a), "B": (os.path.abspath(a.b_src), a.b)}
            tests += [
                ("silo exec c true", lambda c: _cli(_silo(*hosts[_name(c, clients)], "exec",
                                                          NAME, "true"))),
                ("silo run --rm", lambda c: _cli(_silo(*hosts[_name(c, clients)], "run", "--rm",
                                                       "busybox", "true")))]
        for test, fn in tests:
            times: dict[str, list[float]] = {"A": [], "B": []}
            for _ in range(3):
                for c in clients.values():
                    fn(c)
            for i in range(a.n):
                for k in ("AB" if i % 2 == 0 else "BA"):
                    times[k].append(fn(clients[k]))
            for k, v in times.items():
                v.sort()
                print(f"{test:24} {k}: median {statistics.median(v):6.1f} ms  "
                      f"p25 {v[len(v) // 4]:6.1f}  p75 {v[3 * len(v) // 4]:6.1f}  min {v[0]:6.1f}")
    finally:
        for c in clients.values():
            c.remove_container(NAME, force=True)


def _name(c: docker.APIClient, clients: dict[str, docker.APIClient]) -> str:
    return next(k for k, v in clients.items() if v is c)


if __name__ == "__main__":
    main()
