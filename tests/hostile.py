"""A corpus of hostile archives, generated, and the victim tree they aim at.

Each case is a list of tar members that a crafted image layer, ``import`` rootfs, ``load``
archive, build context or ``cp`` tar could carry to write outside the tree being written:
symlinks and hard links out, whiteouts and opaque markers through links, a directory replaced
by a link between two members, long link chains, ``..`` and absolute names, magic links of
``/proc``, device nodes and setuid bits aimed at the victim. Every case names the victim by its
absolute path and by a relative climb. Tests push each through an entry point and then check
with :func:`snapshot` that the victim is byte for byte what it was.

Imported as a plain module (``import hostile``): pytest puts ``tests/`` on the path.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass, field

MTIME = 1_700_000_000


@dataclass(frozen=True)
class Member:
    """One tar member: ``kind`` is dir, file, symlink, hardlink, chardev, blockdev or fifo."""

    kind: str
    name: str
    data: bytes = b""
    mode: int = 0o644
    link: str = ""
    uid: int = 0
    gid: int = 0
    dev: tuple[int, int] = (0, 0)
    pax: dict[str, str] = field(default_factory=dict)


_TYPES = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "chardev": tarfile.CHRTYPE, "blockdev": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def tar_bytes(members: list[Member]) -> bytes:
    """The members as a PAX tar, in order (names kept exactly, ``..`` and ``/`` included)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = _TYPES[m.kind]
            info.mode, info.uid, info.gid, info.mtime = m.mode, m.uid, m.gid, MTIME
            info.linkname = m.link
            info.devmajor, info.devminor = m.dev
            if m.pax:
                info.pax_headers = dict(m.pax)
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def d(name: str, mode: int = 0o755, **kw: object) -> Member:
    return Member("dir", name, mode=mode, **kw)   # type: ignore[arg-type]


def f(name: str, data: bytes = b"planted\n", mode: int = 0o644, **kw: object) -> Member:
    return Member("file", name, data, mode=mode, **kw)   # type: ignore[arg-type]


def sym(name: str, target: str) -> Member:
    return Member("symlink", name, mode=0o777, link=target)


def hard(name: str, target: str) -> Member:
    return Member("hardlink", name, link=target)


def chardev(name: str, major: int = 1, minor: int = 3, mode: int = 0o666) -> Member:
    return Member("chardev", name, mode=mode, dev=(major, minor))


def climb(victim: str, depth: int = 40) -> str:
    """The victim as a relative path that climbs out of any tree less than ``depth`` deep."""
    return "../" * depth + victim.lstrip("/")


def cases(victim: str) -> dict[str, list[Member]]:
    """Every hostile archive, by name, aimed at the directory ``victim``."""
    up = climb(victim)
    chain = [sym(f"l{i}", f"l{i + 1}") for i in range(39)] + [sym("l39", victim)]
    return {
        # the reported attack: a directory, its whiteout, a link in its place, a write into it
        "issue-whiteout-then-symlink": [d("x"), f("x/.wh.x"), f(".wh.x"), sym("x", victim),
                                        f("x/passwd", b"root::0:0::/:/bin/sh\n", 0o4755)],
        "dir-replaced-by-symlink": [d("x"), f("x/keep"), sym("x", victim),
                                    f("x/passwd", mode=0o4755)],
        "dir-replaced-by-relative-symlink": [d("x"), sym("x", up), f("x/passwd")],
        "write-through-absolute-symlink": [sym("esc", victim), f("esc/passwd")],
        "write-through-relative-symlink": [d("a"), sym("a/esc", up), f("a/esc/passwd")],
        "write-through-nested-symlink": [d("a"), sym("a/b", "/"), f(f"a/b/{victim.lstrip('/')}"
                                                                    "/passwd")],
        "long-symlink-chain": [*chain, f("l0/passwd")],
        "symlink-to-symlink-dir": [sym("one", victim), sym("two", "one"), f("two/passwd")],
        "dotdot-name": [f("../../../../../../../../" + victim.lstrip("/") + "/passwd")],
        "dotdot-inside-name": [d("a"), f("a/../../" + victim.lstrip("/") + "/passwd")],
        "absolute-name": [f(victim + "/passwd")],
        "absolute-dir-name": [d(victim + "/sub"), f(victim + "/sub/new")],
        "hardlink-absolute": [hard("h", victim + "/passwd")],
        "hardlink-climbing": [hard("h", up + "/passwd")],
        "hardlink-through-symlink": [sym("esc", victim), hard("h", "esc/passwd")],
        "hardlink-after-swap": [d("x"), f("x/passwd"), f(".wh.x"), sym("x", victim),
                                hard("h", "x/passwd")],
        "hardlink-then-write": [sym("esc", victim + "/passwd"), hard("h", "esc"),
                                f("h", b"overwritten\n")],
        "whiteout-through-symlink": [sym("esc", victim), f("esc/.wh.passwd")],
        "whiteout-of-symlinked-dir-contents": [sym("esc", victim), f("esc/.wh.sub")],
        "opaque-through-symlink": [sym("esc", victim), f("esc/.wh..wh..opq")],
        "device-through-symlink": [sym("esc", victim), chardev("esc/mem", 1, 1)],
        "setuid-through-symlink": [sym("esc", victim), f("esc/sh", b"#!/bin/sh\n", 0o6755)],
        "dir-entry-over-symlink": [sym("esc", victim), d("esc", 0o777, uid=1234, gid=1234)],
        "file-entry-over-symlink": [sym("esc", victim + "/passwd"), f("esc", b"replaced\n")],
        "magic-link-proc-root": [sym("p", "/proc/self/root" + victim), f("p/passwd")],
        "magic-link-proc-1": [f("proc/1/root" + victim + "/passwd")],
        "fd-magic-link": [sym("fd", "/proc/self/fd"), f("fd/3/passwd")],
        "parent-is-a-file": [f("x"), f("x/passwd")],
        "xattr-redirect": [f("x", pax={"SCHILY.xattr.trusted.overlay.redirect": victim})],
        "setuid-and-devices-inside": [d("bin"), f("bin/su", b"su\n", 0o4755),
                                      d("dev"), chardev("dev/null"), chardev("dev/mem", 1, 1),
                                      Member("fifo", "dev/pipe", mode=0o600)],
    }


# What a legitimate archive of those same kinds looks like: it must still work everywhere.
def legit() -> list[Member]:
    return [d("etc"), f("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"), d("bin"),
            f("bin/tool", b"tool\n", 0o4755), hard("bin/tool2", "bin/tool"),
            sym("bin/sh", "tool"), sym("abs", "/etc/passwd"), d("gone"), f("gone/x"),
            f(".wh.gone"), d("opq"), f("opq/.wh..wh..opq"), f("opq/y", b"y\n"),
            d("dev"), chardev("dev/null"), Member("fifo", "dev/pipe", mode=0o600)]


# -- the victim ------------------------------------------------------------------------------


def make_victim(path: str) -> str:
    """A small host tree with the names the corpus aims at."""
    os.makedirs(os.path.join(path, "sub"))
    with open(os.path.join(path, "passwd"), "w") as fh:
        fh.write("victim:x:0:0::/:/bin/false\n")
    with open(os.path.join(path, "sh"), "w") as fh:
        fh.write("#!/bin/false\n")
    os.chmod(os.path.join(path, "sh"), 0o755)
    with open(os.path.join(path, "sub", "file"), "w") as fh:
        fh.write("deep\n")
    os.chmod(path, 0o755)
    return path


def snapshot(path: str) -> list[tuple]:
    """Everything about the tree that a write would change: names, kinds, modes, owners,
    link counts, sizes, contents, link targets, xattrs and mtimes (ctime too, which chown,
    chmod, link and xattr changes move even when they put the old value back)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(dirnames + filenames) + ([""] if dirpath == path else []):
            full = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(full)
            content = b""
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as fh:
                    content = hashlib.sha256(fh.read()).digest()
            link = os.readlink(full) if stat.S_ISLNK(st.st_mode) else ""
            try:
                xattrs = sorted((k, os.getxattr(full, k, follow_symlinks=False))
                                for k in os.listxattr(full, follow_symlinks=False))
            except OSError:
                xattrs = []
            out.append((os.path.relpath(full, path), st.st_mode, st.st_uid, st.st_gid,
                        st.st_nlink, st.st_size, st.st_mtime_ns, st.st_ctime_ns, content, link,
                        xattrs))
    return sorted(out)
