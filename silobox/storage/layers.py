"""The read-only layer store, the Linux counterpart of windowsfilter's layer folders.

Windows keeps each image layer as ``windowsfilter\\<id>\\{Files, layerchain.json}`` and imports
it with wclayer ``ImportLayer``. Here each layer is ``<root>/layers/<hex diff id>/`` holding
``diff/`` (the extracted tree, usable directly as an overlay ``lowerdir``), ``layerchain.json``
(its parent layer folders, nearest first, base last, as windowsfilter writes it) and
``meta.json``. Layers are content addressed by their diff id (sha256 of the uncompressed tar), so
importing the same tar twice stores it once. OCI whiteouts become overlay whiteouts as they are
extracted, so mounting needs no conversion step.

The ``diff/`` tree does not depend on the parent, so one stored layer can sit under different
parents in different images; ``parent`` and ``layerchain.json`` record the chain it was first
imported with, while an image's own ``rootfs.diff_ids`` decides its mount order.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import json
import lzma
import os
import stat
import tarfile
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from silobox.atomic import atomic_write_json
from silobox.errors import Conflict, InvalidArgument, NotFound, SystemFailure
from silobox.kernel.saferoot import SafeRoot, chmod_at, link_at, make_dir_at, remove_at, setxattr_at
from silobox.storage.db import Database

SCHEMA_COMPONENT = "storage.layers"
SCHEMA: list[str] = [
    """
    CREATE TABLE layers (
        diff_id  TEXT PRIMARY KEY,          -- sha256:<hex> of the uncompressed tar
        chain_id TEXT NOT NULL,             -- OCI chain id under the recorded parent
        parent   TEXT,                      -- diff id of the parent it was imported under
        size     INTEGER NOT NULL,          -- bytes of regular file content in diff/
        created  TEXT NOT NULL
    );
    """,
    # References on layers by what is not an image: a container (its layers stay while it
    # exists, even once ``rmi -f`` deleted its image) and an import, load or commit in
    # progress (what it registered or found stays until it made its image or gave up).
    """
    CREATE TABLE layer_refs (
        owner   TEXT NOT NULL,              -- container:<id>, load:<uuid>, import:<uuid>, ...
        diff_id TEXT NOT NULL REFERENCES layers(diff_id),
        PRIMARY KEY (owner, diff_id)
    );
    CREATE INDEX layer_refs_by_diff ON layer_refs(diff_id);
    """,
]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_COPY_CHUNK = 1 << 20
TAR_SPLIT_RAW = "tar-split.raw"     # the layer tar with file contents left as holes (sparse)
TAR_SPLIT_INDEX = "tar-split.json"  # where those contents are: [[offset, size, path], ...]

# Namespace of layer GUIDs (HCS names layers by a GUID derived from the folder name, NameToGuid).
LAYER_GUID_NAMESPACE = uuid.UUID("0905ac57-030b-4f70-88f9-5ac4142019c9")

_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Layer:
    """One stored layer. ``path`` is the ``diff/`` tree, the directory given to overlay."""

    diff_id: str
    chain_id: str
    parent: str | None
    size: int
    path: str

    @property
    def folder(self) -> str:
        """The layer folder (``windowsfilter\\<id>``): ``diff/``, ``layerchain.json``, meta."""
        return os.path.dirname(self.path)

    @property
    def guid(self) -> str:
        """The layer's id in an HCS document (``Storage.Layers[].Id``), stable per folder name."""
        return str(uuid.uuid5(LAYER_GUID_NAMESPACE, os.path.basename(self.folder)))


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain ids for a stack of diff ids, base first.

    ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
    """
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            digest = hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest()
            out.append(f"sha256:{digest}")
    return out


def normalize_diff_id(diff_id: str) -> str:
    """Accept ``sha256:<hex>`` or bare ``<hex>``; return ``sha256:<hex>``."""
    hex_part = diff_id.removeprefix("sha256:")
    if len(hex_part) != 64 or any(c not in "0123456789abcdef" for c in hex_part):
        raise InvalidArgument(f"invalid layer diff id {diff_id!r}: expected sha256:<64 hex digits>",
                              operation="storage::Layer", object_id=diff_id)
    return f"sha256:{hex_part}"


class LayerStore:
    """Layers under ``<root>/layers``, their metadata in the ``layers`` table."""

    def __init__(self, root: str, db: Database) -> None:
        self.root = os.path.abspath(root)
        self.dir = os.path.join(self.root, "layers")
        self.db = db
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        db.migrate(SCHEMA_COMPONENT, SCHEMA)

    # -- queries -------------------------------------------------------------------------------

    def folder(self, diff_id: str) -> str:
        """Where the layer with ``diff_id`` lives (whether or not it exists)."""
        return os.path.join(self.dir, normalize_diff_id(diff_id).removeprefix("sha256:"))

    def exists(self, diff_id: str) -> bool:
        """True if the layer is recorded and its folder is present."""
        diff_id = normalize_diff_id(diff_id)
        row = self.db.query_one("SELECT 1 FROM layers WHERE diff_id = ?", (diff_id,))
        return row is not None and os.path.isdir(os.path.join(self.folder(diff_id), "diff"))

    def get(self, diff_id: str) -> Layer:
        """The stored layer with ``diff_id``; NotFound if there is none."""
        diff_id = normalize_diff_id(diff_id)
        row = self.db.query_one("SELECT * FROM layers WHERE diff_id = ?", (diff_id,))
        if row is None:
            raise NotFound(f"No such layer: {diff_id}", operation="storage::Layer::Get",
                           object_id=diff_id)
        return self._layer(row)

    def list(self) -> list[Layer]:
        """Every stored layer, oldest first."""
        return [self._layer(r) for r in self.db.query("SELECT * FROM layers ORDER BY created")]

    def chain(self, diff_id: str) -> list[Layer]:
        """The layer and its recorded parents, nearest first, base last."""
        out = [self.get(diff_id)]
        while out[-1].parent is not None:
            if len(out) > 1000:
                raise SystemFailure(f"layer chain of {diff_id} does not end",
                                    operation="storage::Layer::Chain", object_id=diff_id)
            out.append(self.get(out[-1].parent))
        return out

    # -- import --------------------------------------------------------------------------------

    def add_from_tar(self, stream: BinaryIO, parent: str | None = None,
                     owner: str | None = None) -> Layer:
        """Import a layer tar (plain, gzip, bzip2 or xz) on top of ``parent`` (wclayer ImportLayer).

        The tar is hashed while it is extracted into a temporary folder under ``layers/``; the
        folder is renamed into place only when the whole tar was valid, so a rejected tar leaves
        nothing behind. If the same diff id is stored already, the new copy is discarded.

        With ``owner``, the layer is referenced by it (see :meth:`hold`) in the same transaction
        that finds or registers it: a concurrent operation that fails and releases the layers
        it brought cannot remove this one before ``owner`` made its image.
        """
        parent_layers = self.chain(parent) if parent is not None else []
        tmp = os.path.join(self.dir, f"tmp-{uuid.uuid4().hex}")
        doomed = ""
        try:
            os.mkdir(tmp, 0o700)
            diff_id, size = _extract_stream(stream, os.path.join(tmp, "diff"),
                                            os.path.join(tmp, TAR_SPLIT_RAW))
            parent_id = parent_layers[0].diff_id if parent_layers else None
            with self.db.tx():
                if self._stored(diff_id, owner):
                    return self._with_parent(self.get(diff_id), parent_layers)
            chain_id = chain_ids([*(l.diff_id for l in reversed(parent_layers)), diff_id])[-1]
            layer = Layer(diff_id, chain_id, parent_id, size,
                          os.path.join(self.folder(diff_id), "diff"))
            atomic_write_json(os.path.join(tmp, "layerchain.json"),
                              [l.folder for l in parent_layers])
            atomic_write_json(os.path.join(tmp, "meta.json"),
                              {"diff_id": diff_id, "chain_id": chain_id, "parent": parent_id,
                               "size": size})
            with self.db.tx():
                if not self._stored(diff_id, owner):   # else a concurrent import won the race
                    doomed = self._install(tmp, layer, owner)
            return self._with_parent(self.get(diff_id), parent_layers)
        except OSError as e:
            raise SystemFailure(f"cannot import layer: {e}", operation="storage::Layer::Import",
                                cause=e) from e
        finally:
            _remove_tree(tmp)
            if doomed:
                _remove_tree(doomed)

    def _stored(self, diff_id: str, owner: str | None) -> bool:
        """Inside a transaction: whether the layer is stored whole; if so ``owner`` holds it."""
        if not self.exists(diff_id):
            return False
        if owner:
            self.db.execute("INSERT OR IGNORE INTO layer_refs (owner, diff_id) VALUES (?, ?)",
                            (owner, diff_id))
        return True

    def _install(self, tmp: str, layer: Layer, owner: str | None) -> str:
        """Inside a transaction: rename the finished folder into place and record it (and
        ``owner``'s reference). A folder of that name without a record is a leftover of an
        interrupted import: it is moved aside, and its path returned for deletion."""
        final = layer.folder
        doomed = self._graveyard(final) if os.path.lexists(final) else ""
        os.rename(tmp, final)
        self.db.execute("INSERT OR REPLACE INTO layers (diff_id, chain_id, parent, size, created)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (layer.diff_id, layer.chain_id, layer.parent, layer.size, _now()))
        if owner:
            self.db.execute("INSERT OR IGNORE INTO layer_refs (owner, diff_id) VALUES (?, ?)",
                            (owner, layer.diff_id))
        return doomed

    # -- references ------------------------------------------------------------------------

    def hold(self, owner: str, diff_ids: list[str]) -> None:
        """Reference these layers on behalf of ``owner``: none of them can be removed until
        :meth:`unhold`. NotFound (and nothing held) if one is not stored."""
        with self.db.tx():
            for diff_id in dict.fromkeys(normalize_diff_id(d) for d in diff_ids):
                if not self.exists(diff_id):
                    raise NotFound(f"No such layer: {diff_id}", operation="storage::Layer::Hold",
                                   object_id=diff_id)
                self.db.execute("INSERT OR IGNORE INTO layer_refs (owner, diff_id) "
                                "VALUES (?, ?)", (owner, diff_id))

    def unhold(self, owner: str) -> list[str]:
        """Drop every reference of ``owner``; returns the layers it held (they stay stored:
        :meth:`release` removes the ones nothing uses any more)."""
        with self.db.tx():
            held = [r["diff_id"] for r in self.db.query(
                "SELECT diff_id FROM layer_refs WHERE owner = ?", (owner,))]
            self.db.execute("DELETE FROM layer_refs WHERE owner = ?", (owner,))
        return held

    def holders(self, diff_id: str) -> list[str]:
        return [r["owner"] for r in self.db.query(
            "SELECT owner FROM layer_refs WHERE diff_id = ? ORDER BY owner",
            (normalize_diff_id(diff_id),))]

    def drop_refs_except(self, owners: set[str]) -> list[str]:
        """At start: references of owners that are gone (a killed daemon's loads, containers
        no longer stored) are dropped; returns those owners."""
        rows = {r["owner"] for r in self.db.query("SELECT DISTINCT owner FROM layer_refs")}
        gone = sorted(rows - owners)
        with self.db.tx():
            for owner in gone:
                self.db.execute("DELETE FROM layer_refs WHERE owner = ?", (owner,))
        return gone

    # -- removal -------------------------------------------------------------------------------

    def remove(self, diff_id: str) -> None:
        """Delete a layer (wclayer DestroyLayer); Conflict while an image still uses it or
        another layer was imported on top of it (its ``layerchain.json`` names this one).

        The folder is first renamed to ``rm-<hex>`` inside the transaction that deletes the
        record, so a crash leaves either a whole layer or a folder that is plainly garbage.
        """
        diff_id = normalize_diff_id(diff_id)
        folder = self.folder(diff_id)
        with self.db.tx():
            child = self.db.query_one("SELECT diff_id FROM layers WHERE parent = ? LIMIT 1",
                                      (diff_id,))
            if child is not None:
                raise Conflict(f"conflict: unable to remove layer {diff_id}: it is the parent of "
                               f"layer {child['diff_id']}", operation="storage::Layer::Remove",
                               object_id=diff_id)
            try:
                changed = self.db.execute("DELETE FROM layers WHERE diff_id = ?", (diff_id,))
            except Conflict as e:
                raise Conflict(f"conflict: unable to remove layer {diff_id}: it is used by an "
                               "image, a container or an import in progress",
                               operation="storage::Layer::Remove", object_id=diff_id,
                               cause=e) from e
            if not changed:
                raise NotFound(f"No such layer: {diff_id}", operation="storage::Layer::Remove",
                               object_id=diff_id)
            try:
                doomed = self._graveyard(folder) if os.path.lexists(folder) else ""
            except OSError as e:
                raise SystemFailure(f"cannot remove layer {diff_id}: {e}",
                                    operation="storage::Layer::Remove", object_id=diff_id,
                                    cause=e) from e
        _remove_tree(doomed)

    def release(self, diff_id: str) -> list[Layer]:
        """Remove the layer if nothing uses it any more, then its recorded parents likewise;
        returns the layers removed (none if the layer is still in use or already gone)."""
        removed: list[Layer] = []
        current: str | None = diff_id
        while current is not None:
            try:
                layer = self.get(current)
                self.remove(current)
            except (NotFound, Conflict):
                break
            removed.append(layer)
            current = layer.parent
        return removed

    def _graveyard(self, folder: str) -> str:
        doomed = os.path.join(self.dir, f"rm-{os.path.basename(folder)}-{uuid.uuid4().hex[:8]}")
        os.rename(folder, doomed)
        return doomed

    def set_parent(self, diff_id: str, parent: str | None) -> None:
        """Record the chain a layer sits in when it was stored before its parent was known (an
        archive's blobs arrive before its manifest); only for layers recorded without parent."""
        diff_id = normalize_diff_id(diff_id)
        parents = self.chain(parent) if parent is not None else []
        chain_id = chain_ids([*(l.diff_id for l in reversed(parents)), diff_id])[-1]
        with self.db.tx():
            changed = self.db.execute("UPDATE layers SET parent = ?, chain_id = ? "
                                      "WHERE diff_id = ? AND parent IS NULL AND ? IS NOT NULL",
                                      (parent, chain_id, diff_id, parent))
        if changed:
            atomic_write_json(os.path.join(self.folder(diff_id), "layerchain.json"),
                              [l.folder for l in parents])

    # -- export --------------------------------------------------------------------------------

    def tar_size(self, diff_id: str) -> int | None:
        """Bytes of the layer's original tar, if it can be reproduced exactly (else None)."""
        index = self._split_index(diff_id)
        return None if index is None else int(index["size"])

    def export_layer(self, diff_id: str) -> Iterator[bytes]:
        """The layer's tar, byte for byte the one imported (wclayer ExportLayer).

        The diff id is the sha256 of the tar, so a saved image must carry exactly those bytes.
        At import the tar's headers were kept in a sparse file with holes where file contents
        go; here the holes are filled from ``diff/`` and the result is checked against the diff
        id. A layer without that record (or whose tar repeated a file name, so contents were
        lost) is written fresh from ``diff/`` with whiteouts converted back to OCI form.
        """
        diff_id = normalize_diff_id(diff_id)
        index = self._split_index(diff_id)
        layer = self.get(diff_id)
        if index is None:
            from silobox.storage.changes import tar_overlay_dir
            yield from tar_overlay_dir(layer.path)
            return
        folder = layer.folder
        digest = hashlib.sha256()
        raw = os.open(os.path.join(folder, TAR_SPLIT_RAW), os.O_RDONLY | os.O_CLOEXEC)
        try:
            pos = 0
            for start, size, rel in index["regions"]:
                for chunk in _read_range(raw, pos, start - pos):
                    digest.update(chunk)
                    yield chunk
                for chunk in _read_content(layer.path, rel, size, diff_id):
                    digest.update(chunk)
                    yield chunk
                pos = start + size
            for chunk in _read_range(raw, pos, int(index["size"]) - pos):
                digest.update(chunk)
                yield chunk
        finally:
            os.close(raw)
        if f"sha256:{digest.hexdigest()}" != diff_id:
            raise SystemFailure(f"layer {diff_id} does not reproduce its tar: its files were "
                                "changed on disk", operation="storage::Layer::Export",
                                object_id=diff_id)

    def _split_index(self, diff_id: str) -> dict | None:
        folder = self.folder(diff_id)
        try:
            with open(os.path.join(folder, TAR_SPLIT_INDEX)) as f:
                index = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise SystemFailure(f"cannot read {folder}/{TAR_SPLIT_INDEX}: {e}",
                                operation="storage::Layer::Export", object_id=diff_id,
                                cause=e) from e
        return index if index.get("complete") else None

    # -- consistency ---------------------------------------------------------------------------

    def sweep(self, keep: set[str] | None = None) -> list[str]:
        """Make the store consistent after a crash (windowsfilter's ``Cleanup()`` at start).

        Removes interrupted imports (``tmp-*``) and removals (``rm-*``), folders no record
        names, records whose folder is gone, and recorded layers that no image uses (an
        interrupted load or commit stores layers before its image); ``keep`` are diff ids the
        caller still needs. Images whose layers are missing are deleted first. Runs only while
        nothing else writes the store. Returns what was removed.
        """
        removed: list[str] = []
        keep = {normalize_diff_id(d) for d in keep or set()}
        rows = {r["diff_id"] for r in self.db.query("SELECT diff_id FROM layers")}
        present = {d for d in rows if os.path.isdir(os.path.join(self.folder(d), "diff"))}
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if name.startswith(("tmp-", "rm-")) or f"sha256:{name}" not in present:
                _remove_tree(path)
                removed.append(path)
        has_images = self.db.query_one("SELECT name FROM sqlite_master WHERE type = 'table' "
                                       "AND name = 'image_layers'") is not None
        with self.db.tx():
            if has_images:
                for r in self.db.query("SELECT DISTINCT image_id, diff_id FROM image_layers"):
                    if r["diff_id"] not in present:
                        self.db.execute("DELETE FROM images WHERE id = ?", (r["image_id"],))
                        removed.append(r["image_id"])
            for d in rows - present:
                self.db.execute("DELETE FROM layer_refs WHERE diff_id = ?", (d,))
                self.db.execute("DELETE FROM layers WHERE diff_id = ?", (d,))
                removed.append(d)
        used = set(keep) | {r["diff_id"] for r in self.db.query("SELECT diff_id FROM layer_refs")}
        if has_images:
            used |= {r["diff_id"] for r in self.db.query("SELECT diff_id FROM image_layers")}
        # parents of used layers stay: a chain is removed top down
        for d in list(used):
            try:
                used |= {l.diff_id for l in self.chain(d)}
            except NotFound:
                pass
        for d in sorted(present - used):
            for gone in self.release(d):
                removed.append(gone.diff_id)
        return removed

    # -- helpers -------------------------------------------------------------------------------

    def _layer(self, row: object) -> Layer:
        diff_id = row["diff_id"]   # type: ignore[index]
        return Layer(diff_id, row["chain_id"], row["parent"], row["size"],   # type: ignore[index]
                     os.path.join(self.folder(diff_id), "diff"))

    @staticmethod
    def _with_parent(layer: Layer, parent_layers: list[Layer]) -> Layer:
        """The stored layer seen under the caller's parent (same tree, the caller's chain id)."""
        parent_id = parent_layers[0].diff_id if parent_layers else None
        if parent_id == layer.parent:
            return layer
        chain_id = chain_ids([*(l.diff_id for l in reversed(parent_layers)), layer.diff_id])[-1]
        return Layer(layer.diff_id, chain_id, parent_id, layer.size, layer.path)


# -- the tar stream ----------------------------------------------------------------------------


class ProgressReader:
    """A stream for :meth:`LayerStore.add_from_tar` that reports how many bytes extraction has
    consumed (``report(done)``) every ``every`` bytes and at the end: the progress of a pull's
    "Extracting" and of an import's "Importing" messages."""

    def __init__(self, raw: BinaryIO, report: Callable[[int], None], every: int) -> None:
        self._raw = raw
        self._report = report
        self._every = every
        self.done = 0
        self._next = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.done += len(data)
        if self.done >= self._next or not data:
            self._next = self.done + self._every
            self._report(self.done)
        return data


class _Prefixed:
    """A read-only stream that returns some already-read bytes before the rest of ``raw``."""

    def __init__(self, prefix: bytes, raw: BinaryIO) -> None:
        self._prefix = prefix
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            if size < 0:
                data, self._prefix = self._prefix + self._raw.read(), b""
                return data
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._raw.read(size)


class _HashingReader:
    """Hands the uncompressed tar to tarfile while computing its sha256 (the diff id)."""

    def __init__(self, raw: object) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.total = 0
        self.split: _TarSplit | None = None

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)   # type: ignore[attr-defined]
        self._hash.update(data)
        if self.split is not None and data:
            self.split.feed(self.total, data)
        self.total += len(data)
        return data

    def drain(self) -> None:
        """Read to the end: the diff id covers the tar's trailing blocks and padding too."""
        while self.read(_COPY_CHUNK):
            pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _open_layer_stream(stream: BinaryIO) -> _HashingReader:
    """Detect the compression by magic number and return the uncompressed, hashed stream."""
    head = b""
    while len(head) < 6:
        chunk = stream.read(6 - len(head))
        if not chunk:
            break
        head += chunk
    raw = _Prefixed(head, stream)
    if head.startswith(_GZIP_MAGIC):
        return _HashingReader(gzip.GzipFile(fileobj=raw, mode="rb"))   # type: ignore[arg-type]
    if head.startswith(_BZIP2_MAGIC):
        return _HashingReader(bz2.BZ2File(raw, mode="rb"))   # type: ignore[arg-type]
    if head.startswith(_XZ_MAGIC):
        return _HashingReader(lzma.LZMAFile(raw, mode="rb"))   # type: ignore[arg-type]
    if head.startswith(_ZSTD_MAGIC):
        raise InvalidArgument("invalid layer tar: zstd-compressed layers are not supported; "
                              "decompress the layer first (zstd -d)",
                              operation="storage::Layer::Import")
    return _HashingReader(raw)


class _TarSplit:
    """Keeps the tar's bytes except regular files' contents, at their offsets in a sparse file.

    tarfile reads ahead of the member it hands out, so bytes wait in ``pending`` until the
    member that follows them is known; bytes inside a file's content region are dropped.
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self.pending: list[tuple[int, bytes]] = []
        self.region = (0, 0)
        self.regions: list[list[object]] = []
        self.names: set[str] = set()
        self.dirs: set[str] = set()   # every ancestor of a name: "is anything under X" in O(1)
        self.complete = True

    def feed(self, pos: int, data: bytes) -> None:
        start, end = self.region
        if pos >= start and pos < end:
            if pos + len(data) <= end:
                return
            data, pos = data[end - pos:], end
        self.pending.append((pos, data))

    def content(self, start: int, size: int, rel: str) -> None:
        """A regular file's data region; flushes what precedes it."""
        if rel in self.names:
            self.complete = False
        self.names.add(rel)
        parent = rel.rpartition("/")[0]
        while parent and parent not in self.dirs:
            self.dirs.add(parent)
            parent = parent.rpartition("/")[0]
        self.regions.append([start, size, rel])
        self._flush(start + size, start)
        self.region = (start, start + size)

    def replaced(self, rel: str, tree: bool) -> None:
        """An entry removes or replaces ``rel`` (with ``tree``, what is under it too)."""
        if self.complete and (rel in self.names or (tree and rel in self.dirs)):
            self.complete = False

    def _flush(self, upto: int, skip_from: int) -> None:
        keep: list[tuple[int, bytes]] = []
        for pos, data in self.pending:
            end = pos + len(data)
            head_end = min(end, skip_from)
            if head_end > pos:
                os.pwrite(self.fd, data[:head_end - pos], pos)
            if end > upto:
                tail_from = max(pos, upto)
                keep.append((tail_from, data[tail_from - pos:]))
        self.pending = keep

    def finish(self, total: int) -> dict[str, object]:
        self._flush(total, total)
        os.ftruncate(self.fd, total)
        return {"size": total, "complete": self.complete, "regions": self.regions}

    def close(self) -> None:
        os.close(self.fd)


def _extract_stream(stream: BinaryIO, diff_dir: str,
                    split_path: str | None = None) -> tuple[str, int]:
    """Extract the layer tar into ``diff_dir``; returns its diff id and content size.

    With ``split_path`` the tar's headers are kept there (see :class:`_TarSplit`) and the index
    next to it, so :meth:`LayerStore.export_layer` can give back the identical tar.
    """
    os.mkdir(diff_dir)
    os.chmod(diff_dir, 0o755)   # whatever the daemon's umask: containers run as any user
    reader = _open_layer_stream(stream)
    split = _TarSplit(split_path) if split_path else None
    reader.split = split
    try:
        try:
            with SafeRoot(diff_dir) as tree:
                size = _extract(reader, tree, split)
        except tarfile.ReadError:
            if reader.total:
                raise
            size = 0   # an empty stream is an empty layer, as Docker reads it
        reader.drain()
        if split is not None:
            index = split.finish(reader.total)
            atomic_write_json(os.path.join(os.path.dirname(split_path or ""), TAR_SPLIT_INDEX),
                              index)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, ValueError,
            OverflowError) as e:
        raise InvalidArgument(f"invalid layer tar: {e}", operation="storage::Layer::Import",
                              cause=e) from e
    except OSError as e:
        if e.errno is None:   # decompressors report corrupt data as OSError without errno
            raise InvalidArgument(f"invalid layer tar: {e}", operation="storage::Layer::Import",
                                  cause=e) from e
        raise
    finally:
        if split is not None:
            split.close()
    return f"sha256:{reader.hexdigest()}", size


# -- extraction --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractOptions:
    """How ``docker cp`` into a container extracts (moby's ``TarOptions``).

    ``no_overwrite_dir_non_dir``: an existing directory is never replaced by a non-directory
    nor the reverse (the entry is refused with moby's message, naming paths as ``shown_dest``
    plus the entry's name). ``owner``: (uid, gid) every entry is given instead of the tar's
    (moby's ``ChownOpts``, from ``copyUIDGID`` and the container's user). ``whiteouts``:
    OCI whiteouts become overlay's (a layer); without it they are written as the plain files
    they are, as ``docker cp`` does."""

    no_overwrite_dir_non_dir: bool = False
    owner: tuple[int, int] | None = None
    shown_dest: str = ""
    whiteouts: bool = True


class OverwriteRefused(Exception):
    """An entry would replace a directory by a non-directory or the reverse."""


def _check_overwrite(st: os.stat_result | None, member: tarfile.TarInfo,
                     options: ExtractOptions) -> None:
    if not options.no_overwrite_dir_non_dir or st is None:
        return
    is_dir = stat.S_ISDIR(st.st_mode)
    shown = "/" + os.path.normpath(os.path.join(options.shown_dest, member.name)).lstrip("/")
    if is_dir and not member.isdir():
        raise OverwriteRefused(f"cannot overwrite directory {_go_quote(shown)} with "
                               f"non-directory {_go_quote(options.shown_dest)}")
    if not is_dir and member.isdir():
        raise OverwriteRefused(f"cannot overwrite non-directory {_go_quote(shown)} with "
                               f"directory {_go_quote(options.shown_dest)}")


def _go_quote(text: str) -> str:
    """Go's ``%q`` for the paths in moby's messages."""
    return json.dumps(text, ensure_ascii=False)


def _invalid(name: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid layer tar: {name}: {why}",
                           operation="storage::Layer::Import", object_id=name)


def extract(stream: BinaryIO, tree: SafeRoot, options: ExtractOptions | None = None) -> int:
    """Apply a plain tar to the directory ``tree`` (``docker cp`` into a container); returns
    the bytes of file content written. The whole stream is read."""
    reader = _HashingReader(stream)
    size = _extract(reader, tree, options=options)
    reader.drain()
    return size


def _extract(reader: _HashingReader, tree: SafeRoot, split: _TarSplit | None = None,
             options: ExtractOptions | None = None) -> int:
    """Apply every member of the tar to ``tree``; returns the bytes of file content written.

    Written for untrusted input, and safe by construction rather than by checks on names:
    every parent directory is opened inside ``tree`` by openat2 with RESOLVE_IN_ROOT and
    RESOLVE_NO_SYMLINKS (an entry is never written through a symlink, whatever earlier members
    or a running container did to the tree), the entry is made with a ``*at`` call on (that
    fd, its name) that does not follow, and its metadata is set through its own fd. Hard links
    must name an entry of ``tree`` reached without symlinks. Absolute names and ``..`` are
    refused outright. Ownership, modes (setuid included), xattrs (but overlay's own), device
    numbers and mtimes are kept as they are in the tar.
    """
    return _Extractor(tree, split, options or ExtractOptions()).run(reader)


class _Extractor:
    """One tar applied to one tree (see :func:`_extract`)."""

    def __init__(self, tree: SafeRoot, split: _TarSplit | None, options: ExtractOptions) -> None:
        self.tree = tree
        self.split = split
        self.options = options
        self.size = 0
        self.dir_times: list[tuple[str, int]] = []
        # The fd of the directory the previous member went to (tars list a directory's entries
        # together), reused only for a member with the same parent. Members only ever remove
        # entries of their own parent, so it never names a directory the tar took away; and
        # being an fd, not a path, it could never lead out of the tree anyway.
        self._last: tuple[str, int] | None = None

    def run(self, reader: _HashingReader) -> int:
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:   # type: ignore[call-overload]
                for member in _members(tar, reader):
                    try:
                        self._member(tar, member)
                    except OSError as e:
                        if e.errno not in _MEMBER_ERRORS:
                            raise
                        raise _invalid(member.name, e.strerror or str(e)) from e
        finally:
            self._forget()
        # Creating entries changes a directory's mtime, so directory times are set last.
        for rel, mtime in reversed(self.dir_times):
            self._dir_time(rel, mtime)
        return self.size

    # -- directories -----------------------------------------------------------------------

    def _forget(self) -> None:
        if self._last is not None:
            os.close(self._last[1])
            self._last = None

    def _parent(self, parts: list[str], member: tarfile.TarInfo) -> int:
        """The directory fd a member goes in (not to be closed by the caller), created (0755,
        as Docker) if the tar did not list it first; never reached through a symlink."""
        rel = "/".join(parts)
        if self._last is not None and self._last[0] == rel:
            return self._last[1]
        self._forget()
        try:
            fd = self.tree.open_dir(rel, create=True, mode=0o755, symlinks=False)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _invalid(member.name, f"{rel} is a symlink and an entry is written "
                                            "through it") from None
            if e.errno in (errno.ENOTDIR, errno.EEXIST):
                raise _invalid(member.name, f"{rel} is not a directory") from None
            raise
        self._last = (rel, fd)
        return fd

    def _dir_time(self, rel: str, mtime: int) -> None:
        try:
            fd = self.tree.open(rel, _DIR_READ | os.O_NOFOLLOW, symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return   # a later member removed or replaced it
            raise
        try:
            os.utime(fd, ns=(mtime * 10**9, mtime * 10**9))
        finally:
            os.close(fd)

    @staticmethod
    def _remove(pfd: int, name: str) -> None:
        """Remove entry ``name`` of ``pfd`` (a directory with all below it). The remembered
        directory is always ``pfd`` itself, the parent of what goes, so it stays valid."""
        remove_at(pfd, name)

    # -- members ---------------------------------------------------------------------------

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _clean_name(member.name)
        if not parts:   # "./": the tree's root directory itself
            fd = self.tree.open("", _DIR_READ)
            try:
                _metadata_fd(fd, member, self.options.owner, times=False)
            finally:
                os.close(fd)
            self.dir_times.append(("", int(member.mtime)))
            return
        base = parts[-1]
        parent_rel = "/".join(parts[:-1])
        rel = f"{parent_rel}/{base}" if parent_rel else base
        pfd = self._parent(parts[:-1], member)
        if base.startswith(WHITEOUT_PREFIX) and self.options.whiteouts:
            self._whiteout(pfd, parent_rel, base, member.name)
            return
        st = _lstat_at(pfd, base)
        if self.split is not None and st is not None:
            is_dir = stat.S_ISDIR(st.st_mode)
            if not (is_dir and member.isdir()):
                self.split.replaced(rel, is_dir)
        _check_overwrite(st, member, self.options)
        owner = self.options.owner
        if member.isdir():
            if st is not None and not stat.S_ISDIR(st.st_mode):
                self._remove(pfd, base)
            fd = make_dir_at(pfd, base, 0o700)
            try:
                _metadata_fd(fd, member, owner, times=False)
            finally:
                os.close(fd)
            self.dir_times.append((rel, int(member.mtime)))
            return
        if st is not None:
            self._remove(pfd, base)
        if member.isreg():
            if self.split is not None:
                if member.issparse():
                    self.split.complete = False
                if member.size:
                    self.split.content(member.offset_data, member.size, rel)
            fd = os.open(base, _NEW_FILE, 0o600, dir_fd=pfd)
            try:
                self.size += _write_file(tar, member, fd)
                _metadata_fd(fd, member, owner, times=True)
            finally:
                os.close(fd)
            return
        if member.islnk():
            self._hard_link(member, pfd, base)
            return   # a hard link shares its inode's metadata
        if member.issym():
            os.symlink(member.linkname, base, dir_fd=pfd)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor),
                     dir_fd=pfd)
        elif member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=pfd)
        else:
            raise _invalid(member.name, f"unsupported entry type {member.type!r}")
        _metadata_at(pfd, base, member, owner)

    def _hard_link(self, member: tarfile.TarInfo, pfd: int, base: str) -> None:
        """A hard link's source is an existing non-directory of this tree, reached without a
        symlink: never a file of the host or of another tree."""
        parts = _clean_link(member)
        missing = _invalid(member.name, f"hard link target {member.linkname} is not in the "
                                        "layer")
        try:
            spfd = self.tree.open_dir("/".join(parts[:-1]), symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise missing from None
            raise
        try:
            link_at(spfd, parts[-1], pfd, base)
        except FileNotFoundError:
            raise missing from None
        except IsADirectoryError:
            raise _invalid(member.name, "hard link to a directory") from None
        except OSError as e:
            if e.errno == errno.EXDEV:
                raise missing from None
            raise
        finally:
            os.close(spfd)

    def _whiteout(self, pfd: int, parent_rel: str, base: str, name: str) -> None:
        """OCI whiteouts become what overlayfs reads: a 0:0 character device for a deleted
        entry, ``trusted.overlay.opaque=y`` for a directory whose lower contents are hidden."""
        if base == OPAQUE_MARKER:
            os.setxattr(pfd, OVERLAY_OPAQUE_XATTR, b"y")
            return
        hidden = base[len(WHITEOUT_PREFIX):]
        if self.split is not None:
            self.split.replaced(f"{parent_rel}/{hidden}" if parent_rel else hidden, True)
        if hidden.startswith(WHITEOUT_PREFIX) or hidden in ("", ".", ".."):
            return   # other ".wh..wh." metadata entries (aufs hard-link dirs) carry nothing
        if _lstat_at(pfd, hidden) is not None:
            self._remove(pfd, hidden)
        os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)


# What a member itself can provoke (a name too long, a link where a directory must be, an
# xattr the filesystem refuses, a mount point of a container in the way): the tar's fault.
_MEMBER_ERRORS = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR,
                            errno.EEXIST, errno.EMLINK, errno.EINVAL, errno.ERANGE, errno.E2BIG,
                            errno.EXDEV, errno.EPERM, errno.ENOTEMPTY, errno.EBUSY})
_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _members(tar: tarfile.TarFile, reader: _HashingReader) -> Iterator[tarfile.TarInfo]:
    """The tar's members. A tar that stops right after its last member's content, without
    padding or end blocks (some tools write layers so), is complete: its diff id covers exactly
    those bytes. A tar cut inside a header or a file's content is still an error."""
    members = iter(tar)
    while True:
        try:
            member = next(members)
        except StopIteration:
            return
        except tarfile.ReadError as e:
            if str(e) == "unexpected end of data" and tar.members and not reader.read(1):
                return
            raise
        yield member


def _clean_name(name: str) -> list[str]:
    """Split a member name into components; refuse absolute names and ``..``."""
    if name.startswith("/"):
        raise _invalid(name, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _invalid(name, "path escapes the layer")
    return parts


def _clean_link(member: tarfile.TarInfo) -> list[str]:
    """A hard link's target, which must name an entry inside the layer."""
    if member.linkname.startswith("/"):
        # GNU tar strips a leading slash from link targets the same way as from names.
        raise _invalid(member.name, f"hard link to absolute path {member.linkname}")
    parts = [p for p in member.linkname.split("/") if p not in ("", ".")]
    if ".." in parts or not parts:
        raise _invalid(member.name, f"hard link to {member.linkname} points outside the layer")
    return parts


def _lstat_at(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> int:
    src = tar.extractfile(member)
    written = 0
    if src is not None:
        while chunk := src.read(_COPY_CHUNK):
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
                written += n
    return written


def _xattrs(member: tarfile.TarInfo) -> Iterator[tuple[str, bytes]]:
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr."):]
        if name.startswith("trusted.overlay."):
            continue   # overlay metadata is ours to write; a tar must not plant redirects
        yield name, value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def _ignore_unsupported(e: OSError) -> None:
    if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
        raise e


def _metadata_fd(fd: int, member: tarfile.TarInfo, owner: tuple[int, int] | None,
                 times: bool) -> None:
    """Owner, then mode (chown clears setuid bits), xattrs, then mtime, through the entry's fd."""
    uid, gid = owner if owner is not None else (member.uid, member.gid)
    os.fchown(fd, uid, gid)
    os.fchmod(fd, member.mode & 0o7777)
    for name, raw in _xattrs(member):
        try:
            os.setxattr(fd, name, raw)
        except OSError as e:
            _ignore_unsupported(e)
    if times:
        mtime_ns = int(member.mtime * 10**9)
        os.utime(fd, ns=(mtime_ns, mtime_ns))


def _metadata_at(dirfd: int, name: str, member: tarfile.TarInfo,
                 owner: tuple[int, int] | None) -> None:
    """The same for what is not opened for real (symlinks, devices, fifos): (dirfd, name)
    calls that never follow the entry."""
    uid, gid = owner if owner is not None else (member.uid, member.gid)
    os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
    if not member.issym():
        chmod_at(dirfd, name, member.mode & 0o7777)
    for key, raw in _xattrs(member):
        try:
            setxattr_at(dirfd, name, key, raw)
        except OSError as e:
            _ignore_unsupported(e)
    mtime_ns = int(member.mtime * 10**9)
    os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=dirfd, follow_symlinks=False)


def _remove_tree(path: str) -> None:
    """Delete a folder we own, whatever the layer put in it (device nodes, read-only or deeply
    nested directories, links): walked by directory fds, never following a link."""
    if not path:
        return
    parent = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        remove_at(parent, os.path.basename(path))
    except FileNotFoundError:
        pass
    finally:
        os.close(parent)


def _read_range(fd: int, pos: int, length: int) -> Iterator[bytes]:
    while length > 0:
        chunk = os.pread(fd, min(length, _COPY_CHUNK), pos)
        if not chunk:
            raise SystemFailure("a layer's tar record is shorter than recorded",
                                operation="storage::Layer::Export")
        pos += len(chunk)
        length -= len(chunk)
        yield chunk


def _read_content(diff: str, rel: str, size: int, diff_id: str) -> Iterator[bytes]:
    """A file's contents from ``diff/``, never through a symlink."""
    try:
        fd = os.open(os.path.join(diff, rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise SystemFailure(f"layer {diff_id} is missing {rel}: {e.strerror}",
                            operation="storage::Layer::Export", object_id=diff_id,
                            cause=e) from e
    try:
        if os.fstat(fd).st_size != size:
            raise SystemFailure(f"layer {diff_id}: {rel} changed size on disk",
                                operation="storage::Layer::Export", object_id=diff_id)
        yield from _read_range(fd, 0, size)
    finally:
        os.close(fd)


def _now() -> str:
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def read_layerchain(folder: str) -> list[str]:
    """The parent folders recorded in a layer (or sandbox) folder, nearest first."""
    try:
        with open(os.path.join(folder, "layerchain.json")) as f:
            chain = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise SystemFailure(f"cannot read {folder}/layerchain.json: {e}",
                            operation="storage::Layer::Chain", object_id=folder, cause=e) from e
    if not isinstance(chain, list) or not all(isinstance(p, str) for p in chain):
        raise SystemFailure(f"{folder}/layerchain.json is not a list of paths",
                            operation="storage::Layer::Chain", object_id=folder)
    return chain
