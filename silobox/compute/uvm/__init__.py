"""The utility VM: a small Linux guest that silobox boots with QEMU.

It serves two purposes, as on Windows: the isolation boundary of ``--isolation hyperv``
containers, and a host with a pure cgroup v2 hierarchy wherever the host itself has none. Modules:
:mod:`.assets` (guest kernel from Debian's package, initramfs), :mod:`.accel` (KVM or TCG),
:mod:`.vm` (one running VM and its control channel) and :mod:`.agent` (the guest's PID 1).

The package imports nothing itself: the agent runs in the guest on the standard library alone.
"""
