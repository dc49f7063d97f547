"""A real silod on a temporary root, socket and cgroup parent, shared by the integration tests.

Everything it creates carries the run's prefix; at the end the fixture removes every container,
stops silod and checks that nothing of the run is left on the host: no cgroup, no mount, no shim.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest
from netutil import Drivers, Outside

HIERARCHIES = "/sys/fs/cgroup"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


class Silod:
    """A silod process under test, plus clients for it."""

    def __init__(self, base: str, run_id: str) -> None:
        self.base = base
        self.root = os.path.join(base, "root")
        self.exec_root = os.path.join(base, "run")
        self.socket = os.path.join(self.exec_root, "silod.sock")
        # A top-level parent of the test's own, not one under silod's default ``silobox``: a
        # nested one made ``silobox`` in every hierarchy as a side effect and left it there.
        self.cgroup_parent = f"silobox-i{run_id}"
        self.env = {**os.environ, "SILOBOX_HOST": f"unix://{self.socket}"}
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(base, "silod.log")
        self._client = None
        self.extra_args: list[str] = []   # more silod options, for a module's own silod

    def start(self) -> None:
        os.makedirs(self.base, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "silobox.daemon", "--debug", "--root", self.root,
             "--exec-root", self.exec_root, "--cgroup-parent", self.cgroup_parent,
             "-H", f"unix://{self.socket}", "--registry-loopback-only", *self.extra_args],
            stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"silod exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, _ = self.request("GET", "/_ping")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"silod did not come up:\n{self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._client = None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._client = None

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-8000:]
        except OSError:
            return ""

    def request(self, method: str, path: str, body: Any = None,
                raw: bytes | None = None, headers: dict | None = None) -> tuple[int, Any]:
        conn = UnixHTTPConnection(self.socket)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        try:
            return resp.status, json.loads(payload) if payload else None
        except ValueError:
            return resp.status, payload

    @property
    def client(self):  # docker.APIClient, imported lazily
        if self._client is None:
            import docker
            self._client = docker.APIClient(base_url=f"unix://{self.socket}", version="auto",
                                            timeout=60)
        return self._client

    def silo(self, *args: str, input: bytes | None = None, timeout: float = 60,
             check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "silobox.cli.main", *args], env=self.env,
                              input=input, capture_output=True, timeout=timeout, check=check)

    def cgroup_dirs(self) -> list[str]:
        """Every cgroup under this daemon's parent, in every hierarchy."""
        return cgroup_dirs(self.cgroup_parent)

    def remove_cgroup_parent(self) -> None:
        """Remove this daemon's (empty) cgroup parent, for a test's own extra daemon."""
        remove_cgroup_parent(self.cgroup_parent)

    def remove_all(self) -> None:
        try:
            status, items = self.request("GET", "/containers/json?all=1")
        except OSError:
            return
        if status != 200:
            return
        for c in items:
            self.request("DELETE", f"/containers/{c['Id']}?force=1")


def cgroup_dirs(parent: str) -> list[str]:
    found = []
    for h in os.listdir(HIERARCHIES):
        top = os.path.join(HIERARCHIES, h, parent)
        if os.path.isdir(top):
            for dirpath, dirnames, _ in os.walk(top):
                found += [os.path.join(dirpath, d) for d in dirnames]
    return found


def kill_cgroup_processes(parent: str) -> None:
    """SIGKILL every process in the cgroups under ``parent`` and wait for them to go."""
    for _ in range(50):
        pids = set()
        for h in os.listdir(HIERARCHIES):
            for dirpath, _, files in os.walk(os.path.join(HIERARCHIES, h, parent)):
                if "cgroup.procs" in files:
                    with open(os.path.join(dirpath, "cgroup.procs")) as f:
                        pids.update(int(p) for p in f.read().split())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def remove_cgroup_parent(parent: str) -> None:
    for h in os.listdir(HIERARCHIES):
        top = os.path.join(HIERARCHIES, h, parent)
        if os.path.isdir(top):
            for dirpath, dirnames, _ in sorted(os.walk(top, topdown=False), reverse=False):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass


def mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [l.split()[4] for l in f if l.split()[4].startswith(path)]


def shims_of(base: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm.startswith("silobox-") and base.encode() in cmd:
            pids.append(int(pid))
    return pids


@contextlib.contextmanager
def running_silod(base: str, run_id: str, extra_args: list[str] | None = None
                  ) -> Iterator[Silod]:
    """A started silod that is stopped, and checked to leave nothing behind, at the end."""
    d = Silod(base, run_id)
    d.extra_args = list(extra_args or [])
    d.start()
    try:
        yield d
    finally:
        restart_error = None
        try:
            if d.proc and d.proc.poll() is not None:
                d.start()
            d.remove_all()
        except Exception as e:   # the host is cleaned below all the same, and the test fails
            restart_error = e
        finally:
            d.stop()
        leftovers = cgroup_dirs(d.cgroup_parent)
        mounts = mounts_under(base)
        if restart_error is not None:
            kill_cgroup_processes(d.cgroup_parent)   # what a silod that cannot start left running
        remove_cgroup_parent(d.cgroup_parent)
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", m], check=False)
        shutil.rmtree(base, ignore_errors=True)
        assert restart_error is None, f"silod did not come back to clean up: {restart_error}"
        assert not leftovers, f"cgroups left behind: {leftovers}"
        assert not mounts, f"mounts left behind: {mounts}"


@pytest.fixture(scope="session")
def silod(run_id: str):
    with running_silod(f"/tmp/sbxt-{run_id}", run_id) as d:
        yield d


@pytest.fixture(scope="session")
def silod_factory():
    """``running_silod`` for modules that need a silod with options of their own."""
    return running_silod


# -- the network tests' fixtures (helpers in netutil.py) ---------------------------------------


@pytest.fixture
def drv(silod: Any) -> Iterator[Drivers]:
    """The test's containers and networks of any driver, removed at the end."""
    d = Drivers(silod)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def outside() -> Iterator[Outside]:
    """A namespace the test made, joined to the host by a veth pair of its own."""
    o = Outside()
    try:
        yield o
    finally:
        o.close()


@pytest.fixture
def images(silod: Any) -> Iterator[list[str]]:
    """Image tags a build test made, removed afterwards with the build cache they left."""
    made: list[str] = []
    yield made
    for tag in made:
        try:
            silod.client.remove_image(tag, force=True)
        except Exception:
            pass
    silod.request("POST", "/build/prune")


@pytest.fixture
def made(silod: Silod) -> Iterator[list[str]]:
    """Ids of containers a test creates through the API; each is force-removed afterwards."""
    ids: list[str] = []
    try:
        yield ids
    finally:
        for cid in ids:
            silod.request("DELETE", f"/containers/{cid}?force=1")
