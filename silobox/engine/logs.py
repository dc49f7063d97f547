"""Reading the json-file log a shim writes: tail, since/until, timestamps and follow."""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from typing import AsyncIterator, Callable

from silobox.timeutil import parse_iso

STDOUT, STDERR = 1, 2


def _records(data: bytes) -> list[dict]:
    out = []
    for line in data.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _rotated(path: str) -> list[bytes]:
    """The contents of the rotated files (max-file), oldest first: <log>.N … <log>.1."""
    found = []
    i = 1
    while os.path.exists(f"{path}.{i}"):
        i += 1
    for n in range(i - 1, 0, -1):
        try:
            with open(f"{path}.{n}", "rb") as f:
                found.append(f.read())
        except FileNotFoundError:
            continue
    return found


async def read_log(path: str, *, stdout: bool, stderr: bool, follow: bool, since: float,
                   until: float, timestamps: bool, tail: str,
                   running: Callable[[], bool]) -> AsyncIterator[tuple[int, bytes]]:
    def keep(rec: dict) -> bool:
        s = rec.get("stream")
        if (s == "stdout" and not stdout) or (s == "stderr" and not stderr):
            return False
        if since or until:
            t = parse_iso(rec.get("time", ""))
            if since and t < since:
                return False
            if until and t > until:
                return False
        return True

    def emit(rec: dict) -> tuple[int, bytes]:
        data = rec.get("log", "")
        if timestamps:
            data = f"{rec.get('time', '')} {data}"
        return (STDERR if rec.get("stream") == "stderr" else STDOUT), data.encode()

    older = b"".join(_rotated(path))
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        data = f.read()
        # keep any trailing partial line for the follow loop
        cut = data.rfind(b"\n") + 1
        pending = data[cut:]
        recs = [r for r in _records(older + data[:cut]) if keep(r)]
        if tail not in ("", "all", None):
            try:
                n = int(tail)
            except ValueError:
                n = -1
            if n >= 0:
                recs = list(deque(recs, maxlen=n)) if n else []
        for rec in recs:
            yield emit(rec)
        if not follow:
            return
        while True:
            chunk = f.read()
            if chunk:
                pending += chunk
                cut = pending.rfind(b"\n") + 1
                for rec in _records(pending[:cut]):
                    if keep(rec):
                        yield emit(rec)
                pending = pending[cut:]
                continue
            if not running() or (until and until < __import__("time").time()):
                chunk = f.read()
                if chunk:
                    continue
                return
            await asyncio.sleep(0.1)
