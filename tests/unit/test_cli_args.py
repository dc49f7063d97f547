"""``silo`` argument parsing: global flags, docker's exit statuses, and the create/exec bodies."""

from __future__ import annotations

import json

import pytest

from silobox.cli import main as climain
from silobox.cli import opts
from silobox.cli.commands import Context, UsageError, parse
from silobox.cli.commands.run import _create_parser


def parse_run(*argv: str, run: bool = True):
    ctx = Context("unix:///nonexistent.sock", False)
    ctx.cmd_path = "silo run"
    return parse(_create_parser(ctx, run), list(argv), intermixed=False)


def body(*argv: str, detach: bool = True, **kw):
    return opts.build_create_body(parse_run(*argv), detach=detach, environ={"HOME": "/root"},
                                  **kw)


# --------------------------------------------------------------------------- main()

def test_version_fast_path(capsys) -> None:
    assert climain.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("silo version 0.1.0, API 1.47")


def test_version_fast_path_does_not_load_commands() -> None:
    import subprocess
    import sys

    code = ("import sys; from silobox.cli.main import main; main(['--version']); "
            "bad = [m for m in ('argparse', 'json', 'http.client', 'socket', "
            "'silobox.cli.commands', 'silobox.cli.client') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().endswith("[]"), out


def test_unknown_command(capsys) -> None:
    assert climain.main(["frobnicate"]) == 1
    assert "'frobnicate' is not a silo command" in capsys.readouterr().err


def test_unknown_global_flag(capsys) -> None:
    assert climain.main(["--bogus", "ps"]) == 125
    assert "unknown flag: --bogus" in capsys.readouterr().err


def test_bad_run_flag_is_125_with_help_hint(capsys) -> None:
    assert climain.main(["-H", "unix:///nonexistent/x.sock", "run", "--bogus", "busybox"]) == 125
    err = capsys.readouterr().err
    assert err == "silo: unknown flag: --bogus.\nSee 'silo run --help'.\n"


def test_missing_image_argument(capsys) -> None:
    assert climain.main(["-H", "unix:///nonexistent/x.sock", "run"]) == 125
    assert '"silo run" requires at least 1 argument' in capsys.readouterr().err


def test_bad_size_is_125(capsys) -> None:
    assert climain.main(["-H", "unix:///nonexistent/x.sock", "run", "-m", "lots", "busybox"]) \
        == 125
    assert 'invalid argument "lots" for "-m, --memory" flag' in capsys.readouterr().err


def test_container_group_alias_parses_like_top_level(capsys) -> None:
    assert climain.main(["-H", "unix:///nonexistent/x.sock", "container", "ls", "--bogus"]) == 125
    assert "See 'silo container ls --help'." in capsys.readouterr().err


def test_unreachable_daemon_is_reported(capsys, tmp_path) -> None:
    assert climain.main(["-H", f"unix://{tmp_path}/x.sock", "ps"]) == 1
    assert "Cannot connect to the silobox daemon" in capsys.readouterr().err
    assert climain.main(["-H", f"unix://{tmp_path}/x.sock", "run", "busybox"]) == 125


def test_global_flags() -> None:
    o, rest = climain._parse_globals(["-D", "-H", "unix:///a", "ps", "-a"])
    assert o["debug"] and o["host"] == "unix:///a" and rest == ["ps", "-a"]
    o, rest = climain._parse_globals(["--host=/b", "run", "-d", "x"])
    assert o["host"] == "/b" and rest == ["run", "-d", "x"]


def test_host_from_environment(monkeypatch) -> None:
    from silobox.cli.client import DEFAULT_HOST, default_host

    monkeypatch.delenv("SILOBOX_HOST", raising=False)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert default_host() == DEFAULT_HOST
    monkeypatch.setenv("DOCKER_HOST", "unix:///d.sock")
    assert default_host() == "unix:///d.sock"
    monkeypatch.setenv("SILOBOX_HOST", "unix:///s.sock")
    assert default_host() == "unix:///s.sock"


# --------------------------------------------------------------------------- run flags → body

def test_command_stops_flag_parsing() -> None:
    ns = parse_run("--rm", "-it", "busybox", "ls", "-l", "--rm", "-d")
    assert ns.rm and ns.interactive and ns.tty and not ns.detach
    assert ns.image == "busybox" and ns.command == ["ls", "-l", "--rm", "-d"]


def test_minimal_body() -> None:
    b = body("busybox")
    assert b["Image"] == "busybox" and b["Cmd"] is None
    assert not b["AttachStdout"] and not b["Tty"] and not b["OpenStdin"]
    assert b["HostConfig"]["NetworkMode"] == "default"
    assert b["HostConfig"]["AutoRemove"] is False
    assert "Entrypoint" not in b


def test_attached_body() -> None:
    b = body("-i", "--rm", "busybox", "cat", detach=False)
    assert b["AttachStdin"] and b["AttachStdout"] and b["AttachStderr"]
    assert b["OpenStdin"] and b["StdinOnce"]
    assert b["HostConfig"]["AutoRemove"] is True
    b = body("busybox", "true", detach=False)
    assert not b["AttachStdin"] and b["AttachStdout"] and not b["StdinOnce"]
    b = body("-a", "stderr", "busybox", detach=False)
    assert not b["AttachStdout"] and b["AttachStderr"]


def test_full_body(tmp_path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nFROM_FILE=1\nHOME\nUNSET_VAR\n")
    b = body("--name", "web", "-e", "A=1", "-e", "HOME", "--env-file", str(env_file),
             "-w", "/tmp", "-u", "1000:1000", "--hostname", "h1", "--entrypoint", "/bin/sh",
             "--init", "-m", "32m", "--memory-swap", "-1", "--memory-reservation", "16m",
             "--cpus", "0.5", "-c", "512", "--cpu-period", "100000", "--cpu-quota", "50000",
             "--cpuset-cpus", "0", "--cpuset-mems", "0", "--pids-limit", "64",
             "--cap-add", "NET_ADMIN", "--cap-drop", "ALL", "--cap-drop", "MKNOD",
             "--privileged", "--read-only", "--security-opt", "no-new-privileges",
             "--security-opt", "seccomp=unconfined", "--ulimit", "nofile=1024:2048",
             "--ulimit", "nproc=64", "--isolation", "process", "-l", "a=b", "--label", "c",
             "--stop-signal", "SIGINT", "--stop-timeout", "3", "--network", "none",
             "--tmpfs", "/run:rw,size=64m", "-v", "/srv:/data:ro", "-v", "/anon",
             "-p", "127.0.0.1:47201:5201", "--restart", "on-failure:3",
             "busybox", "sh", "-c", "echo hi")
    assert b["Env"] == ["FROM_FILE=1", "HOME=/root", "UNSET_VAR", "A=1", "HOME=/root"]
    assert b["WorkingDir"] == "/tmp" and b["User"] == "1000:1000" and b["Hostname"] == "h1"
    assert b["Entrypoint"] == ["/bin/sh"] and b["Cmd"] == ["sh", "-c", "echo hi"]
    assert b["Labels"] == {"a": "b", "c": ""}
    assert b["StopSignal"] == "SIGINT" and b["StopTimeout"] == 3
    assert b["Volumes"] == {"/anon": {}}
    assert b["ExposedPorts"] == {"5201/tcp": {}}
    hc = b["HostConfig"]
    assert hc["Memory"] == 32 << 20 and hc["MemorySwap"] == -1
    assert hc["MemoryReservation"] == 16 << 20
    assert hc["NanoCpus"] == 500_000_000 and hc["CpuShares"] == 512
    assert hc["CpuPeriod"] == 100000 and hc["CpuQuota"] == 50000
    assert hc["CpusetCpus"] == "0" and hc["CpusetMems"] == "0" and hc["PidsLimit"] == 64
    assert hc["CapAdd"] == ["NET_ADMIN"] and hc["CapDrop"] == ["ALL", "MKNOD"]
    assert hc["Privileged"] is True and hc["ReadonlyRootfs"] is True and hc["Init"] is True
    assert hc["SecurityOpt"] == ["no-new-privileges", "seccomp=unconfined"]
    assert hc["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048},
                             {"Name": "nproc", "Soft": 64, "Hard": 64}]
    assert hc["Isolation"] == "process" and hc["NetworkMode"] == "none"
    assert hc["Tmpfs"] == {"/run": "rw,size=64m"} and hc["Binds"] == ["/srv:/data:ro"]
    assert hc["PortBindings"] == {"5201/tcp": [{"HostIp": "127.0.0.1", "HostPort": "47201"}]}
    assert hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}


def test_empty_entrypoint_resets_it() -> None:
    assert body("--entrypoint", "", "busybox")["Entrypoint"] == [""]


def test_console_size_only_with_tty() -> None:
    assert body("-t", "busybox", console_size=(24, 80))["HostConfig"]["ConsoleSize"] == [24, 80]
    assert "ConsoleSize" not in body("busybox", console_size=(24, 80))["HostConfig"]


def test_seccomp_profile_is_sent_inline_and_compacted(tmp_path) -> None:
    profile = tmp_path / "p.json"
    text = '{\n  "defaultAction": "SCMP_ACT_ALLOW",\n  "syscalls": [\n    {"names": ["mkdir"],' \
           ' "action": "SCMP_ACT_ERRNO", "comment": "a b\\u00e9"}\n  ]\n}\n'
    profile.write_text(text)
    b = body("--security-opt", f"seccomp={profile}", "busybox")
    opt = b["HostConfig"]["SecurityOpt"][0]
    assert opt == ('seccomp={"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],'
                   '"action":"SCMP_ACT_ERRNO","comment":"a b\\u00e9"}]}')
    assert json.loads(opt[len("seccomp="):]) == json.loads(text)
    # docker also accepts the colon form
    assert body("--security-opt", f"seccomp:{profile}", "busybox")["HostConfig"][
        "SecurityOpt"][0] == opt


def test_security_opt_errors(tmp_path) -> None:
    with pytest.raises(opts.OptError, match="opening seccomp profile"):
        body("--security-opt", f"seccomp={tmp_path}/missing.json", "busybox")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(opts.OptError, match="compacting json"):
        body("--security-opt", f"seccomp={bad}", "busybox")
    with pytest.raises(opts.OptError, match="Invalid --security-opt"):
        body("--security-opt", "bogus", "busybox")


@pytest.mark.parametrize("value", ["nofile", "nofile=a", "=1", "nofile=2048:1024"])
def test_bad_ulimits(value: str) -> None:
    with pytest.raises(opts.OptError):
        opts.parse_ulimit(value)


@pytest.mark.parametrize("value,expected", [
    ("80", [("80/tcp", {"HostIp": "", "HostPort": ""})]),
    ("8080:80", [("80/tcp", {"HostIp": "", "HostPort": "8080"})]),
    ("127.0.0.1::80/udp", [("80/udp", {"HostIp": "127.0.0.1", "HostPort": ""})]),
    ("[::1]:8080:80", [("80/tcp", {"HostIp": "::1", "HostPort": "8080"})]),
    ("9000-9001:90-91", [("90/tcp", {"HostIp": "", "HostPort": "9000"}),
                         ("91/tcp", {"HostIp": "", "HostPort": "9001"})]),
])
def test_publish(value: str, expected) -> None:
    assert opts.parse_publish(value) == expected


def test_restart_and_rm_conflict() -> None:
    with pytest.raises(opts.OptError, match="--restart and --rm"):
        body("--rm", "--restart", "always", "busybox")


def test_detach_and_attach_conflict() -> None:
    with pytest.raises(opts.OptError, match="Conflicting options: -a and -d"):
        body("-a", "stdout", "busybox", detach=True)


@pytest.mark.parametrize("message,status", [
    ('exec: "nope": executable file not found in $PATH', 127),
    ("open /bin/nope: no such file or directory", 127),
    ("exec /etc/passwd: permission denied", 126),
    ("cannot execute /x", 126),
    ("exec /etc: is a directory", 126),
    ("cgroup setup failed", 125),
])
def test_start_error_status(message: str, status: int) -> None:
    assert opts.start_error_status(message) == status


def test_image_reference() -> None:
    assert opts.image_reference("busybox") == "busybox:latest"
    assert opts.image_reference("busybox:1.36") == "busybox:1.36"
    assert opts.image_reference("localhost:5000/x") == "localhost:5000/x:latest"
    assert opts.image_reference("x@sha256:abc") == "x@sha256:abc"


def test_exec_body() -> None:
    import argparse

    ns = argparse.Namespace(user="root", privileged=False, tty=True, interactive=True,
                            detach=False, env=["A=1"], env_file=[], workdir="/tmp",
                            command=["sh"], detach_keys=None)
    b = opts.build_exec_body(ns, environ={})
    assert b == {"User": "root", "Privileged": False, "Tty": True, "AttachStdin": True,
                 "AttachStdout": True, "AttachStderr": True, "Env": ["A=1"],
                 "WorkingDir": "/tmp", "Cmd": ["sh"]}


def test_parse_errors_raise_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown flag: --nope"):
        parse_run("--nope", "busybox")
    with pytest.raises(UsageError, match="flag needs an argument"):
        parse_run("--name")


def test_detach_keys() -> None:
    from silobox.cli.attach import parse_detach_keys

    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("a,ctrl-@") == b"a\x00"
    with pytest.raises(ValueError):
        parse_detach_keys("ctrl-1")


def test_blkio_and_windows_resource_flags() -> None:
    import argparse

    from silobox.cli.opts import OptError, add_create_flags, blkio_flags, windows_resources
    p = argparse.ArgumentParser(add_help=False)
    add_create_flags(p)
    ns, _ = p.parse_known_args(["--device-read-bps", "/dev/sda:1mb", "--device-write-iops",
                                "/dev/sdb:300", "--blkio-weight", "500",
                                "--blkio-weight-device", "/dev/sda:200", "--cpu-count", "2",
                                "--cpu-percent", "30", "--io-maxbandwidth", "10mb",
                                "--io-maxiops", "100", "busybox"])
    assert blkio_flags(ns) == {
        "BlkioWeight": 500, "BlkioWeightDevice": [{"Path": "/dev/sda", "Weight": 200}],
        "BlkioDeviceReadBps": [{"Path": "/dev/sda", "Rate": 1 << 20}],
        "BlkioDeviceWriteIOps": [{"Path": "/dev/sdb", "Rate": 300}]}
    assert windows_resources(ns) == {"CpuCount": 2, "CpuPercent": 30,
                                     "IOMaximumBandwidth": 10 << 20, "IOMaximumIOps": 100}
    for bad in ("sda:1mb", "/dev/sda", "/dev/sda:-1", "/dev/sda:x"):
        ns, _ = p.parse_known_args(["--device-read-bps", bad, "busybox"])
        try:
            blkio_flags(ns)
        except OptError as e:
            assert "--device-read-bps" in str(e)
        else:
            raise AssertionError(bad)
