"""Host devices in a container: ``HostConfig.Devices`` and ``HostConfig.DeviceCgroupRules``.

A Windows container sees the devices HCS assigns to it; here a device is a node made in the
silo's ``/dev`` plus an allow rule in the job object's device policy (moby's
``daemon/devices_linux.go``). The host node is read at every start, as dockerd does, so a
device that came back with new numbers is still the right one.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from silobox.errors import InvalidArgument
from silobox.kernel.jobobject.devices import DeviceRule

_PERMISSIONS = set("rwm")


def check_device_requests(hc: dict[str, Any]) -> None:
    """Create-time checks of the shapes (docker's ``validateDevice``); hosts paths come at start."""
    for d in hc.get("Devices") or []:
        if not isinstance(d, dict):
            raise InvalidArgument("invalid device mapping: expected an object")
        host = d.get("PathOnHost") or ""
        inside = d.get("PathInContainer") or host
        perms = d.get("CgroupPermissions") or "rwm"
        if not host.startswith("/"):
            raise InvalidArgument(f"invalid device mapping {host!r}: PathOnHost must be an "
                                  "absolute path")
        if not inside.startswith("/") or os.path.normpath(inside) in ("/", "/dev"):
            raise InvalidArgument(f"bad format for path: {inside}")
        if not perms or set(perms) - _PERMISSIONS:
            raise InvalidArgument(f"bad mode specified: {perms}")
    device_rules(hc)


def device_rules(hc: dict[str, Any]) -> list[dict[str, Any]]:
    """``DeviceCgroupRules`` (``c 1:3 rwm``, ``b *:* m``) as the document's rule objects."""
    out = []
    for text in hc.get("DeviceCgroupRules") or []:
        if not isinstance(text, str):
            raise InvalidArgument("invalid device cgroup rule: expected a string")
        rule = DeviceRule.parse(text)
        out.append({"Type": rule.type, "Major": rule.major, "Minor": rule.minor,
                    "Access": rule.access})
    return out


def resolve_devices(hc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every requested host device, read now: a node or, for a directory, the nodes in it."""
    out: list[dict[str, Any]] = []
    for d in hc.get("Devices") or []:
        host = d["PathOnHost"]
        inside = d.get("PathInContainer") or host
        perms = d.get("CgroupPermissions") or "rwm"
        try:
            st = os.stat(host)
        except OSError as e:
            raise InvalidArgument(f"error gathering device information while adding custom "
                                  f"device {host!r}: {e.strerror.lower()}") from None
        if stat.S_ISDIR(st.st_mode):
            for dirpath, _, files in os.walk(host):
                for name in sorted(files):
                    path = os.path.join(dirpath, name)
                    node = _node(path, os.path.join(inside, os.path.relpath(path, host)), perms)
                    if node is not None:
                        out.append(node)
            continue
        node = _node(host, inside, perms)
        if node is None:
            raise InvalidArgument(f"error gathering device information while adding custom "
                                  f"device {host!r}: not a device node")
        out.append(node)
    return out


def _node(host: str, inside: str, perms: str) -> dict[str, Any] | None:
    try:
        st = os.stat(host)
    except OSError:
        return None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return {"Path": os.path.normpath(inside), "HostPath": host, "Type": kind,
            "Major": os.major(st.st_rdev), "Minor": os.minor(st.st_rdev),
            "FileMode": stat.S_IMODE(st.st_mode), "Uid": st.st_uid, "Gid": st.st_gid,
            "Access": perms}
