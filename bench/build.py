#!/usr/bin/env python3
"""``docker build`` of a small multi-step Dockerfile, cold and cached: silod beside dockerd.

The docker CLI (classic builder, DOCKER_BUILDKIT=0) builds the same context against silod and,
when it answers, the anchor dockerd on /run/docker-anchor.sock (``../shared/bench/
anchors-setup.sh``; its busybox image is used). silod is the daemon at SILOBOX_HOST, or a private
silod on a temporary root. Each run times a ``--no-cache`` build (every RUN in a new container)
and then the same build again (every step from the cache), then removes the image.

    bench/build.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from silod import start_silod, stop   # bench/silod.py

ANCHOR = "unix:///run/docker-anchor.sock"
DOCKER = shutil.which("docker") or "/usr/bin/docker"
DOCKERFILE = """\
FROM busybox
ENV APP=/app
WORKDIR /app
COPY data/ ./data/
RUN echo one > /one
RUN cat data/* > all && wc -c all
RUN rm /one && echo two > /two
CMD ["cat", "/two"]
"""


def make_context(path: str) -> None:
    os.makedirs(os.path.join(path, "data"))
    with open(os.path.join(path, "Dockerfile"), "w") as f:
        f.write(DOCKERFILE)
    for i in range(20):
        with open(os.path.join(path, "data", f"f{i}"), "wb") as f:
            f.write(os.urandom(4096))


def build(env: dict[str, str], context: str, tag: str, no_cache: bool) -> float:
    cmd = [DOCKER, "build", "-q", "-t", tag, context] + (["--no-cache"] if no_cache else [])
    start = time.monotonic()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.decode()[-2000:]}")
    return time.monotonic() - start


def answers(host: str) -> bool:
    env = {**os.environ, "DOCKER_HOST": host}
    return subprocess.run([DOCKER, "version"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=20).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sbb-", dir="/tmp")   # short: shim socket paths live here
    proc = None
    try:
        host = os.environ.get("SILOBOX_HOST")
        if not host:
            proc, host = start_silod(work, "bench-build")
        engines = {"silobox": host}
        if answers(ANCHOR):
            engines["docker"] = ANCHOR
        else:
            print(f"the anchor dockerd ({ANCHOR}) does not answer: silobox only")
        context = os.path.join(work, "context")
        make_context(context)
        times: dict[tuple[str, str], list[float]] = {}
        for i in range(args.runs):
            for name, sock in engines.items():
                env = {**os.environ, "DOCKER_HOST": sock, "DOCKER_BUILDKIT": "0",
                       "DOCKER_CONFIG": os.path.join(work, "docker-config")}
                tag = f"silobench/build:r{i}"
                times.setdefault((name, "cold"), []).append(build(env, context, tag, True))
                times.setdefault((name, "cached"), []).append(build(env, context, tag, False))
                subprocess.run([DOCKER, "rmi", tag], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        header = "".join(f"{n + ' s':>12}" for n in engines)
        print(f"{'build':<10}{header}{'ratio':>8}   (median of {args.runs}, docker CLI "
              "classic builder, 8 steps, 3 RUN)")
        for kind in ("cold", "cached"):
            values = [statistics.median(times[(n, kind)]) for n in engines]
            ratio = f"{values[0] / values[1]:>8.2f}" if len(values) == 2 else ""
            print(f"{kind:<10}" + "".join(f"{v:>12.3f}" for v in values) + ratio)
        return 0
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
