"""Which compressed blob each layer is, per registry and repository (Docker's "v2 metadata").

A layer is stored uncompressed (its diff id); a registry holds it gzip-compressed under another
digest. Recording that pairing when a layer is pulled or pushed lets a later push ask the
registry whether it has the blob (``HEAD``), mount it from another repository of the same
registry, and otherwise upload it under the same digest as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from silobox.storage.db import Database

SCHEMA_COMPONENT = "storage.distribution"
SCHEMA: list[str] = [
    """
    CREATE TABLE blob_sources (
        diff_id    TEXT NOT NULL,      -- the layer (sha256 of its uncompressed tar)
        digest     TEXT NOT NULL,      -- the compressed blob in the registry
        size       INTEGER NOT NULL,   -- bytes of that blob
        registry   TEXT NOT NULL,      -- domain as in references, e.g. 127.0.0.1:5000
        repository TEXT NOT NULL,      -- path in that registry, e.g. library/busybox
        PRIMARY KEY (diff_id, registry, repository, digest)
    );
    CREATE INDEX blob_sources_by_digest ON blob_sources(digest);
    """,
]


@dataclass(frozen=True)
class BlobSource:
    diff_id: str
    digest: str
    size: int
    registry: str
    repository: str


class BlobMetadata:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate(SCHEMA_COMPONENT, SCHEMA)

    def add(self, source: BlobSource) -> None:
        self.db.execute("INSERT OR IGNORE INTO blob_sources (diff_id, digest, size, registry, "
                        "repository) VALUES (?, ?, ?, ?, ?)",
                        (source.diff_id, source.digest, source.size, source.registry,
                         source.repository))

    def sources(self, diff_id: str, registry: str) -> list[BlobSource]:
        """Known blobs of a layer in ``registry``, newest recording last."""
        rows = self.db.query("SELECT * FROM blob_sources WHERE diff_id = ? AND registry = ? "
                             "ORDER BY rowid", (diff_id, registry))
        return [BlobSource(r["diff_id"], r["digest"], r["size"], r["registry"], r["repository"])
                for r in rows]
