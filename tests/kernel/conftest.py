"""Fixtures for kernel tests: job objects (unique cgroup parents and workers inside job
objects) and a private storage root with its layer and image stores.

Everything created here carries the run's prefix (``silobox/t<run>…``), is registered for
cleanup before it is created, and a session-end check fails if anything with the prefix is left.
"""

from __future__ import annotations

import os
import secrets
import select
import signal
import time
import traceback
from typing import Callable, Iterator

import pytest

from silobox.storage import Database, ImageStore, LayerStore
from silobox.storage.sandbox import mounts_under

from silobox.kernel import features, libc
from silobox.kernel.jobobject import JobLimits, JobObject, cleanup_parent, list_job_objects

TOP = "silobox"


def _all_mounts() -> list[str]:
    layout = features.cgroup_layout()
    mounts = list(dict.fromkeys(layout.v1_mounts.values()))
    if layout.unified_mount:
        mounts.append(layout.unified_mount)
    return mounts


def _leftovers(prefix: str) -> list[str]:
    found = []
    for mount in _all_mounts():
        top = os.path.join(mount, TOP)
        try:
            found += [os.path.join(top, n) for n in os.listdir(top) if n.startswith(prefix)]
        except FileNotFoundError:
            continue
    return found


@pytest.fixture(scope="session")
def jobobject_run(run_id: str) -> Iterator[str]:
    """The run's prefix for parent groups (``t<run id>``). At the end: remove the top group if
    this run created it, and check that nothing with the prefix is left in any hierarchy."""
    if os.geteuid() != 0:
        pytest.skip("job object tests need root (cgroupfs writes)")
    if features.cgroup_layout().mode == "none":
        pytest.skip("no cgroup filesystem is mounted")
    prefix = f"t{run_id}"
    created_top = [m for m in _all_mounts() if not os.path.isdir(os.path.join(m, TOP))]
    yield prefix
    for mount in created_top:
        try:
            os.rmdir(os.path.join(mount, TOP))
        except OSError:
            pass  # someone else uses it now, or it is gone: not ours to force
    left = _leftovers(prefix)
    assert not left, f"cgroups left behind by this run: {left}"


class Worker:
    """A forked process that joins a job object, run under a subreaper of our own.

    The test process forks a reaper (outside the job) marked PR_SET_CHILD_SUBREAPER; the reaper
    forks the worker, which writes its pid to the job's ``cgroup.procs`` files, says ``joined``
    and runs ``body(report_fd, go_fd)``. Every descendant of the worker is reaped by the reaper,
    so nothing is left as a zombie of the host's init.
    """

    def __init__(self, job: JobObject, body: Callable[[int, int], int | None]) -> None:
        self.job = job
        self.body = body
        self.reaper = 0
        self.pid = 0
        self.status: int | None = None
        self._info = self._report = self._go = -1
        self._info_buf = b""
        self._report_buf = b""

    def start(self) -> None:
        procs_files = self.job.procs_files()
        body = self.body
        info_r, info_w = os.pipe()
        report_r, report_w = os.pipe()
        go_r, go_w = os.pipe()
        self._info, self._report, self._go = info_r, report_r, go_w
        self.reaper = os.fork()
        if self.reaper == 0:
            code = 0
            try:
                os.close(info_r)
                os.close(report_r)
                os.close(go_w)
                libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
                worker = os.fork()
                if worker == 0:
                    _run_worker(procs_files, body, report_w, go_r)
                os.close(report_w)
                os.close(go_r)
                os.write(info_w, f"{worker}\n".encode())
                status = -1
                while True:
                    try:
                        pid, st = os.wait()
                    except ChildProcessError:
                        break
                    if pid == worker:
                        status = st
                os.write(info_w, f"{status}\n".encode())
            except BaseException:
                traceback.print_exc()
                code = 71
            finally:
                os._exit(code)
        os.close(info_w)
        os.close(report_w)
        os.close(go_r)
        self.pid = int(self._line("_info", "_info_buf", 5.0))
        joined = self.read(5.0)
        assert joined == "joined", f"worker failed to join the job object: {joined!r}"

    def _line(self, fd_attr: str, buf_attr: str, timeout: float) -> str:
        fd = getattr(self, fd_attr)
        deadline = time.monotonic() + timeout
        while b"\n" not in getattr(self, buf_attr):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"no message from the worker within {timeout}s")
            chunk = os.read(fd, 4096)
            if not chunk:
                return getattr(self, buf_attr).decode() or "<eof>"
            setattr(self, buf_attr, getattr(self, buf_attr) + chunk)
        line, _, rest = getattr(self, buf_attr).partition(b"\n")
        setattr(self, buf_attr, rest)
        return line.decode()

    def read(self, timeout: float = 5.0) -> str:
        """The next line the worker reported."""
        return self._line("_report", "_report_buf", timeout)

    def release(self) -> None:
        """Let the worker and its children go on: closing the go pipe wakes every reader."""
        if self._go >= 0:
            os.close(self._go)
            self._go = -1

    def wait(self, timeout: float = 5.0) -> int:
        """Wait for the worker to end; return its wait status (as from os.waitpid)."""
        if self.status is None:
            self.status = int(self._line("_info", "_info_buf", timeout))
            self._reap_reaper(timeout)
        return self.status

    def _reap_reaper(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, _ = os.waitpid(self.reaper, os.WNOHANG)
            if pid:
                self.reaper = 0
                return
            time.sleep(0.005)
        os.kill(self.reaper, signal.SIGKILL)
        os.waitpid(self.reaper, 0)
        self.reaper = 0

    def close(self) -> None:
        """Finalizer: the job object is gone by now, so the reaper is about to exit."""
        if self.reaper:
            try:
                self.wait(5.0)
            except (TimeoutError, ValueError):
                self._reap_reaper(0.0)
        for fd in (self._info, self._report, self._go):
            if fd >= 0:
                os.close(fd)
        self._info = self._report = self._go = -1


def _run_worker(procs_files: list[str], body: Callable[[int, int], int | None],
                report_w: int, go_r: int) -> None:
    code = 0
    try:
        for path in procs_files:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        os.write(report_w, b"joined\n")
        code = body(report_w, go_r) or 0
    except BaseException as e:  # report, never return into pytest
        try:
            os.write(report_w, f"error {type(e).__name__}: {e}\n".encode())
        except OSError:
            pass
        code = 70
    finally:
        os._exit(code)


class JobFactory:
    """Creates job objects with random 64-hex ids under one unique parent per test."""

    def __init__(self, parent: str) -> None:
        self.parent = parent
        self.jobs: list[JobObject] = []
        self.workers: list[Worker] = []

    def new(self, limits: JobLimits | None = None, backend: str | None = None,
            create: bool = True) -> JobObject:
        job = JobObject(secrets.token_hex(32), self.parent, backend=backend)
        self.jobs.append(job)  # registered before anything exists on the host
        if create:
            job.create(limits)
        return job

    def worker(self, job: JobObject, body: Callable[[int, int], int | None]) -> Worker:
        worker = Worker(job, body)
        self.workers.append(worker)  # registered before the fork
        worker.start()
        return worker

    def cleanup(self) -> None:
        errors: list[BaseException] = []
        for job in self.jobs:
            try:
                job.delete(timeout=5.0)
            except Exception as e:
                errors.append(e)
        for worker in self.workers:
            try:
                worker.close()
            except Exception as e:
                errors.append(e)
        for backend in sorted({job.backend for job in self.jobs}):
            try:
                for name in list_job_objects(self.parent, backend=backend):
                    JobObject(name, self.parent, backend=backend).delete(timeout=5.0)
                cleanup_parent(self.parent, backend=backend)
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def jobs(request: pytest.FixtureRequest, jobobject_run: str) -> JobFactory:
    """A job factory whose parent group is unique to this test and removed afterwards."""
    factory = JobFactory(f"{TOP}/{jobobject_run}{secrets.token_hex(3)}")
    request.addfinalizer(factory.cleanup)
    return factory


# -- storage -----------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path) -> Iterator[str]:
    """A private storage root; whatever a test leaves mounted under it is detached."""
    path = str(tmp_path / "silobox")
    os.makedirs(path)
    yield path
    for mount_point in mounts_under(str(tmp_path)):
        libc.umount2(mount_point, libc.MNT_DETACH)
    assert mounts_under(str(tmp_path)) == []


@pytest.fixture
def store(root: str) -> Iterator[tuple[LayerStore, ImageStore]]:
    """The layer and image stores of ``root`` (their database is ``layers.db``), shared by the
    storage, archive and layer-reference tests."""
    db = Database(os.path.join(root, "silobox.db"))
    layers = LayerStore(root, db)
    images = ImageStore(db, layers)
    yield layers, images
    db.close()
