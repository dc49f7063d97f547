"""Docker's JSON message streams as the docker CLI prints them (its ``jsonmessage``).

``build``, ``pull``, ``push``, ``load``, ``import`` and ``image bootstrap`` all answer with the
same newline-delimited messages (``status``/``id``/``progressDetail``, ``stream``, ``aux``,
``error``); one printer keeps the commands' output and error handling alike.
"""

from __future__ import annotations

import json
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs start-up time
    from typing import Any, Callable

from silobox.cli.commands import StatusError


def print_messages(resp: Any, write: Callable[[str], Any], quiet: bool = False,
                   progress: bool = True) -> str:
    """Print the stream of ``resp`` with ``write`` and return the ``aux`` image ID, if any.

    ``ID: Status`` and ``stream`` text as lines; a message with byte counts
    (``progressDetail``) only as an updating line on a terminal's stderr when ``progress`` is
    on; ``quiet`` prints nothing. An in-band error raises :class:`StatusError` once the stream
    has ended, as docker exits 1 after printing what came before it.
    """
    tty = progress and not quiet and sys.stderr.isatty()
    failed = ""
    image_id = ""
    for line in resp.iter_lines():
        try:
            msg = json.loads(line)
        except ValueError:
            if not quiet:
                write(line.decode("utf-8", "replace") + "\n")
            continue
        if msg.get("error") or msg.get("errorDetail"):
            failed = msg.get("error") or (msg.get("errorDetail") or {}).get("message", "")
            continue
        if (msg.get("aux") or {}).get("ID"):
            image_id = msg["aux"]["ID"]
            continue
        if msg.get("progressDetail"):
            if tty:
                label = f"{msg.get('id', '')}: {msg.get('status', '')}".strip(": ")
                sys.stderr.write(f"\r{label} {msg.get('progress', '')}\x1b[K")
                sys.stderr.flush()
            continue
        if msg.get("stream"):
            text = msg["stream"]
        elif msg.get("status"):
            text = f"{msg['id']}: {msg['status']}\n" if msg.get("id") else f"{msg['status']}\n"
        else:
            continue
        if tty:
            sys.stderr.write("\r\x1b[K")   # the progress line gives way to the text
        if not quiet:
            write(text)
            sys.stdout.flush()
    resp.conn.close()
    if failed:
        raise StatusError(1, failed)
    return image_id
