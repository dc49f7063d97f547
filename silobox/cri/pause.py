"""The pod holder program (``pause.c``), compiled static with the host's gcc.

A pod sandbox needs a process that keeps its namespaces and reaps orphans; Kubernetes runtimes
pull a ``pause`` image for it. silod builds the same few lines of C once (``scripts/install.sh``
does it, a checkout builds on first use) and maps the binary read-only into the holder, whose
root is the built-in busybox image: nothing is pulled.
"""

from __future__ import annotations

import os

from silobox.errors import Unavailable
from silobox.kernel import native

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pause.c")
CACHE_DIR = os.environ.get("SILOBOX_CRI_DIR", "/var/cache/silobox/cri")
CONTAINER_PATH = "/.silobox-pause"


def binary_path() -> str:
    return native.binary_path(SOURCE, CACHE_DIR, "pause")


def ensure_built() -> str:
    path = binary_path()
    if not os.path.exists(path):
        try:
            native.build_static(SOURCE, path, "the pod holder")
        except native.NativeBuildError as e:
            raise Unavailable(str(e)) from None
    return path


if __name__ == "__main__":
    print(ensure_built())
