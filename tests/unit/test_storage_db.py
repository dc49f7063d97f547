"""The metadata store: schema steps applied once per component, transactions, error mapping."""

from __future__ import annotations

import threading

import pytest

from silobox.errors import Conflict, InvalidArgument, SystemFailure
from silobox.storage.db import Database

STEPS = [
    "CREATE TABLE things (id TEXT PRIMARY KEY, n INTEGER NOT NULL);",
    "ALTER TABLE things ADD COLUMN label TEXT; CREATE INDEX things_by_n ON things(n);",
]


@pytest.fixture
def db(tmp_path):
    database = Database(str(tmp_path / "state" / "silobox.db"))
    yield database
    database.close()


def test_pragmas(db):
    assert db.query_one("PRAGMA journal_mode")[0] == "wal"
    assert db.query_one("PRAGMA foreign_keys")[0] == 1
    assert db.query_one("PRAGMA synchronous")[0] == 1          # NORMAL
    assert db.query_one("PRAGMA busy_timeout")[0] >= 1000


def test_migrate_applies_each_step_once(db, tmp_path):
    assert db.migrate("engine", STEPS[:1]) == 1
    assert db.migrate("engine", STEPS[:1]) == 1                 # idempotent
    assert db.migrate("engine", STEPS) == 2                     # only the new step runs
    assert db.migrate("engine", STEPS) == 2
    db.execute("INSERT INTO things (id, n, label) VALUES ('a', 1, 'x')")
    rows = db.query("SELECT component, version FROM schema_versions ORDER BY version")
    assert [(r["component"], r["version"]) for r in rows] == [("engine", 1), ("engine", 2)]
    db.close()
    again = Database(str(tmp_path / "state" / "silobox.db"))   # survives a restart
    try:
        assert again.migrate("engine", STEPS) == 2
        assert again.query_one("SELECT label FROM things")["label"] == "x"
    finally:
        again.close()


def test_components_are_independent(db):
    db.migrate("engine", STEPS[:1])
    db.migrate("network", ["CREATE TABLE nets (id TEXT PRIMARY KEY);"])
    assert db.schema_version("engine") == 1
    assert db.schema_version("network") == 1
    assert db.schema_version("storage") == 0


def test_failing_step_leaves_nothing(db):
    db.migrate("engine", STEPS[:1])
    bad = STEPS[:1] + ["CREATE TABLE half (x INTEGER); INSERT INTO nowhere VALUES (1);"]
    with pytest.raises(SystemFailure, match="schema step 2 of engine"):
        db.migrate("engine", bad)
    assert db.schema_version("engine") == 1
    assert db.query_one("SELECT name FROM sqlite_master WHERE name = 'half'") is None
    assert db.migrate("engine", STEPS) == 2                      # a fixed step applies


def test_tx_commits_and_rolls_back(db):
    db.migrate("engine", STEPS[:1])
    with db.tx():
        db.execute("INSERT INTO things VALUES ('a', 1)")
    with pytest.raises(RuntimeError):
        with db.tx():
            db.execute("INSERT INTO things VALUES ('b', 2)")
            raise RuntimeError("boom")
    assert [r["id"] for r in db.query("SELECT id FROM things")] == ["a"]
    # the connection is usable after a rollback
    with db.tx():
        db.execute("INSERT INTO things VALUES ('c', 3)")
    assert db.query_one("SELECT COUNT(*) AS n FROM things")["n"] == 2


def test_nested_tx_is_a_savepoint(db):
    db.migrate("engine", STEPS[:1])
    with db.tx():
        db.execute("INSERT INTO things VALUES ('outer', 1)")
        with pytest.raises(ValueError):
            with db.tx():
                db.execute("INSERT INTO things VALUES ('inner', 2)")
                raise ValueError("inner fails")
        db.execute("INSERT INTO things VALUES ('after', 3)")
    assert sorted(r["id"] for r in db.query("SELECT id FROM things")) == ["after", "outer"]


def test_errors_are_mapped(db):
    db.migrate("engine", STEPS[:1])
    db.execute("INSERT INTO things VALUES ('a', 1)")
    with pytest.raises(Conflict):
        db.execute("INSERT INTO things VALUES ('a', 2)")
    with pytest.raises(SystemFailure):
        db.query("SELECT * FROM no_such_table")
    with pytest.raises(InvalidArgument):
        db.migrate("", STEPS)
    with db.tx(), pytest.raises(InvalidArgument):
        db.migrate("engine", STEPS)
    assert db.query_one("SELECT * FROM things WHERE id = 'zz'") is None


def test_usable_from_executor_threads(db):
    db.migrate("engine", STEPS[:1])
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(20):
                with db.tx():
                    db.execute("INSERT INTO things VALUES (?, ?)", (f"{k}-{i}", i))
        except BaseException as e:   # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert db.query_one("SELECT COUNT(*) AS n FROM things")["n"] == 80


def test_closed_store_refuses(tmp_path):
    database = Database(str(tmp_path / "x.db"))
    database.close()
    database.close()
    with pytest.raises(SystemFailure, match="closed"):
        database.query("SELECT 1")
