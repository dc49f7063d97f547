#!/usr/bin/env python3
"""What networking costs: ``run --rm busybox true`` on nat vs ``--network none``, and throughput.

    bench/network.py [--runs 30] [--no-iperf] [--docker] [--iperf-rounds 5] [--iperf-seconds 3]

Talks to the silod at SILOBOX_HOST (default unix:///run/silobox/silod.sock) through the Docker
API (no CLI start-up in the numbers): each sample is create + start + wait + remove, the two
modes alternate so background noise hits both alike. iperf3 runs its server inside a
container's network compartment (``nsenter --net=<SandboxKey>``; busybox has no iperf3) and
the client on the host, once to the container's address and once to 127.0.0.1 through a
published port (nftables DNAT, no proxy process). With ``--docker`` the same two measures run
against the anchor dockerd (/run/docker-anchor.sock), rounds alternating between the engines;
medians and the silobox/docker ratios are printed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import time
from typing import Any

HOST = os.environ.get("SILOBOX_HOST", "unix:///run/silobox/silod.sock")


class Conn(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def call(method: str, path: str, body: Any = None) -> Any:
    c = Conn(HOST[len("unix://"):])
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 400:
        raise RuntimeError(f"{method} {path}: {r.status} {data!r}")
    return json.loads(data) if data.strip() else None


def run_once(mode: str) -> float:
    t = time.perf_counter()
    cid = call("POST", "/containers/create", {"Image": "busybox", "Cmd": ["true"],
                                              "HostConfig": {"NetworkMode": mode}})["Id"]
    call("POST", f"/containers/{cid}/start")
    call("POST", f"/containers/{cid}/wait")
    call("DELETE", f"/containers/{cid}?force=1")
    return (time.perf_counter() - t) * 1000


def iperf(target: str, port: int, seconds: int = 3) -> float:
    out = subprocess.run(["iperf3", "-c", target, "-p", str(port), "-t", str(seconds), "-J"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--no-iperf", action="store_true")
    ap.add_argument("--docker", action="store_true",
                    help="also measure Docker's anchor daemon (/run/docker-anchor.sock)")
    ap.add_argument("--iperf-rounds", type=int, default=5)
    ap.add_argument("--iperf-seconds", type=int, default=3)
    a = ap.parse_args()
    for mode in ("none", "nat"):
        run_once(mode)  # warm caches
    samples: dict[str, list[float]] = {"none": [], "nat": []}
    for _ in range(a.runs):
        for mode in ("none", "nat"):
            samples[mode].append(run_once(mode))
    for mode, s in samples.items():
        print(f"run --rm busybox true  --network {mode:4}: median {statistics.median(s):6.1f} ms"
              f"  min {min(s):6.1f} ms  (n={len(s)})")
    print(f"network cost (median nat - median none): "
          f"{statistics.median(samples['nat']) - statistics.median(samples['none']):.1f} ms; "
          f"(min - min): {min(samples['nat']) - min(samples['none']):.1f} ms")
    if a.no_iperf or not shutil.which("iperf3"):
        return
    anchor = "/run/docker-anchor.sock"
    targets: list[_IperfTarget] = [Silobox()]
    if a.docker and os.path.exists(anchor) and shutil.which("docker"):
        targets.append(Docker(f"unix://{anchor}"))
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for t in targets:
            t.start()
        # Rounds alternate the engines, and which one goes first, so background load and
        # the after-effects of the previous measurement hit both alike.
        for rnd in range(a.iperf_rounds):
            for t in (targets if rnd % 2 == 0 else targets[::-1]):
                for what, (host, port) in (("container", (t.ip, 5201)),
                                           ("published", ("127.0.0.1", t.host_port))):
                    results.setdefault((t.name, what), []).append(
                        iperf(host, port, a.iperf_seconds))
    finally:
        for t in targets:
            t.stop()
    for (name, what), v in results.items():
        label = {"container": "host -> container IP", "published": "host -> 127.0.0.1 published"}
        print(f"{name:8} iperf3 {label[what]:30}: median {statistics.median(v):6.2f} Gbit/s  "
              f"[{' '.join(f'{x:.2f}' for x in v)}]")
    if len(targets) == 2:
        for what in ("container", "published"):
            r = statistics.median(results[("silobox", what)]) / \
                statistics.median(results[("docker", what)])
            paired = statistics.median(x / y for x, y in zip(results[("silobox", what)],
                                                             results[("docker", what)]))
            print(f"ratio silobox/docker, {what}: {r:.2f}x (median of per-round ratios "
                  f"{paired:.2f}x)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


class _IperfTarget:
    """An iperf3 server in a container's network namespace (busybox has no iperf3); the
    subclasses make and remove the container of their engine."""

    name = ""
    server: subprocess.Popen | None = None
    cid: str | None = None

    def _serve(self, netns: str) -> None:
        self.server = subprocess.Popen(["nsenter", f"--net={netns}", "iperf3", "-s", "-p",
                                        "5201"], stdout=subprocess.DEVNULL)
        time.sleep(0.3)

    def _remove(self, cid: str) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        if self.cid:
            self._remove(self.cid)


class Silobox(_IperfTarget):
    """An iperf3 server in a silobox container's compartment, port 5201 published."""

    name = "silobox"

    def start(self) -> None:
        self.host_port = _free_port()
        self.cid = call("POST", "/containers/create", {
            "Image": "busybox", "Cmd": ["sleep", "600"],
            "HostConfig": {"PortBindings": {"5201/tcp": [{"HostPort": str(self.host_port)}]}}})["Id"]
        call("POST", f"/containers/{self.cid}/start")
        ns = call("GET", f"/containers/{self.cid}/json")["NetworkSettings"]
        self.ip = ns["IPAddress"]
        self._serve(ns["SandboxKey"])

    def _remove(self, cid: str) -> None:
        call("DELETE", f"/containers/{cid}?force=1")


class Docker(_IperfTarget):
    """The same against Docker (the anchor daemon), measured in the same run."""

    name = "docker"

    def __init__(self, sock: str) -> None:
        self.docker = ["docker", "-H", sock]

    def start(self) -> None:
        self.host_port = _free_port()
        self.cid = subprocess.run(self.docker + ["run", "-d", "-p", f"{self.host_port}:5201",
                                                 "silobench/busybox", "sleep", "600"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        info = json.loads(subprocess.run(self.docker + ["inspect", self.cid],
                                         capture_output=True, text=True, check=True).stdout)[0]
        self.ip = info["NetworkSettings"]["IPAddress"]
        self._serve(f"/proc/{info['State']['Pid']}/ns/net")

    def _remove(self, cid: str) -> None:
        subprocess.run(self.docker + ["rm", "-f", cid], capture_output=True)


if __name__ == "__main__":
    main()
