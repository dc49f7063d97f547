"""The silo's ``/sys/fs/cgroup``: its own job object, seen where programs look for their limits.

JVMs, Go's runtime, Node, nginx's ``worker_processes auto`` and ``nproc``-like tools size
themselves from ``/sys/fs/cgroup``. Docker's layout is reproduced:

* cgroup v1 / hybrid hosts: a tmpfs with one directory per controller hierarchy the host
  mounts under ``/sys/fs/cgroup`` (same names, so ``cpu,cpuacct`` and its ``cpu``/``cpuacct``
  links where the host co-mounts them), each showing the container's own group: with a
  private cgroup namespace a fresh mount of the hierarchy (its root is the namespace's root,
  the job object); with ``--cgroupns host`` a bind of the container's directory, found in
  ``/proc/self/cgroup``. Hierarchies a job object has no group in (``name=systemd``, a hybrid
  host's controller-less ``unified``) are left out: they would show the host's groups.
* cgroup v2 hosts: the unified hierarchy mounted fresh, rooted at the container's group in a
  private namespace and the whole host tree with ``--cgroupns host`` (as Docker shows it).

Everything is read-only (``nosuid,nodev,noexec``) unless the silo is privileged, as in Docker.
Runs in the container's first process, after its namespaces and before ``pivot_root``, while
the mount table still shows the host's mounts; it only does syscalls and raises ``OSError``.
"""

from __future__ import annotations

import os
import re

from silobox.kernel import libc
from silobox.kernel.jobobject.v1 import CONTROLLERS as JOB_CONTROLLERS

HOST_CGROUP = "/sys/fs/cgroup"
_ESCAPE = re.compile(r"\\([0-7]{3})")
_OPTIONS_KEPT = re.compile(r"^(name=.+|[a-z0-9_]+)$")
_NOT_HIERARCHY = {"rw", "ro", "xattr", "noprefix", "clone_children", "cpuset_v2_mode",
                  "nsdelegate", "memory_recursiveprot", "memory_localevents", "favordynmods"}


def _host_mounts() -> tuple[str, list[tuple[str, str, str]]]:
    """(fstype at /sys/fs/cgroup, [(name, fstype, super options)] of the mounts below it)."""
    top = ""
    below: list[tuple[str, str, str]] = []
    with open("/proc/self/mountinfo") as f:
        text = f.read()
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if not sep or len(fields) < 5 or len(rfields) < 3:
            continue
        point = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        if point == HOST_CGROUP:
            top = rfields[0]
            below = []   # a later mount over /sys/fs/cgroup hides what was below it
        elif os.path.dirname(point) == HOST_CGROUP and rfields[0] in ("cgroup", "cgroup2"):
            below = [b for b in below if b[0] != os.path.basename(point)]
            below.append((os.path.basename(point), rfields[0], rfields[2]))
    return top, below


def _own_paths() -> dict[str, str]:
    """Hierarchy key (sorted controllers, ``name=x``, or ``""`` for cgroup2) → our group."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, _, rest = line.rstrip("\n").partition(":")
            controllers, _, path = rest.partition(":")
            out[",".join(sorted(controllers.split(","))) if controllers else ""] = path
    return out


def _hierarchy_key(superopts: str) -> tuple[str, str]:
    """(key as in /proc/self/cgroup, mount data) of a v1 hierarchy's super options."""
    opts = [o for o in superopts.split(",") if _OPTIONS_KEPT.match(o)
            and not o.startswith("release_agent")]
    controllers = [o for o in opts if o not in _NOT_HIERARCHY]
    data = ",".join(o for o in opts if o not in ("rw", "ro"))
    return ",".join(sorted(controllers)), data


def mount_cgroupfs(root: str, private_ns: bool, writable: bool) -> None:
    """Mount the silo's cgroup view at ``<root>/sys/fs/cgroup`` (see the module's docstring)."""
    target = os.path.join(root, "sys/fs/cgroup")
    if not os.path.isdir(target):
        return
    try:
        top, below = _host_mounts()
    except OSError:
        return
    flags = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    ro = 0 if writable else libc.MS_RDONLY
    if top == "cgroup2":
        libc.mount("cgroup", target, "cgroup2", flags | ro, None)
        return
    if top != "tmpfs" or not below:
        return
    libc.mount("tmpfs", target, "tmpfs", flags, "mode=755,size=64k")
    own = {} if private_ns else _own_paths()
    shown = []
    for name, fstype, superopts in below:
        key, data = ("", "") if fstype == "cgroup2" else _hierarchy_key(superopts)
        if not set(key.split(",")) & set(JOB_CONTROLLERS):
            continue   # named (name=systemd) or controller-less cgroup2: no job group there
        shown.append(name)
        mp = os.path.join(target, name)
        os.mkdir(mp, 0o555)
        if private_ns:
            libc.mount("cgroup", mp, fstype, flags | ro, data or None)
            continue
        src = os.path.join(HOST_CGROUP, name) + own.get(key, "/")
        libc.mount(src, mp, None, libc.MS_BIND)
        libc.mount(None, mp, None, libc.MS_BIND | libc.MS_REMOUNT | flags | ro)
    for entry in os.scandir(HOST_CGROUP):
        if entry.is_symlink() and os.readlink(entry.path) in shown:   # cpu -> cpu,cpuacct
            os.symlink(os.readlink(entry.path), os.path.join(target, entry.name))
    if not writable:
        libc.mount(None, target, None, libc.MS_REMOUNT | flags | libc.MS_RDONLY,
                   "mode=755,size=64k")
