"""Docker networks on top of the Host Networking Service (libnetwork's Windows driver role).

``NetworkService`` implements the ``/networks`` API backend and HNS's own views; a container's
side of networking (its endpoints, from create to rm) is ``endpoints.NetworkHook``.
"""

from __future__ import annotations

from typing import Any

from silobox.engine.events import Actor
from silobox.engine.endpoints import DEFAULT_ALIASES, EMPTY_NET, NetworkHook
from silobox.engine.links import check_endpoint_links
from silobox.errors import Conflict, InvalidArgument
from silobox.filters import labels_match
from silobox.timeutil import now_iso, parse_until


class NetworkService:
    """Implements ``api.backend.NetworkBackend`` (Docker's /networks) over the HNS records."""

    def __init__(self, config: Any, db: Any, store: Any, events: Any, links: Any,
                 started: float) -> None:
        from silobox.network.service import HostNetworkingService
        from silobox.network.dns import EmbeddedDNS
        self.config = config
        self.db = db
        self.store = store
        self.events = events
        self.links = links          # endpoint links name containers for the embedded DNS
        self.started = started      # the built-in networks' creation time
        self.hns = HostNetworkingService(db, config.root, config.exec_root,
                                         ip_forward=config.ip_forward,
                                         forward_rules=config.forward_rules)
        self.dns = EmbeddedDNS(self._dns_resolve)
        self.hook = NetworkHook(self, store)

    async def start_networks(self) -> None:
        import os
        await self.hns.start(os.environ.get("SILOBOX_NAT_SUBNET") or None)

    async def close_networks(self) -> None:
        """silod stops: endpoints of containers that are not running go now (so a daemon whose
        containers are all gone leaves nothing behind), the others stay for the next start."""
        self.dns.close()
        try:
            self.reconcile_networks()
        except Exception as e:  # best effort; the next start reconciles again
            import logging
            logging.getLogger("silobox.network").warning("network reconcile at stop: %s", e)
        await self.hns.close()

    def reconcile_networks(self) -> None:
        live = {cid for cid, c in self.store.items() if c.running}
        self.hns.reconcile_endpoints(live)

    def _dns_resolve(self, container_id: str, name: str) -> list[str]:
        """Containers sharing a user-created network with the asker, by name, id or alias;
        the asker's own endpoint links (``--link name:alias``) name a container too."""
        name = self.links.link_target(container_id, name) or name
        mine = {e["VirtualNetwork"] for e in self.hns.endpoints.values()
                if e.get("ContainerId") == container_id
                and not self.hns.networks.get(e["VirtualNetwork"], {}).get("Default", True)}
        found = []
        for e in self.hns.endpoints.values():
            if e["VirtualNetwork"] not in mine:
                continue
            c = self.store.get(e.get("ContainerId", ""))
            if c is None:
                continue
            net = self.hns.networks[e["VirtualNetwork"]]["Name"]
            names = {c.name.lower(), c.id[:12], c.id} | {a.lower() for a in e.get("Aliases") or []}
            if c.config.get("Hostname"):
                names.add(c.config["Hostname"].lower())   # listed in DNSNames, as moby does
            names |= {f"{x}.{net}" for x in list(names)}
            if name in names:
                found.append(e["IPAddress"])
                if e.get("IPv6Address"):
                    found.append(e["IPv6Address"])
        return found

    # ----- Docker view -------------------------------------------------------------------------
    def _docker_network(self, n: dict[str, Any], verbose: bool = True) -> dict[str, Any]:
        s = n["Subnets"][0]
        ipam_cfg = {"Subnet": s["AddressPrefix"], "Gateway": s["GatewayAddress"]}
        if n.get("IPRange"):
            ipam_cfg["IPRange"] = n["IPRange"]
        configs = [ipam_cfg]
        s6 = self.hns.subnet6(n)
        if s6:
            configs.append({"Subnet": s6["AddressPrefix"], "Gateway": s6["GatewayAddress"],
                            **({"IPRange": s6["IPRange"]} if s6.get("IPRange") else {})})
        containers = {}
        for e in self.hns.endpoints_of(n["ID"]):
            c = self.store.get(e.get("ContainerId", ""))
            containers[e["ContainerId"]] = {
                "Name": c.name if c else "", "EndpointID": e["ID"].replace("-", "").lower(),
                "MacAddress": e["MacAddress"].replace("-", ":").lower(),
                "IPv4Address": f"{e['IPAddress']}/{e['PrefixLength']}",
                "IPv6Address": f"{e['IPv6Address']}/{e['IPv6PrefixLength']}"
                if e.get("IPv6Address") else ""}
        view = {
            "Name": n["Name"], "Id": n["DockerId"],
            "Created": now_iso() if not n.get("Created") else _iso(n["Created"]),
            "Scope": "local", "Driver": self.hns.driver(n), "EnableIPv4": True,
            "EnableIPv6": bool(s6),
            "IPAM": {"Driver": "windows", "Options": None, "Config": configs},
            "Internal": n["Internal"], "Attachable": False, "Ingress": False,
            "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": containers,
            "Options": {"com.docker.network.windowsshim.hnsid": n["ID"],
                        "com.docker.network.windowsshim.networkname": n["Name"],
                        **n.get("Options", {})},
            "Labels": n.get("Labels") or {},
        }
        if n.get("DockerDriver"):
            # Created as "bridge" (Docker's name for the nat network on Linux): shown as asked,
            # or docker-compose would see a changed driver and refuse the project.
            view["Driver"] = n["DockerDriver"]
        return view

    async def network_list(self, filters: dict[str, list[str]] | None = None
                           ) -> list[dict[str, Any]]:
        out = []
        f = filters or {}
        for n in sorted(self.hns.networks.values(), key=lambda n: n["Created"]):
            d = self._docker_network(n)
            names = [d["Name"]]
            if n.get("Default") and self.hns.driver(n) == "nat":
                names.append("bridge")   # Linux clients' name for it
            if f.get("name") and not any(v in name for v in f["name"] for name in names):
                continue
            if f.get("id") and not any(d["Id"].startswith(v) for v in f["id"]):
                continue
            if f.get("driver") and d["Driver"] not in f["driver"]:
                continue
            if f.get("label") and not labels_match(d["Labels"], f["label"]):
                continue
            if f.get("type"):
                kind = "builtin" if n.get("Default") else "custom"
                if kind not in f["type"]:
                    continue
            out.append(d)
        if not f.get("driver") and not f.get("label") and "custom" not in f.get("type", []):
            for name in ("none", "host"):
                if f.get("name") and not any(v in name for v in f["name"]):
                    continue
                if f.get("id") and not any(name.startswith(v) for v in f["id"]):
                    continue
                out.append({"Name": name, "Id": name, "Created": _iso(self.started),
                            "Scope": "local", "Driver": "null" if name == "none" else "host",
                            "EnableIPv6": False, "IPAM": {"Driver": "default", "Options": None,
                                                          "Config": []},
                            "Internal": False, "Attachable": False, "Ingress": False,
                            "ConfigFrom": {"Network": ""}, "ConfigOnly": False,
                            "Containers": {}, "Options": {}, "Labels": {}})
        return out

    def find_docker_network(self, ref: str) -> dict[str, Any]:
        """A network by Docker reference: ``bridge`` (Linux clients' name for the default
        network) and ``default`` name the ``nat`` network, which keeps its Windows name."""
        if ref in DEFAULT_ALIASES:
            for n in self.hns.networks.values():
                if n.get("Default") and self.hns.driver(n) == "nat":
                    return n
        return self.hns.find_network(ref)

    async def network_inspect(self, ref: str) -> dict[str, Any]:
        if ref in ("none", "host"):
            return next(n for n in await self.network_list() if n["Name"] == ref)
        return self._docker_network(self.find_docker_network(ref))

    async def network_create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("Name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument("network name is required")
        if name in ("none", "host", "default", "bridge"):
            raise Conflict(f"network with name {name} already exists")
        driver = body.get("Driver") or "nat"
        ipam = body.get("IPAM") or {}
        cfgs = ipam.get("Config") or []
        v4 = [x for x in cfgs if ":" not in (x.get("Subnet") or x.get("Gateway") or "")]
        v6 = [x for x in cfgs if x not in v4]
        if len(v4) > 1 or len(v6) > 1:
            raise InvalidArgument("silobox networks have one IPv4 subnet and at most one IPv6 "
                                  "subnet")
        cfg = v4[0] if v4 else {}
        cfg6 = v6[0] if v6 else {}
        n = await self.hns.create_network(
            name, subnet=cfg.get("Subnet") or None, gateway=cfg.get("Gateway") or None,
            ip_range=cfg.get("IPRange") or None, internal=bool(body.get("Internal")),
            labels=body.get("Labels") or {}, options=body.get("Options") or {},
            driver="nat" if driver == "bridge" else driver, ipv6=bool(body.get("EnableIPv6")),
            subnet6=cfg6.get("Subnet") or None, gateway6=cfg6.get("Gateway") or None,
            ip_range6=cfg6.get("IPRange") or None)
        if driver == "bridge":
            # Docker's name for the nat network on Linux: remembered so it is shown as asked.
            n["DockerDriver"] = driver
            with self.db.tx():
                self.hns._save_network(n)
        self._network_event("create", n)
        return {"Id": n["DockerId"], "Warning": ""}

    def _network_event(self, action: str, n: dict[str, Any], container: Any = None) -> None:
        """Docker's network events: the network is the actor, the container an attribute."""
        extra = {"name": n["Name"], "type": self.hns.driver(n)}
        if container is not None:
            extra["container"] = container.id
        self.events.emit_event("network", action, Actor(n["DockerId"]), extra)

    async def network_remove(self, ref: str) -> None:
        if ref in ("none", "host"):
            raise Conflict(f"{ref} is a pre-defined network and cannot be removed")
        n = self.find_docker_network(ref)
        if n.get("Default"):
            raise Conflict(f"{n['Name']} is a pre-defined network and cannot be removed")
        await self.hns.delete_network(n["ID"])
        self._network_event("destroy", n)

    async def network_prune(self, filters: dict[str, list[str]] | None = None
                            ) -> dict[str, Any]:
        f = filters or {}
        for k in f:
            if k not in ("label", "label!", "until"):
                raise InvalidArgument(f"invalid filter '{k}'")
        until = 0.0
        if f.get("until"):
            try:
                until = parse_until(f["until"][0])
            except ValueError:
                raise InvalidArgument(f"invalid filter 'until={f['until'][0]}'") from None
        removed = []
        for n in list(self.hns.networks.values()):
            if n.get("Default") or self.hns.endpoints_of(n["ID"]):
                continue
            labels = n.get("Labels")
            if f.get("label") and not labels_match(labels, f["label"]):
                continue
            if labels_match(labels, f.get("label!", []), any_of=True):
                continue
            if until and n["Created"] >= until:
                continue
            if any(c.host_config.get("NetworkMode") == n["Name"] for c in self.store.values()):
                continue
            await self.hns.delete_network(n["ID"])
            self._network_event("destroy", n)
            removed.append(n["Name"])
        return {"NetworksDeleted": removed}

    async def network_connect(self, ref: str, container: str,
                              endpoint_config: dict[str, Any]) -> None:
        """Add a network to a container; a running one gets a new vNIC in its compartment."""
        n = self.find_docker_network(ref)
        c = self.store.find(container)
        nets = c.network_settings["Networks"]
        if str(c.host_config.get("NetworkMode")).startswith("container:"):
            raise Conflict("container sharing network namespace with another container or host "
                           "cannot be connected to any other network")
        if c.host_config.get("NetworkMode") in ("none", "host"):
            raise Conflict("container cannot be disconnected from host network or connected "
                           "to host network" if c.host_config["NetworkMode"] == "host" else
                           "container sharing network namespace with none cannot be connected")
        if n["Name"] in nets:
            raise Conflict(f"endpoint with name {c.name} already exists in network {n['Name']}")
        ipam = endpoint_config.get("IPAMConfig") or {}
        mac = endpoint_config.get("MacAddress") or \
            (c.silobox.get("ConfigMac") or {}).get(n["Name"]) or ""
        cfg = {**EMPTY_NET, "NetworkID": n["DockerId"], "IPAMConfig": ipam or None,
               "Aliases": endpoint_config.get("Aliases"),
               "DriverOpts": endpoint_config.get("DriverOpts") or None,
               "Links": check_endpoint_links(endpoint_config.get("Links")),
               "MacAddress": mac}
        ns_id = c.silobox.get("NetworkNamespace")
        if c.running and (c.host_config.get("Isolation") or "").lower() == "hyperv":
            raise Conflict("a running hyperv container cannot be connected to another network "
                           "(its utility VM's network cards are fixed at start)")
        if c.running and ns_id:
            e = self.hns.create_endpoint(
                n, container_id=c.id, namespace_id=ns_id, name=f"{c.name}-{n['Name']}",
                ip=ipam.get("IPv4Address") or None, mac=cfg["MacAddress"] or None,
                ip6=ipam.get("IPv6Address") or None,
                aliases=cfg["Aliases"] or [], ifname=f"eth{len(nets)}")
            try:
                await self.hns.attach(e, create_ns=False)
            except BaseException:
                await self.hns.delete_endpoints([e["ID"]], None)
                raise
            hook = self.hook
            hook._fill(cfg, n, e)
            had_user = any(not self.hns.find_network(name).get("Default") for name in nets)
            if not n.get("Default") and not had_user:
                # As Docker: joining the first user network switches the container's resolver
                # to the embedded DNS.
                nets[n["Name"]] = cfg
                hook._write_files(c, True, live=True)
                await hook._serve_dns(c, ns_id)
        nets[n["Name"]] = cfg
        c.silobox.setdefault("RequestedMac", {})[n["Name"]] = mac
        if n.get("Default") and ref == "bridge":
            c.silobox.setdefault("ShownAs", {})[n["Name"]] = "bridge"
        self.store.save(c)
        self._network_event("connect", n, c)

    async def network_disconnect(self, ref: str, container: str, force: bool = False) -> None:
        n = self.find_docker_network(ref)
        c = self.store.find(container)
        nets = c.network_settings["Networks"]
        if n["Name"] not in nets:
            raise Conflict(f"container {c.id} is not connected to network {n['Name']}")
        eps = [e["ID"] for e in self.hns.endpoints.values()
               if e.get("ContainerId") == c.id and e["VirtualNetwork"] == n["ID"]]
        await self.hns.delete_endpoints(eps, None)
        del nets[n["Name"]]
        (c.silobox.get("ShownAs") or {}).pop(n["Name"], None)
        self.hook._top_level(c)
        self.store.save(c)
        self._network_event("disconnect", n, c)

    # ----- HNS view ----------------------------------------------------------------------------
    async def hns_networks(self) -> list[dict[str, Any]]:
        return [self._hns_network(n) for n in self.hns.networks.values()]

    async def hns_network(self, ref: str) -> dict[str, Any]:
        return self._hns_network(self.hns.find_network(ref))

    def _hns_network(self, n: dict[str, Any]) -> dict[str, Any]:
        from silobox.network.service import EXTENSIONS
        cur = len(self.hns.endpoints_of(n["ID"]))
        return {
            "ActivityId": n["ActivityId"], "AdditionalParams": {}, "CurrentEndpointCount": cur,
            "Extensions": EXTENSIONS, "Flags": n["Flags"],
            "Health": {"LastErrorCode": 0, "LastUpdateTime": _filetime(n["Created"])},
            "ID": n["ID"], "IPv6": bool(n.get("IPv6")), "LayeredOn": n["LayeredOn"],
            "MacPools": n["MacPools"], "MaxConcurrentEndpoints": max(cur, n["MaxConcurrentEndpoints"]),
            "Name": n["Name"], "NatName": n["NatName"] if self.hns.driver(n) == "nat" else "",
            "Policies": n["Policies"],
            "Resources": {"ID": n["ActivityId"], "AllocationOrder": 2, "State": 1,
                          "Allocators": [], "Health": {}, "AdditionalParams": {}},
            "State": n["State"], "Subnets": n["Subnets"],
            "TotalEndpoints": n["TotalEndpoints"], "Type": n["Type"], "Version": n["Version"],
            "Silobox": self._hns_silobox(n),
            **self._hns_external(n),
        }

    def _hns_silobox(self, n: dict[str, Any]) -> dict[str, Any]:
        """Where the network lives in the kernel (silobox's own block of the record)."""
        out: dict[str, Any] = {"Driver": self.hns.driver(n), "Bridge": self.hns.bridge(n),
                               "Internal": n["Internal"]}
        if self.hns.driver(n) == "nat":
            out["HostVNic"] = self.hns.host_port(n)
        if self.hns.uplink(n):
            out["Uplink"] = self.hns.uplink(n)
        if self.hns.driver(n) == "overlay":
            out.update(VxlanDevice=self.hns.vxlan_port(n), VNI=n["Vni"], Peers=n["Peers"],
                       UdpPort=n["VxlanPort"])
        if self.hns.driver(n) == "l2tunnel":
            out["IsolatedPorts"] = True
        if n.get("Degraded"):
            out["Degraded"] = n["Degraded"]
        return out

    def _hns_external(self, n: dict[str, Any]) -> dict[str, Any]:
        """Get-HnsNetwork's fields of networks on an external vSwitch."""
        kind = self.hns.driver(n)
        if kind == "nat":
            return {}
        out: dict[str, Any] = {"NetworkAdapterName": self.hns.uplink(n),
                               "ManagementIP": ", ".join(n["Uplink"].get("IPv4") or [])}
        if kind in ("l2bridge", "l2tunnel"):
            out["SourceMac"] = n["SourceMac"].replace(":", "-").upper()
            out["DrMacAddress"] = out["SourceMac"]
        if kind == "overlay":
            out["VSID"] = n["Vni"]
            out["ManagementIP"] = n["LocalVtep"]
        return out

    async def hns_endpoints(self) -> list[dict[str, Any]]:
        return [self._hns_endpoint(e) for e in self.hns.endpoints.values()]

    async def hns_endpoint(self, ref: str) -> dict[str, Any]:
        return self._hns_endpoint(self.hns.find_endpoint(ref))

    async def hns_endpoint_policies(self, ref: str, request_type: str,
                                    policies: list[dict[str, Any]]) -> dict[str, Any]:
        e = await self.hns.modify_endpoint_policies(ref, request_type, policies)
        return self._hns_endpoint(e)

    def _hns_endpoint(self, e: dict[str, Any]) -> dict[str, Any]:
        keys = ("ID", "Name", "VirtualNetwork", "VirtualNetworkName", "Policies", "MacAddress",
                "IPAddress", "GatewayAddress", "PrefixLength", "Namespace", "State",
                "EnableInternalDNS")
        out = {k: e.get(k) for k in keys}
        out.update(IsRemoteEndpoint=False, SharedContainers=[e["ContainerId"]],
                   DNSServerList="", DNSSuffix="", IPv6Address=e.get("IPv6Address", ""),
                   IPv6PrefixLength=e.get("IPv6PrefixLength", 0),
                   GatewayAddressV6=e.get("GatewayAddressV6", ""),
                   EncapOverhead=50 if self.hns.driver(
                       self.hns.networks.get(e["VirtualNetwork"], {})) == "overlay" else 0,
                   Silobox={"Port": self.hns.endpoint_port(e["ID"]), "IfName": e["IfName"]})
        return out


def _iso(ts: float) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat().replace(
        "+00:00", "Z")


def _filetime(ts: float) -> int:
    return int((ts + 11644473600) * 10_000_000)


