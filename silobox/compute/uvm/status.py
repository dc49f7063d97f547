"""What ``silo info`` says about the utility VM: its kernel and which accelerator boots it."""

from __future__ import annotations

import os
import shutil
from typing import Any

from silobox.errors import SiloboxError


def utility_vm_status() -> dict[str, Any]:
    """Kernel, accelerator (probed once per host boot, up to a few seconds) or why there is none."""
    from silobox.compute.uvm.accel import detect_accelerator
    from silobox.compute.uvm.assets import boot_assets, installed_release
    from silobox.compute.uvm.vm import QEMU, VIRTIOFSD
    release = installed_release()
    if release is None:
        return {"Available": False,
                "Reason": "no guest kernel installed (scripts/install.sh unpacks it)"}
    if shutil.which(QEMU) is None or not os.path.exists(VIRTIOFSD):
        return {"Available": False, "Kernel": release,
                "Reason": "QEMU (qemu-system-x86) is not installed"}
    try:
        accel = detect_accelerator(boot_assets())
    except SiloboxError as e:
        return {"Available": False, "Kernel": release, "Reason": e.message}
    return {"Available": True, "Kernel": release, "Accelerator": accel.name,
            "AcceleratorReason": accel.reason}
