#!/usr/bin/env python3
"""Time to first output: a process in a fresh utility VM beside a process-isolated container.

* utility VM: boot a VM (QEMU microvm, Debian's cloud kernel, the agent on the host's Python),
  then ``echo hi`` in it; reports boot-to-agent, the first output byte and the whole cycle with
  the VM's teardown, for TCG and (where the accelerator probe proves it works) KVM. This is the
  floor of a ``--isolation hyperv`` container's start: what the VM costs before any container.
* containers: ``silo run --rm [--isolation hyperv [--network none]] busybox echo hi`` against a
  silod of its own (or SILOBOX_HOST), first byte on the CLI's stdout, CLI start-up included; a
  hyperv container on the default nat network boots with a network card (virtio-net, a tap on
  the switch), one with ``--network none`` without.

    bench/uvm.py [--runs 3] [--process-runs 10] [--hyperv-runs 3] [--accel tcg,kvm]
"""

from __future__ import annotations

import argparse
import os
import secrets
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from silobox.compute.uvm.accel import detect_accelerator  # noqa: E402
from silobox.compute.uvm.assets import boot_assets  # noqa: E402
from silobox.compute.uvm.vm import UtilityVM, VMConfig, cleanup_stale, default_shares  # noqa: E402


def summary(seconds: list[float]) -> str:
    return (f"min {min(seconds):6.2f} s  median {statistics.median(seconds):6.2f} s  "
            f"max {max(seconds):6.2f} s  (n={len(seconds)})")


def vm_runs(accel: str, runs: int) -> None:
    boot, first, cycle = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        vm = UtilityVM(f"bench-{secrets.token_hex(4)}",
                       VMConfig(memory_mib=512, cpus=1, shares=default_shares(), accel=accel,
                                boot_timeout=180))
        try:
            vm.start()
            boot.append(time.perf_counter() - t0)
            proc = vm.spawn(["echo", "hi"])
            proc.close_stdin()
            for _fd, _data in proc.output(60):
                first.append(time.perf_counter() - t0)
                break
            proc.communicate(60)
        finally:
            vm.stop()
        cycle.append(time.perf_counter() - t0)
    print(f"utility VM ({accel}), 512 MiB, 1 vCPU:")
    print(f"  boot to agent ready   {summary(boot)}")
    print(f"  first output (echo)   {summary(first)}")
    print(f"  whole cycle with stop {summary(cycle)}")


def first_byte(cli: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    select.select([proc.stdout], [], [], 300)
    proc.stdout.read(1)
    elapsed = time.perf_counter() - t0
    proc.communicate()
    return elapsed


def container_runs(runs: int, hyperv_runs: int) -> None:
    base = tempfile.mkdtemp(prefix="sbu-", dir="/tmp")   # short: the shim's socket path
    own = None
    sock = os.environ.get("SILOBOX_HOST", "")[len("unix://"):]
    try:
        if not sock:
            sock = os.path.join(base, "r", "silod.sock")
            own = subprocess.Popen(
                [sys.executable, "-m", "silobox.daemon", "--root",
                 os.path.join(base, "root"), "--exec-root", os.path.join(base, "r"),
                 "--cgroup-parent", "silobox/bench-uvm", "-H", f"unix://{sock}"],
                stdout=open(os.path.join(base, "silod.log"), "wb"), stderr=subprocess.STDOUT,
                start_new_session=True)
        env = dict(os.environ, SILOBOX_HOST=f"unix://{sock}", DOCKER_HOST=f"unix://{sock}")
        cli = [sys.executable, "-m", "silobox.cli.main", "run", "--rm", "busybox", "echo", "hi"]
        deadline = time.time() + 300   # the first run makes the built-in busybox image
        while subprocess.run(cli, env=env, capture_output=True).returncode != 0:
            if time.time() > deadline:
                with open(os.path.join(base, "silod.log"), "rb") as f:
                    print(f.read()[-3000:].decode(errors="replace"))
                raise SystemExit("silod did not come up")
            time.sleep(0.2)
        if runs:
            first = [first_byte(cli, env) for _ in range(runs)]
            print("process isolation: silo run --rm busybox echo hi (CLI start-up included):")
            print(f"  first output          {summary(first)}")
        for extra, what in (([], "on the default nat network (a tap, virtio-net)"),
                            (["--network", "none"], "--network none (no network card)")):
            if not hyperv_runs:
                break
            hv = cli[:5] + ["--isolation", "hyperv", *extra] + cli[5:]
            first = [first_byte(hv, env) for _ in range(hyperv_runs)]
            print(f"hyperv isolation: silo run --rm --isolation hyperv {' '.join(extra)}"
                  f"{' ' if extra else ''}busybox echo hi, {what}:")
            print(f"  first output          {summary(first)}")
    finally:
        if own is not None:
            own.terminate()
            own.wait(30)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--process-runs", type=int, default=10)
    p.add_argument("--hyperv-runs", type=int, default=3)
    p.add_argument("--accel", default="tcg,kvm")
    a = p.parse_args()
    cleanup_stale()
    detected = detect_accelerator(boot_assets())
    print(f"accelerator probe: {detected.name} ({detected.reason})")
    for accel in filter(None, a.accel.split(",")) if a.runs else ():
        if accel == "kvm" and detected.name != "kvm":
            print("utility VM (kvm): skipped, KVM does not boot the guest here")
            continue
        vm_runs(accel, a.runs)
    if a.process_runs or a.hyperv_runs:
        container_runs(a.process_runs, a.hyperv_runs)


if __name__ == "__main__":
    main()
