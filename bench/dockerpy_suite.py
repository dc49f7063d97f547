"""docker-py's own integration suite against silod, or against any engine on a socket.

    python3 bench/dockerpy_suite.py run SOURCE [--host unix:///run/docker.sock] [--api 1.41]
                                        [--python PY] [--out DIR] [-k EXPR]
    python3 bench/dockerpy_suite.py compare SILOD.xml DOCKERD.xml

``SOURCE`` is a docker-py source tree (its ``tests/integration``; docker-py's PyPI sdist does
not ship the tests). Without ``--host`` a private silod is started on a temporary root and
stopped at the end. ``PY`` is a Python with docker-py, pytest, pytest-timeout and paramiko (the
suite's helpers import it). The suite's images (``alpine:3.10``, ``busybox``) cannot be pulled
here: both are imported from a busybox rootfs built from the host's static /bin/busybox, into
whichever engine is tested, so both engines run the same image.

Left out, for every engine: the swarm files (silod is never in a swarm), plugins and the
credential-store tests (they need Docker Hub and a pass/gpg store), and any test whose failure
says it needed a registry or a swarm (see ``LEFT_OUT_WORDS``). ``compare`` prints both pass
rates over the tests both ran, and every test whose outcome differs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import silod as S  # noqa: E402  (bench/silod.py)

IGNORED_FILES = ["api_swarm_test.py", "api_service_test.py", "api_secret_test.py",
                 "api_config_test.py", "models_swarm_test.py", "models_services_test.py",
                 "models_nodes_test.py", "api_plugin_test.py", "credentials"]
LEFT_OUT_WORDS = ("registry-1.docker.io", "index.docker.io", "pull access denied",
                  "--registry-loopback-only", "no such host", "name resolution",
                  "dial tcp", "swarm", "requested access to the resource is denied",
                  "repository does not exist")
IMAGES = (("alpine", "3.10"), ("alpine", "latest"), ("busybox", "latest"))


def busybox_rootfs_tar() -> bytes:
    """A minimal root: /bin/busybox (static) and its applets, passwd and group."""
    busybox = "/bin/busybox"
    applets = subprocess.run([busybox, "--list"], capture_output=True, check=True,
                             text=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        for d in ("bin", "dev", "etc", "proc", "sys", "root", "run", "var"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        add_dir("var/tmp", 0o1777)
        with open(busybox, "rb") as f:
            add_file("bin/busybox", f.read(), 0o755)
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                               b"nobody:x:65534:65534:nobody:/:/bin/false\n")
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def ensure_images(python: str, host: str) -> None:
    """Import the suite's images where the engine lacks them (through docker-py, as a user)."""
    code = r"""
import sys, docker
c = docker.APIClient(base_url=sys.argv[1], version="auto", timeout=120)
data = sys.stdin.buffer.read()
for ref in sys.argv[2:]:
    repo, tag = ref.split(":")
    try:
        c.inspect_image(ref)
    except docker.errors.NotFound:
        c.import_image_from_data(data, repository=repo, tag=tag,
                                 changes=['CMD ["/bin/sh"]'])
        c.inspect_image(ref)
"""
    subprocess.run([python, "-c", code, host, *[f"{r}:{t}" for r, t in IMAGES]],
                   input=busybox_rootfs_tar(), check=True)


def run(args: argparse.Namespace) -> int:
    source = os.path.abspath(args.source)
    suite = os.path.join(source, "tests", "integration")
    if not os.path.isdir(suite):
        raise SystemExit(f"{suite}: not a docker-py source tree with its integration tests")
    os.makedirs(args.out, exist_ok=True)
    proc = None
    base = ""
    host = args.host
    if not host:
        base = tempfile.mkdtemp(prefix="dpy", dir="/tmp")
        # the suite pulls from Docker Hub: nothing may leave this machine
        proc, host = S.start_silod(base, f"dpy{uuid.uuid4().hex[:6]}",
                                   ("--registry-loopback-only",))
    name = args.name or ("silod" if proc else "engine")
    try:
        ensure_images(args.python, host)
        config = tempfile.mkdtemp(prefix="dpycfg", dir="/tmp")   # the suite's contexts
        with open(os.path.join(config, "config.json"), "w") as f:
            f.write("{}")   # without one docker-py keeps contexts in the working directory
        env = {**os.environ, "DOCKER_HOST": host, "PYTHONDONTWRITEBYTECODE": "1",
               "DOCKER_CONFIG": config}
        env.pop("DOCKER_TLS_VERIFY", None)
        if args.api:
            env["DOCKER_TEST_API_VERSION"] = args.api
        cmd = [args.python, "-m", "pytest", suite, "-p", "no:cacheprovider", "-o", "addopts=",
               "-q", "-rN", "--tb=line", f"--timeout={args.timeout}",
               f"--junitxml={os.path.join(args.out, name + '.xml')}",
               *[f"--ignore={os.path.join(suite, f)}" for f in IGNORED_FILES]]
        if args.k:
            cmd += ["-k", args.k]
        started = time.time()
        code = subprocess.run(cmd, env=env, cwd=source).returncode
        print(f"{name}: pytest exited {code} after {time.time() - started:.0f} s", file=sys.stderr)
        shutil.rmtree(config, ignore_errors=True)
        return 0
    finally:
        if proc is not None:
            _remove_all(args.python, host)
            S.stop(proc)
            shutil.rmtree(base, ignore_errors=True)


def _remove_all(python: str, host: str) -> None:
    code = r"""
import sys, docker
c = docker.APIClient(base_url=sys.argv[1], version="auto", timeout=120)
for x in c.containers(all=True):
    c.remove_container(x["Id"], force=True, v=True)
"""
    subprocess.run([python, "-c", code, host], check=False)


def results(path: str) -> dict[str, tuple[str, str]]:
    """test id → (outcome, message) from a JUnit XML file."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        tid = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", (child.get("message") or "") + (child.text or "")
            elif child.tag == "skipped":
                outcome, message = "skipped", child.get("message") or ""
        out[tid] = (outcome, message)
    return out


def compare(args: argparse.Namespace) -> int:
    ours, theirs = results(args.silod), results(args.dockerd)
    left_out = {t for t in ours.keys() | theirs.keys()
                if any(w in (r.get(t, ("", ""))[1]) for r in (ours, theirs)
                       for w in LEFT_OUT_WORDS)}
    both = sorted((ours.keys() & theirs.keys()) - left_out)
    ran = [t for t in both if ours[t][0] != "skipped" and theirs[t][0] != "skipped"]
    report: dict[str, Any] = {
        "left_out": len(left_out), "ran_on_both": len(ran),
        "silod_passed": sum(ours[t][0] == "passed" for t in ran),
        "dockerd_passed": sum(theirs[t][0] == "passed" for t in ran),
        "only_dockerd_passes": [(t, ours[t][1][:300]) for t in ran
                                if theirs[t][0] == "passed" and ours[t][0] != "passed"],
        "only_silod_passes": [(t, theirs[t][1][:300]) for t in ran
                              if ours[t][0] == "passed" and theirs[t][0] != "passed"],
        "both_fail": [t for t in ran if ours[t][0] != "passed" and theirs[t][0] != "passed"],
    }
    print(json.dumps(report, indent=1))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("source")
    r.add_argument("--host", default="", help="an engine already running (else a private silod)")
    r.add_argument("--api", default="", help="DOCKER_TEST_API_VERSION for the suite")
    r.add_argument("--python", default=sys.executable)
    r.add_argument("--out", default="/tmp/dockerpy-suite")
    r.add_argument("--name", default="")
    r.add_argument("--timeout", type=int, default=180)
    r.add_argument("-k", default="")
    c = sub.add_parser("compare")
    c.add_argument("silod")
    c.add_argument("dockerd")
    args = p.parse_args()
    return run(args) if args.cmd == "run" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
