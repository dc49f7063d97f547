"""Commands that connect the terminal to a container: run, create, start, attach, exec.

The order of requests follows the docker CLI, because it is what makes short-lived containers
safe to watch: attach and wait are in place *before* start, so no output and no exit can be
missed however fast the process is. The wait uses a connection of its own, the attach consumes
one (it is hijacked), and everything else shares a single keep-alive connection.
"""

from __future__ import annotations

import argparse
import select
import signal
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs start-up time
    from typing import Any

from silobox.cli import opts as copts
from silobox.cli import tty as ttymod
from silobox.cli.client import APIError, Client, Connection, ConnectError, Hijacked, quote
from silobox.cli.commands import (CommandParser, Context, StatusError, UsageError, parse,
                                  parser)

# Signals a non-tty attached client forwards to the container (docker's --sig-proxy).
_PROXY_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
# How long to give the daemon to acknowledge a wait before starting anyway.
_WAIT_ACK_TIMEOUT = 2.0


def _run_error(ctx: Context, err: BaseException, status: int = 125,
               help_hint: bool = False) -> StatusError:
    """docker's reportError: ``silo: <message>.`` on stderr, optionally the --help hint."""
    text = str(err).rstrip(".").rstrip() + "."
    if help_hint:
        text += f"\nSee '{ctx.cmd_path} --help'."
    return StatusError(status, f"{ctx.prog}: {text}")


# --------------------------------------------------------------------------- create / run

def _create_parser(ctx: Context, run_cmd: bool) -> CommandParser:
    if run_cmd:
        p = parser(ctx, "run", "[OPTIONS] IMAGE [COMMAND] [ARG...]",
                   "Create and run a new container from an image", help_short=False)
        p.add_argument("-d", "--detach", action="store_true",
                       help="Run container in background and print container ID")
        p.add_argument("--detach-keys", metavar="string",
                       help="Override the key sequence for detaching a container")
        p.add_argument("--sig-proxy", default="true", metavar="bool",
                       help="Proxy received signals to the process (default true)")
    else:
        p = parser(ctx, "create", "[OPTIONS] IMAGE [COMMAND] [ARG...]",
                   "Create a new container", help_short=False)
    copts.add_create_flags(p)
    return p


def _create(ctx: Context, ns: Any, detach: bool, console: tuple[int, int] | None) -> str:
    """POST /containers/create; prints warnings; maps errors to docker's run/create statuses."""
    try:
        body = copts.build_create_body(ns, detach=detach, console_size=console)
    except copts.OptError as e:
        raise _run_error(ctx, e, help_hint=True) from None
    params = {"name": ns.name or None, "platform": ns.platform or None}
    policy = getattr(ns, "pull", "missing") or "missing"
    if policy not in ("always", "missing", "never"):
        raise _run_error(ctx, UsageError(f'invalid pull option: "{policy}": must be one of '
                                         '"always", "missing" or "never"'), help_hint=True)
    try:
        if policy == "always":
            _pull(ctx, ns)
        try:
            created = ctx.client.post("/containers/create", params, body)
        except APIError as e:
            if not (e.status == 404 and "image" in e.message.lower()):
                raise
            ctx.err(f"Unable to find image '{copts.image_reference(ns.image)}' locally\n")
            if policy != "missing":
                raise
            _pull(ctx, ns)   # as the docker CLI does: pull what is missing, then create
            created = ctx.client.post("/containers/create", params, body)
    except (APIError, ConnectError) as e:
        raise _run_error(ctx, e) from None
    for w in (created or {}).get("Warnings") or []:
        ctx.err(f"WARNING: {w}\n")
    return str(created["Id"])


def _pull(ctx: Context, ns: Any) -> None:
    """Pull the image of ``run``/``create``, progress on stderr (stdout is the container's)."""
    from silobox.cli.commands.registry import pull_image
    try:
        pull_image(ctx, ns.image, ns.platform or None)
    except StatusError as e:   # an error reported inside the pull's message stream
        raise _run_error(ctx, Exception(e.message)) from None


def create(ctx: Context, argv: list[str]) -> int:
    """``silo create``: create a container and print its full id."""
    try:
        ns = parse(_create_parser(ctx, False), argv, intermixed=False)
    except UsageError as e:
        raise _run_error(ctx, e, help_hint=True) from None
    console = ttymod.get_size(1) if ns.tty else None
    cid = _create(ctx, ns, detach=True, console=console)
    ctx.out(cid + "\n")
    return 0


def _start(ctx: Context, cid: str) -> None:
    try:
        ctx.client.request("POST", f"/containers/{quote(cid)}/start")
    except APIError as e:
        raise _run_error(ctx, e, status=copts.start_error_status(e.message)) from None


def run(ctx: Context, argv: list[str]) -> int:
    """``silo run``: create, attach, start, stream, and exit with the container's status."""
    try:
        ns = parse(_create_parser(ctx, True), argv, intermixed=False)
    except UsageError as e:
        raise _run_error(ctx, e, help_hint=True) from None
    if ns.detach_keys:
        try:
            from silobox.cli.attach import parse_detach_keys

            parse_detach_keys(ns.detach_keys)
        except ValueError as e:
            raise _run_error(ctx, e, help_hint=True) from None
    interactive_tty = ns.tty and ns.interactive
    if not ns.detach and interactive_tty and not ttymod.is_tty(0):
        raise StatusError(1, "the input device is not a TTY")
    console = ttymod.get_size(1) if ns.tty else None
    cid = _create(ctx, ns, detach=ns.detach, console=console)

    if ns.detach:
        _start(ctx, cid)
        ctx.out(cid + "\n")
        return 0

    attach = [s.lower() for s in ns.attach]
    want_in = ns.interactive or "stdin" in attach
    want_out = not attach or "stdout" in attach
    want_err = not attach or "stderr" in attach
    sig_proxy = ns.sig_proxy.lower() not in ("false", "0", "no")
    return attach_and_start(ctx, cid, tty=ns.tty, stdin=want_in, stdout=want_out,
                            stderr=want_err, auto_remove=ns.rm, detach_keys=ns.detach_keys,
                            sig_proxy=sig_proxy and not ns.tty, start=True, run_cmd=True)


# --------------------------------------------------------------------------- the attached flow

def _send_wait(ctx: Context, cid: str, condition: str) -> Connection:
    """Issue POST /wait on its own connection and return without reading the answer."""
    client = ctx.client
    conn = client.connect()
    url = client.url(f"/containers/{quote(cid)}/wait", {"condition": condition or None})
    client.log_request("POST", url)
    conn.send_request("POST", url)
    return conn


def _read_wait(conn: Connection, resp: Any = None) -> int:
    """The StatusCode from a wait answer; daemon errors become exit status 125."""
    from silobox.cli.client import error_message

    if resp is None:
        resp = conn.read_response("POST")
    data = resp.read()
    conn.close()
    if resp.status >= 400:
        raise StatusError(125, f"Error response from daemon: {error_message(resp.status, data)}")
    import json

    doc = json.loads(data) if data.strip() else {}
    err = (doc.get("Error") or {}).get("Message") if isinstance(doc, dict) else None
    if err:
        sys.stderr.write(f"Error waiting for container: {err}\n")
    return int(doc.get("StatusCode", 125)) if isinstance(doc, dict) else 125


def attach_and_start(ctx: Context, cid: str, *, tty: bool, stdin: bool, stdout: bool,
                     stderr: bool, auto_remove: bool, detach_keys: str | None,
                     sig_proxy: bool, start: bool, run_cmd: bool) -> int:
    """Attach (hijacked), register a wait, start, pump stdio, return the exit status."""
    from silobox.cli import attach as attach_mod

    client = ctx.client
    params = {"stream": True, "stdin": stdin or None, "stdout": stdout or None,
              "stderr": stderr or None, "detachKeys": detach_keys or None}
    wait_conn = _send_wait(ctx, cid, "removed" if auto_remove else "next-exit") if start else \
        _send_wait(ctx, cid, "")
    try:
        stream = client.hijack("POST", f"/containers/{quote(cid)}/attach", params)
    except (APIError, ConnectError) as e:
        wait_conn.close()
        if run_cmd:
            raise _run_error(ctx, e) from None
        raise
    wait_resp = None
    try:
        # the daemon answers a wait's headers once the waiter is registered: only then start
        ready = select.select([wait_conn.sock], [], [], _WAIT_ACK_TIMEOUT)[0] if start else []
        if ready:
            wait_resp = wait_conn.read_response("POST")
            if wait_resp.status >= 400:
                stream.close()
                return _read_wait(wait_conn, wait_resp)
        if start:
            try:
                _start(ctx, cid)
            except StatusError:
                stream.close()
                if auto_remove:
                    _drain_wait(wait_conn, wait_resp)
                raise
        return _stream(ctx, cid, stream, wait_conn, wait_resp, tty=tty, stdin=stdin,
                       sig_proxy=sig_proxy, detach_keys=detach_keys,
                       resize_path=f"/containers/{quote(cid)}/resize",
                       kill_path=f"/containers/{quote(cid)}/kill", attach_mod=attach_mod)
    finally:
        stream.close()
        wait_conn.close()


def _drain_wait(conn: Connection, resp: Any, timeout: float = 2.0) -> None:
    """After a failed start with --rm, give the daemon a moment to remove the container."""
    ready, _, _ = select.select([conn.sock], [], [], timeout)
    if ready:
        try:
            (resp or conn.read_response("POST")).read()
        except Exception:
            pass


def _stream(ctx: Context, cid: str, stream: Hijacked, wait_conn: Connection | None,
            wait_resp: Any, *, tty: bool, stdin: bool, sig_proxy: bool,
            detach_keys: str | None, resize_path: str, kill_path: str | None,
            attach_mod: Any, exit_status: dict | None = None) -> int:
    client = ctx.client
    keys = attach_mod.DEFAULT_DETACH_KEYS
    if detach_keys:
        keys = attach_mod.parse_detach_keys(detach_keys)
    want_resize = tty and ttymod.is_tty(1)

    def resize() -> None:
        size = ttymod.get_size(1)
        if size:
            try:
                client.request("POST", resize_path, {"h": size[0], "w": size[1]})
            except (APIError, ConnectError, OSError):
                pass

    if want_resize:
        resize()
    sigs: list[int] = []
    if want_resize:
        sigs.append(signal.SIGWINCH)
    if sig_proxy and kill_path:
        sigs += [getattr(signal, s) for s in _PROXY_SIGNALS]
    elif tty:
        sigs += [signal.SIGTERM, signal.SIGHUP]

    def on_signal(signum: int) -> None:
        if signum == signal.SIGWINCH:
            resize()
        elif sig_proxy and kill_path:
            try:
                client.request("POST", kill_path, {"signal": str(signum)})
            except (APIError, ConnectError, OSError):
                pass
        else:
            raise SystemExit(128 + signum)

    raw = ttymod.RawMode(0) if (tty and stdin and ttymod.is_tty(0)) else None
    sys.stdout.flush()
    sys.stderr.flush()
    with ttymod.SignalPipe(sigs) as sp:
        if raw is not None:
            raw.__enter__()
        try:
            detached = attach_mod.pump(stream, tty=tty, use_stdin=stdin, signals=sp,
                                       on_signal=on_signal, detach_keys=keys if tty else b"",
                                       exit_status=exit_status)
        finally:
            if raw is not None:
                raw.restore()
    if detached or wait_conn is None:
        return 0
    return _read_wait(wait_conn, wait_resp)


# --------------------------------------------------------------------------- start / attach

def start(ctx: Context, argv: list[str]) -> int:
    """``silo start [-a] [-i] C...``."""
    p = parser(ctx, "start", "[OPTIONS] CONTAINER [CONTAINER...]",
               "Start one or more stopped containers")
    p.add_argument("-a", "--attach", action="store_true",
                   help="Attach STDOUT/STDERR and forward signals")
    p.add_argument("-i", "--interactive", action="store_true", help="Attach container's STDIN")
    p.add_argument("--detach-keys", metavar="string",
                   help="Override the key sequence for detaching a container")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    ns = parse(p, argv)
    if ns.attach or ns.interactive:
        if len(ns.containers) > 1:
            raise StatusError(1, "you cannot start and attach multiple containers at once")
        info = ctx.client.get(f"/containers/{quote(ns.containers[0])}/json")
        cfg = info.get("Config") or {}
        hc = info.get("HostConfig") or {}
        tty = bool(cfg.get("Tty"))
        use_in = bool(ns.interactive and cfg.get("OpenStdin"))
        if tty and use_in and not ttymod.is_tty(0):
            raise StatusError(1, "the input device is not a TTY")
        return attach_and_start(ctx, info["Id"], tty=tty, stdin=use_in, stdout=True,
                                stderr=True, auto_remove=bool(hc.get("AutoRemove")),
                                detach_keys=ns.detach_keys, sig_proxy=not tty, start=True,
                                run_cmd=False)
    from silobox.cli.commands import for_each

    def act(c: Client, name: str) -> None:
        c.request("POST", f"/containers/{quote(name)}/start")

    failed: list[str] = []
    if for_each(ctx, ns.containers, act, failed=failed):
        raise StatusError(1, "Error: failed to start containers: " + ", ".join(failed))
    return 0


def attach(ctx: Context, argv: list[str]) -> int:
    """``silo attach C``: connect to a running container's stdio; exits with its status."""
    p = parser(ctx, "attach", "[OPTIONS] CONTAINER",
               "Attach local standard input, output, and error streams to a running container")
    p.add_argument("--no-stdin", action="store_true", help="Do not attach STDIN")
    p.add_argument("--sig-proxy", default="true", metavar="bool",
                   help="Proxy all received signals to the process (default true)")
    p.add_argument("--detach-keys", metavar="string",
                   help="Override the key sequence for detaching a container")
    p.add_argument("container", metavar="CONTAINER")
    ns = parse(p, argv)
    info = ctx.client.get(f"/containers/{quote(ns.container)}/json")
    state = info.get("State") or {}
    if not state.get("Running"):
        raise StatusError(1, "You cannot attach to a stopped container, start it first")
    if state.get("Paused"):
        raise StatusError(1, "You cannot attach to a paused container, unpause it first")
    cfg = info.get("Config") or {}
    tty = bool(cfg.get("Tty"))
    use_in = bool(cfg.get("OpenStdin")) and not ns.no_stdin
    if tty and use_in and not ttymod.is_tty(0):
        raise StatusError(1, "the input device is not a TTY")
    sig_proxy = ns.sig_proxy.lower() not in ("false", "0", "no") and not tty
    return attach_and_start(ctx, info["Id"], tty=tty, stdin=use_in, stdout=True, stderr=True,
                            auto_remove=False, detach_keys=ns.detach_keys, sig_proxy=sig_proxy,
                            start=False, run_cmd=False)


# --------------------------------------------------------------------------- exec

def exec_(ctx: Context, argv: list[str]) -> int:
    """``silo exec``: run a command in a running container, exit with its ExitCode."""
    p = parser(ctx, "exec", "[OPTIONS] CONTAINER COMMAND [ARG...]",
               "Execute a command in a running container", help_short=True)
    p.add_argument("-d", "--detach", action="store_true",
                   help="Detached mode: run command in the background")
    p.add_argument("--detach-keys", metavar="string",
                   help="Override the key sequence for detaching a container")
    p.add_argument("-e", "--env", action="append", default=[], metavar="list",
                   help="Set environment variables")
    p.add_argument("--env-file", action="append", default=[], metavar="list",
                   help="Read in a file of environment variables")
    p.add_argument("-i", "--interactive", action="store_true",
                   help="Keep STDIN open even if not attached")
    p.add_argument("--privileged", action="store_true",
                   help="Give extended privileges to the command")
    p.add_argument("-t", "--tty", action="store_true", help="Allocate a pseudo-TTY")
    p.add_argument("-u", "--user", metavar="string",
                   help="Username or UID (format: <name|uid>[:<group|gid>])")
    p.add_argument("-w", "--workdir", metavar="string",
                   help="Working directory inside the container")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    ns = parse(p, argv, intermixed=False)
    if not ns.command:
        raise UsageError(f'"{ctx.cmd_path}" requires at least 2 arguments.')
    try:
        body = copts.build_exec_body(ns)
    except copts.OptError as e:
        raise UsageError(str(e)) from None
    if ns.tty and ns.interactive and not ttymod.is_tty(0) and not ns.detach:
        raise StatusError(1, "the input device is not a TTY")
    # One request (silod's ``?start=1``): create, start and, unless detached, the stream,
    # which ends with the exit status; the docker CLI's create/start/inspect stay served.
    client = ctx.client
    path = f"/containers/{quote(ns.container)}/exec"
    if ns.detach:
        _, data, headers = client.request("POST", path, {"start": "1"},
                                          {**body, "Detach": True})
        if "x-silobox-exec-id" not in headers:   # a daemon that only created it (dockerd)
            import json

            client.request("POST", f"/exec/{json.loads(data)['Id']}/start", None,
                           {"Detach": True, "Tty": ns.tty})
        return 0
    size = ttymod.get_size(1) if ns.tty else None
    if size:
        body["ConsoleSize"] = [size[0], size[1]]
    from silobox.cli import attach as attach_mod

    try:
        stream = client.hijack("POST", path, {"start": "1"}, body, created=True)
        if isinstance(stream, dict):   # a daemon that only created it (dockerd): start it
            eid = stream["Id"]
            start_body = {"Detach": False, "Tty": ns.tty}
            if "ConsoleSize" in body:
                start_body["ConsoleSize"] = body["ConsoleSize"]
            stream = client.hijack("POST", f"/exec/{eid}/start", None, start_body)
        else:
            eid = stream.headers.get("x-silobox-exec-id", "")
    except APIError as e:
        code = copts.start_error_status(e.message)
        raise StatusError(1 if code == 125 else code, str(e)) from None
    status: dict[str, Any] = {}
    try:
        _stream(ctx, ns.container, stream, None, None, tty=ns.tty, stdin=ns.interactive,
                sig_proxy=False, detach_keys=ns.detach_keys, resize_path=f"/exec/{eid}/resize",
                kill_path=None, attach_mod=attach_mod, exit_status=status)
    finally:
        stream.close()
    if "ExitCode" in status:
        return int(status["ExitCode"])
    return _exec_exit_code(client, eid) if eid else 0


def _exec_exit_code(client: Client, eid: str) -> int:
    import time

    deadline = time.monotonic() + 2.0
    while True:
        info = client.get(f"/exec/{eid}/json")
        code = info.get("ExitCode")
        if code is not None and not info.get("Running"):
            return int(code)
        if time.monotonic() > deadline:
            return int(code) if code is not None else 126
        time.sleep(0.02)

