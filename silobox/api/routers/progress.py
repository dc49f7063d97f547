"""Long operations (pull, push, import, load, bootstrap) streamed as Docker's progress JSON."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

from aiohttp import web

from silobox.api.routers import no_content
from silobox.errors import SiloboxError


async def progress_stream(request: web.Request,
                           run: Callable[[Callable[[dict[str, Any]], None]],
                                         Awaitable[list[dict[str, Any]]]]
                           ) -> web.StreamResponse:
    """Run a long operation, streaming its progress as Docker's JSON messages.

    The 200 is sent with the first message; an error before any message keeps its HTTP status,
    an error after it is reported in-band (``errorDetail``), as Docker does.
    """
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    response: web.StreamResponse | None = None

    async def send(doc: dict[str, Any]) -> None:
        nonlocal response
        if response is None:
            response = web.StreamResponse(status=200,
                                          headers={"Content-Type": "application/json"})
            await response.prepare(request)
        await response.write((json.dumps(doc, separators=(",", ":")) + "\r\n").encode())

    task = asyncio.ensure_future(run(queue.put_nowait))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while True:
            doc = await queue.get()
            if doc is None:
                break
            detail = doc.get("progressDetail") or {}
            if detail.get("total"):
                doc = {**doc, "progress": _bar(detail["current"], detail["total"])}
            await send(doc)
        try:
            final = await task
        except SiloboxError as e:
            if response is None:
                raise
            await send({"errorDetail": {"message": e.message}, "error": e.message})
            final = []
        for doc in final:
            await send(doc)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if response is None:
        return no_content()
    await response.write_eof()
    return response


def _bar(current: int, total: int) -> str:
    """Docker's progress bar text: ``[=====>     ]  1.2MB/5MB``."""
    width = 50
    filled = min(width, int(width * current / total)) if total else 0
    bar = "=" * filled + (">" if filled < width else "") + " " * max(0, width - filled - 1)
    return f"[{bar}] {_human(current)}/{_human(total)}"


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.4g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}B"
