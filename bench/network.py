#!/usr/bin/env python3
"""What networking costs: ``run --rm busybox true`` on nat vs ``--network none``, and throughput.

    bench/network.py [--runs 30] [--no-iperf] [--docker]

Talks to the silod at SILOBOX_HOST (default unix:///run/silobox/silod.sock) through the Docker
API (no CLI start-up in the numbers): each sample is create + start + wait + remove, the two
modes alternate so background noise hits both alike. iperf3 runs its server inside a
container's network compartment (``nsenter --net=<SandboxKey>``; busybox has no iperf3) and
the client on the host, once to the container's address and once to 127.0.0.1 through a
published port (nftables DNAT, no proxy process).
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
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        hp = s.getsockname()[1]
    cid = call("POST", "/containers/create", {
        "Image": "busybox", "Cmd": ["sleep", "120"],
        "HostConfig": {"PortBindings": {"5201/tcp": [{"HostPort": str(hp)}]}}})["Id"]
    server = None
    try:
        call("POST", f"/containers/{cid}/start")
        ns = call("GET", f"/containers/{cid}/json")["NetworkSettings"]
        server = subprocess.Popen(["nsenter", f"--net={ns['SandboxKey']}", "iperf3", "-s",
                                   "-p", "5201"], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        print(f"iperf3 host -> container {ns['IPAddress']}: {iperf(ns['IPAddress'], 5201):.2f} "
              "Gbit/s")
        print(f"iperf3 host -> 127.0.0.1:{hp} (published): {iperf('127.0.0.1', hp):.2f} Gbit/s")
    finally:
        if server:
            server.kill()
            server.wait()
        call("DELETE", f"/containers/{cid}?force=1")
    anchor = "/run/docker-anchor.sock"
    if a.docker and os.path.exists(anchor) and shutil.which("docker"):
        docker_iperf(f"unix://{anchor}")


def docker_iperf(sock: str) -> None:
    """The same two throughputs against Docker (the anchor daemon), in the same run."""
    docker = ["docker", "-H", sock]
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        hp = s.getsockname()[1]
    cid = subprocess.run(docker + ["run", "-d", "-p", f"{hp}:5201", "silobench/busybox",
                                   "sleep", "120"], capture_output=True, text=True,
                         check=True).stdout.strip()
    server = None
    try:
        info = json.loads(subprocess.run(docker + ["inspect", cid], capture_output=True,
                                         text=True, check=True).stdout)[0]
        ip = info["NetworkSettings"]["IPAddress"]
        server = subprocess.Popen(["nsenter", f"--net=/proc/{info['State']['Pid']}/ns/net",
                                   "iperf3", "-s", "-p", "5201"], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        print(f"docker: iperf3 host -> container {ip}: {iperf(ip, 5201):.2f} Gbit/s")
        print(f"docker: iperf3 host -> 127.0.0.1:{hp} (published): "
              f"{iperf('127.0.0.1', hp):.2f} Gbit/s")
    finally:
        if server:
            server.kill()
            server.wait()
        subprocess.run(docker + ["rm", "-f", cid], capture_output=True)


if __name__ == "__main__":
    main()
