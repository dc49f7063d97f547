#!/usr/bin/env python3
"""The same scenario through the real docker CLI, against silod and against dockerd.

run --rm, exec, logs and ps with 100 containers, timed with hyperfine (-N), engines taking
turns per round; prints medians and the silod/dockerd ratio.

    SILOBOX_HOST=unix:///run/silobox/silod.sock bench/docker_cli.py [--runs 10] [--containers 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
ENGINES = {
    "silod": (os.environ.get("SILOBOX_HOST", "unix:///run/silobox/silod.sock"), "busybox"),
    "dockerd": ("unix:///run/docker-anchor.sock", "silobench/busybox:latest"),
}


def docker(host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], env={**os.environ, "DOCKER_HOST": host},
                          capture_output=True, text=True, check=check)


def hyperfine(host: str, cmd: list[str], runs: int) -> list[float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(["hyperfine", "-N", "--warmup", "2", "--runs", str(runs), "--export-json",
                        out.name, "--output", "null", " ".join([DOCKER, *cmd])],
                       env={**os.environ, "DOCKER_HOST": host}, check=True, capture_output=True)
        return [t * 1000 for t in json.load(open(out.name))["results"][0]["times"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--containers", type=int, default=100)
    a = ap.parse_args()
    engines = {n: v for n, v in ENGINES.items() if os.path.exists(v[0][len("unix://"):])}
    results: dict[str, dict[str, list[float]]] = {n: {} for n in engines}
    for name, (host, image) in engines.items():
        docker(host, "rm", "-f", "bench-cli-f", check=False)
        docker(host, "run", "-d", "--name", "bench-cli-f", image, "sh", "-c",
               "i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); done; sleep 1000")
        for i in range(a.containers):
            docker(host, "run", "-d", "--name", f"bench-cli-{i}", "--label", "bench=cli", image,
                   "sleep", "1000")
    per_round = max(1, a.runs // a.rounds)
    try:
        for _ in range(a.rounds):
            for name, (host, image) in engines.items():
                r = results[name]
                r.setdefault("run --rm IMG true", []).extend(
                    hyperfine(host, ["run", "--rm", image, "true"], per_round))
                r.setdefault("exec c true", []).extend(
                    hyperfine(host, ["exec", "bench-cli-f", "true"], per_round))
                r.setdefault("logs c (200 lines)", []).extend(
                    hyperfine(host, ["logs", "bench-cli-f"], per_round))
                r.setdefault(f"ps ({a.containers + 1} running)", []).extend(
                    hyperfine(host, ["ps"], per_round))
    finally:
        for name, (host, _image) in engines.items():
            ids = docker(host, "ps", "-aq", "--filter", "label=bench=cli").stdout.split()
            docker(host, "rm", "-f", "bench-cli-f", *ids, check=False)
    tests = list(next(iter(results.values())))
    print("| test | " + " | ".join(f"{n} median ms" for n in engines) + " | silod/dockerd |")
    print("|---" * (len(engines) + 2) + "|")
    for t in tests:
        meds = {n: statistics.median(results[n][t]) for n in engines}
        ratio = (f"{meds['silod'] / meds['dockerd']:.2f}" if "dockerd" in meds and "silod" in meds
                 else "-")
        print(f"| {t} | " + " | ".join(f"{meds[n]:.1f}" for n in engines) + f" | {ratio} |")


if __name__ == "__main__":
    main()
