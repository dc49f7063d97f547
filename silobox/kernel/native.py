"""Small static C programs silobox builds from its own sources with the host's gcc.

The entry helper (``kernel/entry``), the per-container monitor (``compute/monitor``) and the
CRI's pod holder (``cri/pause``) are each one C file beside their Python module. Each is built
once per source (``scripts/install.sh`` does it; a checkout builds on first use) into
``<cache>/<sha256 of the source, 16 hex>/<name>``, so a changed source never runs an old binary,
and the file appears atomically (a rename), so a concurrent build never exposes half a binary.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import Callable


class NativeBuildError(RuntimeError):
    """The program is not built and cannot be built here (no gcc, no static libc)."""


def source_hash(source: str) -> str:
    with open(source, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def binary_path(source: str, cache_dir: str, name: str) -> str:
    return os.path.join(cache_dir, source_hash(source), name)


def build_static(source: str, dest: str, what: str) -> None:
    """``gcc -static -O2 -s`` of ``source`` to ``dest``; ``what`` names it in errors."""
    os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
    tmp = f"{dest}.{os.getpid()}.tmp"
    try:
        res = subprocess.run(["gcc", "-static", "-O2", "-s", "-Wall", "-o", tmp, source],
                             capture_output=True, text=True)
    except FileNotFoundError:
        raise NativeBuildError(f"{what} {dest} is missing and gcc is not installed to build "
                               "it (run scripts/install.sh)") from None
    if res.returncode != 0:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise NativeBuildError(f"cannot build {what} (gcc -static; is libc6-dev installed?): "
                               f"{res.stderr.strip()[-2000:]}")
    os.chmod(tmp, 0o555)
    os.rename(tmp, dest)


def command(argv: list[str], module: str, name: str, ensure_built: Callable[[], str],
            path: Callable[[], str], missing: type[Exception]) -> int:
    """``python -m <module> build|path``, what scripts/install.sh runs for each program."""
    cmd = argv[0] if argv else "build"
    if cmd == "build":
        try:
            print(ensure_built())
        except missing as e:
            print(f"{name}: {e}", file=sys.stderr)
            return 1
        return 0
    if cmd == "path":
        print(path())
        return 0
    print(f"usage: python -m {module} build|path", file=sys.stderr)
    return 2
