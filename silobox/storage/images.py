"""The image store: image configs, their layer stacks and their tags.

Docker on Windows keeps images in the same image store as on Linux (``image/windowsfilter/…``
metadata over windowsfilter layers); the image is its config JSON, and its id is the sha256 of
those exact bytes. silobox stores the bytes verbatim in SQLite, the ordered diff ids alongside,
and tags keyed by the normalised repository name, and renders the Docker Engine API shapes
(``GET /images/json``, ``GET /images/{name}/json``) from them.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import time
from dataclasses import dataclass, field
from typing import Any

from silobox import jsonlimits
from silobox.errors import Conflict, InvalidArgument, NotFound, SystemFailure
from silobox.storage import reference
from silobox.storage.db import Database
from silobox.storage.layers import Layer, LayerStore, normalize_diff_id
from silobox.timeutil import parse_rfc3339

SCHEMA_COMPONENT = "storage.images"
SCHEMA: list[str] = [
    """
    CREATE TABLE images (
        id            TEXT PRIMARY KEY,        -- sha256:<hex> of config
        config        BLOB NOT NULL,           -- the exact config bytes the id was computed from
        created       TEXT NOT NULL,           -- RFC 3339, from the config
        size          INTEGER NOT NULL,
        last_tag_time TEXT
    );
    CREATE TABLE image_layers (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,             -- 0 = base layer
        diff_id  TEXT NOT NULL REFERENCES layers(diff_id),
        PRIMARY KEY (image_id, position)
    );
    CREATE INDEX image_layers_by_diff ON image_layers(diff_id);
    CREATE TABLE image_tags (
        repository TEXT NOT NULL,              -- normalised, e.g. docker.io/library/busybox
        tag        TEXT NOT NULL,
        image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        created    TEXT NOT NULL,
        PRIMARY KEY (repository, tag)
    );
    CREATE INDEX image_tags_by_image ON image_tags(image_id);
    """,
]

# Repository digests (``RepoDigests``): the manifest digest an image was pulled by or pushed as.
REPO_DIGESTS_COMPONENT = "storage.images.repo_digests"
REPO_DIGESTS_SCHEMA: list[str] = [
    """
    CREATE TABLE repo_digests (
        repository TEXT NOT NULL,              -- normalised, e.g. 127.0.0.1:5000/busybox
        digest     TEXT NOT NULL,              -- sha256:<hex> of the manifest
        image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        created    TEXT NOT NULL,
        PRIMARY KEY (repository, digest)
    );
    CREATE INDEX repo_digests_by_image ON repo_digests(image_id);
    """,
]

ZERO_TIME = "0001-01-01T00:00:00Z"
GRAPH_DRIVER = "windowsfilter"

_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
           "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le",
           "s390x": "s390x", "riscv64": "riscv64"}
_HEX = re.compile(r"[0-9a-f]{1,64}")

# The container-config keys Docker always shows in an image's Config, in its order.
_CONFIG_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("Hostname", ""), ("Domainname", ""), ("User", ""), ("AttachStdin", False),
    ("AttachStdout", False), ("AttachStderr", False), ("Tty", False), ("OpenStdin", False),
    ("StdinOnce", False), ("Env", None), ("Cmd", None), ("Image", ""), ("Volumes", None),
    ("WorkingDir", ""), ("Entrypoint", None), ("OnBuild", None), ("Labels", None),
)


def host_architecture() -> str:
    """This machine's architecture in the GOARCH spelling image configs use."""
    machine = platform.machine()
    return _GOARCH.get(machine, machine)


def canonical_json(obj: Any) -> bytes:
    """The bytes an image id is computed over when silobox writes the config itself."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def now_rfc3339() -> str:
    """The current time as RFC 3339 with nanoseconds, the way Docker prints times."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def rfc3339_to_unix(text: str) -> int:
    """Whole seconds since the epoch for an RFC 3339 time; 0 if unparsable (image configs
    come from anywhere)."""
    try:
        return int(parse_rfc3339(text or ""))
    except ValueError:
        return 0


def storage_layers_of(layers: list[Layer]) -> list[dict[str, str]]:
    """HCS ``Container.Storage.Layers`` for ``layers`` (base first): ``{"Id": guid, "Path":
    tree}``, top first, a layer listed twice kept only at its topmost position."""
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for layer in reversed(layers):
        if layer.path not in seen:
            seen.add(layer.path)
            out.append({"Id": layer.guid, "Path": layer.path})
    return out


@dataclass
class Image:
    """One stored image: its config (Docker/OCI image JSON) and its layers, base first."""

    id: str
    config: dict[str, Any]
    tags: list[str]
    created: str
    size: int
    layers: list[Layer] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    last_tag_time: str | None = None

    @property
    def short_id(self) -> str:
        """The 12-digit id Docker's tables show."""
        return self.id.removeprefix("sha256:")[:12]

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    def lower_dirs(self) -> list[str]:
        """The layer trees as overlay ``lowerdir`` wants them: top first, base last.

        This is the order of HCS's ``Container.Storage.Layers``. A layer listed twice (empty
        layers often are) is kept only at its topmost position: overlay refuses a repeated
        lowerdir, and the lower copy could add nothing the upper one does not.
        """
        return [entry["Path"] for entry in self.storage_layers()]

    def storage_layers(self) -> list[dict[str, str]]:
        """HCS ``Container.Storage.Layers`` for this image: ``{"Id": guid, "Path": tree}``, in
        the order and with the de-duplication of :meth:`lower_dirs`."""
        return storage_layers_of(self.layers)

    def container_config(self) -> dict[str, Any]:
        """The Docker ``Config`` object: the config's ``config`` with Docker's default keys."""
        return _docker_config(self.config.get("config"))

    def to_docker_summary(self) -> dict[str, Any]:
        """One item of ``GET /images/json``."""
        return {
            "Id": self.id,
            "ParentId": self.config.get("parent", ""),
            "RepoTags": list(self.tags),
            "RepoDigests": list(self.digests),
            "Created": rfc3339_to_unix(self.created),
            "Size": self.size,
            "SharedSize": -1,
            "VirtualSize": self.size,
            "Labels": (self.config.get("config") or {}).get("Labels") or {},
            "Containers": -1,
        }

    def to_docker_inspect(self) -> dict[str, Any]:
        """``GET /images/{name}/json``. GraphDriver is named after windowsfilter; its values are
        strings, as Docker clients expect."""
        top = self.layers[-1] if self.layers else None
        out: dict[str, Any] = {
            "Id": self.id,
            "RepoTags": list(self.tags),
            "RepoDigests": list(self.digests),
            "Parent": self.config.get("parent", ""),   # set by commit, as moby's child images
            "Comment": self.config.get("comment", ""),
            "Created": self.created,
            "Container": self.config.get("container", ""),
            "ContainerConfig": _docker_config(self.config.get("container_config")),
            "DockerVersion": self.config.get("docker_version", ""),
            "Author": self.config.get("author", ""),
            "Config": self.container_config(),
            "Architecture": self.config.get("architecture", ""),
            "Os": self.config.get("os", ""),
            "Size": self.size,
            "VirtualSize": self.size,
            "GraphDriver": {
                "Name": GRAPH_DRIVER,
                "Data": {
                    "dir": top.folder if top else "",
                    "layerchain": ":".join(l.folder for l in reversed(self.layers[:-1])),
                },
            },
            "RootFS": {"Type": "layers", "Layers": self.diff_ids},
            "Metadata": {"LastTagTime": self.last_tag_time or ZERO_TIME},
        }
        if self.config.get("variant"):
            out["Variant"] = self.config["variant"]
        if self.config.get("os.version"):
            out["OsVersion"] = self.config["os.version"]
        return out


def _docker_config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    cfg = cfg or {}
    out = {key: cfg.get(key, default) for key, default in _CONFIG_DEFAULTS}
    for key, value in cfg.items():
        if key not in out:
            out[key] = value
    return out


class ImageStore:
    """Images over a :class:`LayerStore`; resolves every reference form Docker accepts."""

    def __init__(self, db: Database, layers: LayerStore) -> None:
        self.db = db
        self.layers = layers
        db.migrate(SCHEMA_COMPONENT, SCHEMA)
        db.migrate(REPO_DIGESTS_COMPONENT, REPO_DIGESTS_SCHEMA)

    # -- create --------------------------------------------------------------------------------

    def create(self, config: dict[str, Any], layer_diff_ids: list[str],
               tags: list[str] | None = None) -> Image:
        """Store an image whose layers are already in the layer store; returns it.

        ``config`` is an OCI/Docker image config; ``rootfs``, ``architecture``, ``os`` and
        ``created`` are filled in when missing. The id is the sha256 of the canonical JSON of the
        result. Creating an image that exists already only adds the tags.
        """
        diff_ids = [normalize_diff_id(d) for d in layer_diff_ids]
        doc = dict(config)
        rootfs = doc.get("rootfs")
        if rootfs is not None:
            given = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
            if not isinstance(given, list) or [normalize_diff_id(d) for d in given] != diff_ids:
                raise InvalidArgument("image config rootfs.diff_ids does not match the layers "
                                      "given", operation="storage::Image::Create")
        doc["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        doc.setdefault("architecture", host_architecture())
        doc.setdefault("os", "linux")
        doc.setdefault("created", now_rfc3339())
        doc.setdefault("config", {})
        return self.import_config(canonical_json(doc), tags)

    def import_config(self, raw: bytes, tags: list[str] | None = None) -> Image:
        """Store an image from its config bytes as received (``docker load``, a pull): the id is
        the sha256 of exactly these bytes. Its layers must be in the layer store."""
        try:
            doc = jsonlimits.loads(raw)
        except ValueError as e:
            raise InvalidArgument(f"invalid image config: {e}", operation="storage::Image::Create",
                                  cause=e) from e
        if not isinstance(doc, dict):
            raise InvalidArgument("invalid image config: not a JSON object",
                                  operation="storage::Image::Create")
        rootfs = doc.get("rootfs")
        if not isinstance(rootfs, dict) or rootfs.get("type") != "layers" \
                or not isinstance(rootfs.get("diff_ids"), list):
            raise InvalidArgument('invalid image config: rootfs must be {"type": "layers", '
                                  '"diff_ids": [...]}', operation="storage::Image::Create")
        diff_ids = [normalize_diff_id(d) for d in rootfs["diff_ids"]]
        refs = [reference.parse_tagged(t) for t in tags or []]
        for ref in refs:
            if ref.digest is not None:
                raise InvalidArgument("refusing to create a tag with a digest reference",
                                      operation="storage::Image::Create", object_id=str(ref))
        image_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        layers = [self.layers.get(d) for d in diff_ids]
        created = doc.get("created") if isinstance(doc.get("created"), str) else ""
        with self.db.tx():
            if self.db.query_one("SELECT 1 FROM images WHERE id = ?", (image_id,)) is None:
                self.db.execute("INSERT INTO images (id, config, created, size) VALUES (?,?,?,?)",
                                (image_id, raw, created or ZERO_TIME,
                                 sum(l.size for l in layers)))
                self.db.executemany(
                    "INSERT INTO image_layers (image_id, position, diff_id) VALUES (?, ?, ?)",
                    [(image_id, i, d) for i, d in enumerate(diff_ids)])
            for ref in refs:
                self._set_tag(image_id, ref)
        return self.get(image_id)

    # -- lookup --------------------------------------------------------------------------------

    def get(self, image_id: str) -> Image:
        """The image with this full id (``sha256:<hex>``)."""
        row = self.db.query_one("SELECT * FROM images WHERE id = ?", (image_id,))
        if row is None:
            raise NotFound(f"No such image: {image_id}", operation="storage::Image::Get",
                           object_id=image_id)
        return self._image(row)

    def resolve(self, ref: str) -> Image:
        """Find an image by any name Docker accepts.

        In Docker's order: a full id (``sha256:<hex>`` or 64 hex digits), then a tag (``busybox``,
        ``busybox:latest``, ``library/busybox``, ``docker.io/library/busybox:latest``), then a
        unique id prefix (``2d3e``, ``sha256:2d3e``).
        """
        if not ref:
            raise NotFound("No such image: ", operation="storage::Image::Resolve")
        hex_id = ref.removeprefix("sha256:")
        if len(hex_id) == 64 and _HEX.fullmatch(hex_id):
            return self.get(f"sha256:{hex_id}")
        shown = ref
        try:
            parsed = reference.parse_tagged(ref)
        except InvalidArgument:
            parsed = None
        if parsed is not None:
            shown = parsed.familiar()
            image_id = self._lookup_reference(parsed)
            if image_id is not None:
                return self.get(image_id)
        if _HEX.fullmatch(hex_id):
            rows = self.db.query("SELECT id FROM images WHERE id >= ? AND id < ? LIMIT 2",
                                 (f"sha256:{hex_id}", f"sha256:{hex_id}g"))
            if len(rows) == 1:
                return self.get(rows[0]["id"])
            if len(rows) > 1:
                raise NotFound(f"No such image: {ref}: the short id matches more than one "
                               "image, give more digits", operation="storage::Image::Resolve",
                               object_id=ref)
        raise NotFound(f"No such image: {shown}", operation="storage::Image::Resolve",
                       object_id=ref)

    def raw_config(self, image_id: str) -> bytes:
        """The config bytes exactly as stored (the image id is their sha256)."""
        row = self.db.query_one("SELECT config FROM images WHERE id = ?", (image_id,))
        if row is None:
            raise NotFound(f"No such image: {image_id}", operation="storage::Image::Get",
                           object_id=image_id)
        raw = row["config"]
        return raw.encode() if isinstance(raw, str) else bytes(raw)

    def exists(self, ref: str) -> bool:
        try:
            self.resolve(ref)
        except NotFound:
            return False
        return True

    def list(self) -> list[Image]:
        """All images, newest first (the order of ``docker images``)."""
        rows = self.db.query("SELECT * FROM images ORDER BY created DESC, id")
        return [self._image(r) for r in rows]

    # -- tags ----------------------------------------------------------------------------------

    def tag(self, image: Image | str, ref: str) -> Image:
        """Point ``ref`` (default tag ``latest``) at the image, moving it from any other image."""
        target = image if isinstance(image, Image) else self.resolve(image)
        parsed = reference.parse_tagged(ref)
        if parsed.digest is not None:
            raise InvalidArgument("refusing to create a tag with a digest reference",
                                  operation="storage::Image::Tag", object_id=ref)
        with self.db.tx():
            if self.db.query_one("SELECT 1 FROM images WHERE id = ?", (target.id,)) is None:
                raise NotFound(f"No such image: {target.id}", operation="storage::Image::Tag",
                               object_id=target.id)
            self._set_tag(target.id, parsed)
        return self.get(target.id)

    def untag(self, ref: str) -> Image:
        """Remove the tag ``ref`` (or the digest reference ``name@sha256:…``); returns the image
        it pointed at (which stays stored)."""
        parsed = reference.parse_tagged(ref)
        if parsed.digest is not None:
            image_id = self._lookup_reference(parsed)
            if image_id is None:
                raise NotFound(f"No such image: {parsed.familiar()}",
                               operation="storage::Image::Untag", object_id=ref)
            self.db.execute("DELETE FROM repo_digests WHERE repository = ? AND digest = ?",
                            (parsed.name, parsed.digest))
            return self.get(image_id)
        image_id = self._lookup_reference(parsed)
        if image_id is None or parsed.tag is None:
            raise NotFound(f"No such image: {parsed.familiar()}",
                           operation="storage::Image::Untag", object_id=ref)
        self.db.execute("DELETE FROM image_tags WHERE repository = ? AND tag = ?",
                        (parsed.name, parsed.tag))
        return self.get(image_id)

    def add_digest(self, image_id: str, ref: str) -> None:
        """Record ``repository@digest`` for the image (a pull or push of it by that manifest)."""
        parsed = reference.parse(ref)
        if parsed.digest is None:
            raise InvalidArgument(f"{ref} names no digest", operation="storage::Image::Digest",
                                  object_id=ref)
        self.db.execute("INSERT INTO repo_digests (repository, digest, image_id, created) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (repository, digest) DO UPDATE SET "
                        "image_id = excluded.image_id", (parsed.name, parsed.digest, image_id,
                                                         now_rfc3339()))

    # -- removal -------------------------------------------------------------------------------

    def remove(self, ref: str, force: bool = False) -> list[dict[str, str]]:
        """``docker rmi``: untag, and delete the image and its unused layers once no tag is left.

        Returns Docker's delete response items (``{"Untagged": …}``, ``{"Deleted": …}``). Naming
        an image by id while several repositories tag it is refused unless ``force``. Whether a
        container still uses the image is the engine's check, made before calling this.
        """
        image = self.resolve(ref)
        report: list[dict[str, str]] = []
        by_tag = self._names_tag(ref, image)
        if by_tag is not None and len(image.tags) > 1:
            self.untag(by_tag)
            return [{"Untagged": by_tag}]
        repos = {t.rsplit(":", 1)[0] for t in image.tags}
        if by_tag is None and len(repos) > 1 and not force:
            raise Conflict(f"conflict: unable to delete {image.short_id} (must be forced) - image "
                           "is referenced in multiple repositories",
                           operation="storage::Image::Remove", object_id=image.id)
        with self.db.tx():
            self.db.execute("DELETE FROM images WHERE id = ?", (image.id,))
        report.extend({"Untagged": t} for t in image.tags)
        report.append({"Deleted": image.id})
        for layer in reversed(image.layers):
            # a layer still used by another image stays, and so do its parents
            report.extend({"Deleted": gone.chain_id} for gone in self.layers.release(layer.diff_id))
        return report

    # -- helpers -------------------------------------------------------------------------------

    def _names_tag(self, ref: str, image: Image) -> str | None:
        """The familiar tag ``ref`` names if it resolved through a tag, not through an id."""
        try:
            parsed = reference.parse_tagged(ref)
        except InvalidArgument:
            return None
        if parsed.tag is not None and parsed.familiar() in image.tags \
                and self._lookup_reference(parsed) == image.id:
            return parsed.familiar()
        return None

    def _lookup_reference(self, ref: reference.Reference) -> str | None:
        if ref.digest is not None:
            row = self.db.query_one("SELECT image_id FROM repo_digests WHERE repository = ? "
                                    "AND digest = ?", (ref.name, ref.digest))
            return row["image_id"] if row is not None else None
        if ref.tag is None:
            return None
        row = self.db.query_one("SELECT image_id FROM image_tags WHERE repository = ? AND tag = ?",
                                (ref.name, ref.tag))
        return row["image_id"] if row is not None else None

    def _set_tag(self, image_id: str, ref: reference.Reference) -> None:
        stamp = now_rfc3339()
        self.db.execute("INSERT INTO image_tags (repository, tag, image_id, created) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (repository, tag) DO UPDATE SET "
                        "image_id = excluded.image_id, created = excluded.created",
                        (ref.name, ref.tag, image_id, stamp))
        self.db.execute("UPDATE images SET last_tag_time = ? WHERE id = ?", (stamp, image_id))

    def _image(self, row: Any) -> Image:
        image_id = row["id"]
        raw = row["config"]
        try:
            config = json.loads(raw)
        except ValueError as e:
            raise SystemFailure(f"the stored config of image {image_id} is corrupt: {e}",
                                operation="storage::Image::Get", object_id=image_id,
                                cause=e) from e
        diff_ids = [r["diff_id"] for r in self.db.query(
            "SELECT diff_id FROM image_layers WHERE image_id = ? ORDER BY position", (image_id,))]
        tags = []
        for r in self.db.query("SELECT repository, tag FROM image_tags WHERE image_id = ? "
                               "ORDER BY created, repository, tag", (image_id,)):
            domain, _, path = r["repository"].partition("/")
            tags.append(reference.Reference(domain, path, r["tag"]).familiar())
        digests = []
        for r in self.db.query("SELECT repository, digest FROM repo_digests WHERE image_id = ? "
                               "ORDER BY created, repository", (image_id,)):
            domain, _, path = r["repository"].partition("/")
            digests.append(reference.Reference(domain, path, None, r["digest"]).familiar())
        return Image(id=image_id, config=config, tags=tags, created=row["created"],
                     size=row["size"], layers=[self.layers.get(d) for d in diff_ids],
                     digests=digests, last_tag_time=row["last_tag_time"])
