"""CRI ImageService on the engine's image store and registry client.

Image names are answered in their full form (``docker.io/library/busybox:1.36``), as the
kubelet compares them; the engine resolves short names the Docker way. A registry can have a
mirror (``mirrors()``): the image comes from the mirror and is kept under the requested name.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from typing import Any

from silobox.cri import api_pb2 as pb
from silobox.errors import InvalidArgument, NotFound
from silobox.storage import reference


def _full(name: str) -> str:
    try:
        ref = reference.parse(name)
    except InvalidArgument:
        return name
    return f"{ref.name}@{ref.digest}" if ref.digest else f"{ref.name}:{ref.tag or 'latest'}"


def mirrors() -> dict[str, str]:
    """Registry mirrors for pulls: ``SILOBOX_CRI_REGISTRY_MIRRORS=gcr.io=127.0.0.1:5000,...``
    (a registry host, ``=``, the mirror's host[:port]), as containerd's CRI plugin has them."""
    out = {}
    for item in os.environ.get("SILOBOX_CRI_REGISTRY_MIRRORS", "").split(","):
        host, sep, mirror = item.strip().partition("=")
        if sep and host and mirror:
            out[host] = mirror
    return out


def _mirror_of(name: str) -> str | None:
    """The name to pull ``name`` from when its registry has a mirror, else None."""
    try:
        ref = reference.parse(name)
    except InvalidArgument:
        return None
    mirror = mirrors().get(ref.domain)
    if mirror is None:
        return None
    path = ref.name[len(ref.domain) + 1:]
    return f"{mirror}/{path}@{ref.digest}" if ref.digest else \
        f"{mirror}/{path}:{ref.tag or 'latest'}"


def _user(config: dict[str, Any]) -> tuple[int | None, str]:
    """The image's user as the CRI splits it: a uid when numeric, else a name."""
    user = (config.get("User") or "").split(":", 1)[0]
    if not user:
        return None, ""
    if user.isdigit():
        return int(user), ""
    return None, user


class CriImages:
    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def _image(self, doc: dict[str, Any]) -> pb.Image:
        uid, username = _user(doc.get("Config") or {})
        img = pb.Image(id=doc["Id"], repo_tags=[_full(t) for t in doc.get("RepoTags") or []],
                       repo_digests=[_full(d) for d in doc.get("RepoDigests") or []],
                       size=int(doc.get("Size") or 0), username=username,
                       spec=pb.ImageSpec(image=doc["Id"]))
        if uid is not None:
            img.uid.value = uid
        return img

    async def _inspect(self, ref: str) -> dict[str, Any] | None:
        if not ref:
            raise InvalidArgument("image name must not be empty")
        try:
            return await self.backend.image_inspect(ref)
        except NotFound:
            return None

    async def list(self, f: Any) -> list[pb.Image]:
        out = []
        want = f.image.image
        for summary in await self.backend.image_list():
            doc = await self.backend.image_inspect(summary["Id"])
            img = self._image(doc)
            if want:
                target = await self._inspect(want)
                if target is None or target["Id"] != doc["Id"]:
                    continue
            out.append(img)
        return out

    async def status(self, req: pb.ImageStatusRequest) -> pb.ImageStatusResponse:
        doc = await self._inspect(req.image.image)
        if doc is None:
            return pb.ImageStatusResponse()   # absent: no image, no error
        out = pb.ImageStatusResponse(image=self._image(doc))
        if req.verbose:
            out.info["info"] = json.dumps({"config": doc.get("Config") or {},
                                           "created": doc.get("Created", "")})
        return out

    async def pull(self, req: pb.PullImageRequest) -> str:
        name = req.image.image
        if not name:
            raise InvalidArgument("image name must not be empty")
        auth = req.auth
        header = None
        if auth.ByteSize():
            user, password = auth.username, auth.password
            if auth.auth and not user:
                try:
                    user, _, password = base64.b64decode(auth.auth).decode().partition(":")
                except ValueError:
                    raise InvalidArgument("auth: not base64 of user:password") from None
            doc = {"username": user, "password": password,
                   "serveraddress": auth.server_address,
                   "identitytoken": auth.identity_token, "registrytoken": auth.registry_token}
            header = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()
        mirror = _mirror_of(name)
        if mirror is None:
            await self.backend.image_pull(name, auth_header=header)
            return (await self.backend.image_inspect(name))["Id"]
        # Through a mirror: pulled from the mirror, kept under the name the kubelet asked for.
        had_mirror_name = await self._inspect(mirror) is not None
        await self.backend.image_pull(mirror, auth_header=header)
        doc = await self.backend.image_inspect(mirror)
        ref = reference.parse(name)
        if not ref.digest:
            await self.backend.image_tag(doc["Id"], ref.name, ref.tag or "latest")
            if not had_mirror_name:
                await self.backend.image_delete(mirror)   # only untags: the image keeps a tag
        return doc["Id"]

    async def remove(self, ref: str) -> None:
        doc = await self._inspect(ref)
        if doc is None:
            return   # removing an absent image succeeds
        by_id = bool(re.fullmatch(r"(sha256:)?[0-9a-f]{12,64}", ref)) \
            and doc["Id"].split(":")[-1].startswith(ref.split(":")[-1])
        if by_id or len(doc.get("RepoTags") or []) <= 1:
            await self.backend.image_delete(doc["Id"], force=True)
        else:
            await self.backend.image_delete(ref)

    async def fs_info(self) -> pb.ImageFsInfoResponse:
        info = await self.backend.info()
        mount = os.path.join(info.get("DockerRootDir") or "/var/lib/silobox", "layers")
        df = await self.backend.system_df()
        used = int(df.get("LayersSize") or 0)
        try:
            st = os.statvfs(mount)
            inodes = st.f_files - st.f_ffree
        except OSError:
            inodes = 0
        return pb.ImageFsInfoResponse(image_filesystems=[pb.FilesystemUsage(
            timestamp=time.time_ns(), fs_id=pb.FilesystemIdentifier(mountpoint=mount),
            used_bytes=pb.UInt64Value(value=used), inodes_used=pb.UInt64Value(value=inodes))])
