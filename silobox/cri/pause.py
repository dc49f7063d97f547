"""The pod holder program (``pause.c``), compiled static with the host's gcc.

A pod sandbox needs a process that keeps its namespaces and reaps orphans; Kubernetes runtimes
pull a ``pause`` image for it. silod builds the same few lines of C once (``scripts/install.sh``
does it, a checkout builds on first use) and maps the binary read-only into the holder, whose
root is the built-in busybox image: nothing is pulled.
"""

from __future__ import annotations

import hashlib
import os
import subprocess

from silobox.errors import Unavailable

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pause.c")
CACHE_DIR = os.environ.get("SILOBOX_CRI_DIR", "/var/cache/silobox/cri")
CONTAINER_PATH = "/.silobox-pause"


def binary_path() -> str:
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return os.path.join(CACHE_DIR, digest, "pause")


def ensure_built() -> str:
    path = binary_path()
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        res = subprocess.run(["gcc", "-static", "-O2", "-s", "-Wall", "-o", tmp, SOURCE],
                             capture_output=True, text=True)
    except FileNotFoundError:
        raise Unavailable("the pod holder needs gcc to be built (run scripts/install.sh)") \
            from None
    if res.returncode != 0:
        raise Unavailable(f"cannot build the pod holder: {res.stderr.strip()[-1000:]}")
    os.chmod(tmp, 0o555)
    os.rename(tmp, path)
    return path


if __name__ == "__main__":
    print(ensure_built())
