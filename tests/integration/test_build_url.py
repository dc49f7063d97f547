"""``ADD <url>`` against silod: the daemon downloads from a server the test runs on 127.0.0.1.

The server is Python's http.server in a thread, serving files the test writes (so the test can
change what it serves between builds). Nothing but 127.0.0.1 is contacted: the test silod runs
with --registry-loopback-only, which also refuses ADD URLs off this machine.
"""

from __future__ import annotations

import http.server
import subprocess
import io
import os
import shutil
import tarfile
import tempfile
import threading
from typing import Any, Iterator

import pytest

from tests.integration.test_build import (DOCKER, docker_env, error_of, no_build_containers,
                                          py_build, run_in, text_of)

pytestmark = pytest.mark.root

LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"
LAST_MODIFIED_TS = 1445412480


class Server:
    """A static file server on 127.0.0.1 whose files the test sets."""

    def __init__(self, root: str) -> None:
        self.root = root
        directory = root

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, directory=directory, **kw)

            def log_message(self, *a: Any) -> None:
                pass

            def end_headers(self) -> None:
                if getattr(self, "download_name", False):
                    self.send_header("Content-Disposition", 'attachment; filename="named.bin"')
                super().end_headers()

            def send_head(self) -> Any:
                if self.path.startswith("/dl/"):   # a path that does not name the file
                    self.path, self.download_name = "/payload.txt", True
                return super().send_head()

            def date_time_string(self, timestamp: float | None = None) -> str:
                return LAST_MODIFIED if timestamp is not None else super().date_time_string()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def put(self, name: str, data: bytes) -> None:
        with open(os.path.join(self.root, name), "wb") as f:
            f.write(data)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(run_id: str) -> Iterator[Server]:
    root = tempfile.mkdtemp(prefix=f"sbxu-{run_id}-")
    srv = Server(root)
    try:
        yield srv
    finally:
        srv.close()
        shutil.rmtree(root, ignore_errors=True)


def a_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("inside.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"in\n"))
    return buf.getvalue()


def test_add_url_to_a_directory_and_to_a_file(silod: Any, server: Server, images: list[str],
                                              run_id: str) -> None:
    server.put("payload.txt", b"hello from the url\n")
    server.put("archive.tar.gz", a_tar())
    tag = f"sbxu-{run_id}-a:1"
    images.append(tag)
    dockerfile = (f"FROM busybox\n"
                  f"ADD {server.url('payload.txt')} /dir/\n"
                  f"ADD {server.url('payload.txt')} /renamed.txt\n"
                  f"ADD {server.url('archive.tar.gz')} /arch/\n"
                  f"ADD {server.url('dl/')} /named/\n"
                  f"ADD --chown=1000:1000 {server.url('payload.txt')} /owned\n")
    msgs = py_build(silod, {"Dockerfile": dockerfile}, tag=tag)
    assert error_of(msgs) == "", text_of(msgs)
    progress = [m for m in msgs if m.get("status") == "Downloading"]
    assert progress and progress[0]["progressDetail"] == {"current": 19, "total": 19}
    out = run_in(silod, tag, "sh", "-c",
                 "cat /dir/payload.txt /renamed.txt; "
                 "stat -c '%n %a %u:%g %Y' /dir/payload.txt /renamed.txt /owned; "
                 "ls /arch; ls /named")
    lines = out.splitlines()
    assert lines[:2] == ["hello from the url"] * 2
    assert lines[2] == f"/dir/payload.txt 600 0:0 {LAST_MODIFIED_TS}"
    assert lines[3] == f"/renamed.txt 600 0:0 {LAST_MODIFIED_TS}"
    assert lines[4] == f"/owned 600 1000:1000 {LAST_MODIFIED_TS}"
    assert lines[5:] == ["archive.tar.gz", "named.bin"]   # a URL's tar is never extracted
    no_build_containers(silod)


def test_add_url_errors_leave_nothing(silod: Any, server: Server) -> None:
    msgs = py_build(silod, {"Dockerfile": f"FROM busybox\nADD {server.url('missing')} /x\n"})
    # Go's resp.Status keeps the server's reason phrase: http.server says "File not found"
    assert error_of(msgs).startswith(
        f"failed to GET {server.url('missing')} with status 404 File not found: "), msgs
    no_build_containers(silod)
    # a port nothing listens on: the connection error names the URL
    closed = f"http://127.0.0.1:{_free_port()}/x"
    msgs = py_build(silod, {"Dockerfile": f"FROM busybox\nADD {closed} /x\n"})
    assert error_of(msgs).startswith(f'Get "{closed}": ') and "onnect" in error_of(msgs), msgs
    no_build_containers(silod)
    # a test daemon never leaves the machine (192.0.2.1 is TEST-NET-1, never contacted)
    msgs = py_build(silod, {"Dockerfile": "FROM busybox\nADD http://192.0.2.1/x /x\n"})
    assert "--registry-loopback-only" in error_of(msgs), msgs
    # no file name in the URL nor the answer, and a directory as destination
    server.put("index.html", b"index\n")
    msgs = py_build(silod, {"Dockerfile": f"FROM busybox\nADD {server.url('')} /d/\n"})
    assert error_of(msgs) == f"cannot determine filename for source {server.url('')}", msgs
    msgs = py_build(silod, {"Dockerfile": f"FROM busybox\nCOPY {server.url('x')} /x\n"})
    assert error_of(msgs) == "source can't be a URL for COPY"
    no_build_containers(silod)


def test_add_url_cache_follows_the_content(silod: Any, server: Server, images: list[str],
                                           run_id: str) -> None:
    tag = f"sbxu-{run_id}-c:1"
    images.append(tag)
    files = {"Dockerfile": f"FROM busybox\nADD {server.url('v.txt')} /v.txt\nRUN cat /v.txt\n"}
    server.put("v.txt", b"one\n")
    first = py_build(silod, files, tag=tag)
    assert error_of(first) == "" and "Using cache" not in text_of(first)
    again = py_build(silod, files, tag=tag)
    assert text_of(again).count("Using cache") == 2
    first_id = next(m["aux"]["ID"] for m in first if "aux" in m)
    assert next(m["aux"]["ID"] for m in again if "aux" in m) == first_id
    server.put("v.txt", b"two\n")
    changed = py_build(silod, files, tag=tag)
    assert error_of(changed) == "" and "Using cache" not in text_of(changed)
    assert "two" in text_of(changed)
    assert next(m["aux"]["ID"] for m in changed if "aux" in m) != first_id
    assert run_in(silod, tag, "cat", "/v.txt") == "two\n"
    no_build_containers(silod)


@pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")
def test_add_url_through_the_docker_cli(silod: Any, server: Server, images: list[str],
                                        run_id: str) -> None:
    """The docker CLI draws the download's progress and shows a 404 as Docker does."""
    server.put("cli.txt", b"cli\n")
    tag = f"sbxu-{run_id}-cli:1"
    images.append(tag)
    ctx = tempfile.mkdtemp(prefix=f"sbxu-{run_id}-ctx-")
    try:
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(f"FROM busybox\nADD {server.url('cli.txt')} /srv/\n")
        proc = subprocess.run([DOCKER, "build", "-t", tag, ctx], env=docker_env(silod),
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()
        assert run_in(silod, tag, "cat", "/srv/cli.txt") == "cli\n"
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(f"FROM busybox\nADD {server.url('gone.txt')} /srv/\n")
        proc = subprocess.run([DOCKER, "build", ctx], env=docker_env(silod),
                              capture_output=True, timeout=120)
        assert proc.returncode == 1
        assert f"failed to GET {server.url('gone.txt')} with status 404" in proc.stderr.decode()
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    no_build_containers(silod)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
