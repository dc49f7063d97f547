"""What silod keeps on disk: private to root, and consistent after a kill -9 at any moment.

Each test runs a silod of its own on a root of its own, so it can plant state, kill the
daemon and look at its directories without disturbing the shared one.
"""

from __future__ import annotations

import http.client
import os
import random
import sqlite3
import stat
import subprocess
import threading
import time

import pytest

from silobox.storage import disk as D


@pytest.fixture
def own(tmp_path_factory, run_id, silod_factory):
    base = str(tmp_path_factory.mktemp("rest"))
    with silod_factory(os.path.join(base, "d"), f"{run_id}s") as d:
        yield d


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _store_files(root: str) -> list[str]:
    return [os.path.join(root, n) for n in os.listdir(root) if n.startswith("silobox.db")]


def test_state_directory_and_store_are_private(own):
    cid = own.client.create_container("busybox", "true", environment=["PASSWORD=hunter2"])["Id"]
    try:
        assert _mode(own.root) == 0o700
        files = _store_files(own.root)
        assert {os.path.basename(f) for f in files} >= {"silobox.db", "silobox.db-wal",
                                                        "silobox.db-shm"}
        assert all(_mode(f) == 0o600 for f in files), {f: oct(_mode(f)) for f in files}
    finally:
        own.client.remove_container(cid, force=True)


def test_modes_of_an_older_version_are_fixed_at_start(own):
    own.stop()
    os.chmod(own.root, 0o755)            # what older versions left: 0711/0755 and 0644
    for f in _store_files(own.root):
        os.chmod(f, 0o644)
    own.start()
    assert _mode(own.root) == 0o700
    assert all(_mode(f) == 0o600 for f in _store_files(own.root))


def _stored_containers(d) -> set[str]:
    status, items = d.request("GET", "/containers/json?all=1")
    assert status == 200
    return {c["Id"] for c in items}


def _stored_volumes(d) -> set[str]:
    status, body = d.request("GET", "/volumes")
    assert status == 200
    return {v["Name"] for v in body["Volumes"] or []}


def _folders(path: str) -> set[str]:
    return {n for n in os.listdir(path) if not n.startswith(".")}


def _loops_under(root: str) -> list[str]:
    return [dev.backing_file for dev in D.loop_devices()
            if dev.backing_file.startswith(os.path.realpath(root) + "/containers/")]


def _assert_consistent(d) -> None:
    """Every container and volume folder belongs to a stored object; no stray loop device."""
    containers = _stored_containers(d)
    assert _folders(os.path.join(d.root, "containers")) <= containers
    assert _folders(os.path.join(d.root, "volumes")) <= _stored_volumes(d)
    wanted = {os.path.realpath(os.path.join(d.root, "containers", c, "sandbox.img"))
              for c in containers}
    assert set(_loops_under(d.root)) <= wanted


def test_planted_leftovers_of_a_killed_create_are_swept(own):
    """The state a kill -9 between the folders and the row leaves: a container folder with a
    real sandbox disk (a real create whose row is then taken out of the store), a bare one, a
    volume folder, and a mounted scratch folder of volume population."""
    cid = own.client.create_container("busybox", "true", volumes=["/data"])["Id"]
    volume = own.client.inspect_container(cid)["Mounts"][0]["Name"]
    own.kill9()
    with sqlite3.connect(os.path.join(own.root, "silobox.db")) as db:
        db.execute("DELETE FROM containers WHERE id = ?", (cid,))
        db.execute("DELETE FROM volumes WHERE name = ?", (volume,))
    folder = os.path.join(own.root, "containers", cid)
    bare = os.path.join(own.root, "containers", "f" * 64)
    os.makedirs(os.path.join(bare, "sandbox", "upper"))
    with open(os.path.join(bare, "hostname"), "w") as f:
        f.write("x\n")
    stray_volume = os.path.join(own.root, "volumes", "stray", "_data")
    os.makedirs(stray_volume)
    scratch = os.path.join(own.root, "tmp", "populate-dead")
    source = os.path.join(own.base, "victim")
    os.makedirs(scratch)
    os.makedirs(source, exist_ok=True)
    with open(os.path.join(source, "keep"), "w") as f:
        f.write("must survive\n")
    subprocess.run(["mount", "--bind", source, scratch], check=True)
    try:
        own.start()
    finally:
        if os.path.ismount(scratch):
            subprocess.run(["umount", "-l", scratch], check=False)
    for gone in (folder, bare, os.path.dirname(stray_volume),
                 os.path.join(own.root, "volumes", volume), scratch):
        assert not os.path.exists(gone), (gone, own.log())
    with open(os.path.join(source, "keep")) as f:       # swept by unmounting, not through it
        assert f.read() == "must survive\n"
    _assert_consistent(own)
    with open(own.log_path, errors="replace") as f:
        assert f"removing container folder {os.path.realpath(folder)}" in f.read()


def test_kill9_during_a_create_loop_leaves_nothing_the_next_start_keeps(own):
    """Real kill -9 while clients create containers with sandbox disks and anonymous volumes:
    after the restart, every folder belongs to a stored object."""
    rng = random.Random(9)
    for round_ in range(3):
        stop = threading.Event()

        def create_loop() -> None:
            while not stop.is_set():
                try:
                    own.request("POST", "/containers/create",
                                {"Image": "busybox", "Cmd": ["true"], "Volumes": {"/v": {}}})
                except (OSError, http.client.HTTPException):
                    return     # the daemon is gone

        workers = [threading.Thread(target=create_loop) for _ in range(3)]
        for w in workers:
            w.start()
        time.sleep(0.3 + rng.random())
        own.kill9()
        stop.set()
        for w in workers:
            w.join(30)
        own.start()
        _assert_consistent(own)
        own.remove_all()
        own.request("POST", "/volumes/prune?filters=%7B%22all%22%3A%5B%22true%22%5D%7D")
