"""``python -m silobox.compute.uvm``: install the guest kernel, build the initramfs, check the
accelerator, or run one command in a throwaway utility VM."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m silobox.compute.uvm")
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install-kernel", help="keep the kernel of an unpacked linux-image .deb")
    install.add_argument("unpacked")
    install.add_argument("dest", nargs="?")
    sub.add_parser("initramfs", help="build (or find) the initramfs; print its path")
    sub.add_parser("accel", help="detect the accelerator again; print it")
    run = sub.add_parser("run", help="boot a VM, run a command in it, tear it down")
    run.add_argument("--memory", type=int, default=512, help="MiB")
    run.add_argument("--cpus", type=int, default=1)
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "run" and args.cmd[:1] == ["--"]:
        args.cmd = args.cmd[1:]

    from silobox.compute.uvm import assets
    if args.command == "install-kernel":
        print(assets.install_kernel(args.unpacked, args.dest or assets.ASSET_DIR))
    elif args.command == "initramfs":
        print(assets.build_initramfs())
    elif args.command == "accel":
        from silobox.compute.uvm.accel import detect_accelerator
        accel = detect_accelerator(assets.boot_assets(), refresh=True)
        print(f"{accel.name}: {accel.reason}")
    elif args.command == "run":
        import secrets
        from silobox.compute.uvm.vm import UtilityVM, VMConfig, cleanup_stale, default_shares
        cleanup_stale()
        config = VMConfig(memory_mib=args.memory, cpus=args.cpus, shares=default_shares())
        with UtilityVM(f"run-{secrets.token_hex(4)}", config) as vm:
            print(f"# booted in {vm.boot_seconds:.2f}s ({vm.accel.name}), kernel "
                  f"{vm.kernel_release}", file=sys.stderr)
            proc = vm.spawn(args.cmd or ["uname", "-a"])
            proc.close_stdin()
            for fd, data in proc.output():
                (sys.stdout if fd == 1 else sys.stderr).buffer.write(data)
                (sys.stdout if fd == 1 else sys.stderr).flush()
            return proc.status or 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
