"""The container store: the one owner of Docker container records.

It keeps every record in memory, persists each change in the ``containers`` table (the record
as Docker's inspect document, so a state directory from any earlier silod loads unchanged),
resolves references (full id, name, unique id prefix) and hands out one lock per container,
which every verb that changes a container's life holds. Services read records through it and
write them back with :meth:`ContainerStore.save`; nothing else keeps a container table.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from typing import Any, Iterator, Mapping

from silobox.engine import spec as S
from silobox.engine.names import random_name
from silobox.engine.record import Container
from silobox.errors import AlreadyExists, InvalidArgument, NotFound

SCHEMA = ["CREATE TABLE containers (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, "
          "data TEXT NOT NULL)"]


class ContainerStore(Mapping[str, Container]):
    """Records by full id (a read-only mapping), their persistence, names and locks."""

    def __init__(self, db: Any, containers_dir: str) -> None:
        self.db = db
        self.containers_dir = containers_dir
        db.migrate("containers", SCHEMA)
        self._records: dict[str, Container] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        for row in db.query("SELECT data FROM containers"):
            c = Container.from_document(json.loads(row["data"]))
            self._records[c.id] = c

    # ----- the mapping ----------------------------------------------------------------------
    def __getitem__(self, cid: str) -> Container:
        return self._records[cid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    # ----- lookup ---------------------------------------------------------------------------
    def find(self, ref: str) -> Container:
        """Docker's reference rules: full id, then name, then a unique id prefix."""
        if not ref:
            raise NotFound("No such container: ")
        ref = ref.lstrip("/") or ref
        c = self._records.get(ref)
        if c:
            return c
        for c in self._records.values():
            if c.name == ref:
                return c
        matches = [c for c in self._records.values() if c.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"multiple IDs found with provided prefix: {ref}")
        raise NotFound(f"No such container: {ref}", object_id=ref)

    def directory(self, cid: str) -> str:
        """``<root>/containers/<id>``: the container's etc files and log."""
        return os.path.join(self.containers_dir, cid)

    # ----- names ----------------------------------------------------------------------------
    def check_name_free(self, name: str) -> None:
        for other in self._records.values():
            if other.name == name:
                raise AlreadyExists(f'Conflict. The container name "/{name}" is already in use by '
                                    f'container "{other.id}". You have to remove (or rename) that '
                                    "container to be able to reuse that name.")

    def unique_random_name(self) -> str:
        used = {c.name for c in self._records.values()}
        for i in range(100):
            n = random_name(i > 10)
            if n not in used:
                return n
        return "silo_" + secrets.token_hex(6)

    def rename(self, c: Container, new: str) -> None:
        """Give ``c`` a free name, persisted; the old one stays if the write fails."""
        self.check_name_free(new)
        old = c.name
        c.name = new
        try:
            self.save(c)
        except Exception:
            c.name = old
            raise

    # ----- persistence ----------------------------------------------------------------------
    def add(self, c: Container) -> None:
        """Store a new record (its name checked free again: a create may have waited)."""
        self.check_name_free(c.name)
        self._records[c.id] = c
        try:
            self.save(c)
        except BaseException:
            self._records.pop(c.id, None)
            raise

    def save(self, c: Container) -> None:
        with self.db.tx():
            self.db.execute("INSERT OR REPLACE INTO containers (id, name, data) VALUES (?, ?, ?)",
                            (c.id, c.name, S.dumps(c.to_document())))

    def delete(self, c: Container) -> None:
        with self.db.tx():
            self.db.execute("DELETE FROM containers WHERE id = ?", (c.id,))
        self._records.pop(c.id, None)
        self._locks.pop(c.id, None)

    # ----- locks ----------------------------------------------------------------------------
    def lock(self, cid: str) -> asyncio.Lock:
        """The container's lock: start, stop, kill, pause, remove and commit hold it."""
        return self._locks.setdefault(cid, asyncio.Lock())
