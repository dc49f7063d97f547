"""Parsing of link and volumes-from specifications, with Docker's messages."""

from __future__ import annotations

import pytest

from silobox.engine.links import check_endpoint_links, parse_link, parse_volumes_from
from silobox.errors import InvalidArgument


@pytest.mark.parametrize("text, expected", [
    ("db", ("db", "db")),
    ("db:olddb", ("db", "olddb")),
    ("/db:/app/olddb", ("db", "olddb")),     # the form inspect shows, sent back by clients
    ("proj_db_1:db_1", ("proj_db_1", "db_1")),
])
def test_parse_link(text: str, expected: tuple[str, str]) -> None:
    assert parse_link(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "empty string specified for links"),
    ("a:b:c", "bad format for links: a:b:c"),
    ("a:", "bad format for links: a:"),
    (":b", "bad format for links: :b"),
    (3, "bad format for links: 3 is not a string"),
])
def test_parse_link_errors(text: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_link(text)


def test_endpoint_links_are_null_when_empty_and_checked() -> None:
    assert check_endpoint_links(None) is None
    assert check_endpoint_links([]) is None
    assert check_endpoint_links(["a:b"]) == ["a:b"]
    with pytest.raises(InvalidArgument, match="EndpointSettings.Links"):
        check_endpoint_links("a:b")
    with pytest.raises(InvalidArgument, match="bad format"):
        check_endpoint_links(["a:b:c"])


@pytest.mark.parametrize("spec, expected", [
    ("data", ("data", "rw")),
    ("data:ro", ("data", "ro")),
    ("data:rw", ("data", "rw")),
    ("data:ro,z", ("data", "ro,z")),
])
def test_parse_volumes_from(spec: str, expected: tuple[str, str]) -> None:
    assert parse_volumes_from(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("", "volumes-from specification cannot be an empty string"),
    ("data:", "invalid mode: "),
    ("data:rx", "invalid mode: rx"),
    ("data:ro,rw", "invalid mode: ro,rw"),
    ("data:rshared", "invalid mode: rshared"),
    ("data:nocopy", "invalid mode: nocopy"),
    (None, "is not a string"),
])
def test_parse_volumes_from_errors(spec: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_volumes_from(spec)
