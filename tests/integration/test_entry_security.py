"""Entering a container must never expose the host: the attacks of docs/security.md, from inside.

A hostile image (imported from a tar made here) carries static probes built here with gcc:
``entry_watcher`` races every process that enters the container (stop it, open its
``/proc/<pid>/exe`` and fds, ``PTRACE_SEIZE`` it) and ``evil_ld`` is the image's own
``/lib64/ld-linux-x86-64.so.2`` behind a ``#!/proc/self/exe`` entrypoint (runc's
CVE-2019-5736). Each test checks that the host's interpreter and the container's log file are
unchanged (mode, owner, xattrs, content) and that the exec still completes, or fails cleanly.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time

import pytest

PROBES = os.path.join(os.path.dirname(__file__), "probes")
ENTRY_TIMEOUT = 10     # this module's silod gives up on a stopped entering process after 10 s


def _gcc(tmp: str, src: str, out: str, *flags: str) -> str:
    dest = os.path.join(tmp, out)
    subprocess.run(["gcc", "-O2", *flags, "-o", dest, os.path.join(PROBES, src)], check=True,
                   capture_output=True)
    return dest


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict[str, str]:
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed: the probes are built by the test")
    tmp = str(tmp_path_factory.mktemp("probes"))
    return {"watcher": _gcc(tmp, "entry_watcher.c", "watcher", "-static"),
            "evil_ld": _gcc(tmp, "evil_ld.c", "evil_ld", "-nostdlib", "-static-pie", "-fPIE",
                            "-fno-stack-protector")}


def _image_tar(probes: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add_dir(name: str, mode: int = 0o755) -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode = tarfile.DIRTYPE, mode
            tar.addfile(ti)

        def add_file(name: str, data: bytes, mode: int = 0o755) -> None:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), mode
            tar.addfile(ti, io.BytesIO(data))

        for d in ("bin", "lib64", "tmp", "proc", "sys", "dev", "etc"):
            add_dir(d, 0o1777 if d == "tmp" else 0o755)
        with open(shutil.which("busybox") or "/bin/busybox", "rb") as f:
            add_file("bin/busybox", f.read())
        for applet in ("sh", "sleep", "cat", "echo", "true", "ps", "ls"):
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(ti)
        with open(probes["watcher"], "rb") as f:
            add_file("watcher", f.read())
        with open(probes["evil_ld"], "rb") as f:
            add_file("lib64/ld-linux-x86-64.so.2", f.read())
        add_file("entry", b"#!/proc/self/exe\n")
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
    return buf.getvalue()


@pytest.fixture(scope="module")
def daemon(silod_factory, run_id):
    old = os.environ.get("SILOBOX_ENTRY_TIMEOUT")
    os.environ["SILOBOX_ENTRY_TIMEOUT"] = str(ENTRY_TIMEOUT)
    try:
        cm = silod_factory(f"/tmp/sbxt-entry-{run_id}", run_id + "e")
        d = cm.__enter__()
    finally:
        if old is None:
            os.environ.pop("SILOBOX_ENTRY_TIMEOUT", None)
        else:
            os.environ["SILOBOX_ENTRY_TIMEOUT"] = old
    try:
        yield d
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="module")
def image(daemon, probes) -> str:
    name = "entryprobe"
    out = daemon.client.import_image_from_data(_image_tar(probes), repository=name)
    last = json.loads(out.strip().splitlines()[-1])
    assert last["status"].startswith("sha256:"), out
    yield name
    daemon.request("DELETE", f"/images/{name}?force=1")


def _snapshot(path: str) -> tuple:
    """What a hostile process could have changed on a host file."""
    st = os.stat(path)
    xattrs = {k: os.getxattr(path, k) for k in os.listxattr(path)}
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return (st.st_mode, st.st_uid, st.st_gid, xattrs, digest)


def _meta(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_mode, st.st_uid, st.st_gid, {k: os.getxattr(path, k) for k in os.listxattr(path)})


HOST_PYTHON = os.path.realpath(sys.executable)


@pytest.fixture
def host_python():
    """The host's interpreter (silod, shims): unchanged after each test."""
    before = _snapshot(HOST_PYTHON)
    yield HOST_PYTHON
    after = _snapshot(HOST_PYTHON)
    if after != before:   # put it back before failing, so one failure does not taint the host
        mode, uid, gid, xattrs, _ = before
        os.chmod(HOST_PYTHON, mode & 0o7777)
        os.chown(HOST_PYTHON, uid, gid)
        for k in os.listxattr(HOST_PYTHON):
            if k not in xattrs:
                os.removexattr(HOST_PYTHON, k)
    assert after == before, f"the host's interpreter changed: {before[:4]} -> {after[:4]}"


def _log_path(daemon, cid: str) -> str:
    return daemon.client.inspect_container(cid)["LogPath"]


def _exec(daemon, cid: str, cmd: list[str], tty: bool = False) -> tuple[int, bytes]:
    e = daemon.client.exec_create(cid, cmd, tty=tty, stdin=tty)
    out = daemon.client.exec_start(e)
    return daemon.client.exec_inspect(e)["ExitCode"], out


def _watch_lines(daemon, cid: str) -> list[list[str]]:
    text = daemon.client.logs(cid, stdout=True, stderr=False).decode(errors="replace")
    return [line.split() for line in text.splitlines() if line.strip()]


def _wait_ready(daemon, cid: str) -> None:
    deadline = time.time() + 20
    while not any(w and w[0] == "READY" for w in _watch_lines(daemon, cid)):
        assert time.time() < deadline, "the watcher did not start"
        time.sleep(0.05)


def _start_watcher(daemon, image: str, mode: str) -> str:
    c = daemon.client.create_container(image, ["/watcher", mode, "/dev/stdout"])
    daemon.client.start(c)
    _wait_ready(daemon, c["Id"])
    return c["Id"]


def _host_ids(*paths: str) -> set[tuple[int, int]]:
    out = set()
    for p in paths:
        st = os.stat(p)
        out.add((st.st_dev, st.st_ino))
    return out


def _assert_nothing_reached(lines: list[list[str]], host_files: set) -> None:
    for w in lines:
        kind = w[0]
        comm = w[2] if len(w) > 2 else ""
        if kind == "EXE":
            assert (int(w[3]), int(w[4])) not in host_files, w
        if kind == "FD":
            assert (int(w[4]), int(w[5])) not in host_files, w
        if comm in ("silobox-entry", "silobox-shim"):
            # Non-dumpable until execve: no exe, no fds, no ptrace of an entering process.
            assert kind in ("SEEN", "STOP"), w
        assert kind != "FORGE", w


def test_racing_watcher_reaches_nothing_of_the_host(daemon, image, host_python):
    cid = _start_watcher(daemon, image, "race")
    try:
        log = _log_path(daemon, cid)
        log_before = _meta(log)
        from silobox.kernel import entry
        host_files = _host_ids(host_python, log, entry.helper_path())
        caught = 0
        for i in range(150):
            code, out = _exec(daemon, cid, ["echo", f"hello-{i}"])
            assert (code, out) == (0, f"hello-{i}\n".encode()), (code, out)
            lines = _watch_lines(daemon, cid)
            caught = sum(1 for w in lines if w[0] == "STOP")
            if caught >= 5 and i >= 30:
                break
        assert caught, "the watcher never caught a process entering the container"
        # An exec's Python side (the shim's fork) is never even visible in the container.
        assert not [w for w in lines if w[0] == "SEEN" and w[2:3] == ["silobox-shim"]], lines
        _assert_nothing_reached(lines, host_files)
        assert _meta(log) == log_before
        with open(log, "rb") as f:
            text = f.read()
        assert b"2020-01-01T00:00:00.000000000Z" not in text, "a forged log line"
        for line in text.splitlines():
            json.loads(line)
    finally:
        daemon.client.remove_container(cid, force=True)


def test_first_process_in_a_watched_pid_namespace(daemon, image, host_python):
    """``run --pid container:W``: the new container's first process is forked into W's PID
    namespace (its /proc must be W's), so W's watcher sees it from its fork and attacks it."""
    wid = _start_watcher(daemon, image, "race")
    try:
        from silobox.kernel import entry
        host_files = _host_ids(host_python, entry.helper_path())
        for i in range(10):
            c = daemon.client.create_container(
                image, ["echo", f"run-{i}"],
                host_config=daemon.client.create_host_config(pid_mode=f"container:{wid}"))
            try:
                daemon.client.start(c)
                host_files |= _host_ids(_log_path(daemon, c["Id"]))
                assert daemon.client.wait(c, timeout=30)["StatusCode"] == 0
                assert daemon.client.logs(c) == f"run-{i}\n".encode()
            finally:
                daemon.client.remove_container(c, force=True)
        lines = _watch_lines(daemon, wid)
        assert [w for w in lines if w[0] == "SEEN" and w[1:2] != [str(1)]], "saw nothing"
        _assert_nothing_reached(lines, host_files)
    finally:
        daemon.client.remove_container(wid, force=True)


def test_entering_process_stopped_for_good_fails_the_exec_only(daemon, image, host_python):
    """The watcher stops the first entering process and never continues it: that exec fails
    after the shim's deadline, while another exec into the same container goes through."""
    cid = _start_watcher(daemon, image, "hold")
    try:
        results: dict[str, tuple] = {}

        def held() -> None:
            import docker
            api = docker.APIClient(base_url=f"unix://{daemon.socket}", version="auto",
                                   timeout=60)
            t0 = time.monotonic()
            e = api.exec_create(cid, ["echo", "held"])
            try:
                out = api.exec_start(e)
            except Exception as ex:   # an API error is a clean failure too
                out = str(ex).encode()
            results["held"] = (api.exec_inspect(e)["ExitCode"], out,
                               time.monotonic() - t0, time.monotonic())
            api.close()

        # The watcher wins the race for some execs only: try until one entering process is held.
        for _attempt in range(40):
            t = threading.Thread(target=held)
            t.start()
            while t.is_alive() and not any(w[0] == "STOP" for w in _watch_lines(daemon, cid)):
                time.sleep(0.02)
            if any(w[0] == "STOP" for w in _watch_lines(daemon, cid)):
                break
            t.join()
        else:
            pytest.fail("the watcher never caught a process entering the container")
        code, out = _exec(daemon, cid, ["echo", "free"])
        free_done = time.monotonic()
        assert (code, out) == (0, b"free\n")
        t.join(ENTRY_TIMEOUT + 30)
        assert not t.is_alive(), "the held exec never returned"
        held_code, held_out, _took, held_done = results["held"]
        assert free_done < held_done, "the shim waited for the stopped process"
        assert held_code not in (0, None), results["held"]
        assert b"held\n" != held_out
        # The stopped process was killed, not left behind in the container.
        code, out = _exec(daemon, cid, ["ps", "-o", "comm"])
        assert code == 0 and b"silobox-entry" not in out, out
    finally:
        daemon.client.remove_container(cid, force=True)


def test_proc_self_exe_entrypoint_never_runs_a_host_binary(daemon, image, host_python):
    """``#!/proc/self/exe`` with the image's own loader: with the host's python as the
    entering process, the kernel would run that python with the image's loader."""
    c = daemon.client.create_container(image, ["/entry"], entrypoint=[])
    try:
        log = _log_path(daemon, c["Id"])
        daemon.client.start(c)
        status = daemon.client.wait(c, timeout=30)
        out = daemon.client.logs(c)
        assert b"EVIL-LOADER-RAN" not in out, out
        assert status["StatusCode"] != 0, (status, out)
        assert b"FORGED" not in open(log, "rb").read()
    finally:
        daemon.client.remove_container(c, force=True)

    c = daemon.client.create_container(image, ["sleep", "1000"])
    try:
        daemon.client.start(c)
        code, out = _exec(daemon, c["Id"], ["/entry"])
        assert b"EVIL-LOADER-RAN" not in out, out
        assert code != 0, out
        code, out = _exec(daemon, c["Id"], ["sh", "-c", "/entry; echo after=$?"])
        assert b"EVIL-LOADER-RAN" not in out and b"after=" in out, out
    finally:
        daemon.client.remove_container(c, force=True)


def _shim_fds(daemon, cid: str) -> int:
    with open(os.path.join(daemon.exec_root, "c", cid, "shim.json")) as f:
        pid = json.load(f)["ShimPid"]
    return len(os.listdir(f"/proc/{pid}/fd"))


def _exec_it(daemon, cid: str) -> int:
    """``exec -it`` as the docker CLI does it: stdin attached to a hijacked stream."""
    e = daemon.client.exec_create(cid, ["true"], tty=True, stdin=True)
    sock = daemon.client.exec_start(e, tty=True, socket=True)
    raw = getattr(sock, "_sock", sock)
    raw.settimeout(30)
    while raw.recv(4096):
        pass
    raw.close()
    return daemon.client.exec_inspect(e)["ExitCode"]


def test_exec_tty_leaves_shim_fds_flat(daemon, image):
    """Each ``exec -it`` once left its pty master open in the shim."""
    c = daemon.client.create_container(image, ["sleep", "1000"])
    try:
        daemon.client.start(c)
        for _ in range(5):
            _exec_it(daemon, c["Id"])
        before = _shim_fds(daemon, c["Id"])
        for _ in range(200):
            assert _exec_it(daemon, c["Id"]) == 0
        # silod's own connections to the shim come and go: allow for those, not for 200 ptys.
        assert _shim_fds(daemon, c["Id"]) <= before + 3
    finally:
        daemon.client.remove_container(c, force=True)
