"""The closed set of silobox errors, the Linux counterpart of HCS's HRESULTs.

Every layer raises one of these classes; the API layer maps each class to an HTTP status once
(``silobox.api.errors``) and the CLI maps them to exit codes. Each error carries the operation that
failed, the id of the object it concerned and the underlying cause, so a message can say exactly
what went wrong without the caller re-wrapping it.
"""

from __future__ import annotations

import errno as _errno


class SiloboxError(Exception):
    """Base class: ``message`` is what a user sees; ``operation``/``object_id``/``cause`` add context."""

    def __init__(self, message: str, *, operation: str = "", object_id: str = "",
                 cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.operation = operation
        self.object_id = object_id
        self.cause = cause

    def __str__(self) -> str:
        return self.message


class NotFound(SiloboxError):
    """The object does not exist (HCS: ErrComputeSystemDoesNotExist; Docker: 404)."""


class AlreadyExists(SiloboxError):
    """An object with that name or id exists already (Docker: 409)."""


class InvalidArgument(SiloboxError):
    """The request or document is malformed or out of range (HCS: InvalidJSON; Docker: 400)."""


class Conflict(SiloboxError):
    """The object is in a state that forbids the operation (HCS: OperationInvalidState; Docker: 409)."""


class NotRunning(Conflict):
    """The operation needs a running compute system or process, and it is not running."""


class NotModified(SiloboxError):
    """The operation asked for a state the object is already in (Docker: 304)."""


class Unauthorized(SiloboxError):
    """The credentials were refused or are missing (a registry login or pull; Docker: 401)."""


class Unavailable(SiloboxError):
    """A service or kernel feature is not available here (Docker: 503 / 500 for missing features)."""


class InsufficientStorage(SiloboxError):
    """What the request brings does not fit: the disk filled up (ENOSPC, EDQUOT, EFBIG) or a
    daemon limit was reached. The request failed cleanly and can be retried once there is room
    (Docker: a 4xx; silobox answers 413)."""


class SystemFailure(SiloboxError):
    """The kernel or a helper process failed unexpectedly (HCS: UnexpectedExit; Docker: 500)."""


ALL_ERRORS = (NotFound, AlreadyExists, InvalidArgument, Conflict, NotRunning, NotModified,
              Unauthorized, Unavailable, InsufficientStorage, SystemFailure)

NO_SPACE_ERRNOS = frozenset({_errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG})
"""The storage is full, not the daemon broken."""
_SQLITE_FULL = 13


def out_of_space(exc: BaseException | None) -> BaseException | None:
    """The error in ``exc``'s chain (``cause``, ``__cause__``, ``__context__``) that says the disk
    is full (an OSError of :data:`NO_SPACE_ERRNOS`, SQLite's SQLITE_FULL), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return exc
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
            return exc
        nxt = exc.cause if isinstance(exc, SiloboxError) else None
        exc = nxt or exc.__cause__ or exc.__context__
    return None
