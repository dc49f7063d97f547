"""The CRI's wire pieces without a daemon: the CRI log format, the SPDY session's framing and
header compression (against an independent zlib peer), and the .proto's field numbers."""

from __future__ import annotations

import asyncio
import struct
import zlib

import pytest

from silobox.cri import protogen
from silobox.cri.logs import cri_line, last_stamp
from silobox.cri.spdy import DICTIONARY, FLAG_FIN, Session

protogen.ensure()
from silobox.cri import api_pb2 as pb  # noqa: E402


def test_cri_log_lines() -> None:
    t = "2026-01-02T03:04:05.000000001Z"
    assert cri_line(t, 1, b"full\n") == t.encode() + b" stdout F full\n"
    assert cri_line(t, 2, b"part") == t.encode() + b" stderr P part\n"


def test_last_stamp_reads_the_last_record(tmp_path) -> None:
    p = tmp_path / "0.log"
    p.write_bytes(b"2026-01-02T03:04:05.1Z stdout F a\n2026-01-02T03:04:06.2Z stdout F b\n")
    assert last_stamp(str(p)) == "2026-01-02T03:04:06.2Z"
    assert last_stamp(str(tmp_path / "absent")) == ""


def test_spdy_dictionary_is_spdy3s() -> None:
    import hashlib
    assert len(DICTIONARY) == 1423
    assert hashlib.sha256(DICTIONARY).hexdigest() == \
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _block(comp: "zlib._Compress", headers: dict[str, str]) -> bytes:
    raw = struct.pack(">I", len(headers))
    for k, v in headers.items():
        raw += struct.pack(">I", len(k)) + k.encode() + struct.pack(">I", len(v)) + v.encode()
    return comp.compress(raw) + comp.flush(zlib.Z_SYNC_FLUSH)


def _syn_stream(comp: "zlib._Compress", sid: int, headers: dict[str, str]) -> bytes:
    payload = struct.pack(">IIH", sid, 0, 0) + _block(comp, headers)
    return struct.pack(">HHI", 0x8003, 1, len(payload)) + payload


def test_spdy_session_accepts_streams_and_moves_data() -> None:
    async def main() -> None:
        tr = _Transport()
        s = Session(tr)
        comp = zlib.compressobj(zdict=DICTIONARY)
        # two streams in one read, the second split across reads
        first = _syn_stream(comp, 1, {"streamType": "error"})
        second = _syn_stream(comp, 3, {"streamtype": "stdin"})
        s.feed_data(first + second[:5])
        s.feed_data(second[5:])
        err = await s.accept(1)
        stdin = await s.accept(1)
        assert err is not None and err.headers["streamtype"] == "error"
        assert stdin is not None and stdin.headers["streamtype"] == "stdin"
        # data to stdin, then FIN
        s.feed_data(struct.pack(">II", 3, 5) + b"hello" + struct.pack(">II", 3, FLAG_FIN << 24))
        assert await stdin.read() == b"hello"
        assert await stdin.read() == b""
        # our replies: SYN_REPLY per stream, decodable by an independent inflater
        inflate = zlib.decompressobj(zdict=DICTIONARY)
        out = bytes(tr.out)
        for sid in (1, 3):
            ctl, kind, fl = struct.unpack_from(">HHI", out, 0)
            assert (ctl, kind) == (0x8003, 2)
            length = fl & 0xFFFFFF
            assert struct.unpack_from(">I", out, 8)[0] == sid
            assert inflate.decompress(out[12:8 + length]) == struct.pack(">I", 0)
            out = out[8 + length:]
        tr.out.clear()
        err.write(b"status")
        err.close()
        assert bytes(tr.out) == struct.pack(">II", 1, 6) + b"status" + \
            struct.pack(">II", 1, FLAG_FIN << 24)
        # a PING is echoed; GOAWAY ends the session
        tr.out.clear()
        ping = struct.pack(">HHII", 0x8003, 6, 4, 7)
        s.feed_data(ping)
        assert bytes(tr.out) == ping
        s.end()
        assert tr.closed and await s.accept(1) is None
    asyncio.run(main())


@pytest.mark.parametrize("message,field,number", [
    (pb.ContainerConfig, "log_path", 11), (pb.ContainerConfig, "linux", 15),
    (pb.PodSandboxConfig, "linux", 8), (pb.ContainerStatus, "reason", 10),
    (pb.LinuxContainerSecurityContext, "run_as_group", 12),
    (pb.LinuxContainerSecurityContext, "seccomp", 15), (pb.ImageSpec, "user_specified_image", 18),
    (pb.LinuxContainerResources, "memory_swap_limit_in_bytes", 10),
    (pb.ContainerEventResponse, "containers_statuses", 5),
    (pb.ContainerEventResponse, "pod_sandbox_status", 4), (pb.Metric, "value", 5),
    (pb.PodSandboxMetrics, "container_metrics", 3), (pb.CheckpointContainerRequest, "timeout", 3),
    (pb.LinuxPodSandboxConfig, "cgroup_parent", 1), (pb.Mount, "propagation", 5),
])
def test_proto_field_numbers(message, field, number) -> None:
    assert message.DESCRIPTOR.fields_by_name[field].number == number


def test_services_are_runtime_v1() -> None:
    services = pb.DESCRIPTOR.services_by_name
    assert services["RuntimeService"].full_name == "runtime.v1.RuntimeService"
    assert services["ImageService"].full_name == "runtime.v1.ImageService"


def test_event_and_metric_enums() -> None:
    assert (pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT, pb.CONTAINER_STOPPED_EVENT,
            pb.CONTAINER_DELETED_EVENT) == (0, 1, 2, 3)
    assert (pb.COUNTER, pb.GAUGE) == (0, 1)
    assert (pb.PROPAGATION_PRIVATE, pb.PROPAGATION_HOST_TO_CONTAINER,
            pb.PROPAGATION_BIDIRECTIONAL) == (0, 1, 2)


def test_registry_mirrors(monkeypatch) -> None:
    from silobox.cri.images import _mirror_of
    monkeypatch.setenv("SILOBOX_CRI_REGISTRY_MIRRORS",
                       "gcr.io=127.0.0.1:5000, registry.k8s.io=127.0.0.1:5001,bad")
    assert _mirror_of("gcr.io/k8s-staging-cri-tools/test-image-tag:test") == \
        "127.0.0.1:5000/k8s-staging-cri-tools/test-image-tag:test"
    assert _mirror_of("registry.k8s.io/pause") == "127.0.0.1:5001/pause:latest"
    digest = "sha256:" + "a" * 64
    assert _mirror_of(f"gcr.io/x/y@{digest}") == f"127.0.0.1:5000/x/y@{digest}"
    assert _mirror_of("busybox") is None
