"""``--network container:X`` and live ``network connect`` switching to the embedded DNS."""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

import docker.errors
import pytest

from netutil import Drivers

SERVE = "echo hi > /tmp/i; exec httpd -f -p 80 -h /tmp"
GET = "printf 'GET /i HTTP/1.0\\r\\n\\r\\n' | nc -w2 {ip} 80"


def create(drv: Drivers, cmd: str, network: str, name: str | None = None, **kw: Any) -> str:
    hc = drv.api.create_host_config(network_mode=network, **kw)
    c = drv.api.create_container("busybox", ["sh", "-c", cmd], host_config=hc, name=name)
    drv.containers.append(c["Id"])
    return c["Id"]


def netns_files(silod: Any) -> list[str]:
    d = os.path.join(silod.exec_root, "netns")
    return sorted(x for x in os.listdir(d) if x != "vswitch") if os.path.isdir(d) else []


def test_container_mode_shares_the_namespace(drv: Drivers, silod: Any) -> None:
    before = netns_files(silod)
    name = f"web{secrets.token_hex(3)}"
    a = create(drv, SERVE, "default", name=name)
    drv.api.start(a)
    ia = drv.api.inspect_container(a)["NetworkSettings"]["IPAddress"]
    b = create(drv, "sleep 60", f"container:{name}")
    ib = drv.api.inspect_container(b)
    assert ib["HostConfig"]["NetworkMode"] == f"container:{a}"
    assert ib["NetworkSettings"]["Networks"] == {}
    drv.api.start(b)
    code, out = drv.exec(b, GET.format(ip="127.0.0.1") + "; ip -o -4 addr show eth0; hostname")
    assert "hi" in out and f"inet {ia}/" in out, out
    assert drv.api.inspect_container(a)["Config"]["Hostname"] in out
    code, hosts = drv.exec(b, "cat /etc/hosts")
    assert ia in hosts
    # no namespace of its own
    assert len(netns_files(silod)) == len(before) + 1
    # a stopped target takes its vNIC away even though b keeps the namespace alive
    drv.api.stop(a, timeout=1)
    for _ in range(50):   # the network part of a stop completes after the exit is reported
        code, out = drv.exec(b, "ls /sys/class/net")
        status, eps = silod.request("GET", "/silobox/hns/endpoints")
        mine = [e for e in eps if e["SharedContainers"] == [a]]
        if out.split() == ["lo"] and not mine:
            break
        time.sleep(0.05)
    assert out.split() == ["lo"] and not mine, (out, mine)
    # a target that is not running cannot be joined
    with pytest.raises(docker.errors.APIError, match="non running container") as e:
        drv.api.restart(b, timeout=1)
    assert e.value.status_code == 409
    drv.api.start(a)
    drv.api.start(b)
    code, out = drv.exec(b, GET.format(ip="127.0.0.1"))
    assert "hi" in out
    # and it cannot be connected to networks itself
    with pytest.raises(docker.errors.APIError, match="sharing network namespace") as e:
        drv.api.connect_container_to_network(b, "nat")
    assert e.value.status_code == 409
    for c in (b, a):
        drv.api.remove_container(c, force=True)
        drv.containers.remove(c)
    assert netns_files(silod) == before


def test_container_mode_conflicts(drv: Drivers) -> None:
    a = create(drv, "sleep 60", "default")
    with pytest.raises(docker.errors.APIError, match="port publishing") as e:
        create(drv, "true", f"container:{a}", port_bindings={80: 8080})
    assert e.value.status_code == 400
    with pytest.raises(docker.errors.APIError, match="dns and the network mode"):
        create(drv, "true", f"container:{a}", dns=["10.0.0.1"])
    with pytest.raises(docker.errors.NotFound):
        create(drv, "true", "container:sbx-no-such-container")
    b = create(drv, "true", f"container:{a}")
    with pytest.raises(docker.errors.APIError, match="non running container") as e:
        drv.api.start(b)
    assert e.value.status_code == 409


def test_live_connect_switches_resolv_conf_to_embedded_dns(drv: Drivers) -> None:
    net = f"dns{secrets.token_hex(3)}"
    drv.network(net, "nat", f"10.240.{secrets.randbelow(200) + 20}.0/24")
    peer = f"peer{secrets.token_hex(3)}"
    b = create(drv, "sleep 60", net, name=peer)
    drv.api.start(b)
    a = create(drv, "sleep 60", "default")
    drv.api.start(a)
    code, out = drv.exec(a, "cat /etc/resolv.conf")
    assert "127.0.0.11" not in out
    drv.api.connect_container_to_network(a, net)
    code, out = drv.exec(a, f"cat /etc/resolv.conf; nslookup {peer}")
    ipb = drv.settings(b, net)["IPAddress"]
    assert "nameserver 127.0.0.11" in out and ipb in out, out
