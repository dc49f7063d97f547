"""The utility VM's boot assets without booting: the initramfs format, the module closure, the
kernel extraction and the TCG kernel arguments."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from silobox.compute.uvm import assets
from silobox.compute.uvm.accel import kernel_args
from silobox.errors import InvalidArgument, Unavailable


def _parse_cpio(data: bytes) -> dict[str, tuple[int, bytes]]:
    entries, pos = {}, 0
    while True:
        header = data[pos:pos + 110]
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, body)


def _module(path: str, depends: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\x7fELF junk\x00license=GPL\x00depends=" + depends.encode() + b"\x00name=x\x00")


def test_module_closure_orders_dependencies_first(tmp_path) -> None:
    root = str(tmp_path)
    _module(f"{root}/kernel/a/virtio_ring.ko", "")
    _module(f"{root}/kernel/a/virtio.ko", "virtio_ring")
    _module(f"{root}/kernel/b/virtio_blk.ko", "virtio,virtio_ring")
    _module(f"{root}/kernel/c/nf-thing.ko", "virtio")
    order = [os.path.basename(p) for p in assets._module_closure(root, ("virtio_blk", "nf_thing"))]
    assert order == ["virtio_ring.ko", "virtio.ko", "virtio_blk.ko", "nf-thing.ko"]
    with pytest.raises(Unavailable, match="no module missing"):
        assets._module_closure(root, ("missing",))


def test_initramfs_is_a_newc_archive_with_init_busybox_and_modules(tmp_path) -> None:
    if not os.path.exists(assets.BUSYBOX):
        pytest.skip("busybox-static is not installed")
    asset_dir = tmp_path / "uvm"
    (asset_dir / "modules").mkdir(parents=True)
    (asset_dir / "vmlinux").write_bytes(b"\x7fELF")
    (asset_dir / "release").write_text("6.1.0-test\n")
    (asset_dir / "modules" / "virtio.ko").write_bytes(b"module")
    (asset_dir / "modules" / "order").write_text("virtio.ko\n")
    cache = tmp_path / "cache"
    first = assets.build_initramfs(str(asset_dir), str(cache))
    assert assets.build_initramfs(str(asset_dir), str(cache)) == first   # cached by content
    entries = _parse_cpio(open(first, "rb").read())
    assert entries["init"][0] & 0o777 == 0o755
    assert entries["init"][1].startswith(b"#!/.sbx/busybox sh")
    assert entries[".sbx/modules/virtio.ko"][1] == b"module"
    assert entries["bin"][1] == b"usr/bin"
    assert os.path.getsize(first) % 512 == 0
    (asset_dir / "modules" / "virtio.ko").write_bytes(b"changed")
    second = assets.build_initramfs(str(asset_dir), str(cache))
    assert second != first and not os.path.exists(first)   # the stale image is removed


@pytest.mark.skipif(shutil.which("lz4") is None, reason="lz4 is not installed")
def test_extract_vmlinux_finds_the_lz4_payload(tmp_path) -> None:
    kernel = b"\x7fELF" + os.urandom(4096) + b"\x00" * 65536
    packed = subprocess.run(["lz4", "-l", "-c"], input=kernel, capture_output=True,
                            check=True).stdout
    image = tmp_path / "vmlinuz"
    image.write_bytes(b"MZ setup code" + b"\x00" * 500 + packed + b"trailing setup" * 10)
    assert assets.extract_vmlinux(str(image)) == kernel
    image.write_bytes(b"MZ no payload")
    with pytest.raises(InvalidArgument):
        assets.extract_vmlinux(str(image))


def test_tcg_guests_are_told_the_tsc_frequency() -> None:
    assert kernel_args("kvm") == ""
    args = kernel_args("tcg")
    if args:   # /proc/cpuinfo has a "cpu MHz" line on x86
        khz = int(args.split("tsc_early_khz=")[1].split()[0])
        assert khz > 100_000 and f"lpj={khz * 4}" in args
