"""The network drivers' decisions and the service's endpoint teardown, against a recording
stand-in of the netlink worker (no kernel; the kernel tests exercise the real calls)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from silobox.errors import Conflict, InvalidArgument
from silobox.network import drivers as D
from silobox.network.netlink import Netlink
from silobox.network.objects import HostComputeEndpoint, HostComputeNetwork
from silobox.network.service import HostNetworkingService
from silobox.storage.db import Database

NIC = {"mac": "52:54:00:12:34:56", "mtu": 1500, "master": None, "up": True, "kind": "veth",
       "ipv4": []}


class RecordingNetlink:
    """Kernel operations are recorded in order, never run; ``results`` answers queries."""

    switch_path = "/nonexistent/sbx-unit/vswitch"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.results: dict[str, Any] = {"host_routes": [], "host_routes6": [],
                                        "nic_info": dict(NIC), "link_names": []}

    def __getattr__(self, name: str) -> Any:
        def op(*args: Any) -> Any:
            self.calls.append((name, args))
            return self.results.get(name)
        op.__name__ = name
        return op

    async def run(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    settle = run

    def idle(self) -> bool:
        return True

    def call(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    def close(self) -> None:
        pass

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.calls if n == name]


class RecordingNft:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []

    def run(self, cmds: list[dict[str, Any]]) -> Any:
        self.batches.append(cmds)
        return {"nftables": []}

    def delete_table(self, family: str, name: str) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def hns(tmp_path: Any) -> Any:
    db = Database(str(tmp_path / "s.db"))
    svc = HostNetworkingService(db, "/var/lib/silobox", str(tmp_path), ip_forward=False,
                                forward_rules=False, netlink=RecordingNetlink())
    svc._nft = RecordingNft()
    yield svc
    db.close()


def create(svc: HostNetworkingService, name: str, **kw: Any) -> HostComputeNetwork:
    return asyncio.run(svc.create_network(name, **kw))


def test_nat_network_record_and_vswitch(hns: Any) -> None:
    n = create(hns, "n1", subnet="10.9.0.0/24")
    assert (n.Type, n.Driver, n.Index, n.prefix_length) == ("nat", "nat", 0, 24)
    assert n.HostMac and n.Policies == [{"Type": "OutBoundNAT",
                                         "Settings": {"VirtualIP": "", "Exceptions": []}}]
    assert hns.netlink.named("ensure_vswitch") == [
        ("sbxbr0", "sbxnat0", "sbxhp0", "10.9.0.1", 24, "vEthernet (n1)", n.HostMac, None)]
    assert hns.driver_of(n).owned_links(n) == ({"sbxnat0"}, {"sbxbr0", "sbxhp0"})
    internal = create(hns, "n2", subnet="10.9.1.0/24", internal=True)
    assert internal.Policies == []
    assert [r.Name for r in hns.nat_networks()] == ["n1", "n2"]
    assert [r.name for r in hns.routed_networks()] == ["n1"]   # internal: never routed


def test_external_drivers_bind_the_nic(hns: Any) -> None:
    t = create(hns, "t", driver="transparent", subnet="10.8.0.0/24",
               options={D.OPT_INTERFACE: "eth7"})
    b = create(hns, "b", driver="l2bridge", subnet="10.8.1.0/24", options={"parent": "eth8"})
    u = create(hns, "u", driver="l2tunnel", subnet="10.8.2.0/24",
               options={D.OPT_INTERFACE: "eth9"})
    adopted = hns.netlink.named("adopt_uplink")
    assert adopted == [("sbxbr0", "eth7", None, True), ("sbxbr1", "eth8", b.UplinkPortMac, True),
                       ("sbxbr2", "eth9", u.UplinkPortMac, False)]
    assert t.SourceMac is None and b.SourceMac == u.SourceMac == NIC["mac"]
    assert (t.Type, b.Type, u.Type) == ("Transparent", "L2Bridge", "L2Tunnel")
    assert hns.driver_of(u).isolated_ports and not hns.driver_of(b).isolated_ports
    with pytest.raises(Conflict, match="already used"):
        create(hns, "again", driver="transparent", subnet="10.8.3.0/24",
               options={D.OPT_INTERFACE: "eth7"})
    hns.netlink.calls.clear()
    asyncio.run(hns.delete_network("b"))
    assert [c[0] for c in hns.netlink.calls if c[0] != "switch_nft"] == [
        "release_uplink", "remove_vswitch"]
    assert hns.netlink.named("release_uplink") == [("eth8", NIC["mac"], True)]


def test_uplink_checks(hns: Any) -> None:
    hns.netlink.results["nic_info"] = {**NIC, "ipv4": ["192.0.2.5"]}
    with pytest.raises(Conflict, match="carries host addresses"):
        create(hns, "x", driver="l2bridge", subnet="10.7.0.0/24",
               options={D.OPT_INTERFACE: "eth5"})
    hns.netlink.results["nic_info"] = {**NIC, "master": 3}
    with pytest.raises(Conflict, match="enslaved"):
        create(hns, "x", driver="transparent", subnet="10.7.0.0/24",
               options={D.OPT_INTERFACE: "eth5"})
    with pytest.raises(InvalidArgument, match="no IPv4 address"):
        create(hns, "x", driver="overlay", subnet="10.7.0.0/24",
               options={D.OPT_INTERFACE: "eth5"})
    hns.netlink.results["nic_info"] = None
    with pytest.raises(InvalidArgument, match="not found on the host"):
        create(hns, "x", driver="transparent", subnet="10.7.0.0/24",
               options={D.OPT_INTERFACE: "eth5"})
    with pytest.raises(InvalidArgument, match="host interface of the underlay"):
        create(hns, "x", driver="overlay", subnet="10.7.0.0/24")
    assert [n.Name for n in hns.networks.values()] == []
    assert not hns.netlink.named("adopt_uplink") and not hns.netlink.named("ensure_vxlan")


@pytest.mark.parametrize("driver,name", [("null", "null"), ("host", "host")])
def test_predefined_drivers_make_no_networks(driver: str, name: str) -> None:
    with pytest.raises(InvalidArgument, match=f'only one instance of "{name}" network'):
        D.parse(driver, {}, subnet=None, internal=False, ipv6=False, used_interfaces=set(),
                used_vnis=set())


def test_overlay_endpoint_mtu_and_tunnel(hns: Any) -> None:
    hns.netlink.results["nic_info"] = {**NIC, "mtu": 9000, "ipv4": ["192.0.2.9"]}
    n = create(hns, "o", driver="overlay", subnet="10.6.0.0/24",
               options={D.OPT_INTERFACE: "eth6", D.OPT_PEERS: "192.0.2.10"})
    assert hns.netlink.named("ensure_vxlan") == [
        ("sbxvx0", "sbxbr0", 4096, "192.0.2.9", 4789, ["192.0.2.10"])]
    assert n.Policies == [{"Type": "VSID", "Settings": {"VSID": 4096}}]
    e = hns.create_endpoint(n, container_id="c1", namespace_id="NS1")
    asyncio.run(hns.attach(e))
    (args,) = hns.netlink.named("create_endpoint")
    netns, bridge, port, mac, addrs, gw, ifname, create_ns, mtu, isolated, gw6 = args
    assert (bridge, mtu, isolated, create_ns, gw) == ("sbxbr0", 8950, False, True, "10.6.0.1")
    assert addrs == [(e.IPAddress, 24)] and mac == e.mac and port == hns.endpoint_port(e.ID)
    assert e.attached and hns.namespaces["NS1"].Endpoints == [e.ID]


def test_port_mappings_only_where_the_host_routes(hns: Any) -> None:
    from silobox.network.objects import PortMapping
    n = create(hns, "t", driver="transparent", subnet="10.8.0.0/24",
               options={D.OPT_INTERFACE: "eth7"})
    with pytest.raises(InvalidArgument, match="port mappings are not supported"):
        hns.create_endpoint(n, container_id="c", namespace_id="NS",
                            port_mappings=[PortMapping(6, 80, 8080)])


def test_endpoint_teardown_is_idempotent(hns: Any) -> None:
    n = create(hns, "n1", subnet="10.9.0.0/24")
    e1 = hns.create_endpoint(n, container_id="c1", namespace_id="NS1")
    e2 = hns.create_endpoint(n, container_id="c1", namespace_id="NS1", ifname="eth1")
    hns.netlink.calls.clear()

    async def both() -> None:   # the exit hook and a remove, racing
        await asyncio.gather(hns.delete_endpoints([e1.ID, e2.ID], "NS1"),
                             hns.delete_endpoints([e1.ID, e2.ID], "NS1"))
    asyncio.run(both())
    assert hns.endpoints == {} and "NS1" not in hns.namespaces
    assert hns.ipam.lease_count(n.ID) == 0
    # the namespace goes with its veths; removing it twice is harmless
    assert {c[0] for c in hns.netlink.calls} == {"remove_netns"}
    assert hns.netlink.named("remove_netns")[0] == (hns.netns_path("NS1"),)


def test_a_utility_vms_endpoint_is_a_tap_on_the_switch(hns: Any) -> None:
    n = create(hns, "n1", subnet="10.9.0.0/24")
    e = hns.create_endpoint(n, container_id="c1", namespace_id="NS1", guest=True)
    assert e.in_guest and e.Namespace["Type"] == "Guest"
    asyncio.run(hns.attach(e))
    port = hns.endpoint_port(e.ID)
    assert hns.netlink.named("create_tap_endpoint") == [("sbxbr0", port, 0, False)]
    assert not hns.netlink.named("create_endpoint") and not hns.netlink.named("ensure_netns")
    hns.reconcile_endpoints({"c1"})   # no namespace file on the host: kept while it runs
    assert e.ID in hns.endpoints
    with pytest.raises(InvalidArgument, match="utility VM"):
        asyncio.run(hns.modify_endpoint_policies(e.ID, "Add", []))
    hns.netlink.calls.clear()
    asyncio.run(hns.delete_endpoints([e.ID], "NS1"))
    assert ("switch", port) in hns.netlink.named("delete_link") and hns.endpoints == {}
    e2 = hns.create_endpoint(n, container_id="c2", namespace_id="NS2", guest=True)
    hns.netlink.calls.clear()
    hns.reconcile_endpoints(set())   # its container is gone: so are the record and the tap
    assert e2.ID not in hns.endpoints
    assert hns.netlink.named("delete_link") == [("switch", hns.endpoint_port(e2.ID))]


def test_settle_runs_after_a_cancelled_job_in_flight_and_survives_cancellation() -> None:
    """The race behind a namespace that stayed mounted: a teardown must run after a create
    still running in the worker, even when every caller has been cancelled."""
    nl = Netlink("/nonexistent/vswitch")
    order: list[str] = []
    started = threading.Event()

    def create() -> None:
        started.set()
        time.sleep(0.2)
        order.append("create")

    async def main() -> None:
        attach = asyncio.ensure_future(nl.run(create))
        while not started.is_set():
            await asyncio.sleep(0.01)
        attach.cancel()                        # the client went away mid-start
        assert not nl.idle()                   # the create still runs: no inline teardown
        teardown = asyncio.ensure_future(nl.settle(order.append, "remove"))
        await asyncio.sleep(0)
        teardown.cancel()                      # and the cleanup was cancelled too
        with pytest.raises(asyncio.CancelledError):
            await teardown
        await asyncio.sleep(0.4)
        assert nl.idle()
    try:
        asyncio.run(main())
    finally:
        nl.close()
    assert order == ["create", "remove"]


def test_records_read_and_write_the_stored_form() -> None:
    stored = {"ID": "N", "Name": "old", "Type": "nat", "Index": 3, "Internal": False,
              "Subnets": [{"AddressPrefix": "10.1.0.0/24", "GatewayAddress": "10.1.0.1"}],
              "MacPools": [], "Policies": [], "HostMac": "00:15:5d:00:00:01",
              "SomethingNewer": {"x": 1}}
    n = HostComputeNetwork.from_json(json.loads(json.dumps(stored)))
    assert n.Driver == "nat" and n.nic == "" and n.subnet6 is None and n.prefix_length == 24
    back = n.to_json()
    assert {k: back[k] for k in stored} == stored and "Degraded" not in back
    assert "Vni" not in back and "Vni" not in n and n.get("Vni", 0) == 0
    assert n["Name"] == "old" and n.get("SomethingNewer") == {"x": 1}
    e = HostComputeEndpoint.from_json({"ID": "E", "MacAddress": "00-15-5D-AA-BB-CC",
                                       "Namespace": {"ID": "NS", "CompartmentId": 0},
                                       "Policies": [{"Type": "PortMapping", "Settings": {
                                           "Protocol": 6, "InternalPort": 80,
                                           "ExternalPort": 8080}}]})
    assert e.mac == "00:15:5d:aa:bb:cc" and e.namespace_id == "NS"
    assert [m.ExternalPort for m in e.port_mappings()] == [8080]
    assert e.get("IPv6Address", "") == "" and "IPv6Address" not in e.to_json()


def test_subnet_choice_names_what_overlaps() -> None:
    from silobox.network import ipam as I
    ours = [("lan", ["10.5.0.0/24", "fd00:5::/64"])]
    with pytest.raises(Conflict, match="overlaps the subnet 10.5.0.0/24 of network lan"):
        I.choose_subnet("10.5.0.128/25", [("10.5.0.0", 24)], ours)
    with pytest.raises(Conflict, match="a route or address of this host"):
        I.choose_subnet("192.0.2.0/24", [("192.0.2.0", 25)], ours)
    with pytest.raises(InvalidArgument, match="too small"):
        I.choose_subnet("10.6.0.0/31", [], ours)
    assert str(I.choose_subnet("10.6.0.0/24", [("10.5.0.0", 24)], ours)) == "10.6.0.0/24"
    with pytest.raises(Conflict, match="of network lan"):
        I.choose_subnet6("fd00:5::/64", None, None, [], ours)
    rec = I.choose_subnet6("fd00:6::/64", None, "fd00:6::100/120", [], ours)
    assert (rec["AddressPrefix"], rec["GatewayAddress"], rec["IPRange"]) == (
        "fd00:6::/64", "fd00:6::1", "fd00:6::100/120")
