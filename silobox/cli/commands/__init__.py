"""Shared plumbing of the ``silo`` commands: invocation context, argument parser, exit statuses.

Each command is a function ``(ctx, argv) -> int`` that builds only its own parser, so a ``silo
run`` never pays for the option tables of forty other commands.
"""

from __future__ import annotations

import argparse
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs start-up time
    from typing import Any, Callable, Iterable, NoReturn

from silobox.cli.client import APIError, Client, ConnectError

# argparse's messages are matched by their English text (``_translate``) and docker's CLI is
# English only; argparse's gettext lookups also cost ~1.3 ms per process (an import of locale
# and a stat of every locale directory of every language in the environment).
argparse._ = str  # type: ignore[attr-defined]
argparse.ngettext = lambda singular, plural, n: singular if n == 1 else plural  # type: ignore[attr-defined]


class UsageError(Exception):
    """Bad flags or arguments: docker exits 125 and points at ``--help``."""


class StatusError(Exception):
    """End the command with this exit status, printing ``message`` (if any) to stderr."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Context:
    """What every command needs: the API client, the program name and the command path."""

    def __init__(self, host: str, debug: bool, prog: str = "silo") -> None:
        self.host = host
        self.debug = debug
        self.prog = prog
        self.cmd_path = prog
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.host, debug=self.debug)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    @staticmethod
    def out(text: str) -> None:
        sys.stdout.write(text)

    @staticmethod
    def err(text: str) -> None:
        sys.stderr.write(text)


def _translate(message: str, prog: str) -> str:
    """argparse's wording → docker's (cobra/pflag) wording."""
    if message.startswith("unrecognized arguments: "):
        arg = message.split(": ", 1)[1].split(" ")[0]
        return f"unknown flag: {arg}" if arg.startswith("-") else \
            f'"{prog}" accepts no argument(s): {arg}'
    if message.startswith("the following arguments are required"):
        return f'"{prog}" requires at least 1 argument.'
    if message.startswith("argument ") and ": expected one argument" in message:
        flag = message[len("argument "):].split(":")[0].split("/")[-1]
        return f"flag needs an argument: {flag}"
    if message.startswith("argument ") and ": invalid " in message:
        flag, _, rest = message[len("argument "):].partition(": ")
        return f'invalid argument for "{flag}" flag: {rest}'
    return message


def _help_formatter(prog: str) -> argparse.HelpFormatter:
    """An explicit width spares argparse importing shutil on every add_argument."""
    try:
        width = max(40, min(os.get_terminal_size(1).columns, 120)) - 2
    except OSError:
        width = 78
    return argparse.HelpFormatter(prog, max_help_position=32, width=width)


class CommandParser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` with docker's wording instead of exiting 2."""

    def __init__(self, prog: str, usage: str, description: str, help_short: bool = True) -> None:
        super().__init__(prog=prog, usage=f"{prog} {usage}", description=description,
                         add_help=False, allow_abbrev=False,
                         formatter_class=_help_formatter)
        flags = ("-h", "--help") if help_short else ("--help",)
        self.add_argument(*flags, action="help", help="Print usage")

    def error(self, message: str) -> NoReturn:
        raise UsageError(_translate(message, self.prog))


def parser(ctx: Context, name: str, usage: str, description: str,
           help_short: bool = True) -> CommandParser:
    """A parser for ``<cmd_path>``; also records the command path for error hints."""
    return CommandParser(ctx.cmd_path, usage, description, help_short=help_short)


def parse(p: CommandParser, argv: list[str], intermixed: bool = True) -> argparse.Namespace:
    """Parse allowing flags after positionals (``rm c1 -f``), as docker's commands do."""
    if intermixed:
        return p.parse_intermixed_args(argv)
    return p.parse_args(argv)


def for_each(ctx: Context, names: Iterable[str], action: Callable[[Client, str], Any],
             echo: bool = True, failed: list[str] | None = None) -> int:
    """Apply an action to several objects in parallel, reporting in argument order.

    Like docker: print each name that succeeded, each error on stderr, exit 1 if any failed.
    Removing twenty containers at once is a common call, so they go out concurrently.
    """
    names = list(names)
    results: list[Any] = [None] * len(names)
    if len(names) <= 1:
        for i, n in enumerate(names):
            results[i] = _attempt(action, ctx.client, n)
    else:
        import threading

        # Sixteen workers, each with one keep-alive connection, take the names in turn: a
        # thread and a connection per name cost silod an accept and a new HTTP connection
        # each (a thousand for ``rm -f $(silo ps -aq)`` at scale).
        todo = iter(range(1, len(names)))
        take = threading.Lock()

        def worker() -> None:
            c = Client(ctx.host, debug=ctx.debug)
            try:
                while True:
                    with take:
                        i = next(todo, None)
                    if i is None:
                        return
                    results[i] = _attempt(action, c, names[i])
            finally:
                c.close()

        # one request first: it starts silod if needed, so workers do not race to start it
        results[0] = _attempt(action, ctx.client, names[0])
        threads = [threading.Thread(target=worker) for _ in range(min(16, len(names) - 1))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    status = 0
    for n, r in zip(names, results):
        if isinstance(r, BaseException):
            status = 1
            if failed is not None:
                failed.append(n)
            sys.stderr.write(f"{r}\n")
        elif echo:
            sys.stdout.write(f"{r if isinstance(r, str) else n}\n")
    return status


def _attempt(action: Callable[[Client, str], Any], client: Client, name: str) -> Any:
    try:
        r = action(client, name)
        return name if r is None else r
    except (APIError, ConnectError) as e:
        return e


def short_id(value: str) -> str:
    """``sha256:0123…`` or a 64-hex id → its 12-character short form."""
    if value.startswith("sha256:"):
        value = value[len("sha256:"):]
    return value[:12]


def load_json(data: bytes | str) -> Any:
    import json

    return json.loads(data)


def inspect_objects(ctx: Context, refs: Iterable[str], path: Callable[[str], str],
                    fmt: str | None, params: dict[str, Any] | None = None) -> int:
    """docker's inspect shape: every object's JSON, as one pretty list or through a template;
    the references that fail are reported after the others, with exit status 1."""
    from silobox.cli import formatter
    from silobox.cli.client import quote

    found: list[Any] = []
    errors: list[str] = []
    for ref in refs:
        try:
            found.append(ctx.client.get(path(quote(ref)), params))
        except APIError as e:
            errors.append(str(e))
    if fmt:
        tmpl = formatter.Template(fmt)
        ctx.out("".join(tmpl.execute(o) + "\n" for o in found))
    else:
        ctx.out(formatter.pretty_json(found) + "\n")
    if errors:
        raise StatusError(1, "\n".join(errors))
    return 0


def is_full_id(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class RecordRow:
    """A row of a list view over one JSON record: missing fields show empty, full ids short."""

    def __init__(self, rec: dict[str, Any], trunc: bool = True) -> None:
        self.rec = rec
        self.trunc = trunc

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.rec.get(name, "")

    @property
    def ID(self) -> str:
        rid = str(self.rec.get("Id") or self.rec.get("ID") or "")
        return rid[:12] if self.trunc and is_full_id(rid) else rid

