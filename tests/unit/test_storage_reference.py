"""Docker image references: normalisation and the errors Docker gives."""

from __future__ import annotations

import pytest

from silobox.errors import InvalidArgument
from silobox.storage.reference import is_digest, parse, parse_tagged

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, name, tag, familiar", [
    ("busybox", "docker.io/library/busybox", "latest", "busybox:latest"),
    ("busybox:latest", "docker.io/library/busybox", "latest", "busybox:latest"),
    ("library/busybox", "docker.io/library/busybox", "latest", "busybox:latest"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox", "latest", "busybox:latest"),
    ("index.docker.io/library/busybox:1.36", "docker.io/library/busybox", "1.36",
     "busybox:1.36"),
    ("docker.io/busybox", "docker.io/library/busybox", "latest", "busybox:latest"),
    ("user/app:v1.0-rc_2", "docker.io/user/app", "v1.0-rc_2", "user/app:v1.0-rc_2"),
    ("quay.io/org/sub/app:x", "quay.io/org/sub/app", "x", "quay.io/org/sub/app:x"),
    ("localhost:5000/app", "localhost:5000/app", "latest", "localhost:5000/app:latest"),
    ("localhost/app", "localhost/app", "latest", "localhost/app:latest"),
    ("Registry/app", "Registry/app", "latest", "Registry/app:latest"),
    ("[::1]:5000/app:t", "[::1]:5000/app", "t", "[::1]:5000/app:t"),
    ("a__b-c---d/e.f_g", "docker.io/a__b-c---d/e.f_g", "latest", "a__b-c---d/e.f_g:latest"),
])
def test_normalisation(text, name, tag, familiar):
    ref = parse_tagged(text)
    assert ref.name == name
    assert ref.tag == tag
    assert ref.familiar() == familiar
    assert str(ref) == f"{name}:{tag}"


def test_no_default_tag_until_asked():
    assert parse("busybox").tag is None
    assert parse("busybox").with_default_tag().tag == "latest"


def test_digest_references():
    ref = parse_tagged(f"busybox@{DIGEST}")
    assert ref.tag is None and ref.digest == DIGEST
    assert ref.familiar() == f"busybox@{DIGEST}"
    both = parse(f"busybox:1@{DIGEST}")
    assert (both.tag, both.digest) == ("1", DIGEST)
    assert is_digest(DIGEST) and not is_digest("busybox")


@pytest.mark.parametrize("text", [
    "", ":latest", "busybox:", "busybox:-x", "bus box", "busybox@sha256:12", "busybox@",
    "-busybox", "busybox-", "a//b", "/busybox", "busybox/", "a:b:c", "b" * 256,
    "busybox:" + "t" * 129, "busybox@@" + DIGEST,
])
def test_invalid(text):
    with pytest.raises(InvalidArgument, match="invalid reference format"):
        parse(text)


def test_uppercase_says_lowercase():
    with pytest.raises(InvalidArgument,
                       match=r"invalid reference format: repository name \(library/BusyBox\) "
                             "must be lowercase"):
        parse("BusyBox")


def test_hex_id_is_not_a_name():
    with pytest.raises(InvalidArgument, match="cannot specify 64-byte hexadecimal strings"):
        parse("ab" * 32)
