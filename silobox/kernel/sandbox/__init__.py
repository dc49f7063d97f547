"""The sandbox of a container process: what Windows does with a restricted token and syscall filter.

Linux pieces, one module each:

* ``capabilities`` — the privileges a root process keeps (bounding/effective/permitted sets);
* ``user`` — uid, gid and supplementary groups, resolved from the image's passwd/group files;
* ``rlimits`` — ``--ulimit`` resource limits (lower only, on hosts without CAP_SYS_RESOURCE);
* ``seccomp`` (+ ``seccomp_default``) — Docker-format syscall filter profiles compiled to BPF;
* ``paths`` — the masked and read-only paths the rootfs code hides or freezes.

The daemon resolves everything to plain numbers and bytes. A container's processes get them
applied by the entry helper (``silobox/kernel/entry/helper.c``), a static program, between its
fork and exec, in this order; the ``apply_*`` functions here are the same steps for Python
children (``apply_sandbox`` runs them all; the kernel tests check the order's semantics with
them):

1. rlimits (may need privileges the next steps drop);
2. without no_new_privs: the seccomp filter now, while CAP_SYS_ADMIN still allows loading it;
3. bounding set down to the container's mask, ambient set cleared;
4. groups, gid, uid — the effective set is still full here, so this works even when the
   container's mask lacks CAP_SETUID/CAP_SETGID (``--cap-drop ALL --user 1000``);
5. effective = permitted = mask for uid 0; a non-root uid ends with none (the kernel cleared
   them at setuid; exec would anyway), as in Docker;
6. no_new_privs, then (with it) the seccomp filter: the last step before exec.
"""

from __future__ import annotations

import os
from typing import Sequence

from silobox.kernel import libc
from silobox.kernel.sandbox import capabilities as _caps
from silobox.kernel.sandbox import rlimits as _rlimits
from silobox.kernel.sandbox import seccomp as _seccomp


class SandboxStepError(OSError):
    """A child-side step failed; ``stage`` names it for the parent's error message."""

    def __init__(self, stage: str, err: OSError) -> None:
        super().__init__(err.errno, err.strerror, err.filename)
        self.stage = stage


def enter_identity(capabilities: int, last_cap: int, uid: int, gid: int,
                   groups: Sequence[int]) -> None:
    """Steps 3–5: bounding set, user switch, then the capability sets."""
    stage = "capabilities"
    try:
        _caps.drop_bounding_set(capabilities, last_cap)
        stage = "user"
        os.setgroups(list(groups))
        os.setgid(gid)
        os.setuid(uid)
        stage = "capabilities"
        mask = capabilities if uid == 0 else 0
        _caps.set_capabilities(mask)
    except OSError as e:
        raise SandboxStepError(stage, e) from None


def lock_down(no_new_privs: bool, bpf: bytes | None, seccomp_flags: int = 0) -> None:
    """Step 6: no_new_privs, then the filter (when no_new_privs is off it was loaded in step 2)."""
    if not no_new_privs:
        return
    stage = "no_new_privs"
    try:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        if bpf:
            stage = "seccomp"
            _seccomp.apply_seccomp(bpf, seccomp_flags)
    except OSError as e:
        raise SandboxStepError(stage, e) from None


def apply_sandbox(capabilities: int, last_cap: int, uid: int, gid: int, groups: Sequence[int],
                  rlimits: Sequence[tuple[int, int, int]], no_new_privs: bool,
                  bpf: bytes | None, seccomp_flags: int = 0) -> None:
    """All sandbox steps of the child, in order. Call it last before exec (after chdir)."""
    try:
        _rlimits.apply_rlimits(list(rlimits))
    except (OSError, ValueError) as e:
        err = e if isinstance(e, OSError) else OSError(22, str(e))
        raise SandboxStepError("rlimits", err) from None
    if bpf and not no_new_privs:
        try:
            _seccomp.apply_seccomp(bpf, seccomp_flags)
        except OSError as e:
            raise SandboxStepError("seccomp", e) from None
    enter_identity(capabilities, last_cap, uid, gid, groups)
    lock_down(no_new_privs, bpf, seccomp_flags)
