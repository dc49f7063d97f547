"""The --format template subset and docker's table layout (pure functions, no daemon)."""

from __future__ import annotations

import pytest

from silobox.cli.formatter import (MISSING, Template, TemplateError, ellipsis, go_json, go_str,
                                   pretty_json, render_list, tabwrite)

DOC = {
    "Id": "4f1c0a2b9d8e" + "0" * 52,
    "Name": "/web",
    "State": {"Status": "running", "Pid": 42, "Running": True, "ExitCode": 0},
    "Config": {"Env": ["PATH=/bin", "A=<x>&"], "Labels": {"b": "2", "a": "1"}, "Cmd": None},
    "HostConfig": {"Memory": 33554432, "NanoCpus": 500000000},
    "Mounts": [],
}


def ex(fmt: str, value=DOC) -> str:
    return Template(fmt).execute(value)


@pytest.mark.parametrize("fmt,expected", [
    ("{{.Id}}", DOC["Id"]),
    ("{{.State.Status}}", "running"),
    ("{{.State.Pid}}", "42"),
    ("{{.State.Running}}", "true"),
    ("{{.HostConfig.Memory}}", "33554432"),
    ("{{json .Config.Env}}", '["PATH=/bin","A=\\u003cx\\u003e\\u0026"]'),
    ("{{json .Config.Cmd}}", "null"),
    ("{{json .Mounts}}", "[]"),
    ("{{.Config.Labels}}", "map[a:1 b:2]"),
    ("{{.Config.Env}}", "[PATH=/bin A=<x>&]"),
    ('{{index .Config.Labels "b"}}', "2"),
    ("{{index .Config.Env 1}}", "A=<x>&"),
    ("{{.Nope}}", "<no value>"),
    ("{{.Config.Cmd}}", "<no value>"),
    ("id={{.Id | printf \"%.5s\"}}", "id=4f1c0"),
    ("{{upper .State.Status}} {{lower \"ABC\"}}", "RUNNING abc"),
    ("{{range .Config.Env}}[{{.}}]{{end}}", "[PATH=/bin][A=<x>&]"),
    ("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}", "a=1;b=2;"),
    ("{{range $i, $e := .Config.Env}}{{$i}}{{end}}", "01"),
    ("{{range .Mounts}}m{{else}}none{{end}}", "none"),
    ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
    ('{{if eq .State.Status "exited"}}E{{else if eq .State.Status "running"}}R{{else}}?{{end}}',
     "R"),
    ("{{if and .State.Running (eq .State.ExitCode 0)}}ok{{end}}", "ok"),
    ("{{if not .Mounts}}empty{{end}}", "empty"),
    ("{{with .State}}{{.Pid}}{{end}}", "42"),
    ("{{with .Nope}}x{{else}}y{{end}}", "y"),
    ("{{$n := .Name}}{{$n}}", "/web"),
    ("{{len .Config.Env}}", "2"),
    ('{{join .Config.Env ","}}', "PATH=/bin,A=<x>&"),
    ('{{split "a:b" ":"}}', "[a b]"),
    ("{{title \"hello world\"}}", "Hello World"),
    ('{{pad "x" 1 2}}|', " x  |"),
    ('{{truncate "abcdef" 3}}', "abc"),
    ("a {{- .State.Pid -}} b", "a42b"),
    ("{{/* a comment */}}x", "x"),
    ("{{(index .Config.Env 0)}}", "PATH=/bin"),
    ("{{$.State.Pid}}", "42"),
    ("{{with .State}}{{$.Name}}{{end}}", "/web"),
    ('{{print "a" 1 true}}', "a1true"),
    ('{{printf "%s-%d-%v" "x" 3 .State.Running}}', "x-3-true"),
    ('{{"quoted \\"}}\\""}}', 'quoted "}}"'),
    ("{{`raw`}}", "raw"),
])
def test_template(fmt: str, expected: str) -> None:
    assert ex(fmt) == expected


def test_json_of_whole_object_is_compact_and_ordered() -> None:
    out = ex("{{json .State}}")
    assert out == '{"Status":"running","Pid":42,"Running":true,"ExitCode":0}'


@pytest.mark.parametrize("fmt", ["{{.Id", "{{if .X}}", "{{end}}", "{{nosuchfunc .Id}}",
                                 "{{else}}", "{{.Id | }}"])
def test_parse_errors(fmt: str) -> None:
    with pytest.raises(TemplateError):
        Template(fmt)


def test_execution_errors() -> None:
    with pytest.raises(TemplateError):
        ex("{{.State.Status.Foo}}")
    with pytest.raises(TemplateError):
        ex("{{index .Config.Env 5}}")


def test_methods_with_arguments() -> None:
    class Row:
        ID = "abc"

        def Label(self, name: str) -> str:
            return {"com.x": "y"}.get(name, "")

    assert Template('{{.ID}} {{.Label "com.x"}}').execute(Row()) == "abc y"


@pytest.mark.parametrize("value,expected", [
    (1e6, "1e+06"), (100.0, "100"), (0.5, "0.5"), (123456789.0, "1.23456789e+08"),
    (0.0001, "0.0001"), (0.00001, "1e-05"), (-2.5, "-2.5"), (3.0, "3"), (0.0, "0"),
    (None, "<nil>"), (MISSING, "<no value>"), ([1, "a"], "[1 a]"), ({}, "map[]"),
])
def test_go_str(value, expected: str) -> None:
    assert go_str(value) == expected


def test_go_json_escapes_html() -> None:
    assert go_json({"a": "<&>"}) == '{"a":"\\u003c\\u0026\\u003e"}'


def test_tabwrite_matches_go_tabwriter() -> None:
    text = "CONTAINER ID\tIMAGE\tNAMES\nabc\tbusybox\tx\nabcdef0123456789\tb\ty\n"
    assert tabwrite(text) == (
        "CONTAINER ID       IMAGE     NAMES\n"
        "abc                busybox   x\n"
        "abcdef0123456789   b         y\n")


def test_tabwrite_column_blocks_are_independent() -> None:
    # lines without a tab end a column block: each block is sized on its own
    text = "Client:\n Version:\t1\n\nServer:\n Engine:\n  Very long label here:\t2\n"
    out = tabwrite(text, minwidth=20, padding=1)
    assert out.splitlines() == ["Client:", " Version:           1", "", "Server:", " Engine:",
                                "  Very long label here: 2"]


def test_render_list_table_header_and_escapes() -> None:
    class Row:
        def __init__(self, i: str, n: str) -> None:
            self.ID, self.Names = i, n

    rows = [Row("abc", "web"), Row("def", "db")]
    out = render_list("table {{.ID}}\\t{{.Names}}", rows, {"ID": "CONTAINER ID", "Names": "NAMES"})
    assert out == "CONTAINER ID   NAMES\nabc            web\ndef            db\n"
    # header functions pass the title through; unknown fields get an upper-cased title
    out = render_list("table {{json .Names}}\t{{.RunningFor}}", [], {"Names": "NAMES"})
    assert out == "NAMES     RUNNING FOR\n"
    # no table keyword: no header, no alignment
    assert render_list("{{.ID}}:{{.Names}}", rows, {}) == "abc:web\ndef:db\n"


def test_render_list_empty_table_prints_header_only() -> None:
    out = render_list("table {{.ID}}\t{{.Image}}", [], {"ID": "CONTAINER ID", "Image": "IMAGE"})
    assert out == "CONTAINER ID   IMAGE\n"


def test_ellipsis() -> None:
    assert ellipsis("short", 20) == "short"
    assert ellipsis("sh -c 'while true; do sleep 1; done'", 20) == "sh -c 'while true; …"
    assert len(ellipsis("x" * 30, 20)) == 20


def test_pretty_json_is_docker_shaped() -> None:
    assert pretty_json([{"Id": "a", "Args": [], "X": {}}]) == (
        '[\n    {\n        "Id": "a",\n        "Args": [],\n        "X": {}\n    }\n]')
    assert pretty_json([]) == "[]"
