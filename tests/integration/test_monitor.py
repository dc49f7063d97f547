"""The per-container monitor: what it keeps across a kill -9 of silod, and what a kill -9 of the
monitor itself costs a container (docs/architecture.md, "The per-container monitor")."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from typing import Any

import pytest

IMAGE = "busybox"


def _wait_for(pred, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _monitor_pid(silod: Any, cid: str) -> int:
    with open(os.path.join(silod.exec_root, "c", cid, "shim.json")) as f:
        return json.load(f)["ShimPid"]


def _monitor_serving(silod: Any, cid: str) -> int:
    """The monitor's pid once it answers on ``shim.sock``. A start without attached clients
    returns as soon as the shim reports, and the shim execs the native monitor just after: an
    answer comes from the process that owns the listener after that exec (the monitor, past
    its set-up), or from the Python shim when no native monitor is loaded."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(15)
        s.connect(os.path.join(silod.exec_root, "c", cid, "shim.sock"))
        s.sendall(b'{"op": "state"}\n')
        got = b""
        while not got.endswith(b"\n"):
            chunk = s.recv(4096)
            assert chunk, "the monitor closed the connection without answering"
            got += chunk
    assert json.loads(got).get("ok"), got
    return _monitor_pid(silod, cid)


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _job_dirs(silod: Any, cid: str) -> list[str]:
    return [d for d in silod.cgroup_dirs() if os.path.basename(d) == cid]


def _exec(api, cid: str, cmd: list[str]) -> tuple[int, bytes]:
    e = api.exec_create(cid, cmd)
    out = api.exec_start(e)
    return api.exec_inspect(e)["ExitCode"], out


def _read_until(sock, want: bytes, timeout: float = 15.0) -> bytes:
    raw = getattr(sock, "_sock", sock)
    raw.settimeout(timeout)
    got = b""
    while want not in got:
        chunk = raw.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def test_the_monitor_is_native_and_the_parent_of_the_init(silod):
    api = silod.client
    c = api.create_container(IMAGE, ["sleep", "1000"])
    try:
        api.start(c)
        mon = _monitor_serving(silod, c["Id"])
        exe = os.readlink(f"/proc/{mon}/exe")
        if "silobox-monitor" not in exe:
            pytest.skip(f"silod runs the Python monitor here ({exe})")
        pid = api.inspect_container(c)["State"]["Pid"]
        assert _ppid(pid) == mon
        with open(f"/proc/{mon}/comm") as f:
            assert f.read().strip() == "silobox-shim"
        # Not a timed check: a monitor keeps a few pages, not an interpreter's heap.
        with open(f"/proc/{mon}/smaps_rollup") as f:
            anon = sum(int(line.split()[1]) for line in f if line.startswith("Pss_Anon:"))
        assert anon < 1024, anon
    finally:
        api.remove_container(c, force=True)


def test_stdio_log_exec_resize_signal_and_exit_survive_kill9_of_silod(silod):
    api = silod.client
    script = ("trap 'echo got-usr1; exit 7' USR1; echo started; "
              "while read l; do echo \"got $l\"; done; echo eof; exit 9")
    c = api.create_container(IMAGE, ["sh", "-c", script], stdin_open=True)
    t = api.create_container(IMAGE, ["sh"], tty=True, stdin_open=True)
    cid = c["Id"]
    try:
        api.start(c)
        api.start(t)
        assert _wait_for(lambda: b"started" in api.logs(c))
        mon = _monitor_pid(silod, cid)
        silod.kill9()
        silod.start()
        api = silod.client
        assert _monitor_pid(silod, cid) == mon and _alive(mon)
        info = api.inspect_container(c)["State"]
        assert info["Running"], info
        # exec and resize through the monitor, with a silod that never saw them start
        assert _exec(api, cid, ["echo", "in-exec"]) == (0, b"in-exec\n")
        api.resize(t, height=33, width=101)
        assert _exec(api, t["Id"], ["stty", "-F", "/dev/console", "size"])[1].strip() == \
            b"33 101"
        # attach with stdin: the init still reads the pipe the monitor kept
        sock = api.attach_socket(c, params={"stdin": 1, "stdout": 1, "stream": 1})
        try:
            sock._sock.sendall(b"one\n")
            assert b"got one" in _read_until(sock, b"got one")
            api.kill(c, signal="USR1")
            sock._sock.sendall(b"two\n")   # the shell runs its trap once read returns
            assert b"got-usr1" in _read_until(sock, b"got-usr1")
        finally:
            sock.close()
        assert api.wait(c, timeout=15)["StatusCode"] == 7
        logs = api.logs(c).decode()
        for line in ("started", "got one", "got-usr1"):
            assert line in logs, logs
        assert not _job_dirs(silod, cid)
    finally:
        api.remove_container(c, force=True)
        api.remove_container(t, force=True)


def test_kill9_of_the_monitor_ends_only_its_container(silod):
    """What a lost monitor costs, as containerd documents for its shim: the container ends.

    Nothing holds its stdio or can learn its exit status any more, so silod kills what is left
    of it in the job object and records exit code 255 with an error; the log up to the kill
    stays; other containers do not notice."""
    api = silod.client
    c = api.create_container(IMAGE, ["sh", "-c", "echo before-kill; exec sleep 1000"])
    other = api.create_container(IMAGE, ["sleep", "1000"])
    cid = c["Id"]
    try:
        api.start(c)
        api.start(other)
        assert _wait_for(lambda: b"before-kill" in api.logs(c))
        e = api.exec_create(cid, ["sleep", "1000"])
        api.exec_start(e, detach=True)
        assert _wait_for(lambda: api.exec_inspect(e)["Pid"])
        exec_pid = api.exec_inspect(e)["Pid"]
        init = api.inspect_container(c)["State"]["Pid"]
        os.kill(_monitor_pid(silod, cid), signal.SIGKILL)
        assert _wait_for(lambda: not api.inspect_container(c)["State"]["Running"])
        state = api.inspect_container(c)["State"]
        assert state["ExitCode"] == 255 and state["Error"], state
        assert _wait_for(lambda: not _alive(init) and not _alive(exec_pid))
        assert _wait_for(lambda: not _job_dirs(silod, cid)), _job_dirs(silod, cid)
        assert b"before-kill" in api.logs(c)
        # the container can start again, with a new monitor
        api.start(c)
        assert api.inspect_container(c)["State"]["Running"]
        # the neighbour never noticed
        assert api.inspect_container(other)["State"]["Running"]
        assert _exec(api, other["Id"], ["echo", "ok"]) == (0, b"ok\n")
    finally:
        api.remove_container(c, force=True)
        api.remove_container(other, force=True)
    assert not _job_dirs(silod, cid)


def test_log_records_of_odd_output_are_json_file_records(silod):
    """Control bytes, invalid UTF-8, a line longer than 16 KiB and an unterminated last line."""
    api = silod.client
    script = ('printf "a\\001b\\377c\\342\\202\\254d\\tq\\"\\\\\\\\\\n"; '
              'head -c 40000 /dev/zero | tr "\\0" x; echo; printf tail-no-newline >&2')
    c = api.create_container(IMAGE, ["sh", "-c", script])
    try:
        api.start(c)
        assert api.wait(c, timeout=30)["StatusCode"] == 0
        path = api.inspect_container(c)["LogPath"]
        records = [json.loads(line) for line in open(path, "rb")]
        assert records[0]["log"] == 'a\x01b\ufffdc\u20acd\tq"\\\n' and records[0]["stream"] == "stdout"
        body = "".join(r["log"] for r in records[1:] if r["stream"] == "stdout")
        assert body == "x" * 40000 + "\n"
        assert all(len(r["log"]) <= 65536 for r in records)
        assert [r["log"] for r in records if r["stream"] == "stderr"] == ["tail-no-newline"]
        assert all(r["time"].endswith("Z") for r in records)
    finally:
        api.remove_container(c, force=True)


def test_concurrent_execs_and_a_large_stdin_round_trip(silod):
    """Many execs in flight at once on one monitor, and 4 MiB through an exec's stdin and
    stdout (the monitor stops reading a client whose process does not keep up)."""
    import concurrent.futures
    import hashlib
    import threading

    from docker.utils.socket import frames_iter
    api = silod.client
    c = api.create_container(IMAGE, ["sleep", "1000"])
    cid = c["Id"]
    try:
        api.start(c)

        def one(i: int) -> tuple[int, bytes]:
            e = api.exec_create(cid, ["sh", "-c", f"echo out-{i}; exit {i % 5}"])
            out = api.exec_start(e)
            return api.exec_inspect(e)["ExitCode"], out

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(32)))
        assert results == [(i % 5, f"out-{i}\n".encode()) for i in range(32)]

        data = os.urandom(4 << 20)
        e = api.exec_create(cid, ["cat"], stdin=True)
        sock = api.exec_start(e, socket=True)
        raw = sock._sock

        def feed() -> None:
            raw.sendall(data)
            raw.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=feed)
        writer.start()
        raw.settimeout(60)
        got = b"".join(d for stream, d in frames_iter(sock, tty=False) if stream == 1)
        writer.join()
        sock.close()
        assert len(got) == len(data) and hashlib.sha256(got).digest() == \
            hashlib.sha256(data).digest()
        assert _wait_for(lambda: api.exec_inspect(e)["ExitCode"] == 0)
    finally:
        api.remove_container(c, force=True)
