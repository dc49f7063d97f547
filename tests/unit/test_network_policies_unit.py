"""Validation of HNS driver options and ACL/Route policies (no kernel involved)."""

from __future__ import annotations

import pytest

from silobox.errors import Conflict, InvalidArgument
from silobox.network import drivers as D
from silobox.network import policies as P


def parse(driver: str, subnet: str | None = "10.1.0.0/24", **opts: str) -> D.DriverSettings:
    return D.parse(driver, opts, subnet=subnet, internal=False, ipv6=False,
                   used_interfaces={"busy0"}, used_vnis={4096, 5000})


def test_driver_options() -> None:
    assert parse("bridge").driver == "nat"
    s = parse("l2bridge", **{D.OPT_INTERFACE: "eth9"})
    assert s.driver == "l2bridge" and s.interface == "eth9"
    assert parse("transparent", parent="eth9").interface == "eth9"
    o = parse("overlay", **{D.OPT_INTERFACE: "eth9", D.OPT_PEERS: "10.0.0.2, 10.0.0.3"})
    assert o.vni == 4097 and o.peers == ["10.0.0.2", "10.0.0.3"] and o.vxlan_port == 4789
    assert parse("overlay", **{D.OPT_VXLANID: "7001,7002"}).vni == 7001


@pytest.mark.parametrize("driver,subnet,opts,error,message", [
    ("ipvlan", "10.1.0.0/24", {}, InvalidArgument, 'plugin "ipvlan" not found'),
    ("transparent", "10.1.0.0/24", {}, InvalidArgument, "needs the host interface"),
    ("transparent", None, {D.OPT_INTERFACE: "eth9"}, InvalidArgument, "needs --subnet"),
    ("l2tunnel", "10.1.0.0/24", {D.OPT_INTERFACE: "busy0"}, Conflict, "already used"),
    ("nat", None, {D.OPT_INTERFACE: "eth9"}, InvalidArgument, "no uplink"),
    ("l2bridge", "10.1.0.0/24", {D.OPT_INTERFACE: "a", "parent": "b"}, InvalidArgument,
     "different"),
    ("overlay", "10.1.0.0/24", {D.OPT_VXLANID: "5000"}, Conflict, "already used"),
    ("overlay", "10.1.0.0/24", {D.OPT_VXLANID: "0"}, InvalidArgument, "out of range"),
    ("overlay", "10.1.0.0/24", {D.OPT_PEERS: "nowhere"}, InvalidArgument, "invalid VTEP"),
    ("nat", None, {"com.docker.network.windowsshim.vlanid": "3"}, InvalidArgument,
     "not supported"),
])
def test_driver_option_errors(driver: str, subnet: str | None, opts: dict[str, str],
                              error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        parse(driver, subnet, **opts)


def test_acl_normalised_and_ordered() -> None:
    a = P.normalise({"Type": "ACL", "Settings": {
        "Action": "block", "Direction": "in", "Protocols": "TCP,17", "LocalPorts": "80, 90-99",
        "RemoteAddresses": "10.0.0.1", "Priority": "5"}})["Settings"]
    assert (a["Action"], a["Direction"], a["Protocols"], a["LocalPorts"],
            a["RemoteAddresses"], a["Priority"]) == ("Block", "In", "6,17", "80,90-99",
                                                     "10.0.0.1/32", 5)
    flat = P.normalise({"Type": "Route", "DestinationPrefix": "10.2.3.4/16", "NextHop": "10.0.0.1"})
    assert flat["Settings"] == {"DestinationPrefix": "10.2.0.0/16", "NextHop": "10.0.0.1",
                                "NeedEncap": False}
    allow = P.normalise({"Type": "ACL", "Settings": {"Action": "Allow", "Priority": 5}})
    block = P.normalise({"Type": "ACL", "Settings": {"Action": "Block", "Priority": 5}})
    rules = P.acl_ruleset([{"IfName": "eth0", "Policies": [allow, block]}])
    verdicts = [list(r["add"]["rule"]["expr"][-1]) for r in rules
                if "rule" in r["add"] and r["add"]["rule"]["chain"] == "in_eth0"]
    assert verdicts == [["drop"], ["accept"]]  # equal priority: Block first

