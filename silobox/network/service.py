"""The Host Networking Service: HostComputeNetwork/Endpoint/Namespace records and their kernel form.

Records live in silod's store (the single source of truth); the kernel is derived from them and
reconciled at every silod start: missing pieces are rebuilt, links/namespaces/tables with this
daemon's prefix that the store does not own are removed, nothing else is touched.

Linux mechanisms, per Windows object:

* vSwitch (internal, for ``nat``): a bridge in silobox's own "vSwitch" network namespace. The
  bridge is not in the host's namespace because bridged frames pass the host's IP ``forward``
  hook (br_netfilter), where other engines' iptables-nft chains may drop them; in our own
  namespace the bridge is plain L2, so containers of one network always reach each other.
* host vNIC ``vEthernet (<net>)``: a veth whose host end (``sbx…nat<k>``) holds the gateway
  address and the alias, and whose other end is a bridge port.
* WinNAT (OutBoundNAT + PortMapping policies): one nftables table (``nft.py``).
* compartment (HostComputeNamespace): a network namespace file ``<exec-root>/netns/<GUID>``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import socket
import time
from typing import Any

from silobox.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, Unavailable
from silobox.network import drivers as D
from silobox.network import forwarding as F
from silobox.network import ipam as I
from silobox.network import nft as N
from silobox.network import policies as P
from silobox.network.netlink import Netlink, is_netns
from silobox.network.objects import PortMapping, new_guid, policy_json, port_mapping_from

log = logging.getLogger("silobox.network")
logging.getLogger("pyroute2").setLevel(logging.WARNING)

DEFAULT_ROOT = "/var/lib/silobox"
HNS_VERSION = (9 << 32) | 2
EXTENSIONS = [
    {"Id": "E7C3B2F0-F3C5-48DF-AF2B-10FED6D72E7A", "IsEnabled": False,
     "Name": "Microsoft Windows Filtering Platform"},
    {"Id": "E9B59CFA-2BE1-4B21-828F-B6FBDBDDC017", "IsEnabled": False,
     "Name": "Microsoft Azure VFP Switch Extension"},
    {"Id": "EA24CD6C-D17A-4348-9190-09F0D5BE83DD", "IsEnabled": True,
     "Name": "Microsoft NDIS Capture"},
]


def daemon_tag(root: str) -> str:
    """'' for the default daemon; 4 digits derived from the root for any other one.

    Every link name is ``sbx<tag>…``, so several daemons on one host never reconcile away each
    other's objects (digits cannot start the default daemon's ``nat``/``v`` suffixes)."""
    if os.path.abspath(root) == DEFAULT_ROOT:
        return ""
    return f"{int(hashlib.sha1(root.encode()).hexdigest(), 16) % 10000:04d}"


class HostNetworkingService:
    """HNS: create/delete/list networks and endpoints; attach endpoints to compartments."""

    def __init__(self, db: Any, root: str, exec_root: str, *, ip_forward: bool = True,
                 forward_rules: bool = True) -> None:
        self.db = db
        db.migrate("network", I.SCHEMA)
        self.ipam = I.Ipam(db)
        tag = daemon_tag(root)
        self.prefix = "sbx" + tag
        self.table = "silobox" + (f"_{tag}" if tag else "")
        self.netns_dir = os.path.join(exec_root, "netns")
        self.netlink = Netlink(os.path.join(self.netns_dir, "vswitch"))
        self._nft: N.Nft | None = None
        self.forwarding = F.HostForwarding(lambda: self.nft, self.table, {self.table},
                                           f"{os.getpid()} {os.path.abspath(root)}",
                                           manage_sysctl=ip_forward,
                                           manage_rules=forward_rules)
        self.networks: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        for r in db.query("SELECT data FROM hns_networks"):
            n = json.loads(r["data"])
            self.networks[n["ID"]] = n
        for r in db.query("SELECT data FROM hns_endpoints"):
            e = json.loads(r["data"])
            self.endpoints[e["ID"]] = e

    @property
    def nft(self) -> N.Nft:
        if self._nft is None:
            self._nft = N.Nft()
        return self._nft

    # ----- names of kernel objects -------------------------------------------------------------
    def host_port(self, n: dict[str, Any]) -> str:
        return f"{self.prefix}nat{n['Index']}"

    def bridge(self, n: dict[str, Any]) -> str:
        return f"{self.prefix}br{n['Index']}"

    def switch_port(self, n: dict[str, Any]) -> str:
        return f"{self.prefix}hp{n['Index']}"

    def vxlan_port(self, n: dict[str, Any]) -> str:
        return f"{self.prefix}vx{n['Index']}"

    @staticmethod
    def driver(n: dict[str, Any]) -> str:
        """Docker's driver name of a network (records older than the drivers are nat)."""
        return n.get("Driver", "nat")

    def nat_networks(self) -> list[dict[str, Any]]:
        return [n for n in self.networks.values() if self.driver(n) == "nat"]

    def routed_networks(self) -> list[F.RoutedNetwork]:
        """Networks whose containers the host forwards for: nat ones that are not internal
        (the external drivers switch in the vSwitch namespace, the host never routes them)."""
        return [F.RoutedNetwork(n["Name"], self.host_port(n), n["Subnets"][0]["AddressPrefix"],
                                (self.subnet6(n) or {}).get("AddressPrefix", ""))
                for n in self.nat_networks() if not n["Internal"] and not n.get("Degraded")]

    def sync_forwarding(self) -> None:
        self.forwarding.sync(self.routed_networks())

    @staticmethod
    def subnet6(n: dict[str, Any]) -> dict[str, Any] | None:
        """The IPv6 subnet record of an ``--ipv6`` network (the IPv4 one is always first)."""
        return next((s for s in n["Subnets"][1:] if ":" in s["AddressPrefix"]), None)

    def uplink(self, n: dict[str, Any]) -> str:
        """The host NIC bound to an external vSwitch ('' for nat and NIC-less overlay)."""
        return (n.get("Uplink") or {}).get("Interface", "")

    def endpoint_port(self, endpoint_id: str) -> str:
        room = 15 - len(self.prefix) - 1
        return f"{self.prefix}v{endpoint_id.replace('-', '').lower()[:room]}"

    def netns_path(self, namespace_id: str) -> str:
        return os.path.join(self.netns_dir, namespace_id)

    # ----- persistence -------------------------------------------------------------------------
    def _save_network(self, n: dict[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO hns_networks (id, name, data) VALUES (?, ?, ?)",
                        (n["ID"], n["Name"], json.dumps(n)))

    def _save_endpoint(self, e: dict[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO hns_endpoints (id, network_id, data) "
                        "VALUES (?, ?, ?)", (e["ID"], e["VirtualNetwork"], json.dumps(e)))

    # ----- start-up: reconcile the kernel with the store -----------------------------------
    async def start(self, fixed_cidr: str | None = None) -> None:
        await self.netlink.run(self.netlink.ensure_netns, self.netlink.switch_path)
        if not any(n["Name"] == "nat" for n in self.networks.values()):
            await self.create_network("nat", subnet=fixed_cidr or None, default=True)
        for n in list(self.networks.values()):
            try:
                await self._realise_network(n)
                n.pop("Degraded", None)
            except Exception as e:
                if self.driver(n) == "nat":
                    raise
                # A missing NIC must not keep silod down: the network reports it and its
                # containers fail to start with the reason until the NIC is back.
                log.warning("network %s cannot be realised: %s", n["Name"], e)
                n["Degraded"] = str(e)
        await self.netlink.run(self._remove_orphan_links)
        self.apply_rules()
        await self.apply_switch_rules()
        self.sync_forwarding()

    def _remove_orphan_links(self) -> None:
        owned_host = {self.host_port(n) for n in self.nat_networks()}
        for name in self.netlink.link_names("host"):
            if self._ours_on_host(name) and name not in owned_host:
                log.info("removing orphan link %s", name)
                self.netlink.delete_link("host", name)
        owned_sw = {"lo"} | {self.bridge(n) for n in self.networks.values()} | \
            {self.switch_port(n) for n in self.networks.values()} | \
            {self.endpoint_port(e["ID"]) for e in self.endpoints.values()} | \
            {self.vxlan_port(n) for n in self.networks.values()} | \
            {self.uplink(n) for n in self.networks.values() if self.driver(n) != "overlay"}
        for name in self.netlink.link_names("switch"):
            if name in owned_sw:
                continue
            if name.startswith(self.prefix):
                self.netlink.delete_link("switch", name)
            else:  # a NIC of a network the store no longer has: back to the host
                log.info("returning network interface %s to the host", name)
                self.netlink.release_uplink(name, None, False)

    def _ours_on_host(self, name: str) -> bool:
        rest = name[len(self.prefix):] if name.startswith(self.prefix) else None
        return rest is not None and any(rest.startswith(k) and rest[len(k):].isdigit()
                                        for k in ("nat", "vx"))

    def reconcile_endpoints(self, live_containers: set[str]) -> None:
        """After container recovery: endpoints of containers no longer running, and namespace
        files nobody owns, are removed; their leases are released."""
        for e in list(self.endpoints.values()):
            ns = e.get("Namespace", {}).get("ID", "")
            if e.get("ContainerId") not in live_containers or not is_netns(self.netns_path(ns)):
                self._drop_endpoint(e)
        owned = {e.get("Namespace", {}).get("ID") for e in self.endpoints.values()}
        try:
            names = os.listdir(self.netns_dir)
        except FileNotFoundError:
            names = []
        for name in names:
            if name != "vswitch" and name not in owned:
                self.netlink.call(self.netlink.remove_netns, os.path.join(self.netns_dir, name))
        self.apply_rules()
        if any(self.driver(n) in ("l2bridge", "l2tunnel") for n in self.networks.values()):
            self.netlink.call(self.netlink.switch_nft, self._switch_rules())

    async def close(self) -> None:
        """silod stops. Running containers keep their vNICs; with none left, the kernel objects
        go too (the store keeps the records, the next start rebuilds them)."""
        if not self.endpoints:
            try:
                for n in self.networks.values():
                    await self._release_uplink(n)
                for n in self.nat_networks():
                    await self.netlink.run(self.netlink.delete_link, "host", self.host_port(n))
                await self.netlink.run(self.netlink.remove_netns, self.netlink.switch_path)
                self.remove_everything()
                self.forwarding.close()
            except Exception as e:  # best effort: the next start reconciles
                log.warning("network teardown at stop: %s", e)
        self.netlink.close()
        if self._nft is not None:
            self._nft.close()

    # ----- networks ---------------------------------------------------------------------------
    def find_network(self, ref: str) -> dict[str, Any]:
        if not ref:
            raise NotFound("network  not found")
        for n in self.networks.values():
            if n["Name"] == ref:
                return n
        for n in self.networks.values():
            if n["ID"].lower() == ref.lower() or n["DockerId"] == ref:
                return n
        found = [n for n in self.networks.values()
                 if n["DockerId"].startswith(ref.lower()) or n["ID"].lower().startswith(ref.lower())]
        if len(found) == 1:
            return found[0]
        raise NotFound(f"network {ref} not found", object_id=ref)

    def _occupied(self, host: bool = True) -> list[tuple[str, int]]:
        """Host routes and addresses, and our networks' subnets: a new subnet must avoid all."""
        occ = list(self.netlink.call(self.netlink.host_routes)) if host else []
        occ += [(n["Subnets"][0]["AddressPrefix"].split("/")[0],
                 int(n["Subnets"][0]["AddressPrefix"].split("/")[1]))
                for n in self.networks.values()]
        return occ

    async def create_network(self, name: str, *, subnet: str | None = None,
                             gateway: str | None = None, ip_range: str | None = None,
                             internal: bool = False, labels: dict[str, str] | None = None,
                             options: dict[str, str] | None = None,
                             default: bool = False, driver: str = "nat", ipv6: bool = False,
                             subnet6: str | None = None, gateway6: str | None = None,
                             ip_range6: str | None = None) -> dict[str, Any]:
        """HNS ``POST /networks``: a nat network with its vSwitch, host vNIC and NAT, or an
        external one (``drivers.py``) on a host NIC or a VXLAN tunnel."""
        if any(n["Name"] == name for n in self.networks.values()):
            raise AlreadyExists(f"network with name {name} already exists")
        if (subnet6 or gateway6) and not ipv6:
            raise InvalidArgument("an IPv6 subnet or gateway needs --ipv6 (EnableIPv6)")
        ds = D.parse(driver, options or {}, subnet=subnet, internal=internal, ipv6=ipv6,
                     used_interfaces={self.uplink(n) for n in self.networks.values()} - {""},
                     used_vnis={n.get("Vni", 0) for n in self.networks.values()})
        uplink: dict[str, Any] = {}
        if ds.interface:
            info = await self.netlink.run(self.netlink.nic_info, ds.interface)
            D.check_interface(ds.driver, ds.interface, info, self._ours_on_host(ds.interface))
            assert info is not None
            uplink = {"Interface": ds.interface, "Mac": info["mac"], "Up": info["up"],
                      "Mtu": info["mtu"], "IPv4": info["ipv4"]}
        elif ds.driver == "overlay":
            raise InvalidArgument(f"the overlay driver needs the host interface of the underlay: "
                                  f"-o {D.OPT_INTERFACE}=IFNAME (its address is the local VTEP)")
        # The subnet of an external network lives outside the host: only our own networks'
        # subnets must not overlap it.
        occupied = self._occupied() if ds.driver == "nat" else self._occupied(host=False)
        if subnet:
            try:
                net = ipaddress.IPv4Network(subnet, strict=False)
            except ValueError as e:
                raise InvalidArgument(f"invalid subnet {subnet}: {e}") from None
            if net.prefixlen > 30:
                raise InvalidArgument(f"subnet {subnet} is too small")
            if I.free_subnet(occupied, [str(net)]) is None:
                raise Conflict(f"Pool overlaps with other one on this address space: {net} "
                               f"overlaps {self._overlapped(net, occupied)}")
        else:
            free = I.free_subnet(occupied, I.default_candidates())
            if free is None:
                raise Conflict("could not find an available, non-overlapping IPv4 address pool "
                               "among the defaults to assign to the network")
            net = ipaddress.IPv4Network(free)
        if gateway:
            gw = ipaddress.IPv4Address(gateway)
            if gw not in net:
                raise InvalidArgument(f"no matching subnet for gateway {gateway}")
        else:
            gw = net.network_address + 1
        v6: dict[str, Any] | None = None
        if ipv6:
            v6 = self._ipv6_subnet(subnet6, gateway6, ip_range6)
        elif ip_range6:
            raise InvalidArgument("an IPv6 range needs --ipv6 (EnableIPv6)")
        if ip_range:
            r = ipaddress.IPv4Network(ip_range, strict=False)
            if not r.subnet_of(net):
                raise InvalidArgument(f"no matching subnet for range {ip_range}")
            ip_range = str(r)
        used_idx = {n["Index"] for n in self.networks.values()}
        index = next(i for i in range(10000) if i not in used_idx)
        nid = new_guid()
        pools = [(I.mac_value(n["MacPools"][0]["StartMacAddress"]),
                  I.mac_value(n["MacPools"][0]["EndMacAddress"])) for n in self.networks.values()]
        start, end = I.new_mac_pool(pools)
        if ds.driver == "nat":
            policies = [] if internal else [policy_json(_outbound())]
        elif ds.driver == "overlay":
            policies = [{"Type": "VSID", "Settings": {"VSID": ds.vni}}]
        else:
            policies = []
        n: dict[str, Any] = {
            "ID": nid, "Name": name, "Type": D.HNS_TYPES[ds.driver], "Driver": ds.driver,
            "Index": index, "Uplink": uplink,
            "DockerId": nid.replace("-", "").lower() + hashlib.sha256(nid.encode()).hexdigest()[:32],
            "ActivityId": new_guid(), "LayeredOn": new_guid(),
            "NatName": f"NAT{new_guid()}", "Version": HNS_VERSION, "Flags": 0, "State": 1,
            "Subnets": [{"AddressPrefix": str(net), "GatewayAddress": str(gw), "ID": new_guid(),
                         "Policies": [], "State": 0, "AdditionalParams": {}}],
            "MacPools": [{"StartMacAddress": I.mac_text(start, "-").upper(),
                          "EndMacAddress": I.mac_text(end, "-").upper()}],
            "IPRange": ip_range or "", "Internal": bool(internal), "Labels": labels or {},
            "Options": options or {}, "Default": default,
            "Policies": policies,
            "Created": time.time(), "TotalEndpoints": 0, "MaxConcurrentEndpoints": 0,
        }
        if v6:
            n["Subnets"].append(v6)
            n["IPv6"] = True
        if ds.driver == "overlay":
            n.update(Vni=ds.vni, Peers=ds.peers, VxlanPort=ds.vxlan_port,
                     LocalVtep=uplink["IPv4"][0])
        if ds.driver in ("l2bridge", "l2tunnel"):
            # The uplink's own port takes a MAC of the pool; the NIC's MAC stands for the
            # containers outside (see drivers.py).
            n["SourceMac"] = uplink["Mac"]
        with self.db.tx():
            self._save_network(n)
            if ds.driver == "nat":
                n["HostMac"] = self.ipam.allocate_mac(nid, (start, end), "host")
            elif ds.driver in ("l2bridge", "l2tunnel"):
                n["UplinkPortMac"] = self.ipam.allocate_mac(nid, (start, end), "uplink")
            self._save_network(n)
        self.networks[nid] = n
        try:
            await self._realise_network(n)
        except BaseException:
            await self.delete_network(nid, force=True)
            raise
        self.apply_rules()
        await self.apply_switch_rules()
        self.sync_forwarding()
        return n

    def _overlapped(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network,
                    occupied: list[tuple[str, int]]) -> str:
        """What a new subnet overlaps, named for the user: a network of ours or a host route."""
        for n in self.networks.values():
            for s in n["Subnets"]:
                other = ipaddress.ip_network(s["AddressPrefix"], strict=False)
                if other.version == net.version and other.overlaps(net):  # type: ignore[arg-type]
                    return f"the subnet {other} of network {n['Name']}"
        for address, length in occupied:
            other = ipaddress.ip_network(f"{address}/{length}", strict=False)
            if other.version == net.version and other.overlaps(net):  # type: ignore[arg-type]
                return f"{other}, a route or address of this host"
        return "a host route or another network"

    def _ipv6_subnet(self, subnet6: str | None, gateway6: str | None,
                     ip_range6: str | None = None) -> dict[str, Any]:
        """The IPv6 subnet record of a new network: the given one, or a random ULA /64, and
        the range its addresses are leased from (``--ip-range``)."""
        if subnet6:
            try:
                net6 = ipaddress.IPv6Network(subnet6, strict=False)
            except ValueError as e:
                raise InvalidArgument(f"invalid subnet {subnet6}: {e}") from None
            if net6.prefixlen > 120:
                raise InvalidArgument(f"subnet {subnet6} is too small")
        occupied = list(self.netlink.call(self.netlink.host_routes6))
        occupied += [(s["AddressPrefix"].split("/")[0], int(s["AddressPrefix"].split("/")[1]))
                     for n in self.networks.values() for s in n["Subnets"][1:]
                     if ":" in s["AddressPrefix"]]
        free = I.free_subnet6(occupied, subnet6)
        if free is None:
            if not subnet6:
                raise Conflict("could not find an available IPv6 address pool")
            raise Conflict(f"Pool overlaps with other one on this address space: {net6} "
                           f"overlaps {self._overlapped(net6, occupied)}")
        net6 = ipaddress.IPv6Network(free)
        range6 = ""
        if ip_range6:
            try:
                r6 = ipaddress.IPv6Network(ip_range6, strict=False)
            except ValueError as e:
                raise InvalidArgument(f"invalid range {ip_range6}: {e}") from None
            if not r6.subnet_of(net6):
                raise InvalidArgument(f"no matching subnet for range {ip_range6}")
            range6 = str(r6)
        if gateway6:
            try:
                gw6 = ipaddress.IPv6Address(gateway6)
            except ValueError:
                raise InvalidArgument(f"invalid gateway {gateway6}") from None
            if gw6 not in net6:
                raise InvalidArgument(f"no matching subnet for gateway {gateway6}")
        else:
            gw6 = net6.network_address + 1
        record = {"AddressPrefix": str(net6), "GatewayAddress": str(gw6), "ID": new_guid(),
                  "Policies": [], "State": 0, "AdditionalParams": {}}
        if range6:
            record["IPRange"] = range6
        return record

    async def _realise_network(self, n: dict[str, Any]) -> None:
        s = n["Subnets"][0]
        kind = self.driver(n)
        if kind in D.EXTERNAL:
            await self.netlink.run(self.netlink.adopt_uplink, self.bridge(n), self.uplink(n),
                                   n.get("UplinkPortMac"), kind != "l2tunnel")
            return
        if kind == "overlay":
            await self.netlink.run(self.netlink.ensure_vxlan, self.vxlan_port(n), self.bridge(n),
                                   n["Vni"], n["LocalVtep"], n["VxlanPort"], n["Peers"])
            return
        await self.netlink.run(
            self.netlink.ensure_vswitch, self.bridge(n), self.host_port(n), self.switch_port(n),
            s["GatewayAddress"], int(s["AddressPrefix"].split("/")[1]),
            f"vEthernet ({n['Name']})", n["HostMac"], self._gateway6(n))

    def _gateway6(self, n: dict[str, Any]) -> tuple[str, int] | None:
        s6 = self.subnet6(n)
        if s6 is None:
            return None
        return s6["GatewayAddress"], int(s6["AddressPrefix"].split("/")[1])

    async def delete_network(self, ref: str, force: bool = False) -> dict[str, Any]:
        """HNS ``DELETE /networks/<id>``; refused while endpoints exist unless ``force``."""
        n = self.networks.get(ref) or self.find_network(ref)
        eps = [e for e in self.endpoints.values() if e["VirtualNetwork"] == n["ID"]]
        if eps and not force:
            raise Conflict(f"error while removing network: network {n['Name']} id {n['DockerId']} "
                           "has active endpoints")
        for e in eps:
            self._drop_endpoint(e)
        await self._release_uplink(n)
        if self.driver(n) == "overlay":
            await self.netlink.run(self.netlink.delete_link, "switch", self.vxlan_port(n))
            await self.netlink.run(self.netlink.delete_link, "host", self.vxlan_port(n))
        await self.netlink.run(self.netlink.remove_vswitch, self.bridge(n), self.host_port(n))
        with self.db.tx():
            self.ipam.release_network(n["ID"])
            self.db.execute("DELETE FROM hns_networks WHERE id = ?", (n["ID"],))
        self.networks.pop(n["ID"], None)
        self.apply_rules()
        await self.apply_switch_rules()
        self.sync_forwarding()
        return n

    async def _release_uplink(self, n: dict[str, Any]) -> None:
        """An external network's NIC goes back to the host with its own MAC and state."""
        if self.driver(n) in D.EXTERNAL:
            up = n["Uplink"]
            await self.netlink.run(self.netlink.release_uplink, up["Interface"], up["Mac"],
                                   up.get("Up", False))

    def find_endpoint(self, ref: str) -> dict[str, Any]:
        if ref:
            for e in self.endpoints.values():
                if e["ID"].lower() == ref.lower() or e["Name"] == ref:
                    return e
            found = [e for e in self.endpoints.values()
                     if e["ID"].replace("-", "").lower().startswith(ref.replace("-", "").lower())]
            if len(found) == 1:
                return found[0]
        raise NotFound(f"endpoint {ref} not found", object_id=ref)

    def endpoints_of(self, network_id: str) -> list[dict[str, Any]]:
        return [e for e in self.endpoints.values() if e["VirtualNetwork"] == network_id]

    # ----- endpoints --------------------------------------------------------------------------
    def create_endpoint(self, network: dict[str, Any], *, container_id: str, namespace_id: str,
                        name: str = "", ip: str | None = None, mac: str | None = None,
                        port_mappings: list[PortMapping] | None = None,
                        aliases: list[str] | None = None, ifname: str = "eth0",
                        ip6: str | None = None) -> dict[str, Any]:
        """HNS ``POST /endpoints``: address and MAC leased in one store transaction."""
        eid = new_guid()
        s = network["Subnets"][0]
        if port_mappings and self.driver(network) != "nat":
            raise InvalidArgument(f"port mappings are not supported on {self.driver(network)} "
                                  f"network {network['Name']}: its containers are reached at "
                                  "their own addresses")
        maps = self._resolve_ports(port_mappings or [])
        with self.db.tx():
            addr = self.ipam.allocate_ip(network["ID"], s["AddressPrefix"], s["GatewayAddress"],
                                         eid, ip, network.get("IPRange") or None,
                                         network.get("NextAddress"))
            if not ip:
                network["NextAddress"] = int(ipaddress.IPv4Address(addr)) + 1
            pool = (I.mac_value(network["MacPools"][0]["StartMacAddress"]),
                    I.mac_value(network["MacPools"][0]["EndMacAddress"]))
            mac_addr = self.ipam.allocate_mac(network["ID"], pool, eid, mac)
            s6 = self.subnet6(network)
            if ip6 and s6 is None:
                raise InvalidArgument(f"network {network['Name']} has no IPv6 subnet "
                                      f"(created without --ipv6): cannot assign {ip6}")
            v6 = {}
            if s6 is not None:
                v6 = {"IPv6Address": self.ipam.allocate_ip6(
                          network["ID"], s6["AddressPrefix"], s6["GatewayAddress"], eid, ip6,
                          s6.get("IPRange") or None),
                      "IPv6PrefixLength": int(s6["AddressPrefix"].split("/")[1]),
                      "GatewayAddressV6": s6["GatewayAddress"]}
            e = {
                "ID": eid, "Name": name or eid, "VirtualNetwork": network["ID"],
                "VirtualNetworkName": network["Name"], "IPAddress": addr,
                "PrefixLength": int(s["AddressPrefix"].split("/")[1]),
                "GatewayAddress": s["GatewayAddress"],
                "MacAddress": mac_addr.replace(":", "-").upper(),
                "Namespace": {"ID": namespace_id, "CompartmentId": 0},
                "Policies": [policy_json(m) for m in maps] + list(network["Policies"]),
                "State": 1, "ContainerId": container_id, "IfName": ifname,
                "Aliases": aliases or [], "EnableInternalDNS": False, "Created": time.time(),
                **v6,
            }
            self._save_endpoint(e)
            network["TotalEndpoints"] = network.get("TotalEndpoints", 0) + 1
            self.endpoints[eid] = e
            cur = len(self.endpoints_of(network["ID"]))
            network["MaxConcurrentEndpoints"] = max(network.get("MaxConcurrentEndpoints", 0), cur)
            self._save_network(network)
        return e

    def _resolve_ports(self, maps: list[PortMapping]) -> list[PortMapping]:
        """Pick host ports for ``-p 80`` and refuse ports another endpoint already maps."""
        taken = {(m.Protocol, m.ExternalPort, m.VIP) for m in self.all_port_mappings()}
        out = []
        for m in maps:
            if m.ExternalPort == 0:
                m = PortMapping(m.Protocol, m.InternalPort, _free_port(m.Protocol, taken), m.VIP)
            for vip in {m.VIP, ""} | ({t[2] for t in taken} if not m.VIP else set()):
                if (m.Protocol, m.ExternalPort, vip) in taken:
                    raise Conflict(f"Bind for {m.VIP or '0.0.0.0'}:{m.ExternalPort} failed: "
                                   "port is already allocated")
            taken.add((m.Protocol, m.ExternalPort, m.VIP))
            out.append(m)
        return out

    def all_port_mappings(self) -> list[PortMapping]:
        return [port_mapping_from(p) for e in self.endpoints.values()
                for p in e["Policies"] if p["Type"] == "PortMapping"]

    async def attach(self, e: dict[str, Any], create_ns: bool = True) -> None:
        """HNS ``/endpoints/<id>/attach``: the vNIC into the compartment (made here if new)."""
        n = self.networks[e["VirtualNetwork"]]
        if n.get("Degraded"):
            try:
                await self._realise_network(n)
                n.pop("Degraded", None)
            except Exception as err:
                raise Unavailable(f"network {n['Name']} is not available: {err}") from None
        gw = None if n["Internal"] or e["IfName"] != "eth0" else e["GatewayAddress"]
        kind = self.driver(n)
        mtu = 0
        if kind == "overlay":
            mtu = int(n["Uplink"].get("Mtu") or 1500) - D.VXLAN_OVERHEAD
        addresses = [(e["IPAddress"], e["PrefixLength"])]
        if e.get("IPv6Address"):
            addresses.append((e["IPv6Address"], e["IPv6PrefixLength"]))
        gw6 = e.get("GatewayAddressV6") if gw else None
        await self.netlink.run(
            self.netlink.create_endpoint, self.netns_path(e["Namespace"]["ID"]), self.bridge(n),
            self.endpoint_port(e["ID"]), e["MacAddress"].replace("-", ":").lower(),
            addresses, gw, e["IfName"], create_ns, mtu, kind == "l2tunnel", gw6)
        e["State"] = 2
        self._save_endpoint(e)
        if kind == "nat" and not n["Internal"]:
            self.forwarding.check(self.routed_networks())
        if any(p["Type"] == "PortMapping" for p in e["Policies"]):
            self.apply_rules()
        if kind in ("l2bridge", "l2tunnel"):
            await self.apply_switch_rules()

    def _drop_endpoint(self, e: dict[str, Any]) -> None:
        with self.db.tx():
            self.ipam.release(e["VirtualNetwork"], e["ID"])
            self.db.execute("DELETE FROM hns_endpoints WHERE id = ?", (e["ID"],))
        self.endpoints.pop(e["ID"], None)

    async def delete_endpoints(self, endpoint_ids: list[str], remove_namespace: str | None) -> None:
        """Endpoint delete; removing the namespace lets the kernel destroy the veths with it."""
        had_ports = had_l2 = False
        acl_namespaces = set()
        for eid in endpoint_ids:
            e = self.endpoints.get(eid)
            if e is None:
                continue
            if any(p["Type"] == "ACL" for p in e["Policies"]):
                acl_namespaces.add(e["Namespace"]["ID"])
            had_ports |= any(p["Type"] == "PortMapping" for p in e["Policies"])
            had_l2 |= self.driver(self.networks.get(e["VirtualNetwork"], {})) in (
                "l2bridge", "l2tunnel")
            if not remove_namespace:
                ns = self.netns_path(e["Namespace"]["ID"])
                if is_netns(ns):
                    await self.netlink.run(self.netlink.remove_endpoint_link, ns, e["IfName"])
            self._drop_endpoint(e)
        if remove_namespace:
            self.netlink.remove_netns(self.netns_path(remove_namespace))
        if had_ports:
            self.apply_rules()
        if had_l2:
            await self.apply_switch_rules()
        for ns_id in acl_namespaces - {remove_namespace}:
            if is_netns(self.netns_path(ns_id)):
                await self._apply_acls(ns_id)

    # ----- ACL and Route policies (HCN ModifyEndpoint) ----------------------------------------
    async def modify_endpoint_policies(self, ref: str, request_type: str,
                                       policies: list[dict[str, Any]]) -> dict[str, Any]:
        """HCN ``ModifyEndpoint`` with ResourceType Policy: ``Add``, ``Remove`` or ``Refresh``
        (replace) the endpoint's ACL and Route policies, enforced at once in its compartment.
        On a kernel error the previous policies are restored."""
        e = self.find_endpoint(ref)
        if not isinstance(policies, list):
            raise InvalidArgument("Policies must be a list")
        given = [P.normalise(p) for p in policies]
        fixed = [p for p in e["Policies"] if p["Type"] not in P.MUTABLE]
        current = [p for p in e["Policies"] if p["Type"] in P.MUTABLE]
        if request_type == "Add":
            result = current + [p for p in given if p not in current]
        elif request_type == "Remove":
            result = list(current)
            for p in given:
                pid = p["Settings"].get("Id") if p["Type"] == "ACL" else ""
                match = [q for q in result if q == p or (pid and q["Type"] == "ACL"
                                                         and q["Settings"].get("Id") == pid)]
                if not match:
                    raise NotFound(f"endpoint {e['ID']} has no such {p['Type']} policy")
                result = [q for q in result if q not in match]
        elif request_type in ("Refresh", "Update"):
            result = given
        else:
            raise InvalidArgument(f"RequestType must be Add, Remove or Refresh, not "
                                  f"{request_type!r}")
        before = e["Policies"]
        e["Policies"] = fixed + result
        if e.get("State") == 2:
            try:
                await self._apply_policies(e, before)
            except BaseException:
                after = e["Policies"]
                e["Policies"] = before
                try:
                    await self._apply_policies(e, after)
                except Exception as err:  # pragma: no cover - best effort
                    log.warning("restoring policies of %s: %s", e["ID"], err)
                raise
        self._save_endpoint(e)
        return e

    async def _apply_policies(self, e: dict[str, Any], before: list[dict[str, Any]]) -> None:
        old = P.routes({"Policies": before})
        new = P.routes(e)
        ns = self.netns_path(e["Namespace"]["ID"])
        await self.netlink.run(self.netlink.set_routes, ns, e["IfName"], new,
                               [r for r in old if r not in new])
        await self._apply_acls(e["Namespace"]["ID"])

    async def _apply_acls(self, namespace_id: str) -> None:
        """Regenerate the compartment's ACL table from all its endpoints, atomically."""
        eps = [e for e in self.endpoints.values() if e["Namespace"]["ID"] == namespace_id]
        t = {"family": "inet", "name": P.TABLE}
        cmds: list[dict[str, Any]] = [{"add": {"table": t}}, {"delete": {"table": t}}]
        if any(p["Type"] == "ACL" for e in eps for p in e["Policies"]):
            cmds += [{"add": {"table": t}}] + P.acl_ruleset(eps)
        await self.netlink.run(self.netlink.nft_in, self.netns_path(namespace_id), cmds)

    # ----- WinNAT: the nftables table ---------------------------------------------------------
    def apply_rules(self) -> None:
        """Regenerate our tables from the store and swap them in, in one transaction."""
        t4 = {"family": "ip", "name": self.table}
        t6 = {"family": "ip6", "name": self.table}
        cmds = [{"add": {"table": t4}}, {"delete": {"table": t4}}, {"add": {"table": t4}}]
        cmds += self._ruleset()
        cmds += [{"add": {"table": t6}}, {"delete": {"table": t6}}]
        v6 = [(self.host_port(n), s6["AddressPrefix"], n["Internal"])
              for n in self.nat_networks() if (s6 := self.subnet6(n))]
        if v6:
            cmds += [{"add": {"table": t6}}] + self._ruleset6(v6)
        self.nft.run(cmds)

    async def apply_switch_rules(self) -> None:
        """The vSwitch's bridge-family table: l2bridge/l2tunnel MAC rewrite (VFP's job)."""
        await self.netlink.run(self.netlink.switch_nft, self._switch_rules())

    def _switch_rules(self) -> list[dict[str, Any]]:
        nets = []
        for n in self.networks.values():
            if self.driver(n) in ("l2bridge", "l2tunnel"):
                eps = [(e["IPAddress"], e["MacAddress"].replace("-", ":").lower())
                       for e in self.endpoints_of(n["ID"]) if e.get("State") == 2]
                nets.append((self.uplink(n), n["SourceMac"], eps))
        t = {"family": "bridge", "name": "silobox"}
        if nets:
            cmds = [{"add": {"table": t}}, {"delete": {"table": t}}, {"add": {"table": t}}] + \
                D.mac_rewrite_rules("silobox", nets)
        else:
            cmds = [{"add": {"table": t}}, {"delete": {"table": t}}]
        return cmds

    def _ruleset(self) -> list[dict[str, Any]]:
        T = self.table

        def chain(name: str, **kw: Any) -> dict[str, Any]:
            return {"add": {"chain": {"family": "ip", "table": T, "name": name, **kw}}}

        def rule(ch: str, *expr: dict[str, Any]) -> dict[str, Any]:
            return {"add": {"rule": {"family": "ip", "table": T, "chain": ch, "expr": list(expr)}}}

        cmds = [
            chain("publish"),
            chain("prerouting", type="nat", hook="prerouting", prio=-100, policy="accept"),
            chain("output", type="nat", hook="output", prio=-100, policy="accept"),
            chain("postrouting", type="nat", hook="postrouting", prio=100, policy="accept"),
            chain("forward", type="filter", hook="forward", prio=-1, policy="accept"),
            rule("prerouting", N.fib_daddr_local(), {"jump": {"target": "publish"}}),
            rule("output", N.fib_daddr_local(), {"jump": {"target": "publish"}}),
        ]
        for e in self.endpoints.values():
            for p in e["Policies"]:
                if p["Type"] != "PortMapping":
                    continue
                m = port_mapping_from(p)
                expr = []
                if m.VIP:
                    expr.append(N.match(N.payload("ip", "daddr"), m.VIP))
                expr += [N.match(N.meta("l4proto"), m.proto_name),
                         N.match(N.payload("th", "dport"), m.ExternalPort),
                         {"dnat": {"addr": e["IPAddress"], "port": m.InternalPort}}]
                cmds.append(rule("publish", *expr))
        for n in self.nat_networks():
            hp = self.host_port(n)
            subnet = n["Subnets"][0]["AddressPrefix"]
            # 127.0.0.1 → published port: the source must become the gateway for the reply.
            cmds.append(rule("postrouting", N.match(N.meta("oifname"), hp),
                             N.match(N.payload("ip", "saddr"), N.prefix("127.0.0.0/8")),
                             {"masquerade": None}))
            # Hairpin: a container reaching a published port through a host address.
            cmds.append(rule("postrouting", N.match(N.meta("oifname"), hp),
                             N.match(N.payload("ip", "saddr"), N.prefix(subnet)),
                             N.match({"ct": {"key": "status"}}, "dnat", "in"),
                             {"masquerade": None}))
            if n["Internal"]:
                cmds.append(rule("forward", N.match(N.meta("iifname"), hp), {"drop": None}))
                cmds.append(rule("forward", N.match(N.meta("oifname"), hp), {"drop": None}))
                continue
            # OutBoundNAT: egress of the subnet leaving through any other link.
            cmds.append(rule("postrouting", N.match(N.payload("ip", "saddr"), N.prefix(subnet)),
                             N.match(N.meta("oifname"), hp, "!="), {"masquerade": None}))
            for other in self.nat_networks():
                if other is not n:
                    cmds.append(rule("forward", N.match(N.meta("iifname"), hp),
                                     N.match(N.meta("oifname"), self.host_port(other)),
                                     {"drop": None}))
        return cmds

    def _ruleset6(self, v6: list[tuple[str, str, bool]]) -> list[dict[str, Any]]:
        """IPv6 of nat networks: OutBoundNAT (masquerade) of a subnet leaving through another
        link, as Docker's default IPv6 bridge networks do; nothing from another link reaches a
        vNIC but replies (no published IPv6 ports); networks stay apart; internal ones route
        nothing. Host ↔ container and container ↔ container never pass this hook."""
        T = self.table

        def chain(name: str, **kw: Any) -> dict[str, Any]:
            return {"add": {"chain": {"family": "ip6", "table": T, "name": name, **kw}}}

        def rule(ch: str, *expr: dict[str, Any]) -> dict[str, Any]:
            return {"add": {"rule": {"family": "ip6", "table": T, "chain": ch,
                                     "expr": list(expr)}}}

        cmds = [chain("postrouting", type="nat", hook="postrouting", prio=100, policy="accept"),
                chain("forward", type="filter", hook="forward", prio=-1, policy="accept")]
        ports = [hp for hp, _, _ in v6]
        for hp, subnet6, internal in v6:
            if internal:
                cmds.append(rule("forward", N.match(N.meta("iifname"), hp), {"drop": None}))
                cmds.append(rule("forward", N.match(N.meta("oifname"), hp), {"drop": None}))
                continue
            cmds.append(rule("postrouting",
                             N.match(N.payload("ip6", "saddr"), N.prefix(subnet6)),
                             N.match(N.meta("oifname"), hp, "!="), {"masquerade": None}))
            for other in ports:
                if other != hp:
                    cmds.append(rule("forward", N.match(N.meta("iifname"), hp),
                                     N.match(N.meta("oifname"), other), {"drop": None}))
            cmds.append(rule("forward", N.match(N.meta("oifname"), hp),
                             N.match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                             {"accept": None}))
            cmds.append(rule("forward", N.match(N.meta("oifname"), hp), {"drop": None}))
        return cmds

    def remove_everything(self) -> None:
        """Used by tests and uninstall: our table goes; the rest of the ruleset stays."""
        self.nft.delete_table("ip", self.table)
        self.nft.delete_table("ip6", self.table)


def _outbound() -> Any:
    from silobox.network.objects import OutBoundNAT
    return OutBoundNAT()


def _free_port(proto: int, taken: set[tuple[int, int, str]]) -> int:
    """A host port for ``-p 80``: one the kernel reports free, not mapped by another endpoint."""
    kind = socket.SOCK_DGRAM if proto == 17 else socket.SOCK_STREAM
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        if not any(t[0] == proto and t[1] == port for t in taken):
            return port
    raise Conflict("no free host port for the port mapping")
