"""The daemon's one metadata store: SQLite in WAL mode.

On Windows the layer store keeps its metadata in the graph driver's folders and HNS keeps its own
store; silobox keeps everything the daemon owns (layers, images, containers, networks, IPAM) in a
single SQLite file so a change that spans services commits or rolls back as one. Each service owns
its tables and declares them as numbered schema steps applied once through :meth:`Database.migrate`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from silobox.errors import Conflict, InvalidArgument, SystemFailure

BUSY_TIMEOUT_MS = 5000
SIDE_FILES = ("-wal", "-shm", "-journal")
"""SQLite's companions of the store; it creates them with the store's own mode."""

Params = Sequence[Any] | dict[str, Any]


class Database:
    """One connection shared by the daemon's event loop and its executor threads.

    The connection runs in autocommit mode; :meth:`tx` opens explicit ``BEGIN IMMEDIATE``
    transactions so a writer takes the lock up front instead of failing on upgrade. A re-entrant
    lock serialises use of the connection across threads; a nested :meth:`tx` becomes a savepoint.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, mode=0o700, exist_ok=True)
        _owner_only(path)
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                         timeout=BUSY_TIMEOUT_MS / 1000)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except sqlite3.Error as e:
            raise SystemFailure(f"cannot open the metadata store {path}: {e}",
                                operation="storage::Database::Open", object_id=path, cause=e) from e
        self._lock = threading.RLock()
        self._depth = 0
        self._closed = False
        with self._lock:
            self._run("CREATE TABLE IF NOT EXISTS schema_versions ("
                      " component TEXT NOT NULL,"
                      " version INTEGER NOT NULL,"
                      " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),"
                      " PRIMARY KEY (component, version))", ())

    # -- queries -------------------------------------------------------------------------------

    def query(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Run a SELECT and return every row."""
        with self._lock:
            return self._run(sql, params).fetchall()

    def query_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """Run a SELECT and return its first row, or None."""
        with self._lock:
            return self._run(sql, params).fetchone()

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one write statement; returns the number of rows it changed."""
        with self._lock:
            return self._run(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Params]) -> int:
        """Run one write statement for each parameter set; returns the rows changed."""
        with self._lock:
            try:
                return self._conn.executemany(sql, rows).rowcount
            except sqlite3.Error as e:
                raise _translate(e, sql) from e

    # -- transactions --------------------------------------------------------------------------

    @contextlib.contextmanager
    def tx(self) -> Iterator[Database]:
        """A write transaction: ``BEGIN IMMEDIATE`` … ``COMMIT``, ``ROLLBACK`` on any exception.

        Nested use inside the same thread becomes a savepoint, so a helper that needs atomicity
        can open its own transaction whether or not its caller already did.
        """
        with self._lock:
            self._depth += 1
            savepoint = f"sp{self._depth}" if self._depth > 1 else ""
            try:
                self._run(f"SAVEPOINT {savepoint}" if savepoint else "BEGIN IMMEDIATE", ())
                try:
                    yield self
                except BaseException:
                    if savepoint:
                        self._conn.execute(f"ROLLBACK TO {savepoint}")
                        self._conn.execute(f"RELEASE {savepoint}")
                    elif self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                self._run(f"RELEASE {savepoint}" if savepoint else "COMMIT", ())
            finally:
                self._depth -= 1

    # -- schema --------------------------------------------------------------------------------

    def schema_version(self, component: str) -> int:
        """The highest schema step applied for ``component`` (0 when none)."""
        row = self.query_one("SELECT MAX(version) AS v FROM schema_versions WHERE component = ?",
                             (component,))
        return int(row["v"]) if row is not None and row["v"] is not None else 0

    def migrate(self, component: str, steps: list[str]) -> int:
        """Apply ``component``'s schema steps that have not been applied yet; returns the version.

        Step N (1-based) is a SQL script applied in its own transaction together with its row in
        ``schema_versions``, so a crash leaves either the whole step or none of it. Steps are
        append-only: released steps are never edited, a change is a new step.
        """
        if not component:
            raise InvalidArgument("schema component name must not be empty")
        with self._lock:
            if self._depth:
                raise InvalidArgument("migrate cannot run inside a transaction")
            for version, script in enumerate(steps, start=1):
                if version <= self.schema_version(component):
                    continue
                try:
                    # executescript commits any pending transaction first, so the step's own
                    # BEGIN is part of the script and the bookkeeping row joins it.
                    self._conn.executescript("BEGIN IMMEDIATE;\n" + script)
                    already = self._conn.execute(
                        "SELECT 1 FROM schema_versions WHERE component = ? AND version = ?",
                        (component, version)).fetchone()
                    if already:   # another process applied it between our check and BEGIN
                        self._conn.execute("ROLLBACK")
                        continue
                    self._conn.execute(
                        "INSERT INTO schema_versions (component, version) VALUES (?, ?)",
                        (component, version))
                    self._conn.execute("COMMIT")
                except sqlite3.Error as e:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise SystemFailure(
                        f"schema step {version} of {component} failed: {e}",
                        operation="storage::Database::Migrate", object_id=component,
                        cause=e) from e
            return self.schema_version(component)

    def close(self) -> None:
        """Close the connection (checkpointing the WAL); later calls are no-ops."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _run(self, sql: str, params: Params) -> sqlite3.Cursor:
        if self._closed:
            raise SystemFailure(f"the metadata store {self.path} is closed",
                                operation="storage::Database", object_id=self.path)
        try:
            return self._conn.execute(sql, params)
        except sqlite3.Error as e:
            raise _translate(e, sql) from e


def _translate(e: sqlite3.Error, sql: str) -> Exception:
    """Constraint violations are conflicts between requests; anything else is a store failure."""
    if isinstance(e, sqlite3.IntegrityError):
        return Conflict(f"conflict in the metadata store: {e}", operation="storage::Database",
                        cause=e)
    return SystemFailure(f"metadata store error: {e} (in: {' '.join(sql.split()[:3])} …)",
                         operation="storage::Database", cause=e)


def _owner_only(path: str) -> None:
    """Make the store and its WAL/SHM readable by their owner only (0600), creating the store
    so: it holds containers' ``Env``, where passwords live. Stores of older versions (0644)
    are fixed at open."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise SystemFailure(f"cannot open the metadata store {path}: {e.strerror}",
                            operation="storage::Database::Open", object_id=path, cause=e) from e
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in SIDE_FILES:
        try:
            st = os.lstat(path + suffix)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o777 != 0o600:
            os.chmod(path + suffix, 0o600)
