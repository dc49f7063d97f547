#!/usr/bin/env python3
"""N idle containers on silobox, Docker and Podman in one run: density and scale.

For each engine in turn: host MemAvailable (median of 3 samples after a settle), start N idle
``sleep`` containers with ``run -d``, 8 in parallel, through the engine's CLI (timed); settle;
MemAvailable again, the monitor's PSS per container (the parent of each container's init,
from /proc/PID/smaps_rollup) and the daemon's RSS; ``ps`` and ``run --rm IMG true`` timed with
hyperfine while the N run; then one ``rm -f`` of all N (timed) and MemAvailable once more.
Host memory per container = (drop at start + rise at removal) / 2 / N. silobox is then checked
to have left nothing (cgroups, monitors, mounts).

Docker and Podman are the anchors of ``../shared/bench/anchors-setup.sh`` (dockerd on
/run/docker-anchor.sock with ``silobench/busybox``); without them silobox runs alone. silobox
is a private silod on a temporary root (``SILOBOX_MONITOR=python`` for it measures the shim's
Python loop), or the daemon at ``SILOBOX_HOST``.

    bench/scale.py [--n 200] [--parallel 8] [--runs 10] [--only silobox,docker,podman]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from silod import start_silod, stop   # bench/silod.py

ANCHOR = "unix:///run/docker-anchor.sock"
DOCKER = "/usr/bin/docker"
PODMAN = "/usr/bin/podman"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The checkout's CLI, started as scripts/install.sh's ``silo`` starts (-IS: no site, no .pth).
SILO = os.environ.get("SILO", "").split() or [
    sys.executable, "-IS", "-c",
    f"import sys; sys.path.insert(0, {REPO!r}); from silobox.cli.main import main; sys.exit(main())"]


def engines(only: set[str], silobox_host: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    if "silobox" in only:
        out["silobox"] = {"cli": SILO, "env": {"SILOBOX_HOST": silobox_host},
                          "image": "busybox", "rmf": ["rm", "-f"]}
    if "docker" in only and os.path.exists(ANCHOR[len("unix://"):]) and os.path.exists(DOCKER):
        out["docker"] = {"cli": [DOCKER], "env": {"DOCKER_HOST": ANCHOR},
                         "image": "silobench/busybox:latest", "rmf": ["rm", "-f"]}
    if "podman" in only and os.path.exists(PODMAN):
        out["podman"] = {"cli": [PODMAN, "--runtime", "runc"],
                         "env": {"CONTAINERS_CONF": "/tmp/silobench/containers.conf"},
                         "image": "silobench/busybox:latest", "rmf": ["rm", "-f", "-t", "0"]}
    return out


def sh(e: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(e["cli"] + list(args), env={**os.environ, **e["env"]},
                          capture_output=True, text=True, check=check)


def mem_available_kib() -> int:
    samples = []
    for _ in range(3):
        with open("/proc/meminfo") as f:
            samples.append(next(int(l.split()[1]) for l in f if l.startswith("MemAvailable:")))
        time.sleep(0.3)
    return int(statistics.median(samples))


def rollup(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(l.split()[1]) for l in f if l.startswith(key + ":")), 0)
    except OSError:
        return 0


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def hyperfine_ms(e: dict, cmd: list[str], runs: int) -> float:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(["hyperfine", "-N", "--warmup", "1", "--runs", str(runs), "--export-json",
                        out.name, "--output", "null", shlex.join(e["cli"] + cmd)],
                       env={**os.environ, **e["env"]}, check=True, capture_output=True)
        return statistics.median(json.load(open(out.name))["results"][0]["times"]) * 1000


def daemon_rss_kib(pid: int | None) -> int:
    return rollup(pid, "Rss") if pid else 0


def measure(name: str, e: dict, n: int, parallel: int, runs: int, daemon_pid: int | None
            ) -> dict[str, float]:
    names = [f"scale-{i}" for i in range(n)]
    sh(e, *e["rmf"], *names, check=False)
    idle_run = hyperfine_ms(e, ["run", "--rm", e["image"], "true"], runs)
    time.sleep(2)
    before = mem_available_kib()
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        done = list(pool.map(lambda nm: sh(e, "run", "-d", "--name", nm, e["image"],
                                           "sleep", "100000", check=False), names))
    started = time.monotonic() - t0
    failed = [r.stderr.strip() for r in done if r.returncode != 0]
    if failed:
        print(f"{name}: {len(failed)} starts failed, first: {failed[0]}", file=sys.stderr)
    time.sleep(3)
    during = mem_available_kib()
    pids = [int(p) for p in sh(e, "inspect", "--format", "{{.State.Pid}}", *names,
                               check=False).stdout.split() if p.strip().isdigit() and int(p)]
    monitors = {ppid(p) for p in pids}
    pss = [rollup(m, "Pss") for m in monitors]
    row = {
        "start N, 8 in parallel (s)": started,
        "monitor PSS per container (KiB)": sum(pss) / max(len(pids), 1),
        "daemon RSS (MiB)": daemon_rss_kib(daemon_pid) / 1024,
        "ps with N running (ms)": hyperfine_ms(e, ["ps"], runs),
        "run --rm with N running (ms)": hyperfine_ms(e, ["run", "--rm", e["image"], "true"], runs),
        "run --rm idle host (ms)": idle_run,
    }
    t0 = time.monotonic()
    sh(e, *e["rmf"], *names, check=False)
    row["remove N (s)"] = time.monotonic() - t0
    time.sleep(3)
    after = mem_available_kib()
    row["host memory per container (KiB)"] = ((before - during) + (after - during)) / 2 / n
    row["containers running"] = len(pids)
    return row


def leftovers(cgroup: str, base: str) -> list[str]:
    found = []
    for h in os.listdir("/sys/fs/cgroup"):
        top = os.path.join("/sys/fs/cgroup", h, "silobox", cgroup)
        if os.path.isdir(top):
            found += [os.path.join(top, d) for d in os.listdir(top)
                      if os.path.isdir(os.path.join(top, d))]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if base.encode() in f.read() and pid != str(os.getpid()):
                    with open(f"/proc/{pid}/comm") as g:
                        if g.read().startswith("silobox-"):
                            found.append(f"process {pid}")
        except OSError:
            pass
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--only", default="silobox,docker,podman")
    a = ap.parse_args()
    only = set(a.only.split(","))
    proc = None
    base = ""
    cgroup = f"scale{os.getpid()}"
    host = os.environ.get("SILOBOX_HOST", "")
    if "silobox" in only and not host:
        base = tempfile.mkdtemp(prefix="sbs", dir="/tmp")
        proc, host = start_silod(base, cgroup)
    es = engines(only, host)
    if "docker" not in es:
        print("note: no anchor dockerd (../shared/bench/anchors-setup.sh); without Docker",
              file=sys.stderr)
    rows: dict[str, dict[str, float]] = {}
    try:
        for name, e in es.items():
            pid = proc.pid if name == "silobox" and proc else None
            if name == "docker":
                try:
                    pid = int(open("/run/docker-anchor.pid").read())
                except (OSError, ValueError):
                    pid = None
            rows[name] = measure(name, e, a.n, a.parallel, a.runs, pid)
    finally:
        if proc is not None:
            stop(proc)
            left = leftovers(cgroup, base)
            shutil.rmtree(base, ignore_errors=True)
            if left:
                print(f"silobox left behind: {left}", file=sys.stderr)
    mon = os.environ.get("SILOBOX_MONITOR", "native")
    print(f"N = {a.n} idle containers, {a.parallel} in parallel; silobox monitor: {mon}")
    print("| measure | " + " | ".join(rows) + " | silobox / docker |")
    print("|---" * (len(rows) + 2) + "|")
    for key in next(iter(rows.values()), {}):
        cells = [f"{r[key]:.2f}" if isinstance(r[key], float) else str(r[key])
                 for r in rows.values()]
        ratio = "-"
        if "docker" in rows and "silobox" in rows and rows["docker"][key]:
            ratio = f"{rows['silobox'][key] / rows['docker'][key]:.2f}"
        print(f"| {key} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    main()
