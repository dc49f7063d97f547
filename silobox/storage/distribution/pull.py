"""``docker pull``: manifest → config → layers, each blob verified before it is stored.

Layers are downloaded a few at a time into a private temporary folder; a download cut short
(a dropped connection, a read timeout) keeps what it has and continues with an HTTP ``Range``
request. Each blob's sha256 must equal its digest, and each extracted layer's diff id must equal
the config's ``rootfs.diff_ids`` entry, before the next step; the image is recorded only when
every layer is in. A failed pull releases the layers it added and deletes its temporary folder,
so it leaves no half-made layer or image.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from silobox import jsonlimits
from silobox.errors import Conflict, InvalidArgument, NotFound, SiloboxError, SystemFailure
from silobox.storage.distribution import manifest as mf
from silobox.storage.distribution.metadata import BlobMetadata, BlobSource
from silobox.storage.distribution.registry import (RegistryClient, RegistryError,
                                                   repository_scope)
from silobox.storage.distribution.transfer import (CHUNK, REPORT_EVERY, Progress,
                                                   RegistryTransfer)
from silobox.storage.images import Image, ImageStore, host_architecture
from silobox.storage.layers import LayerStore, ProgressReader
from silobox.storage.reference import Reference



@dataclass
class PullResult:
    image: Image
    digest: str          # the manifest (or manifest list) the reference resolved to
    up_to_date: bool


class Puller(RegistryTransfer):
    """One pull of one reference from one registry session."""

    def __init__(self, client: RegistryClient, ref: Reference, layers: LayerStore,
                 images: ImageStore, metadata: BlobMetadata, tmp_root: str, progress: Progress,
                 concurrency: int = 3, retries: int = 5, retry_delay: float = 1.0,
                 in_flight: Counter[str] | None = None,
                 downloads: SharedDownloads | None = None) -> None:
        super().__init__(client, ref, layers, images, metadata, tmp_root, progress,
                         concurrency, (repository_scope(ref.path, "pull"),))
        self.retries = retries
        self.retry_delay = retry_delay
        # diff ids every running pull of this daemon needs: a failing pull leaves those alone
        self.in_flight = in_flight if in_flight is not None else Counter()
        self.downloads = downloads
        self._leases: list[_Lease] = []
        self.owner = f"pull:{uuid.uuid4().hex}"   # this pull's references on its layers

    # -- documents -------------------------------------------------------------------------------

    async def fetch_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest by tag or digest, digest checked."""
        resp = await self.client.request("GET", f"/v2/{self.ref.path}/manifests/{reference}",
                                         self.scopes, headers={"Accept": mf.ACCEPT})
        if resp.status != 200:
            err = await self.client.fail(resp)
            if resp.status == 404 or {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"} & set(err.codes):
                raise NotFound(f"manifest for {self.ref.familiar()} not found: {err.message}")
            raise SystemFailure(f"cannot get the manifest of {self.ref.familiar()}: "
                                f"{err.message}")
        content_type = resp.headers.get("Content-Type", "")
        raw = await self.client.read_limited(resp, mf.MAX_MANIFEST)
        digest = mf.sha256_digest(raw)
        if reference.startswith("sha256:") and digest != reference:
            raise InvalidArgument(f"manifest verification failed for digest {reference}")
        return raw, content_type, digest

    async def fetch_document_blob(self, desc: mf.Descriptor, limit: int) -> bytes:
        resp = await self.client.request("GET", f"/v2/{self.ref.path}/blobs/{desc.digest}",
                                         self.scopes)
        if resp.status != 200:
            err = await self.client.fail(resp)
            raise _blob_error(desc, err)
        raw = await self.client.read_limited(resp, limit)
        if mf.sha256_digest(raw) != desc.digest:
            raise InvalidArgument(f"image config verification failed for digest {desc.digest}")
        return raw

    async def resolve(self) -> tuple[str, mf.ImageManifest, bytes, list[str]]:
        """(top-level digest, manifest, config bytes, diff ids) for this host's platform."""
        raw, content_type, top_digest = await self.fetch_manifest(
            self.ref.digest or self.ref.tag or "latest")
        media, doc = mf.parse(raw, content_type)
        if media in mf.LISTS:
            entry = mf.pick_platform(doc, "linux", host_architecture(), self.ref.familiar())
            raw, content_type, _ = await self.fetch_manifest(entry.digest)
            media, doc = mf.parse(raw, content_type)
            if media in mf.LISTS:
                raise InvalidArgument(f"manifest list {entry.digest} points at another list")
        image = mf.image_manifest(media, doc)
        config_raw = await self.fetch_document_blob(image.config, mf.MAX_CONFIG)
        try:
            config = jsonlimits.loads(config_raw)
            diff_ids = config["rootfs"]["diff_ids"]
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidArgument(f"invalid image config {image.config.digest}: {e}") from e
        if not isinstance(diff_ids, list) or len(diff_ids) != len(image.layers):
            raise InvalidArgument(f"invalid image config {image.config.digest}: it lists "
                                  f"{len(diff_ids) if isinstance(diff_ids, list) else 'no'} "
                                  f"layers, the manifest {len(image.layers)}")
        if config.get("os", "linux") != "linux":
            raise InvalidArgument(f"image operating system \"{config.get('os')}\" cannot be "
                                  "used on this platform")
        return top_digest, image, config_raw, [mf.check_digest(d, "diff id") for d in diff_ids]

    # -- the pull --------------------------------------------------------------------------------

    async def pull(self) -> PullResult:
        top_digest, image_manifest, config_raw, diff_ids = await self.resolve()
        self._say(f"Pulling from {self.ref.path}", self.ref.tag or self.ref.digest)
        image_id = mf.sha256_digest(config_raw)
        before = self._current()
        tmp = os.path.join(self.tmp_root, f"pull-{uuid.uuid4().hex}")
        os.makedirs(tmp, mode=0o700)
        added: list[str] = []
        tasks: dict[str, asyncio.Task[str]] = {}
        self.in_flight.update(diff_ids)
        counted = True
        try:
            slots = asyncio.Semaphore(self.concurrency)
            needed: list[tuple[mf.Descriptor, str]] = []
            for desc, diff_id in zip(image_manifest.layers, diff_ids):
                if self._hold_existing(diff_id):
                    self._say("Already exists", desc.short)
                    continue
                needed.append((desc, diff_id))
                if desc.digest not in tasks:
                    self._say("Pulling fs layer", desc.short)
            for desc, _ in needed:
                if desc.digest not in tasks:
                    path = os.path.join(tmp, desc.digest.removeprefix("sha256:"))
                    tasks[desc.digest] = asyncio.ensure_future(self._fetch(desc, path, slots))
            parent: str | None = None
            for desc, diff_id in zip(image_manifest.layers, diff_ids):
                if desc.digest not in tasks:
                    parent = diff_id
                    continue
                path = await tasks[desc.digest]
                stored = await self._extract(desc, path, parent, diff_id, added)
                if stored != diff_id:
                    raise InvalidArgument(f"layer {desc.digest} has diff id {stored}, the image "
                                          f"config says {diff_id}")
                self._say("Pull complete", desc.short)
                parent = diff_id
            tags = [self.ref.familiar()] if self.ref.tag else []
            image = await asyncio.get_running_loop().run_in_executor(
                None, self.images.import_config, config_raw, tags)
        except BaseException:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            self.in_flight.subtract(diff_ids)
            counted = False
            self.layers.unhold(self.owner)
            await asyncio.get_running_loop().run_in_executor(None, self._release, added)
            raise
        finally:
            self.layers.unhold(self.owner)   # the image (or nothing, after a failure) holds them
            if counted:
                self.in_flight.subtract(diff_ids)
            for lease in self._leases:
                lease.release()
            self._leases.clear()
            shutil.rmtree(tmp, ignore_errors=True)
        self.images.add_digest(image.id, f"{self.ref.name}@{top_digest}")
        for desc, diff_id in zip(image_manifest.layers, diff_ids):
            self.metadata.add(BlobSource(diff_id, desc.digest, desc.size, self.ref.domain,
                                         self.ref.path))
        up_to_date = before.get("image") == image_id
        return PullResult(self.images.get(image.id), top_digest, up_to_date)

    def _hold_existing(self, diff_id: str) -> bool:
        """Whether the layer is stored; if so this pull holds it, so a concurrent load that
        fails cannot remove it before the pulled image uses it."""
        try:
            self.layers.hold(self.owner, [diff_id])
        except NotFound:
            return False
        return True

    def _current(self) -> dict[str, Any]:
        """What the reference points at now, to tell "up to date" from "newer image"."""
        try:
            image = self.images.resolve(str(self.ref))
        except NotFound:
            return {}
        return {"image": image.id}

    def _release(self, added: list[str]) -> None:
        """Remove the layers this pull stored, top first, unless an image or another running
        pull needs them (or a layer was imported on top of them meanwhile)."""
        for diff_id in reversed(added):
            if self.in_flight[diff_id] > 0:
                continue
            try:
                self.layers.remove(diff_id)
            except (NotFound, Conflict):
                continue

    # -- one layer -------------------------------------------------------------------------------

    async def _fetch(self, desc: mf.Descriptor, path: str, slots: asyncio.Semaphore) -> str:
        """The blob downloaded and verified; with shared downloads, the path of the download
        every concurrent pull of the same blob waits for (held until :meth:`pull` ends)."""
        if slots.locked():
            self._say("Waiting", desc.short)
        async with slots:
            if self.downloads is None:
                await self._download(desc, path)
                return path
            key = f"{self.ref.name}@{desc.digest}"
            lease = await self.downloads.fetch(key, lambda dest, say: self._download_alone(
                desc, dest, say), self._say)
            self._leases.append(lease)
            if lease.joined_late:
                self._say("Download complete", desc.short)
            return lease.path

    async def _download_alone(self, desc: mf.Descriptor, path: str,
                              say: Callable[..., None]) -> None:
        """A shared download has a registry session of its own: it outlives the pull that
        started it when other pulls still wait for it."""
        async with RegistryClient(self.client.endpoint, self.client.auth) as client:
            await self._download(desc, path, client, say)

    async def _download(self, desc: mf.Descriptor, path: str,
                        client: RegistryClient | None = None,
                        say: Callable[..., None] | None = None) -> None:
        """Fetch a blob to ``path``, continuing after a broken connection with ``Range``;
        ``say`` reports progress (to every pull waiting for this download)."""
        client = client or self.client
        say = say or self._say
        url = f"/v2/{self.ref.path}/blobs/{desc.digest}"
        digest = hashlib.sha256()
        have = 0
        failures = 0
        reported = -REPORT_EVERY
        with open(path, "wb") as out:
            while True:
                headers = {"Range": f"bytes={have}-"} if have else {}
                try:
                    resp = await client.request("GET", url, self.scopes, headers=headers)
                    try:
                        if resp.status not in (200, 206):
                            raise _blob_error(desc, await client.fail(resp))
                        odd_range = resp.status == 206 and not _range_starts_at(
                            resp.headers.get("Content-Range", ""), have)
                        if have and (resp.status == 200 or odd_range):
                            out.seek(0)   # the server ignored Range: start again
                            out.truncate()
                            digest = hashlib.sha256()
                            have = 0
                            if odd_range:
                                continue   # ask again, for the whole blob
                        async for chunk in resp.content.iter_chunked(CHUNK):
                            if have + len(chunk) > desc.size:
                                raise InvalidArgument(
                                    f"filesystem layer verification failed for digest "
                                    f"{desc.digest}: the registry sent more than {desc.size} "
                                    "bytes")
                            out.write(chunk)
                            digest.update(chunk)
                            have += len(chunk)
                            if have - reported >= REPORT_EVERY or have == desc.size:
                                reported = have
                                say("Downloading", desc.short, current=have,
                                          total=desc.size)
                    finally:
                        resp.release()
                    if have < desc.size:
                        raise aiohttp.ClientPayloadError(
                            f"connection closed after {have} of {desc.size} bytes")
                    break
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError,
                        SystemFailure) as e:
                    if isinstance(e, SystemFailure) and not isinstance(
                            e.cause, (aiohttp.ClientError, asyncio.TimeoutError, OSError)):
                        raise
                    failures += 1
                    if failures > self.retries:
                        raise SystemFailure(f"downloading {desc.digest} failed after "
                                            f"{self.retries} retries: {e}", cause=e) from e
                    out.flush()
                    delay = self.retry_delay * failures
                    say(f"Retrying in {delay:g} second{'s' if delay != 1 else ''}",
                              desc.short)
                    await asyncio.sleep(delay)
        say("Verifying Checksum", desc.short)
        if f"sha256:{digest.hexdigest()}" != desc.digest:
            raise InvalidArgument(f"filesystem layer verification failed for digest "
                                  f"{desc.digest}")
        say("Download complete", desc.short)

    async def _extract(self, desc: mf.Descriptor, path: str, parent: str | None,
                       diff_id: str, added: list[str]) -> str:
        """Import the downloaded blob as a layer on ``parent``; a layer it stores anew is
        appended to ``added`` (what a failed pull removes again)."""
        loop = asyncio.get_running_loop()

        def report(current: int) -> None:
            loop.call_soon_threadsafe(self._say_extract, desc.short, current, desc.size)

        def run() -> str:
            with open(path, "rb") as f:
                layer = self.layers.add_from_tar(ProgressReader(f, report, REPORT_EVERY),
                                                 parent, self.owner)
            return layer.diff_id

        existed = self.layers.exists(diff_id)
        future = loop.run_in_executor(None, run)
        try:
            stored = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The client went away. The extracting thread cannot be stopped: let it finish,
            # so that a layer it stores is known and removed with the rest of this pull.
            with contextlib.suppress(Exception):
                late = await future
                if not existed and late not in added:
                    added.append(late)
            raise
        except OSError as e:
            raise SystemFailure(f"cannot read downloaded layer {desc.digest}: {e}",
                                cause=e) from e
        if not existed and stored not in added:
            added.append(stored)
        return stored

    def _say_extract(self, ident: str, current: int, total: int) -> None:
        self._say("Extracting", ident, current=current, total=total)


class _Transfer:
    """One blob being downloaded for one or more pulls."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.watchers: list[Callable[..., None]] = []
        self.refs = 0
        self.task: asyncio.Future[None] | None = None

    def broadcast(self, status: str, ident: str | None = None, **detail: int) -> None:
        for watch in list(self.watchers):
            watch(status, ident, **detail)


class _Lease:
    """A pull's hold on a finished download; the file goes when the last hold is released."""

    def __init__(self, owner: SharedDownloads, key: str, transfer: _Transfer,
                 watch: Callable[..., None]) -> None:
        self.owner = owner
        self.key = key
        self.transfer = transfer
        self.watch = watch
        self.path = transfer.path
        self.joined_late = False   # the download had finished: its progress was not seen
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.owner._drop(self.key, self.transfer, self.watch)


class SharedDownloads:
    """Blob downloads shared by the daemon's concurrent pulls (Docker's transfer manager): a
    pull that needs a blob another pull is fetching from the same repository waits for that
    download and sees its progress. A download ends early only when no pull waits any more;
    its file is removed when the last pull using it is done."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._transfers: dict[str, _Transfer] = {}

    async def fetch(self, key: str, run: Callable[[str, Callable[..., None]], Any],
                    watch: Callable[..., None]) -> _Lease:
        transfer = self._transfers.get(key)
        if transfer is None:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            transfer = _Transfer(os.path.join(self.folder, uuid.uuid4().hex))
            self._transfers[key] = transfer
            transfer.task = asyncio.ensure_future(run(transfer.path, transfer.broadcast))
            transfer.task.add_done_callback(lambda t: self._finished(key, transfer, t))
        transfer.refs += 1
        transfer.watchers.append(watch)
        assert transfer.task is not None
        finished_before = transfer.task.done()
        try:
            await asyncio.shield(transfer.task)
        except BaseException:
            self._drop(key, transfer, watch)
            raise
        lease = _Lease(self, key, transfer, watch)
        lease.joined_late = finished_before
        return lease

    def _finished(self, key: str, transfer: _Transfer, task: asyncio.Future[None]) -> None:
        """A failed download is forgotten at once, so the next pull starts afresh."""
        if task.cancelled() or task.exception() is not None:
            if self._transfers.get(key) is transfer:
                del self._transfers[key]

    def _drop(self, key: str, transfer: _Transfer, watch: Callable[..., None]) -> None:
        transfer.refs -= 1
        if watch in transfer.watchers:
            transfer.watchers.remove(watch)
        if transfer.refs > 0:
            return
        if self._transfers.get(key) is transfer:
            del self._transfers[key]
        if transfer.task is not None and not transfer.task.done():
            transfer.task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(transfer.path)


def _range_starts_at(content_range: str, offset: int) -> bool:
    """True if ``Content-Range: bytes START-END/TOTAL`` starts at ``offset``."""
    unit, _, spec = content_range.strip().partition(" ")
    start = spec.partition("-")[0]
    return unit == "bytes" and start.isdigit() and int(start) == offset


def _blob_error(desc: mf.Descriptor, err: RegistryError) -> SiloboxError:
    if err.status == 404 or "BLOB_UNKNOWN" in err.codes:
        return NotFound(f"blob {desc.digest} not found: {err.message}")
    return SystemFailure(f"cannot get blob {desc.digest}: {err.message}")
