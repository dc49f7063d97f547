"""The HNS network types on an external vSwitch: transparent, l2bridge, l2tunnel and overlay.

Safety: no test touches the host's real NICs. Each test makes its own "physical NIC": the host
end of a veth pair whose other end lives in a network namespace the test created, standing in
for the external switch and the hosts behind it. Traffic goes only between containers and that
namespace. The namespace, the veth pair and the networks are removed even when a test fails;
each test then checks that its NIC came back to the host with its own MAC.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from typing import Any

import pytest
from netutil import IFACE, IMAGE, Drivers, Outside, link_mac, sh

SERVE = "echo hi > /tmp/i; exec httpd -f -p 80 -h /tmp"


def http(ip: str) -> str:
    """A busybox HTTP GET of /i (nc: busybox wget's exit status is unreliable here)."""
    return f"printf 'GET /i HTTP/1.0\\r\\n\\r\\n' | nc -w2 {ip} 80 | grep -x hi"


def wait_ok(fn: Any, tries: int = 40) -> Any:
    last = None
    for _ in range(tries):
        last = fn()
        if last.returncode == 0:
            return last
        time.sleep(0.1)
    raise AssertionError(f"never succeeded: {last.stdout} {last.stderr}")


def remove_and_check_nic(drv: Drivers, name: str, o: Outside) -> None:
    """Removing the network gives the NIC back to the host, with its own MAC."""
    for c in list(drv.containers):
        drv.api.remove_container(c, force=True)
        drv.containers.remove(c)
    drv.api.remove_network(name)
    drv.networks.remove(name)
    assert link_mac(o.nic) == o.nic_mac


# ----- transparent ----------------------------------------------------------------------------
def test_transparent_containers_on_the_nics_segment(drv: Drivers, outside: Outside) -> None:
    o, name = outside, f"tr{outside.ns}"
    subnet, gw = f"10.221.{o.octet}.0/24", f"10.221.{o.octet}.1"
    sh("ip", "-n", o.ns, "addr", "add", f"{gw}/24", "dev", "ext")
    drv.network(name, "transparent", subnet, gw, **{IFACE: o.nic})
    # the vSwitch took the NIC
    assert subprocess.run(["ip", "link", "show", o.nic], capture_output=True).returncode != 0
    cid = drv.run(SERVE, name)
    s = drv.settings(cid, name)
    assert s["IPAddress"].startswith(f"10.221.{o.octet}.") and s["Gateway"] == gw
    code, out = drv.exec(cid, f"ip route; ping -c1 -W2 {gw}")
    assert code == 0 and f"default via {gw}" in out, out
    # the outside reaches the container at its own address and sees the container's own MAC
    wait_ok(lambda: o.run(f"ping -c1 -W1 {s['IPAddress']}"))
    assert o.neighbour_mac(s["IPAddress"]) == s["MacAddress"]
    r = wait_ok(lambda: o.run(http(s['IPAddress'])))
    assert r.stdout.strip() == "hi"
    # the views
    h = drv.hns(name)
    assert h["Type"] == "Transparent" and h["NetworkAdapterName"] == o.nic
    assert h["Subnets"][0]["AddressPrefix"] == subnet and h["CurrentEndpointCount"] == 1
    assert drv.api.inspect_network(name)["Driver"] == "transparent"
    ls = drv.silod.silo("hns", "network", "ls").stdout.decode()
    assert "Transparent" in ls and o.nic in ls
    remove_and_check_nic(drv, name, o)


# ----- l2bridge -------------------------------------------------------------------------------
def test_l2bridge_frames_leave_with_the_nics_mac(drv: Drivers, outside: Outside) -> None:
    o, name = outside, f"l2b{outside.ns}"
    subnet, gw = f"10.222.{o.octet}.0/24", f"10.222.{o.octet}.1"
    sh("ip", "-n", o.ns, "addr", "add", f"{gw}/24", "dev", "ext")
    drv.network(name, "l2bridge", subnet, gw, **{IFACE: o.nic})
    a = drv.run(SERVE, name)
    b = drv.run("sleep 60", name)
    sa, sb = drv.settings(a, name), drv.settings(b, name)
    assert sa["MacAddress"] != o.nic_mac and sb["MacAddress"] != o.nic_mac
    code, out = drv.exec(b, f"ping -c1 -W2 {gw}")
    assert code == 0, out
    wait_ok(lambda: o.run(f"ping -c1 -W1 {sa['IPAddress']}"))
    # both containers appear outside with the NIC's MAC, not their own
    assert o.neighbour_mac(sa["IPAddress"]) == o.nic_mac
    assert o.neighbour_mac(sb["IPAddress"]) == o.nic_mac
    r = wait_ok(lambda: o.run(http(sa['IPAddress'])))
    assert r.stdout.strip() == "hi"
    # containers of the same host talk directly (with their own MACs)
    code, out = drv.exec(b, http(sa['IPAddress']) + "; ip neigh")
    assert "hi" in out and sa["MacAddress"] in out, out
    h = drv.hns(name)
    assert h["Type"] == "L2Bridge" and h["SourceMac"] == o.nic_mac.replace(":", "-").upper()
    remove_and_check_nic(drv, name, o)


# ----- l2tunnel -------------------------------------------------------------------------------
def test_l2tunnel_forces_local_traffic_through_the_external_switch(
        drv: Drivers, outside: Outside) -> None:
    o, name = outside, f"l2t{outside.ns}"
    subnet, gw = f"10.223.{o.octet}.0/24", f"10.223.{o.octet}.1"
    # the external switch: a bridge in the outside namespace, its host on the bridge
    sh("ip", "-n", o.ns, "link", "add", "xsw", "type", "bridge")
    sh("ip", "-n", o.ns, "link", "set", "ext", "master", "xsw")
    sh("ip", "-n", o.ns, "link", "set", "xsw", "up")
    sh("ip", "-n", o.ns, "addr", "add", f"{gw}/24", "dev", "xsw")
    drv.network(name, "l2tunnel", subnet, gw, **{IFACE: o.nic})
    a = drv.run(SERVE, name)
    b = drv.run("sleep 60", name)
    sa = drv.settings(a, name)
    wait_ok(lambda: o.run(f"ping -c1 -W1 {sa['IPAddress']}"))
    assert o.neighbour_mac(sa["IPAddress"]) == o.nic_mac
    # without reflection by the external switch, two containers of this host cannot talk
    code, out = drv.exec(b, f"ping -c1 -W1 {sa['IPAddress']}")
    assert code != 0, out
    # with the switch port in hairpin (reflective relay) mode they can, through the NIC
    sh("ip", "-n", o.ns, "link", "set", "ext", "type", "bridge_slave", "hairpin", "on")
    before = json.loads(sh("ip", "-n", o.ns, "-s", "-j", "link", "show", "ext"))[0]
    code, out = drv.exec(b, f"ping -c3 -W1 {sa['IPAddress']}; "
                         + http(sa['IPAddress']))
    assert "hi" in out, out
    after = json.loads(sh("ip", "-n", o.ns, "-s", "-j", "link", "show", "ext"))[0]
    assert after["stats64"]["rx"]["packets"] - before["stats64"]["rx"]["packets"] >= 6
    h = drv.hns(name)
    assert h["Type"] == "L2Tunnel" and h["Silobox"]["IsolatedPorts"] is True
    remove_and_check_nic(drv, name, o)


# ----- overlay --------------------------------------------------------------------------------
def vxlan_supported() -> bool:
    ns = f"sbxv{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        return subprocess.run(["ip", "-n", ns, "link", "add", "vx", "type", "vxlan", "id", "1",
                               "dstport", "4789"], capture_output=True).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def host_input_drops() -> bool:
    r = subprocess.run(["nft", "-j", "list", "chain", "ip", "filter", "INPUT"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return False
    return any("chain" in i and i["chain"].get("policy") == "drop"
               for i in json.loads(r.stdout)["nftables"])


def test_overlay_vxlan_to_a_remote_vtep(drv: Drivers, outside: Outside) -> None:
    if not vxlan_supported():
        pytest.skip("this kernel has no vxlan link type (CONFIG_VXLAN) and cannot load modules")
    if host_input_drops():
        pytest.skip("the host's iptables INPUT policy is drop: VXLAN's UDP 4789 cannot arrive")
    o, name = outside, f"ov{outside.ns}"
    under_host, under_out = f"10.224.{o.octet}.2", f"10.224.{o.octet}.1"
    subnet, peer_ip = f"10.225.{o.octet}.0/24", f"10.225.{o.octet}.250"
    vni = 70000 + o.octet
    sh("ip", "addr", "add", f"{under_host}/24", "dev", o.nic)
    sh("ip", "-n", o.ns, "addr", "add", f"{under_out}/24", "dev", "ext")
    # the remote host: its own VTEP for the same VNI, with an address on the overlay subnet
    sh("ip", "-n", o.ns, "link", "add", "vxo", "type", "vxlan", "id", str(vni), "local",
       under_out, "remote", under_host, "dstport", "4789")
    sh("ip", "-n", o.ns, "addr", "add", f"{peer_ip}/24", "dev", "vxo")
    sh("ip", "-n", o.ns, "link", "set", "vxo", "up")
    drv.network(name, "overlay", subnet, f"10.225.{o.octet}.254", **{
        IFACE: o.nic, "com.docker.network.driver.overlay.vxlanid_list": str(vni),
        "silobox.overlay.peers": under_out})
    cid = drv.run(SERVE, name)
    s = drv.settings(cid, name)
    code, out = drv.exec(cid, f"cat /sys/class/net/eth0/mtu; ping -c1 -W2 {peer_ip}")
    assert code == 0 and out.splitlines()[0] == "1450", out
    r = wait_ok(lambda: o.run(http(s['IPAddress'])))
    assert r.stdout.strip() == "hi"
    h = drv.hns(name)
    assert h["Type"] == "Overlay" and h["VSID"] == vni and h["ManagementIP"] == under_host
    assert {"Type": "VSID", "Settings": {"VSID": vni}} in h["Policies"]
    vx = h["Silobox"]["VxlanDevice"]
    drv.api.remove_container(cid, force=True)
    drv.containers.remove(cid)
    drv.api.remove_network(name)
    drv.networks.remove(name)
    # the tunnel device went with the network; the NIC never left the host
    assert subprocess.run(["ip", "link", "show", vx], capture_output=True).returncode != 0
    assert under_host in sh("ip", "-o", "addr", "show", o.nic)


def test_overlay_allocates_a_vni(drv: Drivers, outside: Outside) -> None:
    if not vxlan_supported():
        pytest.skip("this kernel has no vxlan link type (CONFIG_VXLAN) and cannot load modules")
    o, name = outside, f"ova{outside.ns}"
    sh("ip", "addr", "add", f"10.226.{o.octet}.2/24", "dev", o.nic)
    drv.network(name, "overlay", f"10.227.{o.octet}.0/24", **{IFACE: o.nic})
    assert drv.hns(name)["VSID"] >= 4096


# ----- errors -----------------------------------------------------------------------------------
def test_unsupported_combinations_are_refused(drv: Drivers, outside: Outside,
                                              silod: Any) -> None:
    import docker.errors
    o = outside
    sub = f"10.228.{o.octet}.0/24"

    def refused(match: str, driver: str, subnet: str | None = sub, internal: bool = False,
                **opts: str) -> None:
        name = f"bad{secrets.token_hex(3)}"
        ipam = {"Driver": "default", "Config": [{"Subnet": subnet}] if subnet else []}
        with pytest.raises(docker.errors.APIError, match=match) as e:
            drv.network(name, driver, subnet or "", None, **opts) if subnet else \
                drv.api.create_network(name, driver=driver, options=opts, ipam=ipam,
                                       internal=internal)
        assert 400 <= e.value.status_code < 500
        assert name not in [n["Name"] for n in drv.api.networks()]

    refused("plugin \"macvlan\" not found", "macvlan")
    refused("needs the host interface", "transparent")
    refused("needs --subnet", "l2bridge", None, **{IFACE: o.nic})
    refused("not found on the host", "transparent", **{IFACE: "sbxnonexist0"})
    refused("the nat driver has no uplink", "nat", **{IFACE: o.nic})
    refused("only valid with -d overlay", "transparent",
            **{IFACE: o.nic, "com.docker.network.driver.overlay.vxlanid_list": "5000"})
    refused("not supported by silobox", "transparent",
            **{IFACE: o.nic, "com.docker.network.windowsshim.vlanid": "7"})
    refused("--internal is not supported", "transparent", None, internal=True,
            **{IFACE: o.nic})
    refused("no IPv4 address", "overlay", **{IFACE: o.nic})
    sh("ip", "addr", "add", f"10.229.{o.octet}.2/24", "dev", o.nic)
    refused("carries host addresses", "l2bridge", **{IFACE: o.nic})
    sh("ip", "addr", "flush", "dev", o.nic)
    # one NIC, one network; and no port mappings on an external network
    name = f"tr{o.ns}"
    drv.network(name, "transparent", sub, **{IFACE: o.nic})
    refused("already used by another network", "l2bridge", f"10.230.{o.octet}.0/24",
            **{IFACE: o.nic})
    with pytest.raises(docker.errors.APIError, match="port mappings are not supported"):
        hc = drv.api.create_host_config(network_mode=name, port_bindings={80: 8080})
        drv.containers.append(drv.api.create_container(IMAGE, ["true"], host_config=hc)["Id"])
    remove_and_check_nic(drv, name, o)


# ----- silod restarts ---------------------------------------------------------------------------
def test_external_network_survives_kill9_and_clean_restart(drv: Drivers, outside: Outside,
                                                           silod: Any) -> None:
    o, name = outside, f"rs{outside.ns}"
    subnet, gw = f"10.231.{o.octet}.0/24", f"10.231.{o.octet}.1"
    sh("ip", "-n", o.ns, "addr", "add", f"{gw}/24", "dev", "ext")
    drv.network(name, "l2bridge", subnet, gw, **{IFACE: o.nic})
    cid = drv.run(SERVE, name)
    ip = drv.settings(cid, name)["IPAddress"]
    wait_ok(lambda: o.run(http(ip)))
    silod.kill9()
    silod.start()
    drv.api = silod.client
    # the container keeps its address and the MAC rewrite is rebuilt from the store
    sh("ip", "-n", o.ns, "neigh", "flush", "all")
    wait_ok(lambda: o.run(http(ip)))
    assert o.neighbour_mac(ip) == o.nic_mac
    drv.api.remove_container(cid, force=True)
    drv.containers.remove(cid)
    # a clean stop with no endpoint left gives the NIC back; the next start takes it again
    silod.stop()
    assert link_mac(o.nic) == o.nic_mac
    silod.start()
    drv.api = silod.client
    assert subprocess.run(["ip", "link", "show", o.nic], capture_output=True).returncode != 0
    cid = drv.run(SERVE, name)
    ip = drv.settings(cid, name)["IPAddress"]
    wait_ok(lambda: o.run(http(ip)))
    remove_and_check_nic(drv, name, o)


def test_missing_nic_degrades_the_network_not_silod(drv: Drivers, outside: Outside,
                                                    silod: Any) -> None:
    import docker.errors
    o, name = outside, f"dg{outside.ns}"
    drv.network(name, "transparent", f"10.232.{o.octet}.0/24", **{IFACE: o.nic})
    silod.stop()
    o.close()   # the NIC disappears while silod is down
    silod.start()
    drv.api = silod.client
    h = drv.hns(name)
    assert "not found" in h["Silobox"]["Degraded"]
    with pytest.raises(docker.errors.APIError, match="is not available") as e:
        drv.run("true", name)
    assert e.value.status_code == 503
    drv.api.remove_network(name)
    drv.networks.remove(name)
