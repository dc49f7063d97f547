"""The Host Networking Service end to end: the nat network, endpoints, NAT and port mapping.

Safety: traffic goes only to loopback, to this host's own addresses (delivered locally), and to
addresses inside namespaces/containers these tests create. Every container and network is
registered for removal before it is created, and removed even when a test fails.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import sqlite3
import subprocess
import threading
import time
import urllib.parse
from typing import Any, Iterator

import pytest
from netutil import IMAGE, TestResources

SERVE = "echo hi > /tmp/i; exec httpd -f -p 80 -h /tmp"


class Net(TestResources):
    """Per-test helper: starts containers and nat networks and removes them afterwards."""

    def run(self, cmd: str | list[str], *, ports: dict | None = None, network: str | None = None,
            publish_all: bool = False, exposed: list | None = None, ip: str | None = None,
            name: str | None = None, start: bool = True, mac: str | None = None) -> str:
        hc = self.api.create_host_config(port_bindings=ports, network_mode=network,
                                         publish_all_ports=publish_all)
        nc = None
        if ip and network:
            nc = self.api.create_networking_config(
                {network: self.api.create_endpoint_config(ipv4_address=ip, mac_address=mac)})
        c = self.api.create_container(IMAGE, ["sh", "-c", cmd] if isinstance(cmd, str) else cmd,
                                      host_config=hc, ports=exposed, name=name,
                                      networking_config=nc)
        self.containers.append(c["Id"])
        if start:
            self.api.start(c["Id"])
        return c["Id"]

    def network(self, name: str, **kw: Any) -> dict[str, Any]:
        self.networks.append(name)
        return self.api.create_network(name, driver="nat", **kw)

    def inspect(self, cid: str) -> dict[str, Any]:
        return self.api.inspect_container(cid)

    def ip(self, cid: str) -> str:
        return self.inspect(cid)["NetworkSettings"]["IPAddress"]


@pytest.fixture
def net(silod: Any) -> Iterator[Net]:
    n = Net(silod)
    try:
        yield n
    finally:
        n.close()


def http_get(host: str, port: int, path: str = "/i", tries: int = 40) -> str:
    last: Exception | None = None
    for _ in range(tries):
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", path)
            body = conn.getresponse().read().decode()
            conn.close()
            return body
        except OSError as e:
            last = e
            time.sleep(0.05)
    raise AssertionError(f"{host}:{port} unreachable: {last}")


def hns_nat(silod: Any) -> dict[str, Any]:
    status, nets = silod.request("GET", "/silobox/hns/networks")
    assert status == 200
    return next(n for n in nets if n["Name"] == "nat")


def host_address() -> str:
    """A non-loopback address of this host that is not silobox's (delivered locally)."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        f = line.split()
        if f[1] != "lo" and not f[1].startswith("sbx") and "docker" not in f[1]:
            return f[3].split("/")[0]
    pytest.skip("no host address")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


# ----- the nat network ------------------------------------------------------------------------
def test_nat_network_shape(silod: Any) -> None:
    api = silod.client
    n = api.inspect_network("nat")
    hns = hns_nat(silod)
    assert n["Driver"] == "nat" and n["Scope"] == "local" and n["EnableIPv6"] is False
    assert n["IPAM"]["Driver"] == "windows"
    cfg = n["IPAM"]["Config"][0]
    assert ipaddress.IPv4Network(cfg["Subnet"]).prefixlen == 20
    assert cfg["Gateway"] == str(ipaddress.IPv4Network(cfg["Subnet"]).network_address + 1)
    assert n["Options"]["com.docker.network.windowsshim.hnsid"] == hns["ID"]
    assert n["Options"]["com.docker.network.windowsshim.networkname"] == "nat"
    for field in ("ActivityId", "CurrentEndpointCount", "Extensions", "Flags", "Health", "ID",
                  "IPv6", "LayeredOn", "MacPools", "MaxConcurrentEndpoints", "Name", "NatName",
                  "Policies", "Resources", "State", "Subnets", "TotalEndpoints", "Type",
                  "Version"):
        assert field in hns, field
    pool = hns["MacPools"][0]
    assert pool["StartMacAddress"].startswith("00-15-5D-") and pool["StartMacAddress"].endswith("0-00")
    assert int(pool["EndMacAddress"].replace("-", ""), 16) - \
        int(pool["StartMacAddress"].replace("-", ""), 16) == 4095
    vnic = hns["Silobox"]["HostVNic"]
    show = subprocess.run(["ip", "-o", "addr", "show", vnic], capture_output=True, text=True)
    assert f"{cfg['Gateway']}/20" in show.stdout
    link = subprocess.run(["ip", "-d", "link", "show", vnic], capture_output=True, text=True)
    assert "alias vEthernet (nat)" in link.stdout
    names = [x["Name"] for x in api.networks()]
    assert {"nat", "none", "host"} <= set(names)


def test_endpoint_addressing_gateway_and_host(net: Net, silod: Any) -> None:
    before = hns_nat(silod)
    cid = net.run(SERVE)
    ns = net.inspect(cid)["NetworkSettings"]
    nat = ns["Networks"]["nat"]
    assert ns["IPPrefixLen"] == 20 and nat["IPPrefixLen"] == 20
    assert ns["MacAddress"].startswith("00:15:5d:") and nat["MacAddress"] == ns["MacAddress"]
    assert nat["EndpointID"] and nat["NetworkID"] == net.api.inspect_network("nat")["Id"]
    assert ipaddress.IPv4Address(ns["IPAddress"]) in ipaddress.IPv4Network(
        net.api.inspect_network("nat")["IPAM"]["Config"][0]["Subnet"])
    code, out = net.exec(cid, f"ip route; ip link show eth0; ping -c1 -W2 {ns['Gateway']}")
    assert code == 0, out
    assert f"default via {ns['Gateway']}" in out
    assert http_get(ns["IPAddress"], 80) == "hi\n"  # host → container
    during = hns_nat(silod)
    assert during["CurrentEndpointCount"] == before["CurrentEndpointCount"] + 1
    assert during["TotalEndpoints"] == before["TotalEndpoints"] + 1
    status, eps = silod.request("GET", "/silobox/hns/endpoints")
    assert any(e["IPAddress"] == ns["IPAddress"] for e in eps)


def test_none_and_host_modes(net: Net) -> None:
    cid = net.run("sleep 30", network="none")
    code, out = net.exec(cid, "ls /sys/class/net")
    assert out.split() == ["lo"]
    cid = net.run("sleep 30", network="host")
    code, out = net.exec(cid, "ls /sys/class/net")
    assert "lo" in out.split() and len(out.split()) > 1
    assert net.inspect(cid)["NetworkSettings"]["IPAddress"] == ""


def test_container_to_container_and_isolation(net: Net) -> None:
    a = net.run(SERVE)
    b = net.run("sleep 30")
    net.network(f"iso{os.getpid()}")
    c = net.run("sleep 30", network=f"iso{os.getpid()}")
    req = "printf 'GET /i HTTP/1.0\\r\\n\\r\\n' | nc -w2 {ip} 80"
    for _ in range(40):
        code, out = net.exec(b, req.format(ip=net.ip(a)))
        if "hi" in out:
            break
        time.sleep(0.05)
    assert "hi" in out
    code, out = net.exec(c, req.format(ip=net.ip(a)) + "; ping -c1 -W1 " + net.ip(a))
    assert "hi" not in out and code != 0


def test_published_ports(net: Net) -> None:
    p1, p2, p3 = free_port(), free_port(), free_port()
    cid = net.run(SERVE, ports={80: [p1, ("127.0.0.1", p2)], "53/udp": p3})
    assert http_get("127.0.0.1", p1) == "hi\n"
    assert http_get(host_address(), p1) == "hi\n"
    assert http_get("127.0.0.1", p2) == "hi\n"
    with pytest.raises(AssertionError):
        http_get(host_address(), p2, tries=2)
    # busybox has no UDP listener: listen inside the container's compartment from the host
    import socket
    import sys
    listener = subprocess.Popen(
        ["nsenter", f"--net={net.inspect(cid)['NetworkSettings']['SandboxKey']}", sys.executable,
         "-c", "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
               "s.bind(('0.0.0.0', 53)); print('ready', flush=True); "
               "print(s.recvfrom(100)[0].decode(), flush=True)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"udp-ok", ("127.0.0.1", p3))
        out, _ = listener.communicate(timeout=5)
        assert "udp-ok" in out
    finally:
        listener.kill()
        listener.wait()
    ports = net.inspect(cid)["NetworkSettings"]["Ports"]
    assert {"HostIp": "0.0.0.0", "HostPort": str(p1)} in ports["80/tcp"]
    assert {"HostIp": "127.0.0.1", "HostPort": str(p2)} in ports["80/tcp"]
    assert ports["53/udp"] == [{"HostIp": "0.0.0.0", "HostPort": str(p3)}]
    r = net.silod.silo("port", cid)
    assert f"80/tcp -> 0.0.0.0:{p1}" in r.stdout.decode()
    # the same host port twice is refused
    with pytest.raises(Exception, match="port is already allocated"):
        net.run("true", ports={80: p1})


def test_random_port_and_publish_all(net: Net) -> None:
    cid = net.run(SERVE, ports={80: None})
    hp = int(net.inspect(cid)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
    assert hp > 0 and http_get("127.0.0.1", hp) == "hi\n"
    cid = net.run(SERVE, exposed=[80], publish_all=True)
    hp = int(net.inspect(cid)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
    assert http_get("127.0.0.1", hp) == "hi\n"


def test_cli_port_range_and_port(net: Net, silod: Any) -> None:
    p = free_port()
    r = silod.silo("run", "-d", "-p", f"{p}-{p + 1}:80-81", "busybox", "sh", "-c", SERVE)
    assert r.returncode == 0, r.stderr
    cid = r.stdout.decode().strip()
    net.containers.append(cid)
    out = silod.silo("port", cid).stdout.decode()
    assert f"80/tcp -> 0.0.0.0:{p}" in out and f"81/tcp -> 0.0.0.0:{p + 1}" in out
    assert silod.silo("port", cid, "80").stdout.decode().strip() == f"0.0.0.0:{p}"
    assert http_get("127.0.0.1", p) == "hi\n"


def test_hairpin(net: Net) -> None:
    check_hairpin(net)


def check_hairpin(net: Net) -> None:
    p = free_port()
    net.run(SERVE, ports={80: p})
    b = net.run("sleep 30")
    http_get("127.0.0.1", p)
    code, out = net.exec(b, f"printf 'GET /i HTTP/1.0\\r\\n\\r\\n' | nc -w2 {host_address()} {p}")
    assert "hi" in out


def test_outbound_nat_to_own_outside_namespace(net: Net, run_id: str) -> None:
    check_outbound(net, run_id)


def check_outbound(net: Net, run_id: str) -> None:
    ns = f"sbxto{run_id[:6]}"
    host_end, out_end = f"sbxto{run_id[:6]}h", "eth0"
    # a /30 of TEST-NET-2 of this run's own: suites running side by side on one host must not
    # put the same address on two links (the reply would take the other one)
    base = 4 * (int(run_id[:6], 16) % 64)
    near, far = f"198.51.100.{base + 1}", f"198.51.100.{base + 2}"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", out_end,
                        "netns", ns], check=True)
        subprocess.run(["ip", "addr", "add", f"{near}/30", "dev", host_end], check=True)
        subprocess.run(["ip", "link", "set", host_end, "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{far}/30", "dev", out_end],
                       check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", out_end, "up"], check=True)
        srv = subprocess.Popen(["ip", "netns", "exec", ns, "busybox", "nc", "-l", "-p", "9000"],
                               stdout=subprocess.DEVNULL)
        try:
            cid = net.run("sleep 30")
            net.exec(cid, f"(echo hello; sleep 2) | nc {far} 9000 >/dev/null 2>&1 &")
            seen = ""
            for _ in range(40):
                seen = subprocess.run(["ip", "netns", "exec", ns, "busybox", "netstat", "-tn"],
                                      capture_output=True, text=True).stdout
                if "ESTABLISHED" in seen:
                    break
                time.sleep(0.05)
            # the outside sees the host's address on that link, never the container's
            assert f"{near}:" in seen and net.ip(cid) not in seen, seen
        finally:
            srv.kill()
            srv.wait()
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# ----- the host's forwarding ------------------------------------------------------------------
def daemon_prefix(silod: Any) -> str:
    vnic = hns_nat(silod)["Silobox"]["HostVNic"]
    return vnic[:vnic.rindex("nat")]


def our_rules(table: str, comment: str) -> list[str]:
    out = subprocess.run(["nft", "list", "chain", "ip", table, "forward"], capture_output=True,
                         text=True).stdout
    return [l.strip() for l in out.splitlines() if f'comment "{comment}"' in l]


def test_ip_forward_enabled_and_reported(silod: Any) -> None:
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read().strip() == "1"
    info = silod.client.info()
    hf = info["Silobox"]["HostForwarding"]
    assert info["IPv4Forwarding"] is True and hf["IPv4Forwarding"] is True
    assert hf["IPForward"] in ("enabled by silod", "already enabled"), hf
    assert not any("forwarding is disabled" in w for w in info["Warnings"])
    out = silod.silo("info").stdout.decode()
    assert "Host Forwarding:" in out and "net.ipv4.ip_forward: 1" in out


def test_forward_drop_policy_gets_scoped_accept_rules(net: Net, silod: Any,
                                                      run_id: str) -> None:
    """A Docker-like forward hook with policy drop, made as a table of the test's own that
    only drops this daemon's traffic (so nothing else on the host is affected), gets our
    accept rules; they follow the networks and leave with them; the table is removed."""
    prefix = daemon_prefix(silod)
    tag = prefix[3:]
    comment = f"silobox_{tag}" if tag else "silobox"
    table = f"sbxdrop{run_id[:6]}"
    subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True)
    try:
        subprocess.run(["nft", f"add table ip {table}; add chain ip {table} forward "
                        "{ type filter hook forward priority 0; policy drop; }; "
                        f'add rule ip {table} forward iifname != "{prefix}*" '
                        f'oifname != "{prefix}*" accept'], check=True)
        time.sleep(1.1)   # container starts look for new firewalls at most once a second
        check_hairpin(net)            # the first endpoint notices the new firewall
        rules = our_rules(table, comment)
        vnic = hns_nat(silod)["Silobox"]["HostVNic"]
        assert any(f'iifname "{vnic}"' in r for r in rules) and len(rules) % 3 == 0, rules
        hf = silod.client.info()["Silobox"]["HostForwarding"]
        assert {"Backend": "nft", "Table": f"ip {table}", "Chain": "forward",
                "Rules": len(rules)} in hf["ForwardRules"], hf
        assert "accept rules in nft ip " + table in silod.silo("info").stdout.decode()
        check_outbound(net, run_id)
        # a new network adds its pair, its removal takes exactly those
        name = f"fw{run_id}"
        net.network(name)
        user_vnic = next(n for n in silod.request("GET", "/silobox/hns/networks")[1]
                         if n["Name"] == name)["Silobox"]["HostVNic"]
        assert len(our_rules(table, comment)) == len(rules) + 3
        assert any(f'"{user_vnic}"' in r for r in our_rules(table, comment))
        silod.client.remove_network(name)
        net.networks.remove(name)
        assert our_rules(table, comment) == rules
        # the test's own rule is untouched
        listed = subprocess.run(["nft", "list", "chain", "ip", table, "forward"],
                                capture_output=True, text=True).stdout
        assert f'iifname != "{prefix}*" oifname != "{prefix}*" accept' in listed
        # a firewall reload recreates the chain without our rules: the next start restores them
        subprocess.run(["nft", f"delete table ip {table}; add table ip {table}; "
                        f"add chain ip {table} forward "
                        "{ type filter hook forward priority 0; policy drop; }; "
                        f'add rule ip {table} forward iifname != "{prefix}*" '
                        f'oifname != "{prefix}*" accept'], check=True)
        assert our_rules(table, comment) == []
        time.sleep(1.1)
        check_hairpin(net)
        assert our_rules(table, comment) == rules
    finally:
        subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True)


# ----- user networks --------------------------------------------------------------------------
def test_user_network_static_ip_internal_and_connect(net: Net, silod: Any) -> None:
    name = f"un{os.getpid()}"
    n = net.network(name, ipam={"Driver": "default", "Config": [{"Subnet": "10.213.0.0/24",
                                                                  "Gateway": "10.213.0.1"}]})
    assert net.api.inspect_network(n["Id"])["IPAM"]["Config"][0]["Subnet"] == "10.213.0.0/24"
    cid = net.run("sleep 30", network=name, ip="10.213.0.50", mac="02:42:0a:d5:00:32")
    assert net.ip(cid) == "10.213.0.50"
    net.api.restart(cid, timeout=0)
    ns = net.inspect(cid)["NetworkSettings"]
    assert ns["IPAddress"] == "10.213.0.50" and ns["MacAddress"] == "02:42:0a:d5:00:32"
    code, out = net.exec(cid, "cat /sys/class/net/eth0/address")
    assert out.strip() == "02:42:0a:d5:00:32"
    status, body = silod.request("DELETE", f"/networks/{name}")
    assert status == 409 and "active endpoints" in body["message"]
    # connect a running nat container to it, live, then disconnect
    other = net.run("sleep 30")
    net.api.connect_container_to_network(other, name)
    code, out = net.exec(other, "ip -o -4 addr show eth1; ping -c1 -W2 10.213.0.50")
    assert code == 0 and "10.213.0." in out, out
    net.api.disconnect_container_from_network(other, name)
    code, out = net.exec(other, "ls /sys/class/net")
    assert "eth1" not in out.split()
    inet = f"in{os.getpid()}"
    net.network(inet, internal=True)
    cid = net.run("sleep 30", network=inet)
    code, out = net.exec(cid, "ip route")
    assert "default" not in out


def test_overlap_and_exhaustion_errors(net: Net, silod: Any) -> None:
    nat = net.api.inspect_network("nat")["IPAM"]["Config"][0]["Subnet"]
    status, body = silod.request("POST", "/networks/create",
                                 {"Name": f"ov{os.getpid()}", "Driver": "nat",
                                  "IPAM": {"Config": [{"Subnet": nat}]}})
    assert status == 409 and "overlaps" in body["message"]
    name = f"ex{os.getpid()}"
    net.network(name, ipam={"Driver": "default", "Config": [{"Subnet": "10.214.0.0/30"}]})
    net.run("sleep 30", network=name)
    with pytest.raises(Exception, match="exhausted"):
        net.run("sleep 30", network=name)


def test_parallel_starts_unique_addresses(net: Net) -> None:
    count = 50
    ids = [net.run("sleep 30", start=False) for _ in range(count)]
    errors: list[BaseException] = []

    def start(cid: str) -> None:
        try:
            import docker
            docker.APIClient(base_url=f"unix://{net.silod.socket}", version="auto").start(cid)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=start, args=(c,)) for c in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, [str(e) for e in errors]
    settings = [net.inspect(c)["NetworkSettings"] for c in ids]
    assert len({s["IPAddress"] for s in settings}) == count
    assert len({s["MacAddress"] for s in settings}) == count


def test_nothing_left_after_rm(net: Net, silod: Any) -> None:
    name = f"cl{os.getpid()}"
    net.network(name)
    hns = {n["Name"]: n for n in silod.request("GET", "/silobox/hns/networks")[1]}
    vnic = hns[name]["Silobox"]["HostVNic"]
    cid = net.run(SERVE, ports={80: free_port()}, network=name)
    ns_path = net.inspect(cid)["NetworkSettings"]["SandboxKey"]
    assert os.path.exists(ns_path)
    net.close()
    net.containers.clear()
    net.networks.clear()
    assert not os.path.exists(ns_path)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert vnic not in links
    status, eps = silod.request("GET", "/silobox/hns/endpoints")
    assert not [e for e in eps if e["VirtualNetworkName"] == name]
    db = sqlite3.connect(os.path.join(silod.root, "silobox.db"))
    try:
        leases = db.execute("SELECT COUNT(*) FROM ipam_leases").fetchone()[0]
        live = len(eps)
    finally:
        db.close()
    assert leases == live
    netns_dir = os.path.join(silod.exec_root, "netns")
    left = [f for f in os.listdir(netns_dir) if f != "vswitch"]
    assert len(left) <= live


def test_kill9_restart_keeps_addresses_and_ports(net: Net, silod: Any) -> None:
    p = free_port()
    cid = net.run(SERVE, ports={80: p})
    ip = net.ip(cid)
    assert http_get("127.0.0.1", p) == "hi\n"
    name = f"k9{os.getpid()}"
    net.network(name)
    peer = net.run("sleep 60", network=name, name=f"k9peer{os.getpid()}")
    asker = net.run("sleep 60", network=name)
    silod.kill9()
    silod.start()
    net.api = silod.client
    assert net.ip(cid) == ip
    assert http_get("127.0.0.1", p) == "hi\n"
    assert http_get(ip, 80) == "hi\n"
    code, out = net.exec(asker, f"nslookup k9peer{os.getpid()} 127.0.0.11")
    assert net.ip(peer) in out, out


def test_embedded_dns_aliases_dns_and_extra_hosts(net: Net) -> None:
    name = f"dn{os.getpid()}"
    net.network(name)
    api = net.api
    nc = api.create_networking_config({name: api.create_endpoint_config(aliases=["db"])})
    alpha = api.create_container(IMAGE, ["sleep", "30"], name=f"alpha{os.getpid()}",
                                 host_config=api.create_host_config(network_mode=name),
                                 networking_config=nc, hostname="alphahost")
    net.containers.append(alpha["Id"])
    api.start(alpha["Id"])
    ip = net.ip(alpha["Id"])
    dns_names = api.inspect_container(alpha["Id"])["NetworkSettings"]["Networks"][name]["DNSNames"]
    assert dns_names == [f"alpha{os.getpid()}", "db", alpha["Id"][:12], "alphahost"]
    b = net.run("sleep 30", network=name)
    for q in (f"alpha{os.getpid()}", "db", alpha["Id"][:12], f"db.{name}", "alphahost"):
        code, out = net.exec(b, f"nslookup {q} 127.0.0.11")
        assert ip in out, (q, out)
    code, out = net.exec(b, "cat /etc/resolv.conf")
    assert "nameserver 127.0.0.11" in out
    # the default nat network has no embedded DNS; --dns and --add-host still apply
    hc = api.create_host_config(dns=["192.0.2.53"], extra_hosts={"foo": "10.1.2.3"})
    c = api.create_container(IMAGE, ["sleep", "30"], host_config=hc)
    net.containers.append(c["Id"])
    api.start(c["Id"])
    assert api.inspect_container(c["Id"])["NetworkSettings"]["Networks"]["nat"]["DNSNames"] is None
    code, out = net.exec(c["Id"], "cat /etc/resolv.conf /etc/hosts")
    assert "nameserver 192.0.2.53" in out and "10.1.2.3\tfoo" in out
    assert f"{net.ip(c['Id'])}\t" in out


def test_restart_removes_our_orphans_only(silod: Any, run_id: str) -> None:
    from silobox.network.service import daemon_tag
    prefix = "sbx" + daemon_tag(silod.root)
    orphan, foreign = f"{prefix}nat97", f"sbxz{run_id[:6]}"
    try:
        for name in (orphan, foreign):
            subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name",
                            name[:-1] + "p"], check=True)
        silod.stop()
        silod.start()
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert f" {orphan}@" not in links and f" {foreign}@" in links, silod.log()[-3000:]
        assert silod.client.inspect_network("nat")["Name"] == "nat"
    finally:
        for name in (orphan, foreign):
            subprocess.run(["ip", "link", "del", name], capture_output=True)


def test_forward_rules_leave_at_clean_stop_and_option_turns_them_off(
        silod: Any, silod_factory: Any, run_id: str, tmp_path: Any) -> None:
    """A second daemon adds its own rules to a dropping hook and removes exactly those when it
    stops; with ``--ip-forward=false --forward-rules=false`` it touches neither."""
    from silobox.network.service import daemon_tag
    table = f"sbxdrop{run_id[:6]}s"
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True)
    try:
        # drops nothing but the extra daemons' forwarded traffic: the host's passes
        pfx = [f"sbx{daemon_tag(os.path.join(x, 'root'))}*" for x in (a, b)]
        others = " ".join(f'{k} != "{p}"' for k in ("iifname", "oifname") for p in pfx)
        subprocess.run(["nft", f"add table ip {table}; add chain ip {table} forward "
                        "{ type filter hook forward priority 0; policy drop; }; "
                        f"add rule ip {table} forward {others} accept"], check=True)
        with silod_factory(a, f"{run_id}f") as d:
            prefix = daemon_prefix(d)
            comment = f"silobox_{prefix[3:]}"
            assert len(our_rules(table, comment)) == 3
            hf = d.client.info()["Silobox"]["HostForwarding"]
            assert any(r["Table"] == f"ip {table}" for r in hf["ForwardRules"]), hf
        assert our_rules(table, comment) == []
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            assert f.read().strip() == "1"      # the session daemon still holds it
        with silod_factory(b, f"{run_id}g",
                           ["--ip-forward=false", "--forward-rules=false"]) as d:
            comment = f"silobox_{daemon_prefix(d)[3:]}"
            hf = d.client.info()["Silobox"]["HostForwarding"]
            assert hf["IPForward"].startswith("not managed") and \
                hf["ForwardRules"].startswith("not managed"), hf
            assert our_rules(table, comment) == []
            assert any("--forward-rules=false" in w for w in d.client.info()["Warnings"])
    finally:
        subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True)


def test_prune_honours_label_and_until_filters(net: Net, silod: Any) -> None:
    """``network prune --filter`` removes only the unused networks the filters select."""
    tag = f"p{os.getpid()}"
    net.network(f"{tag}-keep")
    net.network(f"{tag}-gone", labels={"silotest": "prune"})
    net.network(f"{tag}-other", labels={"silotest": "other"})
    api = silod.client
    names = lambda: {n["Name"] for n in api.networks()}   # noqa: E731
    assert api.prune_networks(filters={"until": "1"})["NetworksDeleted"] == []
    for filters, message in (({"until": ["soon"]}, "invalid filter 'until=soon'"),
                             ({"driver": ["nat"]}, "invalid filter 'driver'")):
        query = urllib.parse.quote(json.dumps(filters))
        status, doc = silod.request("POST", f"/networks/prune?filters={query}")
        assert (status, doc["message"]) == (400, message)
    res = api.prune_networks(filters={"label": "silotest=prune"})
    assert res["NetworksDeleted"] == [f"{tag}-gone"]
    res = api.prune_networks(filters={"label!": "silotest", "label": "silotest"})
    assert res["NetworksDeleted"] == []
    assert {f"{tag}-keep", f"{tag}-other"} <= names() and f"{tag}-gone" not in names()
