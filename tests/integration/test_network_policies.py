"""Endpoint ACL and Route policies set through the HNS view, checked with real traffic.

Traffic goes only between containers of the test and a namespace the test created.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from typing import Any

from netutil import IFACE, Drivers, Outside, sh

SERVE2 = "echo hi > /tmp/i; httpd -p 81 -h /tmp; exec httpd -f -p 80 -h /tmp"


def modify(silod: Any, endpoint: str, request: str, *policies: dict[str, Any]) -> tuple[int, Any]:
    return silod.request("POST", f"/silobox/hns/endpoints/{endpoint}/policies",
                         {"RequestType": request, "Policies": list(policies)})


def acl(**settings: Any) -> dict[str, Any]:
    return {"Type": "ACL", "Settings": settings}


def reaches(drv: Drivers, cid: str, ip: str, port: int) -> bool:
    code, out = drv.exec(cid, f"printf 'GET /i HTTP/1.0\\r\\n\\r\\n' | nc -w1 {ip} {port}")
    return "hi" in out


def pings(drv: Drivers, cid: str, ip: str) -> bool:
    return drv.exec(cid, f"ping -c1 -W1 {ip}")[0] == 0


def nft_tables(drv: Drivers, cid: str) -> str:
    key = drv.api.inspect_container(cid)["NetworkSettings"]["SandboxKey"]
    return sh("nsenter", f"--net={key}", "nft", "list", "tables")


def test_acl_policies_block_allow_priority_and_state(drv: Drivers, silod: Any) -> None:
    name = f"acl{secrets.token_hex(3)}"
    drv.network(name, "nat", f"10.235.{secrets.randbelow(200) + 20}.0/24")
    a = drv.run(SERVE2, name)
    b = drv.run("sleep 60", name)
    ia, ib = drv.settings(a, name)["IPAddress"], drv.settings(b, name)["IPAddress"]
    ep = drv.settings(a, name)["EndpointID"]
    for _ in range(40):
        if reaches(drv, b, ia, 81):
            break
        time.sleep(0.05)
    assert reaches(drv, b, ia, 80) and reaches(drv, b, ia, 81)

    block81 = acl(Action="Block", Direction="In", Protocols="6", LocalPorts="81", Priority=200)
    status, rec = modify(silod, ep, "Add", block81)
    assert status == 200, rec
    assert any(p["Type"] == "ACL" and p["Settings"]["LocalPorts"] == "81"
               for p in rec["Policies"])
    assert reaches(drv, b, ia, 80) and not reaches(drv, b, ia, 81)

    # a lower Priority number wins: b alone may reach 81 again
    allow_b = acl(Action="Allow", Direction="In", Protocols="TCP", LocalPorts="81",
                  RemoteAddresses=ib, Priority=100)
    assert modify(silod, ep, "Add", allow_b)[0] == 200
    assert reaches(drv, b, ia, 81)

    # Out: a may not start ICMP towards b, but replies to b's flows still leave (stateful)
    no_icmp = acl(Id="no-icmp", Action="Block", Direction="Out", Protocols="1",
                  RemoteAddresses=f"{ib}/32", Priority=10)
    assert modify(silod, ep, "Add", no_icmp)[0] == 200
    assert not pings(drv, a, ib)
    assert pings(drv, b, ia) and reaches(drv, b, ia, 80)

    # removed by its Id through the CLI
    r = silod.silo("hns", "endpoint", "policy", "rm", ep,
                   json.dumps(acl(Id="no-icmp", Direction="Out")))
    assert r.returncode == 0, r.stderr
    assert pings(drv, a, ib)
    shown = json.loads(silod.silo("hns", "endpoint", "inspect", ep, "--format", "json").stdout)
    assert [p["Settings"]["Priority"] for p in shown["Policies"] if p["Type"] == "ACL"] == \
        [200, 100]

    # set with nothing: every ACL goes, and so does the table in the compartment
    assert "silobox" in nft_tables(drv, a)
    r = silod.silo("hns", "endpoint", "policy", "set", ep)
    assert r.returncode == 0, r.stderr
    assert reaches(drv, b, ia, 81)
    assert "silobox" not in nft_tables(drv, a)


def test_policy_errors(drv: Drivers, silod: Any) -> None:
    name = f"ape{secrets.token_hex(3)}"
    drv.network(name, "nat", f"10.236.{secrets.randbelow(200) + 20}.0/24")
    a = drv.run("sleep 60", name)
    ep = drv.settings(a, name)["EndpointID"]
    bad = [
        (acl(Action="Deny"), "Action must be Allow or Block"),
        (acl(Direction="Sideways"), "Direction must be In or Out"),
        (acl(Protocols="1", LocalPorts="80"), "need Protocols TCP"),
        (acl(Protocols="tcp", LocalPorts="70000"), "invalid LocalPorts"),
        (acl(RemoteAddresses="10.0.0.300"), "invalid RemoteAddresses"),
        ({"Type": "Route", "Settings": {"DestinationPrefix": "10.9.0.0/16"}},
         "NextHop is required"),
        ({"Type": "PortMapping", "Settings": {}}, "cannot be modified"),
        ({"Type": "Nope"}, "unknown policy type"),
    ]
    for policy, message in bad:
        status, body = modify(silod, ep, "Add", policy)
        assert status == 400 and message in body["message"], (policy, body)
    status, body = modify(silod, ep, "Sometimes", acl())
    assert status == 400 and "RequestType" in body["message"]
    status, body = modify(silod, ep, "Remove", acl(Action="Block", Priority=9))
    assert status == 404
    status, body = modify(silod, "0" * 32, "Add", acl())
    assert status == 404
    # nothing of the failed requests stuck
    status, rec = silod.request("GET", f"/silobox/hns/endpoints/{ep}")
    assert not [p for p in rec["Policies"] if p["Type"] in ("ACL", "Route")]


def test_route_policies(drv: Drivers, outside: Outside, silod: Any) -> None:
    o, name = outside, f"rt{outside.ns}"
    subnet = f"10.237.{o.octet}.0/24"
    router, far = f"10.237.{o.octet}.250", f"10.238.{o.octet}.1"
    # the outside: a router on the segment with a far network behind it, and one more address
    # outside the container's subnet mask but on the same wire
    sh("ip", "-n", o.ns, "addr", "add", f"{router}/24", "dev", "ext")
    sh("ip", "-n", o.ns, "addr", "add", f"{far}/32", "dev", "lo")
    sh("ip", "-n", o.ns, "addr", "add", f"10.239.{o.octet}.5/32", "dev", "ext")
    # the default gateway is an address nobody holds: only Route policies lead anywhere
    drv.network(name, "transparent", subnet, f"10.237.{o.octet}.254", **{IFACE: o.nic})
    a = drv.run("sleep 60", name)
    ep = drv.settings(a, name)["EndpointID"]
    assert not pings(drv, a, far)
    via_router = {"Type": "Route", "Settings": {"DestinationPrefix": f"10.238.{o.octet}.0/24",
                                                "NextHop": router}}
    on_link = {"Type": "Route", "Settings": {"DestinationPrefix": f"10.239.{o.octet}.5/32",
                                             "NeedEncap": True}}
    status, rec = modify(silod, ep, "Add", via_router, on_link)
    assert status == 200, rec
    code, out = drv.exec(a, "ip route")
    assert f"10.238.{o.octet}.0/24 via {router} dev eth0" in out, out
    assert f"10.239.{o.octet}.5 dev eth0" in out, out
    assert pings(drv, a, far) and pings(drv, a, f"10.239.{o.octet}.5")
    assert modify(silod, ep, "Remove", via_router)[0] == 200
    code, out = drv.exec(a, "ip route")
    assert "10.238." not in out and f"10.239.{o.octet}.5 dev eth0" in out
    assert not pings(drv, a, far)
    drv.api.remove_container(a, force=True)
    drv.containers.remove(a)
    drv.api.remove_network(name)
    drv.networks.remove(name)
    assert subprocess.run(["ip", "link", "show", o.nic], capture_output=True).returncode == 0
