"""Dockerfile parsing and word expansion, as Docker's classic builder does them.

The syntax itself (line continuations, comments, the ``escape`` directive, JSON versus shell
form, flags) is parsed by the ``dockerfile`` package, which wraps moby/buildkit's own Go parser,
so silobox reads a Dockerfile exactly as dockerd does. This module adds what the builder needs on
top: the parser directives, the check of each instruction's arguments (with errors naming the
line), and :class:`ShellLex`, moby's ``shell.Lex``: quote removal and ``$VAR``, ``${VAR}``,
``${VAR:-word}``, ``${VAR:+word}``, ``${VAR:?msg}`` substitution over ENV and ARG values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from silobox.errors import InvalidArgument

INSTRUCTIONS = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
                "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER",
                "VOLUME", "WORKDIR")
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_KNOWN_DIRECTIVES = ("syntax", "escape", "check")
_FLAGS = {"ADD": ("chown", "chmod", "checksum", "link", "keep-git-dir"),
          "COPY": ("chown", "chmod", "from", "link", "parents", "exclude"),
          "FROM": ("platform",),
          "RUN": ("mount", "network", "security"),
          "HEALTHCHECK": ("interval", "timeout", "start-period", "start-interval", "retries")}
# Flags the classic builder accepts and silobox applies; others are refused by name.
_SUPPORTED_FLAGS = {"ADD": ("chown", "chmod"), "COPY": ("chown", "chmod", "from"),
                    "FROM": ("platform",),
                    "HEALTHCHECK": ("interval", "timeout", "start-period", "start-interval",
                                    "retries")}


class DockerfileError(InvalidArgument):
    """A Dockerfile that cannot be built; the message names the line, as Docker's does."""


class ExpansionError(InvalidArgument):
    """A word that cannot be expanded (an unclosed quote, ``${VAR:?message}`` of an unset VAR)."""


def line_error(line: int, message: str) -> DockerfileError:
    return DockerfileError(f"dockerfile parse error on line {line}: {message}")


@dataclass
class Instruction:
    """One instruction: ``cmd`` upper-case, ``value`` its arguments as the parser split them."""

    cmd: str
    line: int
    original: str
    value: list[str]
    flags: dict[str, str] = field(default_factory=dict)
    json: bool = False
    trigger: "Instruction | None" = None   # the instruction of an ONBUILD

    def flag(self, name: str) -> str | None:
        return self.flags.get(name)


@dataclass
class Dockerfile:
    instructions: list[Instruction]
    escape: str = "\\"
    directives: dict[str, str] = field(default_factory=dict)


def directives(text: str) -> dict[str, str]:
    """Parser directives: ``# key=value`` lines at the very top, before anything else."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = _DIRECTIVE.match(line.strip())
        if not m:
            break
        key = m.group(1).lower()
        if key not in _KNOWN_DIRECTIVES or key in found:
            break
        found[key] = m.group(2)
    return found


def _flags(cmd: str, raw: tuple[str, ...], line: int) -> dict[str, str]:
    out: dict[str, str] = {}
    allowed = _FLAGS.get(cmd, ())
    for item in raw:
        if not item.startswith("--"):
            raise line_error(line, f"invalid flag {item!r}")
        name, eq, value = item[2:].partition("=")
        if name not in allowed:
            raise line_error(line, f"unknown flag: {name}")
        if name not in _SUPPORTED_FLAGS.get(cmd, ()):
            raise line_error(line, f"the --{name} flag of {cmd} needs BuildKit, which silobox's "
                                   "classic builder does not implement")
        if not eq and name != "link":
            raise line_error(line, f"missing a value on flag: {name}")
        out[name] = value
    return out


def _instruction(cmd: object, line_offset: int = 0) -> Instruction:
    name = cmd.cmd.upper()  # type: ignore[attr-defined]
    line = cmd.start_line   # type: ignore[attr-defined]
    if name not in INSTRUCTIONS:
        raise line_error(line, f"unknown instruction: {cmd.cmd}")  # type: ignore[attr-defined]
    if cmd.heredocs:   # type: ignore[attr-defined]
        raise line_error(line, "heredocs need BuildKit, which silobox's classic builder does "
                               "not implement")
    inst = Instruction(cmd=name, line=line, original=cmd.original,  # type: ignore[attr-defined]
                       value=list(cmd.value), json=bool(cmd.json),  # type: ignore[attr-defined]
                       flags=_flags(name, tuple(cmd.flags), line))  # type: ignore[attr-defined]
    if name == "ONBUILD":
        sub = (cmd.sub_cmd or "").upper()   # type: ignore[attr-defined]
        if not sub:
            raise line_error(line, "ONBUILD requires at least one argument")
        if sub in ("ONBUILD", "FROM", "MAINTAINER"):
            raise line_error(line, f"{sub} isn't allowed as an ONBUILD trigger")
        if sub not in INSTRUCTIONS:
            raise line_error(line, f"unknown instruction: {cmd.sub_cmd}")  # type: ignore
        trigger_text = cmd.original.split(None, 1)[1] if " " in cmd.original else ""  # type: ignore
        inst.trigger = Instruction(cmd=sub, line=line, original=trigger_text,
                                   value=list(cmd.value), json=bool(cmd.json))  # type: ignore
    _check_arguments(inst)
    return inst


def _check_arguments(inst: Instruction) -> None:
    """moby ``instructions.Parse``'s argument checks, with its messages."""
    name, value = inst.cmd, [v for v in inst.value if v != ""] if not inst.json else inst.value
    if name in ("ADD", "COPY"):
        if len(value) < 2:
            raise line_error(inst.line, f"{name} requires at least two arguments, but only "
                                        f"{'one was' if value else 'none were'} provided. "
                                        "Destination could not be determined.")
    elif name == "FROM":
        if len(value) not in (1, 3) or (len(value) == 3 and value[1].upper() != "AS"):
            raise line_error(inst.line, "FROM requires either one or three arguments")
    elif name in ("ENV", "LABEL"):
        if not value:
            raise line_error(inst.line, f"{name} requires at least one argument")
        if len(value) % 2:
            raise line_error(inst.line, f"{name} must have two arguments")
    elif name in ("ARG",):
        if len(value) != 1:
            raise line_error(inst.line, "ARG requires exactly one argument")
    elif name in ("WORKDIR", "USER", "STOPSIGNAL", "MAINTAINER"):
        if len(value) != 1 and not (name == "MAINTAINER" and value):
            raise line_error(inst.line, f"{name} requires exactly one argument")
    elif name in ("EXPOSE", "VOLUME", "RUN", "SHELL"):
        if not value:
            raise line_error(inst.line, f"{name} requires at least one argument")
        if name == "SHELL" and not inst.json:
            raise line_error(inst.line, "SHELL requires the arguments to be in JSON form")
    elif name == "HEALTHCHECK":
        if not value:
            raise line_error(inst.line, "HEALTHCHECK requires an argument")
        kind = value[0].upper()
        if kind not in ("CMD", "NONE"):
            raise line_error(inst.line, 'Unknown type "' + value[0] + '" in HEALTHCHECK '
                                        '(try CMD)')
        if kind == "NONE" and (len(value) > 1 or inst.flags):
            raise line_error(inst.line, "HEALTHCHECK NONE takes no arguments")
        if kind == "CMD" and len(value) < 2:
            raise line_error(inst.line, "Missing command after HEALTHCHECK CMD")


def _error_line(text: str, message: str) -> int:
    """The line a parser error belongs to (the Go parser does not say): the first prefix of
    the file that fails with the same message ends there."""
    import dockerfile as goparser
    lines = text.splitlines()
    for n in range(1, len(lines) + 1):
        try:
            goparser.parse_string("\n".join(lines[:n]) + "\n")
        except goparser.GoParseError as e:
            if str(e) == message:
                return n
    return 0


def parse(text: str, name: str = "Dockerfile") -> Dockerfile:
    """Parse a Dockerfile; DockerfileError (naming the line) for anything the builder refuses."""
    import dockerfile as goparser

    if not text.strip():
        raise DockerfileError(f"the Dockerfile ({name}) cannot be empty")
    found = directives(text)
    escape = found.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise DockerfileError(f"invalid escape token '{escape}' does not match ` or \\")
    try:
        parsed = goparser.parse_string(text)
    except goparser.GoParseError as e:
        line = _error_line(text, str(e))
        if line:
            raise line_error(line, str(e)) from e
        raise DockerfileError(f"dockerfile parse error: {e}") from e
    instructions = [_instruction(cmd) for cmd in parsed]
    if not instructions:
        raise DockerfileError(f"the Dockerfile ({name}) cannot be empty")
    seen_from = False
    for inst in instructions:
        if inst.cmd == "FROM":
            seen_from = True
        elif not seen_from and inst.cmd != "ARG":
            raise line_error(inst.line, "no build stage in current context")
    if not seen_from:
        raise DockerfileError("no build stage in current context")
    return Dockerfile(instructions, escape, found)


# -- word expansion -------------------------------------------------------------------------


class ShellLex:
    """moby ``shell.Lex``: quote removal and variable substitution over one word."""

    def __init__(self, escape: str = "\\") -> None:
        self.escape = escape

    def process_word(self, word: str, env: dict[str, str]) -> str:
        text, _ = self._process(word, env, split=False)
        return text

    def process_words(self, word: str, env: dict[str, str]) -> list[str]:
        """Expand, then split on unquoted blanks (EXPOSE, VOLUME in shell form, ...)."""
        _, words = self._process(word, env, split=True)
        return words

    def _process(self, word: str, env: dict[str, str], split: bool) -> tuple[str, list[str]]:
        self._src = word
        self._pos = 0
        self._env = env
        words: list[str] = []
        current: list[str] = []
        in_word = False
        out = []
        while self._pos < len(self._src):
            ch = self._src[self._pos]
            if split and ch in " \t\r\n":
                if in_word:
                    words.append("".join(current))
                    current = []
                    in_word = False
                out.append(ch)
                self._pos += 1
                continue
            piece, expanded = self._token(stop="")
            if split and expanded:
                # unquoted expansions are split into words too
                parts = re.split(r"[ \t\r\n]+", piece)
                for i, part in enumerate(parts):
                    if i:
                        if in_word:
                            words.append("".join(current))
                        current = []
                        in_word = False
                    if part:
                        current.append(part)
                        in_word = True
            else:
                current.append(piece)
                in_word = True
            out.append(piece)
        if in_word:
            words.append("".join(current))
        return "".join(out), words

    def _token(self, stop: str) -> tuple[str, bool]:
        """One lexical piece: (its text, whether it came from an unquoted expansion)."""
        ch = self._src[self._pos]
        if ch == self.escape:
            self._pos += 1
            if self._pos >= len(self._src):
                return ch, False
            nxt = self._src[self._pos]
            self._pos += 1
            return nxt, False
        if ch == "'":
            return self._single_quoted(), False
        if ch == '"':
            return self._double_quoted(), False
        if ch == "$":
            return self._dollar(), True
        self._pos += 1
        return ch, False

    def _single_quoted(self) -> str:
        end = self._src.find("'", self._pos + 1)
        if end < 0:
            raise ExpansionError("unexpected end of statement while looking for matching single-"
                                  "quote")
        text = self._src[self._pos + 1:end]
        self._pos = end + 1
        return text

    def _double_quoted(self) -> str:
        self._pos += 1
        out = []
        while True:
            if self._pos >= len(self._src):
                raise ExpansionError("unexpected end of statement while looking for matching "
                                      "double-quote")
            ch = self._src[self._pos]
            if ch == '"':
                self._pos += 1
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
                continue
            if ch == self.escape and self._pos + 1 < len(self._src):
                nxt = self._src[self._pos + 1]
                if nxt in ('"', "$", self.escape):
                    out.append(nxt)
                    self._pos += 2
                    continue
            out.append(ch)
            self._pos += 1

    def _name(self) -> str:
        start = self._pos
        while self._pos < len(self._src) and (self._src[self._pos].isalnum()
                                              or self._src[self._pos] == "_"):
            self._pos += 1
        return self._src[start:self._pos]

    def _dollar(self) -> str:
        self._pos += 1   # the '$'
        if self._pos >= len(self._src):
            return "$"
        if self._src[self._pos] != "{":
            name = self._name()
            if not name:
                return "$"
            return self._env.get(name, "")
        self._pos += 1   # the '{'
        name = self._name()
        if not name:
            raise ExpansionError(f"missing ':' or a variable name in {self._src!r}")
        if self._pos >= len(self._src):
            raise ExpansionError(f"missing '}}' in {self._src!r}")
        ch = self._src[self._pos]
        if ch == "}":
            self._pos += 1
            return self._env.get(name, "")
        colon = ch == ":"
        if colon:
            self._pos += 1
            if self._pos >= len(self._src):
                raise ExpansionError(f"missing '}}' in {self._src!r}")
        op = self._src[self._pos]
        if op not in "-+?":
            raise ExpansionError(f"unsupported modifier ({op}) in substitution of {self._src!r}")
        self._pos += 1
        word = self._until_brace()
        value = self._env.get(name)
        is_set = value is not None and (value != "" or not colon)
        if op == "-":
            return value if is_set else word   # type: ignore[return-value]
        if op == "+":
            return word if is_set else ""
        if not is_set:
            raise ExpansionError(f"{name}: {word or 'is not allowed to be unset'}")
        return value   # type: ignore[return-value]

    def _until_brace(self) -> str:
        out = []
        while True:
            if self._pos >= len(self._src):
                raise ExpansionError(f"missing '}}' in {self._src!r}")
            ch = self._src[self._pos]
            if ch == "}":
                self._pos += 1
                return "".join(out)
            piece, _ = self._token(stop="}")
            out.append(piece)
