"""A container's mounts as Docker's create body asks for them, checked and planned.

Host binds from ``-v /src:/dst`` (made into records by the engine's spec), named volumes from
``-v name:/dst``, ``HostConfig.Mounts`` (bind, volume, tmpfs), ``HostConfig.Tmpfs`` and an
anonymous volume for each of the image's and the config's ``Volumes`` not covered by a mount.
Every refusal is Docker's message. The plan only describes: volumes are made, and filled from
the image, by the caller (``VolumeStore``), the mounts themselves by the container's silo.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from silobox.errors import InvalidArgument, NotFound
from silobox.storage.volumes import check_name, check_options

TMPFS_DEFAULTS = "noexec,nosuid,nodev"        # Docker's for --tmpfs
MOUNT_TMPFS_DEFAULTS = "nosuid,nodev"         # Docker's for --mount type=tmpfs
_BIND_MODES = {"ro", "rw", "z", "Z", "private", "rprivate", "shared", "rshared", "slave",
               "rslave", "nocopy"}


PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")


def bind_propagation(opts: list[str]) -> str:
    """The propagation named among a bind's ``-v`` options (rprivate when none; Docker
    refuses two)."""
    named = [o for o in opts if o in PROPAGATIONS]
    if len(named) > 1:
        raise InvalidArgument(f"invalid mode: {','.join(opts)}")
    return named[0] if named else "rprivate"


def check_propagation(source: str, propagation: str) -> None:
    """A shared bind needs a shared source mount, a slave one a shared or slave source (else
    nothing would propagate): Docker's check and its words. silobox does not change the
    host's mounts to make them so; the kubelet makes its directories rshared as it does
    for containerd."""
    if propagation not in ("shared", "rshared", "slave", "rslave"):
        return
    from silobox.kernel.silo import mount_of
    point, tags = mount_of(source)
    if propagation in ("shared", "rshared") and "shared" not in tags:
        raise InvalidArgument(f"path {source} is mounted on {point} but it is not a shared "
                              "mount")
    if not tags & {"shared", "master"}:
        raise InvalidArgument(f"path {source} is mounted on {point} but it is not a shared "
                              "or slave mount")


def _depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


def _clean(path: str) -> str:
    return os.path.normpath(path) if path else path


def mount_tree(mounts: list[dict[str, Any]], path: str) -> tuple[dict[str, Any], str] | None:
    """The volume or bind that holds container ``path`` and the path inside its source tree,
    or None when the path is in the container's own filesystem. The innermost mount wins, as
    in the container's mount table; the match is lexical (``..`` is folded first)."""
    where = "/" + os.path.normpath("/" + path).lstrip("/")
    best: tuple[dict[str, Any], str] | None = None
    for m in mounts:
        if m.get("Type") not in ("bind", "volume") or not m.get("Source"):
            continue
        dest = "/" + os.path.normpath("/" + m["Destination"]).lstrip("/")
        if where == dest or where.startswith(dest.rstrip("/") + "/"):
            if best is None or _depth(dest) > _depth(best[0]["Destination"]):
                best = (m, "/" + where[len(dest):].lstrip("/"))
    return best


def plan_mounts(hc: dict[str, Any], existing: list[dict[str, Any]], volumes: dict[str, Any],
                volume_exists: Callable[[str], bool]) -> tuple[list[dict], list[dict]]:
    """Validate every mount source of a create body; nothing is created here.

    ``hc`` is its HostConfig, ``existing`` the ``Mounts`` records made already (host binds),
    ``volumes`` the image's and the config's ``Volumes`` (each becomes an anonymous volume
    unless a mount covers it). Returns (the new ``Mounts`` records, the ``--tmpfs`` mounts);
    a volume record still has no Source (and perhaps no Name) and carries the private
    ``_labels``/``_options``/``_nocopy``/``_mount`` keys for its creation."""
    taken = {_clean(m["Destination"]) for m in existing}
    plan: list[dict[str, Any]] = []

    def claim(dest: str) -> str:
        dest = _clean(dest)
        if dest in taken:
            raise InvalidArgument(f"Duplicate mount point: {dest}")
        taken.add(dest)
        return dest

    for b in hc.get("Binds") or []:
        parts = b.split(":")
        if parts[0].startswith("/"):
            continue   # host binds: spec.parse_binds made them already
        if len(parts) not in (2, 3) or not parts[1]:
            raise InvalidArgument(f"invalid volume specification: '{b}'")
        name, dest = parts[0], parts[1]
        mode = parts[2] if len(parts) == 3 else ""
        opts = [o for o in mode.split(",") if o]
        if any(o not in _BIND_MODES for o in opts):
            raise InvalidArgument(f"invalid mode: {mode}")
        check_name(name)
        if not dest.startswith("/") or dest == "/":
            raise InvalidArgument(f"invalid volume specification: '{b}': invalid mount "
                                  f"config for type \"volume\": invalid mount path: "
                                  f"'{dest}' mount path must be absolute")
        plan.append({"Type": "volume", "Name": name, "Source": "",
                     "Destination": claim(dest), "Driver": "local", "Mode": mode or "z",
                     "RW": "ro" not in opts, "Propagation": "", "_nocopy": "nocopy" in opts})
    mounts = hc.get("Mounts") or []
    if not isinstance(mounts, list):
        raise InvalidArgument("json: cannot unmarshal object into Go struct field "
                              "HostConfig.HostConfig.Mounts of type []mount.Mount")
    for m in mounts:   # each names its own volume driver
        plan.append({**mount_entry(m, claim), "_mount": True})
    tmpfs: list[dict[str, str]] = []
    tmap = hc.get("Tmpfs") or {}
    if not isinstance(tmap, dict) or not all(isinstance(v, str) for v in tmap.values()):
        raise InvalidArgument("json: cannot unmarshal into Go struct field "
                              "HostConfig.HostConfig.Tmpfs of type map[string]string")
    for path, opts in tmap.items():
        if not path.startswith("/") or path == "/":
            raise InvalidArgument(f"invalid mount path: '{path}' mount path must be absolute")
        options = f"{TMPFS_DEFAULTS},{opts}" if opts else TMPFS_DEFAULTS
        check_tmpfs(options)
        tmpfs.append({"ContainerPath": claim(path), "Options": options})
    # The image's VOLUMEs and the config's Volumes not covered by a mount: anonymous.
    for path in volumes:
        if not isinstance(path, str) or not path.startswith("/") or path == "/":
            raise InvalidArgument(f"invalid mount path: '{path}' mount path must be absolute")
        if _clean(path) in taken:
            continue
        plan.append({"Type": "volume", "Name": "", "Source": "",
                     "Destination": claim(path), "Driver": "local", "Mode": "",
                     "RW": True, "Propagation": ""})
    driver = hc.get("VolumeDriver") or "local"
    if driver != "local" and any(
            p["Type"] == "volume" and not p.get("_mount") and
            not (p["Name"] and volume_exists(p["Name"])) for p in plan):
        # as dockerd: the driver matters only for a volume that has to be made
        raise NotFound(f'error looking up volume plugin {driver}: plugin "{driver}" '
                       "not found")
    return plan, tmpfs


def mount_entry(m: Any, claim: Callable[[str], str]) -> dict[str, Any]:
    """One ``HostConfig.Mounts`` item → a ``Mounts`` record (Docker's messages)."""
    if not isinstance(m, dict):
        raise InvalidArgument("invalid mount config: expected an object")
    kind = m.get("Type") or ""
    where = f'invalid mount config for type "{kind}"'
    target = m.get("Target") or ""
    if not target:
        raise InvalidArgument(f"{where}: field Target must not be empty")
    if not target.startswith("/") or target == "/":
        raise InvalidArgument(f"{where}: invalid mount path: '{target}' mount path must "
                              "be absolute")
    src = m.get("Source") or ""
    ro = bool(m.get("ReadOnly"))
    if kind == "bind":
        if not src:
            raise InvalidArgument(f"{where}: field Source must not be empty")
        if not src.startswith("/"):
            raise InvalidArgument(f"{where}: invalid mount path: '{src}' mount path must "
                                  "be absolute")
        if m.get("VolumeOptions") or m.get("TmpfsOptions"):
            raise InvalidArgument(f"{where}: field VolumeOptions/TmpfsOptions must not be "
                                  "specified")
        if not os.path.exists(src):
            if (m.get("BindOptions") or {}).get("CreateMountpoint"):
                os.makedirs(src, 0o755, exist_ok=True)
            else:
                raise InvalidArgument(f"{where}: bind source path does not exist: {src}")
        prop = (m.get("BindOptions") or {}).get("Propagation") or "rprivate"
        if prop not in PROPAGATIONS:
            raise InvalidArgument(f"{where}: invalid propagation mode: {prop}")
        check_propagation(src, prop)
        return {"Type": "bind", "Source": src, "Destination": claim(target), "Mode": "",
                "RW": not ro, "Propagation": prop}
    if kind == "volume":
        if m.get("BindOptions") or m.get("TmpfsOptions"):
            raise InvalidArgument(f"{where}: field BindOptions/TmpfsOptions must not be "
                                  "specified")
        vo = m.get("VolumeOptions") or {}
        driver = (vo.get("DriverConfig") or {}).get("Name") or "local"
        if driver != "local":
            raise NotFound(f'error looking up volume plugin {driver}: plugin "{driver}" '
                           "not found")
        options = (vo.get("DriverConfig") or {}).get("Options") or None
        if options:
            check_options(options)
        if vo.get("Subpath"):
            raise InvalidArgument(f"{where}: volume subpaths are not supported")
        if src:
            check_name(src)
        return {"Type": "volume", "Name": src, "Source": "",
                "Destination": claim(target), "Driver": "local", "Mode": "z",
                "RW": not ro, "Propagation": "", "_nocopy": bool(vo.get("NoCopy")),
                "_labels": vo.get("Labels") or None, "_options": options}
    if kind == "tmpfs":
        if src:
            raise InvalidArgument(f"{where}: field Source must not be specified")
        if m.get("BindOptions") or m.get("VolumeOptions"):
            raise InvalidArgument(f"{where}: field BindOptions/VolumeOptions must not be "
                                  "specified")
        check_tmpfs(tmpfs_mount_options(m, where))
        return {"Type": "tmpfs", "Source": "", "Destination": claim(target), "Mode": "",
                "RW": not ro, "Propagation": ""}
    if not kind:
        raise InvalidArgument("invalid mount config: mount type unknown")
    raise InvalidArgument(f'invalid mount config for type "{kind}": mount type unknown')


def tmpfs_mount_options(spec: dict[str, Any], where: str = "") -> str:
    """The tmpfs options of a ``HostConfig.Mounts`` item of type tmpfs (Docker's defaults,
    ``ro``, ``size=``, ``mode=`` in octal)."""
    to = spec.get("TmpfsOptions") or {}
    if not isinstance(to, dict):
        raise InvalidArgument("json: cannot unmarshal into Go struct field "
                              "Mount.HostConfig.Mounts.TmpfsOptions of type mount.TmpfsOptions")
    for key in ("SizeBytes", "Mode"):
        if key in to and to[key] is not None and (not isinstance(to[key], int)
                                                  or isinstance(to[key], bool)):
            raise InvalidArgument(f"json: cannot unmarshal {type(to[key]).__name__} into Go "
                                  f"struct field TmpfsOptions.HostConfig.Mounts.TmpfsOptions."
                                  f"{key} of type {'int64' if key == 'SizeBytes' else 'uint32'}")
    opts = [MOUNT_TMPFS_DEFAULTS] + (["ro"] if spec.get("ReadOnly") else [])
    if to.get("SizeBytes"):
        size = to["SizeBytes"]
        if size < 0:
            raise InvalidArgument(f"{where}: invalid tmpfs size {size}")
        opts.append(f"size={size}")
    if to.get("Mode"):
        if not 0 <= to["Mode"] <= 0o7777:
            raise InvalidArgument(f"{where}: invalid tmpfs mode {to['Mode']:o}")
        opts.append(f"mode={to['Mode']:o}")
    return ",".join(opts)


def tmpfs_of(host_config: dict[str, Any], destination: str) -> str:
    """The options of the ``HostConfig.Mounts`` tmpfs planned at ``destination``."""
    for spec in host_config.get("Mounts") or []:
        if isinstance(spec, dict) and spec.get("Type") == "tmpfs" and \
                _clean(spec.get("Target") or "") == destination:
            return tmpfs_mount_options(spec)
    return MOUNT_TMPFS_DEFAULTS


def check_tmpfs(options: str) -> None:
    from silobox.kernel.silo import tmpfs_options
    try:
        tmpfs_options(options)
    except ValueError as e:
        raise InvalidArgument(f"invalid tmpfs options: {e}") from None
