"""The readers of untrusted trees (storage.changes) against trees changed under them: a
directory swapped for a link to a host victim between listing and entering it, a file swapped
for a fifo between listing and reading, a tree wider than the fd limit. Deterministic: the test
changes the tree between two steps of the walk."""

from __future__ import annotations

import io
import os
import resource
import tarfile

from silobox.kernel.saferoot import SafeRoot
from silobox.storage.changes import TarWriter, tar_overlay_dir, tar_path, tree_bytes, walk_tree

SECRET = b"host secret\n"


def _victim(tmp_path) -> str:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "shadow").write_bytes(SECRET)
    return str(victim)


def test_a_directory_swapped_for_a_link_mid_walk_is_not_entered(tmp_path):
    victim = _victim(tmp_path)
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "inside").write_text("x")
    (root / "b").write_text("b")
    with SafeRoot(str(root)) as tree:
        seen = []
        for rel, _src, _st in walk_tree(tree):
            seen.append(rel)
            if rel == "b":   # "a" is listed, not entered yet: make it a link to the victim
                os.rename(root / "a", root / "a.gone")
                os.symlink(victim, root / "a")
        assert "a/shadow" not in seen and not any(r.startswith("a/") for r in seen)
    data = b"".join(tar_overlay_dir(str(root)))
    assert SECRET not in data
    assert os.listdir(victim) == ["shadow"]


def test_a_file_swapped_for_a_fifo_or_a_link_is_not_read(tmp_path):
    victim = _victim(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"12345678")
    (root / "g").write_bytes(b"12345678")
    with SafeRoot(str(root)) as tree:
        entries = list(walk_tree(tree))
        os.unlink(root / "f")
        os.mkfifo(root / "f")                       # would block a plain open for reading
        os.unlink(root / "g")
        os.symlink(victim + "/shadow", root / "g")  # would read the host file
        writer = TarWriter()
        out = b""
        for rel, src, st in entries:
            info, fd, _ = writer.prepare(rel, st, src)
            out += b"".join(writer.member(info, fd))
    members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(out + TarWriter.end()))}
    assert members["f"].size == 8 and SECRET not in out
    assert out.count(bytes(8)) >= 2   # the promised sizes, as zeros


def test_walks_hold_one_directory_fd_however_wide_the_tree(tmp_path):
    root = tmp_path / "wide"
    for i in range(300):
        (root / f"d{i}").mkdir(parents=True)
        (root / f"d{i}" / "f").write_text("x")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        assert tree_bytes(str(root)) == 300
        with SafeRoot(str(tmp_path)) as tree:
            names = [m.name for m in tarfile.open(
                fileobj=io.BytesIO(b"".join(tar_path(tree, "wide", "wide"))))]
        assert len(names) == 1 + 600
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
