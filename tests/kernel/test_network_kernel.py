"""Kernel tests of the networking service's seams: libnftables, netlink, compartments, IPAM.

Everything carries this run's names (``sbxk<digits>…`` links, ``silobox_k<run>`` table, a
temporary directory for namespace files) and is removed even when a test fails. Traffic goes
only to addresses inside namespaces these tests create.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from typing import Iterator

import pytest

pytestmark = pytest.mark.root

if os.geteuid() != 0:
    pytest.skip("network kernel tests need root", allow_module_level=True)


@pytest.fixture
def table(run_id: str) -> Iterator[str]:
    from silobox.network.nft import Nft
    name = f"silobox_k{run_id}"[:30]
    nft = Nft()
    try:
        yield name
    finally:
        nft.delete_table("ip", name)
        nft.close()


def test_nft_replace_table_is_atomic_and_ours_only(table: str) -> None:
    from silobox.network import nft as N
    nft = N.Nft()
    before = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    chain = {"add": {"chain": {"family": "ip", "table": table, "name": "publish"}}}
    rule = {"add": {"rule": {"family": "ip", "table": table, "chain": "publish", "expr": [
        N.match(N.meta("l4proto"), "tcp"), N.match(N.payload("th", "dport"), 18080),
        {"dnat": {"addr": "192.168.200.2", "port": 80}}]}}}
    nft.replace_table("ip", table, [chain, rule])
    nft.replace_table("ip", table, [chain, rule])   # twice: replaced, not doubled
    out = nft.run([{"list": {"table": {"family": "ip", "name": table}}}])
    rules = [x for x in out["nftables"] if "rule" in x]
    assert len(rules) == 1
    # a bad batch changes nothing
    with pytest.raises(Exception):
        nft.replace_table("ip", table, [chain, {"add": {"rule": {
            "family": "ip", "table": table, "chain": "nope", "expr": [{"accept": None}]}}}])
    out = nft.run([{"list": {"table": {"family": "ip", "name": table}}}])
    assert len([x for x in out["nftables"] if "rule" in x]) == 1
    after = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert set(before.split("\n")) <= set(after.split("\n"))
    nft.close()


@pytest.fixture
def netlink(run_id: str) -> Iterator[tuple[object, str, str]]:
    from silobox.network.netlink import Netlink
    d = tempfile.mkdtemp(prefix="sbxk-")
    tag = f"sbxk{int(run_id, 16) % 10000:04d}" if all(c in "0123456789abcdef" for c in run_id) \
        else "sbxk0000"
    nl = Netlink(os.path.join(d, "vswitch"))
    try:
        yield nl, d, tag
    finally:
        for name in (f"{tag}n0",):
            nl.call(nl.delete_link, "host", name)
        for f in os.listdir(d):
            nl.call(nl.remove_netns, os.path.join(d, f))
        nl.close()
        os.rmdir(d)


def test_compartment_vswitch_and_endpoint(netlink: tuple) -> None:
    nl, d, tag = netlink
    ns_a, ns_b = os.path.join(d, "A"), os.path.join(d, "B")
    nl.call(nl.ensure_vswitch, f"{tag}b0", f"{tag}n0", f"{tag}h0", "192.168.201.1", 24,
            "vEthernet (ktest)", "00:15:5d:01:00:01")
    nl.call(nl.create_endpoint, ns_a, f"{tag}b0", f"{tag}va", "00:15:5d:01:00:02",
            [("192.168.201.2", 24)], "192.168.201.1")
    nl.call(nl.create_endpoint, ns_b, f"{tag}b0", f"{tag}vb", "00:15:5d:01:00:03",
            [("192.168.201.3", 24)], "192.168.201.1")
    assert "eth0" in nl.call(nl.netns_links, ns_a)
    show = subprocess.run(["ip", "-o", "link", "show", f"{tag}n0"], capture_output=True,
                          text=True).stdout
    assert "vEthernet (ktest)" in show
    for target in ("192.168.201.3", "192.168.201.1"):
        r = subprocess.run(["nsenter", f"--net={ns_a}", "busybox", "ping", "-c1", "-W2", target],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    # removing the compartment destroys its vNIC with it
    nl.call(nl.remove_netns, ns_a)
    import time
    for _ in range(100):
        if f"{tag}va" not in nl.call(nl.link_names, "switch"):
            break
        time.sleep(0.01)
    assert f"{tag}va" not in nl.call(nl.link_names, "switch")


def test_ipam_unique_and_exhaustion(tmp_path: object) -> None:
    from silobox.errors import Conflict
    from silobox.network.ipam import SCHEMA, Ipam, free_subnet
    from silobox.storage.db import Database
    db = Database(os.path.join(str(tmp_path), "t.db"))
    db.migrate("network", SCHEMA)
    ipam = Ipam(db)
    got = {ipam.allocate_ip("n", "10.9.0.0/29", "10.9.0.1", f"e{i}") for i in range(5)}
    assert len(got) == 5 and "10.9.0.1" not in got
    with pytest.raises(Conflict, match="exhausted"):
        ipam.allocate_ip("n", "10.9.0.0/29", "10.9.0.1", "e9")
    macs = {ipam.allocate_mac("n", (0x00155D703000, 0x00155D703FFF), f"e{i}") for i in range(5)}
    assert len(macs) == 5 and all(m.startswith("00:15:5d:70:3") for m in macs)
    ipam.release("n", "e0")
    assert ipam.lease_count("n") == 4
    assert free_subnet([("192.168.48.0", 20)], ["192.168.48.0/20", "192.168.64.0/20"]) == \
        "192.168.64.0/20"
    db.close()


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


def test_winnat_rules_outbound_and_hairpin_in_a_simulated_host(run_id: str, tmp_path: object
                                                                 ) -> None:
    """The table the service renders, loaded into a namespace standing in for a host without
    another engine's forward policy: a container's outbound connection reaches an "outside"
    namespace with the host's address as source, and a container reaches a published port on
    the host's address (hairpin). Everything lives in namespaces this test creates."""
    from silobox.network.objects import (HostComputeEndpoint, HostComputeNetwork, PortMapping,
                                         policy_json)
    from silobox.network.service import HostNetworkingService
    from silobox.storage.db import Database
    tag = f"sbxk{int(run_id, 16) % 10000:04d}" if all(c in "0123456789abcdef" for c in run_id) \
        else "sbxk0000"
    h, c1, c2, o = (f"{tag}{x}" for x in ("H", "C1", "C2", "O"))
    web = os.path.join(str(tmp_path), "www")
    os.makedirs(web)
    with open(os.path.join(web, "i"), "w") as f:
        f.write("hairpin-ok\n")
    procs: list[subprocess.Popen] = []
    try:
        for ns in (h, c1, c2, o):
            _sh("ip", "netns", "add", ns)
        _sh("ip", "-n", h, "link", "add", f"{tag}nat0", "type", "bridge")
        _sh("ip", "-n", h, "addr", "add", "10.77.0.1/24", "dev", f"{tag}nat0")
        _sh("ip", "-n", h, "link", "set", f"{tag}nat0", "up")
        _sh("ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for ns, addr in ((c1, "10.77.0.2"), (c2, "10.77.0.3")):
            _sh("ip", "-n", h, "link", "add", f"{tag}v{ns[-1]}", "type", "veth", "peer", "name",
                "eth0", "netns", ns)
            _sh("ip", "-n", h, "link", "set", f"{tag}v{ns[-1]}", "master", f"{tag}nat0", "up")
            _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "-n", ns, "route", "add", "default", "via", "10.77.0.1")
        _sh("ip", "-n", h, "link", "add", f"{tag}up", "type", "veth", "peer", "name", "eth0",
            "netns", o)
        _sh("ip", "-n", h, "addr", "add", "198.51.100.1/30", "dev", f"{tag}up")
        _sh("ip", "-n", h, "link", "set", f"{tag}up", "up")
        _sh("ip", "-n", o, "addr", "add", "198.51.100.2/30", "dev", "eth0")
        _sh("ip", "-n", o, "link", "set", "eth0", "up")
        # the service's own rendering of its table for one network and one published port
        db = Database(os.path.join(str(tmp_path), "s.db"))
        svc = HostNetworkingService(db, str(tmp_path), str(tmp_path))
        svc.prefix, svc.table = tag, f"silobox_{tag}"
        svc.names.prefix = tag
        svc.networks = {"N": HostComputeNetwork("N", "nat", Index=0, Subnets=[
            {"AddressPrefix": "10.77.0.0/24"}])}
        svc.endpoints = {"E": HostComputeEndpoint("E", IPAddress="10.77.0.2", VirtualNetwork="N",
                                                  Policies=[policy_json(PortMapping(6, 80, 8080))])}
        doc = {"nftables": svc.ruleset()}
        rules = os.path.join(str(tmp_path), "rules.json")
        with open(rules, "w") as f:
            json.dump(doc, f)
        _sh("ip", "netns", "exec", h, "nft", "-j", "-f", rules)
        db.close()
        # outbound NAT: the outside sees the host's address, never the container's
        procs.append(subprocess.Popen(["ip", "netns", "exec", o, "busybox", "nc", "-l", "-p",
                                       "9000"], stdout=subprocess.DEVNULL))
        # the listener may not be up yet: the client retries until it connects
        procs.append(subprocess.Popen(["ip", "netns", "exec", c1, "sh", "-c",
                                       "for i in $(seq 40); do (echo hello; sleep 3) |"
                                       " busybox nc 198.51.100.2 9000 && break; sleep 0.05;"
                                       " done"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        seen = ""
        for _ in range(60):
            seen = _sh("ip", "netns", "exec", o, "busybox", "netstat", "-tn").stdout
            if "ESTABLISHED" in seen:
                break
            time.sleep(0.05)
        assert "198.51.100.1:" in seen and "10.77.0.2" not in seen, seen
        # hairpin: C2 → the host's address:8080 → C1:80
        procs.append(subprocess.Popen(["ip", "netns", "exec", c1, "busybox", "httpd", "-f",
                                       "-p", "80", "-h", web]))
        out = ""
        for _ in range(40):
            out = _sh("ip", "netns", "exec", c2, "sh", "-c",
                      "printf 'GET /i HTTP/1.0\\r\\n\\r\\n' | busybox nc -w2 198.51.100.1 8080",
                      check=False).stdout
            if "hairpin-ok" in out:
                break
            time.sleep(0.05)
        assert "hairpin-ok" in out
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in (h, c1, c2, o):
            _sh("ip", "netns", "del", ns, check=False)


def test_dns_message_round_trip() -> None:
    import struct
    from silobox.network.dns import answer, parse_question
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x05alpha\x02dn\x00" + \
        struct.pack("!HH", 1, 1)
    qid, flags, name, qtype, end = parse_question(q)
    assert (qid, name, qtype, end) == (0x1234, "alpha.dn", 1, len(q))
    r = answer(q, qid, flags, end, ["10.0.0.7"], qtype)
    assert struct.unpack("!HHHH", r[:8]) == (0x1234, 0x8580, 1, 1)
    assert r.endswith(bytes([10, 0, 0, 7]))
    nx = answer(q, qid, flags, end, [], qtype, rcode=2)
    assert struct.unpack("!H", nx[2:4])[0] & 0xF == 2


def test_uplink_adopt_release_and_l2bridge_rewrite(netlink: tuple) -> None:
    """The external vSwitch takes a NIC (a veth whose far end is in a namespace of ours),
    rewrites MACs with the bridge-family table, and gives the NIC back as it was."""
    from silobox.network.drivers import mac_rewrite_rules
    nl, d, tag = netlink
    outside, nic = f"{tag}o", f"{tag}u"
    _sh("ip", "netns", "add", outside)
    try:
        _sh("ip", "link", "add", nic, "type", "veth", "peer", "name", "ext", "netns", outside)
        _sh("ip", "-n", outside, "addr", "add", "192.168.203.1/24", "dev", "ext")
        _sh("ip", "-n", outside, "link", "set", "ext", "up")
        mac = json.loads(_sh("ip", "-j", "link", "show", nic).stdout)[0]["address"]
        info = nl.call(nl.nic_info, nic)
        assert info["mac"] == mac and info["ipv4"] == [] and not info["master"]
        nl.call(nl.adopt_uplink, f"{tag}b1", nic, "00:15:5d:02:00:01", True)
        assert _sh("ip", "link", "show", nic, check=False).returncode != 0
        ns_c = os.path.join(d, "C")
        nl.call(nl.create_endpoint, ns_c, f"{tag}b1", f"{tag}vc", "00:15:5d:02:00:02",
                [("192.168.203.10", 24)], "192.168.203.1")
        nl.call(nl.switch_nft, [{"add": {"table": {"family": "bridge", "name": "silobox"}}}]
                + mac_rewrite_rules("silobox", [(nic, mac, [("192.168.203.10",
                                                             "00:15:5d:02:00:02")])]))
        r = _sh("nsenter", f"--net={ns_c}", "busybox", "ping", "-c1", "-W2", "192.168.203.1",
                check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        seen = json.loads(_sh("ip", "-n", outside, "-j", "neigh", "show",
                              "192.168.203.10").stdout)
        assert seen and seen[0]["lladdr"] == mac
        nl.call(nl.remove_netns, ns_c)
        nl.call(nl.release_uplink, nic, mac, True)
        back = json.loads(_sh("ip", "-j", "link", "show", nic).stdout)[0]
        assert back["address"] == mac and "UP" in back["flags"]
        nl.call(nl.delete_link, "switch", f"{tag}b1")
    finally:
        _sh("ip", "netns", "del", outside, check=False)
        _sh("ip", "link", "del", nic, check=False)


def test_vxlan_port_keeps_its_underlay_in_the_host(netlink: tuple) -> None:
    nl, d, tag = netlink
    probe = _sh("ip", "link", "add", f"{tag}x", "type", "vxlan", "id", "9", "dstport", "4789",
                check=False)
    if probe.returncode != 0:
        pytest.skip(f"no vxlan link type in this kernel: {probe.stderr.strip()}")
    _sh("ip", "link", "del", f"{tag}x")
    name = f"{tag}vx"
    try:
        nl.call(nl.ensure_vxlan, name, f"{tag}b2", 4242, "127.0.0.1", 4789, ["127.0.0.2"])
        nl.call(nl.ensure_vxlan, name, f"{tag}b2", 4242, "127.0.0.1", 4789, ["127.0.0.2"])
        assert name in nl.call(nl.link_names, "switch")
        assert _sh("ip", "link", "show", name, check=False).returncode != 0
        fdb = _sh("nsenter", f"--net={nl.switch_path}", "bridge", "fdb", "show", "dev",
                  name).stdout
        assert fdb.count("dst 127.0.0.2") == 1   # idempotent
    finally:
        nl.call(nl.delete_link, "switch", name)
        nl.call(nl.delete_link, "host", name)
        nl.call(nl.delete_link, "switch", f"{tag}b2")
