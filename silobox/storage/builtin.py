"""The built-in ``busybox`` image, made locally and offline from Debian's busybox-static.

A fresh install has no registry access to assume, yet ``silo run busybox`` should work at once (the
way a Windows host ships its base OS layers). The image is built from the host's own
``busybox-static`` package: one layer with ``/bin/busybox``, a symlink per applet and the minimal
``/etc`` files, written as a deterministic tar so every build on the same package version yields
the same layer and the same image id.
"""

from __future__ import annotations

import glob
import io
import os
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from silobox.errors import InvalidArgument, NotFound, SystemFailure, Unavailable
from silobox.storage import reference
from silobox.storage.images import Image, ImageStore, host_architecture

BUILTIN_REPOSITORY = "docker.io/library/busybox"
BUILTIN_TAG = "latest"
PACKAGE = "busybox-static"
BINARY = "bin/busybox"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTALL_HINT = f"apt-get install {PACKAGE}"
_TOOL_TIMEOUT = 120

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""

GROUP = """\
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
mail:x:8:
wheel:x:10:root
www-data:x:33:
operator:x:37:
users:x:100:
nogroup:x:65534:
"""

# Directories of the root filesystem and their modes (parents of listed files get 0755).
DIRECTORIES: dict[str, int] = {
    "bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755, "proc": 0o755, "root": 0o700,
    "sbin": 0o755, "sys": 0o755, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755,
    "usr/sbin": 0o755, "var": 0o755, "var/spool": 0o755, "var/spool/mail": 0o755,
    "var/www": 0o755,
}

_build_lock = threading.Lock()


@dataclass(frozen=True)
class BusyboxPackage:
    """The busybox binary of the host's busybox-static package."""

    binary: str
    version: str
    mtime: int


def is_builtin_reference(ref: str) -> bool:
    """True if ``ref`` names the built-in image (``busybox``, ``busybox:latest``, …)."""
    try:
        parsed = reference.parse_tagged(ref)
    except InvalidArgument:
        return False
    return (parsed.name == BUILTIN_REPOSITORY and parsed.tag == BUILTIN_TAG
            and parsed.digest is None)


def ensure_builtin_image(images: ImageStore, ref: str) -> Image | None:
    """The image ``ref`` names if it is the built-in busybox, built now if the store lacks it.

    Returns None when ``ref`` is some other image (the caller then reports it missing or pulls).
    """
    if not is_builtin_reference(ref):
        return None
    with _build_lock:
        try:
            return images.resolve(f"{BUILTIN_REPOSITORY}:{BUILTIN_TAG}")
        except NotFound:
            return build_builtin_image(images)


def build_builtin_image(images: ImageStore) -> Image:
    """Build the busybox image from the host's package and tag it ``busybox:latest``."""
    with busybox_package() as package:
        applets = list_applets(package.binary)
        with open(package.binary, "rb") as f:
            binary = f.read()
    data = busybox_layer_tar(binary, applets, package.mtime)
    layer = images.layers.add_from_tar(io.BytesIO(data), parent=None)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(package.mtime))
    config = {
        "architecture": host_architecture(),
        "os": "linux",
        "created": created,
        "config": {"Env": [DEFAULT_PATH], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": created,
                     "created_by": f"created by silobox from Debian {PACKAGE} {package.version}"}],
    }
    return images.create(config, [layer.diff_id], tags=[f"{BUILTIN_REPOSITORY}:{BUILTIN_TAG}"])


@contextmanager
def busybox_package(use_installed: bool = True) -> Iterator[BusyboxPackage]:
    """The installed package's binary, or one unpacked from ``apt-get download`` into a temp dir.

    Raises Unavailable, saying what to install, when neither works.
    """
    installed = _installed_binary() if use_installed else None
    if installed is not None:
        yield installed
        return
    with tempfile.TemporaryDirectory(prefix="silobox-busybox-") as tmp:
        os.chmod(tmp, 0o755)   # apt fetches as its unprivileged _apt user
        yield _downloaded_binary(tmp)


def list_applets(binary: str) -> list[str]:
    """Applet paths relative to ``/`` (``bin/sh``, ``usr/bin/awk`` …) from ``--list-full``."""
    out = _run([binary, "--list-full"], "list the busybox applets")
    applets = sorted({line.strip().lstrip("/") for line in out.splitlines() if line.strip()})
    for applet in applets:
        if applet.startswith("/") or ".." in applet.split("/"):
            raise SystemFailure(f"busybox listed an unexpected applet path {applet!r}",
                                operation="storage::Builtin", object_id=binary)
    return applets


def busybox_layer_tar(binary: bytes, applets: list[str], mtime: int) -> bytes:
    """The layer as a deterministic tar: sorted entries, fixed mtime, owner root, no pax data."""
    entries: dict[str, tarfile.TarInfo] = {}

    def add_dir(name: str, mode: int = 0o755) -> None:
        if name and name not in entries:
            add_dir(os.path.dirname(name))
            entries[name] = _info(name, tarfile.DIRTYPE, mode, mtime)

    for name, mode in DIRECTORIES.items():
        add_dir(os.path.dirname(name))
        entries[name] = _info(name, tarfile.DIRTYPE, mode, mtime)
    files = {BINARY: (binary, 0o755), "etc/passwd": (PASSWD.encode(), 0o644),
             "etc/group": (GROUP.encode(), 0o644)}
    for name in files:
        add_dir(os.path.dirname(name))
        entries[name] = _info(name, tarfile.REGTYPE, files[name][1], mtime, len(files[name][0]))
    for applet in applets:
        if applet == BINARY or applet in entries:
            continue
        add_dir(os.path.dirname(applet))
        info = _info(applet, tarfile.SYMTYPE, 0o777, mtime)
        info.linkname = "/" + BINARY
        entries[applet] = info
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(entries):
            info = entries[name]
            content = files.get(name)
            tar.addfile(info, io.BytesIO(content[0]) if content else None)
    return buf.getvalue()


def _info(name: str, kind: bytes, mode: int, mtime: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.size = size
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _installed_binary() -> BusyboxPackage | None:
    try:
        listing = subprocess.run(["dpkg", "-L", PACKAGE], capture_output=True, text=True,
                                 timeout=_TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listing.returncode != 0:
        return None
    for path in listing.stdout.splitlines():
        if path.endswith("/bin/busybox") and os.path.isfile(path):
            version = _run(["dpkg-query", "-W", "-f=${Version}", PACKAGE],
                           f"read the {PACKAGE} version").strip()
            return BusyboxPackage(path, version, int(os.stat(path).st_mtime))
    return None


def _downloaded_binary(workdir: str) -> BusyboxPackage:
    try:
        subprocess.run(["apt-get", "download", "-q", PACKAGE], cwd=workdir, capture_output=True,
                       timeout=_TOOL_TIMEOUT, check=True)
        debs = glob.glob(os.path.join(workdir, "*.deb"))
        if not debs:
            raise FileNotFoundError(f"apt-get download left no .deb in {workdir}")
        unpacked = os.path.join(workdir, "root")
        subprocess.run(["dpkg-deb", "-x", debs[0], unpacked], capture_output=True,
                       timeout=_TOOL_TIMEOUT, check=True)
        version = subprocess.run(["dpkg-deb", "-f", debs[0], "Version"], capture_output=True,
                                 text=True, timeout=_TOOL_TIMEOUT, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"the built-in busybox image needs Debian's {PACKAGE} package, which is "
                          f"not installed and could not be downloaded ({_why(e)}): run "
                          f"'{INSTALL_HINT}'", operation="storage::Builtin",
                          object_id=PACKAGE, cause=e) from e
    for candidate in ("bin/busybox", "usr/bin/busybox"):
        path = os.path.join(unpacked, candidate)
        if os.path.isfile(path):
            return BusyboxPackage(path, version, int(os.stat(path).st_mtime))
    raise Unavailable(f"the downloaded {PACKAGE} package has no bin/busybox: run "
                      f"'{INSTALL_HINT}'", operation="storage::Builtin", object_id=PACKAGE)


def _run(argv: list[str], what: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TOOL_TIMEOUT,
                              check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise SystemFailure(f"cannot {what}: {_why(e)}", operation="storage::Builtin",
                            object_id=argv[0], cause=e) from e
    return done.stdout


def _why(e: BaseException) -> str:
    if isinstance(e, subprocess.CalledProcessError):
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        last = (err or "").strip().splitlines()
        return f"{e.cmd[0]} exited with {e.returncode}" + (f": {last[-1]}" if last else "")
    return str(e)
