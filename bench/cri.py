#!/usr/bin/env python3
"""The CRI's start path beside the Docker API's, on one silod, interleaved.

    bench/cri.py [--exec-root /run/silobox] [--n 30]

cri: ``RunPodSandbox`` + ``CreateContainer`` + ``StartContainer`` of ``sleep`` (what a kubelet
does for a one-container pod: two compute systems, one HNS endpoint);
docker: create + start of a ``sleep`` container on the nat network (one compute system, one
endpoint). Teardown is not timed. Medians in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid

import docker

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from silobox.cri import protogen  # noqa: E402

protogen.ensure()
import grpc  # noqa: E402

from silobox.cri import api_pb2 as pb  # noqa: E402
from silobox.cri import api_pb2_grpc as rpc  # noqa: E402


def _cri(rt: rpc.RuntimeServiceStub) -> tuple[float, str]:
    cfg = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(
        name="bench", namespace="bench", uid=uuid.uuid4().hex))
    t = time.perf_counter()
    pod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
    cid = rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod, sandbox_config=cfg, config=pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image="busybox"),
            args=["sleep", "600"]))).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    return (time.perf_counter() - t) * 1000, pod


def _docker(c: docker.APIClient) -> tuple[float, str]:
    t = time.perf_counter()
    x = c.create_container("busybox", ["sleep", "600"])
    c.start(x)
    return (time.perf_counter() - t) * 1000, x["Id"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exec-root", default="/run/silobox")
    ap.add_argument("--n", type=int, default=30)
    a = ap.parse_args()
    rt = rpc.RuntimeServiceStub(grpc.insecure_channel(f"unix://{a.exec_root}/cri.sock"))
    dc = docker.APIClient(base_url=f"unix://{a.exec_root}/silod.sock", version="auto")
    cri_ms, docker_ms = [], []
    for i in range(a.n):
        for kind in (("cri", "docker") if i % 2 == 0 else ("docker", "cri")):
            if kind == "cri":
                ms, pod = _cri(rt)
                cri_ms.append(ms)
                rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
                rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
            else:
                ms, cid = _docker(dc)
                docker_ms.append(ms)
                dc.remove_container(cid, force=True)
    print(f"n={a.n}  cri pod+container start median {statistics.median(cri_ms):.1f} ms  "
          f"docker create+start median {statistics.median(docker_ms):.1f} ms")


if __name__ == "__main__":
    main()
