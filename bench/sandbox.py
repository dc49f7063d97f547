#!/usr/bin/env python3
"""What the sandbox disk costs: start overhead and write throughput, disk vs plain directory.

Starts its own silod on a temporary root (or uses SILOBOX_HOST) and drives it over the API:

* start: ``run --rm busybox true`` (create + start + wait + remove, no CLI start-up) with
  ``--storage-opt sandbox=disk`` and ``sandbox=dir``, interleaved so noise hits both alike;
  reports min / median per kind and what the disk adds: the difference of the medians and the
  median of the paired differences (target: ≤ 15 ms). Then the same in blocks (N disk runs
  in a row, then N dir runs): every container taking a disk, as with disks as the default,
  shows whether the pool keeps up. The daemon runs with its defaults (disks by default, so
  its pool is filled).
* write: sequential ``dd`` of N MiB with fsync inside a container on each kind; reports MiB/s
  and the disk/dir ratio.

    bench/sandbox.py [--runs 30] [--block 10] [--write-mib 512] [--write-runs 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any


class Conn(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=120)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path)


class Api:
    def __init__(self, sock: str) -> None:
        self.conn = Conn(sock)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data,
                          headers={"Content-Type": "application/json"} if data else {})
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status} {raw.decode()}")
        if "json" not in (resp.getheader("Content-Type") or "") or not raw.strip():
            return raw.decode(errors="replace") or None
        return json.loads(raw)

    def run(self, cmd: list[str], storage: dict[str, str], logs: bool = False) -> str:
        c = self.call("POST", "/containers/create", {
            "Image": "busybox", "Cmd": cmd, "HostConfig": {"StorageOpt": storage,
                                                           "NetworkMode": "none"}})["Id"]
        try:
            self.call("POST", f"/containers/{c}/start")
            self.call("POST", f"/containers/{c}/wait")
            out = ""
            if logs:
                self.conn.request("GET", f"/containers/{c}/logs?stdout=1&stderr=1")
                resp = self.conn.getresponse()
                raw = resp.read()
                out = _demux(raw)
        finally:
            self.call("DELETE", f"/containers/{c}?force=1")
        return out


def _demux(raw: bytes) -> str:
    out = b""
    while len(raw) >= 8:
        n = int.from_bytes(raw[4:8], "big")
        out += raw[8:8 + n]
        raw = raw[8 + n:]
    return out.decode(errors="replace")


def start_daemon(base: str) -> tuple[subprocess.Popen, str]:
    sock = os.path.join(base, "run", "silod.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "silobox.daemon", "--root", os.path.join(base, "root"),
         "--exec-root", os.path.join(base, "run"), "--cgroup-parent", "silobox/bench-sandbox",
         "-H", f"unix://{sock}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    for _ in range(400):
        if os.path.exists(sock):
            try:
                Api(sock).call("GET", "/_ping")
                return proc, sock
            except (OSError, RuntimeError):
                pass
        time.sleep(0.05)
    proc.terminate()
    proc.wait(20)
    raise SystemExit("silod did not come up")


def stats(ms: list[float]) -> str:
    return f"min {min(ms):6.1f}  median {statistics.median(ms):6.1f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--write-mib", type=int, default=512)
    p.add_argument("--write-runs", type=int, default=3)
    p.add_argument("--block", type=int, default=10,
                   help="runs of one kind in a row for the second start measurement")
    a = p.parse_args()
    base = tempfile.mkdtemp(prefix="sbx-bench-")
    own = None
    sock = os.environ.get("SILOBOX_HOST", "")[len("unix://"):]
    if not sock:
        own, sock = start_daemon(base)
    api = Api(sock)
    try:
        kinds = {"disk": {"sandbox": "disk"}, "dir": {"sandbox": "dir"}}
        for opts in kinds.values():   # warm up: images built, pool filled, caches hot
            for _ in range(3):
                api.run(["true"], opts)
        for block in (1, a.block):
            # block 1: disk and dir runs alternate; block N: N disk runs in a row, then N dir
            # runs, and so on (every container takes a disk, as with disks as the default: the
            # pool must keep up)
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(max(1, a.runs // block)):
                for kind, opts in kinds.items():
                    for _ in range(block):
                        t0 = time.perf_counter()
                        api.run(["true"], opts)
                        times[kind].append((time.perf_counter() - t0) * 1000)
                        time.sleep(0.03)   # a client's pause between runs
            print(f"run --rm busybox true, {len(times['disk'])} runs each (API, no CLI), "
                  f"in blocks of {block}:")
            for kind in kinds:
                print(f"  sandbox={kind:4s}  {stats(times[kind])}")
            added = statistics.median(times["disk"]) - statistics.median(times["dir"])
            # each disk run against the dir run at the same place in the next block: drift in
            # the machine's load (other work on 2 vCPUs) cancels out of the pairs
            paired = statistics.median(d - f for d, f in zip(times["disk"], times["dir"]))
            print(f"  the sandbox disk adds {added:+.1f} ms (difference of the medians), "
                  f"{paired:+.1f} ms (median of paired differences); target <= 15 ms")

        # busybox's dd prints no rate: time it in the container from /proc/uptime
        script = ("read s _ < /proc/uptime; "
                  f"dd if=/dev/zero of=/f bs=1M count={a.write_mib} conv=fsync 2>/dev/null; "
                  "read e _ < /proc/uptime; rm -f /f; "
                  "echo elapsed $(awk -v s=$s -v e=$e 'BEGIN{print e-s}')")
        rates: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(a.write_runs):
            for kind, opts in kinds.items():
                out = api.run(["sh", "-c", script], opts, logs=True)
                m = re.search(r"elapsed ([0-9.]+)", out)
                if not m:
                    raise SystemExit(f"cannot read the timing: {out!r}")
                rates[kind].append(a.write_mib / float(m.group(1)))
        print(f"sequential write of {a.write_mib} MiB with fsync, {a.write_runs} runs each:")
        for kind in kinds:
            print(f"  sandbox={kind:4s}  median {statistics.median(rates[kind]):7.1f} MiB/s  "
                  f"(max {max(rates[kind]):.1f})")
        ratio = statistics.median(rates["disk"]) / statistics.median(rates["dir"])
        print(f"  disk / dir throughput ratio: {ratio:.2f}")
    finally:
        if own is not None:
            own.terminate()
            own.wait(20)
            shutil.rmtree(base, ignore_errors=True)
            _remove_cgroup_parent("silobox/bench-sandbox")


def _remove_cgroup_parent(parent: str) -> None:
    """silod leaves its (empty) cgroup parent behind; the bench's own one goes."""
    top = "/sys/fs/cgroup"
    for where in [os.path.join(top, parent)] + [os.path.join(top, h, parent)
                                                 for h in os.listdir(top)]:
        if os.path.isdir(where):
            for dirpath, _dirs, _files in sorted(os.walk(where, topdown=False),
                                                 key=lambda w: -w[0].count("/")):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass


if __name__ == "__main__":
    main()
