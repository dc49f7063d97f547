"""``python -m silobox.compute.uvm.launch <vm dir>``: start a utility VM's virtiofsd, then become
its QEMU.

silod is a threaded process (and gRPC's fork handlers run in a child it forks with a
``preexec_fn``), so it starts this small program plainly instead; the program does what needs a
fork with set-up in the child (each virtiofsd in a mount namespace of its own with the shared
trees, :func:`.vm._share_tree`), waits for their sockets and execs QEMU in its own place. Each
virtiofsd dies with its parent (``PR_SET_PDEATHSIG``), which is QEMU from then on: the VM's
processes go together. QEMU itself dies with the VM's owner only when ``launch.json`` asks; a
hyperv container's VM outlives a silod restart and is adopted by the next one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def main(vm_dir: str) -> int:
    with open(os.path.join(vm_dir, "launch.json")) as f:
        spec = json.load(f)
    os.setsid()
    from silobox.kernel import libc
    if spec.get("die_with_parent"):
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != spec["parent"]:
            return 1   # the owner is already gone
    from silobox.compute.uvm.vm import _share_tree
    procs = []
    for d in spec["virtiofsd"]:
        with open(d["log"], "wb") as log:
            procs.append(subprocess.Popen(
                d["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=lambda d=d: _share_tree(d["root"], d["shares"], d["readonly"])))
    deadline = time.monotonic() + 10.0
    for d, proc in zip(spec["virtiofsd"], procs):
        while not os.path.exists(d["socket"]):
            if proc.poll() is not None or time.monotonic() > deadline:
                print(f"virtiofsd ({os.path.basename(d['socket'])}) did not start",
                      file=sys.stderr, flush=True)
                for p in procs:
                    p.kill()
                return 1
            time.sleep(0.005)
    os.execvp(spec["qemu"][0], spec["qemu"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
