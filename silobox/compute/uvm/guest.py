"""In the utility VM: start a container's shim, as silod's spawner does on the host.

``python -m silobox.compute.uvm.guest`` reads the shim configuration (JSON) on stdin, makes the
container's job object on the guest's cgroup v2 hierarchy, forks the shim (which unshares the
silo's namespaces, mounts its overlay from the read-only layers and the shared sandbox, applies
seccomp and capabilities, as on the host) and prints the shim's first report as one JSON line.
The shim then lives on under the agent (PID 1); the host reaches its socket through a forward.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def main() -> int:
    cfg = json.loads(sys.stdin.read())
    from silobox.compute.system import job_limits
    from silobox.kernel.jobobject import JobObject
    from silobox.compute.shim import run_shim
    job = JobObject(cfg["job"]["name"], cfg["job"]["parent"])
    try:
        job.create(job_limits(cfg.get("limits") or {}, bool(cfg["silo"].get("privileged"))))
    except Exception as e:
        print(json.dumps({"t": "error", "stage": "job object", "errno": 0, "msg": str(e)}))
        return 0
    from silobox.kernel import entry
    entry.load(entry.ensure_built())   # shared read-only from the host at the same path
    cfg["procs_files"] = job.procs_files()
    silo = cfg["silo"]
    if silo.get("upper_dir"):
        # The container's writable layer lives on the VM's own disk (virtio-blk, ext4): overlayfs
        # takes no upper layer on virtiofs. The image's layers stay the host's, read-only.
        base = f"/scratch/sandboxes/{cfg['id']}"
        for name in ("upper", "work", "rootfs"):
            os.makedirs(f"{base}/{name}", exist_ok=True)
        silo.update(upper_dir=f"{base}/upper", work_dir=f"{base}/work", rootfs=f"{base}/rootfs")
    os.makedirs(cfg["state_dir"], mode=0o700, exist_ok=True)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        ours.close()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):   # the agent's pipes end with this helper, not with the shim
            os.dup2(null, fd)
        os.close(null)
        run_shim(cfg, theirs.detach())
    theirs.close()
    buf = b""
    while b"\n" not in buf:
        chunk = ours.recv(65536)
        if not chunk:
            break
        buf += chunk
    line = buf.split(b"\n", 1)[0].decode() or json.dumps(
        {"t": "error", "stage": "shim", "errno": 0, "msg": "the shim exited before reporting"})
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
