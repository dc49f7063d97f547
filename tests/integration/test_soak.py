"""50 clients at once running create/start/exec/logs/rm loops: no error, no deadlock, no leak."""

from __future__ import annotations

import os
import threading
import time

import docker

IMAGE = "busybox"
CLIENTS = 50
ROUNDS = 4


def test_fifty_clients_in_parallel(silod):
    errors: list[str] = []
    done = [0]
    lock = threading.Lock()

    def client(n: int) -> None:
        api = docker.APIClient(base_url=f"unix://{silod.socket}", version="auto", timeout=120)
        try:
            for r in range(ROUNDS):
                c = api.create_container(IMAGE, ["sh", "-c", f"echo hello-{n}-{r}; sleep 30"],
                                         labels={"silotest": "soak"})
                try:
                    api.start(c)
                    e = api.exec_create(c, ["echo", f"exec-{n}"])
                    out = api.exec_start(e).decode().strip()
                    if out != f"exec-{n}":
                        raise AssertionError(f"exec said {out!r}")
                    deadline = time.time() + 10
                    while f"hello-{n}-{r}" not in api.logs(c).decode():
                        if time.time() > deadline:
                            raise AssertionError("log line never appeared")
                        time.sleep(0.05)
                finally:
                    api.remove_container(c, force=True)
                with lock:
                    done[0] += 1
        except Exception as e:  # collected and asserted below
            errors.append(f"client {n}: {type(e).__name__}: {e}")
        finally:
            api.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, 180 - (time.time() - t0)))
    assert not any(t.is_alive() for t in threads), "clients still running: a deadlock?"
    assert not errors, errors[:5]
    assert done[0] == CLIENTS * ROUNDS
    status, left = silod.request("GET", '/containers/json?all=1&filters={"label":["silotest=soak"]}')
    assert status == 200 and left == []
    parent = f"/sys/fs/cgroup/memory/{silod.cgroup_parent}"
    jobs = [d for d in os.listdir(parent) if len(d) == 64] if os.path.isdir(parent) else []
    assert jobs == [], jobs
