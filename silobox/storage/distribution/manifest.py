"""Image manifests: Docker schema 2 and OCI, and the lists (indexes) that point at them."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from silobox import jsonlimits
from silobox.errors import InvalidArgument, NotFound

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
           "application/vnd.docker.distribution.manifest.v1+prettyjws")

ACCEPT = ", ".join((DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX))
LISTS = (DOCKER_LIST, OCI_INDEX)
LAYER_TYPES = (DOCKER_LAYER_GZIP, OCI_LAYER, OCI_LAYER_GZIP, "application/x-tar",
               "application/vnd.docker.image.rootfs.diff.tar")
MAX_MANIFEST = 4 << 20
MAX_CONFIG = 8 << 20

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(value: Any, what: str) -> str:
    """Only sha256 digests are accepted: they are the ones every blob is verified with."""
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise InvalidArgument(f"invalid {what} digest {value!r}: expected sha256:<64 hex digits>")
    return value


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        """The 12-digit id Docker's progress lines use."""
        return self.digest.removeprefix("sha256:")[:12]

    @classmethod
    def parse(cls, doc: Any, what: str) -> Descriptor:
        if not isinstance(doc, dict):
            raise InvalidArgument(f"invalid manifest: {what} is not an object")
        size = doc.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"invalid manifest: {what} has no valid size")
        return cls(str(doc.get("mediaType") or ""), check_digest(doc.get("digest"), what), size,
                   tuple(doc.get("urls") or ()))


@dataclass(frozen=True)
class ImageManifest:
    """A single-platform manifest: its config and its layers, base first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


def parse(raw: bytes, content_type: str) -> tuple[str, dict[str, Any]]:
    """The manifest's media type and JSON document."""
    try:
        doc = jsonlimits.loads(raw)
    except ValueError as e:
        raise InvalidArgument(f"invalid manifest: {e}") from e
    if not isinstance(doc, dict):
        raise InvalidArgument("invalid manifest: not a JSON object")
    media = doc.get("mediaType") or content_type.split(";")[0].strip()
    if doc.get("schemaVersion") == 1 or media in SCHEMA1:
        raise InvalidArgument("unsupported manifest format: Docker image manifest schema 1 "
                              "(deprecated); push the image again with a newer client")
    if media not in (DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX):
        if isinstance(doc.get("manifests"), list):
            media = OCI_INDEX
        elif isinstance(doc.get("layers"), list):
            media = OCI_MANIFEST
        else:
            raise InvalidArgument(f"unsupported manifest media type {media!r}")
    return media, doc


def image_manifest(media: str, doc: dict[str, Any]) -> ImageManifest:
    config = Descriptor.parse(doc.get("config"), "config")
    layers_doc = doc.get("layers")
    if not isinstance(layers_doc, list):
        raise InvalidArgument("invalid manifest: layers is not a list")
    layers = tuple(Descriptor.parse(l, f"layer {i}") for i, l in enumerate(layers_doc))
    for layer in layers:
        if layer.media_type == OCI_LAYER_ZSTD:
            raise InvalidArgument(f"layer {layer.digest}: zstd-compressed layers are not "
                                  "supported")
        if layer.media_type in (DOCKER_FOREIGN, OCI_NONDIST) or layer.urls:
            raise InvalidArgument(f"layer {layer.digest}: foreign (non-distributable) layers "
                                  "are not supported")
        if layer.media_type and layer.media_type not in LAYER_TYPES:
            raise InvalidArgument(f"layer {layer.digest}: unsupported media type "
                                  f"{layer.media_type!r}")
    return ImageManifest(media, config, layers)


def pick_platform(doc: dict[str, Any], os_name: str, arch: str, what: str) -> Descriptor:
    """The entry of a manifest list / OCI index for this host (Docker picks the first match;
    ``variant`` is not needed to tell amd64 images apart)."""
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise InvalidArgument("invalid manifest list: manifests is not a list")
    for i, entry in enumerate(entries):
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(platform, dict):
            continue
        if platform.get("os") == os_name and platform.get("architecture") == arch:
            return Descriptor.parse(entry, f"manifest {i}")
    raise NotFound(f"no matching manifest for {os_name}/{arch} in the manifest list entries "
                   f"of {what}")


def docker_manifest(config: Descriptor, layers: list[Descriptor]) -> bytes:
    """A schema 2 manifest as Docker writes it (three-space indented JSON)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": config.size, "digest": config.digest},
        "layers": [{"mediaType": DOCKER_LAYER_GZIP, "size": l.size, "digest": l.digest}
                   for l in layers],
    }
    return json.dumps(doc, indent=3).encode()
