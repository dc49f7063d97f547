"""The naming and time rules of ``ADD <url>`` (moby ``getFilenameForDownload``/``downloadSource``)."""

from __future__ import annotations

import pytest

from silobox.engine.build.remote import _check_host, _mtime, file_name
from silobox.errors import InvalidArgument, Unavailable


def test_file_name_from_the_path_then_content_disposition() -> None:
    assert file_name("/a/b/tool.tar.gz", None) == "tool.tar.gz"
    assert file_name("/a/b%20c", None) == "b c"
    assert file_name("/a/b/tool", 'attachment; filename="other"') == "tool"
    assert file_name("/dl/", 'attachment; filename="x/y.bin"') == "y.bin"
    assert file_name("/dl/", "attachment; filename*=UTF-8''caf%C3%A9.txt") == "café.txt"
    assert file_name("/", 'attachment; filename="dir/"') == ""
    assert file_name("", None) == ""


def test_mtime_from_last_modified_else_the_epoch() -> None:
    assert _mtime("Wed, 21 Oct 2015 07:28:00 GMT") == 1445412480
    assert _mtime(None) == 0 and _mtime("not a date") == 0


def test_loopback_only_and_schemes() -> None:
    _check_host("http://127.0.0.1:8080/x", True)
    _check_host("http://localhost/x", True)
    _check_host("https://[::1]/x", True)
    with pytest.raises(Unavailable, match="--registry-loopback-only"):
        _check_host("https://example.org/x", True)
    _check_host("https://example.org/x", False)   # checked only, never contacted
    with pytest.raises(InvalidArgument):
        _check_host("ftp://127.0.0.1/x", False)
