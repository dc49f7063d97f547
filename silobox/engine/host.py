"""What the engine itself asks of the host's kernel, behind one seam.

The services below the engine (compute, network, storage) own their kernel objects; what the
engine touches directly is listed here: the job objects nobody owns after a restart, the
shared-memory tmpfs of ``--ipc shareable``, and a few facts (hostname, whether a file is there).
``KernelHost`` does it for real; the unit tests give the engine a recording fake instead, so
its decisions are tested without a kernel, while the kernel itself is tested for real.
"""

from __future__ import annotations

import os
import socket
from typing import Protocol


class Host(Protocol):
    def hostname(self) -> str:
        """The host's name (a ``--uts host`` container shows it)."""

    def exists(self, path: str) -> bool: ...

    def job_objects(self, parent: str) -> list[str]:
        """The names of the job objects (cgroups) under ``parent``."""

    def remove_job_object(self, name: str, parent: str) -> None:
        """Kill what runs in the job object, wait for it to empty, delete it."""

    def remove_tree(self, path: str) -> None:
        """Remove a directory of silod's own runtime state (never a container's tree)."""

    def mount_tmpfs(self, path: str, options: str) -> None:
        """A tmpfs at ``path`` (created 0700 if missing), nosuid, nodev, noexec."""

    def unmount(self, path: str) -> None:
        """Detach the mount at ``path`` if there is one."""


class KernelHost:
    """The real host."""

    def hostname(self) -> str:
        return socket.gethostname()

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def job_objects(self, parent: str) -> list[str]:
        from silobox.kernel.jobobject import list_job_objects
        return list(list_job_objects(parent))

    def remove_job_object(self, name: str, parent: str) -> None:
        from silobox.kernel.jobobject import JobObject
        job = JobObject(name, parent)
        job.kill_all()
        job.wait_empty(5.0)
        job.delete()

    def remove_tree(self, path: str) -> None:
        import shutil
        shutil.rmtree(path, ignore_errors=True)

    def mount_tmpfs(self, path: str, options: str) -> None:
        from silobox.kernel import libc
        os.makedirs(path, mode=0o700, exist_ok=True)
        if not os.path.ismount(path):
            libc.mount("shm", path, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
                       options)

    def unmount(self, path: str) -> None:
        from silobox.kernel import libc
        if os.path.ismount(path):
            libc.umount2(path, libc.MNT_DETACH)
