"""``silod``: the silobox daemon, serving the Docker Engine API on a unix socket.

Start-up order matters: the spawner is forked first, while silod is still one thread with a
small heap, and only then are asyncio, aiohttp and the services brought up.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sys

from silobox import __version__
from silobox.engine.config import DEFAULT_EXEC_ROOT, DEFAULT_ROOT, DaemonConfig

log = logging.getLogger("silod")


def _bool(text: str) -> bool:
    """dockerd's boolean flag values: ``--ip-forward=false``."""
    v = str(text).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


def _parse_args(argv: list[str] | None) -> DaemonConfig:
    p = argparse.ArgumentParser(prog="silod", description="The silobox container daemon.")
    p.add_argument("-D", "--debug", action="store_true", help="log every request")
    p.add_argument("-H", "--host", default=None,
                   help="unix socket to serve on (default unix:///run/silobox/silod.sock)")
    p.add_argument("--root", default=os.environ.get("SILOBOX_ROOT", DEFAULT_ROOT),
                   help="persistent state directory (default %(default)s)")
    p.add_argument("--exec-root", default=os.environ.get("SILOBOX_EXEC_ROOT", DEFAULT_EXEC_ROOT),
                   help="runtime state directory (default %(default)s)")
    p.add_argument("--cgroup-parent", default=os.environ.get("SILOBOX_CGROUP_PARENT", "silobox"),
                   help="parent cgroup of every job object (default %(default)s)")
    p.add_argument("--shim-pool", type=int, default=int(os.environ.get("SILOBOX_SHIM_POOL", "2")),
                   help="warm shims kept ready to take the forks and the cgroup attach off the "
                        "start path; 0 disables (default %(default)s)")
    p.add_argument("--storage-opt", action="append", default=[], metavar="OPT",
                   help="sandbox=disk|dir (default disk when loop devices work), size=SIZE of "
                        "sandbox disks (default 20G); also env SILOBOX_STORAGE_OPTS=a=b,c=d")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                   help="a registry (host[:port] or CIDR) reached without certificate checks "
                        "and over plain http; 127.0.0.0/8 and localhost always are")
    p.add_argument("--registry-certs-dir",
                   default=os.environ.get("SILOBOX_REGISTRY_CERTS_DIR", "/etc/silobox/certs.d"),
                   help="CA and client certificates per registry, <dir>/<host:port>/ca.crt "
                        "(default %(default)s)")
    p.add_argument("--registry-loopback-only", action="store_true",
                   default=os.environ.get("SILOBOX_REGISTRY_LOOPBACK_ONLY") == "1",
                   help="refuse to contact any registry not on this machine (127.0.0.0/8, ::1, "
                        "localhost); test daemons run so")
    p.add_argument("--ip-forward", type=_bool, metavar="BOOL",
                   default=_bool(os.environ.get("SILOBOX_IP_FORWARD", "true")),
                   help="enable net.ipv4.ip_forward while a nat network exists, restored when "
                        "the last silod stops (default true)")
    p.add_argument("--forward-rules", type=_bool, metavar="BOOL",
                   default=_bool(os.environ.get("SILOBOX_FORWARD_RULES", "true")),
                   help="add accept rules for the nat networks to a host firewall whose forward "
                        "hook drops by default, removed with the network (default true)")
    p.add_argument("-v", "--version", action="version", version=f"silod {__version__}")
    a = p.parse_args(argv)
    host = a.host or os.environ.get("SILOBOX_HOST") or f"unix://{a.exec_root}/silod.sock"
    if not host.startswith("unix://"):
        p.error(f"only unix:// sockets are supported, not {host!r}")
    parent = a.cgroup_parent.strip("/")
    if not parent or ".." in parent.split("/"):
        p.error(f"invalid --cgroup-parent {a.cgroup_parent!r}")
    return DaemonConfig(root=os.path.abspath(a.root), exec_root=os.path.abspath(a.exec_root),
                        socket=host[len("unix://"):], cgroup_parent=parent, debug=a.debug,
                        shim_pool=max(0, a.shim_pool), storage_opts=tuple(a.storage_opt),
                        insecure_registries=tuple(a.insecure_registry),
                        registry_certs_dir=os.path.abspath(a.registry_certs_dir),
                        registry_loopback_only=a.registry_loopback_only,
                        ip_forward=a.ip_forward, forward_rules=a.forward_rules)


def _lock_pidfile(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode().strip() or "?"
        print(f"silod: another silod is already running with this exec root (pid {other})",
              file=sys.stderr)
        sys.exit(1)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


async def _serve(config: DaemonConfig, spawner: object) -> None:
    import asyncio

    from silobox.api.app import create_app
    from silobox.api.server import serve, shutdown
    from silobox.daemon.wiring import build_engine

    engine = build_engine(config, spawner)  # type: ignore[arg-type]
    await engine.start()
    runner = await serve(create_app(engine), config.socket)
    log.info("silod %s serving on unix://%s (root %s)", __version__, config.socket, config.root)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("silod stopping; containers keep running under their shims")
    await shutdown(runner)
    await engine.close()


def _remove_empty_parent(parent: str) -> None:
    """Leave no empty cgroup of ours behind; running containers keep theirs (and the parent)."""
    from silobox.errors import SiloboxError
    from silobox.kernel.jobobject import cleanup_parent
    try:
        cleanup_parent(parent)
    except SiloboxError as e:
        log.debug("keeping cgroup parent %s: %s", parent, e)


def main(argv: list[str] | None = None) -> None:
    config = _parse_args(argv)
    if os.geteuid() != 0:
        print("silod: must run as root (it manages namespaces, cgroups and mounts)",
              file=sys.stderr)
        sys.exit(1)
    logging.basicConfig(level=logging.DEBUG if config.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.makedirs(config.exec_root, mode=0o711, exist_ok=True)
    os.makedirs(os.path.dirname(config.socket) or "/", mode=0o711, exist_ok=True)
    from silobox.compute.spawner import Spawner
    # The spawner first: shims are its forks, and a shim must not inherit the pid-file lock
    # (it would outlive a killed silod and block the next one).
    from silobox.kernel.entry import EntryHelperMissing
    try:
        spawner = Spawner.fork(config.cgroup_parent, config.shim_pool)
    except EntryHelperMissing as e:
        print(f"silod: {e}", file=sys.stderr)
        sys.exit(1)
    try:
        pid_fd = _lock_pidfile(config.pid_file)
    except SystemExit:
        spawner.close()
        raise
    import asyncio
    try:
        asyncio.run(_serve(config, spawner))
    finally:
        spawner.close()   # drains the warm shims and their pool job objects
        _remove_empty_parent(config.cgroup_parent)
        try:
            os.unlink(config.pid_file)
        except FileNotFoundError:
            pass
        os.close(pid_fd)
