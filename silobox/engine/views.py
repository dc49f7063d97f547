"""How containers are shown: ``docker inspect``, ``docker ps`` and its filters.

Reads only: the records of the store, the compute systems' states, the sandboxes' sizes and
what each container hook adds to an inspect.
"""

from __future__ import annotations

import time
from typing import Any

from silobox.engine.endpoints import shown_networks
from silobox.engine.state import LIVE, Status, status, system_of
from silobox.errors import InvalidArgument, NotFound
from silobox.filters import labels_match
from silobox.timeutil import human_duration, parse_iso

Container = Any


class ContainerViews:
    """``container_inspect`` and ``container_list`` of ``api.backend.ContainerBackend``."""

    def __init__(self, config: Any, store: Any, compute: Any, images: Any, image_service: Any,
                 storage: Any, hooks: list[Any], execs: Any) -> None:
        self.config = config
        self.store = store
        self.compute = compute
        self.images = images
        self.image_service = image_service
        self.storage = storage
        self.hooks = hooks
        self.execs = execs

    async def container_inspect(self, ref: str, size: bool = False) -> dict[str, Any]:
        c = self.store.find(ref)
        out = c.to_document()
        del out["Silobox"]
        out["ExecIDs"] = self.execs.ids_of(c.id) or None
        hc = dict(out["HostConfig"])
        out["HostConfig"] = hc
        system = system_of(self.compute, c.id)
        out["Silobox"] = {"ComputeSystem": system.state.value if system else None,
                          "JobObject": f"/{self.config.cgroup_parent}/{c.id}"}
        if size:
            out["SizeRw"] = self.storage.sandbox_for(c.id).used_bytes()
            out["SizeRootFs"] = out["SizeRw"]
        for hook in self.hooks:
            hook.on_inspect(c, out)
        return out

    def _status_text(self, c: Container) -> str:
        st = c.state
        now = status(c)
        if now in LIVE:
            txt = "Up " + human_duration(time.time() - parse_iso(st["StartedAt"]))
            if now is Status.PAUSED:
                return txt + " (Paused)"
            health = (st.get("Health") or {}).get("Status")
            if health:
                txt += " (health: starting)" if health == "starting" else f" ({health})"
            return txt
        if now is Status.CREATED:
            return "Created"
        if now is Status.REMOVING:
            return "Removal In Progress"
        fin = parse_iso(st["FinishedAt"])
        return f"Exited ({st['ExitCode']}) {human_duration(time.time() - fin)} ago"

    async def container_list(self, all: bool = False, limit: int = -1, size: bool = False,
                             filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        filters = filters or {}
        known = {"id", "name", "status", "label", "exited", "ancestor", "before", "since",
                 "isolation", "health", "network", "volume", "publish", "expose", "is-task"}
        for k in filters:
            if k not in known:
                raise InvalidArgument(f"invalid filter '{k}'")
        for s in filters.get("status", []):
            if s not in {x.value for x in Status}:
                raise InvalidArgument(f"invalid filter 'status={s}'")
        items = sorted(self.store.values(), key=lambda c: c.created, reverse=True)
        out = []
        resolved: dict[str, str] = {}   # image name → id, once per listing
        for c in items:
            if not all and not c.running and not filters.get("status") and \
                    not filters.get("exited"):
                continue
            if not self._match(c, filters):
                continue
            out.append(self.summary(c, size, resolved))
        if limit is not None and limit > 0:
            out = out[:limit]
        return out

    def _match(self, c: Container, f: dict[str, list[str]]) -> bool:
        if f.get("id") and not any(c.id.startswith(v) for v in f["id"]):
            return False
        if f.get("name") and not any(v.lstrip("/") in c.name for v in f["name"]):
            return False
        if f.get("status") and c.state["Status"] not in f["status"]:
            return False
        if f.get("exited"):
            if status(c) is not Status.EXITED or str(c.state["ExitCode"]) not in f["exited"]:
                return False
        if f.get("label") and not labels_match(c.config.get("Labels"), f["label"]):
            return False
        if f.get("ancestor"):
            ok = False
            for v in f["ancestor"]:
                try:
                    if self.images.resolve(v).id == c.image:
                        ok = True
                except NotFound:
                    pass
            if not ok:
                return False
        isolation = c.host_config.get("Isolation") or "default"
        if f.get("isolation") and isolation not in f["isolation"]:
            return False
        if f.get("health"):
            if (c.state.get("Health") or {}).get("Status", "none") not in f["health"]:
                return False
        return True

    def summary(self, c: Container, size: bool,
                 resolved: dict[str, str] | None = None) -> dict[str, Any]:
        argv = [c.path, *c.args]
        d = {
            "Id": c.id, "Names": ["/" + c.name], "Image": self.image_service.image_shown(c, resolved),
            "ImageID": c.image, "Command": " ".join(argv),
            "Created": int(parse_iso(c.created)), "Ports": [],
            "Labels": c.config.get("Labels") or {}, "State": c.state["Status"],
            "Status": self._status_text(c),
            "HostConfig": {"NetworkMode": c.host_config.get("NetworkMode", "none")},
            "NetworkSettings": {"Networks": shown_networks(c)},
            "Mounts": c.mounts,
        }
        if size:
            d["SizeRw"] = self.storage.sandbox_for(c.id).used_bytes()
        return d
