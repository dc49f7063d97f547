"""``docker build`` against silod: through docker-py, the docker CLI binary and ``silo build``.

RUN steps run in real containers of the built-in busybox image; nothing contacts the network
beyond what a normal container has. Each test builds in its own context directory and removes
its images; the session fixture checks that no cgroup or mount is left.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from typing import Any

import pytest

pytestmark = pytest.mark.root

DOCKER = shutil.which("docker")


def tar_context(files: dict[str, bytes | str]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(raw))
    buf.seek(0)
    return buf


def py_build(silod: Any, files: dict[str, bytes | str], **kwargs: Any) -> list[dict[str, Any]]:
    """docker-py ``APIClient.build`` with a custom context; the decoded messages. docker-py's
    own default is rm=False (kept for compatibility); the docker CLI's is rm=True."""
    kwargs.setdefault("rm", True)
    return list(silod.client.build(fileobj=tar_context(files), custom_context=True,
                                   decode=True, **kwargs))


def text_of(messages: list[dict[str, Any]]) -> str:
    return "".join(m.get("stream", "") for m in messages)


def error_of(messages: list[dict[str, Any]]) -> str:
    return next((m["error"] for m in messages if "error" in m), "")


def docker_env(silod: Any) -> dict[str, str]:
    return {**silod.env, "DOCKER_HOST": f"unix://{silod.socket}", "DOCKER_BUILDKIT": "0",
            "DOCKER_CONFIG": os.path.join(silod.base, "docker-config")}


def run_in(silod: Any, image: str, *cmd: str) -> str:
    proc = silod.silo("run", "--rm", image, *cmd)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


@pytest.fixture
def workdir(run_id: str):
    path = tempfile.mkdtemp(prefix=f"sbxb-{run_id}-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cgroup_dirs(parent: str) -> list[str]:
    """Every cgroup below ``parent`` in every v1 hierarchy (or in the v2 tree)."""
    found = []
    for hierarchy in os.listdir("/sys/fs/cgroup"):
        top = os.path.join("/sys/fs/cgroup", hierarchy, parent)
        for dirpath, dirnames, _ in os.walk(top):
            found += [os.path.join(dirpath, d) for d in dirnames]
    return found


def no_build_containers(silod: Any) -> None:
    """No container record, no job object (cgroup) and no build context is left."""
    status, items = silod.request("GET", "/containers/json?all=1")
    assert status == 200 and items == [], items
    jobs = [d for d in silod.cgroup_dirs()
            if not os.path.basename(d).startswith("pool-")]   # silod's pre-made job objects
    assert jobs == []
    assert not os.listdir(os.path.join(silod.root, "build"))
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if line.split()[4].startswith(silod.base)]
    assert [m for m in mounts if m.startswith(silod.root)] == []   # no sandbox disk mounted
    guid = re.compile(r"[0-9A-F]{8}(-[0-9A-F]{4}){3}-[0-9A-F]{12}")
    assert [m for m in mounts if guid.fullmatch(os.path.basename(m))] == []   # no endpoint netns


# -- docker-py ------------------------------------------------------------------------------------


FULL = """\
ARG BASE=busybox
FROM ${BASE}
MAINTAINER someone <a@example.org>
ARG GREETING=hi
ARG UNSET
ENV APP=/srv/app NAME="two words" OTHER=${UNSET:-fallback} ALT=${GREETING:+set}
WORKDIR $APP
COPY --chown=1000:1000 files/ ./data/
COPY *.txt /texts/
RUN echo "$GREETING $NAME" > greeting && rm /bin/vi && id -u > /uid
RUN true
USER 1000:1000
EXPOSE 80 53/udp 8000-8001
VOLUME ["/vol"]
LABEL org.test.a=1 "org.test.b"="x y"
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --timeout=2s --retries=4 CMD test -f greeting
SHELL ["/bin/sh", "-ec"]
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat greeting"]
"""


def test_full_dockerfile_through_docker_py(silod: Any, images: list[str], run_id: str) -> None:
    tag = f"sbxb-{run_id}-full:1"
    images.append(tag)
    msgs = py_build(silod, {"Dockerfile": FULL, "files/a": "A", "files/sub/b": "B",
                            "one.txt": "1", "two.txt": "2", "skip.md": "no"},
                    tag=tag, buildargs={"GREETING": "hello"})
    out = text_of(msgs)
    assert not error_of(msgs), out + error_of(msgs)
    assert "Step 1/20 : ARG BASE=busybox" in out
    assert " ---> Running in " in out and "Removing intermediate container" in out, out
    assert f"Successfully tagged {tag}" in out
    image_id = next(m["aux"]["ID"] for m in msgs if "aux" in m)
    assert out.endswith(f"Successfully built {image_id[7:19]}\nSuccessfully tagged {tag}\n")

    info = silod.client.inspect_image(tag)
    cfg = info["Config"]
    assert info["Id"] == image_id
    assert info["Author"] == "someone <a@example.org>"
    assert "APP=/srv/app" in cfg["Env"] and "NAME=two words" in cfg["Env"]
    assert "OTHER=fallback" in cfg["Env"] and "ALT=set" in cfg["Env"]
    assert not any(e.startswith("GREETING=") for e in cfg["Env"])   # ARGs are not kept
    assert cfg["WorkingDir"] == "/srv/app"
    assert cfg["User"] == "1000:1000"
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}}
    assert cfg["Volumes"] == {"/vol": {}}
    assert cfg["Labels"] == {"org.test.a": "1", "org.test.b": "x y"}
    assert cfg["StopSignal"] == "SIGINT"
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "test -f greeting"],
                                  "Interval": 5_000_000_000, "Timeout": 2_000_000_000,
                                  "Retries": 4}
    assert cfg["Shell"] == ["/bin/sh", "-ec"]
    assert cfg["Entrypoint"] == ["/bin/sh", "-c"] and cfg["Cmd"] == ["cat greeting"]
    assert info["Parent"].startswith("sha256:")
    assert cfg["Image"] == info["Parent"]

    history = silod.client.history(tag)
    created_by = [h["CreatedBy"] for h in history]
    assert '/bin/sh -ec #(nop)  CMD ["cat greeting"]' in created_by
    assert "/bin/sh -c #(nop)  ENV APP=/srv/app NAME=two words OTHER=fallback ALT=set" \
        in created_by
    assert any(c.startswith("|2 GREETING=hello UNSET= /bin/sh -c echo") or
               c.startswith("|1 GREETING=hello /bin/sh -c echo") for c in created_by), created_by
    assert any(c.startswith("/bin/sh -c #(nop) COPY dir:") for c in created_by)
    assert "/bin/sh -c #(nop)  ARG GREETING=hi" in created_by    # never the --build-arg value
    assert "/bin/sh -c #(nop)  EXPOSE 80 53/udp 8000-8001" in created_by
    run_true = next(h for h in history if h["CreatedBy"].endswith("/bin/sh -c true"))
    assert run_true["Size"] == 0                                 # nothing changed: no layer
    raw = silod.client.inspect_image(tag)   # history entries of metadata steps are empty
    assert len(raw["RootFS"]["Layers"]) == 1 + 4   # busybox + WORKDIR, 2 COPY, 1st RUN

    # the filesystem as a container sees it: the RUN's whiteout hides /bin/vi
    out = run_in(silod, tag, "cat greeting; ls /bin/vi 2>&1; stat -c '%u:%g %n' data data/a "
                             "data/sub/b; cat /texts/one.txt /texts/two.txt /uid; ls /texts")
    lines = out.splitlines()
    assert lines[0] == "hello two words"
    assert "No such file" in lines[1]
    assert lines[2:5] == ["1000:1000 data", "1000:1000 data/a", "1000:1000 data/sub/b"]
    assert lines[5:8] == ["120", "one.txt", "two.txt"]   # the files have no newline
    assert "skip.md" not in out
    no_build_containers(silod)


def test_cache_reuse_and_no_cache(silod: Any, images: list[str], run_id: str) -> None:
    tag = f"sbxb-{run_id}-cache"
    images.append(tag)
    files = {"Dockerfile": "FROM busybox\nENV X=1\nCOPY a /a\nRUN cat /a > /b\nCMD [\"cat\", "
                           "\"/b\"]\n", "a": "content"}
    first = py_build(silod, files, tag=tag)
    assert not error_of(first)
    assert "Using cache" not in text_of(first)
    second = py_build(silod, files, tag=tag)
    out = text_of(second)
    assert out.count(" ---> Using cache") == 4, out          # every step after FROM
    assert " ---> Running in" not in out
    assert [m["aux"]["ID"] for m in first if "aux" in m] == \
        [m["aux"]["ID"] for m in second if "aux" in m]
    changed = py_build(silod, {**files, "a": "other"}, tag=tag)
    out = text_of(changed)
    assert out.count(" ---> Using cache") == 1, out          # ENV only; COPY input changed
    assert run_in(silod, tag) == "other"
    fresh = py_build(silod, files, tag=tag, nocache=True)
    assert "Using cache" not in text_of(fresh)
    # intermediate images are hidden from image ls, but listed with -a
    ids = {i["Id"] for i in silod.client.images()}
    all_ids = {i["Id"] for i in silod.client.images(all=True)}
    assert len(all_ids - ids) >= 4
    # image prune keeps the intermediates of a kept image; builder prune drops the cache
    silod.client.prune_images()
    assert "Using cache" in text_of(py_build(silod, files, tag=tag))
    status, doc = silod.request("POST", "/build/prune")
    assert status == 200 and doc["CachesDeleted"]
    # every intermediate went, those of the --no-cache build too; the tagged result stays
    assert all(i["RepoTags"] for i in silod.client.images(all=True))
    assert silod.client.inspect_image(tag)["Id"]
    assert "Using cache" not in text_of(py_build(silod, files, tag=tag))
    no_build_containers(silod)


def test_docker_py_high_level_client(silod: Any, images: list[str], run_id: str,
                                     workdir: str) -> None:
    import docker
    tag = f"sbxb-{run_id}-hl"
    images.append(tag)
    with open(os.path.join(workdir, "Dockerfile"), "w") as f:
        f.write("FROM busybox\nRUN echo built > /out\nCMD [\"cat\", \"/out\"]\n")
    client = docker.DockerClient(base_url=f"unix://{silod.socket}", version="auto")
    try:
        image, logs = client.images.build(path=workdir, tag=tag, rm=True, gzip=True)
        assert image.tags == [f"{tag}:latest"]
        assert any("Successfully built" in l.get("stream", "") for l in logs)
        assert client.containers.run(tag, remove=True) == b"built\n"
    finally:
        client.close()


# -- the docker CLI -------------------------------------------------------------------------------


@pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")
def test_multistage_target_and_scratch_with_docker_cli(silod: Any, images: list[str],
                                                       run_id: str, workdir: str) -> None:
    tag = f"sbxb-{run_id}-ms"
    images.extend([tag, f"{tag}-first"])
    with open(os.path.join(workdir, "Dockerfile"), "w") as f:
        f.write("FROM busybox AS builder\nRUN mkdir /out && echo compiled > /out/app\n"
                "FROM scratch AS final\nCOPY --from=builder /out/app /app\n"
                "COPY --from=busybox /bin/busybox /busybox\n"
                "CMD [\"/busybox\", \"cat\", \"/app\"]\n"
                "FROM final AS extra\nLABEL extra=1\n")
    env = docker_env(silod)
    proc = subprocess.run([DOCKER, "build", "-t", tag, "--target", "final", workdir],
                          env=env, capture_output=True, timeout=120)
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, out
    assert "Step 1/6 : FROM busybox AS builder" in out and "Step 6/6" in out
    assert "LABEL extra" not in out
    info = silod.client.inspect_image(tag)
    assert len(info["RootFS"]["Layers"]) == 2     # scratch + two COPY layers
    assert info["Config"]["Labels"] is None
    assert run_in(silod, tag) == "compiled\n"
    # the second run reuses every step
    again = subprocess.run([DOCKER, "build", "-t", tag, "--target", "final", workdir],
                           env=env, capture_output=True, timeout=120)
    assert again.stdout.decode().count("Using cache") == 4, again.stdout.decode()
    # a parse error names the line; the CLI exits non-zero with the daemon's message
    with open(os.path.join(workdir, "Dockerfile.bad"), "w") as f:
        f.write("FROM busybox\nRUN true\nFORM x\n")
    bad = subprocess.run([DOCKER, "build", "-f", os.path.join(workdir, "Dockerfile.bad"),
                          workdir], env=env, capture_output=True, timeout=60)
    assert bad.returncode != 0
    assert "dockerfile parse error on line 3: unknown instruction: FORM" in bad.stderr.decode()


@pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")
def test_copy_rules_and_dockerignore_with_docker_cli(silod: Any, images: list[str],
                                                     run_id: str, workdir: str) -> None:
    tag = f"sbxb-{run_id}-copy"
    images.append(tag)
    files = {"Dockerfile": "FROM busybox\nARG DEST=/dst\nCOPY --chown=daemon src/ $DEST/\n"
                           "COPY *.conf /etc/app/\nADD bundle.tar /unpacked/\n"
                           "COPY src/one.txt /single\n"
                           "RUN mkdir -p /opt/real && ln -s /opt/real /linked\n"
                           "COPY a.conf /linked/\nCOPY . /ctx/\n",
             ".dockerignore": "**/*.tmp\nsrc/secret\n!src/secret/allowed\n",
             "src/one.txt": "one", "src/two.tmp": "tmp", "src/deep/x.tmp": "tmp",
             "src/deep/keep": "keep", "src/secret/key": "k", "src/secret/allowed": "ok",
             "a.conf": "a", "b.conf": "b"}
    for name, data in files.items():
        path = os.path.join(workdir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(data)
    with tarfile.open(os.path.join(workdir, "bundle.tar"), "w") as tar:
        for name, data in (("inner/file", b"inside"),):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    proc = subprocess.run([DOCKER, "build", "-q", "-t", tag, "--build-arg", "DEST=/dst",
                           workdir], env=docker_env(silod), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip().startswith("sha256:")
    out = run_in(silod, tag, "sh", "-c",
                 "cd /dst && find . -type f | sort; stat -c '%U' one.txt; ls /etc/app; "
                 "cat /unpacked/inner/file; echo; cat /single; echo; ls /opt/real; "
                 "test -L /linked && echo link; stat -c '%a %u' /ctx; ls /ctx/src")
    assert out.splitlines() == ["./deep/keep", "./one.txt", "./secret/allowed", "daemon",
                                "a.conf", "b.conf", "inside", "one", "a.conf", "link",
                                "755 0", "deep", "one.txt", "secret"]


# -- errors ---------------------------------------------------------------------------------------


def test_errors_before_the_stream_are_400(silod: Any) -> None:
    status, doc = silod.request("POST", "/build", raw=b"this is not a tar archive" * 40,
                                headers={"Content-Type": "application/x-tar"})
    assert status == 400 and "build context" in doc["message"]
    status, doc = silod.request("POST", "/build", raw=b"",
                                headers={"Content-Type": "application/x-tar"})
    assert status == 400 and doc["message"]
    ctx = tar_context({"Dockerfile": "FROM busybox\nRUN true\nFORM x\n"}).getvalue()
    status, doc = silod.request("POST", "/build", raw=ctx,
                                headers={"Content-Type": "application/x-tar"})
    assert status == 400
    assert doc["message"] == "dockerfile parse error on line 3: unknown instruction: FORM"
    status, doc = silod.request("POST", "/build?dockerfile=nope", raw=ctx)
    assert status == 400 and doc["message"] == "Cannot locate specified Dockerfile: nope"
    status, doc = silod.request("POST", "/build?buildargs=%5B1%5D", raw=ctx)
    assert status == 400 and "buildargs" in doc["message"]
    status, doc = silod.request("POST", "/build?t=Bad%20Name", raw=ctx)
    assert status == 400 and "invalid reference format" in doc["message"]
    escape = io.BytesIO()
    with tarfile.open(fileobj=escape, mode="w") as tar:
        info = tarfile.TarInfo("../evil")
        tar.addfile(info, io.BytesIO(b""))
    status, doc = silod.request("POST", "/build", raw=escape.getvalue())
    assert status == 400 and "outside the context" in doc["message"]
    no_build_containers(silod)


def test_failures_during_the_build(silod: Any, images: list[str], run_id: str) -> None:
    msgs = py_build(silod, {"Dockerfile": "FROM busybox\nRUN echo before; false\n"},
                    forcerm=True)
    assert "before" in text_of(msgs)
    assert error_of(msgs) == "The command '/bin/sh -c echo before; false' returned a " \
                             "non-zero code: 1"
    assert next(m for m in msgs if "error" in m)["errorDetail"]["code"] == 1
    no_build_containers(silod)            # --force-rm removed the failed container
    msgs = py_build(silod, {"Dockerfile": "FROM busybox\nCOPY missing.txt /\n"})
    assert "missing.txt" in error_of(msgs) and "not found" in error_of(msgs)
    msgs = py_build(silod, {"Dockerfile": "FROM busybox\nADD http://127.0.0.1:9/x /x\n"})
    assert error_of(msgs).startswith('Get "http://127.0.0.1:9/x": ')   # nothing listens
    msgs = py_build(silod, {"Dockerfile": "FROM busybox AS me\nCOPY --from=me /bin/sh /x\n"})
    assert "refers to current or future build stage" in error_of(msgs)
    msgs = py_build(silod, {"Dockerfile": "FROM sbxb-no-such-image\n"})
    assert "sbxb-no-such-image" in error_of(msgs)
    # Docker keeps the failed container unless --force-rm; it is stopped, holds no mount
    msgs = py_build(silod, {"Dockerfile": "FROM busybox\nRUN exit 3\n"})
    assert error_of(msgs).endswith("returned a non-zero code: 3")
    status, items = silod.request("GET", "/containers/json?all=1")
    assert len(items) == 1 and items[0]["State"] == "exited"
    silod.remove_all()
    no_build_containers(silod)


@pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")
def test_failing_run_through_docker_cli(silod: Any, workdir: str) -> None:
    with open(os.path.join(workdir, "Dockerfile"), "w") as f:
        f.write("FROM busybox\nRUN false\n")
    proc = subprocess.run([DOCKER, "build", "--force-rm", workdir], env=docker_env(silod),
                          capture_output=True, timeout=60)
    assert proc.returncode == 1
    assert "The command '/bin/sh -c false' returned a non-zero code: 1" in proc.stderr.decode()
    no_build_containers(silod)


# -- silo build -----------------------------------------------------------------------------------


def test_silo_build_cli(silod: Any, images: list[str], run_id: str, workdir: str) -> None:
    tag = f"sbxb-{run_id}-silo"
    images.append(tag)
    with open(os.path.join(workdir, "Dockerfile"), "w") as f:
        f.write("FROM busybox\nARG V\nRUN echo v=$V > /v\nLABEL from=silo\n")
    proc = silod.silo("build", "-t", tag, "--build-arg", "V=7", "--label", "extra=yes",
                      workdir, timeout=120)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "Step 1/5 : FROM busybox" in out and f"Successfully tagged {tag}:latest" in out
    assert run_in(silod, tag, "cat", "/v") == "v=7\n"
    labels = silod.client.inspect_image(tag)["Config"]["Labels"]
    assert labels == {"from": "silo", "extra": "yes"}
    quiet = silod.silo("build", "-q", "-t", tag, "--build-arg", "V=7", "--label",
                       "extra=yes", workdir, timeout=120)
    assert quiet.returncode == 0 and quiet.stdout.decode().startswith("sha256:")
    dockerfile_only = silod.silo("build", "-", input=b"FROM busybox\nLABEL x=1\n")
    assert dockerfile_only.returncode == 0, dockerfile_only.stderr.decode()
    bad = silod.silo("build", "-", input=b"FROM busybox\nRUN exit 5\n")
    assert bad.returncode == 1 and "non-zero code: 5" in bad.stderr.decode()
    silod.remove_all()


def test_onbuild_arg_env_precedence_and_history(silod: Any, images: list[str],
                                                run_id: str) -> None:
    base, child = f"sbxb-{run_id}-onb", f"sbxb-{run_id}-onb-child"
    images.extend([child, base])
    msgs = py_build(silod, {"Dockerfile": "FROM busybox\nONBUILD RUN echo triggered > /t\n"
                                          "ONBUILD LABEL from=trigger\n"}, tag=base)
    assert not error_of(msgs)
    assert silod.client.inspect_image(base)["Config"]["OnBuild"] == [
        "RUN echo triggered > /t", "LABEL from=trigger"]
    msgs = py_build(silod, {"Dockerfile": f"FROM {base}\nARG V=arg\nENV V=env\n"
                                          "RUN echo $V > /v\n"}, tag=child,
                    buildargs={"V": "cli", "UNUSED": "x"})
    out = text_of(msgs)
    assert not error_of(msgs), out
    assert "# Executing 2 build triggers" in out
    assert "[Warning] One or more build-args [UNUSED] were not consumed" in out
    info = silod.client.inspect_image(child)
    assert info["Config"]["OnBuild"] is None and info["Config"]["Labels"] == {"from": "trigger"}
    assert run_in(silod, child, "cat", "/t", "/v") == "triggered\nenv\n"
    history = silod.client.history(child)
    assert history[0]["Id"] == info["Id"] and history[0]["Tags"] == [f"{child}:latest"]
    assert all(h["Id"] != "<missing>" for h in history), history   # every image is here
    no_build_containers(silod)


def test_prune_and_rmi_release_intermediates(silod: Any, run_id: str) -> None:
    tag = f"sbxb-{run_id}-prune"
    msgs = py_build(silod, {"Dockerfile": "FROM busybox\nENV A=1\nRUN echo x > /x\n"},
                    tag=tag)
    image_id = next(m["aux"]["ID"] for m in msgs if "aux" in m)
    before = {i["Id"] for i in silod.client.images(all=True)}
    silod.client.prune_images()
    assert {i["Id"] for i in silod.client.images(all=True)} == before
    # rmi deletes the result and the build's untagged parents with it (not busybox)
    records = silod.client.remove_image(tag)
    deleted = [r["Deleted"] for r in records if "Deleted" in r]
    assert deleted[0] == image_id and len(deleted) >= 3, records
    left = silod.client.images(all=True)
    assert all(i["RepoTags"] for i in left), left   # every intermediate of the build went
    assert any("busybox:latest" in i["RepoTags"] for i in left)
    # with --no-prune (noprune=1) the parents stay, dangling, until an image prune
    msgs = py_build(silod, {"Dockerfile": "FROM busybox\nENV B=2\nRUN echo y > /y\n"},
                    tag=tag)
    assert not error_of(msgs)
    silod.client.remove_image(tag, noprune=True)
    assert any(not i["RepoTags"] for i in silod.client.images())
    silod.client.prune_images()
    assert all(i["RepoTags"] for i in silod.client.images(all=True))


@pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")
def test_plain_docker_build_picks_the_classic_builder(silod: Any, images: list[str],
                                                      run_id: str, workdir: str) -> None:
    tag = f"sbxb-{run_id}-plain"
    images.append(tag)
    with open(os.path.join(workdir, "Dockerfile"), "w") as f:
        f.write("FROM busybox\nRUN echo plain\n")
    env = {k: v for k, v in docker_env(silod).items() if k != "DOCKER_BUILDKIT"}
    proc = subprocess.run([DOCKER, "build", "-t", tag, workdir], env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "plain" in proc.stdout.decode() and "Successfully tagged" in proc.stdout.decode()
    # a Dockerfile alone on stdin: the CLI wraps it in a context tar
    piped = subprocess.run([DOCKER, "build", "-q", "-"], env=env, timeout=120,
                           input=b"FROM busybox\nRUN echo from-stdin > /s\n",
                           capture_output=True)
    assert piped.returncode == 0, piped.stderr.decode()
    piped_id = piped.stdout.decode().strip()
    assert piped_id.startswith("sha256:")
    silod.client.remove_image(piped_id)
    events = silod.client.events(since=0, until=int(__import__("time").time()) + 1,
                                 filters={"type": "image", "event": "tag"}, decode=True)
    assert any(e["Actor"]["Attributes"].get("name") == f"{tag}:latest" for e in events)


def test_client_going_away_stops_the_run_container(silod: Any) -> None:
    import socket
    import time
    ctx = tar_context({"Dockerfile": "FROM busybox\nRUN echo started; sleep 60\n"}).getvalue()
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(silod.socket)
    sock.sendall(b"POST /build?rm=1 HTTP/1.1\r\nHost: d\r\nContent-Type: application/x-tar"
                 b"\r\nContent-Length: %d\r\n\r\n" % len(ctx) + ctx)
    seen = b""
    deadline = time.time() + 30
    while b"started" not in seen and time.time() < deadline:
        seen += sock.recv(4096)
    assert b"started" in seen
    sock.close()
    deadline = time.time() + 20
    while time.time() < deadline:
        status, items = silod.request("GET", "/containers/json?all=1")
        if not items:
            break
        time.sleep(0.2)
    no_build_containers(silod)


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_compressed_contexts(silod: Any, compression: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tar:
        data = b"FROM busybox\nLABEL compressed=" + compression.encode() + b"\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    status, body = silod.request("POST", "/build?q=1", raw=buf.getvalue(),
                                 headers={"Content-Type": "application/x-tar",
                                          "X-Registry-Config": "e30="})
    assert status == 200
    lines = [json.loads(l) for l in body.splitlines() if l.strip()] \
        if isinstance(body, bytes) else [body]
    image_id = next(l["aux"]["ID"] for l in lines if "aux" in l)
    assert silod.client.inspect_image(image_id)["Config"]["Labels"] == {
        "compressed": compression}
    silod.client.remove_image(image_id)
    no_build_containers(silod)


def test_run_steps_get_the_network_mode(silod: Any) -> None:
    msgs = py_build(silod, {"Dockerfile": "FROM busybox\nRUN ip -o link | wc -l\n"},
                    network_mode="none", container_limits={"memory": 64 * 1024 * 1024},
                    nocache=True)
    assert not error_of(msgs), text_of(msgs)
    lines = text_of(msgs).splitlines()
    after = lines.index(next(l for l in lines if "Running in" in l))
    assert lines[after + 1] == "1", lines    # --network none: only lo
    default = py_build(silod, {"Dockerfile": "FROM busybox\nRUN ip -o link | wc -l\n"},
                       nocache=True)
    lines = text_of(default).splitlines()
    after = lines.index(next(l for l in lines if "Running in" in l))
    assert lines[after + 1] == "2", lines    # the default network: lo and eth0
    for result in (msgs, default):
        silod.client.remove_image(next(m["aux"]["ID"] for m in result if "aux" in m))
    no_build_containers(silod)


REGISTRY_BIN = "/usr/bin/docker-registry"


@pytest.mark.skipif(not os.path.exists(REGISTRY_BIN),
                    reason="docker-registry is not installed (scripts/install.sh --test)")
def test_from_pulls_a_missing_base_image(silod: Any, workdir: str, run_id: str) -> None:
    """dockerd's classic builder pulls a FROM image it does not have (and any with pull=1);
    the registry is Debian's docker-registry on 127.0.0.1."""
    from test_registry import Registry
    registry = Registry(os.path.join(workdir, "registry"))
    registry.start()
    base = f"{registry.address}/sbxb-{run_id}/base:1"
    tag = f"sbxb-{run_id}-pulled"
    try:
        msgs = py_build(silod, {"Dockerfile": "FROM busybox\nRUN echo from-registry > /r\n"},
                        tag=base)
        assert not error_of(msgs), text_of(msgs)
        pushed = list(silod.client.push(base, stream=True, decode=True))
        assert not any("error" in m for m in pushed), pushed
        silod.client.remove_image(base)
        msgs = py_build(silod, {"Dockerfile": f"FROM {base}\nRUN cat /r\n"}, tag=tag)
        assert not error_of(msgs), text_of(msgs)
        assert any(m.get("status", "").startswith("Status: Downloaded newer image for")
                   for m in msgs), msgs
        assert "from-registry" in text_of(msgs)
        # pull=1 pulls again although the image is here now
        again = py_build(silod, {"Dockerfile": f"FROM {base}\nRUN cat /r\n"}, tag=tag,
                         pull=True)
        assert any(m.get("status", "").startswith("Status: Image is up to date for")
                   for m in again), again
        # a registry off this machine is never contacted by the test daemon
        missing = py_build(silod, {"Dockerfile": "FROM sbxb-no-such-image\n"})
        assert "sbxb-no-such-image" in error_of(missing)
    finally:
        registry.stop()
        for name in (tag, base):
            try:
                silod.client.remove_image(name, force=True)
            except Exception:
                pass
        silod.request("POST", "/build/prune")
    no_build_containers(silod)
