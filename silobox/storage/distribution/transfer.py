"""What a pull and a push share: one registry session for one repository, the stores a
transfer reads or writes, and Docker's JSON progress messages.

``Puller`` and ``Pusher`` are the two directions of the same transfer; keeping their session
state and their progress format in one base keeps the messages the docker CLI parses identical
in both directions.
"""

from __future__ import annotations

from typing import Any, Callable

from silobox.storage.distribution.metadata import BlobMetadata
from silobox.storage.distribution.registry import RegistryClient
from silobox.storage.images import ImageStore
from silobox.storage.layers import LayerStore
from silobox.storage.reference import Reference

Progress = Callable[[dict[str, Any]], None]
CHUNK = 1 << 20                # bytes read or sent at a time
REPORT_EVERY = 512 * 1024      # bytes between two progress messages of one blob


class RegistryTransfer:
    """One transfer between the local stores and one repository of one registry session;
    ``scopes`` are the token scopes every request of the transfer asks for."""

    def __init__(self, client: RegistryClient, ref: Reference, layers: LayerStore,
                 images: ImageStore, metadata: BlobMetadata, tmp_root: str, progress: Progress,
                 concurrency: int, scopes: tuple[str, ...]) -> None:
        self.client = client
        self.ref = ref
        self.layers = layers
        self.images = images
        self.metadata = metadata
        self.tmp_root = tmp_root
        self.progress = progress
        self.concurrency = concurrency
        self.scopes = scopes

    def _say(self, status: str, ident: str | None = None, **detail: int) -> None:
        """One progress message as ``docker pull``/``push`` print it: a status, and for a
        layer its short id and ``progressDetail`` (current/total bytes)."""
        msg: dict[str, Any] = {"status": status}
        if ident is not None:
            msg["progressDetail"] = dict(detail)
            msg["id"] = ident
        self.progress(msg)
