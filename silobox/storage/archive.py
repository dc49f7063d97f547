"""Image archives: ``docker save``/``docker load`` format and the OCI image layout, both ways.

The Windows daemon moves images between hosts the same way (``docker save`` of a Windows image is
the same archive format; its layers are exported with wclayer ExportLayer and imported with
ImportLayer). An archive is read as a stream, in one pass: each layer blob is imported into the
layer store as it arrives (content addressed, so its parent does not matter yet) while its sha256
is checked against its name; small JSON files (manifests, configs, indexes) are kept in memory.
When the stream ends, ``manifest.json`` (docker-archive) or ``index.json`` (OCI layout) says
which blobs make which images, each config's ``rootfs.diff_ids`` is checked against the layers'
computed diff ids, and only then are images recorded. Layers stored by a load that fails are
released again, so a failed load leaves nothing behind; what a crash leaves is removed by
:meth:`LayerStore.sweep` at the next start.

Saving writes both formats in one archive, as Docker 25+ does: ``blobs/sha256/<hex>`` for layers
(uncompressed, byte-identical to the imported tars, so digests survive a round trip), configs and
OCI manifests, plus ``index.json``, ``oci-layout``, ``manifest.json`` and ``repositories``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator

from silobox import jsonlimits
from silobox.errors import InvalidArgument, SiloboxError, SystemFailure
from silobox.storage import reference
from silobox.storage.images import Image, ImageStore, host_architecture
from silobox.storage.layers import LayerStore, normalize_diff_id

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
SMALL_BLOB = 4 << 20         # JSON documents are read into memory up to this size
HELD_BYTES = 64 << 20
"""At most this much of an archive (its JSON documents and tiny members) is held in memory."""
HELD_MEMBERS = 10_000
"""At most this many members are remembered (documents, links, layer blobs): an archive of a
million tiny members must not cost a million dictionary entries."""
MAX_INDEX_DEPTH = 8
"""OCI indexes nest (an index of indexes); deeper than this is no image anyone made."""
_META_NAMES = {"manifest.json", "index.json", "oci-layout", "repositories"}
_CHUNK = 1 << 20

Progress = Callable[[dict[str, Any]], None]


def _noop(_: dict[str, Any]) -> None:
    pass


class _CountingReader:
    """The bytes of one archive member, hashed (the blob digest) and counted for progress."""

    def __init__(self, raw: BinaryIO, total: int, report: Callable[[int, int], None]) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()
        self.done = 0
        self.total = total
        self._report = report
        self._last = 0.0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.hash.update(data)
        self.done += len(data)
        now = time.monotonic()
        if now - self._last > 0.1 or self.done >= self.total:
            self._last = now
            self._report(self.done, self.total)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


@dataclass
class LoadResult:
    """What a load made: ``(image, tags)`` per image, in the archive's order."""

    images: list[tuple[Image, list[str]]] = field(default_factory=list)

    def messages(self) -> list[str]:
        """``docker load``'s lines: ``Loaded image: name:tag`` or ``Loaded image ID: sha256:…``."""
        out = []
        for image, tags in self.images:
            if tags:
                out.extend(f"Loaded image: {t}" for t in tags)
            else:
                out.append(f"Loaded image ID: {image.id}")
        return out


class _Loader:
    def __init__(self, layers: LayerStore, images: ImageStore, progress: Progress) -> None:
        self.layers = layers
        self.images = images
        self.progress = progress
        self.small: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.blob_layers: dict[str, str] = {}     # member name → diff id
        self.bad: dict[str, str] = {}             # member name → why it is not a layer
        self.new_layers: list[str] = []
        self.held_bytes = 0
        # Every layer this load registers or finds is referenced by it until its images exist,
        # so a concurrent load of the same layers that fails cannot remove them meanwhile.
        self.owner = f"load:{uuid.uuid4().hex}"

    # -- reading the stream ------------------------------------------------------------------

    def read(self, stream: BinaryIO) -> None:
        before = {l.diff_id for l in self.layers.list()}
        try:
            tar = tarfile.open(fileobj=stream, mode="r|*")   # type: ignore[call-overload]
        except tarfile.TarError as e:
            raise InvalidArgument(f"invalid archive: {e}", operation="storage::Archive::Load",
                                  cause=e) from e
        try:
            for member in tar:
                tar.members = []   # a streamed tar need not remember every header it read
                name = _clean(member.name)
                if member.issym() or member.islnk():
                    self._count(name)
                    base = posixpath.dirname(name) if member.issym() else ""
                    self.links[name] = _clean(posixpath.join(base, member.linkname))
                    continue
                if not member.isreg():
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                self._count(name)
                if member.size <= SMALL_BLOB and (self._is_meta(name) or member.size < 64):
                    self._hold(name, src.read())
                    continue
                head = src.read(1) if member.size else b""
                if head == b"{" and member.size <= SMALL_BLOB:
                    self._hold(name, head + src.read())
                    continue
                self._layer_blob(name, member.size, _Prefixed(head, src))
                for d in self.blob_layers.values():
                    if d not in before and d not in self.new_layers:
                        self.new_layers.append(d)
        except (tarfile.TarError, EOFError, ValueError) as e:
            raise InvalidArgument(f"invalid archive: {e}", operation="storage::Archive::Load",
                                  cause=e) from e
        except OSError as e:
            if e.errno is None:   # a corrupt compressed archive
                raise InvalidArgument(f"invalid archive: {e}",
                                      operation="storage::Archive::Load", cause=e) from e
            raise

    def _count(self, name: str) -> None:
        """Refuse an archive with more members than a load remembers (see HELD_MEMBERS)."""
        if len(self.small) + len(self.links) + len(self.blob_layers) + len(self.bad) \
                >= HELD_MEMBERS and name not in self.small and name not in self.links:
            raise InvalidArgument(f"invalid archive: more than {HELD_MEMBERS} members: not an "
                                  "image archive", operation="storage::Archive::Load")

    def _hold(self, name: str, data: bytes) -> None:
        """Keep a small member in memory, within HELD_BYTES for the whole archive."""
        self.held_bytes += len(data) - len(self.small.get(name, b""))
        if self.held_bytes > HELD_BYTES:
            raise InvalidArgument(f"invalid archive: its documents exceed {HELD_BYTES >> 20} MiB: "
                                  "not an image archive", operation="storage::Archive::Load")
        self.small[name] = data

    @staticmethod
    def _is_meta(name: str) -> bool:
        return name in _META_NAMES or name.endswith((".json", "/json", "/VERSION"))

    def _layer_blob(self, name: str, size: int, src: BinaryIO) -> None:
        short = posixpath.basename(name)[:12] if name.startswith("blobs/") \
            else name.split("/")[0][:12]

        def report(done: int, total: int) -> None:
            self.progress({"status": "Loading layer", "id": short,
                           "progressDetail": {"current": done, "total": total}})

        reader = _CountingReader(src, size, report)
        try:
            layer = self.layers.add_from_tar(reader, owner=self.owner)  # type: ignore[arg-type]
        except InvalidArgument as e:
            self.bad[name] = e.message
            return
        reader.drain()
        digest = reader.hash.hexdigest()
        if name.startswith("blobs/sha256/") and posixpath.basename(name) != digest:
            self.blob_layers[name] = layer.diff_id
            self.bad[name] = (f"blob {name} has digest sha256:{digest}, not the one its name "
                              "says: the archive is corrupt")
            return
        self.blob_layers[name] = layer.diff_id

    # -- building images ---------------------------------------------------------------------

    def _resolve(self, name: str) -> str:
        seen = 0
        name = _clean(name)
        while name in self.links and seen < 40:
            name, seen = self.links[name], seen + 1
        return name

    def _json(self, name: str, digest: str | None = None) -> tuple[bytes, Any]:
        name = self._resolve(name)
        raw = self.small.get(name)
        if raw is None:
            raise InvalidArgument(f"invalid archive: {name} is missing",
                                  operation="storage::Archive::Load", object_id=name)
        if digest is not None and "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
            raise InvalidArgument(f"invalid archive: {name} does not match its digest {digest}",
                                  operation="storage::Archive::Load", object_id=name)
        try:
            return raw, jsonlimits.loads(raw)
        except ValueError as e:
            raise InvalidArgument(f"invalid archive: {name}: {e}",
                                  operation="storage::Archive::Load", cause=e) from e

    def _diff_id(self, name: str) -> str:
        name = self._resolve(name)
        if name in self.bad:
            raise InvalidArgument(f"invalid archive: layer {name}: {self.bad[name]}",
                                  operation="storage::Archive::Load", object_id=name)
        if name not in self.blob_layers:
            if name in self.small:   # a tiny layer kept in memory (an empty tar is 1 KiB)
                import io
                self._layer_blob(name, len(self.small[name]), io.BytesIO(self.small[name]))
                return self._diff_id(name)
            raise InvalidArgument(f"invalid archive: layer {name} is missing",
                                  operation="storage::Archive::Load", object_id=name)
        return self.blob_layers[name]

    def build(self) -> LoadResult:
        if "manifest.json" in self.small:
            items = self._docker_items()
        elif "index.json" in self.small:
            items = self._oci_items()
        else:
            raise InvalidArgument("invalid archive: it holds neither manifest.json "
                                  "(docker save) nor index.json (OCI image layout)",
                                  operation="storage::Archive::Load")
        result = LoadResult()
        prepared = []
        for raw, config, diff_ids, tags in items:
            rootfs = _object(config, "image config").get("rootfs") or {}
            wanted = [normalize_diff_id(_text(d, "rootfs.diff_ids[]")) for d in
                      _array(_object(rootfs, "rootfs").get("diff_ids") or [], "diff_ids")]
            if wanted != diff_ids:
                raise InvalidArgument("invalid archive: the layers do not match the image "
                                      f"config's rootfs.diff_ids ({len(diff_ids)} layers, "
                                      f"{len(wanted)} diff ids)",
                                      operation="storage::Archive::Load")
            prepared.append((raw, diff_ids, tags))
        for raw, diff_ids, tags in prepared:
            parent = None
            for d in diff_ids:
                if d in self.new_layers:
                    self.layers.set_parent(d, parent)
                parent = d
            image = self.images.import_config(raw, tags)
            for known, known_tags in result.images:   # one image under several index entries
                if known.id == image.id:
                    known_tags.extend(t for t in tags if t not in known_tags)
                    break
            else:
                result.images.append((image, list(tags)))
        return result

    def _docker_items(self) -> list[tuple[bytes, Any, list[str], list[str]]]:
        _, manifest = self._json("manifest.json")
        if not isinstance(manifest, list):
            raise InvalidArgument("invalid archive: manifest.json is not a list",
                                  operation="storage::Archive::Load")
        items = []
        for entry in manifest:
            entry = _object(entry, "manifest.json entry")
            raw, config = self._json(_text(entry.get("Config") or "", "Config"))
            diff_ids = [self._diff_id(_text(p, "Layers[]"))
                        for p in _array(entry.get("Layers") or [], "Layers")]
            tags = [_valid_tag(_text(t, "RepoTags[]"))
                    for t in _array(entry.get("RepoTags") or [], "RepoTags")]
            items.append((raw, config, diff_ids, [t for t in tags if t]))
        return items

    def _oci_items(self) -> list[tuple[bytes, Any, list[str], list[str]]]:
        _, index = self._json("index.json")
        items: list[tuple[bytes, Any, list[str], list[str]]] = []
        for desc in _array(_object(index, "index.json").get("manifests") or [], "manifests"):
            desc = _object(desc, "index.json manifests[]")
            self._oci_descriptor(desc, _oci_tags(desc), items, top=True)
        return items

    def _oci_descriptor(self, desc: dict[str, Any], tags: list[str],
                        items: list[tuple[bytes, Any, list[str], list[str]]], top: bool,
                        depth: int = 0) -> None:
        if depth > MAX_INDEX_DEPTH:
            raise InvalidArgument(f"invalid archive: indexes nest more than {MAX_INDEX_DEPTH} "
                                  "levels deep", operation="storage::Archive::Load")
        digest = _text(desc.get("digest") or "", "digest")
        _, doc = self._json(_blob_name(digest), digest)
        doc = _object(doc, f"blob {digest}")
        media = desc.get("mediaType") or doc.get("mediaType") or ""
        if media in (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST) or "manifests" in doc:
            children = [_object(c, "manifests[]")
                        for c in _array(doc.get("manifests") or [], "manifests")]
            here = [c for c in children if _platform_matches(c.get("platform"))]
            for child in here[:1] or children[:1]:
                self._oci_descriptor(child, tags, items, top=False, depth=depth + 1)
            return
        config_desc = _object(doc.get("config") or {}, "config")
        cdigest = _text(config_desc.get("digest") or "", "config.digest")
        raw, config = self._json(_blob_name(cdigest), cdigest)
        diff_ids = [self._diff_id(_blob_name(_text(_object(l, "layers[]").get("digest") or "",
                                                   "layers[].digest")))
                    for l in _array(doc.get("layers") or [], "layers")]
        items.append((raw, config, diff_ids, tags))

    def release_new(self) -> None:
        """Give back the layers this load stored that no image uses (after a failure)."""
        for d in reversed(self.new_layers):
            try:
                self.layers.release(d)
            except SiloboxError:
                pass


def load(stream: BinaryIO, layers: LayerStore, images: ImageStore,
         progress: Progress = _noop) -> LoadResult:
    """``docker load``: read a docker-archive or OCI layout archive (plain or compressed)."""
    loader = _Loader(layers, images, progress)
    try:
        loader.read(stream)
        return loader.build()
    finally:
        layers.unhold(loader.owner)
        loader.release_new()   # after a failure, or layers of blobs nothing referenced


# -- save --------------------------------------------------------------------------------------


def _member(name: str, size: int, mtime: int = 0) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = mtime
    return info.tobuf(tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return bytes((512 - size % 512) % 512)


def _file(name: str, data: bytes) -> bytes:
    return _member(name, len(data)) + data + _padding(len(data))


def _dir(name: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info.tobuf(tarfile.PAX_FORMAT)


def plan_save(names: list[str], images: ImageStore) -> list[tuple[Image, list[str]]]:
    """The images to save and the tags to record for each (resolving every name first, so a
    wrong name fails before any byte is sent). A name given by id records no tag."""
    plan: dict[str, tuple[Image, list[str]]] = {}
    for name in names:
        image = images.resolve(name)
        entry = plan.setdefault(image.id, (image, []))
        hex_id = name.removeprefix("sha256:")
        if image.id.removeprefix("sha256:").startswith(hex_id):
            continue
        try:
            ref = reference.parse_tagged(name)
        except InvalidArgument:
            continue
        if ref.tag and ref.familiar() not in entry[1]:
            entry[1].append(ref.familiar())
    return list(plan.values())


def save(plan: list[tuple[Image, list[str]]], images: ImageStore, layers: LayerStore,
         oci_only: bool = False, progress: Progress = _noop) -> Iterator[bytes]:
    """``docker save``: the archive as chunks. ``oci_only`` leaves out Docker's manifest.json
    and repositories (a pure OCI image layout)."""
    sizes: dict[str, int] = {}
    for image, _ in plan:
        for diff_id in image.diff_ids:
            if diff_id not in sizes:
                size = layers.tar_size(diff_id)
                if size is None:
                    raise SystemFailure(f"layer {diff_id} cannot be exported byte for byte (it "
                                        "was stored without its tar record)",
                                        operation="storage::Archive::Save", object_id=diff_id)
                sizes[diff_id] = size
    yield _dir("blobs/")
    yield _dir("blobs/sha256/")
    written: set[str] = set()
    index: list[dict[str, Any]] = []
    docker_manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    for image, tags in plan:
        for pos, diff_id in enumerate(image.diff_ids):
            if diff_id in written:
                continue
            written.add(diff_id)
            hex_id = diff_id.removeprefix("sha256:")
            size = sizes[diff_id]
            yield _member(f"blobs/sha256/{hex_id}", size)
            done = 0
            last = 0.0
            for chunk in layers.export_layer(diff_id):
                done += len(chunk)
                yield chunk
                now = time.monotonic()
                if now - last > 0.1 or done == size:
                    last = now
                    progress({"status": "Saving layer", "id": hex_id[:12],
                              "progressDetail": {"current": done, "total": size}})
            if done != size:
                raise SystemFailure(f"layer {diff_id} changed size while it was saved",
                                    operation="storage::Archive::Save", object_id=diff_id)
            yield _padding(size)
        raw = images.raw_config(image.id)
        config_hex = image.id.removeprefix("sha256:")
        if image.id not in written:
            written.add(image.id)
            yield _file(f"blobs/sha256/{config_hex}", raw)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": image.id, "size": len(raw)},
            "layers": [{"mediaType": MEDIA_OCI_LAYER, "digest": d, "size": sizes[d]}
                       for d in image.diff_ids],
        }, separators=(",", ":")).encode()
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        if manifest_digest not in written:
            written.add(manifest_digest)
            yield _file(f"blobs/sha256/{manifest_digest.removeprefix('sha256:')}", manifest)
        descriptor = {"mediaType": MEDIA_OCI_MANIFEST, "digest": manifest_digest,
                      "size": len(manifest)}
        if tags:
            for tag in tags:
                ref = reference.parse_tagged(tag)
                index.append({**descriptor, "annotations": {
                    ANNOTATION_IMAGE_NAME: str(ref), ANNOTATION_REF_NAME: ref.tag or "latest"}})
                repositories.setdefault(ref.familiar_name, {})[ref.tag or "latest"] = config_hex
        else:
            index.append(descriptor)
        docker_manifest.append({"Config": f"blobs/sha256/{config_hex}",
                                "RepoTags": tags or None,
                                "Layers": [f"blobs/sha256/{d.removeprefix('sha256:')}"
                                           for d in image.diff_ids]})
    yield _file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    yield _file("index.json", json.dumps({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
                                          "manifests": index}, separators=(",", ":")).encode())
    if not oci_only:
        yield _file("manifest.json", json.dumps(docker_manifest, separators=(",", ":")).encode())
        if repositories:
            yield _file("repositories", json.dumps(repositories,
                                                   separators=(",", ":")).encode())
    yield bytes(1024 * 10)


# -- helpers -----------------------------------------------------------------------------------


class _Prefixed:
    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self._head = head
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._raw.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._raw.read(size)


def _object(value: Any, what: str) -> dict[str, Any]:
    """A document's part that must be a JSON object (a 400 naming it otherwise, never a 500)."""
    if not isinstance(value, dict):
        raise InvalidArgument(f"invalid archive: {what} is not a JSON object",
                              operation="storage::Archive::Load")
    return value


def _array(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidArgument(f"invalid archive: {what} is not a JSON array",
                              operation="storage::Archive::Load")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"invalid archive: {what} is not a string",
                              operation="storage::Archive::Load")
    return value


def _clean(name: str) -> str:
    """A member or link path inside the archive; ``..`` may not climb out of it."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise InvalidArgument(f"invalid archive: {name}: path escapes the archive",
                                      operation="storage::Archive::Load", object_id=name)
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def _blob_name(digest: str) -> str:
    algo, _, hex_part = digest.partition(":")
    if algo != "sha256" or len(hex_part) != 64:
        raise InvalidArgument(f"invalid archive: unsupported digest {digest!r}",
                              operation="storage::Archive::Load", object_id=digest)
    return f"blobs/sha256/{hex_part}"


def _valid_tag(text: str) -> str | None:
    try:
        ref = reference.parse_tagged(text)
    except InvalidArgument:
        return None
    return ref.familiar() if ref.digest is None else None


def _oci_tags(desc: dict[str, Any]) -> list[str]:
    """The name an index entry carries: containerd's full image name, else a ref.name that is a
    whole reference (a bare tag such as ``latest`` names no repository, so it is not a tag)."""
    notes = _object(desc.get("annotations") or {}, "annotations")
    for key in (ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME):
        value = _text(notes.get(key) or "", key)
        if key == ANNOTATION_REF_NAME and not any(c in value for c in ":/"):
            continue
        tag = _valid_tag(value) if value else None
        if tag:
            return [tag]
    return []


def _platform_matches(platform: Any) -> bool:
    if not platform or not isinstance(platform, dict):
        return False
    return platform.get("os") == "linux" and platform.get("architecture") == host_architecture()


__all__ = ["LoadResult", "load", "plan_save", "save"]
