"""Which accelerator boots the utility VM: KVM where it works, QEMU's TCG emulation otherwise.

``/dev/kvm`` existing proves little: nested or paravirtual KVM (PVM, for one) can refuse a stock
guest kernel or hang in it. So the check boots the real guest kernel under KVM with a
``sbx.mode=probe`` init that prints a marker and resets the machine, and takes KVM only if the
marker arrives within a few seconds. The answer is cached in ``/run`` (gone at reboot) per kernel
and QEMU binary.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass

from silobox.atomic import atomic_write_json

PROBE_MARKER = b"silobox-uvm: userspace reached"
PROBE_TIMEOUT = 4.0
CACHE = "/run/silobox/uvm-accel.json"


@dataclass(frozen=True)
class Accelerator:
    name: str      # "kvm" or "tcg"
    reason: str    # why this one (what the KVM probe found)


def kernel_args(accel: str) -> str:
    """Extra guest kernel arguments for ``accel``.

    Under TCG the guest's TSC is the host's, but calibrating it against the emulated PIT fails
    whenever the host is busy, and a guest without a TSC frequency and with no HPET or PM timer
    (``microvm`` has neither) hangs early in boot. So the guest is told the host's TSC frequency
    and loops-per-jiffy instead of measuring them.
    """
    if accel != "tcg":
        return ""
    khz = 0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    khz = int(float(line.split(":", 1)[1]) * 1000)
                    break
    except (OSError, ValueError):
        pass
    if khz <= 0:
        return ""
    return f"tsc_early_khz={khz} lpj={khz * 4} no_timer_check"


def probe_boot(assets, accel: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str, float]:
    """Boot the guest to its init under ``accel``; (reached, what happened, seconds)."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return False, "qemu-system-x86_64 is not installed", 0.0
    argv = [qemu, "-M", "microvm", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
            "-m", "128M", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-kernel", assets.kernel, "-initrd", assets.initramfs,
            "-append", f"console=ttyS0 quiet reboot=t panic=-1 {kernel_args(accel)} sbx.mode=probe",
            "-serial", "stdio"]
    t0 = time.monotonic()
    # setpriv, not a preexec_fn: no fork handlers of silod's libraries (gRPC) run in the child.
    proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", *argv],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = b""
    try:
        assert proc.stdout is not None
        while PROBE_MARKER not in out:
            left = t0 + timeout - time.monotonic()
            if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                return False, f"no guest userspace within {timeout:.0f}s under {accel}", timeout
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                last = out.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                return False, f"QEMU ({accel}) exited: {last[0][:200]}", time.monotonic() - t0
            out += chunk
        return True, f"guest userspace reached under {accel}", time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _cache_key(assets) -> str:
    qemu = shutil.which("qemu-system-x86_64") or ""
    try:
        stamp = os.stat(qemu).st_mtime_ns
    except OSError:
        stamp = 0
    return f"{assets.release}:{os.stat(assets.kernel).st_mtime_ns}:{qemu}:{stamp}"


def detect_accelerator(assets, *, refresh: bool = False) -> Accelerator:
    """KVM if a guest provably boots under it here, else TCG; cached until the host reboots."""
    forced = os.environ.get("SILOBOX_UVM_ACCEL")
    if forced in ("kvm", "tcg"):
        return Accelerator(forced, "SILOBOX_UVM_ACCEL")
    key = _cache_key(assets)
    if not refresh:
        try:
            with open(CACHE) as f:
                cached = json.load(f)
            if cached.get("key") == key:
                return Accelerator(cached["name"], cached["reason"])
        except (OSError, ValueError, KeyError):
            pass
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        result = Accelerator("tcg", "no usable /dev/kvm")
    else:
        ok, what, seconds = probe_boot(assets, "kvm")
        result = (Accelerator("kvm", f"{what} in {seconds:.2f}s") if ok
                  else Accelerator("tcg", f"KVM does not boot the guest: {what}"))
    try:
        os.makedirs(os.path.dirname(CACHE), exist_ok=True)
        atomic_write_json(CACHE, {"key": key, "name": result.name, "reason": result.reason})
    except OSError:
        pass
    return result
