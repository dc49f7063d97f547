"""The utility VM for the tests that need a pure cgroup v2 host: booted once per session.

The VM shares this checkout, silobox's venv and the host's /usr read-only; whatever the guest
writes goes to the VM's own disk, which goes with the VM. The fixture stops the VM and removes
every file of it even when a test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
from typing import Iterator

import pytest

from silobox.compute.uvm.assets import installed_release
from silobox.compute.uvm.vm import STATE_DIR, UtilityVM, VMConfig, cleanup_stale, default_shares

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def uvm_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the utility VM needs root (virtiofsd, mount namespaces)"
    if installed_release() is None:
        return "no utility VM kernel installed (scripts/install.sh puts it in <prefix>/uvm)"
    for tool in ("qemu-system-x86_64", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install.sh installs it)"
    if not os.path.exists("/usr/lib/qemu/virtiofsd"):
        return "QEMU's virtiofsd is missing (qemu-system-common)"
    return None


@pytest.fixture(scope="session")
def uvm_state(run_id: str) -> Iterator[str]:
    """The VMs' state directory; VMs of runs that were killed are removed first, and at the
    end nothing of this run's VMs may be left."""
    reason = uvm_unavailable()
    if reason:
        pytest.skip(reason)
    cleanup_stale(STATE_DIR)
    yield STATE_DIR
    left = [n for n in os.listdir(STATE_DIR) if n.startswith(f"t{run_id}")] \
        if os.path.isdir(STATE_DIR) else []
    assert not left, f"utility VM files left behind: {left}"


@pytest.fixture(scope="session")
def uvm(uvm_state: str, run_id: str) -> Iterator[UtilityVM]:
    """One running utility VM (1 vCPU, 768 MiB) for the whole session."""
    vm = UtilityVM(f"t{run_id}{secrets.token_hex(2)}",
                   VMConfig(memory_mib=768, cpus=1, disk_mib=4096,
                            shares=default_shares(CHECKOUT), boot_timeout=120),
                   state_dir=uvm_state)
    vm.start()
    try:
        yield vm
    finally:
        vm.stop()
