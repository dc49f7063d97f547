"""The one builder of overlayfs mount data, and the mount of an overlay or a lone lower tree.

Every overlay silobox makes goes through :func:`options`: a container's root in its silo, a
stopped container's root on the host (``silo sandbox attach --merged``, cp, export), an image
opened read-only to fill new volumes. Overlay takes at most 500 lower layers, the whole option
string must fit in one page, and ``,`` ``:`` ``\\`` in a path would change the options' meaning;
past any of those the kernel answers an opaque EINVAL (or mounts something else), so they are
refused here with the reason.
"""

from __future__ import annotations

import os

from silobox.kernel import libc

MAX_LOWERS = 500               # OVL_MAX_STACK in fs/overlayfs
_UNSAFE = (",", ":", "\\", "\n")


def options(lower_dirs: list[str], upper_dir: str = "", work_dir: str = "") -> str:
    """Overlay mount data for ``lower_dirs`` (top first) and, when given, a writable
    ``upper_dir``/``work_dir`` pair. Raises ValueError saying what the kernel would refuse.

    A path repeated in ``lower_dirs`` is kept once, where it is topmost (overlay refuses a
    repeated lowerdir and the lower copy could add nothing)."""
    if not lower_dirs:
        raise ValueError("an overlay needs at least one image layer")
    if bool(upper_dir) != bool(work_dir):
        raise ValueError("an overlay's upperdir and workdir go together")
    lowers: list[str] = []
    for path in lower_dirs:
        if path not in lowers:
            lowers.append(path)
    if len(lowers) > MAX_LOWERS:
        raise ValueError(f"the image has {len(lowers)} layers; overlay stacks at most "
                         f"{MAX_LOWERS}")
    if not upper_dir and len(lowers) < 2:
        raise ValueError("a read-only overlay needs at least two lower layers (mount the one "
                         "tree itself instead)")
    for path in [*lowers, *([upper_dir, work_dir] if upper_dir else [])]:
        if not path.startswith("/") or any(c in path for c in _UNSAFE):
            raise ValueError(f"layer path {path!r} cannot be given to overlay: it must be "
                             "absolute and contain no ',', ':' or '\\'")
    data = f"lowerdir={':'.join(lowers)}"
    if upper_dir:
        data += f",upperdir={upper_dir},workdir={work_dir}"
    limit = os.sysconf("SC_PAGE_SIZE") - 1
    if len(data.encode()) > limit:
        raise ValueError(f"the overlay options for {len(lowers)} layers are "
                         f"{len(data.encode())} bytes, over the kernel's limit of {limit}: use "
                         "a shorter storage root path")
    return data


def mount(target: str, lower_dirs: list[str], upper_dir: str = "", work_dir: str = "",
          flags: int = 0) -> None:
    """Mount the union of ``lower_dirs`` (top first) on ``target``: an overlay, writable
    through ``upper_dir`` when given; a read-only view of a single tree is a bind of it,
    remounted with ``flags`` (a bind takes none at first). Raises OSError as mount(2) does."""
    if not upper_dir and len(set(lower_dirs)) == 1:
        libc.mount(lower_dirs[0], target, None, libc.MS_BIND)
        libc.mount(None, target, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | flags)
        return
    data = options(lower_dirs, upper_dir, work_dir)
    libc.mount("overlay", target, "overlay", flags | (0 if upper_dir else libc.MS_RDONLY), data)
