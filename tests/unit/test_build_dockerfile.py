"""The Dockerfile parser, word expansion and .dockerignore matching (no privileges needed)."""

from __future__ import annotations

import pytest

from silobox import dockerignore
from silobox.engine.build.dockerfile import DockerfileError, ShellLex, directives, parse


def test_lines_continuations_comments_and_forms() -> None:
    df = parse("# syntax=docker/dockerfile:1\nARG B=busybox\nFROM ${B} AS base\n# note\n"
               "RUN echo a \\\n  && echo b\nCMD [\"sh\", \"-c\", \"x\"]\nCOPY --chown=1:2 a* /d/\n")
    cmds = [(i.cmd, i.line, i.json) for i in df.instructions]
    assert cmds == [("ARG", 2, False), ("FROM", 3, False), ("RUN", 5, False),
                    ("CMD", 7, True), ("COPY", 8, False)]
    assert df.instructions[3].value == ["sh", "-c", "x"]
    assert df.instructions[4].flags == {"chown": "1:2"}
    assert df.directives == {"syntax": "docker/dockerfile:1"}


def test_escape_directive() -> None:
    df = parse("# escape=`\nFROM busybox\nRUN echo a `\n  b\n")
    assert df.escape == "`"
    assert df.instructions[1].line == 3
    assert directives("FROM x\n# escape=`\n") == {}


@pytest.mark.parametrize("text, message", [
    ("FROM busybox\nRUN true\nFORM x\n", "dockerfile parse error on line 3: unknown instruction: FORM"),
    ("FROM busybox\nCOPY onlyone\n", "line 2: COPY requires at least two arguments"),
    ("RUN true\n", "line 1: no build stage in current context"),
    ("", "cannot be empty"),
    ("FROM busybox\nHEALTHCHECK --interval=1s FOO x\n", "line 2: Unknown type"),
    ("FROM busybox\nSHELL sh -c\n", "line 2: SHELL requires the arguments to be in JSON form"),
    ("FROM busybox\nRUN --mount=type=cache,target=/x true\n", "line 2: the --mount flag"),
])
def test_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(DockerfileError) as e:
        parse(text)
    assert message in e.value.message


def test_word_expansion() -> None:
    lex = ShellLex()
    env = {"A": "x", "E": "", "S": "a b"}
    assert lex.process_word("$A-${A}", env) == "x-x"
    assert lex.process_word("${U:-def}/${E:-empty}/${E-set}", env) == "def/empty/"
    assert lex.process_word("${A:+alt}${U:+alt}", env) == "alt"
    assert lex.process_word("'$A' \"$A\" \\$A", env) == "$A x $A"
    assert lex.process_word('"x y"', env) == "x y"
    assert lex.process_words("80 $S", env) == ["80", "a", "b"]
    assert lex.process_words('"$S" c', env) == ["a b", "c"]
    assert ShellLex("`").process_word("`$A", env) == "$A"


def test_dockerignore_rules() -> None:
    m = dockerignore.PatternMatcher(dockerignore.parse(
        "# comment\n*.log\n/build\n!build/keep.txt\n**/tmp\ndocs/*.md\n!docs/README.md\n"))
    assert m.excluded("a.log")
    assert not m.excluded("sub/a.log")           # patterns are anchored at the context root
    assert m.excluded("build/x.o")               # a matched directory excludes its content
    assert not m.excluded("build/keep.txt")      # ... unless a later ! pattern re-includes
    assert m.excluded("a/b/tmp/c")
    assert m.excluded("tmp")
    assert m.excluded("docs/x.md") and not m.excluded("docs/README.md")
    assert not m.excluded("docs/sub/x.md")       # * does not cross /
    assert m.has_exclusions


def test_dockerignore_last_match_wins_and_cleaning() -> None:
    m = dockerignore.PatternMatcher(["!a.txt", "*.txt", "./x/../y/?.c", "[ab].md"])
    assert m.excluded("a.txt")                   # the later pattern wins
    assert m.excluded("y/z.c") and not m.excluded("y/zz.c")
    assert m.excluded("a.md") and not m.excluded("c.md")


def test_go_parser_errors_get_their_line() -> None:
    with pytest.raises(DockerfileError) as e:
        parse("FROM busybox\nRUN true\nENV ONLYKEY\n")
    assert e.value.message == "dockerfile parse error on line 3: ENV must have two arguments"


def test_merged_view_resolves_links_inside_the_image(tmp_path) -> None:
    import os
    from silobox.engine.build.rootfs import MergedView
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "usr" / "bin").mkdir(parents=True)
    (lower / "usr" / "bin" / "tool").write_text("t")
    os.symlink("usr/bin", lower / "bin")
    os.symlink("/../../../etc", lower / "escape")      # resolved against the image root
    (upper / "usr" / "bin").mkdir(parents=True)
    (upper / "usr" / "bin" / "new").write_text("n")
    view = MergedView([str(upper), str(lower)])
    assert view.resolve("bin/tool") == "usr/bin/tool"
    assert view.resolve("escape/passwd") == "etc/passwd"
    assert view.lstat("etc/passwd") is None
    assert view.listdir("usr/bin") == ["new", "tool"]
    assert sorted(rel for rel, _, _ in view.walk("usr")) == ["bin", "bin/new", "bin/tool"]
