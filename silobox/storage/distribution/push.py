"""``docker push``: layers as gzip blobs, the config, then a schema 2 manifest per tag.

For each layer the registry is first asked whether it has a blob the layer was recorded as
(``HEAD``), then asked to mount such a blob from another repository of the same registry;
only then is the layer exported (byte-exact, from its tar-split record), gzip-compressed
deterministically (no name, mtime 0) and uploaded: ``POST`` an upload session, ``PATCH`` the
bytes, ``PUT ?digest=`` to commit. The compressed digest is recorded per layer, registry and
repository (``metadata.BlobMetadata``), so repeated pushes name the same blobs and manifest.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from silobox.errors import Conflict, SystemFailure
from silobox.storage.distribution import manifest as mf
from silobox.storage.distribution.metadata import BlobMetadata, BlobSource
from silobox.storage.distribution.registry import RegistryClient, repository_scope
from silobox.storage.distribution.transfer import (CHUNK, REPORT_EVERY, Progress,
                                                   RegistryTransfer)
from silobox.storage.images import Image, ImageStore
from silobox.storage.layers import LayerStore
from silobox.storage.reference import Reference



@dataclass(frozen=True)
class PushResult:
    tag: str
    digest: str
    size: int


class Pusher(RegistryTransfer):
    """Pushes images to one repository (``ref`` without tag) through one registry session."""

    def __init__(self, client: RegistryClient, ref: Reference, layers: LayerStore,
                 images: ImageStore, metadata: BlobMetadata, tmp_root: str, progress: Progress,
                 concurrency: int = 3) -> None:
        super().__init__(client, ref, layers, images, metadata, tmp_root, progress,
                         concurrency, (repository_scope(ref.path, "pull", "push"),))
        self.base = f"/v2/{ref.path}"

    async def push(self, image: Image, tag: str) -> PushResult:
        diff_ids = list(dict.fromkeys(image.diff_ids))
        for diff_id in diff_ids:
            if self.layers.tar_size(diff_id) is None:
                raise Conflict(f"layer {diff_id} of {image.short_id} cannot be pushed: its tar "
                               "cannot be reproduced byte for byte (it names a file twice, or "
                               "was stored without a tar-split record), so its digest would "
                               "not match the image config")
        for diff_id in reversed(diff_ids):
            self._say("Preparing", _short(diff_id))
        slots = asyncio.Semaphore(self.concurrency)
        tmp = os.path.join(self.tmp_root, f"push-{uuid.uuid4().hex}")
        os.makedirs(tmp, mode=0o700)
        try:
            tasks = [asyncio.ensure_future(self._layer(d, slots, tmp)) for d in reversed(diff_ids)]
            try:
                pushed = dict(zip(reversed(diff_ids), await asyncio.gather(*tasks)))
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        config_raw = self.images.raw_config(image.id)
        config = mf.Descriptor(mf.DOCKER_CONFIG, mf.sha256_digest(config_raw), len(config_raw))
        if not await self._has_blob(config.digest):
            await self._upload(config.digest, _bytes_body(config_raw), len(config_raw), None)
        body = mf.docker_manifest(config, [pushed[d] for d in image.diff_ids])
        resp = await self.client.request("PUT", f"{self.base}/manifests/{tag}", self.scopes,
                                         headers={"Content-Type": mf.DOCKER_MANIFEST}, data=body)
        if resp.status not in (200, 201, 202):
            err = await self.client.fail(resp)
            raise SystemFailure(f"cannot push the manifest of {self.ref.familiar()}:{tag}: "
                                f"{err.message}")
        resp.release()
        digest = mf.sha256_digest(body)
        self.images.add_digest(image.id, f"{self.ref.name}@{digest}")
        return PushResult(tag, digest, len(body))

    # -- layers ----------------------------------------------------------------------------------

    async def _layer(self, diff_id: str, slots: asyncio.Semaphore, tmp: str) -> mf.Descriptor:
        ident = _short(diff_id)
        if slots.locked():
            self._say("Waiting", ident)
        async with slots:
            sources = self.metadata.sources(diff_id, self.ref.domain)
            for src in sources:
                if src.repository == self.ref.path and await self._has_blob(src.digest):
                    self._say("Layer already exists", ident)
                    return mf.Descriptor(mf.DOCKER_LAYER_GZIP, src.digest, src.size)
            for src in sources:
                if src.repository != self.ref.path and await self._mount(src):
                    self._say(f"Mounted from {src.repository}", ident)
                    self._record(diff_id, src.digest, src.size)
                    return mf.Descriptor(mf.DOCKER_LAYER_GZIP, src.digest, src.size)
            path = os.path.join(tmp, diff_id.removeprefix("sha256:"))
            digest, size = await asyncio.get_running_loop().run_in_executor(
                None, self._compress, diff_id, path)
            if await self._has_blob(digest):
                self._say("Layer already exists", ident)
            else:
                await self._upload(digest, self._file_body(path, ident, size), size, ident)
                self._say("Pushed", ident)
            self._record(diff_id, digest, size)
            return mf.Descriptor(mf.DOCKER_LAYER_GZIP, digest, size)

    def _record(self, diff_id: str, digest: str, size: int) -> None:
        self.metadata.add(BlobSource(diff_id, digest, size, self.ref.domain, self.ref.path))

    def _compress(self, diff_id: str, path: str) -> tuple[str, int]:
        """The layer's exact tar, gzip-compressed the same way every time; (digest, size)."""
        digest = hashlib.sha256()

        class _Hashing:
            def __init__(self, f: Any) -> None:
                self.f = f
                self.size = 0

            def write(self, data: bytes) -> int:
                digest.update(data)
                self.size += len(data)
                return self.f.write(data)

            def flush(self) -> None:
                self.f.flush()

        with open(path, "wb") as f:
            sink = _Hashing(f)
            with gzip.GzipFile(filename="", mode="wb", fileobj=sink,   # type: ignore[arg-type]
                               mtime=0, compresslevel=6) as gz:
                for chunk in self.layers.export_layer(diff_id):
                    gz.write(chunk)
        return f"sha256:{digest.hexdigest()}", sink.size

    async def _file_body(self, path: str, ident: str, size: int) -> AsyncIterator[bytes]:
        sent = 0
        reported = -REPORT_EVERY
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                sent += len(chunk)
                if sent - reported >= REPORT_EVERY or sent == size:
                    reported = sent
                    self._say("Pushing", ident, current=sent, total=size)
                yield chunk

    # -- registry calls --------------------------------------------------------------------------

    async def _has_blob(self, digest: str) -> bool:
        resp = await self.client.request("HEAD", f"{self.base}/blobs/{digest}", self.scopes)
        resp.release()
        return resp.status == 200

    async def _mount(self, src: BlobSource) -> bool:
        """Cross-repository mount; False when the registry would rather take an upload."""
        scopes = (*self.scopes, repository_scope(src.repository, "pull"))
        resp = await self.client.request("POST", f"{self.base}/blobs/uploads/", scopes,
                                         params={"mount": src.digest, "from": src.repository})
        location = resp.headers.get("Location", "")
        resp.release()
        if resp.status == 201:
            return True
        if resp.status == 202 and location:
            cancel = await self.client.request("DELETE", location, self.scopes)
            cancel.release()
        return False

    async def _upload(self, digest: str, body: AsyncIterator[bytes], size: int,
                      ident: str | None) -> None:
        """POST an upload session, PATCH the bytes, PUT with the digest to commit."""
        resp = await self.client.request("POST", f"{self.base}/blobs/uploads/", self.scopes)
        location = resp.headers.get("Location", "")
        if resp.status != 202 or not location:
            err = await self.client.fail(resp)
            raise SystemFailure(f"cannot start uploading {digest} to {self.ref.familiar()}: "
                                f"{err.message}")
        resp.release()
        resp = await self.client.request(
            "PATCH", location, self.scopes, data=body,
            headers={"Content-Type": "application/octet-stream"})
        location = resp.headers.get("Location", location)
        if resp.status not in (202, 204):
            err = await self.client.fail(resp)
            raise SystemFailure(f"uploading {digest} to {self.ref.familiar()} failed: "
                                f"{err.message}")
        resp.release()
        sep = "&" if "?" in location else "?"
        resp = await self.client.request("PUT", f"{location}{sep}digest={digest}", self.scopes,
                                         headers={"Content-Length": "0"})
        if resp.status not in (201, 204):
            err = await self.client.fail(resp)
            raise SystemFailure(f"committing {digest} to {self.ref.familiar()} failed: "
                                f"{err.message}")
        resp.release()


def _short(diff_id: str) -> str:
    return diff_id.removeprefix("sha256:")[:12]


async def _bytes_body(data: bytes) -> AsyncIterator[bytes]:
    yield data
