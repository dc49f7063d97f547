""".dockerignore patterns with Docker's rules (moby ``patternmatcher``), stdlib only.

Shared by the ``silo build`` CLI (which, like the docker CLI, leaves ignored files out of the
context it sends) and the engine's builder (which applies the same rules to a context sent by a
client that did not). Rules:

* one pattern per line; ``#`` starts a comment line; surrounding blanks are ignored;
* patterns are cleaned like Go's ``filepath.Clean`` and a leading ``/`` is dropped, so they are
  always relative to the context root (no basename matching as in ``.gitignore``);
* ``*`` matches within one path element, ``?`` one character, ``[...]`` a class, ``\\`` escapes,
  ``**`` any number of elements;
* a pattern matching a directory excludes everything below it;
* ``!pattern`` re-includes what an earlier pattern excluded; the last matching pattern wins.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass


def clean(path: str) -> str:
    """Go's ``filepath.Clean`` for relative context paths: ``./a//b/../c`` → ``a/c``."""
    out = posixpath.normpath(path) if path else "."
    if out.startswith("//"):
        out = "/" + out.lstrip("/")
    return out


@dataclass(frozen=True)
class Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern[str]

    def match(self, path: str) -> bool:
        return self.regex.fullmatch(path) is not None


def _compile(pattern: str) -> re.Pattern[str]:
    """moby ``Pattern.compile``: the pattern as an anchored regular expression."""
    out = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 1   # "**": any number of path elements
                if i + 1 < n and pattern[i + 1] == "/":
                    i += 1
                    out.append("(.*/)?" if i + 1 < n else ".*")
                else:
                    out.append(".*")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i + 1 >= n:
                raise ValueError(f"invalid .dockerignore pattern {pattern!r}: trailing escape")
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            end = pattern.find("]", i + 2 if i + 1 < n and pattern[i + 1] in "!^" else i + 1)
            if end < 0:
                raise ValueError(f"invalid .dockerignore pattern {pattern!r}: unclosed '['")
            body = pattern[i + 1:end]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def parse(text: str) -> list[str]:
    """The patterns of a ``.dockerignore`` file, in order (moby ``ignorefile.ReadAll``)."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        if line:
            line = clean(line)
            if line.startswith("/"):
                line = line.lstrip("/") or "."
        if exclusion:
            line = "!" + line
        patterns.append(line)
    return patterns


class PatternMatcher:
    """Decides whether a context path is excluded by a list of patterns."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns: list[Pattern] = []
        for text in patterns:
            text = text.strip()
            if not text:
                continue
            exclusion = text.startswith("!")
            body = clean(text[1:] if exclusion else text)
            if exclusion and len(body) == 0:
                raise ValueError('illegal exclusion pattern: "!"')
            self.patterns.append(Pattern(text, exclusion, _compile(body)))

    @property
    def has_exclusions(self) -> bool:
        """True if some ``!`` pattern may re-include a file under an excluded directory, so a
        walk cannot skip excluded directories wholesale."""
        return any(p.exclusion for p in self.patterns)

    def excluded(self, path: str) -> bool:
        """moby ``MatchesOrParentMatches``: the last pattern matching ``path`` or one of its
        parent directories decides."""
        path = clean(path)
        parents = path.split("/")[:-1]
        matched = False
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue
            hit = pattern.match(path)
            if not hit:
                for i in range(len(parents)):
                    if pattern.match("/".join(parents[:i + 1])):
                        hit = True
                        break
            if hit:
                matched = not pattern.exclusion
        return matched
