"""``--format`` templates: a subset of Go's text/template plus docker's table layout.

Users carry docker format strings between tools (``{{.State.Status}}``, ``table {{.ID}}\\t{{.Names}}``,
``{{json .Config.Env}}``), so the grammar, the value printing (``map[k:v]``, ``<no value>``) and the
column alignment (Go's tabwriter) follow Go's rules rather than Python's.

Supported: text, ``{{pipeline}}``, fields and chains (``.A.B``, ``$x.A``), method calls with
arguments (``.Label "k"``), string/number/bool/nil literals, parenthesised pipelines, ``|``,
variables (``$v := …``), ``if``/``else if``/``else``, ``range`` (with ``$i, $v :=``), ``with``,
comments, trim markers ``{{-`` / ``-}}``, and the functions docker adds (json, join, split, lower,
upper, title, pad, truncate) plus Go's builtins (index, len, slice, printf, print, println, eq, ne,
lt, le, gt, ge, and, or, not).
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs start-up time
    from typing import Any, Callable, Iterable


class TemplateError(Exception):
    """A format string that does not parse, or fails while executing."""


class _Missing:
    """A map key that is absent: Go prints it as ``<no value>``."""

    _inst: "_Missing | None" = None

    def __new__(cls) -> "_Missing":
        if cls._inst is None:
            cls._inst = super().__new__(cls)
        return cls._inst

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<no value>"


MISSING = _Missing()


# --------------------------------------------------------------------------- value printing

def _go_float(f: float) -> str:
    """Go's %v for float64: shortest digits, exponent form when exp < -4 or >= 6 (so 1e+06)."""
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "0"
    r = repr(f)
    sign = ""
    if r.startswith("-"):
        sign, r = "-", r[1:]
    mant, _, exp_s = r.partition("e")
    exp = int(exp_s) if exp_s else 0
    intpart, _, fracpart = mant.partition(".")
    digits = (intpart + fracpart).lstrip("0")
    point = len(intpart) + exp  # position of the decimal point in intpart+fracpart
    lead = len(intpart + fracpart) - len((intpart + fracpart).lstrip("0"))
    point -= lead
    digits = digits.rstrip("0") or "0"
    e = point - 1
    if e < -4 or e >= 6:
        m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{m}e{'-' if e < 0 else '+'}{abs(e):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def go_str(v: Any) -> str:
    """Print a value the way Go's fmt %v prints the decoded JSON (maps sorted, lists spaced)."""
    if v is MISSING:
        return "<no value>"
    if v is None:
        return "<nil>"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, dict):
        return "map[" + " ".join(f"{go_str(k)}:{go_str(v[k])}" for k in sorted(v, key=str)) + "]"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_str(x) for x in v) + "]"
    return str(v)


def _top_str(v: Any) -> str:
    """A pipeline's printed result: a nil at the top level is ``<no value>`` as in Go."""
    if v is None or v is MISSING:
        return "<no value>"
    return go_str(v)


def go_json(v: Any) -> str:
    """json.Marshal: compact, with Go's HTML escaping of ``<``, ``>`` and ``&``."""
    import json

    if hasattr(v, "to_json"):
        v = v.to_json()
    if v is MISSING:
        v = None
    out = json.dumps(v, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    return (out.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_json"):
        return o.to_json()
    raise TypeError(f"cannot encode {type(o).__name__}")


def truthy(v: Any) -> bool:
    """Go template truth: false, 0, nil and empty strings/collections are false."""
    if v is None or v is MISSING or v is False:
        return False
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v != 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0
    return True


# --------------------------------------------------------------------------- functions

def _fn_index(item: Any, *keys: Any) -> Any:
    for k in keys:
        if item is None or item is MISSING:
            raise TemplateError("index of untyped nil")
        if isinstance(item, dict):
            item = item.get(k, MISSING) if isinstance(k, str) else item.get(str(k), MISSING)
        elif isinstance(item, (list, tuple, str)):
            if not isinstance(k, int) or not 0 <= k < len(item):
                raise TemplateError(f"error calling index: index out of range: {k}")
            item = item[k]
        else:
            raise TemplateError(f"can't index item of type {type(item).__name__}")
    return item


def _fn_len(v: Any) -> int:
    try:
        return len(v)
    except TypeError:
        raise TemplateError(f"len of type {type(v).__name__}") from None


def _fn_slice(v: Any, *idx: int) -> Any:
    if len(idx) == 0:
        return v
    if len(idx) == 1:
        return v[idx[0]:]
    return v[idx[0]:idx[1]]


def _cmp_args(a: Any, b: Any) -> tuple[Any, Any]:
    if a is MISSING:
        a = None
    if b is MISSING:
        b = None
    return a, b


def _fn_eq(a: Any, *others: Any) -> bool:
    if not others:
        raise TemplateError("missing argument for comparison")
    return any(x == y for x, y in (_cmp_args(a, o) for o in others))


def _fn_ne(a: Any, b: Any) -> bool:
    x, y = _cmp_args(a, b)
    return bool(x != y)


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def fn(a: Any, b: Any) -> bool:
        try:
            return op(a, b)
        except TypeError:
            raise TemplateError("incompatible types for comparison") from None
    return fn


def _fn_and(*args: Any) -> Any:
    for a in args:
        if not truthy(a):
            return a
    return args[-1] if args else None


def _fn_or(*args: Any) -> Any:
    for a in args:
        if truthy(a):
            return a
    return args[-1] if args else None


def _fn_printf(fmt: str, *args: Any) -> str:
    out: list[str] = []
    it = iter(args)
    i = 0
    spec = re.compile(r"%([-+# 0]*)(\d*)(?:\.(\d+))?([vsdqftxXeEgGc%])")
    while i < len(fmt):
        m = spec.match(fmt, i) if fmt[i] == "%" else None
        if not m:
            out.append(fmt[i])
            i += 1
            continue
        i = m.end()
        flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        try:
            a = next(it)
        except StopIteration:
            out.append(f"%!{verb}(MISSING)")
            continue
        pyflags = flags.replace("#", "")
        w = width or ""
        p = f".{prec}" if prec is not None else ""
        if verb in "vs":
            out.append(f"%{pyflags}{w}s" % (go_str(a) if prec is None else go_str(a)[:int(prec)]))
        elif verb == "q":
            out.append(f"%{pyflags}{w}s" % go_json(go_str(a)))
        elif verb == "t":
            out.append(go_str(bool(a)))
        elif verb in "dxXc":
            try:
                n = int(a)
            except (TypeError, ValueError):
                out.append(f"%!{verb}({go_str(a)})")
                continue
            out.append(f"%{pyflags}{w}{verb}" % n)
        else:
            try:
                out.append(f"%{pyflags}{w}{p}{verb}" % float(a))
            except (TypeError, ValueError):
                out.append(f"%!{verb}({go_str(a)})")
    return "".join(out)


def _fn_pad(s: Any, left: int, right: int) -> str:
    return " " * int(left) + go_str(s) + " " * int(right)


def _fn_truncate(s: Any, n: int) -> str:
    text = go_str(s)
    return text[:int(n)]


def _fn_split(s: Any, sep: str) -> list[str]:
    text = go_str(s)
    return list(text) if sep == "" else text.split(sep)


def _fn_join(items: Any, sep: str) -> str:
    if isinstance(items, (list, tuple)):
        return sep.join(go_str(x) for x in items)
    return go_str(items)


def _fn_title(s: Any) -> str:
    return re.sub(r"(^|[^\w'])(\w)", lambda m: m.group(1) + m.group(2).upper(), go_str(s))


FUNCS: dict[str, Callable[..., Any]] = {
    "json": go_json,
    "join": _fn_join,
    "split": _fn_split,
    "lower": lambda s: go_str(s).lower(),
    "upper": lambda s: go_str(s).upper(),
    "title": _fn_title,
    "pad": _fn_pad,
    "truncate": _fn_truncate,
    "index": _fn_index,
    "len": _fn_len,
    "slice": _fn_slice,
    "printf": _fn_printf,
    "print": lambda *a: "".join(go_str(x) for x in a),
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "eq": _fn_eq,
    "ne": _fn_ne,
    "lt": _ordered(lambda a, b: a < b),
    "le": _ordered(lambda a, b: a <= b),
    "gt": _ordered(lambda a, b: a > b),
    "ge": _ordered(lambda a, b: a >= b),
    "and": _fn_and,
    "or": _fn_or,
    "not": lambda a: not truthy(a),
}

# In a table header every formatting function passes its argument through, so
# ``table {{json .Names}}`` still prints ``NAMES`` (docker's HeaderFunctions).
_HEADER_PASSTHROUGH = ("json", "join", "split", "lower", "upper", "title", "pad", "truncate")


# --------------------------------------------------------------------------- lexer

_TOKEN_PATTERN = r"""
    (?P<ws>\s+)
  | (?P<declare>:=)
  | (?P<assign>=)
  | (?P<pipe>\|)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\]|\\.)+')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F_]+|(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?))
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<variable>\$[A-Za-z0-9_]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
"""
_token_re: "re.Pattern[str] | None" = None  # compiled on first use, not at import

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a",
            "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


def _unquote(s: str) -> str:
    body = s[1:-1]

    def repl(m: re.Match[str]) -> str:
        e = m.group(1)
        if e[0] == "x":
            return chr(int(e[1:], 16))
        if e[0] in "uU":
            return chr(int(e[1:], 16))
        return _ESCAPES.get(e, e)

    return re.sub(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", repl, body)


class _Tok:
    __slots__ = ("kind", "val")

    def __init__(self, kind: str, val: str) -> None:
        self.kind, self.val = kind, val

    def __repr__(self) -> str:
        return f"{self.kind}:{self.val}"


def _lex_action(text: str) -> list[_Tok]:
    global _token_re
    if _token_re is None:
        _token_re = re.compile(_TOKEN_PATTERN, re.VERBOSE)
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _token_re.match(text, pos)
        if not m:
            raise TemplateError(f"unexpected {text[pos]!r} in command")
        kind = m.lastgroup or ""
        val = m.group()
        pos = m.end()
        if kind == "ws":
            continue
        # `$x.Field` lexes as a variable followed by a field chain; glue them.
        if kind == "field" and toks and toks[-1].kind in ("variable", "rparen") and val != "." \
                and m.start() > 0 and not text[m.start() - 1].isspace():
            toks.append(_Tok("chain", val))
            continue
        toks.append(_Tok(kind, val))
    return toks


def _split_template(src: str) -> list[tuple[str, str]]:
    """Split into ('text', …) and ('action', …) parts, applying trim markers."""
    parts: list[tuple[str, str]] = []
    pos = 0
    while True:
        start = src.find("{{", pos)
        if start < 0:
            parts.append(("text", src[pos:]))
            break
        text = src[pos:start]
        inner_start = start + 2
        if src.startswith("- ", inner_start) or src.startswith("-\t", inner_start) or \
                src.startswith("-\n", inner_start):
            text = text.rstrip(" \t\r\n")
            inner_start += 1
        parts.append(("text", text))
        stripped = src[inner_start:].lstrip(" \t\r\n")
        if stripped.startswith("/*"):
            close = src.find("*/", inner_start)
            end = src.find("}}", close) if close >= 0 else -1
        else:
            end = _find_action_end(src, inner_start)
        if end < 0:
            raise TemplateError("unclosed action")
        inner = src[inner_start:end]
        pos = end + 2
        if inner.endswith((" -", "\t-", "\n-", "\r-")):
            inner = inner[:-1]
            m = re.match(r"[ \t\r\n]*", src[pos:])
            pos += m.end() if m else 0
        if stripped.startswith("/*"):
            continue
        parts.append(("action", inner))
    return [p for p in parts if not (p[0] == "text" and p[1] == "")]


def _find_action_end(src: str, pos: int) -> int:
    """Find the closing ``}}``, skipping quoted strings that may contain braces."""
    i = pos
    while i < len(src):
        c = src[i]
        if c == '"':
            i += 1
            while i < len(src) and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
        elif c == "`":
            i = src.find("`", i + 1)
            if i < 0:
                return -1
        elif src.startswith("}}", i):
            return i
        i += 1
    return -1


# --------------------------------------------------------------------------- parser

class _Node:
    pass


class _Text(_Node):
    def __init__(self, text: str) -> None:
        self.text = text


class _Action(_Node):
    def __init__(self, pipe: "_Pipe") -> None:
        self.pipe = pipe


class _Pipe:
    def __init__(self, decl: list[str], cmds: list[list[Any]], assign: bool = False) -> None:
        self.decl, self.cmds, self.assign = decl, cmds, assign


class _Branch(_Node):
    def __init__(self, kind: str, pipe: _Pipe, body: list[_Node], other: list[_Node]) -> None:
        self.kind, self.pipe, self.body, self.other = kind, pipe, body, other


# Operand kinds inside a command
class _Field:
    def __init__(self, base: str | None, names: list[str]) -> None:
        self.base, self.names = base, names  # base None = dot, "$x" = variable


class _Lit:
    def __init__(self, value: Any) -> None:
        self.value = value


class _Ident:
    def __init__(self, name: str) -> None:
        self.name = name


class _Sub:
    def __init__(self, pipe: _Pipe, names: list[str]) -> None:
        self.pipe, self.names = pipe, names


class _Parser:
    def __init__(self, src: str) -> None:
        self.parts = _split_template(src)
        self.i = 0

    def parse(self) -> list[_Node]:
        nodes, stop = self._list(top=True)
        if stop is not None:
            raise TemplateError(f"unexpected {{{{{stop[0]}}}}}")
        return nodes

    def _list(self, top: bool = False) -> tuple[list[_Node], tuple[str, list[_Tok]] | None]:
        nodes: list[_Node] = []
        while self.i < len(self.parts):
            kind, val = self.parts[self.i]
            self.i += 1
            if kind == "text":
                nodes.append(_Text(val))
                continue
            toks = _lex_action(val)
            if not toks:
                raise TemplateError("missing value for command")
            head = toks[0]
            if head.kind == "ident" and head.val in ("end", "else"):
                return nodes, (head.val, toks[1:])
            if head.kind == "ident" and head.val in ("if", "range", "with"):
                nodes.append(self._branch(head.val, toks[1:]))
                continue
            if head.kind == "ident" and head.val in ("define", "template", "block", "break",
                                                    "continue"):
                raise TemplateError(f"{{{{{head.val}}}}} is not supported")
            nodes.append(_Action(self._pipe(toks)))
        if not top:
            raise TemplateError("unexpected EOF")
        return nodes, None

    def _branch(self, kind: str, toks: list[_Tok]) -> _Branch:
        pipe = self._pipe(toks, allow_two=(kind == "range"))
        body, stop = self._list()
        other: list[_Node] = []
        if stop is None:
            raise TemplateError("unexpected EOF")
        if stop[0] == "else":
            rest = stop[1]
            if rest and rest[0].kind == "ident" and rest[0].val in ("if", "with"):
                # `else if` / `else with` chains nest a branch that shares our {{end}}
                other = [self._branch(rest[0].val, rest[1:])]
                return _Branch(kind, pipe, body, other)
            other, stop2 = self._list()
            if stop2 is None or stop2[0] != "end":
                raise TemplateError(f"expected end; found {stop2[0] if stop2 else 'EOF'}")
        return _Branch(kind, pipe, body, other)

    def _pipe(self, toks: list[_Tok], allow_two: bool = False) -> _Pipe:
        decl: list[str] = []
        assign = False
        # variable declarations: $x := …  or  $i, $v := …
        j = 0
        while j < len(toks) and toks[j].kind == "variable":
            if j + 1 < len(toks) and toks[j + 1].kind in ("declare", "assign"):
                decl.append(toks[j].val)
                assign = toks[j + 1].kind == "assign"
                j += 2
                break
            if allow_two and j + 1 < len(toks) and toks[j + 1].kind == "comma":
                decl.append(toks[j].val)
                j += 2
                continue
            decl = []
            j = 0
            break
        if decl:
            toks = toks[j:]
        cmds: list[list[Any]] = [[]]
        k = 0
        while k < len(toks):
            t = toks[k]
            if t.kind == "pipe":
                if not cmds[-1]:
                    raise TemplateError("missing command")
                cmds.append([])
                k += 1
                continue
            operand, k = self._operand(toks, k)
            cmds[-1].append(operand)
        if not cmds[-1]:
            raise TemplateError("missing value for command")
        return _Pipe(decl, cmds, assign)

    def _operand(self, toks: list[_Tok], k: int) -> tuple[Any, int]:
        t = toks[k]
        k += 1
        names: list[str]
        if t.kind == "field":
            names = [] if t.val == "." else t.val[1:].split(".")
            return _Field(None, names), k
        if t.kind == "variable":
            names = []
            if k < len(toks) and toks[k].kind == "chain":
                names = toks[k].val[1:].split(".")
                k += 1
            return _Field(t.val, names), k
        if t.kind == "string":
            return _Lit(_unquote(t.val)), k
        if t.kind == "raw":
            return _Lit(t.val[1:-1]), k
        if t.kind == "char":
            return _Lit(ord(_unquote(t.val))), k
        if t.kind == "number":
            v = t.val.replace("_", "")
            if v.lower().startswith(("0x", "+0x", "-0x")):
                return _Lit(int(v, 16)), k
            return _Lit(float(v) if any(c in v for c in ".eE") else int(v)), k
        if t.kind == "ident":
            if t.val == "true":
                return _Lit(True), k
            if t.val == "false":
                return _Lit(False), k
            if t.val == "nil":
                return _Lit(None), k
            if t.val not in FUNCS:
                raise TemplateError(f'function "{t.val}" not defined')
            return _Ident(t.val), k
        if t.kind == "lparen":
            depth, j = 1, k
            while j < len(toks) and depth:
                if toks[j].kind == "lparen":
                    depth += 1
                elif toks[j].kind == "rparen":
                    depth -= 1
                j += 1
            if depth:
                raise TemplateError("unclosed left paren")
            pipe = self._pipe(toks[k:j - 1])
            names = []
            if j < len(toks) and toks[j].kind == "chain":
                names = toks[j].val[1:].split(".")
                j += 1
            return _Sub(pipe, names), j
        raise TemplateError(f"unexpected {t.val!r} in operand")


# --------------------------------------------------------------------------- execution

class _Exec:
    def __init__(self, funcs: dict[str, Callable[..., Any]], header: bool, root: Any) -> None:
        self.funcs = funcs
        self.header = header
        self.root = root
        self.vars: list[tuple[str, Any]] = []

    def run(self, nodes: list[_Node], dot: Any, out: list[str]) -> None:
        for n in nodes:
            if isinstance(n, _Text):
                out.append(n.text)
            elif isinstance(n, _Action):
                v = self.pipe(n.pipe, dot)
                if not n.pipe.decl:
                    out.append(_top_str(v))
            elif isinstance(n, _Branch):
                self.branch(n, dot, out)

    def branch(self, n: _Branch, dot: Any, out: list[str]) -> None:
        mark = len(self.vars)
        try:
            if n.kind == "range":
                self.range(n, dot, out)
                return
            v = self.pipe(n.pipe, dot, declare=n.kind != "range")
            if truthy(v):
                self.run(n.body, v if n.kind == "with" else dot, out)
            else:
                self.run(n.other, dot, out)
        finally:
            del self.vars[mark:]

    def range(self, n: _Branch, dot: Any, out: list[str]) -> None:
        v = self.pipe(n.pipe, dot, declare=False)
        if isinstance(v, dict):
            items: Iterable[tuple[Any, Any]] = ((k, v[k]) for k in sorted(v, key=str))
        elif isinstance(v, (list, tuple)):
            items = enumerate(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            items = ((i, i) for i in range(v))
        elif v is None or v is MISSING:
            items = iter(())
        else:
            raise TemplateError(f"range can't iterate over {go_str(v)}")
        empty = True
        for key, elem in items:
            empty = False
            mark = len(self.vars)
            if len(n.pipe.decl) == 1:
                self.vars.append((n.pipe.decl[0], elem))
            elif len(n.pipe.decl) == 2:
                self.vars.append((n.pipe.decl[0], key))
                self.vars.append((n.pipe.decl[1], elem))
            self.run(n.body, elem, out)
            del self.vars[mark:]
        if empty:
            self.run(n.other, dot, out)

    def lookup_var(self, name: str, dot: Any) -> Any:
        if name == "$":
            return self.root
        for k, v in reversed(self.vars):
            if k == name:
                return v
        raise TemplateError(f'undefined variable "{name}"')

    def pipe(self, p: _Pipe, dot: Any, declare: bool = True) -> Any:
        val: Any = MISSING
        first = True
        for cmd in p.cmds:
            val = self.command(cmd, dot, None if first else val, not first)
            first = False
        if p.decl and declare:
            if p.assign:
                for i in range(len(self.vars) - 1, -1, -1):
                    if self.vars[i][0] == p.decl[0]:
                        self.vars[i] = (p.decl[0], val)
                        break
                else:
                    raise TemplateError(f'undefined variable "{p.decl[0]}"')
            else:
                self.vars.append((p.decl[-1], val))
        return val

    def command(self, cmd: list[Any], dot: Any, prev: Any, has_prev: bool) -> Any:
        head = cmd[0]
        if isinstance(head, _Ident):
            args = [self.arg(a, dot) for a in cmd[1:]]
            if has_prev:
                args.append(prev)
            if self.header and head.name in _HEADER_PASSTHROUGH:
                return args[0] if args else ""
            try:
                return self.funcs[head.name](*args)
            except TemplateError:
                raise
            except TypeError as e:
                raise TemplateError(f"wrong number of args for {head.name}: {e}") from None
        if isinstance(head, _Field):
            args = [self.arg(a, dot) for a in cmd[1:]]
            if has_prev:
                args.append(prev)
            base = dot if head.base is None else self.lookup_var(head.base, dot)
            return self.chain(base, head.names, args, dot_expr=head.base is None)
        if len(cmd) > 1 or has_prev:
            raise TemplateError("can't give argument to non-function")
        return self.arg(head, dot)

    def arg(self, a: Any, dot: Any) -> Any:
        if isinstance(a, _Lit):
            return a.value
        if isinstance(a, _Field):
            base = dot if a.base is None else self.lookup_var(a.base, dot)
            return self.chain(base, a.names, [], dot_expr=a.base is None)
        if isinstance(a, _Sub):
            return self.chain(self.pipe(a.pipe, dot), a.names, [], dot_expr=False)
        if isinstance(a, _Ident):
            return self.funcs[a.name]()
        raise TemplateError("bad argument")

    def chain(self, value: Any, names: list[str], args: list[Any], dot_expr: bool) -> Any:
        if not names and args:
            raise TemplateError("can't give argument to non-function")
        for i, name in enumerate(names):
            last = i == len(names) - 1
            value = self.field(value, name, args if last else [])
        return value

    def field(self, obj: Any, name: str, args: list[Any]) -> Any:
        if self.header and isinstance(obj, HeaderContext):
            return obj.header(name)
        if isinstance(obj, dict):
            if args:
                raise TemplateError(f"{name} is not a method but has arguments")
            return obj.get(name, MISSING)
        if obj is None or obj is MISSING:
            raise TemplateError(f"nil pointer evaluating <nil>.{name}")
        if isinstance(obj, (str, int, float, bool, list, tuple)):
            raise TemplateError(f"can't evaluate field {name} in type {_go_type(obj)}")
        attr = getattr(obj, name, MISSING) if not name.startswith("_") else MISSING
        if attr is MISSING:
            raise TemplateError(f"can't evaluate field {name} in type {type(obj).__name__}")
        if callable(attr):
            try:
                return attr(*args)
            except TypeError as e:
                raise TemplateError(f"wrong number of args for {name}: {e}") from None
        if args:
            raise TemplateError(f"{name} has arguments but cannot be invoked as function")
        return attr


def _go_type(v: Any) -> str:
    return {str: "string", int: "int", float: "float64", bool: "bool", list: "[]interface {}",
            tuple: "[]interface {}"}.get(type(v), type(v).__name__)


class HeaderContext:
    """The value a table's header row is rendered against: each field yields its column title."""

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    def header(self, name: str) -> str:
        if name in self._headers:
            return self._headers[name]
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).upper()


class Template:
    """A parsed format string; ``execute(value)`` renders it for one value."""

    def __init__(self, src: str, funcs: dict[str, Callable[..., Any]] | None = None) -> None:
        self.src = src
        self.funcs = dict(FUNCS)
        if funcs:
            self.funcs.update(funcs)
        self.nodes = _Parser(src).parse()
        self._flat = self._flatten(self.nodes)

    @staticmethod
    def _flatten(nodes: list[_Node]) -> list[str | tuple[str]] | None:
        """Text and plain ``{{.Field}}`` actions only (``ps``'s default table): the parts to
        render without the interpreter, a field as a 1-tuple; None for anything else."""
        flat: list[str | tuple[str]] = []
        for n in nodes:
            if isinstance(n, _Text):
                flat.append(n.text)
                continue
            if not isinstance(n, _Action) or n.pipe.decl or len(n.pipe.cmds) != 1:
                return None
            cmd = n.pipe.cmds[0]
            if len(cmd) != 1 or not isinstance(cmd[0], _Field) or cmd[0].base is not None \
                    or len(cmd[0].names) != 1 or cmd[0].names[0].startswith("_"):
                return None
            flat.append((cmd[0].names[0],))
        return flat

    def _execute_flat(self, flat: list[str | tuple[str]], value: Any) -> str | None:
        """What ``execute`` returns for a flat template; None where a field needs the full
        rules (a method, a missing attribute: the interpreter calls it or reports it)."""
        out: list[str] = []
        is_dict = isinstance(value, dict)
        for part in flat:
            if isinstance(part, str):
                out.append(part)
                continue
            if is_dict:
                v = value.get(part[0], MISSING)
            else:
                v = getattr(value, part[0], MISSING)
                if v is MISSING or callable(v):
                    return None
            out.append(_top_str(v))
        return "".join(out)

    def execute(self, value: Any, header: bool = False) -> str:
        if self._flat is not None and not header and value is not None \
                and value is not MISSING and not isinstance(value, (str, int, float, list, tuple)):
            text = self._execute_flat(self._flat, value)
            if text is not None:
                return text
        ex = _Exec(self.funcs, header, value)
        out: list[str] = []
        try:
            ex.run(self.nodes, value, out)
        except RecursionError:
            raise TemplateError("template nesting too deep") from None
        return "".join(out)


# --------------------------------------------------------------------------- tabwriter

def _display_width(s: str) -> int:
    import unicodedata

    if s.isascii():
        return len(s)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 0 if unicodedata.combining(c)
               else 1 for c in s)


def tabwrite(text: str, minwidth: int = 10, tabwidth: int = 1, padding: int = 3,
             padchar: str = " ") -> str:
    """Align tab-separated cells like Go's text/tabwriter (flags 0).

    Cells are tab-terminated; the text after the last tab of a line is not part of a column.
    A column block is a run of consecutive lines that have that column, and each block is sized
    independently, which is why docker's tables and ``version`` output look the way they do.
    """
    trailing_nl = text.endswith("\n")
    lines = text.split("\n")
    if trailing_nl:
        lines = lines[:-1]
    cells = [line.split("\t") for line in lines]
    out: list[str] = []
    widths: list[int] = []

    def write_lines(a: int, b: int) -> None:
        for row in cells[a:b]:
            parts: list[str] = []
            for j, c in enumerate(row):
                if j < len(row) - 1:
                    w = widths[j] if j < len(widths) else 0
                    parts.append(c + padchar * max(0, w - _display_width(c)))
                else:
                    parts.append(c)
            out.append("".join(parts))

    def fmt(line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(cells[this]) - 1:
                this += 1
                continue
            write_lines(line0, this)
            line0 = this
            width = minwidth
            while this < line1 and column < len(cells[this]) - 1:
                w = _display_width(cells[this][column]) + padding
                if w > width:
                    width = w
                this += 1
            widths.append(width)
            fmt(line0, this)
            widths.pop()
            line0 = this
        write_lines(line0, line1)

    fmt(0, len(cells))
    return "\n".join(out) + ("\n" if trailing_nl else "")


# --------------------------------------------------------------------------- docker-style output

def render_list(fmt: str, rows: Iterable[Any], headers: dict[str, str],
                funcs: dict[str, Callable[..., Any]] | None = None) -> str:
    """Render rows with a docker ``--format``: ``table …`` gets a header and aligned columns.

    ``\\t`` and ``\\n`` written literally in the format become real tabs/newlines, and the
    ``table`` keyword is stripped, as docker's formatter.Context does.
    """
    table = fmt.startswith("table")
    body = fmt[len("table"):] if table else fmt
    body = body.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    tmpl = Template(body, funcs)
    out: list[str] = []
    for row in rows:
        out.append(tmpl.execute(row) + "\n")
    if not table:
        return "".join(out)
    head = tmpl.execute(HeaderContext(headers), header=True) + "\n"
    return tabwrite(head + "".join(out))


def render_one(fmt: str, value: Any) -> str:
    """Render a single object (inspect, version, info): plain template, newline appended."""
    return Template(fmt).execute(value) + "\n"


def ellipsis(s: str, width: int) -> str:
    """Truncate to ``width`` display columns ending in ``…`` (docker's formatter.Ellipsis)."""
    if _display_width(s) <= width:
        return s
    if width <= 0:
        return ""
    out, w = [], 0
    for c in s:
        cw = _display_width(c)
        if w + cw > width - 1:
            break
        out.append(c)
        w += cw
    return "".join(out) + "…"


def pretty_json(value: Any) -> str:
    """``inspect`` output: 4-space indented JSON with Go's HTML escaping, like docker."""
    import json

    out = json.dumps(value, indent=4, ensure_ascii=False, default=_json_default)
    return out.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
