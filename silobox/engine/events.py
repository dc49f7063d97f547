"""The daemon's event log: Docker's event shape, kept in a bounded in-memory ring."""

from __future__ import annotations

import time
from collections import deque
from typing import Any


class EventLog:
    def __init__(self, size: int = 1024) -> None:
        self.ring: deque[dict[str, Any]] = deque(maxlen=size)

    def emit_event(self, kind: str, action: str, obj: Any,
                   extra: dict[str, str] | None = None) -> None:
        now = time.time_ns()
        attrs: dict[str, str] = {}
        oid = getattr(obj, "id", "")
        if kind == "container":
            attrs = {"name": obj.name, "image": obj.config.get("Image", "")}
            attrs.update({k: str(v) for k, v in (obj.config.get("Labels") or {}).items()})
        attrs.update(extra or {})
        self.ring.append({"Type": kind, "Action": action, "Actor": {"ID": oid, "Attributes": attrs},
                          "scope": "local", "time": now // 10**9, "timeNano": now})
