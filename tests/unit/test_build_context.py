"""COPY/ADD planning and the layer tar, over plain directories (no privileges needed)."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from silobox.engine.build import context as ctx
from silobox.engine.build.remote import Download
from silobox.engine.build.rootfs import MergedView
from silobox.errors import InvalidArgument, NotFound


@pytest.fixture
def tree(tmp_path):
    context = tmp_path / "context"
    (context / "dir" / "sub").mkdir(parents=True)
    (context / "dir" / "sub" / "f").write_text("f")
    (context / "a.txt").write_text("a")
    (context / "b.txt").write_text("b")
    (context / ".hidden.txt").write_text("h")
    image = tmp_path / "image"
    (image / "etc").mkdir(parents=True)
    os.chmod(image / "etc", 0o750)
    (image / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return str(context), MergedView([str(image)])


def plan(tree, sources, dest, cmd="COPY", workdir="/"):
    context, image = tree
    return ctx.plan_copy(cmd, sources, dest, ctx.SourceRoot(context=context), image, 0, 0,
                         None, workdir)


def layer(tree, p) -> dict[str, tarfile.TarInfo]:
    data = b"".join(ctx.copy_layer_tar(p, tree[1], 0, 0, None))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.rstrip("/"): m for m in tar}


def test_file_directory_and_glob_rules(tree) -> None:
    assert [e.dest for e in plan(tree, ["a.txt"], "/x").entries] == ["x"]
    assert [e.dest for e in plan(tree, ["a.txt"], "/x/").entries] == ["x/a.txt"]
    assert [e.dest for e in plan(tree, ["a.txt"], "/etc").entries] == ["etc/a.txt"]
    assert [e.dest for e in plan(tree, ["a.txt"], "rel", workdir="/w").entries] == ["w/rel"]
    p = plan(tree, ["dir"], "/d")
    assert p.kind == "dir" and p.dirs == ["d"]
    assert [e.dest for e in p.entries] == ["d/sub", "d/sub/f"]   # the content, not the dir
    glob = plan(tree, ["*.txt"], "/t/")
    assert glob.kind == "multi"
    assert sorted(e.dest for e in glob.entries) == ["t/.hidden.txt", "t/a.txt", "t/b.txt"]


def test_refusals(tree) -> None:
    with pytest.raises(InvalidArgument, match="must be a directory and end with a /"):
        plan(tree, ["a.txt", "b.txt"], "/x")
    with pytest.raises(NotFound, match="file not found in build context"):
        plan(tree, ["missing"], "/x")
    with pytest.raises(NotFound, match="no source files were specified"):
        plan(tree, ["*.none"], "/x/")
    with pytest.raises(InvalidArgument, match="outside the build context"):
        plan(tree, ["../x"], "/x")
    with pytest.raises(InvalidArgument, match="source can't be a URL for COPY"):
        plan(tree, ["http://127.0.0.1/x"], "/x")
    with pytest.raises(InvalidArgument, match="the URL was not downloaded"):
        plan(tree, ["http://127.0.0.1/x"], "/x", cmd="ADD")


def test_add_of_a_downloaded_url(tree, tmp_path) -> None:
    """A URL's file is named from the URL, keeps its 0600 and is never extracted."""
    got = tmp_path / "fetched"
    got.mkdir()
    with tarfile.open(got / "t.tar", "w") as tar:
        tar.add(os.path.join(tree[0], "a.txt"), "a.txt")
    os.chmod(got / "t.tar", 0o600)
    url = "http://127.0.0.1/t.tar"
    fetched = {url: Download(str(got / "t.tar"), "t.tar", "x")}
    context, image = tree
    p = ctx.plan_copy("ADD", [url, "a.txt"], "/d/", ctx.SourceRoot(context=context), image,
                      7, 8, None, "/", fetched)
    assert p.archives == [] and sorted(e.dest for e in p.entries) == ["d/a.txt", "d/t.tar"]
    members = layer(tree, p)
    assert members["d/t.tar"].mode == 0o600 and members["d/t.tar"].uid == 7
    unnamed = {url: Download(str(got / "t.tar"), "", "x")}
    with pytest.raises(InvalidArgument, match="cannot determine filename for source"):
        ctx.plan_copy("ADD", [url], "/d/", ctx.SourceRoot(context=context), image, 0, 0, None,
                      "/", unnamed)
    p = ctx.plan_copy("ADD", [url], "/file", ctx.SourceRoot(context=context), image, 0, 0, None,
                      "/", unnamed)
    assert [e.dest for e in p.entries] == ["file"]


def test_content_hash_follows_the_inputs(tree) -> None:
    first = plan(tree, ["a.txt"], "/x").digest
    assert plan(tree, ["a.txt"], "/x").digest == first
    with open(os.path.join(tree[0], "a.txt"), "w") as f:
        f.write("changed")
    assert plan(tree, ["a.txt"], "/x").digest != first
    assert plan(tree, ["a.txt"], "/y").digest != plan(tree, ["a.txt"], "/x").digest


def test_layer_keeps_existing_parents_and_creates_new_ones(tree) -> None:
    members = layer(tree, plan(tree, ["a.txt"], "/etc/app/conf"))
    assert members["etc"].mode == 0o750                     # as in the image below
    assert members["etc/app"].mode == 0o755 and members["etc/app"].isdir()
    assert members["etc/app/conf"].uid == 0 and members["etc/app/conf"].isfile()
    names = list(members)
    assert names.index("etc") < names.index("etc/app") < names.index("etc/app/conf")


def test_add_extracts_local_archives(tree) -> None:
    context = tree[0]
    with tarfile.open(os.path.join(context, "bundle.tar.gz"), "w:gz") as tar:
        info = tarfile.TarInfo("inner/file")
        info.size = 2
        info.uid = 7
        tar.addfile(info, io.BytesIO(b"hi"))
    p = plan(tree, ["bundle.tar.gz"], "/opt/", cmd="ADD")
    assert p.archives and not p.entries
    members = layer(tree, p)
    assert members["opt/inner/file"].size == 2 and members["opt/inner/file"].uid == 7
    copied = plan(tree, ["bundle.tar.gz"], "/opt/")      # COPY never extracts
    assert [e.dest for e in copied.entries] == ["opt/bundle.tar.gz"]
