"""The daemon's event stream: Docker's event shape, a bounded history and live subscribers."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, AsyncIterator

from silobox.errors import InvalidArgument
from silobox.filters import labels_match

EVENT_FILTERS = ("type", "event", "container", "image", "label", "network", "volume", "scope")


class Actor:
    """The actor of an event about something that is not a container (an image reference,
    a volume, a network): Docker names it by its id."""

    def __init__(self, id: str) -> None:
        self.id = id


class EventLog:
    def __init__(self, size: int = 2048) -> None:
        self.ring: deque[dict[str, Any]] = deque(maxlen=size)
        self.subscribers: set[asyncio.Queue] = set()

    def emit_event(self, kind: str, action: str, obj: Any,
                   extra: dict[str, str] | None = None) -> None:
        now = time.time_ns()
        attrs: dict[str, str] = {}
        oid = getattr(obj, "id", "") if obj is not None else ""
        if kind == "container":
            attrs = {"name": obj.name, "image": obj.config.get("Image", "")}
            attrs.update({k: str(v) for k, v in (obj.config.get("Labels") or {}).items()})
        attrs.update(extra or {})
        event = {"Type": kind, "Action": action, "Actor": {"ID": oid, "Attributes": attrs},
                 "scope": "local", "time": now // 10**9, "timeNano": now}
        if kind == "container":   # the pre-1.22 fields docker's CLI still reads
            event.update(status=action, id=oid, **({"from": attrs["image"]}))
        self.ring.append(event)
        for q in list(self.subscribers):
            q.put_nowait(event)

    async def events(self, since: float = 0, until: float = 0,
                     filters: dict[str, list[str]] | None = None
                     ) -> AsyncIterator[dict[str, Any]]:
        """Past events since ``since`` then live ones, until ``until`` (0: until disconnected)."""
        filters = filters or {}
        for k in filters:
            if k not in EVENT_FILTERS:
                raise InvalidArgument(f"invalid filter '{k}'")
        if until and since and until < since:
            raise InvalidArgument("since time must be before until time")
        q: asyncio.Queue = asyncio.Queue()
        self.subscribers.add(q)

        async def gen() -> AsyncIterator[dict[str, Any]]:
            try:
                history = list(self.ring)
                now = time.time()
                if since or until:
                    for ev in history:
                        t = ev["timeNano"] / 1e9
                        if since and t < since:
                            continue
                        if until and t > until:
                            continue
                        if self._event_matches(ev, filters):
                            yield ev
                if until and until <= now:
                    return
                while True:
                    timeout = (until - time.time()) if until else None
                    if timeout is not None and timeout <= 0:
                        return
                    try:
                        ev = await asyncio.wait_for(q.get(), timeout)
                    except TimeoutError:
                        return
                    if self._event_matches(ev, filters):
                        yield ev
            finally:
                self.subscribers.discard(q)

        return gen()

    def _event_matches(self, ev: dict[str, Any], f: dict[str, list[str]]) -> bool:
        attrs = ev["Actor"]["Attributes"]
        if f.get("type") and ev["Type"] not in f["type"]:
            return False
        if f.get("event") and ev["Action"].split(":")[0] not in f["event"]:
            return False
        if f.get("scope") and "local" not in f["scope"]:
            return False
        for key in ("container", "network", "volume"):
            if f.get(key):
                if ev["Type"] != key:
                    return False
                ident = ev["Actor"]["ID"]
                if not any(ident.startswith(v) or attrs.get("name") == v for v in f[key]):
                    return False
        if f.get("image"):
            img = attrs.get("image", ev["Actor"]["ID"] if ev["Type"] == "image" else "")
            if not any(img == v or img.split(":")[0] == v for v in f["image"]):
                return False
        if f.get("label") and not labels_match(attrs, f["label"]):
            return False
        return True
