"""The hostile corpus (tests/hostile.py) against the extractor itself, as a layer and as a cp
into a directory, and random member sequences built from the same pieces (hypothesis): the
victim beside the tree is never touched, and a refusal is always a client error."""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile
from silobox.errors import InvalidArgument
from silobox.kernel.saferoot import SafeRoot
from silobox.storage import layers as layers_mod

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ownership, device nodes)"),
]

CORPUS_NAMES = sorted(hostile.cases("/victim"))


@pytest.fixture
def victim(tmp_path):
    return hostile.make_victim(str(tmp_path / "victim"))


@pytest.mark.parametrize("case", CORPUS_NAMES)
def test_corpus_as_a_layer_never_touches_the_victim(store, victim, case):
    layers, _ = store
    before = hostile.snapshot(victim)
    data = hostile.tar_bytes(hostile.cases(victim)[case])
    try:
        layer = layers.add_from_tar(io.BytesIO(data))
    except InvalidArgument as e:
        assert "invalid layer tar" in e.message
    else:
        _inside_only(layer.path, victim)
    assert hostile.snapshot(victim) == before
    assert not [n for n in os.listdir(layers.dir) if n.startswith("tmp-")]


@pytest.mark.parametrize("case", CORPUS_NAMES)
def test_corpus_as_a_copy_into_a_directory_never_touches_the_victim(tmp_path, victim, case):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "existing").mkdir()
    before = hostile.snapshot(victim)
    data = hostile.tar_bytes(hostile.cases(victim)[case])
    options = layers_mod.ExtractOptions(owner=(4321, 4321), shown_dest="/")
    with SafeRoot(str(dest)) as tree:
        try:
            layers_mod.extract(io.BytesIO(data), tree, options)
        except InvalidArgument:
            pass
    assert hostile.snapshot(victim) == before


def test_the_reported_attack_is_refused(store, victim):
    layers, _ = store
    data = hostile.tar_bytes(hostile.cases(victim)["issue-whiteout-then-symlink"])
    with pytest.raises(InvalidArgument, match="x is a symlink and an entry is written through"):
        layers.add_from_tar(io.BytesIO(data))
    assert sorted(os.listdir(victim)) == ["passwd", "sh", "sub"]


def test_legit_archive_of_the_same_pieces_still_works(store):
    layers, _ = store
    layer = layers.add_from_tar(io.BytesIO(hostile.tar_bytes(hostile.legit())))
    p = layer.path
    assert stat.S_IMODE(os.lstat(os.path.join(p, "bin/tool")).st_mode) == 0o4755
    assert os.lstat(os.path.join(p, "bin/tool2")).st_ino == os.lstat(
        os.path.join(p, "bin/tool")).st_ino
    assert os.readlink(os.path.join(p, "abs")) == "/etc/passwd"
    assert stat.S_ISCHR(os.lstat(os.path.join(p, "gone")).st_mode)
    assert os.getxattr(os.path.join(p, "opq"), "trusted.overlay.opaque") == b"y"
    assert os.lstat(os.path.join(p, "dev/null")).st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(os.path.join(p, "dev/pipe")).st_mode)


def _inside_only(tree: str, victim: str) -> None:
    """Nothing in the written tree is the victim's inode (no hard link out)."""
    victim_inodes = {(os.lstat(os.path.join(dp, n)).st_dev, os.lstat(os.path.join(dp, n)).st_ino)
                     for dp, dn, fn in os.walk(victim) for n in fn}
    for dp, dn, fn in os.walk(tree):
        for n in fn:
            st_ = os.lstat(os.path.join(dp, n))
            assert (st_.st_dev, st_.st_ino) not in victim_inodes, os.path.join(dp, n)


# -- random sequences -----------------------------------------------------------------------

_NAMES = ["x", "x/passwd", "x/sub", "x/sub/f", "y", "y/z", "h", ".wh.x", ".wh.y",
          "x/.wh.passwd", "x/.wh..wh..opq", "x/.wh.sub", "y/.wh..wh..opq", "./", "x/./sub/../sub"]


def _pieces(victim: str) -> st.SearchStrategy[hostile.Member]:
    targets = [victim, hostile.climb(victim), victim + "/passwd", "x", "../x", "/", "y",
               "/proc/self/root" + victim, "x/sub", hostile.climb(victim, 3)]
    link_sources = ["x/passwd", "y", "x", "x/sub/f", victim + "/passwd", "y/z/passwd",
                    hostile.climb(victim) + "/passwd"]
    names = st.sampled_from(_NAMES + [victim + "/passwd", "../x"])
    return st.one_of(
        st.builds(hostile.d, names, st.sampled_from([0o755, 0o777, 0o700])),
        st.builds(hostile.f, names, st.just(b"planted\n"),
                  st.sampled_from([0o644, 0o4755, 0o6755])),
        st.builds(hostile.sym, names, st.sampled_from(targets)),
        st.builds(hostile.hard, names, st.sampled_from(link_sources)),
        st.builds(hostile.chardev, names, st.sampled_from([1, 0]), st.sampled_from([1, 0])),
    )


# The strategies need the victim's path when the module is imported; the tree itself is made
# (and removed) by the fixture below, only when the test runs.
_WORK = os.path.join(tempfile.gettempdir(),
                     f"sbx-hostile-{os.environ.get('SILOBOX_TEST_RUN', 'x')}-{os.getpid()}")
_VICTIM = os.path.join(_WORK, "victim")


@pytest.fixture(scope="module")
def random_work():
    os.makedirs(_WORK)
    hostile.make_victim(_VICTIM)
    yield
    shutil.rmtree(_WORK, ignore_errors=True)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(members=st.lists(_pieces(_VICTIM), min_size=1, max_size=12))
def test_random_member_sequences_never_leave_the_tree(random_work, members):
    before = hostile.snapshot(_VICTIM)
    work = tempfile.mkdtemp(dir=_WORK)
    try:
        diff = os.path.join(work, "diff")
        try:
            layers_mod._extract_stream(io.BytesIO(hostile.tar_bytes(members)), diff,
                                       os.path.join(work, "split"))
        except InvalidArgument:
            pass
        assert hostile.snapshot(_VICTIM) == before
        assert sorted(os.listdir(_WORK)) == sorted([os.path.basename(work), "victim"])
        if os.path.isdir(diff):
            _inside_only(diff, _VICTIM)
    finally:
        layers_mod._remove_tree(work)



def test_a_deeply_nested_layer_is_stored_and_removed(store):
    """Deeper than Python's recursion limit: parents are made and removed without recursion."""
    layers, _ = store
    deep = "/".join(["a"] * 1200)
    data = hostile.tar_bytes([hostile.f(deep + "/f", b"bottom\n")])
    layer = layers.add_from_tar(io.BytesIO(data))
    assert os.path.isdir(os.path.join(layer.path, "a", "a", "a"))
    layers.remove(layer.diff_id)
    assert os.listdir(layers.dir) == []


@pytest.mark.parametrize("field", ["mtime", "uid"])
def test_out_of_range_numbers_are_a_refused_layer_not_a_failure(store, field):
    """A PAX header may carry any number; one no file system can hold is the tar's fault."""
    import tarfile
    layers, _ = store
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.size = 1
        info.pax_headers = {field: "1e400" if field == "mtime" else str(10**30)}
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(InvalidArgument, match="invalid layer tar"):
        layers.add_from_tar(io.BytesIO(out.getvalue()))
    assert not [n for n in os.listdir(layers.dir) if n.startswith("tmp-")]
