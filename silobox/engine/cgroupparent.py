"""``HostConfig.CgroupParent``: a container's job object under a cgroup of the caller's choice.

By default every job object lives under silod's ``--cgroup-parent`` (``/silobox``). Docker's
``--cgroup-parent`` (and the kubelet's pod cgroups, ``/kubepods/burstable/pod<uid>``, with the
cgroupfs driver) names another group, from the root of every hierarchy (cgroup v1) or of the
unified one (v2); ``/a/b`` and ``a/b`` are the same group, ``..`` is refused. The groups above
the job object that do not exist are made when it is created; silod records which ones it
made (in ``cgroup-parents.json`` under its root) and removes them again once no container of
its store names them, never a group someone else made (the kubelet removes its own).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from silobox.atomic import atomic_write_json
from silobox.engine.hooks import ContainerHook
from silobox.errors import InvalidArgument


def check_cgroup_parent(value: Any) -> str:
    """The group path of a ``CgroupParent`` (no leading ``/``); a bad one is a 400."""
    from silobox.kernel.jobobject import check_component_path
    if not isinstance(value, str):
        raise InvalidArgument("json: cannot unmarshal into Go struct field "
                              "HostConfig.HostConfig.CgroupParent of type string")
    return check_component_path(value, "cgroup parent")


class CgroupParentHook(ContainerHook):
    """Puts the container's job object under its ``CgroupParent`` and tidies what it made."""

    def __init__(self, store: Any, state_path: str) -> None:
        self.store = store
        self.state_path = state_path
        try:
            with open(state_path) as f:
                self.made: set[str] = set(json.load(f))
        except (FileNotFoundError, ValueError):
            self.made = set()

    async def on_start(self, c: Any, document: dict[str, Any]) -> None:
        value = c.host_config.get("CgroupParent")
        if not value:
            return
        from silobox.kernel.jobobject import missing_groups
        parent = check_cgroup_parent(value)
        missing = set(missing_groups(parent))
        if missing - self.made:
            self.made |= missing
            self._save()
        document["Container"]["Linux"]["CgroupParent"] = parent

    async def on_remove(self, c: Any) -> None:
        value = c.host_config.get("CgroupParent")
        if value:
            # its own job object, if a silod killed meanwhile left it (silod's start only
            # sweeps its default parent)
            from silobox.kernel.jobobject import JobObject
            job = JobObject(c.id, check_cgroup_parent(value))
            await asyncio.get_running_loop().run_in_executor(None, job.delete)
        if not self.made:
            return
        from silobox.kernel.jobobject import remove_groups
        used = set()
        for other in self.store.values():
            value = other.host_config.get("CgroupParent")
            if other.id != c.id and value:
                parts = check_cgroup_parent(value).split("/")
                used.update("/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1))
        free = [d for d in self.made if not any(d.endswith(u) for u in used)]
        left = set(remove_groups(free))
        self.made = (self.made - set(free)) | left
        self._save()

    def _save(self) -> None:
        atomic_write_json(self.state_path, sorted(self.made), mode=0o600)
