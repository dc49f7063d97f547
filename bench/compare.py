#!/usr/bin/env python3
"""Measure silobox beside Docker (and Podman) in one run and report ratios.

Docker and Podman are the anchors prepared by ``../shared/bench/anchors-setup.sh`` (dockerd on
/run/docker-anchor.sock with the ``silobench/busybox`` image); silobox uses its built-in busybox.
Engines take turns in each round so background noise hits them alike. Timings use hyperfine
(-N, no shell); the start20 test and the shim memory use this script's own clock and /proc.

    bench/compare.py [--runs 10] [--rounds 2] [--only run,exec,start20,mem,cli] [--no-podman]

SILO=/path/to/silo and SILOBOX_HOST=unix:///path choose the silobox client and daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SILO = os.environ.get("SILO") or shutil.which("silo") or "/usr/local/bin/silo"
DOCKER = "/usr/bin/docker"
PODMAN = "/usr/bin/podman"
ANCHOR = "unix:///run/docker-anchor.sock"


def engines(podman: bool) -> dict[str, dict]:
    out = {"silobox": {"cli": [SILO], "env": {}, "image": "busybox", "rmf": ["rm", "-f"]}}
    if os.path.exists(ANCHOR[len("unix://"):]):
        out["docker"] = {"cli": [DOCKER], "env": {"DOCKER_HOST": ANCHOR},
                         "image": "silobench/busybox:latest", "rmf": ["rm", "-f"]}
    if podman and os.path.exists(PODMAN):
        out["podman"] = {"cli": [PODMAN, "--runtime", "runc"],
                         "env": {"CONTAINERS_CONF": "/tmp/silobench/containers.conf"},
                         "image": "silobench/busybox:latest", "rmf": ["rm", "-f", "-t", "0"]}
    return out


def sh(e: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(e["cli"] + list(args), env={**os.environ, **e["env"]},
                          capture_output=True, text=True, check=check)


def hyperfine(e: dict, cmd: list[str], runs: int, prepare: str | None = None) -> list[float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = ["hyperfine", "-N", "--warmup", "2", "--runs", str(runs), "--export-json",
                out.name, "--output", "null", " ".join(e["cli"] + cmd)]
        if prepare:
            argv[1:1] = ["--prepare", prepare]
        subprocess.run(argv, env={**os.environ, **e["env"]}, check=True, capture_output=True)
        return [t * 1000 for t in json.load(open(out.name))["results"][0]["times"]]


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def monitor_pids(e: dict, name: str) -> list[int]:
    """The process that holds each container: our shim, or the parent of the container's init."""
    pid = int(sh(e, "inspect", "--format", "{{.State.Pid}}", name).stdout.strip())
    with open(f"/proc/{pid}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    return [ppid]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="cli,run,exec,start20,mem")
    ap.add_argument("--no-podman", action="store_true")
    a = ap.parse_args()
    only = set(a.only.split(","))
    es = engines(not a.no_podman)
    if "docker" not in es:
        print("note: no anchor dockerd (run ../shared/bench/anchors-setup.sh); silobox alone",
              file=sys.stderr)
    results: dict[str, dict[str, list[float]]] = {n: {} for n in es}
    per_round = max(1, a.runs // a.rounds)
    for n, e in es.items():
        sh(e, "rm", "-f", "bench-f", check=False)
        sh(e, "run", "-d", "--name", "bench-f", e["image"], "sleep", "1000")
    try:
        for _ in range(a.rounds):
            for n, e in es.items():
                r = results[n]
                if "cli" in only:
                    r.setdefault("cli: version", []).extend(hyperfine(e, ["version"], per_round))
                if "run" in only:
                    r.setdefault("run --rm IMG true", []).extend(
                        hyperfine(e, ["run", "--rm", e["image"], "true"], per_round))
                if "exec" in only:
                    r.setdefault("exec c true", []).extend(
                        hyperfine(e, ["exec", "bench-f", "true"], per_round))
        for _ in range(a.reps):
            for n, e in es.items():
                if not ({"start20", "mem"} & only):
                    continue
                names = [f"bench-c{i}" for i in range(20)]
                t0 = time.monotonic()
                for name in names:
                    sh(e, "run", "-d", "--name", name, e["image"], "sleep", "1000")
                took = (time.monotonic() - t0) * 1000
                results[n].setdefault("20 x run -d", []).append(took)
                if "mem" in only:
                    time.sleep(2)
                    pss = [pss_kib(p) for name in names for p in monitor_pids(e, name)]
                    results[n].setdefault("monitor PSS KiB", []).append(statistics.mean(pss))
                sh(e, *e["rmf"], *names)
    finally:
        for n, e in es.items():
            sh(e, *e["rmf"], "bench-f", check=False)
    tests = sorted({t for r in results.values() for t in r})
    base = results.get("docker", {})
    print(f"| test | " + " | ".join(f"{n} median (min-max)" for n in es) + " | ratio silobox/docker |")
    print("|---" * (len(es) + 2) + "|")
    for t in tests:
        cells = []
        for n in es:
            v = results[n].get(t)
            cells.append(f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})" if v else "-")
        ratio = "-"
        if base.get(t) and results["silobox"].get(t):
            ratio = f"{statistics.median(results['silobox'][t]) / statistics.median(base[t]):.2f}"
        print(f"| {t} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    main()
