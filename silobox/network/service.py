"""The Host Networking Service: owner of the HostComputeNetwork/Endpoint/Namespace records.

Records (``objects.py``) live in silod's store, the single source of truth; the kernel is
derived from them and reconciled at every silod start: each network's driver (``drivers/``)
restores what is missing, links/namespaces/tables with this daemon's prefix that the store
does not own are removed, nothing else is touched. This service keeps what spans networks:
IPAM (``ipam.py``), the WinNAT table (``winnat.py``), host forwarding (``forwarding.py``),
the vSwitch's MAC rewrite table, endpoint policies (``policies.py``), and the compartments:
a HostComputeNamespace is a network namespace file ``<exec-root>/netns/<GUID>``, made by its
first endpoint's attach and removed once, in the netlink worker, whoever asks first.
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
from silobox.network import winnat as W
from silobox.network.netlink import Netlink, is_netns
from silobox.network.objects import (HostComputeEndpoint, HostComputeNamespace,
                                     HostComputeNetwork, PortMapping, new_guid, policy_json)

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
    """HNS: create/delete/list networks and endpoints; attach endpoints to compartments.

    The records (``objects.py``) are owned here; what a network is in the kernel is its
    driver's business (``drivers/``); the host's NAT table and forwarding are this service's."""

    def __init__(self, db: Any, root: str, exec_root: str, *, ip_forward: bool = True,
                 forward_rules: bool = True, netlink: Any = None) -> None:
        self.db = db
        db.migrate("network", I.SCHEMA)
        self.ipam = I.Ipam(db)
        tag = daemon_tag(root)
        self.prefix = "sbx" + tag
        self.table = "silobox" + (f"_{tag}" if tag else "")
        self.netns_dir = os.path.join(exec_root, "netns")
        self.netlink = netlink or Netlink(os.path.join(self.netns_dir, "vswitch"))
        self.names = D.Names(self.prefix)
        self.drivers = D.Drivers(self.netlink, self.names)
        self._nft: N.Nft | None = None
        self.forwarding = F.HostForwarding(lambda: self.nft, self.table, {self.table},
                                           f"{os.getpid()} {os.path.abspath(root)}",
                                           manage_sysctl=ip_forward,
                                           manage_rules=forward_rules)
        self.networks: dict[str, HostComputeNetwork] = {}
        self.endpoints: dict[str, HostComputeEndpoint] = {}
        # The same endpoints by container and by network, so that starting, stopping and
        # removing one container looks only at its own (not at every other one's).
        self._by_container: dict[str, dict[str, None]] = {}
        self._by_network: dict[str, dict[str, None]] = {}
        self.namespaces: dict[str, HostComputeNamespace] = {}
        for r in db.query("SELECT data FROM hns_networks"):
            n = HostComputeNetwork.from_json(json.loads(r["data"]))
            self.networks[n.ID] = n
        for r in db.query("SELECT data FROM hns_endpoints"):
            e = HostComputeEndpoint.from_json(json.loads(r["data"]))
            self._index_endpoint(e)
            if e.namespace_id:
                self._namespace(e.namespace_id, e.ContainerId).Endpoints.append(e.ID)

    @property
    def nft(self) -> N.Nft:
        if self._nft is None:
            self._nft = N.Nft()
        return self._nft

    # ----- names of kernel objects (the engine shows them) ----------------------------------
    def host_port(self, n: HostComputeNetwork) -> str:
        return self.names.host_port(n)

    def bridge(self, n: HostComputeNetwork) -> str:
        return self.names.bridge(n)

    def switch_port(self, n: HostComputeNetwork) -> str:
        return self.names.switch_port(n)

    def vxlan_port(self, n: HostComputeNetwork) -> str:
        return self.names.vxlan_port(n)

    def endpoint_port(self, endpoint_id: str) -> str:
        return self.names.endpoint_port(endpoint_id)

    def netns_path(self, namespace_id: str) -> str:
        return os.path.join(self.netns_dir, namespace_id)

    @staticmethod
    def driver(n: HostComputeNetwork | dict[str, Any]) -> str:
        """Docker's driver name of a network (records older than the drivers are nat)."""
        return n.get("Driver") or "nat"

    @staticmethod
    def subnet6(n: HostComputeNetwork) -> dict[str, Any] | None:
        """The IPv6 subnet record of an ``--ipv6`` network (the IPv4 one is always first)."""
        return n.subnet6

    @staticmethod
    def uplink(n: HostComputeNetwork) -> str:
        """The host NIC bound to an external vSwitch ('' for nat and NIC-less overlay)."""
        return n.nic

    def driver_of(self, n: HostComputeNetwork) -> D.NetworkDriver:
        return self.drivers.of(n)

    def nat_networks(self) -> list[HostComputeNetwork]:
        return [n for n in self.networks.values() if self.driver_of(n).routed]

    def routed_networks(self) -> list[F.RoutedNetwork]:
        """Networks whose containers the host forwards for: nat ones that are not internal
        (the external drivers switch in the vSwitch namespace, the host never routes them)."""
        return [F.RoutedNetwork(n.Name, self.host_port(n), n.subnet["AddressPrefix"],
                                (n.subnet6 or {}).get("AddressPrefix", ""))
                for n in self.nat_networks() if not n.Internal and not n.Degraded]

    def sync_forwarding(self) -> None:
        self.forwarding.sync(self.routed_networks())

    # ----- persistence -------------------------------------------------------------------------
    def save_network(self, n: HostComputeNetwork) -> None:
        self.db.execute("INSERT OR REPLACE INTO hns_networks (id, name, data) VALUES (?, ?, ?)",
                        (n.ID, n.Name, json.dumps(n.to_json())))

    _save_network = save_network   # the name the engine knows

    def _save_endpoint(self, e: HostComputeEndpoint) -> None:
        self.db.execute("INSERT OR REPLACE INTO hns_endpoints (id, network_id, data) "
                        "VALUES (?, ?, ?)", (e.ID, e.VirtualNetwork, json.dumps(e.to_json())))

    def _namespace(self, ns_id: str, container_id: str = "") -> HostComputeNamespace:
        ns = self.namespaces.get(ns_id)
        if ns is None:
            ns = self.namespaces[ns_id] = HostComputeNamespace(
                ns_id, self.netns_path(ns_id), container_id)
        return ns

    # ----- start-up: reconcile the kernel with the store -----------------------------------
    async def start(self, fixed_cidr: str | None = None) -> None:
        await self.netlink.run(self.netlink.ensure_netns, self.netlink.switch_path)
        if not any(n.Name == "nat" for n in self.networks.values()):
            await self.create_network("nat", subnet=fixed_cidr or None, default=True)
        for n in list(self.networks.values()):
            try:
                await self.driver_of(n).create(n)
                n.Degraded = ""
            except Exception as e:
                if self.driver_of(n).routed:
                    raise
                # A missing NIC must not keep silod down: the network reports it and its
                # containers fail to start with the reason until the NIC is back.
                log.warning("network %s cannot be realised: %s", n.Name, e)
                n.Degraded = str(e)
        await self.netlink.run(self._remove_orphan_links)
        self.apply_rules()
        await self.apply_switch_rules()
        self.sync_forwarding()

    def _remove_orphan_links(self) -> None:
        owned_host, owned_sw = set(), {"lo"}
        for n in self.networks.values():
            on_host, on_switch = self.driver_of(n).owned_links(n)
            owned_host |= on_host
            owned_sw |= on_switch
        owned_sw |= {self.endpoint_port(e.ID) for e in self.endpoints.values()}
        for name in self.netlink.link_names("host"):
            if self.names.ours_on_host(name) and name not in owned_host:
                log.info("removing orphan link %s", name)
                self.netlink.delete_link("host", name)
        for name in self.netlink.link_names("switch"):
            if name in owned_sw:
                continue
            if name.startswith(self.prefix):
                self.netlink.delete_link("switch", name)
            else:  # a NIC of a network the store no longer has: back to the host
                log.info("returning network interface %s to the host", name)
                self.netlink.release_uplink(name, None, False)

    def reconcile_endpoints(self, live_containers: set[str]) -> None:
        """After container recovery: endpoints of containers no longer running, and namespace
        files nobody owns, are removed; their leases are released."""
        for e in list(self.endpoints.values()):
            if e.ContainerId not in live_containers or \
                    (not e.in_guest and not is_netns(self.netns_path(e.namespace_id))):
                self._drop_endpoint(e)
                if e.in_guest:   # a VM's tap does not go with a namespace
                    self.netlink.call(self.netlink.delete_link, "switch",
                                      self.endpoint_port(e.ID))
        for ns_id in [i for i, ns in self.namespaces.items() if not ns.Endpoints]:
            del self.namespaces[ns_id]
        try:
            names = os.listdir(self.netns_dir)
        except FileNotFoundError:
            names = []
        for name in names:
            if name != "vswitch" and name not in self.namespaces:
                self.netlink.call(self.netlink.remove_netns, os.path.join(self.netns_dir, name))
        self.apply_rules()
        if any(self.driver_of(n).rewrites_macs for n in self.networks.values()):
            self.netlink.call(self.netlink.switch_nft, self._switch_rules())

    async def close(self) -> None:
        """silod stops. Running containers keep their vNICs; with none left, the kernel objects
        go too (the store keeps the records, the next start rebuilds them)."""
        if not self.endpoints:
            try:
                for n in self.networks.values():
                    await self.driver_of(n).release(n)
                await self.netlink.run(self.netlink.remove_netns, self.netlink.switch_path)
                self.remove_everything()
                self.forwarding.close()
            except Exception as e:  # best effort: the next start reconciles
                log.warning("network teardown at stop: %s", e)
        self.netlink.close()
        if self._nft is not None:
            self._nft.close()

    # ----- networks ---------------------------------------------------------------------------
    def find_network(self, ref: str) -> HostComputeNetwork:
        if not ref:
            raise NotFound("network  not found")
        for n in self.networks.values():
            if n.Name == ref:
                return n
        for n in self.networks.values():
            if n.ID.lower() == ref.lower() or n.DockerId == ref:
                return n
        found = [n for n in self.networks.values()
                 if n.DockerId.startswith(ref.lower()) or n.ID.lower().startswith(ref.lower())]
        if len(found) == 1:
            return found[0]
        raise NotFound(f"network {ref} not found", object_id=ref)

    def _occupied(self, host: bool = True) -> list[tuple[str, int]]:
        """Host routes and addresses, and our networks' subnets: a new subnet must avoid all."""
        occ = list(self.netlink.call(self.netlink.host_routes)) if host else []
        occ += [(n.subnet["AddressPrefix"].split("/")[0], n.prefix_length)
                for n in self.networks.values()]
        return occ

    def _subnets(self) -> list[tuple[str, list[str]]]:
        """Each network's name and subnets: a new network's must not overlap them."""
        return [(n.Name, [x["AddressPrefix"] for x in n.Subnets]) for n in self.networks.values()]

    async def create_network(self, name: str, *, subnet: str | None = None,
                             gateway: str | None = None, ip_range: str | None = None,
                             internal: bool = False, labels: dict[str, str] | None = None,
                             options: dict[str, str] | None = None,
                             default: bool = False, driver: str = "nat", ipv6: bool = False,
                             subnet6: str | None = None, gateway6: str | None = None,
                             ip_range6: str | None = None) -> HostComputeNetwork:
        """HNS ``POST /networks``: the record (subnets, MAC pool, the driver's fields), then
        the driver makes it exist in the kernel."""
        if any(n.Name == name for n in self.networks.values()):
            raise AlreadyExists(f"network with name {name} already exists")
        if (subnet6 or gateway6) and not ipv6:
            raise InvalidArgument("an IPv6 subnet or gateway needs --ipv6 (EnableIPv6)")
        ds = D.parse(driver, options or {}, subnet=subnet, internal=internal, ipv6=ipv6,
                     used_interfaces={n.nic for n in self.networks.values()} - {""},
                     used_vnis={n.Vni or 0 for n in self.networks.values()})
        drv = self.drivers[ds.driver]
        uplink: dict[str, Any] = {}
        if ds.interface:
            info = await self.netlink.run(self.netlink.nic_info, ds.interface)
            drv.check_uplink(ds.interface, info, self.names.ours_on_host(ds.interface))
            assert info is not None
            uplink = {"Interface": ds.interface, "Mac": info["mac"], "Up": info["up"],
                      "Mtu": info["mtu"], "IPv4": info["ipv4"]}
        elif drv.uplink_required:
            raise InvalidArgument(drv.uplink_required)
        # The subnet of an external network lives outside the host: only our own networks'
        # subnets must not overlap it.
        occupied = self._occupied(host=drv.host_subnets_matter)
        net = I.choose_subnet(subnet, occupied, self._subnets())
        if gateway:
            gw = ipaddress.IPv4Address(gateway)
            if gw not in net:
                raise InvalidArgument(f"no matching subnet for gateway {gateway}")
        else:
            gw = net.network_address + 1
        v6: dict[str, Any] | None = None
        if ipv6:
            v6 = I.choose_subnet6(subnet6, gateway6, ip_range6,
                                  self.netlink.call(self.netlink.host_routes6), self._subnets())
            v6["ID"] = new_guid()
        elif ip_range6:
            raise InvalidArgument("an IPv6 range needs --ipv6 (EnableIPv6)")
        if ip_range:
            r = ipaddress.IPv4Network(ip_range, strict=False)
            if not r.subnet_of(net):
                raise InvalidArgument(f"no matching subnet for range {ip_range}")
            ip_range = str(r)
        used_idx = {n.Index for n in self.networks.values()}
        index = next(i for i in range(10000) if i not in used_idx)
        nid = new_guid()
        pools = [(I.mac_value(n.mac_pool[0]), I.mac_value(n.mac_pool[1]))
                 for n in self.networks.values()]
        start, end = I.new_mac_pool(pools)
        n = HostComputeNetwork(
            ID=nid, Name=name, Type=drv.hns_type, Driver=drv.name, Index=index, Uplink=uplink,
            DockerId=nid.replace("-", "").lower() + hashlib.sha256(nid.encode()).hexdigest()[:32],
            ActivityId=new_guid(), LayeredOn=new_guid(), NatName=f"NAT{new_guid()}",
            Version=HNS_VERSION, Flags=0, State=1,
            Subnets=[{"AddressPrefix": str(net), "GatewayAddress": str(gw), "ID": new_guid(),
                      "Policies": [], "State": 0, "AdditionalParams": {}}],
            MacPools=[{"StartMacAddress": I.mac_text(start, "-").upper(),
                       "EndMacAddress": I.mac_text(end, "-").upper()}],
            IPRange=ip_range or "", Internal=bool(internal), Labels=labels or {},
            Options=options or {}, Default=default, Created=time.time())
        if v6:
            n.Subnets.append(v6)
            n.IPv6 = True
        drv.prepare(n, ds)
        with self.db.tx():
            self.save_network(n)
            drv.reserve(n, lambda owner: self.ipam.allocate_mac(nid, (start, end), owner))
            self.save_network(n)
        self.networks[nid] = n
        try:
            await drv.create(n)
        except BaseException:
            await self.delete_network(nid, force=True)
            raise
        self.apply_rules()
        await self.apply_switch_rules()
        self.sync_forwarding()
        return n

    async def delete_network(self, ref: str, force: bool = False) -> HostComputeNetwork:
        """HNS ``DELETE /networks/<id>``; refused while endpoints exist unless ``force``."""
        n = self.networks.get(ref) or self.find_network(ref)
        eps = self.endpoints_of(n.ID)
        if eps and not force:
            raise Conflict(f"error while removing network: network {n.Name} id {n.DockerId} "
                           "has active endpoints")
        for e in eps:
            self._drop_endpoint(e)
        await self.driver_of(n).remove(n)
        with self.db.tx():
            self.ipam.release_network(n.ID)
            self.db.execute("DELETE FROM hns_networks WHERE id = ?", (n.ID,))
        self.networks.pop(n.ID, None)
        self.apply_rules()
        await self.apply_switch_rules()
        self.sync_forwarding()
        return n

    # ----- endpoints --------------------------------------------------------------------------
    def find_endpoint(self, ref: str) -> HostComputeEndpoint:
        if ref:
            for e in self.endpoints.values():
                if e.ID.lower() == ref.lower() or e.Name == ref:
                    return e
            found = [e for e in self.endpoints.values()
                     if e.ID.replace("-", "").lower().startswith(ref.replace("-", "").lower())]
            if len(found) == 1:
                return found[0]
        raise NotFound(f"endpoint {ref} not found", object_id=ref)

    def endpoints_of(self, network_id: str) -> list[HostComputeEndpoint]:
        return [self.endpoints[i] for i in self._by_network.get(network_id, ())]

    def endpoints_of_container(self, container_id: str) -> list[HostComputeEndpoint]:
        return [self.endpoints[i] for i in self._by_container.get(container_id, ())]

    def _index_endpoint(self, e: HostComputeEndpoint) -> None:
        self.endpoints[e.ID] = e
        self._by_container.setdefault(e.ContainerId, {})[e.ID] = None
        self._by_network.setdefault(e.VirtualNetwork, {})[e.ID] = None

    def _unindex_endpoint(self, e: HostComputeEndpoint) -> None:
        self.endpoints.pop(e.ID, None)
        for index, key in ((self._by_container, e.ContainerId),
                           (self._by_network, e.VirtualNetwork)):
            ids = index.get(key)
            if ids is not None:
                ids.pop(e.ID, None)
                if not ids:
                    del index[key]

    def create_endpoint(self, network: HostComputeNetwork, *, container_id: str,
                        namespace_id: str, name: str = "", ip: str | None = None,
                        mac: str | None = None, port_mappings: list[PortMapping] | None = None,
                        aliases: list[str] | None = None, ifname: str = "eth0",
                        ip6: str | None = None, guest: bool = False) -> HostComputeEndpoint:
        """HNS ``POST /endpoints``: address and MAC leased in one store transaction;
        ``guest``: the vNIC of a utility VM (a tap), in the guest's namespace."""
        eid = new_guid()
        s = network.subnet
        if port_mappings and not self.driver_of(network).publishes_ports:
            raise InvalidArgument(f"port mappings are not supported on {network.Driver} "
                                  f"network {network.Name}: its containers are reached at "
                                  "their own addresses")
        maps = self._resolve_ports(port_mappings or [])
        with self.db.tx():
            addr = self.ipam.allocate_ip(network.ID, s["AddressPrefix"], s["GatewayAddress"],
                                         eid, ip, network.IPRange or None, network.NextAddress)
            if not ip:
                network.NextAddress = int(ipaddress.IPv4Address(addr)) + 1
            pool = (I.mac_value(network.mac_pool[0]), I.mac_value(network.mac_pool[1]))
            mac_addr = self.ipam.allocate_mac(network.ID, pool, eid, mac)
            s6 = network.subnet6
            if ip6 and s6 is None:
                raise InvalidArgument(f"network {network.Name} has no IPv6 subnet "
                                      f"(created without --ipv6): cannot assign {ip6}")
            e = HostComputeEndpoint(
                ID=eid, Name=name or eid, VirtualNetwork=network.ID,
                VirtualNetworkName=network.Name, IPAddress=addr,
                PrefixLength=network.prefix_length, GatewayAddress=s["GatewayAddress"],
                MacAddress=mac_addr.replace(":", "-").upper(),
                Namespace={"ID": namespace_id, "CompartmentId": 0,
                           **({"Type": "Guest"} if guest else {})},
                Policies=[policy_json(m) for m in maps] + list(network.Policies),
                State=1, ContainerId=container_id, IfName=ifname, Aliases=aliases or [],
                EnableInternalDNS=False, Created=time.time())
            if s6 is not None:
                e.IPv6Address = self.ipam.allocate_ip6(
                    network.ID, s6["AddressPrefix"], s6["GatewayAddress"], eid, ip6,
                    s6.get("IPRange") or None)
                e.IPv6PrefixLength = int(s6["AddressPrefix"].split("/")[1])
                e.GatewayAddressV6 = s6["GatewayAddress"]
            self._save_endpoint(e)
            network.TotalEndpoints += 1
            self._index_endpoint(e)
            self._namespace(namespace_id, container_id).Endpoints.append(eid)
            cur = len(self._by_network[network.ID])
            network.MaxConcurrentEndpoints = max(network.MaxConcurrentEndpoints, cur)
            self.save_network(network)
        return e

    def _resolve_ports(self, maps: list[PortMapping]) -> list[PortMapping]:
        """Pick host ports for ``-p 80`` and refuse ports another endpoint already maps."""
        if not maps:
            return []
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
        return [m for e in self.endpoints.values() for m in e.port_mappings()]

    async def attach(self, e: HostComputeEndpoint, create_ns: bool = True) -> None:
        """HNS ``/endpoints/<id>/attach``: the vNIC into the compartment (made here if new)."""
        n = self.networks[e.VirtualNetwork]
        drv = self.driver_of(n)
        if n.Degraded:
            try:
                await drv.create(n)
                n.Degraded = ""
            except Exception as err:
                raise Unavailable(f"network {n.Name} is not available: {err}") from None
        if e.in_guest:
            await drv.attach_tap(n, e)
        else:
            await drv.attach(n, e, self.netns_path(e.namespace_id), create_ns)
        e.State = HostComputeEndpoint.ATTACHED
        self._save_endpoint(e)
        if drv.routed and not n.Internal:
            self.forwarding.check(self.routed_networks())
        if e.has_policy("PortMapping"):
            self.apply_rules()
        if drv.rewrites_macs:
            await self.apply_switch_rules()

    def _drop_endpoint(self, e: HostComputeEndpoint) -> None:
        with self.db.tx():
            self.ipam.release(e.VirtualNetwork, e.ID)
            self.db.execute("DELETE FROM hns_endpoints WHERE id = ?", (e.ID,))
        self._unindex_endpoint(e)
        ns = self.namespaces.get(e.namespace_id)
        if ns is not None and e.ID in ns.Endpoints:
            ns.Endpoints.remove(e.ID)

    async def delete_endpoints(self, endpoint_ids: list[str], remove_namespace: str | None) -> None:
        """Endpoint delete; removing the namespace lets the kernel destroy the veths with it.

        Idempotent and safe against cancellation: the records go first (a second caller, such
        as the exit hook racing a remove, finds nothing left to do); the kernel work runs in
        the netlink worker to completion, after any attach still in flight there, or at once
        when the worker is idle (then nothing can be creating the namespace)."""
        had_ports = had_l2 = False
        acl_namespaces = set()
        links: list[tuple[str, str]] = []
        taps: list[str] = []
        for eid in endpoint_ids:
            e = self.endpoints.get(eid)
            if e is None:
                continue
            if e.has_policy("ACL"):
                acl_namespaces.add(e.namespace_id)
            had_ports |= e.has_policy("PortMapping")
            n = self.networks.get(e.VirtualNetwork)
            had_l2 |= n is not None and self.driver_of(n).rewrites_macs
            if e.in_guest:   # a VM's tap stays on the switch until removed by name
                taps.append(self.endpoint_port(e.ID))
            elif e.namespace_id != remove_namespace:
                links.append((self.netns_path(e.namespace_id), e.IfName))
            self._drop_endpoint(e)
        if remove_namespace:
            self.namespaces.pop(remove_namespace, None)
            path = self.netns_path(remove_namespace)
            if self.netlink.idle():
                # Nothing can be creating it: unmount at once, without yielding to the loop
                # (the container's exit is then recorded before a waiting stop goes on).
                self.netlink.remove_netns(path)
            else:
                await self.netlink.settle(self.netlink.remove_netns, path)
        if links:
            await self.netlink.settle(self._remove_links, links)
        for tap in taps:
            await self.netlink.settle(self.netlink.delete_link, "switch", tap)
        if had_ports:
            self.apply_rules()
        if had_l2:
            await self.netlink.settle(self.netlink.switch_nft, self._switch_rules())
        for ns_id in acl_namespaces - {remove_namespace}:
            if is_netns(self.netns_path(ns_id)):
                await self._apply_acls(ns_id)

    def _remove_links(self, links: list[tuple[str, str]]) -> None:
        """In the worker: endpoint vNICs of namespaces that stay."""
        for ns, ifname in links:
            if is_netns(ns):
                self.netlink.remove_endpoint_link(ns, ifname)

    # ----- ACL and Route policies (HCN ModifyEndpoint) ----------------------------------------
    async def modify_endpoint_policies(self, ref: str, request_type: str,
                                       policies: list[dict[str, Any]]) -> dict[str, Any]:
        """HCN ``ModifyEndpoint`` with ResourceType Policy: ``Add``, ``Remove`` or ``Refresh``
        (replace) the endpoint's ACL and Route policies, enforced at once in its compartment.
        On a kernel error the previous policies are restored."""
        e = self.find_endpoint(ref)
        if e.in_guest:
            raise InvalidArgument(f"endpoint {e.ID} is a utility VM's: its ACL and Route "
                                  "policies are not supported")
        if not isinstance(policies, list):
            raise InvalidArgument("Policies must be a list")
        given = [P.normalise(p) for p in policies]
        fixed = [p for p in e.Policies if p["Type"] not in P.MUTABLE]
        current = [p for p in e.Policies if p["Type"] in P.MUTABLE]
        if request_type == "Add":
            result = current + [p for p in given if p not in current]
        elif request_type == "Remove":
            result = list(current)
            for p in given:
                pid = p["Settings"].get("Id") if p["Type"] == "ACL" else ""
                match = [q for q in result if q == p or (pid and q["Type"] == "ACL"
                                                         and q["Settings"].get("Id") == pid)]
                if not match:
                    raise NotFound(f"endpoint {e.ID} has no such {p['Type']} policy")
                result = [q for q in result if q not in match]
        elif request_type in ("Refresh", "Update"):
            result = given
        else:
            raise InvalidArgument(f"RequestType must be Add, Remove or Refresh, not "
                                  f"{request_type!r}")
        before = e.Policies
        e.Policies = fixed + result
        if e.attached:
            try:
                await self._apply_policies(e, before)
            except BaseException:
                after = e.Policies
                e.Policies = before
                try:
                    await self._apply_policies(e, after)
                except Exception as err:  # pragma: no cover - best effort
                    log.warning("restoring policies of %s: %s", e.ID, err)
                raise
        self._save_endpoint(e)
        return e

    async def _apply_policies(self, e: dict[str, Any], before: list[dict[str, Any]]) -> None:
        old = P.routes({"Policies": before})
        new = P.routes(e)
        ns = self.netns_path(e.namespace_id)
        await self.netlink.run(self.netlink.set_routes, ns, e.IfName, new,
                               [r for r in old if r not in new])
        await self._apply_acls(e.namespace_id)

    async def _apply_acls(self, namespace_id: str) -> None:
        """Regenerate the compartment's ACL table from all its endpoints, atomically."""
        eps = [e for e in self.endpoints.values() if e.namespace_id == namespace_id]
        t = {"family": "inet", "name": P.TABLE}
        cmds: list[dict[str, Any]] = [{"add": {"table": t}}, {"delete": {"table": t}}]
        if any(p["Type"] == "ACL" for e in eps for p in e.Policies):
            cmds += [{"add": {"table": t}}] + P.acl_ruleset(eps)
        await self.netlink.run(self.netlink.nft_in, self.netns_path(namespace_id), cmds)

    # ----- WinNAT: the nftables table (winnat.py) --------------------------------------------
    def ruleset(self) -> list[dict[str, Any]]:
        """Our tables as one nftables batch, rendered from the records."""
        nets = [W.NatNetwork(self.host_port(n), n.subnet["AddressPrefix"], n.Internal,
                             (n.subnet6 or {}).get("AddressPrefix", ""))
                for n in self.nat_networks()]
        published = [(e.IPAddress, m) for e in self.endpoints.values()
                     for m in e.port_mappings()]
        return W.tables(self.table, nets, published)

    def apply_rules(self) -> None:
        """Regenerate our tables from the store and swap them in, in one transaction."""
        self.nft.run(self.ruleset())

    async def apply_switch_rules(self) -> None:
        """The vSwitch's bridge-family table: l2bridge/l2tunnel MAC rewrite (VFP's job)."""
        await self.netlink.run(self.netlink.switch_nft, self._switch_rules())

    def _switch_rules(self) -> list[dict[str, Any]]:
        nets = []
        for n in self.networks.values():
            if self.driver_of(n).rewrites_macs:
                eps = [(e.IPAddress, e.mac) for e in self.endpoints_of(n.ID) if e.attached]
                nets.append((n.nic, n.SourceMac or "", eps))
        t = {"family": "bridge", "name": "silobox"}
        if nets:
            cmds = [{"add": {"table": t}}, {"delete": {"table": t}}, {"add": {"table": t}}] + \
                D.mac_rewrite_rules("silobox", nets)
        else:
            cmds = [{"add": {"table": t}}, {"delete": {"table": t}}]
        return cmds

    def remove_everything(self) -> None:
        """Used by tests and uninstall: our table goes; the rest of the ruleset stays."""
        self.nft.delete_table("ip", self.table)
        self.nft.delete_table("ip6", self.table)


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
