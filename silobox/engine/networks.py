"""Docker networks on top of the Host Networking Service (libnetwork's Windows driver role).

``NetworkHook`` gives each container its network at start: a HostComputeNamespace (a network
namespace file) holding one HostComputeEndpoint per network, passed to the compute system as
``Container.Networking.Namespace``; ``--network host`` drops ``net`` from the namespaces the silo
unshares; ``--network none`` leaves the silo's own fresh, empty namespace. ``NetworkService``
implements the ``/networks`` API backend.
"""

from __future__ import annotations

from typing import Any

from silobox.engine.hooks import ContainerHook
from silobox.engine.links import check_endpoint_links
from silobox.errors import Conflict, InvalidArgument, NotFound
from silobox.filters import labels_match
from silobox.network.objects import PortMapping, new_guid, port_mapping_from
from silobox.timeutil import now_iso, parse_until

DEFAULT_ALIASES = ("default", "bridge", "nat")
_EMPTY_NET = {"IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "",
              "NetworkID": "", "EndpointID": "", "Gateway": "", "IPAddress": "",
              "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
              "GlobalIPv6PrefixLen": 0, "DriverOpts": None, "DNSNames": None}


def _without_net(linux: dict[str, Any]) -> list[str]:
    """The silo's namespaces but the network one (the other modes may have dropped some)."""
    return [n for n in linux.get("Namespaces") or ["mnt", "uts", "ipc", "net", "cgroup"]
            if n != "net"]


def parse_port_bindings(bindings: dict[str, Any] | None, exposed: dict[str, Any] | None,
                        publish_all: bool) -> list[PortMapping]:
    """HostConfig.PortBindings (+ ExposedPorts with -P) → PortMapping policies."""
    out: list[PortMapping] = []
    for key, binds in (bindings or {}).items():
        port, _, proto = key.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in ("tcp", "udp"):
            raise InvalidArgument(f"invalid proto: {proto} (only tcp and udp can be published)")
        try:
            cport = int(port[:6])   # six digits are out of range already
        except ValueError:
            cport = -1
        if not 0 <= cport <= 65535 or len(port) > 6:
            raise InvalidArgument(f"invalid port specification: {key[:64]}")
        for b in binds or [{}]:
            hp = (b or {}).get("HostPort") or ""
            ip = (b or {}).get("HostIp") or ""
            if ip in ("0.0.0.0", "::"):
                ip = ""
            lo, _, hi = hp.partition("-")
            try:
                host = int(lo[:6]) if lo else 0   # six digits are out of range already
            except ValueError:
                raise InvalidArgument(f"invalid hostPort: {hp[:64]}") from None
            if not 0 <= host <= 65535 or len(lo) > 6:
                raise InvalidArgument(f"invalid hostPort: {hp[:64]}")
            out.append(PortMapping(17 if proto == "udp" else 6, cport, host, ip))
    if publish_all:
        have = {(m.Protocol, m.InternalPort) for m in out}
        for key in exposed or {}:
            port, _, proto = key.partition("/")
            p = 17 if proto == "udp" else 6
            if not port.isdigit() or len(port) > 5:
                raise InvalidArgument(f"invalid port specification: {key[:64]}")
            if (p, int(port)) not in have:
                out.append(PortMapping(p, int(port), 0, ""))
    return out


class NetworkHook(ContainerHook):
    """The container lifecycle points where networking takes part."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @property
    def hns(self) -> Any:
        return self.engine.hns

    def mode(self, c: Any) -> str:
        return c.host_config.get("NetworkMode") or "default"

    def on_create(self, c: Any, body: dict[str, Any]) -> None:
        hc = c.host_config
        mode = hc.get("NetworkMode") or "default"
        if mode.startswith("container:"):
            self._create_joined(c, body, mode.split(":", 1)[1])
            return
        if mode not in ("none", "host"):
            name = "nat" if mode in DEFAULT_ALIASES else mode
            n = self.hns.find_network(name)
            hc["NetworkMode"] = mode
            ec = ((body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {})
            keys = [mode, n["Name"], *(DEFAULT_ALIASES if n.get("Default") else ())]
            cfg = next((ec[k] for k in keys if ec.get(k)), {})
            for other in ec:
                if other not in keys:   # dockerd connects each: one that does not exist is 404
                    self.engine.find_docker_network(other)
            ipam = cfg.get("IPAMConfig") or {}
            if (ipam.get("IPv4Address") or ipam.get("IPv6Address")) and n["Default"]:
                raise InvalidArgument("user specified IP address is supported on user defined "
                                      "networks only")
            maps = parse_port_bindings(hc.get("PortBindings"), c.config.get("ExposedPorts"),
                                       bool(hc.get("PublishAllPorts")))
            if maps and self.hns.driver(n) != "nat":
                raise InvalidArgument(f"port mappings are not supported on "
                                      f"{self.hns.driver(n)} network {n['Name']}: its "
                                      "containers are reached at their own addresses")
            c.data["NetworkSettings"]["Networks"] = {n["Name"]: {
                **_EMPTY_NET, "NetworkID": n["DockerId"],
                "IPAMConfig": ipam or None, "Aliases": cfg.get("Aliases"),
                "DriverOpts": cfg.get("DriverOpts") or None,
                "MacAddress": cfg.get("MacAddress") or body.get("MacAddress") or ""}}
            c.data["Silobox"]["RequestedMac"] = {
                n["Name"]: cfg.get("MacAddress") or body.get("MacAddress") or ""}
            if n.get("Default") and "bridge" in (mode, *ec):
                c.data["Silobox"]["ShownAs"] = {n["Name"]: "bridge"}
            # Config.MacAddress (API < 1.44) belongs to this network for the container's life:
            # docker-compose disconnects and reconnects it before the start.
            c.data["Silobox"]["ConfigMac"] = {n["Name"]: body.get("MacAddress") or ""}
        else:
            hc["NetworkMode"] = mode
            c.data["NetworkSettings"]["Networks"] = {mode: dict(_EMPTY_NET)}
        self._top_level(c)

    def _create_joined(self, c: Any, body: dict[str, Any], ref: str) -> None:
        """``--network container:X``: no endpoint of its own; X's compartment at start."""
        if not ref:
            raise InvalidArgument("invalid network mode container: (no container named)")
        target = self.engine._find(ref)
        hc = c.host_config
        ec = ((body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {})
        if hc.get("PortBindings") or hc.get("PublishAllPorts"):
            raise InvalidArgument("conflicting options: port publishing and the container type "
                                  "network mode")
        if hc.get("Dns") or hc.get("DnsSearch") or hc.get("DnsOptions"):
            raise InvalidArgument("conflicting options: dns and the network mode")
        if hc.get("ExtraHosts"):
            raise InvalidArgument("conflicting options: custom host-to-IP mapping and the "
                                  "network mode")
        if body.get("MacAddress") or any((v or {}).get("MacAddress") for v in ec.values()):
            raise InvalidArgument("conflicting options: mac-address and the network mode")
        if hc.get("Links"):
            raise InvalidArgument("conflicting options: container type network can't be used "
                                  "with links. This would result in undefined behavior")
        hc["NetworkMode"] = f"container:{target.id}"
        c.data["NetworkSettings"]["Networks"] = {}
        self._top_level(c)

    def _join(self, c: Any, document: dict[str, Any], tid: str) -> None:
        """Start in the running container ``tid``'s network namespace, with its hostname and
        its hosts and resolv.conf files (Docker shares them the same way)."""
        target = self.engine.containers.get(tid)
        if target is None:
            raise NotFound(f"No such container: {tid}")
        if target.id == c.id:
            raise InvalidArgument("cannot join own network")
        if not target.running or not target.state.get("Pid"):
            raise Conflict(f"cannot join network of a non running container: {tid}")
        ct = document["Container"]
        if target.host_config.get("NetworkMode") == "host":
            ct["Linux"]["Namespaces"] = _without_net(ct["Linux"])
        else:
            ct["Networking"] = {"Namespace": f"/proc/{target.state['Pid']}/ns/net"}
        own = {c.data[k]: target.data[k] for k in ("HostsPath", "ResolvConfPath",
                                                   "HostnamePath")}
        for m in ct.get("MappedDirectories") or []:
            if m.get("HostPath") in own:
                m["HostPath"] = own[m["HostPath"]]
        ct.setdefault("GuestOs", {})["HostName"] = target.config["Hostname"]

    def _joined_by_others(self, c: Any) -> bool:
        mode = f"container:{c.id}"
        return any(o.running and o.host_config.get("NetworkMode") == mode
                   for o in self.engine.containers.values() if o is not c)

    async def on_start(self, c: Any, document: dict[str, Any]) -> None:
        mode = self.mode(c)
        lx = document["Container"]["Linux"]
        if mode.startswith("container:"):
            self._join(c, document, mode.split(":", 1)[1])
            return
        if mode == "host":
            lx["Namespaces"] = _without_net(lx)
            return
        if mode == "none":
            self._write_files(c, False)
            return
        ns_id = new_guid()
        maps = parse_port_bindings(c.host_config.get("PortBindings"),
                                   c.config.get("ExposedPorts"),
                                   bool(c.host_config.get("PublishAllPorts")))
        created: list[str] = []
        first = True
        try:
            for name, cfg in c.data["NetworkSettings"]["Networks"].items():
                n = self.hns.find_network(name)
                ipam = cfg.get("IPAMConfig") or {}
                e = self.hns.create_endpoint(
                    n, container_id=c.id, namespace_id=ns_id, name=f"{c.name}-{n['Name']}",
                    ip=ipam.get("IPv4Address") or None, ip6=ipam.get("IPv6Address") or None,
                    mac=(c.data["Silobox"].get("RequestedMac") or {}).get(name) or None,
                    port_mappings=maps if first else [], aliases=cfg.get("Aliases") or [],
                    ifname="eth0" if first else f"eth{len(created)}")
                created.append(e["ID"])
                await self.hns.attach(e, create_ns=first)
                self._fill(cfg, n, e)
                first = False
        except BaseException:
            await self.hns.delete_endpoints(created, ns_id)
            raise
        c.data.setdefault("Silobox", {})["NetworkNamespace"] = ns_id
        self._top_level(c)
        user_dns = any(not self.hns.find_network(name).get("Default")
                       for name in c.data["NetworkSettings"]["Networks"])
        self._write_files(c, user_dns)
        if user_dns:
            await self._serve_dns(c, ns_id)
        ns = c.data["NetworkSettings"]
        ns["SandboxID"] = ns_id
        ns["SandboxKey"] = self.hns.netns_path(ns_id)
        ns["Ports"] = self._ports(c)
        self._top_level(c)
        document["Container"]["Networking"] = {"Namespace": self.hns.netns_path(ns_id)}

    async def _serve_dns(self, c: Any, ns_id: str) -> None:
        from silobox.network.dns import DNS_ADDRESS
        sock = await self.hns.netlink.run(self.hns.netlink.udp_socket_in,
                                          self.hns.netns_path(ns_id), DNS_ADDRESS, 53)
        await self.engine.dns.serve(c.id, sock)

    def _write_files(self, c: Any, user_dns: bool, live: bool = False) -> None:
        """/etc/hosts with the container's own address and --add-host entries; resolv.conf
        pointing at the embedded DNS on user networks, or at --dns servers.

        ``live``: the container runs with these files bind-mounted, so they are rewritten in
        place (a rename would leave the container on the old inode)."""
        from silobox.atomic import atomic_write as _atomic
        from silobox.network.dns import DNS_ADDRESS

        def atomic_write(path: str, text: str) -> None:
            if not live:
                _atomic(path, text)
                return
            with open(path, "r+") as f:
                f.truncate(0)
                f.write(text)
        hc = c.host_config
        ns = c.data["NetworkSettings"]
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                 "fe00::0\tip6-localnet", "ff00::0\tip6-mcastprefix", "ff02::1\tip6-allnodes",
                 "ff02::2\tip6-allrouters"]
        for item in hc.get("ExtraHosts") or []:
            sep = "=" if "=" in item else ":"
            name, _, ip = item.partition(sep)
            if ip == "host-gateway":
                ip = ns.get("Gateway") or "127.0.0.1"
            lines.append(f"{ip}\t{name}")
        if ns.get("IPAddress"):
            lines.append(f"{ns['IPAddress']}\t{c.config['Hostname']}")
        if ns.get("GlobalIPv6Address"):
            lines.append(f"{ns['GlobalIPv6Address']}\t{c.config['Hostname']}")
        atomic_write(c.data["HostsPath"], "\n".join(lines) + "\n")
        servers = [DNS_ADDRESS] if user_dns else list(hc.get("Dns") or [])
        if not servers and not hc.get("DnsSearch") and not hc.get("DnsOptions"):
            return
        try:
            with open(c.data["ResolvConfPath"]) as f:
                old = f.read().splitlines()
        except OSError:
            old = []
        kept = [l for l in old if not l.startswith(("nameserver", "search", "options"))]
        search = hc.get("DnsSearch") or [l.split(None, 1)[1] for l in old
                                         if l.startswith("search ") and len(l.split()) > 1]
        out = kept + [f"nameserver {x}" for x in servers or
                      [l.split()[1] for l in old if l.startswith("nameserver ")]]
        if search:
            out.append("search " + " ".join(search))
        opts = list(hc.get("DnsOptions") or [])
        if user_dns and not any(o.startswith("ndots:") for o in opts):
            opts.append("ndots:0")   # unless the user set ndots (libnetwork's rule)
        if opts:
            out.append("options " + " ".join(opts))
        atomic_write(c.data["ResolvConfPath"], "\n".join(out) + "\n")

    def _fill(self, cfg: dict[str, Any], n: dict[str, Any], e: dict[str, Any]) -> None:
        cfg.update(NetworkID=n["DockerId"], EndpointID=e["ID"].replace("-", "").lower(),
                   Gateway="" if n["Internal"] else e["GatewayAddress"],
                   IPAddress=e["IPAddress"], IPPrefixLen=e["PrefixLength"],
                   MacAddress=e["MacAddress"].replace("-", ":").lower(),
                   GlobalIPv6Address=e.get("IPv6Address", ""),
                   GlobalIPv6PrefixLen=e.get("IPv6PrefixLength", 0),
                   IPv6Gateway="" if n["Internal"] else e.get("GatewayAddressV6", ""),
                   DNSNames=self._dns_names(n, e, cfg.get("Aliases") or []))

    def _dns_names(self, n: dict[str, Any], e: dict[str, Any],
                   aliases: list[str]) -> list[str] | None:
        """The names the embedded DNS answers for this endpoint, in moby's order (name,
        aliases, short id, hostname); none on the default network, which has no DNS."""
        c = self.engine.containers.get(e.get("ContainerId", ""))
        if n.get("Default") or c is None:
            return None
        names = [c.name, *aliases, c.id[:12], c.config.get("Hostname") or ""]
        return list(dict.fromkeys(x for x in names if x))

    def _top_level(self, c: Any) -> None:
        ns = c.data["NetworkSettings"]
        first = next(iter(ns["Networks"].values()), {})
        for k in ("EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "MacAddress",
                  "GlobalIPv6Address", "GlobalIPv6PrefixLen", "IPv6Gateway"):
            ns[k] = first.get(k, 0 if k.endswith("PrefixLen") else "")

    def _ports(self, c: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in (c.config.get("ExposedPorts") or {}):
            out[key if "/" in key else f"{key}/tcp"] = None
        for key in (c.host_config.get("PortBindings") or {}):
            out.setdefault(key if "/" in key else f"{key}/tcp", None)
        for e in self.hns.endpoints.values():
            if e.get("ContainerId") != c.id:
                continue
            for p in e["Policies"]:
                if p["Type"] == "PortMapping":
                    m = port_mapping_from(p)
                    key = f"{m.InternalPort}/{m.proto_name}"
                    out[key] = (out.get(key) or []) + [
                        {"HostIp": m.VIP or "0.0.0.0", "HostPort": str(m.ExternalPort)}]
        return out

    async def on_stop(self, c: Any) -> None:
        self.engine.dns.stop(c.id)
        ns_id = (c.data.get("Silobox") or {}).pop("NetworkNamespace", None)
        eps = [e["ID"] for e in self.hns.endpoints.values() if e.get("ContainerId") == c.id]
        if eps and ns_id and self._joined_by_others(c):
            # Containers that joined this one keep the namespace alive: its vNICs must go
            # explicitly, or they would outlive their released addresses.
            await self.hns.delete_endpoints(eps, None)
            eps = []
        if eps or ns_id:
            await self.hns.delete_endpoints(eps, ns_id)
        ns = c.data["NetworkSettings"]
        for cfg in ns.get("Networks", {}).values():
            cfg.update(EndpointID="", Gateway="", IPAddress="", IPPrefixLen=0, MacAddress="",
                       GlobalIPv6Address="", GlobalIPv6PrefixLen=0, IPv6Gateway="")
        ns.update(SandboxID="", SandboxKey="", Ports={})
        self._top_level(c)

    async def on_remove(self, c: Any) -> None:
        await self.on_stop(c)

    async def on_recover(self, c: Any) -> None:
        """The endpoints of a running container stay as stored (the kernel kept them); only the
        embedded DNS responder, which lived in the old silod, is served again."""
        ns_id = (c.data.get("Silobox") or {}).get("NetworkNamespace")
        if not ns_id:
            return
        if any(e.get("ContainerId") == c.id and
               not self.hns.networks.get(e["VirtualNetwork"], {}).get("Default", True)
               for e in self.hns.endpoints.values()):
            try:
                await self._serve_dns(c, ns_id)
            except Exception as e:  # the container keeps running without name resolution
                import logging
                logging.getLogger("silobox.network").warning("embedded DNS for %s: %s",
                                                             c.id[:12], e)

    def on_inspect(self, c: Any, out: dict[str, Any]) -> None:
        ns = out.get("NetworkSettings") or {}
        ns.setdefault("Bridge", "")
        if ns.get("Networks"):
            out["NetworkSettings"] = ns = {**ns, "Networks": shown_networks(c)}
        for name, cfg in (ns.get("Networks") or {}).items():
            if name not in ("none", "host"):
                try:
                    cfg["NetworkID"] = self.hns.find_network(
                        "nat" if name == "bridge" else name)["DockerId"]
                except NotFound:
                    pass


def shown_networks(c: Any) -> dict[str, Any]:
    """A container's ``NetworkSettings.Networks`` as its client named them: the default network
    keeps its name ``nat``, but a container created or connected with Docker's Linux name
    ``bridge`` finds its entry under ``bridge``, as clients written for Linux read it."""
    nets = c.data["NetworkSettings"]["Networks"]
    shown = (c.data.get("Silobox") or {}).get("ShownAs") or {}
    if not shown:
        return nets
    return {shown.get(k, k): v for k, v in nets.items()}


class NetworkService:
    """Implements ``api.backend.NetworkBackend`` (Docker's /networks) over the HNS records."""

    hns: Any
    containers: dict[str, Any]

    def _init_networks(self) -> None:
        from silobox.network.service import HostNetworkingService
        from silobox.network.dns import EmbeddedDNS
        self.hns = HostNetworkingService(self.db, self.config.root, self.config.exec_root,
                                         ip_forward=self.config.ip_forward,
                                         forward_rules=self.config.forward_rules)
        self.dns = EmbeddedDNS(self._dns_resolve)
        self.container_hooks.append(NetworkHook(self))

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
        live = {cid for cid, c in self.containers.items() if c.running}
        self.hns.reconcile_endpoints(live)

    def _dns_resolve(self, container_id: str, name: str) -> list[str]:
        """Containers sharing a user-created network with the asker, by name, id or alias;
        the asker's own endpoint links (``--link name:alias``) name a container too."""
        name = self.link_target(container_id, name) or name  # type: ignore[attr-defined]
        mine = {e["VirtualNetwork"] for e in self.hns.endpoints.values()
                if e.get("ContainerId") == container_id
                and not self.hns.networks.get(e["VirtualNetwork"], {}).get("Default", True)}
        found = []
        for e in self.hns.endpoints.values():
            if e["VirtualNetwork"] not in mine:
                continue
            c = self.containers.get(e.get("ContainerId", ""))
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
            c = self.containers.get(e.get("ContainerId", ""))
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
            with self.db.tx():  # type: ignore[attr-defined]
                self.hns._save_network(n)
        self._network_event("create", n)
        return {"Id": n["DockerId"], "Warning": ""}

    def _network_event(self, action: str, n: dict[str, Any], container: Any = None) -> None:
        """Docker's network events: the network is the actor, the container an attribute."""
        from types import SimpleNamespace
        extra = {"name": n["Name"], "type": self.hns.driver(n)}
        if container is not None:
            extra["container"] = container.id
        self.emit_event("network", action, SimpleNamespace(id=n["DockerId"]),  # type: ignore[attr-defined]
                        extra)

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
            if any(c.host_config.get("NetworkMode") == n["Name"] for c in self.containers.values()):
                continue
            await self.hns.delete_network(n["ID"])
            self._network_event("destroy", n)
            removed.append(n["Name"])
        return {"NetworksDeleted": removed}

    async def network_connect(self, ref: str, container: str,
                              endpoint_config: dict[str, Any]) -> None:
        """Add a network to a container; a running one gets a new vNIC in its compartment."""
        n = self.find_docker_network(ref)
        c = self._find(container)  # type: ignore[attr-defined]
        nets = c.data["NetworkSettings"]["Networks"]
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
            (c.data["Silobox"].get("ConfigMac") or {}).get(n["Name"]) or ""
        cfg = {**_EMPTY_NET, "NetworkID": n["DockerId"], "IPAMConfig": ipam or None,
               "Aliases": endpoint_config.get("Aliases"),
               "DriverOpts": endpoint_config.get("DriverOpts") or None,
               "Links": check_endpoint_links(endpoint_config.get("Links")),
               "MacAddress": mac}
        ns_id = (c.data.get("Silobox") or {}).get("NetworkNamespace")
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
            hook = NetworkHook(self)
            hook._fill(cfg, n, e)
            had_user = any(not self.hns.find_network(name).get("Default") for name in nets)
            if not n.get("Default") and not had_user:
                # As Docker: joining the first user network switches the container's resolver
                # to the embedded DNS.
                nets[n["Name"]] = cfg
                hook._write_files(c, True, live=True)
                await hook._serve_dns(c, ns_id)
        nets[n["Name"]] = cfg
        c.data["Silobox"].setdefault("RequestedMac", {})[n["Name"]] = mac
        if n.get("Default") and ref == "bridge":
            c.data["Silobox"].setdefault("ShownAs", {})[n["Name"]] = "bridge"
        self._save(c)  # type: ignore[attr-defined]
        self._network_event("connect", n, c)

    async def network_disconnect(self, ref: str, container: str, force: bool = False) -> None:
        n = self.find_docker_network(ref)
        c = self._find(container)  # type: ignore[attr-defined]
        nets = c.data["NetworkSettings"]["Networks"]
        if n["Name"] not in nets:
            raise Conflict(f"container {c.id} is not connected to network {n['Name']}")
        eps = [e["ID"] for e in self.hns.endpoints.values()
               if e.get("ContainerId") == c.id and e["VirtualNetwork"] == n["ID"]]
        await self.hns.delete_endpoints(eps, None)
        del nets[n["Name"]]
        (c.data["Silobox"].get("ShownAs") or {}).pop(n["Name"], None)
        NetworkHook(self)._top_level(c)
        self._save(c)  # type: ignore[attr-defined]
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


