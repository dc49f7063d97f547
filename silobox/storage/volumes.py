"""Named volumes, local driver: Docker's ``<root>\\volumes\\<name>\\_data`` on Windows and Linux.

A volume is a directory ``<root>/volumes/<name>/_data`` plus a row in silod's store (driver,
labels, options, creation time). Containers see it through a bind mount (HCS
MappedDirectories). Which containers use a volume is the engine's knowledge (their Mounts), so
the in-use refusal lives in the engine; this module owns the directories, the rows, the mounts
of volumes with options and the filling of a new volume from its image.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from typing import Any

from silobox.errors import InvalidArgument, NotFound, SystemFailure
from silobox.timeutil import now_iso

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
ANONYMOUS_LABEL = "com.docker.volume.anonymous"


NAME_MAX = 255
"""A volume is a folder named after it: a longer name is no file name (ENAMETOOLONG)."""


def check_name(name: str) -> str:
    if len(name or "") > NAME_MAX:
        raise InvalidArgument(f"volume name {name[:32]!r}... is {len(name)} characters long: "
                              f"at most {NAME_MAX} are allowed")
    if not NAME_RE.match(name or ""):
        raise InvalidArgument(f'"{name}" includes invalid characters for a local volume name, '
                              'only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to '
                              "pass a host directory, use absolute path")
    return name


_OPTION_KEYS = ("type", "device", "o")
_MOUNT_FLAGS = {"ro": ("MS_RDONLY", True), "rw": ("MS_RDONLY", False),
                "nosuid": ("MS_NOSUID", True), "suid": ("MS_NOSUID", False),
                "nodev": ("MS_NODEV", True), "dev": ("MS_NODEV", False),
                "noexec": ("MS_NOEXEC", True), "exec": ("MS_NOEXEC", False),
                "noatime": ("MS_NOATIME", True), "bind": ("MS_BIND", True),
                "rbind": ("MS_BIND", True)}


def check_options(options: dict[str, str]) -> None:
    """The local driver's options, as Docker's: ``type``, ``device``, ``o`` (mount options)."""
    for key in options:
        if key not in _OPTION_KEYS:
            raise InvalidArgument(f'invalid option key: "{key}"', operation="volume::Create")
    if not options.get("device"):
        raise InvalidArgument("missing required option: \"device\"", operation="volume::Create")
    if not options.get("type") and "bind" not in (options.get("o") or "").split(","):
        raise InvalidArgument("missing required option: \"type\"", operation="volume::Create")


def mount_arguments(options: dict[str, str]) -> tuple[str, str, int, str, bool]:
    """Options → (source, fstype, flags, data, read-only bind)."""
    from silobox.kernel import libc
    flags, data, ro = 0, [], False
    words = [w for w in (options.get("o") or "").split(",") if w]
    for w in words:
        if w in _MOUNT_FLAGS:
            bit, on = _MOUNT_FLAGS[w]
            flags = flags | getattr(libc, bit) if on else flags & ~getattr(libc, bit)
            if w == "rbind":
                flags |= libc.MS_REC
            ro = ro or w == "ro"
        else:
            data.append(w)
    fstype = options.get("type") or "none"
    return options["device"], fstype, flags, ",".join(data), ro and bool(flags & libc.MS_BIND)


@dataclass
class Volume:
    name: str
    mountpoint: str
    created: str
    driver: str = "local"
    labels: dict[str, str] | None = None
    options: dict[str, str] | None = None
    anonymous: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_docker(self) -> dict[str, Any]:
        """Docker's Volume object (``GET /volumes/{name}``)."""
        return {"CreatedAt": self.created, "Driver": self.driver, "Labels": self.labels,
                "Mountpoint": self.mountpoint, "Name": self.name, "Options": self.options,
                "Scope": "local"}


class VolumeStore:
    """The local volume driver: directories under ``<root>/volumes`` and their records."""

    def __init__(self, root: str, db: Any) -> None:
        self.dir = os.path.join(os.path.abspath(root), "volumes")
        self.db = db
        os.makedirs(self.dir, mode=0o701, exist_ok=True)
        db.migrate("volumes", [
            "CREATE TABLE volumes (name TEXT PRIMARY KEY, driver TEXT NOT NULL, "
            "labels TEXT, options TEXT, created TEXT NOT NULL, anonymous INTEGER NOT NULL)",
        ])
        # Half-made or half-removed directories of an earlier run.
        for name in os.listdir(self.dir):
            if name.startswith((".new-", ".removing-")):
                shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)

    def _row(self, row: Any) -> Volume:
        return Volume(name=row["name"], mountpoint=self.data_path(row["name"]),
                      created=row["created"], driver=row["driver"],
                      labels=json.loads(row["labels"]) if row["labels"] else None,
                      options=json.loads(row["options"]) if row["options"] else None,
                      anonymous=bool(row["anonymous"]))

    def data_path(self, name: str) -> str:
        return os.path.join(self.dir, name, "_data")

    def get(self, name: str) -> Volume:
        row = self.db.query_one("SELECT * FROM volumes WHERE name = ?", (name,)) if name else None
        if row is None:
            raise NotFound(f"get {name}: no such volume", operation="volume::Get",
                           object_id=name)
        return self._row(row)

    def exists(self, name: str) -> bool:
        return self.db.query_one("SELECT 1 FROM volumes WHERE name = ?", (name,)) is not None

    def list(self) -> list[Volume]:
        return [self._row(r) for r in self.db.query("SELECT * FROM volumes ORDER BY name")]

    def create(self, name: str | None = None, *, driver: str = "local",
               labels: dict[str, str] | None = None, options: dict[str, str] | None = None,
               anonymous: bool = False) -> tuple[Volume, bool]:
        """Create a volume (or return the existing one of that name); returns (volume, created)."""
        driver = driver or "local"
        if driver != "local":
            raise NotFound(f'error looking up volume plugin {driver}: plugin "{driver}" not '
                           "found", operation="volume::Create", object_id=name or "")
        if options:
            check_options(options)
        if name:
            check_name(name)
            if self.exists(name):
                return self.get(name), False
        else:
            name = secrets.token_hex(32)
            anonymous = True
        if anonymous:
            labels = {**(labels or {}), ANONYMOUS_LABEL: ""}
        tmp = os.path.join(self.dir, f".new-{uuid.uuid4().hex[:8]}")
        try:
            os.makedirs(os.path.join(tmp, "_data"), mode=0o755)
            os.chmod(os.path.join(tmp, "_data"), 0o755)
            os.rename(tmp, os.path.join(self.dir, name))
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SystemFailure(f"create {name}: {e.strerror}", operation="volume::Create",
                                object_id=name, cause=e) from e
        created = now_iso().split(".")[0] + "Z"   # Docker shows volumes to the second
        try:
            with self.db.tx():
                self.db.execute(
                    "INSERT INTO volumes (name, driver, labels, options, created, anonymous) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (name, driver, json.dumps(labels) if labels is not None else None,
                     json.dumps(options) if options else None, created, int(anonymous)))
        except BaseException:
            shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)
            raise
        return self.get(name), True

    def remove(self, name: str) -> None:
        """Delete the record, then the directory (renamed aside first, so it never half-exists
        under its name)."""
        self.get(name)
        self.unmount(name)
        with self.db.tx():
            self.db.execute("DELETE FROM volumes WHERE name = ?", (name,))
        path = os.path.join(self.dir, name)
        if os.path.lexists(path):
            doomed = os.path.join(self.dir, f".removing-{uuid.uuid4().hex[:8]}")
            os.rename(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    # -- volumes with mount options (type/device/o): mounted while a container uses them ----

    def is_mounted(self, name: str) -> bool:
        from silobox.storage.sandbox import mounts_under
        path = os.path.realpath(self.data_path(name))
        return path in mounts_under(path)

    def mount(self, name: str) -> bool:
        """Mount a volume that has options on its ``_data``; False if there is nothing to do."""
        from silobox.kernel import libc
        vol = self.get(name)
        if not vol.options or self.is_mounted(name):
            return False
        source, fstype, flags, data, ro_bind = mount_arguments(vol.options)
        target = self.data_path(name)
        try:
            libc.mount(source, target, None if flags & libc.MS_BIND else fstype, flags,
                       data or None)
            if ro_bind:
                libc.mount(None, target, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY)
        except OSError as e:
            raise SystemFailure(f"error while mounting volume '{target}': {e.strerror}",
                                operation="volume::Mount", object_id=name, cause=e) from e
        return True

    def unmount(self, name: str) -> None:
        from silobox.kernel import libc
        from silobox.storage.sandbox import mounts_under
        for point in mounts_under(self.data_path(name)):
            try:
                libc.umount2(point, 0)
            except OSError:
                libc.umount2(point, libc.MNT_DETACH)

    def size(self, name: str) -> int:
        """Bytes in the volume (containers write to it: walked through directory fds)."""
        from silobox.storage.changes import tree_bytes
        return tree_bytes(self.data_path(name), hard_links_once=False)

    def is_empty(self, name: str) -> bool:
        try:
            return not os.listdir(self.data_path(name))
        except FileNotFoundError:
            return True

    def provide(self, plan: list[dict[str, Any]], made: list[str]) -> list[tuple[str, str]]:
        """Make (or find) the volume of each ``volume`` record of a mount plan
        (``storage/mounts.py``), filling in its Name and Source; the names of those made are
        appended to ``made`` as they come (the caller's undo). Returns (volume, container path)
        of the new empty ones to fill from the image: not ``nocopy``, not option volumes."""
        populate: list[tuple[str, str]] = []
        for m in plan:
            if m["Type"] != "volume":
                continue
            vol, created = self.create(m.get("Name") or None, labels=m.pop("_labels", None),
                                       options=m.pop("_options", None))
            if created:
                made.append(vol.name)
            m["Name"], m["Source"] = vol.name, vol.mountpoint
            if not m.pop("_nocopy", False) and not vol.options and self.is_empty(vol.name):
                populate.append((vol.name, m["Destination"]))
        return populate

    def populate_from_image(self, lower_dirs: list[str], items: list[tuple[str, str]]) -> None:
        """Fill each new volume of ``items`` (name, container path) with the image's content
        at that path, as Docker does: the image (``lower_dirs``, top first) is mounted
        read-only on a scratch point under ``<root>/tmp`` (the next daemon's sweep removes one
        a crash left), and each path is resolved inside it, the image's symlinks followed as
        the container would see them (SafeRoot)."""
        if not lower_dirs:
            return
        from silobox.kernel import libc, overlay
        from silobox.kernel.saferoot import SafeRoot
        tmp = os.path.join(os.path.dirname(self.dir), "tmp", f"populate-{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp, mode=0o700)
        try:
            overlay.mount(tmp, lower_dirs)
        except (OSError, ValueError) as e:
            os.rmdir(tmp)
            why = e.strerror if isinstance(e, OSError) else str(e)
            raise SystemFailure(f"cannot mount the image to fill its volumes: {why}",
                                operation="volume::Populate", cause=e) from e
        try:
            with SafeRoot(tmp) as tree:
                for name, dest in items:
                    try:
                        src = tree.open_dir(dest)
                    except OSError:
                        continue   # absent or not a directory in the image: nothing to copy
                    try:
                        self.populate(name, src)
                    finally:
                        os.close(src)
        finally:
            libc.umount2(tmp, libc.MNT_DETACH)
            os.rmdir(tmp)

    def populate(self, name: str, source: int) -> bool:
        """Copy the directory ``source`` (an fd of a directory of the image, resolved inside
        it) into an empty volume, with owners, modes, xattrs and hard links, as Docker does for
        a new volume mounted over image content. ``cp`` reaches it through the fd, so no path
        of the image is looked up again, and copies links as links (``-a``)."""
        dest = self.data_path(name)
        if not self.is_empty(name):
            return False
        res = subprocess.run(["cp", "-a", "--", f"/proc/self/fd/{source}/.", dest + "/"],
                             capture_output=True, timeout=600, pass_fds=(source,))
        if res.returncode != 0:
            raise SystemFailure(f"cannot copy the image's content into volume {name}: "
                                f"{res.stderr.decode(errors='replace').strip()}",
                                operation="volume::Populate", object_id=name)
        return True
