"""A request that fills the disk failed cleanly: a 413 with its message, whatever layer raised."""

from __future__ import annotations

import errno
import json
import sqlite3

from silobox import errors
from silobox.api.errors import response_for


def _answer(exc: BaseException) -> tuple[int, str]:
    response = response_for(exc)
    return response.status, json.loads(response.body)["message"]


def test_full_disk_anywhere_in_the_chain_is_413() -> None:
    cause = OSError(errno.ENOSPC, "No space left on device")
    wrapped = errors.SystemFailure("cannot import layer: [Errno 28] No space left on device",
                                   cause=cause)
    assert _answer(wrapped) == (413, "cannot import layer: [Errno 28] No space left on device")
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as e:
            raise RuntimeError("copy failed") from e
    except RuntimeError as e:
        assert _answer(e)[0] == 413
    try:
        raise sqlite3.OperationalError("database or disk is full")
    except sqlite3.OperationalError as e:
        e.sqlite_errorcode = 13   # what sqlite3 sets for SQLITE_FULL
        assert _answer(errors.SystemFailure("metadata store error", cause=e))[0] == 413
    assert _answer(errors.InsufficientStorage("no room"))[0] == 413


def test_other_failures_keep_their_status() -> None:
    assert _answer(errors.SystemFailure("boom", cause=OSError(errno.EIO, "I/O error")))[0] == 500
    assert _answer(errors.InvalidArgument("bad"))[0] == 400
    assert errors.out_of_space(None) is None
