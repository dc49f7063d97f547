"""What ``ps``, ``images`` and ``stats`` print for given API answers (no daemon)."""

from __future__ import annotations

import pytest

from silobox.cli import formatter
from silobox.cli.commands.container import (_PS_DEFAULT, _PS_HEADERS, _STATS_DEFAULT,
                                            _STATS_HEADERS, ContainerRow, StatsRow, cpu_percent,
                                            display_ports, mem_usage, parse_filters, status_text)
from silobox.cli.commands.image import _DEFAULT as IMAGES_DEFAULT
from silobox.cli.commands.image import _HEADERS as IMAGES_HEADERS
from silobox.cli.commands.image import image_rows, split_reference

NOW = 1_700_000_000.0
CID = "4f1c0a2b9d8e" + "1" * 52

SUMMARY = {
    "Id": CID, "Names": ["/web"], "Image": "busybox", "ImageID": "sha256:" + "a" * 64,
    "Command": "sh -c 'while true; do sleep 1; done'", "Created": int(NOW - 125),
    "Ports": [], "Labels": {"b": "2", "a": "1"}, "State": "running", "Status": "Up 2 minutes",
    "HostConfig": {"NetworkMode": "default"},
    "NetworkSettings": {"Networks": {"nat": {}}}, "Mounts": [],
}


def test_ps_default_table() -> None:
    out = formatter.render_list(_PS_DEFAULT, [ContainerRow(SUMMARY, now=NOW)], _PS_HEADERS)
    lines = out.splitlines()
    assert lines[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                                "PORTS", "NAMES"]
    assert lines[1].startswith("4f1c0a2b9d8e   busybox   \"sh -c 'while true; …\"   "
                               "2 minutes ago   Up 2 minutes")
    assert lines[1].endswith("web")
    # columns line up under their headers
    assert lines[0].index("IMAGE") == lines[1].index("busybox")
    assert lines[0].index("NAMES") == lines[1].index("web")


def test_row_fields() -> None:
    r = ContainerRow(SUMMARY, now=NOW)
    assert r.ID == "4f1c0a2b9d8e" and r.Names == "web" and r.Labels == "a=1,b=2"
    assert r.Label("b") == "2" and r.Label("zz") == ""
    assert r.Networks == "nat" and r.LocalVolumes == "0" and r.State == "running"
    full = ContainerRow(SUMMARY, trunc=False, now=NOW)
    assert full.ID == CID and full.Command == "\"sh -c 'while true; do sleep 1; done'\""
    assert formatter.Template("{{json .}}").execute(r).startswith('{"Command":')


def test_image_id_is_shortened() -> None:
    r = ContainerRow({**SUMMARY, "Image": "sha256:" + "b" * 64}, now=NOW)
    assert r.Image == "b" * 12


def test_status_computed_when_daemon_gives_none() -> None:
    state = {"Status": "exited", "Running": False, "ExitCode": 3,
             "StartedAt": "2023-11-14T22:10:00Z", "FinishedAt": "2023-11-14T22:11:00.5Z"}
    assert status_text(state, NOW) == "Exited (3) 2 minutes ago"
    state = {"Status": "running", "Running": True, "StartedAt": "2023-11-14T22:13:17Z"}
    assert status_text(state, NOW) == "Up 3 seconds"
    assert status_text({**state, "Paused": True, "Status": "paused"}, NOW) == \
        "Up 3 seconds (Paused)"
    assert status_text({"Status": "created", "StartedAt": "0001-01-01T00:00:00Z"}, NOW) == \
        "Created"
    row = ContainerRow({**SUMMARY, "Status": "", "State": "created"}, now=NOW)
    assert row.Status == "Created"


def test_display_ports() -> None:
    ports = [
        {"PrivatePort": 5201, "Type": "tcp", "IP": "127.0.0.1", "PublicPort": 47201},
        {"PrivatePort": 80, "Type": "tcp"},
        {"PrivatePort": 81, "Type": "tcp"},
        {"PrivatePort": 82, "Type": "tcp"},
        {"PrivatePort": 53, "Type": "udp"},
        {"PrivatePort": 8080, "Type": "tcp", "IP": "::", "PublicPort": 8080},
    ]
    assert display_ports(ports) == ("53/udp, 80-82/tcp, :::8080->8080/tcp, "
                                    "127.0.0.1:47201->5201/tcp")
    assert display_ports([]) == ""


def test_parse_filters() -> None:
    assert parse_filters(["status=exited", "name=a", "name=b"]) == \
        {"status": ["exited"], "name": ["a", "b"]}
    with pytest.raises(Exception):
        parse_filters(["nonsense"])


STATS = {
    "id": CID, "name": "/web",
    "cpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000}, "system_cpu_usage": 20_000_000_000,
                  "online_cpus": 2},
    "precpu_stats": {"cpu_usage": {"total_usage": 1_000_000_000},
                     "system_cpu_usage": 10_000_000_000},
    "memory_stats": {"usage": 10 << 20, "limit": 1 << 30, "stats": {"total_inactive_file": 2 << 20}},
    "networks": {"eth0": {"rx_bytes": 1500, "tx_bytes": 0}},
    "blkio_stats": {"io_service_bytes_recursive": [
        {"major": 8, "minor": 0, "op": "Read", "value": 4_260_000},
        {"major": 8, "minor": 0, "op": "Write", "value": 1000}]},
    "pids_stats": {"current": 3},
}


def test_stats_calculations() -> None:
    assert cpu_percent(STATS) == pytest.approx(20.0)
    assert mem_usage(STATS) == 8 << 20
    v2 = {"memory_stats": {"usage": 100, "stats": {"inactive_file": 40}}}
    assert mem_usage(v2) == 60
    assert cpu_percent({"cpu_stats": {}, "precpu_stats": {}}) == 0.0


def test_stats_table() -> None:
    row = StatsRow("web", STATS)
    assert (row.ID, row.Name, row.CPUPerc, row.MemUsage, row.MemPerc, row.NetIO, row.BlockIO,
            row.PIDs) == ("4f1c0a2b9d8e", "web", "20.00%", "8MiB / 1GiB", "0.78%",
                          "1.5kB / 0B", "4.26MB / 1kB", "3")
    out = formatter.render_list(_STATS_DEFAULT, [row], _STATS_HEADERS).splitlines()
    assert out[0] == ("CONTAINER ID   NAME      CPU %     MEM USAGE / LIMIT   MEM %     "
                      "NET I/O      BLOCK I/O      PIDS")
    missing = StatsRow("gone", None)
    assert missing.CPUPerc == "--" and missing.Name == "--"


def test_image_rows() -> None:
    images = [
        {"Id": "sha256:" + "c" * 64, "RepoTags": ["busybox:latest", "registry:5000/bb:1"],
         "RepoDigests": [], "Created": int(NOW - 3 * 86400), "Size": 4_260_000},
        {"Id": "sha256:" + "d" * 64, "RepoTags": None, "RepoDigests": None, "Created": 0,
         "Size": 0},
    ]
    rows = image_rows(images, now=NOW)
    assert [(r.Repository, r.Tag, r.ID) for r in rows] == [
        ("busybox", "latest", "c" * 12), ("registry:5000/bb", "1", "c" * 12),
        ("<none>", "<none>", "d" * 12)]
    out = formatter.render_list(IMAGES_DEFAULT, rows, IMAGES_HEADERS).splitlines()
    assert out[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert out[1].split() == ["busybox", "latest", "c" * 12, "3", "days", "ago", "4.26MB"]
    assert split_reference("localhost:5000/x") == ("localhost:5000/x", "")
