"""IPv6 on user nat networks: IPAM, inspect fields, container ↔ container and host → container.

Traffic stays between the test's containers and the host's own vNIC.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import secrets
import subprocess
import time
from typing import Any

import docker.errors
import pytest

from netutil import Drivers

SERVE = "echo hi > /tmp/i; exec httpd -f -p 80 -h /tmp"


def ula() -> str:
    return str(ipaddress.IPv6Network(((0xFD << 120) | (secrets.randbits(40) << 80), 64)))


def v6_network(drv: Drivers, name: str, subnet6: str) -> dict[str, Any]:
    drv.networks.append(name)
    v4 = f"10.241.{secrets.randbelow(200) + 20}.0/24"
    return drv.api.create_network(name, driver="nat", enable_ipv6=True, ipam={
        "Driver": "default", "Config": [{"Subnet": v4}, {"Subnet": subnet6}]})


def test_ipv6_addresses_inspect_and_traffic(drv: Drivers, silod: Any) -> None:
    name, subnet6 = f"v6{secrets.token_hex(3)}", ula()
    net6 = ipaddress.IPv6Network(subnet6)
    v6_network(drv, name, subnet6)
    n = drv.api.inspect_network(name)
    assert n["EnableIPv6"] is True
    assert {"Subnet": subnet6, "Gateway": str(net6[1])} in n["IPAM"]["Config"]
    a = drv.run(SERVE, name)
    static = str(net6[0x99])
    hc = drv.api.create_host_config(network_mode=name)
    nc = drv.api.create_networking_config(
        {name: drv.api.create_endpoint_config(ipv6_address=static)})
    b = drv.api.create_container("busybox", ["sleep", "60"], host_config=hc,
                                 networking_config=nc)["Id"]
    drv.containers.append(b)
    drv.api.start(b)
    sa, sb = drv.settings(a, name), drv.settings(b, name)
    assert ipaddress.IPv6Address(sa["GlobalIPv6Address"]) in net6
    assert sa["GlobalIPv6PrefixLen"] == 64 and sa["IPv6Gateway"] == str(net6[1])
    assert sb["GlobalIPv6Address"] == static
    top = drv.api.inspect_container(a)["NetworkSettings"]
    assert top["GlobalIPv6Address"] == sa["GlobalIPv6Address"]
    code, out = drv.exec(b, f"ip -6 route; ping6 -c1 -W2 {sa['GlobalIPv6Address']}")
    assert code == 0 and f"default via {net6[1]}" in out, out
    code, out = drv.exec(b, f"ping6 -c1 -W2 {net6[1]}")
    assert code == 0, out
    # the embedded DNS answers AAAA with the IPv6 address, A with the IPv4 one
    aname = drv.api.inspect_container(a)["Name"].lstrip("/")
    code, out = drv.exec(b, f"nslookup -type=AAAA {aname} 127.0.0.11; "
                         f"nslookup -type=A {aname} 127.0.0.11")
    assert sa["GlobalIPv6Address"] in out and sa["IPAddress"] in out, out
    # the host reaches the container over IPv6 through the network's vNIC
    body = ""
    for _ in range(40):
        try:
            conn = http.client.HTTPConnection(sa["GlobalIPv6Address"], 80, timeout=2)
            conn.request("GET", "/i")
            body = conn.getresponse().read().decode()
            conn.close()
            break
        except OSError:
            time.sleep(0.05)
    assert body == "hi\n"
    h = drv.hns(name)
    assert h["IPv6"] is True
    status, ep = silod.request("GET", f"/silobox/hns/endpoints/{sa['EndpointID']}")
    assert ep["IPv6Address"] == sa["GlobalIPv6Address"] and ep["IPv6PrefixLength"] == 64
    cont = drv.api.inspect_network(name)["Containers"][a]
    assert cont["IPv6Address"] == f"{sa['GlobalIPv6Address']}/64"
    # the same static address twice is refused; the address is free again after rm
    with pytest.raises(docker.errors.APIError, match="already in use"):
        c = drv.api.create_container("busybox", ["true"], host_config=hc, networking_config=nc)
        drv.containers.append(c["Id"])
        drv.api.start(c["Id"])
    drv.api.remove_container(b, force=True)
    drv.containers.remove(b)
    c = drv.api.create_container("busybox", ["sleep", "60"], host_config=hc,
                                 networking_config=nc)["Id"]
    drv.containers.append(c)
    drv.api.start(c)
    assert drv.settings(c, name)["GlobalIPv6Address"] == static


def test_ipv6_errors_and_default_pool(drv: Drivers) -> None:
    # a random ULA /64 when --ipv6 comes without an IPv6 subnet
    name = f"v6a{secrets.token_hex(3)}"
    drv.networks.append(name)
    drv.api.create_network(name, driver="nat", enable_ipv6=True)
    cfg = drv.api.inspect_network(name)["IPAM"]["Config"]
    six = [c for c in cfg if ":" in c["Subnet"]]
    assert six and ipaddress.IPv6Network(six[0]["Subnet"]).subnet_of(
        ipaddress.IPv6Network("fd00::/8"))
    # an IPv6 subnet overlapping a host route is refused
    routes = json.loads(subprocess.run(["ip", "-6", "-j", "route"], capture_output=True,
                                       text=True).stdout or "[]")
    host6 = [r["dst"] for r in routes if "/" in r.get("dst", "") and
             not r["dst"].startswith("fe80") and r["dst"] != "default"]
    if host6:
        with pytest.raises(docker.errors.APIError, match="overlaps") as e:
            v6_network(drv, f"v6b{secrets.token_hex(3)}", host6[0])
        assert e.value.status_code == 409
    # an IPv6 subnet without EnableIPv6, and IPv6 on an external driver
    with pytest.raises(docker.errors.APIError, match="needs --ipv6") as e:
        drv.networks.append("v6never")
        drv.api.create_network("v6never", driver="nat", ipam={
            "Driver": "default", "Config": [{"Subnet": ula()}]})
    assert e.value.status_code == 400
    with pytest.raises(docker.errors.APIError, match="IPv6 is not supported"):
        drv.api.create_network("v6never", driver="transparent", enable_ipv6=True,
                               options={"parent": "lo"}, ipam={
                                   "Driver": "default", "Config": [{"Subnet": "10.9.9.0/24"}]})
