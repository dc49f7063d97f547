"""Docker image references: ``[domain/]path[:tag][@digest]``, normalised the way Docker does.

Docker on Windows and on Linux share one reference grammar (the distribution ``reference``
package): ``busybox`` means ``docker.io/library/busybox:latest``. The image store keys tags by the
normalised name and shows the short ("familiar") form in ``RepoTags``, as Docker does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from silobox.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = re.compile(rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
                     r"(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_HEX64 = re.compile(r"[0-9a-f]{64}")

INVALID = "invalid reference format"


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised reference: ``domain`` is never empty, ``path`` has its library/."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The full repository name, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The short repository name Docker shows, e.g. ``busybox`` or ``quay.io/x/y``."""
        if self.domain == DEFAULT_DOMAIN:
            if self.path.startswith(OFFICIAL_REPO_PREFIX) and self.path.count("/") == 1:
                return self.path[len(OFFICIAL_REPO_PREFIX):]
            return self.path
        return self.name

    def with_default_tag(self) -> Reference:
        """``latest`` when the reference names neither a tag nor a digest."""
        if self.tag is None and self.digest is None:
            return replace(self, tag=DEFAULT_TAG)
        return self

    def familiar(self) -> str:
        """The short form, e.g. ``busybox:latest`` (what ``RepoTags`` and messages show)."""
        return self._format(self.familiar_name)

    def __str__(self) -> str:
        return self._format(self.name)

    def _format(self, name: str) -> str:
        text = name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse(text: str) -> Reference:
    """Parse and normalise ``text``; no default tag is added (see :func:`parse_tagged`).

    Raises InvalidArgument with Docker's wording ("invalid reference format…").
    """
    if not text:
        raise InvalidArgument(INVALID, operation="storage::Reference::Parse", object_id=text)
    if _HEX64.fullmatch(text):
        raise InvalidArgument(f"invalid repository name ({text}), cannot specify 64-byte "
                              "hexadecimal strings",
                              operation="storage::Reference::Parse", object_id=text)
    remainder, _, digest = text.partition("@")
    if "@" in text and not _DIGEST.fullmatch(digest):
        raise _invalid(text)
    tag: str | None = None
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        remainder, tag = remainder[:colon], remainder[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise _invalid(text)
    domain, path = _split_domain(remainder)
    if not _DOMAIN.fullmatch(domain):
        raise _invalid(text)
    if path.lower() != path:
        raise InvalidArgument(f"{INVALID}: repository name ({path}) must be lowercase",
                              operation="storage::Reference::Parse", object_id=text)
    if not path or not all(_PATH_COMPONENT.fullmatch(c) for c in path.split("/")):
        raise _invalid(text)
    if len(domain) + 1 + len(path) > NAME_TOTAL_MAX:
        raise InvalidArgument(f"{INVALID}: repository name must not be more than "
                              f"{NAME_TOTAL_MAX} characters",
                              operation="storage::Reference::Parse", object_id=text)
    return Reference(domain, path, tag, digest or None)


parse_reference = parse
"""The same parser under the name :mod:`silobox.storage` exports it by."""


def parse_tagged(text: str) -> Reference:
    """Parse ``text`` and add the default ``latest`` tag when it names no tag and no digest."""
    return parse(text).with_default_tag()


def is_digest(text: str) -> bool:
    """True for ``algorithm:hex`` strings such as ``sha256:…`` (an image id or a repo digest)."""
    return bool(_DIGEST.fullmatch(text))


def _split_domain(name: str) -> tuple[str, str]:
    """Split off the registry the way Docker does: a first component is a domain if it has a dot
    or a port, is ``localhost``, or has an upper-case letter (paths never do)."""
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def _invalid(text: str) -> InvalidArgument:
    return InvalidArgument(INVALID, operation="storage::Reference::Parse", object_id=text)
