"""The CRI's gRPC endpoint: RuntimeService and ImageService on a unix socket of silod's.

grpcio's asyncio server runs on silod's event loop beside the Docker API, on the same engine.
Engine errors become gRPC status codes once, here (``_CODES``); anything else is our bug and
is logged with its traceback and answered INTERNAL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from silobox.cri import protogen

protogen.ensure()   # a checkout that was never installed: make the stubs now

from silobox.cri import api_pb2 as pb  # noqa: E402
from silobox.cri import api_pb2_grpc as rpc  # noqa: E402
from silobox.cri import pause  # noqa: E402
from silobox.cri.images import CriImages  # noqa: E402
from silobox.cri.runtime import CriRuntime  # noqa: E402
from silobox.cri.streaming import StreamingServer  # noqa: E402
from silobox.errors import (AlreadyExists, Conflict, InsufficientStorage,  # noqa: E402
                            InvalidArgument, NotFound, SiloboxError, Unauthorized, Unavailable)

log = logging.getLogger("silod.cri")

class _Unimplemented(Exception):
    """An RPC of the interface that silobox cannot serve: UNIMPLEMENTED with the reason."""


_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (_Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (InsufficientStorage, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (SiloboxError, grpc.StatusCode.UNKNOWN),
)


def _rpc(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every error is answered as a status
            for cls, code in _CODES:
                if isinstance(e, cls):
                    await context.abort(code, str(e))
            log.exception("CRI %s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
    return call


class RuntimeServicer(rpc.RuntimeServiceServicer):
    def __init__(self, runtime: CriRuntime, streaming: StreamingServer) -> None:
        self.rt = runtime
        self.streaming = streaming

    @_rpc
    async def Version(self, req: Any) -> Any:
        return await self.rt.version()

    @_rpc
    async def Status(self, req: Any) -> Any:
        return await self.rt.status()

    @_rpc
    async def RuntimeConfig(self, req: Any) -> Any:
        # Job objects are cgroupfs directories of silod's own; no systemd slices.
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(
            cgroup_driver=pb.CGROUPFS))

    @_rpc
    async def UpdateRuntimeConfig(self, req: Any) -> Any:
        # The pod CIDR is the pod network's subnet, configured on silod's side; nothing to do.
        return pb.UpdateRuntimeConfigResponse()

    @_rpc
    async def RunPodSandbox(self, req: Any) -> Any:
        return pb.RunPodSandboxResponse(pod_sandbox_id=await self.rt.run_pod_sandbox(req))

    @_rpc
    async def StopPodSandbox(self, req: Any) -> Any:
        await self.rt.stop_pod_sandbox(req.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    @_rpc
    async def RemovePodSandbox(self, req: Any) -> Any:
        await self.rt.remove_pod_sandbox(req.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    @_rpc
    async def PodSandboxStatus(self, req: Any) -> Any:
        return await self.rt.pod_sandbox_status(req)

    @_rpc
    async def ListPodSandbox(self, req: Any) -> Any:
        return pb.ListPodSandboxResponse(items=await self.rt.list_pod_sandbox(req))

    @_rpc
    async def CreateContainer(self, req: Any) -> Any:
        return pb.CreateContainerResponse(container_id=await self.rt.create_container(req))

    @_rpc
    async def StartContainer(self, req: Any) -> Any:
        await self.rt.start_container(req.container_id)
        return pb.StartContainerResponse()

    @_rpc
    async def StopContainer(self, req: Any) -> Any:
        await self.rt.stop_container(req.container_id, int(req.timeout))
        return pb.StopContainerResponse()

    @_rpc
    async def RemoveContainer(self, req: Any) -> Any:
        await self.rt.remove_container(req.container_id)
        return pb.RemoveContainerResponse()

    @_rpc
    async def ListContainers(self, req: Any) -> Any:
        return pb.ListContainersResponse(containers=await self.rt.list_containers(req.filter))

    @_rpc
    async def ContainerStatus(self, req: Any) -> Any:
        return await self.rt.container_status(req)

    @_rpc
    async def UpdateContainerResources(self, req: Any) -> Any:
        await self.rt.update_container_resources(req)
        return pb.UpdateContainerResourcesResponse()

    @_rpc
    async def ReopenContainerLog(self, req: Any) -> Any:
        await self.rt.reopen_container_log(req.container_id)
        return pb.ReopenContainerLogResponse()

    @_rpc
    async def ExecSync(self, req: Any) -> Any:
        return await self.rt.exec_sync(req)

    @_rpc
    async def Exec(self, req: Any) -> Any:
        return pb.ExecResponse(url=await self.streaming.exec_url(req))

    @_rpc
    async def Attach(self, req: Any) -> Any:
        return pb.AttachResponse(url=await self.streaming.attach_url(req))

    @_rpc
    async def PortForward(self, req: Any) -> Any:
        return pb.PortForwardResponse(url=await self.streaming.port_forward_url(req))

    @_rpc
    async def ContainerStats(self, req: Any) -> Any:
        return pb.ContainerStatsResponse(stats=await self.rt.container_stats(req.container_id))

    @_rpc
    async def ListContainerStats(self, req: Any) -> Any:
        return pb.ListContainerStatsResponse(stats=await self.rt.list_container_stats(req.filter))

    @_rpc
    async def PodSandboxStats(self, req: Any) -> Any:
        return pb.PodSandboxStatsResponse(stats=await self.rt.pod_stats(req.pod_sandbox_id))

    @_rpc
    async def ListPodSandboxStats(self, req: Any) -> Any:
        return pb.ListPodSandboxStatsResponse(stats=await self.rt.list_pod_stats(req.filter))


    @_rpc
    async def CheckpointContainer(self, req: Any) -> Any:
        # Honest refusal: a checkpoint needs CRIU, which silobox does not carry.
        raise _Unimplemented("checkpointing containers is not supported by silobox (it "
                             "needs CRIU)")

    @_rpc
    async def ListMetricDescriptors(self, req: Any) -> Any:
        return pb.ListMetricDescriptorsResponse(descriptors=await self.rt.metric_descriptors())

    @_rpc
    async def ListPodSandboxMetrics(self, req: Any) -> Any:
        return pb.ListPodSandboxMetricsResponse(pod_metrics=await self.rt.pod_metrics())

    async def GetContainerEvents(self, req: Any, context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[Any]:
        """Server streaming: until the kubelet hangs up (the generator is then cancelled)."""
        try:
            async for ev in self.rt.container_events():
                yield ev
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - answered as a status, as _rpc does
            log.exception("CRI GetContainerEvents failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")


class ImageServicer(rpc.ImageServiceServicer):
    def __init__(self, images: CriImages) -> None:
        self.images = images

    @_rpc
    async def ListImages(self, req: Any) -> Any:
        return pb.ListImagesResponse(images=await self.images.list(req.filter))

    @_rpc
    async def ImageStatus(self, req: Any) -> Any:
        return await self.images.status(req)

    @_rpc
    async def PullImage(self, req: Any) -> Any:
        return pb.PullImageResponse(image_ref=await self.images.pull(req))

    @_rpc
    async def RemoveImage(self, req: Any) -> Any:
        await self.images.remove(req.image.image)
        return pb.RemoveImageResponse()

    @_rpc
    async def ImageFsInfo(self, req: Any) -> Any:
        return await self.images.fs_info()


class CriServer:
    """The gRPC server and the streaming server, started and stopped with silod."""

    def __init__(self, backend: Any, socket_path: str, holder: str = "",
                 streaming_address: str = os.environ.get("SILOBOX_CRI_STREAMING",
                                                         "127.0.0.1:0")) -> None:
        self.socket_path = socket_path
        self.runtime = CriRuntime(backend, holder or pause.ensure_built())
        self.streaming = StreamingServer(backend, self.runtime, streaming_address)
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024)])
        rpc.add_RuntimeServiceServicer_to_server(RuntimeServicer(self.runtime, self.streaming),
                                                 self.server)
        rpc.add_ImageServiceServicer_to_server(ImageServicer(CriImages(backend)), self.server)

    async def start(self) -> None:
        await self.streaming.start()
        try:
            os.unlink(self.socket_path)   # a killed silod's socket
        except FileNotFoundError:
            pass
        old = os.umask(0o077)
        try:
            self.server.add_insecure_port(f"unix://{self.socket_path}")
            await self.server.start()
        finally:
            os.umask(old)
        await self.runtime.resume_logs()
        log.info("CRI v1 serving on unix://%s (streaming on %s)", self.socket_path,
                 self.streaming.base_url)

    async def stop(self) -> None:
        await self.server.stop(grace=1.0)
        self.runtime.close()
        await self.streaming.stop()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
