"""``silo image bootstrap``: a Debian base image built from Debian's own package archive.

No container registry is involved: mmdebstrap (or debootstrap) builds a root filesystem from the
archive the host's apt already uses, and the tarball is imported as a one-layer image, the way
Windows base layers are made from an OS image rather than pulled.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from typing import Any, AsyncIterator, Callable

from silobox.errors import InvalidArgument, SystemFailure, Unavailable

SUITE_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}$")
VARIANTS = ("minbase", "essential", "apt", "required", "important", "standard")
# Docs, man pages and translations are dropped, as Docker's official debian images do.
EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*")


class BootstrapService:
    """Debian root filesystems made into images through ``import_image`` (the image service's
    ``image_import``)."""

    def __init__(self, config: Any, import_image: Callable[..., Any]) -> None:
        self.config = config
        self.import_image = import_image

    async def image_bootstrap(self, ref: str, suite: str | None = None,
                              variant: str = "minbase", mirror: str | None = None,
                              progress: Callable[[dict[str, Any]], None] | None = None) -> str:
        from silobox.storage import reference
        parsed = reference.parse_tagged(ref)
        suite = suite or parsed.tag or "bookworm"
        if suite == "latest":
            suite = "stable"
        if not SUITE_RE.match(suite):
            raise InvalidArgument(f"invalid suite {suite!r}")
        if variant not in VARIANTS:
            raise InvalidArgument(f"invalid variant {variant!r}: use one of {', '.join(VARIANTS)}")
        if mirror is not None and not re.match(r"^(https?|file)://[^\s]+$", mirror):
            raise InvalidArgument(f"invalid mirror {mirror!r}: an http(s) or file URL is needed")
        tool = shutil.which("mmdebstrap")
        if tool is None:
            raise Unavailable("image bootstrap needs mmdebstrap: apt-get install mmdebstrap")
        workdir = tempfile.mkdtemp(prefix="bootstrap-", dir=self.config.root)
        tarball = os.path.join(workdir, "rootfs.tar")
        argv = [tool, f"--variant={variant}", "--format=tar", "--quiet"]
        argv += [f"--dpkgopt=path-exclude={p}" for p in EXCLUDES]
        argv += [suite, tarball] + ([mirror] if mirror else [])
        try:
            if progress:
                progress({"status": f"Bootstrapping {suite} ({variant}) with mmdebstrap"})
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            tail: list[str] = []
            assert proc.stderr is not None
            async for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    tail = (tail + [line])[-8:]
                    if progress:
                        progress({"status": line})
            if await proc.wait() != 0:
                raise SystemFailure(f"mmdebstrap failed for suite {suite}: "
                                    + " / ".join(tail[-3:]), operation="bootstrap")
            if progress:
                progress({"status": "Importing the root filesystem"})
            image_id = await self.import_image(
                _chunks(tarball), repo=parsed.familiar_name, tag=parsed.tag or suite,
                message=f"bootstrapped from Debian {suite} ({variant})",
                changes=['CMD ["bash"]'])
            return image_id
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


async def _chunks(path: str) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    with open(path, "rb") as f:
        while chunk := await loop.run_in_executor(None, f.read, 1 << 20):
            yield chunk
