"""Generate the CRI's Python stubs from ``api.proto`` with grpcio-tools.

The stubs are build output, not source: ``scripts/install.sh`` runs ``python -m
silobox.cri.protogen`` before installing, and silod runs the same generation at start when the
stubs are missing or older than the ``.proto`` (a checkout that was never installed). A stamp
holding the ``.proto``'s SHA-256 says which text the stubs were made from.
"""

from __future__ import annotations

import hashlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "api.proto")
STAMP = os.path.join(HERE, "api_pb2.sha256")
OUTPUTS = ("api_pb2.py", "api_pb2_grpc.py")


def _digest() -> str:
    with open(PROTO, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def current() -> bool:
    """Whether the stubs next to ``api.proto`` were generated from its present text."""
    try:
        with open(STAMP) as f:
            stamp = f.read().strip()
    except FileNotFoundError:
        return False
    return stamp == _digest() and all(os.path.exists(os.path.join(HERE, o)) for o in OUTPUTS)


def generate() -> None:
    """Run protoc (bundled in grpcio-tools) with the source root as include path, so the
    generated service module imports ``silobox.cri.api_pb2`` by its package name."""
    from grpc_tools import protoc  # build-time tool; imported only when generating

    root = os.path.dirname(os.path.dirname(HERE))
    rel = os.path.relpath(PROTO, root)
    import grpc_tools
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{root}", f"-I{well_known}", f"--python_out={root}",
                      f"--grpc_python_out={root}", rel])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) on {PROTO}")
    tmp = STAMP + ".tmp"
    with open(tmp, "w") as f:
        f.write(_digest() + "\n")
    os.replace(tmp, STAMP)


def ensure() -> None:
    if not current():
        generate()


if __name__ == "__main__":
    generate()
    print(f"generated {', '.join(OUTPUTS)} in {HERE}", file=sys.stderr)
