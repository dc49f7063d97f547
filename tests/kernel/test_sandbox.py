"""Kernel tests of the sandbox: capabilities, user switch, rlimits and seccomp, on the real kernel.

Nothing here is ever applied to the pytest process. Every capability, seccomp, setuid or rlimit
change happens in a forked child that first unshares fresh mount/uts/ipc/net namespaces, checks
that it is inside them, and makes its mounts private; the child then reports back over a pipe
(as JSON, or as the output of an exec'd busybox) and is reaped by the test, even on failure.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import select
import signal
import socket
import stat
import tempfile
import time
import traceback
from typing import Any, Callable

import pytest

from silobox.errors import InvalidArgument
from silobox.kernel import libc
from silobox.kernel.sandbox import (apply_sandbox, capabilities, paths, rlimits, seccomp,
                                    seccomp_default, user)

BUSYBOX = "/bin/busybox"
DEFAULT_MASK = 0xA80425FB
FRESH_NS = libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC | libc.CLONE_NEWNET
NR = {"unshare": 272, "mount": 165, "keyctl": 250, "add_key": 248, "request_key": 249,
      "getpid": 39, "clone3": 435, "statmount": 457, "personality": 135, "socket": 41}

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64",
                                reason="syscall numbers in these tests are x86_64's")

_raw = ctypes.CDLL(None, use_errno=True)
_raw.syscall.restype = ctypes.c_long


def raw_syscall(name: str, *args: int) -> tuple[int, int]:
    """(return value, errno) of a raw syscall, bypassing libc wrappers (keyctl has none)."""
    ctypes.set_errno(0)
    ret = _raw.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) for a in args])
    return ret, (ctypes.get_errno() if ret < 0 else 0)


# ----- forked children -------------------------------------------------------------------------

def enter_fresh_namespaces() -> None:
    """In the child: new mnt/uts/ipc/net namespaces, checked, with private mount propagation."""
    names = ("mnt", "uts", "ipc", "net")
    before = {n: os.stat(f"/proc/self/ns/{n}").st_ino for n in names}
    libc.unshare(FRESH_NS)
    after = {n: os.stat(f"/proc/self/ns/{n}").st_ino for n in names}
    same = [n for n in names if before[n] == after[n]]
    if same:
        raise RuntimeError(f"still in the host's namespaces: {same}")
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)


class Child:
    """Result of a forked child: wait status, JSON report (if any) and raw output."""

    def __init__(self, status: int, output: bytes) -> None:
        self.status = status
        self.output = output.decode(errors="replace")
        lines = [l for l in self.output.splitlines() if l.startswith("{")]
        self.report: dict[str, Any] = json.loads(lines[-1]) if lines else {}

    @property
    def exit_code(self) -> int | None:
        return os.waitstatus_to_exitcode(self.status) if os.WIFEXITED(self.status) else None

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    def status_field(self, key: str) -> str:
        for line in self.output.splitlines():
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
        raise AssertionError(f"{key} not in child output:\n{self.output}")


def run_child(setup: Callable[[], dict | None], argv: list[str] | None = None,
              timeout: float = 10.0) -> Child:
    """Fork; the child enters fresh namespaces, runs ``setup`` and either reports its dict as
    JSON or (with ``argv``) execs it with stdout/stderr on the pipe. Always reaped."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            os.close(r)
            enter_fresh_namespaces()
            result = setup()
            if argv is not None:
                os.dup2(w, 1)
                os.dup2(w, 2)
                os.execv(argv[0], argv)
            os.write(w, (json.dumps(result or {}) + "\n").encode())
        except BaseException:
            try:
                os.write(w, ("child failed:\n" + traceback.format_exc()).encode())
            except OSError:
                pass
            code = 70
        finally:
            os._exit(code)
    os.close(w)
    out = b""
    status = None
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"child {pid} did not finish in {timeout}s: {out!r}")
            if select.select([r], [], [], left)[0]:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                out += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(r)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return Child(status, out)


def ok(child: Child) -> Child:
    assert child.exit_code == 0, f"child failed (status {child.status}):\n{child.output}"
    return child


@pytest.fixture
def tmpdir_clean():
    """A temporary directory removed after the test, whatever happens."""
    with tempfile.TemporaryDirectory(prefix="silobox-sandbox-") as d:
        yield d


# ----- capabilities ----------------------------------------------------------------------------

def test_capability_tables_follow_the_kernel():
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    assert capabilities.last_capability() == last
    assert max(capabilities.CAPABILITIES.values()) == min(last, 40)
    assert capabilities.CAPABILITIES["CAP_SYS_ADMIN"] == 21
    assert capabilities.capability_mask(capabilities.DEFAULT_CAPABILITIES) == DEFAULT_MASK
    assert capabilities.capability_names(DEFAULT_MASK) == sorted(
        capabilities.DEFAULT_CAPABILITIES, key=capabilities.CAPABILITIES.get)


def test_resolve_capabilities_docker_rules():
    resolve = capabilities.resolve_capabilities
    assert resolve([], [], False) == list(capabilities.DEFAULT_CAPABILITIES)
    caps = resolve(["net_admin", "CAP_SYS_PTRACE", "chown"], ["Chown", "cap_mknod"], False)
    assert "CAP_NET_ADMIN" in caps and "CAP_SYS_PTRACE" in caps and "CAP_MKNOD" not in caps
    assert caps.count("CAP_CHOWN") == 1   # add wins over drop for the same name, once
    assert resolve(["NET_BIND_SERVICE", "kill"], ["ALL"], False) == ["CAP_NET_BIND_SERVICE",
                                                                    "CAP_KILL"]
    assert resolve([], ["all"], False) == []
    every = resolve(["ALL"], ["SYS_ADMIN"], False)
    assert "CAP_SYS_ADMIN" not in every and "CAP_BPF" in every
    with pytest.raises(InvalidArgument, match=r'^unknown capability: "CAP_FOO"$'):
        resolve(["foo"], [], False)
    with pytest.raises(InvalidArgument, match=r'^unknown capability: "CAP_BAR"$'):
        resolve([], ["CAP_BAR"], False)


def test_privileged_and_missing_capabilities_follow_the_host_bounding_set():
    bnd = capabilities.host_bounding_set()
    priv = capabilities.resolve_capabilities([], [], True)
    assert capabilities.capability_mask(priv) == bnd & ((1 << 41) - 1)
    if bnd >> 24 & 1:
        pytest.skip("this host has CAP_SYS_RESOURCE: nothing is missing from its bounding set")
    assert "CAP_SYS_RESOURCE" not in priv
    assert "CAP_SYS_RESOURCE" not in capabilities.resolve_capabilities(["ALL"], [], False)
    with pytest.raises(InvalidArgument, match="not available in the current environment"):
        capabilities.resolve_capabilities(["SYS_RESOURCE"], [], False)
    # dropping what the host never had is harmless
    assert capabilities.resolve_capabilities([], ["SYS_RESOURCE"], False) == \
        list(capabilities.DEFAULT_CAPABILITIES)


def _caps_after_exec(mask: int, uid: int = 0, gid: int = 0, groups: tuple[int, ...] = (0,),
                     nnp: bool = False, bpf: bytes | None = None) -> Child:
    last = capabilities.last_capability()
    return ok(run_child(lambda: apply_sandbox(mask, last, uid, gid, groups, [], nnp, bpf),
                        [BUSYBOX, "cat", "/proc/self/status"]))


def test_default_capabilities_after_exec():
    last = capabilities.last_capability()
    child = ok(run_child(lambda: capabilities.apply_capabilities(DEFAULT_MASK, last),
                         [BUSYBOX, "cat", "/proc/self/status"]))
    for key in ("CapBnd", "CapEff", "CapPrm"):
        assert int(child.status_field(key), 16) == DEFAULT_MASK, key
    assert int(child.status_field("CapInh"), 16) == 0
    assert int(child.status_field("CapAmb"), 16) == 0


def test_cap_drop_and_add_after_exec():
    caps = capabilities.resolve_capabilities(["NET_ADMIN"], ["CHOWN", "NET_RAW"], False)
    mask = capabilities.capability_mask(caps)
    child = _caps_after_exec(mask)
    assert int(child.status_field("CapBnd"), 16) == mask
    assert mask == (DEFAULT_MASK | 1 << 12) & ~(1 << 0) & ~(1 << 13)


def test_privileged_capabilities_after_exec():
    mask = capabilities.capability_mask(capabilities.resolve_capabilities([], [], True))
    child = _caps_after_exec(mask)
    assert int(child.status_field("CapBnd"), 16) == mask
    assert int(child.status_field("CapEff"), 16) == mask


def test_non_root_user_with_every_capability_dropped():
    """--cap-drop ALL --user 1000: the switch must happen before the capability sets shrink."""
    child = _caps_after_exec(0, uid=1000, gid=1000, groups=(1000, 27))
    assert child.status_field("Uid").split() == ["1000"] * 4
    assert child.status_field("Gid").split() == ["1000"] * 4
    assert child.status_field("Groups").split() == ["27", "1000"]
    for key in ("CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(child.status_field(key), 16) == 0, key


def test_root_with_only_chown():
    """--cap-drop ALL --cap-add CHOWN as root: setgroups still runs before the sets shrink."""
    mask = capabilities.capability_mask(capabilities.resolve_capabilities(["CHOWN"], ["ALL"],
                                                                          False))
    child = _caps_after_exec(mask, groups=(0, 10))
    for key in ("CapBnd", "CapEff", "CapPrm"):
        assert int(child.status_field(key), 16) == 1, key
    assert child.status_field("Groups").split() == ["0", "10"]


def test_failed_step_names_its_stage():
    from silobox.kernel.sandbox import SandboxStepError

    def setup() -> dict:
        try:
            apply_sandbox(DEFAULT_MASK, capabilities.last_capability(), 0, 0, (0,),
                          [(resource.RLIMIT_NOFILE, 64, 32)], True, None)
        except SandboxStepError as e:
            return {"stage": e.stage, "errno": e.errno}
        return {}

    assert ok(run_child(setup)).report == {"stage": "rlimits", "errno": errno.EINVAL}


def test_non_root_user_keeps_the_bounding_set_but_no_effective_capabilities():
    child = _caps_after_exec(DEFAULT_MASK, uid=1000, gid=1000, groups=(1000,))
    assert int(child.status_field("CapBnd"), 16) == DEFAULT_MASK
    assert int(child.status_field("CapEff"), 16) == 0
    assert int(child.status_field("CapPrm"), 16) == 0


# ----- seccomp: default profile ----------------------------------------------------------------

def _default_bpf(caps: list[str], nnp: bool = True) -> bytes:
    return seccomp.compile_profile(seccomp.default_profile(), caps, nnp)


def test_default_profile_shape():
    prof = seccomp.default_profile()
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO" and prof["defaultErrnoRet"] == errno.EPERM
    assert prof["archMap"][0] == {"architecture": "SCMP_ARCH_X86_64",
                                  "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}
    allowed = set(prof["syscalls"][0]["names"])
    for name in ("keyctl", "add_key", "request_key", "mount", "unshare", "setns", "clone",
                 "clone3", "io_uring_setup", "userfaultfd", "kexec_load", "ptrace"):
        assert name not in allowed, name
    assert {"read", "execve", "getpid", "fchmodat2", "mseal"} <= allowed
    gated = {r["includes"]["caps"][0]: r["names"] for r in prof["syscalls"]
             if "caps" in r.get("includes", {})}
    assert {"mount", "umount2", "unshare", "setns", "clone3"} <= set(gated["CAP_SYS_ADMIN"])
    assert "ptrace" in gated["CAP_SYS_PTRACE"] and gated["CAP_SYS_BOOT"] == ["reboot"]
    assert seccomp.load_profile(json.dumps(prof)) == prof   # round trip through the parser


def test_default_profile_compile_time_and_cache(capsys):
    caps = list(capabilities.DEFAULT_CAPABILITIES)
    seccomp.compile_profile(seccomp.default_profile(), ["CAP_KILL"], True)   # pay the import
    seccomp._cache.clear()
    t0 = time.perf_counter()
    cold = _default_bpf(caps)
    t1 = time.perf_counter()
    warm = _default_bpf(caps)
    t2 = time.perf_counter()
    assert warm is cold and len(cold) % 8 == 0 and 0 < len(cold) // 8 < 4096
    cold_ms, warm_ms = (t1 - t0) * 1000, (t2 - t1) * 1000
    with capsys.disabled():
        print(f"\n[seccomp] default profile: {len(cold) // 8} instructions, "
              f"compile {cold_ms:.1f} ms, cached {warm_ms:.2f} ms")
    assert cold_ms < 500 and warm_ms < cold_ms


def test_default_profile_blocks_in_child():
    bpf = _default_bpf(list(capabilities.DEFAULT_CAPABILITIES))

    def setup() -> dict:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        seccomp.apply_seccomp(bpf)
        out = {name: raw_syscall(name, *args)[1] for name, args in (
            ("unshare", (libc.CLONE_NEWNET,)), ("mount", (0, 0, 0, 0, 0)),
            ("keyctl", (0, 0, 0, 0, 0)), ("add_key", (0, 0, 0, 0, 0)),
            ("request_key", (0, 0, 0, 0)), ("clone3", (0, 0)),
            ("personality", (0x0040000,)), ("socket", (40, 1, 0)))}   # AF_VSOCK
        out["getpid"] = raw_syscall("getpid")[0] == os.getpid()
        out["statmount"] = raw_syscall("statmount", 0, 0, 0, 0)[1]
        out["beyond"] = _raw.syscall(ctypes.c_long(1000)) == -1 and ctypes.get_errno()
        st = open("/proc/self/status").read()
        out["status"] = {l.split(":")[0]: l.split(":")[1].strip() for l in st.splitlines()
                         if l.startswith(("Seccomp:", "NoNewPrivs:"))}
        return out

    rep = ok(run_child(setup)).report
    for name in ("unshare", "mount", "keyctl", "add_key", "request_key", "personality", "socket"):
        assert rep[name] == errno.EPERM, (name, rep)
    assert rep["clone3"] == errno.ENOSYS           # libc falls back to clone
    assert rep["getpid"] is True
    assert rep["statmount"] not in (errno.EPERM, errno.ENOSYS)   # allowed, then EFAULT/EINVAL
    assert rep["beyond"] == errno.ENOSYS           # newer than the profile: ENOSYS, like runc
    assert rep["status"] == {"Seccomp": "2", "NoNewPrivs": "1"}


def test_default_profile_survives_exec():
    """Full capabilities, so only the filter can refuse ``unshare -n`` after exec."""
    bpf = _default_bpf(list(capabilities.DEFAULT_CAPABILITIES))
    script = "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; unshare -n true; echo rc=$?"

    def setup() -> None:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        seccomp.apply_seccomp(bpf)

    child = ok(run_child(setup, [BUSYBOX, "sh", "-c", script]))
    assert child.status_field("Seccomp") == "2" and child.status_field("NoNewPrivs") == "1"
    assert "Operation not permitted" in child.output and "rc=0" not in child.output
    control = ok(run_child(lambda: None, [BUSYBOX, "sh", "-c", script]))
    assert control.status_field("Seccomp") == "0" and "rc=0" in control.output


def test_seccomp_without_no_new_privs_is_loaded_before_the_capability_drop():
    bpf = _default_bpf(list(capabilities.DEFAULT_CAPABILITIES), nnp=False)
    child = _caps_after_exec(DEFAULT_MASK, nnp=False, bpf=bpf)
    assert child.status_field("Seccomp") == "2"
    assert child.status_field("NoNewPrivs") == "0"
    assert int(child.status_field("CapBnd"), 16) == DEFAULT_MASK


def test_cap_sys_admin_unlocks_the_mount_group(tmpdir_clean):
    caps = capabilities.resolve_capabilities(["SYS_ADMIN"], [], False)
    mask = capabilities.capability_mask(caps)
    bpf = _default_bpf(caps)
    target = os.path.join(tmpdir_clean, "mnt")
    os.mkdir(target)

    def setup() -> dict:
        apply_sandbox(mask, capabilities.last_capability(), 0, 0, (0,), [], True, bpf)
        libc.mount("tmpfs", target, "tmpfs", 0, "size=64k")   # private mount namespace
        mounted = os.path.ismount(target)
        libc.umount2(target)
        return {"mounted": mounted, "unshare": raw_syscall("unshare", libc.CLONE_NEWUTS)[1],
                "clone3": raw_syscall("clone3", 0, 0)[1]}

    rep = ok(run_child(setup)).report
    assert rep["mounted"] is True and rep["unshare"] == 0
    assert rep["clone3"] != errno.ENOSYS      # allowed with CAP_SYS_ADMIN (EFAULT/EINVAL)
    assert not os.path.ismount(target)        # never visible on the host


# ----- seccomp: user profiles ------------------------------------------------------------------

CUSTOM = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
        {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EAFNOSUPPORT,
         "args": [{"index": 0, "value": 10, "op": "SCMP_CMP_EQ"}]},        # AF_INET6 only
        {"name": "getppid", "action": "SCMP_ACT_KILL_PROCESS"},
        {"names": ["definitely_not_a_syscall"], "action": "SCMP_ACT_ERRNO"},
        {"names": ["getcwd"], "action": "SCMP_ACT_LOG"},
    ],
}


def test_custom_profile_blocks_what_it_says(tmpdir_clean):
    profile = seccomp.load_profile(json.dumps(CUSTOM))
    bpf = seccomp.compile_profile(profile, list(capabilities.DEFAULT_CAPABILITIES), True)
    assert seccomp.unknown_syscalls(profile) == ["definitely_not_a_syscall"]
    path = os.path.join(tmpdir_clean, "d")

    def setup() -> dict:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        seccomp.apply_seccomp(bpf)
        out: dict[str, Any] = {"getpid": os.getpid() > 0, "cwd": bool(os.getcwd())}
        try:
            os.mkdir(path)
            out["mkdir"] = 0
        except OSError as e:
            out["mkdir"] = e.errno
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
        try:
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
            out["inet6"] = 0
        except OSError as e:
            out["inet6"] = e.errno
        return out

    rep = ok(run_child(setup)).report
    assert rep == {"getpid": True, "cwd": True, "mkdir": errno.EACCES,
                   "inet6": errno.EAFNOSUPPORT}
    assert not os.path.exists(path)

    def killed() -> None:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        seccomp.apply_seccomp(bpf)
        os.getppid()

    assert run_child(killed).signal == signal.SIGSYS


@pytest.mark.parametrize("text, message", [
    ("{not json", "Decoding seccomp profile failed"),
    ("[]", "must be a JSON object"),
    ('{"defaultAction": "SCMP_ACT_MAYBE"}', "unknown action 'SCMP_ACT_MAYBE'"),
    ('{"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}', "defaultAction"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "ALLOW"}]}',
     r"syscalls\[0\]\.action: unknown action"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"name": "read", "names": ["write"], '
     '"action": "SCMP_ACT_ALLOW"}]}', "both 'name' and 'names'"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
     '"action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]}',
     r"syscalls\[0\]\.args\[0\]\.op: unknown operator"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
     '"action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}',
     r"index"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
     '"action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}',
     r"unsigned 64-bit"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["re ad"], '
     '"action": "SCMP_ACT_ALLOW"}]}', "is not a syscall name"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
     '"action": "SCMP_ACT_ERRNO", "errnoRet": "EPERM"}]}', r"errnoRet"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_Z80"]}',
     "unknown architecture"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86"], "archMap": '
     '[{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []}]}', "both 'architectures'"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
     '"action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "six"}}]}', "invalid kernel version"),
    ('{"defaultAction": "SCMP_ACT_NOTIFY"}', "seccomp agent"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_BOGUS"]}',
     "unknown flag"),
])
def test_malformed_profiles_are_refused(text, message):
    with pytest.raises(InvalidArgument, match=message):
        seccomp.load_profile(text)


def test_profile_edge_cases():
    assert seccomp.compile_profile({}, [], True) == b""    # Docker: no action, no rules = off
    # Go's decoder matches keys case-insensitively
    prof = seccomp.load_profile('{"DefaultAction": "SCMP_ACT_ALLOW", "Syscalls": '
                                '[{"Names": ["mkdir"], "Action": "SCMP_ACT_ERRNO"}]}')
    assert seccomp.compile_profile(prof, [], True)
    assert seccomp.load_flags(json.loads('{"defaultAction": "SCMP_ACT_ALLOW", "flags": '
                                         '["SECCOMP_FILTER_FLAG_LOG"]}')) == 2
    # Without no_new_privs the filter is loaded before the user switch: it must allow it.
    blocks_setuid = {"defaultAction": "SCMP_ACT_ALLOW",
                     "syscalls": [{"names": ["setuid"], "action": "SCMP_ACT_ERRNO"}]}
    with pytest.raises(InvalidArgument, match="blocks setuid"):
        seccomp.compile_profile(blocks_setuid, [], False)
    assert seccomp.compile_profile(blocks_setuid, [], True)


def test_default_data_has_no_duplicates_within_a_group():
    names = seccomp_default.ALWAYS_ALLOWED
    assert len(names) == len(set(names)) and len(names) > 300
    for _, group in seccomp_default.CAPABILITY_ALLOWED:
        assert len(group) == len(set(group))


# ----- user ------------------------------------------------------------------------------------

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/sh
nohome:x:1001:1001:::/bin/sh
"""
GROUP = """root:x:0:
wheel:x:10:root,alice
staff:x:50:
alice:x:1000:
audio:x:29:alice,bob
"""


def _rootfs(base: str, passwd: str | None = PASSWD, group: str | None = GROUP) -> str:
    root = os.path.join(base, "rootfs")
    os.makedirs(os.path.join(root, "etc"))
    if passwd is not None:
        with open(os.path.join(root, "etc", "passwd"), "w") as f:
            f.write(passwd)
    if group is not None:
        with open(os.path.join(root, "etc", "group"), "w") as f:
            f.write(group)
    return root


def test_resolve_user_docker_forms(tmpdir_clean):
    root = _rootfs(tmpdir_clean)
    R = user.ResolvedUser
    assert user.resolve_user(root, None) == R(0, 0, (0, 10), "/root", "root")
    assert user.resolve_user(root, "") == user.resolve_user(root, None)
    assert user.resolve_user(root, "alice") == R(1000, 1000, (1000, 10, 29), "/home/alice",
                                                 "alice")
    assert user.resolve_user(root, "1000") == user.resolve_user(root, "alice")
    assert user.resolve_user(root, "alice:staff") == R(1000, 50, (50,), "/home/alice", "alice")
    assert user.resolve_user(root, "1000:50") == R(1000, 50, (50,), "/home/alice", "alice")
    assert user.resolve_user(root, "alice:4242") == R(1000, 4242, (4242,), "/home/alice",
                                                      "alice")
    assert user.resolve_user(root, "5000") == R(5000, 0, (0,), "/", None)
    assert user.resolve_user(root, "5000:5000") == R(5000, 5000, (5000,), "/", None)
    assert user.resolve_user(root, "nohome").home == "/"
    assert user.resolve_user(root, "alice", group_add=["staff", "777"]).additional_gids == \
        (1000, 10, 29, 50, 777)


def test_resolve_user_errors(tmpdir_clean):
    root = _rootfs(tmpdir_clean)
    with pytest.raises(InvalidArgument, match=r"^unable to find user bob: no matching entries "
                                              r"in passwd file$"):
        user.resolve_user(root, "bob")
    with pytest.raises(InvalidArgument, match=r"^unable to find group nogroup: no matching "
                                              r"entries in group file$"):
        user.resolve_user(root, "alice:nogroup")
    for spec in ("-1", "2147483648", "1000:-5"):
        with pytest.raises(InvalidArgument, match="must be in range 0-2147483647"):
            user.resolve_user(root, spec)
    with pytest.raises(InvalidArgument, match="unable to find group ghosts"):
        user.resolve_user(root, "alice", group_add=["ghosts"])
    empty = os.path.join(tmpdir_clean, "empty")
    os.mkdir(empty)   # no /etc at all: numbers work, names do not
    assert user.resolve_user(empty, "12:34").uid == 12
    with pytest.raises(InvalidArgument, match="unable to find user alice"):
        user.resolve_user(empty, "alice")


def test_resolve_user_never_leaves_the_root(tmpdir_clean):
    outside = os.path.join(tmpdir_clean, "outside")
    os.makedirs(outside)
    with open(os.path.join(outside, "passwd"), "w") as f:
        f.write("evil:x:666:666::/evil:/bin/sh\n")
    root = _rootfs(tmpdir_clean, passwd=None, group=None)
    etc = os.path.join(root, "etc")
    # relative escape: ../../outside/passwd from /etc stops at the container's /
    os.symlink("../../../../../../outside/passwd", os.path.join(etc, "passwd"))
    with pytest.raises(InvalidArgument, match="unable to find user evil"):
        user.resolve_user(root, "evil")
    # absolute link to the host path: resolved inside the root, where it does not exist
    os.unlink(os.path.join(etc, "passwd"))
    os.symlink(os.path.join(outside, "passwd"), os.path.join(etc, "passwd"))
    with pytest.raises(InvalidArgument, match="unable to find user evil"):
        user.resolve_user(root, "evil")
    # an absolute link within the image works as the container would see it
    os.makedirs(os.path.join(root, "real"))
    with open(os.path.join(root, "real", "passwd"), "w") as f:
        f.write("carol:x:1234:1234::/home/carol:/bin/sh\n")
    os.unlink(os.path.join(etc, "passwd"))
    os.symlink("/real/../real/./passwd", os.path.join(etc, "passwd"))
    assert user.resolve_user(root, "carol").uid == 1234
    # /etc itself a symlink out of the root
    os.rename(etc, os.path.join(root, "etc.old"))
    os.symlink(outside, os.path.join(root, "etc"))
    with pytest.raises(InvalidArgument, match="unable to find user evil"):
        user.resolve_user(root, "evil")
    # a fifo is not read (it would block)
    os.unlink(os.path.join(root, "etc"))
    os.mkdir(etc)
    os.mkfifo(os.path.join(etc, "passwd"))
    assert stat.S_ISFIFO(os.lstat(os.path.join(etc, "passwd")).st_mode)
    assert user.resolve_user(root, "7").uid == 7
    # a symlink loop is an error, not a hang
    os.unlink(os.path.join(etc, "passwd"))
    os.symlink("passwd", os.path.join(etc, "passwd"))
    with pytest.raises(InvalidArgument, match="symbolic links"):
        user.resolve_user(root, "alice")


def test_apply_user_in_child(tmpdir_clean):
    resolved = user.resolve_user(_rootfs(tmpdir_clean), "alice")

    def setup() -> dict:
        user.apply_user(resolved, (4242,))
        return {"ids": [os.getuid(), os.geteuid(), os.getgid()], "groups": sorted(os.getgroups())}

    rep = ok(run_child(setup)).report
    assert rep == {"ids": [1000, 1000, 1000], "groups": [10, 29, 1000, 4242]}


# ----- rlimits ---------------------------------------------------------------------------------

def test_parse_ulimit():
    assert rlimits.parse_ulimit("nofile=1024") == rlimits.Ulimit("nofile", 1024, 1024)
    assert rlimits.parse_ulimit("nofile=1024:2048") == rlimits.Ulimit("nofile", 1024, 2048)
    assert rlimits.parse_ulimit("core=-1") == rlimits.Ulimit("core", -1, -1)
    assert rlimits.to_child([rlimits.parse_ulimit("core=0:-1")]) == \
        [(resource.RLIMIT_CORE, 0, resource.RLIM_INFINITY)]
    assert set(rlimits.RLIMITS) == {"core", "cpu", "data", "fsize", "locks", "memlock",
                                    "msgqueue", "nice", "nofile", "nproc", "rss", "rtprio",
                                    "rttime", "sigpending", "stack"}
    for text, message in (("nofile", "invalid ulimit argument"),
                          ("files=1", "invalid ulimit type: files"),
                          ("nofile=2048:1024", "soft limit must be less than or equal"),
                          ("nofile=-1:1024", "soft limit must be less than or equal"),
                          ("nofile=1:2:3", "too many limit value arguments"),
                          ("nofile=abc", "is not a number"),
                          ("nofile=-5", "out of range")):
        with pytest.raises(InvalidArgument, match=message):
            rlimits.parse_ulimit(text)


def test_raising_nofile_above_the_host_is_refused():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if libc.capget()[0] >> 24 & 1:
        pytest.skip("the test process holds CAP_SYS_RESOURCE: raising would be allowed")
    rlimits.check_ulimits([rlimits.parse_ulimit(f"nofile=1024:{hard}")])
    with pytest.raises(InvalidArgument, match="can only be lowered") as info:
        rlimits.check_ulimits([rlimits.parse_ulimit(f"nofile={hard + 1}")])
    assert str(hard) in str(info.value) and "CAP_SYS_RESOURCE" in str(info.value)

    def setup() -> dict:   # and the kernel agrees
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard + 1, hard + 1))
            return {"raised": True}
        except (OSError, ValueError) as e:
            return {"raised": False, "error": str(e)}

    assert ok(run_child(setup)).report["raised"] is False


def test_lowering_nofile_in_child():
    items = rlimits.to_child([rlimits.parse_ulimit("nofile=256:512"),
                              rlimits.parse_ulimit("core=0")])
    child = ok(run_child(lambda: rlimits.apply_rlimits(items),
                         [BUSYBOX, "sh", "-c", "ulimit -Sn; ulimit -Hn; ulimit -c"]))
    assert child.output.split() == ["256", "512", "0"]


# ----- paths -----------------------------------------------------------------------------------

def test_masked_and_readonly_paths():
    for p in ("/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
              "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
              "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
              "/sys/devices/virtual/powercap"):
        assert p in paths.MASKED_PATHS
    assert all(p.startswith(("/proc/", "/sys/")) for p in paths.MASKED_PATHS)
    assert paths.READONLY_PATHS == ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                                    "/proc/sysrq-trigger")
