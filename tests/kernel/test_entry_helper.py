"""Kernel tests of the container entry helper (silobox/kernel/entry): the sealed memfd, the
sandbox it applies before execve, its errors and its refusals.

The helper runs in a forked child that first enters fresh mount/uts/ipc/net namespaces; it
reports on a sync pipe as the spawn stages do, and the program it execs (busybox) prints its
/proc/self/status on a second pipe. Nothing is applied to the pytest process.
"""

from __future__ import annotations

import errno
import json
import os
import select
import subprocess
import time

import pytest

from silobox.kernel import entry, libc
from silobox.kernel.sandbox import capabilities, seccomp

BUSYBOX = "/bin/busybox"
DEFAULT_MASK = 0xA80425FB
FRESH_NS = libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC | libc.CLONE_NEWNET


@pytest.fixture(scope="module", autouse=True)
def helper() -> int:
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static is not installed")
    try:
        return entry.load(entry.ensure_built())
    except entry.EntryHelperMissing as e:
        pytest.skip(str(e))


def _read_all(fd: int, deadline: float) -> bytes:
    out = b""
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no EOF in time: {out!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                return out
            out += chunk


def enter(argv: list[str], mode: int = entry.MODE_FORK, path: str | None = None,
          **kw) -> tuple[list[dict], str, int | None]:
    """Run the helper in a child; returns (sync messages, program output, exit code of the
    helper's child that execs, when this process can see it)."""
    sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    start_r, start_w = os.pipe2(os.O_CLOEXEC)
    spec = dict(mode=mode, sync_fd=sync_w, path=path or argv[0], argv=argv, env=["PATH=/bin"],
                cwd="/", uid=0, gid=0, groups=[0], capabilities=DEFAULT_MASK,
                last_cap=capabilities.last_capability(), no_new_privs=False, seccomp=None,
                rlimits=[], umask=0o022, oom_score_adj=None)
    spec.update(kw)
    if mode & entry.MODE_PARK:
        spec["start_fd"] = start_r
    pid = os.fork()
    if pid == 0:
        try:
            libc.unshare(FRESH_NS)
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            entry.exec_helper(entry.encode_spec(**spec), [sync_w, start_r])
        finally:
            os._exit(70)
    for fd in (sync_w, out_w, start_r):
        os.close(fd)
    deadline = time.monotonic() + 10
    try:
        msgs: list[dict] = []
        buf = b""
        if mode & entry.MODE_PARK:
            while b"\n" not in buf:
                chunk = os.read(sync_r, 4096)
                assert chunk, "the helper exited before parking"
                buf += chunk
            line, buf = buf.split(b"\n", 1)
            assert json.loads(line) == {"t": "ready"}
            os.write(start_w, b"1")
        os.close(start_w)
        start_w = -1
        buf += _read_all(sync_r, deadline)
        msgs = [json.loads(line) for line in buf.splitlines() if line.strip()]
        out = _read_all(out_r, deadline).decode(errors="replace")
    finally:
        if start_w >= 0:
            os.close(start_w)
        os.close(sync_r)
        os.close(out_r)
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return msgs, out, code


def field(out: str, name: str) -> str:
    for line in out.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(name)


def test_memfd_is_sealed_immutable_and_anonymous(helper):
    st = os.fstat(helper)
    assert st.st_mode == 0o100555 and st.st_uid == 0
    assert os.readlink(f"/proc/self/fd/{helper}").startswith("/memfd:silobox-entry")
    with pytest.raises(PermissionError):
        os.fchmod(helper, 0o4755)
    with pytest.raises(PermissionError):
        os.fchown(helper, 0, 4242)
    fd = os.open(f"/proc/self/fd/{helper}", os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            os.pwrite(fd, b"x", 0)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        os.open(f"/proc/self/fd/{helper}", os.O_WRONLY)


def test_first_process_parks_then_gets_the_default_sandbox():
    msgs, out, code = enter([BUSYBOX, "cat", "/proc/self/status"], mode=entry.MODE_PARK)
    assert msgs == [] and code == 0, (msgs, out)
    for key in ("CapBnd", "CapEff", "CapPrm"):
        assert int(field(out, key), 16) == DEFAULT_MASK, key
    assert int(field(out, "CapAmb"), 16) == 0 and int(field(out, "CapInh"), 16) == 0
    assert field(out, "NoNewPrivs") == "0"


def test_exec_mode_forks_and_applies_user_rlimits_umask_cwd_seccomp():
    caps = capabilities.resolve_capabilities([], ["ALL"], False)
    bpf = seccomp.compile_profile(seccomp.default_profile(), caps, True)
    msgs, out, code = enter(
        [BUSYBOX, "sh", "-c", "cat /proc/self/status; pwd; ulimit -n"], uid=1000, gid=1000,
        groups=[1000, 27], capabilities=0, no_new_privs=True, seccomp=bpf, cwd="/tmp",
        umask=0o027, rlimits=[(7, 100, 200)])   # RLIMIT_NOFILE
    assert [m["t"] for m in msgs] == ["pid"], msgs
    assert code == 0
    assert field(out, "Uid").split() == ["1000"] * 4
    assert field(out, "Gid").split() == ["1000"] * 4
    assert field(out, "Groups").split() == ["27", "1000"]
    for key in ("CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(field(out, key), 16) == 0, key
    assert field(out, "NoNewPrivs") == "1" and field(out, "Seccomp") == "2"
    assert field(out, "Umask") == "0027"
    assert out.splitlines()[-2:] == ["/tmp", "100"]


def test_missing_program_is_127_with_docker_wording():
    msgs, _out, code = enter(["nope"], path="/nonexistent/nope")
    err = [m for m in msgs if m["t"] == "error"]
    assert err == [{"t": "error", "stage": "exec", "errno": errno.ENOENT,
                    "msg": 'exec: "nope": no such file or directory'}]


def test_not_executable_is_126_and_a_bad_cwd_names_its_stage():
    msgs, _out, _code = enter(["/etc"], path="/etc")
    assert [(m["stage"], m["msg"]) for m in msgs if m["t"] == "error"] == \
        [("exec", 'exec: "/etc": permission denied')]
    msgs, _out, _code = enter([BUSYBOX, "true"], cwd="/nonexistent")
    err = [m for m in msgs if m["t"] == "error"]
    assert err and err[0]["stage"] == "cwd" and err[0]["errno"] == errno.ENOENT, msgs


def test_json_escaping_of_hostile_names():
    name = 'a"b\\c\nd'
    msgs, _out, _code = enter([name], path="/nonexistent")
    err = [m for m in msgs if m["t"] == "error"]
    assert err[0]["msg"] == f'exec: "{name}": no such file or directory'


def test_refuses_to_run_as_anything_but_an_entry(helper):
    path = f"/proc/self/fd/{helper}"
    # As the interpreter of a "#!/proc/self/exe" script: argv is (exe, script).
    res = subprocess.run([path, "/some/script"], pass_fds=(helper,), capture_output=True)
    assert res.returncode == 126 and b"bad spec fd" in res.stderr
    res = subprocess.run([path], pass_fds=(helper,), capture_output=True)
    assert res.returncode == 126
    # Not root (a setuid bit or a container user cannot make it act for them).
    res = subprocess.run([path, "5"], pass_fds=(helper,), capture_output=True, user=1000,
                         group=1000, extra_groups=[])
    assert res.returncode == 126 and b"not a container entry" in res.stderr
    # A spec that is not one.
    r, w = os.pipe()
    os.write(w, b"garbage!")
    os.close(w)
    res = subprocess.run([path, str(r)], pass_fds=(helper, r), capture_output=True)
    os.close(r)
    assert res.returncode == 126 and b"entry" in res.stderr
