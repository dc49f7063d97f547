#!/usr/bin/env python3
"""Import and load of a ~100 MB root filesystem: silobox beside Docker.

Docker is the anchor dockerd on /run/docker-anchor.sock (``../shared/bench/anchors-setup.sh``).
silobox is the daemon at SILOBOX_HOST, or a private silod started on a temporary root when none
is given. The rootfs is real files from /usr (many small files and some large ones, like a
distribution image). Each round times ``import FILE`` and then ``load -i ARCHIVE`` (the archive is
Docker's own ``docker save`` of the imported image) on each engine in turn, removing the image
after every run so each run stores the layer from scratch.

    bench/images.py [--size-mb 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

from silod import start_silod, stop   # bench/silod.py

ANCHOR = "unix:///run/docker-anchor.sock"
DOCKER = shutil.which("docker") or "/usr/bin/docker"


def make_rootfs(path: str, size_mb: int) -> int:
    """A tar of files under /usr until about ``size_mb`` MB; returns its size."""
    limit = size_mb * 1_000_000
    total = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for top in ("/usr/lib", "/usr/share", "/usr/bin"):
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames.sort()
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    try:
                        st = os.lstat(full)
                        tar.add(full, arcname=full.lstrip("/"), recursive=False)
                    except OSError:
                        continue
                    total += st.st_size if os.path.isfile(full) else 0
                    if total >= limit:
                        return total
    return total


def run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    subprocess.run(cmd, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
    return time.monotonic() - start


def quiet(cmd: list[str], env: dict[str, str]) -> None:
    subprocess.run(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not os.path.exists(ANCHOR[len("unix://"):]):
        print("the Docker anchor is not running (../shared/bench/anchors-setup.sh)")
        return 1
    work = tempfile.mkdtemp(prefix="silobench-images-", dir="/var/tmp")
    proc = None
    try:
        host = os.environ.get("SILOBOX_HOST")
        if not host:
            proc, host = start_silod(os.path.join(work, "silod"), "bench-images")
        silo = [sys.executable, "-m", "silobox.cli.main"]
        engines = {"silobox": (silo, {"SILOBOX_HOST": host}),
                   "docker": ([DOCKER], {"DOCKER_HOST": ANCHOR})}
        rootfs = os.path.join(work, "rootfs.tar")
        content = make_rootfs(rootfs, args.size_mb)
        print(f"rootfs: {os.path.getsize(rootfs) / 1e6:.0f} MB tar, {content / 1e6:.0f} MB of "
              "file content")
        archive = os.path.join(work, "image.tar")
        docker, denv = engines["docker"]
        subprocess.run(docker + ["import", rootfs, "silobench/images:src"],
                       env={**os.environ, **denv}, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(docker + ["save", "-o", archive, "silobench/images:src"],
                       env={**os.environ, **denv}, check=True)
        quiet(docker + ["rmi", "silobench/images:src"], denv)
        times: dict[tuple[str, str], list[float]] = {}
        for i in range(args.runs):
            for name, (cli, env) in engines.items():
                tag = f"silobench/images:r{i}"
                times.setdefault((name, "import"), []).append(
                    run(cli + ["import", rootfs, tag], env))
                quiet(cli + ["rmi", tag], env)
                times.setdefault((name, "load"), []).append(
                    run(cli + ["load", "-q", "-i", archive], env))
                quiet(cli + ["rmi", "silobench/images:src"], env)
        print(f"{'operation':<10}{'silobox s':>12}{'docker s':>12}{'ratio':>8}   (median of "
              f"{args.runs})")
        for op in ("import", "load"):
            s = statistics.median(times[("silobox", op)])
            d = statistics.median(times[("docker", op)])
            print(f"{op:<10}{s:>12.2f}{d:>12.2f}{s / d:>8.2f}")
        return 0
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
