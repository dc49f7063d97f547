"""Registry verbs of the engine: pull, push, login, distribution inspect (dockerd's
``distribution`` and ``registry`` services). The transfers live in ``storage/distribution``;
this service turns API parameters into references and endpoints and reports progress."""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable

from silobox.engine.events import Actor
from silobox.engine.spec import runs_here
from silobox.errors import InvalidArgument, NotFound

Progress = Callable[[dict[str, Any]], None]


class DistributionService:
    def __init__(self, config: Any, db: Any, images: Any, layers: Any, events: Any) -> None:
        from collections import Counter

        from silobox.storage.distribution.metadata import BlobMetadata
        from silobox.storage.distribution.pull import SharedDownloads
        self.config = config
        self.images = images
        self.layers = layers
        self.events = events
        self.blob_metadata = BlobMetadata(db)
        self.pulling: Counter[str] = Counter()   # diff ids the running pulls need
        # blob downloads shared by concurrent pulls, under <root>/distribution/blobs
        self.downloads = SharedDownloads(os.path.join(self.transfer_dir, "blobs"))

    # -- shared pieces ---------------------------------------------------------------------------

    @property
    def transfer_dir(self) -> str:
        """Where downloads and compressed uploads wait (``<root>/distribution``)."""
        return os.path.join(self.config.root, "distribution")

    def sweep_transfers(self) -> None:
        """Remove what an interrupted pull or push left (called at start, nothing runs yet)."""
        shutil.rmtree(self.transfer_dir, ignore_errors=True)
        os.makedirs(self.transfer_dir, mode=0o700, exist_ok=True)

    def _client(self, domain: str, auth_header: str | None = None,
                auth: Any = None) -> Any:
        from silobox.storage.distribution.registry import (AuthConfig, RegistryClient,
                                                           RegistryOptions)
        options = RegistryOptions(insecure=tuple(self.config.insecure_registries),
                                  certs_dir=self.config.registry_certs_dir,
                                  loopback_only=self.config.registry_loopback_only)
        return RegistryClient(options.endpoint(domain),
                              auth if auth is not None else AuthConfig.from_header(auth_header))

    def registry_config(self) -> dict[str, Any]:
        """``RegistryConfig`` of ``GET /info``, in Docker's shape (``docker info`` shows the
        insecure registries from it)."""
        import ipaddress
        from silobox.storage.distribution.registry import DEFAULT_INSECURE
        cidrs, hosts = list(DEFAULT_INSECURE), []
        for entry in self.config.insecure_registries:
            try:
                cidrs.append(str(ipaddress.ip_network(entry, strict=False)))
            except ValueError:
                hosts.append(entry)
        indexes = {"docker.io": {"Name": "docker.io", "Mirrors": [], "Secure": True,
                                 "Official": True}}
        for host in hosts:
            indexes[host] = {"Name": host, "Mirrors": [], "Secure": False, "Official": False}
        return {"AllowNondistributableArtifactsCIDRs": None,
                "AllowNondistributableArtifactsHostnames": None,
                "InsecureRegistryCIDRs": cidrs, "IndexConfigs": indexes, "Mirrors": None}

    # -- pull ------------------------------------------------------------------------------------

    async def image_pull(self, image: str, tag: str = "", auth_header: str | None = None,
                         platform: str = "", progress: Progress | None = None) -> list[dict]:
        """``POST /images/create?fromImage=&tag=``: returns the closing status messages."""
        from silobox.storage import reference
        from silobox.storage.distribution.pull import Puller
        if not image:
            raise InvalidArgument("image name must not be empty")
        if platform and not runs_here(platform):
            raise InvalidArgument(f'image with reference {image} was found but does not '
                                  f'match the specified platform: wanted {platform}')
        ref = reference.parse(image)
        if tag:   # the tag parameter wins over a tag in the name, as in moby
            if ref.digest:
                raise InvalidArgument(f"invalid reference format: {image} already names a "
                                      "digest")
            bare = reference.Reference(ref.domain, ref.path).name
            ref = reference.parse(f"{bare}@{tag}" if reference.is_digest(tag)
                                  else f"{bare}:{tag}")
        ref = ref.with_default_tag()
        report = progress or (lambda _: None)
        builtin = await self._pull_builtin(ref, report)
        if builtin:
            return builtin
        os.makedirs(self.transfer_dir, mode=0o700, exist_ok=True)
        async with self._client(ref.domain, auth_header) as client:
            puller = Puller(client, ref, self.layers, self.images, self.blob_metadata,
                            self.transfer_dir, report, in_flight=self.pulling,
                            downloads=self.downloads)
            result = await puller.pull()
        self.events.emit_event("image", "pull", Actor(ref.familiar()), {"name": ref.familiar()})
        status = ("Image is up to date for" if result.up_to_date
                  else "Downloaded newer image for")
        return [{"status": f"Digest: {result.digest}"},
                {"status": f"Status: {status} {ref.familiar()}"}]

    async def _pull_builtin(self, ref: Any, report: Progress) -> list[dict]:
        """``busybox:latest`` is the built-in image (built from Debian's busybox-static), so
        pulling it builds it if needed and never contacts Docker Hub."""
        import asyncio
        from silobox.storage.builtin import PACKAGE, ensure_builtin_image
        image = await asyncio.get_running_loop().run_in_executor(
            None, ensure_builtin_image, self.images, str(ref))
        if image is None:
            return []
        report({"status": f"{ref.familiar()} is silobox's built-in image (from Debian's "
                          f"{PACKAGE}); Docker Hub is not contacted"})
        return [{"status": f"Status: Image is up to date for {ref.familiar()}"}]

    # -- push ------------------------------------------------------------------------------------

    async def image_push(self, name: str, tag: str = "", auth_header: str | None = None,
                         progress: Progress | None = None) -> list[dict]:
        """``POST /images/{name}/push?tag=``: one tag, or every tag of the repository."""
        from silobox.storage import reference
        from silobox.storage.distribution.push import Pusher
        ref = reference.parse(name)
        if ref.digest:
            raise InvalidArgument("cannot push a digest reference")
        if ref.tag and tag and ref.tag != tag:
            raise InvalidArgument(f"invalid reference format: {name} already names a tag")
        tag = tag or ref.tag or ""
        repo = reference.Reference(ref.domain, ref.path)
        if tag:
            try:
                images = [(tag, self.images.resolve(f"{repo.name}:{tag}"))]
            except NotFound:
                images = []
        else:
            images = [(t.rsplit(":", 1)[1], img) for img in self.images.list() for t in img.tags
                      if reference.parse(t).name == repo.name]
            images.sort(key=lambda item: item[0])
        if not images:
            raise NotFound(f"An image does not exist locally with the tag: "
                           f"{repo.familiar_name}" + (f":{tag}" if tag else ""))
        report = progress or (lambda _: None)
        report({"status": f"The push refers to repository [{repo.name}]"})
        os.makedirs(self.transfer_dir, mode=0o700, exist_ok=True)
        async with self._client(repo.domain, auth_header) as client:
            pusher = Pusher(client, repo, self.layers, self.images, self.blob_metadata,
                            self.transfer_dir, report)
            for tag_name, image in images:
                result = await pusher.push(image, tag_name)
                report({"status": f"{result.tag}: digest: {result.digest} size: {result.size}"})
                report({"progressDetail": {}, "aux": {"Tag": result.tag, "Digest": result.digest,
                                                      "Size": result.size}})
                pushed = f"{repo.familiar_name}:{tag_name}"
                self.events.emit_event("image", "push", Actor(pushed), {"name": pushed})
        return []

    # -- login, distribution inspect ---------------------------------------------------------------

    async def registry_login(self, body: dict[str, Any]) -> dict[str, str]:
        """``POST /auth``: check the credentials against the registry (``docker login``)."""
        from silobox.storage.distribution.registry import AuthConfig, registry_domain
        auth = AuthConfig.from_dict(body)
        if not auth.username and not auth.identity_token:
            raise InvalidArgument("username is required to log in")
        domain = registry_domain(auth.server)
        async with self._client(domain, auth=auth) as client:
            await client.login()
        return {"Status": "Login Succeeded", "IdentityToken": ""}

    async def distribution_inspect(self, name: str, auth_header: str | None = None
                                   ) -> dict[str, Any]:
        """``GET /distribution/{name}/json``: the manifest's descriptor and its platforms."""
        from silobox.storage import reference
        from silobox.storage.distribution import manifest as mf
        from silobox.storage.distribution.pull import Puller
        ref = reference.parse_tagged(name)
        async with self._client(ref.domain, auth_header) as client:
            puller = Puller(client, ref, self.layers, self.images, self.blob_metadata,
                            self.transfer_dir, lambda _: None)
            raw, content_type, digest = await puller.fetch_manifest(
                ref.digest or ref.tag or "latest")
            media, doc = mf.parse(raw, content_type)
            platforms = []
            if media in mf.LISTS:
                for entry in doc.get("manifests") or []:
                    p = entry.get("platform") if isinstance(entry, dict) else None
                    if isinstance(p, dict):
                        platforms.append({k: p[k] for k in ("architecture", "os", "variant",
                                                            "os.version", "os.features")
                                          if k in p})
            else:
                config_desc = mf.image_manifest(media, doc).config
                config = await puller.fetch_document_blob(config_desc, mf.MAX_CONFIG)
                import json
                cfg = json.loads(config)
                platforms.append({"architecture": cfg.get("architecture", ""),
                                  "os": cfg.get("os", "")})
        return {"Descriptor": {"mediaType": media, "digest": digest, "size": len(raw)},
                "Platforms": platforms}
