"""The build cache: which image a build step made over which parent, under which key.

It is also the images' lineage as Docker shows it: an image made by a build step is the *child*
of the image it was built on, so untagged intermediate images that have children are hidden
from ``image ls`` (unless ``-a``) and survive ``image prune`` while something built on them is
kept; inspect and history show the ``Parent``. The image service asks it those questions.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

SCHEMA_COMPONENT = "engine.build"
SCHEMA = [
    """
    CREATE TABLE build_cache (
        cache_key TEXT NOT NULL,        -- sha256 of parent, instruction, config, inputs
        image_id  TEXT NOT NULL,        -- the image the step made (--no-cache makes more)
        parent_id TEXT NOT NULL,        -- the image it was made on ("" for scratch)
        created   TEXT NOT NULL,
        PRIMARY KEY (cache_key, image_id)
    );
    CREATE INDEX build_cache_by_parent ON build_cache(parent_id);
    CREATE INDEX build_cache_by_image ON build_cache(image_id);
    """,
]


class BuildCache:
    """The ``build_cache`` table of the store; only entries whose images exist count."""

    def __init__(self, db: Any, root: str) -> None:
        self.db = db
        db.migrate(SCHEMA_COMPONENT, SCHEMA)
        # contexts of builds a previous silod did not finish (none of ours runs yet)
        shutil.rmtree(os.path.join(root, "build"), ignore_errors=True)

    def lookup(self, key: str) -> str | None:
        row = self.db.query_one("SELECT b.image_id FROM build_cache b JOIN images i "
                                "ON i.id = b.image_id WHERE b.cache_key = ? "
                                "ORDER BY b.created DESC LIMIT 1", (key,))
        return row["image_id"] if row is not None else None

    def record(self, key: str, image_id: str, parent_id: str) -> None:
        from silobox.storage.images import now_rfc3339
        with self.db.tx():
            self.db.execute("INSERT OR REPLACE INTO build_cache (cache_key, image_id, parent_id, "
                            "created) VALUES (?, ?, ?, ?)",
                            (key, image_id, parent_id, now_rfc3339()))

    def children(self, image_id: str) -> list[str]:
        rows = self.db.query("SELECT DISTINCT b.image_id FROM build_cache b JOIN images i "
                             "ON i.id = b.image_id WHERE b.parent_id = ? AND b.image_id != ?",
                             (image_id, image_id))
        return [r["image_id"] for r in rows]

    def has_children(self, image_id: str) -> bool:
        return bool(self.children(image_id))

    def parent(self, image_id: str) -> str:
        row = self.db.query_one("SELECT b.parent_id FROM build_cache b JOIN images i "
                                "ON i.id = b.parent_id WHERE b.image_id = ? AND "
                                "b.parent_id != ''", (image_id,))
        return row["parent_id"] if row is not None else ""

    def image_ids(self) -> list[str]:
        return [r["image_id"] for r in self.db.query("SELECT DISTINCT image_id FROM build_cache")]

    def forget_pruned(self) -> None:
        """Drop the entries of images that are gone or untagged (after a build prune)."""
        with self.db.tx():
            self.db.execute("DELETE FROM build_cache WHERE image_id NOT IN (SELECT id FROM "
                            "images) OR image_id IN (SELECT i.id FROM images i WHERE NOT EXISTS "
                            "(SELECT 1 FROM image_tags t WHERE t.image_id = i.id))")
