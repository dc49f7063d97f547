#!/usr/bin/env python3
"""Push and pull of a ~100 MB one-layer image through a local registry: silobox beside Docker.

The registry is Debian's ``docker-registry`` started on 127.0.0.1 on a free port with a temp
storage dir (plain http, like the tests). silobox is the daemon at SILOBOX_HOST, or a private
silod started on a temporary root. Docker is the anchor dockerd on /run/docker-anchor.sock
(``../shared/bench/anchors-setup.sh``), measured only when it answers. Both are driven by the
same docker CLI. The image is real files from /usr, imported into silobox and pushed once (the
first push is timed: export, gzip, upload); then each round removes the image and pulls it
again on each engine (download, verify, extract).

    bench/registry.py [--size-mb 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from images import make_rootfs   # bench/images.py
from silod import start_silod, stop   # bench/silod.py

ANCHOR = "unix:///run/docker-anchor.sock"
DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
REGISTRY = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(base: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    os.makedirs(os.path.join(base, "storage"))
    config = os.path.join(base, "config.yml")
    with open(config, "w") as f:
        json.dump({"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
                   "storage": {"filesystem": {"rootdirectory": os.path.join(base, "storage")}},
                   "http": {"addr": f"127.0.0.1:{port}"}}, f)
    proc = subprocess.Popen([REGISTRY, "serve", config], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"127.0.0.1:{port}"


def timed(cmd: list[str], host: str) -> float:
    start = time.monotonic()
    subprocess.run(cmd, env={**os.environ, "DOCKER_HOST": host}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - start


def quiet(cmd: list[str], host: str) -> None:
    subprocess.run(cmd, env={**os.environ, "DOCKER_HOST": host}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def anchor_running() -> bool:
    return subprocess.run([DOCKER, "version"], env={**os.environ, "DOCKER_HOST": ANCHOR},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=20).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not os.path.exists(REGISTRY):
        print("docker-registry is not installed (apt-get install docker-registry)")
        return 1
    work = tempfile.mkdtemp(prefix="silobench-registry-", dir="/var/tmp")
    silod = registry = None
    try:
        registry, address = start_registry(os.path.join(work, "registry"))
        host = os.environ.get("SILOBOX_HOST")
        if not host:
            silod, host = start_silod(os.path.join(work, "silod"), "bench-registry")
        engines = {"silobox": host}
        if anchor_running():
            engines["docker"] = ANCHOR
        else:
            print("the Docker anchor is not answering on /run/docker-anchor.sock: silobox only")
        rootfs = os.path.join(work, "rootfs.tar")
        content = make_rootfs(rootfs, args.size_mb)
        print(f"rootfs: {os.path.getsize(rootfs) / 1e6:.0f} MB tar, {content / 1e6:.0f} MB of "
              "file content")
        image = f"{address}/silobench/registry:v1"
        subprocess.run([DOCKER, "import", rootfs, image], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "DOCKER_HOST": host})
        push = timed([DOCKER, "push", image], host)
        repush = timed([DOCKER, "push", image], host)
        times: dict[str, list[float]] = {name: [] for name in engines}
        quiet([DOCKER, "rmi", image], host)
        for _ in range(args.runs):
            for name, h in engines.items():
                times[name].append(timed([DOCKER, "pull", image], h))
                quiet([DOCKER, "rmi", image], h)
        print(f"silobox push (export, gzip, upload): {push:.2f} s; push again (every blob "
              f"already there): {repush:.2f} s")
        line = f"pull, median of {args.runs}: silobox {statistics.median(times['silobox']):.2f} s"
        if "docker" in times:
            s, d = statistics.median(times["silobox"]), statistics.median(times["docker"])
            line += f", docker {d:.2f} s, ratio {s / d:.2f}"
        print(line)
        print("runs:", {k: [round(v, 2) for v in vs] for k, vs in times.items()})
        return 0
    finally:
        stop(silod)
        stop(registry)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
