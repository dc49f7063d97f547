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


def test_ipv6_outbound_nat_and_forward_drop_rules(drv: Drivers, silod: Any) -> None:
    """An IPv6 network's containers reach beyond the host: IPv6 forwarding is on while the
    network exists, their egress is masqueraded (the outside, a namespace of the test's own,
    sees the host's address), and an ip6 forward hook that drops by default — a table of the
    test's own that drops only this daemon's traffic — gets our scoped accept rules."""
    name, subnet6 = f"v6o{secrets.token_hex(3)}", ula()
    v6_network(drv, name, subnet6)
    vnic = drv.hns(name)["Silobox"]["HostVNic"]
    prefix = vnic[:vnic.rindex("nat")]
    tag = prefix[3:]
    comment = f"silobox_{tag}" if tag else "silobox"
    hf = silod.client.info()["Silobox"]["HostForwarding"]
    assert hf["IPv6Forwarding"] is True, hf
    assert hf["IP6Forward"] in ("enabled by silod", "already enabled"), hf
    with open("/proc/sys/net/ipv6/conf/all/forwarding") as f:
        assert f.read().strip() == "1"
    assert "net.ipv6.conf.all.forwarding: 1" in silod.silo("info").stdout.decode()

    ns, tid = f"sbx6o{secrets.token_hex(3)}", secrets.token_hex(3)
    host_end, table = f"sbx6o{tid}h", f"sbxdrop6{tid}"
    server = ("import socket;s=socket.socket(socket.AF_INET6);"
              "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('::',9000));"
              "s.listen(1);s.settimeout(20);c,a=s.accept();print(a[0],flush=True);"
              "c.recv(100);c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\nfar\\n');c.close()")
    srv = None
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0",
                        "netns", ns], check=True)
        subprocess.run(["ip", "addr", "add", "2001:db8:77::1/64", "dev", host_end, "nodad"],
                       check=True)
        subprocess.run(["ip", "link", "set", host_end, "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "2001:db8:77::2/64", "dev", "eth0",
                        "nodad"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
        subprocess.run(["nft", f"add table ip6 {table}; add chain ip6 {table} forward "
                        "{ type filter hook forward priority 0; policy drop; }; "
                        f'add rule ip6 {table} forward iifname != "{prefix}*" '
                        f'oifname != "{prefix}*" accept'], check=True)
        srv = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", server],
                               stdout=subprocess.PIPE, text=True)
        time.sleep(1.1)   # container starts look for new firewalls at most once a second
        cid = drv.run("sleep 60", name)
        rules = [l for l in subprocess.run(["nft", "list", "chain", "ip6", table, "forward"],
                                           capture_output=True, text=True).stdout.splitlines()
                 if f'comment "{comment}"' in l]
        assert any(f'iifname "{vnic}"' in r and "ip6 saddr" in r for r in rules), rules
        hf = silod.client.info()["Silobox"]["HostForwarding"]
        assert any(r["Table"] == f"ip6 {table}" and r["Rules"] == len(rules)
                   for r in hf["ForwardRules"]), hf
        code, out = 1, ""
        for _ in range(20):
            # (busybox 1.35's wget crashes on IPv6 literals: nc instead)
            code, out = drv.exec(cid, "echo GET | nc -w 3 2001:db8:77::2 9000")
            if code == 0:
                break
            time.sleep(0.2)
        assert code == 0 and "far" in out, out
        peer = srv.communicate(timeout=20)[0].strip()
        # masqueraded: the outside sees the host's address on that link, not the container's
        assert peer == "2001:db8:77::1", peer
        # removing the network takes its rules out of the foreign chain
        drv.api.remove_container(cid, force=True)
        drv.containers.remove(cid)
        drv.api.remove_network(name)
        drv.networks.remove(name)
        left = subprocess.run(["nft", "list", "chain", "ip6", table, "forward"],
                              capture_output=True, text=True).stdout
        assert f'"{vnic}"' not in left, left
    finally:
        if srv and srv.poll() is None:
            srv.kill()
            srv.wait()
        subprocess.run(["nft", "delete", "table", "ip6", table], capture_output=True)
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
