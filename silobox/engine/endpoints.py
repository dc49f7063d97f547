"""A container's networks: its endpoints in the Host Networking Service, from create to rm.

``NetworkHook`` gives each container its network at start: a HostComputeNamespace (a network
namespace file) holding one HostComputeEndpoint per network, passed to the compute system as
``Container.Networking.Namespace``; ``--network host`` drops ``net`` from the namespaces the silo
unshares; ``--network none`` leaves the silo's own fresh, empty namespace;
``--network container:X`` joins X's. It also writes the container's hosts and resolv.conf.
"""

from __future__ import annotations

from typing import Any

from silobox.engine.hooks import ContainerHook
from silobox.errors import Conflict, InvalidArgument, NotFound
from silobox.network.objects import PortMapping, new_guid, port_mapping_from

DEFAULT_ALIASES = ("default", "bridge", "nat")
EMPTY_NET = {"IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "",
              "NetworkID": "", "EndpointID": "", "Gateway": "", "IPAddress": "",
              "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
              "GlobalIPv6PrefixLen": 0, "DriverOpts": None, "DNSNames": None}


def without_net(linux: dict[str, Any]) -> list[str]:
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

    def __init__(self, networks: Any, store: Any) -> None:
        self.networks = networks
        self.store = store
        self.hns = networks.hns
        self.dns = networks.dns

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
                    self.networks.find_docker_network(other)
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
            c.network_settings["Networks"] = {n["Name"]: {
                **EMPTY_NET, "NetworkID": n["DockerId"],
                "IPAMConfig": ipam or None, "Aliases": cfg.get("Aliases"),
                "DriverOpts": cfg.get("DriverOpts") or None,
                "MacAddress": cfg.get("MacAddress") or body.get("MacAddress") or ""}}
            c.silobox["RequestedMac"] = {
                n["Name"]: cfg.get("MacAddress") or body.get("MacAddress") or ""}
            if n.get("Default") and "bridge" in (mode, *ec):
                c.silobox["ShownAs"] = {n["Name"]: "bridge"}
            # Config.MacAddress (API < 1.44) belongs to this network for the container's life:
            # docker-compose disconnects and reconnects it before the start.
            c.silobox["ConfigMac"] = {n["Name"]: body.get("MacAddress") or ""}
        else:
            hc["NetworkMode"] = mode
            c.network_settings["Networks"] = {mode: dict(EMPTY_NET)}
        self._top_level(c)

    def _create_joined(self, c: Any, body: dict[str, Any], ref: str) -> None:
        """``--network container:X``: no endpoint of its own; X's compartment at start."""
        if not ref:
            raise InvalidArgument("invalid network mode container: (no container named)")
        target = self.store.find(ref)
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
        c.network_settings["Networks"] = {}
        self._top_level(c)

    def _join(self, c: Any, document: dict[str, Any], tid: str) -> None:
        """Start in the running container ``tid``'s network namespace, with its hostname and
        its hosts and resolv.conf files (Docker shares them the same way)."""
        target = self.store.get(tid)
        if target is None:
            raise NotFound(f"No such container: {tid}")
        if target.id == c.id:
            raise InvalidArgument("cannot join own network")
        if not target.running or not target.state.get("Pid"):
            raise Conflict(f"cannot join network of a non running container: {tid}")
        if (target.host_config.get("Isolation") or "").lower() == "hyperv":
            # its Pid is the guest's: /proc/<Pid> on the host is some other process
            raise Conflict(f"cannot join network of container {tid}: it runs in a utility VM "
                           "(--isolation hyperv)")
        ct = document["Container"]
        if target.host_config.get("NetworkMode") == "host":
            ct["Linux"]["Namespaces"] = without_net(ct["Linux"])
        else:
            ct["Networking"] = {"Namespace": f"/proc/{target.state['Pid']}/ns/net"}
        own = {c.hosts_path: target.hosts_path, c.resolv_conf_path: target.resolv_conf_path,
               c.hostname_path: target.hostname_path}
        for m in ct.get("MappedDirectories") or []:
            if m.get("HostPath") in own:
                m["HostPath"] = own[m["HostPath"]]
        ct.setdefault("GuestOs", {})["HostName"] = target.config["Hostname"]

    def _joined_by_others(self, c: Any) -> bool:
        mode = f"container:{c.id}"
        return any(o.running and o.host_config.get("NetworkMode") == mode
                   for o in self.store.values() if o is not c)

    async def on_start(self, c: Any, document: dict[str, Any]) -> None:
        mode = self.mode(c)
        lx = document["Container"]["Linux"]
        if mode.startswith("container:"):
            self._join(c, document, mode.split(":", 1)[1])
            return
        if mode == "host":
            lx["Namespaces"] = without_net(lx)
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
        # --isolation hyperv: each endpoint is a tap on the switch, a network card of the
        # container's utility VM (compute.uvm), not a veth into a namespace of the host.
        vm = (c.host_config.get("Isolation") or "").lower() == "hyperv"
        adapters: list[dict[str, Any]] = []
        try:
            for name, cfg in c.network_settings["Networks"].items():
                n = self.hns.find_network(name)
                ipam = cfg.get("IPAMConfig") or {}
                e = self.hns.create_endpoint(
                    n, container_id=c.id, namespace_id=ns_id, name=f"{c.name}-{n['Name']}",
                    ip=ipam.get("IPv4Address") or None, ip6=ipam.get("IPv6Address") or None,
                    mac=(c.silobox.get("RequestedMac") or {}).get(name) or None,
                    port_mappings=maps if first else [], aliases=cfg.get("Aliases") or [],
                    ifname="eth0" if first else f"eth{len(created)}", guest=vm)
                created.append(e["ID"])
                await self.hns.attach(e, create_ns=first)
                if vm:
                    adapters.append(self._adapter(n, e))
                self._fill(cfg, n, e)
                first = False
        except BaseException:
            await self.hns.delete_endpoints(created, ns_id)
            raise
        c.silobox["NetworkNamespace"] = ns_id
        self._top_level(c)
        user_dns = any(not self.hns.find_network(name).get("Default")
                       for name in c.network_settings["Networks"])
        self._write_files(c, user_dns)
        dns = None
        if user_dns and vm:
            dns = await self._serve_dns_for_vm(c)
        elif user_dns:
            await self._serve_dns(c, ns_id)
        ns = c.network_settings
        ns["SandboxID"] = ns_id
        ns["SandboxKey"] = "" if vm else self.hns.netns_path(ns_id)
        ns["Ports"] = self._ports(c)
        self._top_level(c)
        document["Container"]["Networking"] = (
            {"NetworkAdapters": adapters, **({"Dns": dns} if dns else {})} if vm
            else {"Namespace": self.hns.netns_path(ns_id)})

    async def _serve_dns_for_vm(self, c: Any, recovering: bool = False) -> dict[str, Any]:
        """The embedded DNS of a hyperv container: its socket is bound on the loopback of
        silobox's vSwitch namespace (no host process can ask it), and the utility VM relays
        the guest's 127.0.0.11:53 to it. The port stays the container's across silod restarts
        (the adopted VM relays to it again)."""
        port = int(c.silobox.get("DnsRelayPort") or 0) if recovering else 0
        path = self.hns.netlink.switch_path
        sock = await self.hns.netlink.run(self.hns.netlink.udp_socket_in, path, "127.0.0.1", port)
        c.silobox["DnsRelayPort"] = sock.getsockname()[1]
        await self.dns.serve(c.id, sock)
        return {"Namespace": path, "Address": "127.0.0.1", "Port": sock.getsockname()[1]}

    def _adapter(self, n: Any, e: Any) -> dict[str, Any]:
        """A utility VM's network card for endpoint ``e``: the tap QEMU opens in the vSwitch
        namespace and what the guest configures on it."""
        gw = "" if n["Internal"] or e["IfName"] != "eth0" else e["GatewayAddress"]
        return {"EndpointId": e["ID"], "Tap": self.hns.endpoint_port(e["ID"]),
                "SwitchNamespace": self.hns.netlink.switch_path, "MacAddress": e.mac,
                "IfName": e["IfName"], "IPAddress": f"{e['IPAddress']}/{e['PrefixLength']}",
                "Gateway": gw, "Mtu": self.hns.driver_of(n).endpoint_mtu(n),
                "IPv6Address": f"{e['IPv6Address']}/{e['IPv6PrefixLength']}"
                if e.get("IPv6Address") else "",
                "IPv6Gateway": e.get("GatewayAddressV6") or "" if gw else ""}

    async def _serve_dns(self, c: Any, ns_id: str) -> None:
        from silobox.network.dns import DNS_ADDRESS
        sock = await self.hns.netlink.run(self.hns.netlink.udp_socket_in,
                                          self.hns.netns_path(ns_id), DNS_ADDRESS, 53)
        await self.dns.serve(c.id, sock)

    def _write_files(self, c: Any, user_dns: bool, live: bool = False) -> None:
        """/etc/hosts with the container's own address and --add-host entries; resolv.conf
        pointing at the embedded DNS on user networks, or at --dns servers.

        ``live``: the container runs with these files bind-mounted, so they are rewritten in
        place (a rename would leave the container on the old inode)."""
        from silobox.atomic import atomic_write as _atomic
        from silobox.network.dns import DNS_ADDRESS

        def atomic_write(path: str, text: str) -> None:
            if not live:
                _atomic(path, text, durable=False)   # derived from the records
                return
            with open(path, "r+") as f:
                f.truncate(0)
                f.write(text)
        hc = c.host_config
        ns = c.network_settings
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
        atomic_write(c.hosts_path, "\n".join(lines) + "\n")
        servers = [DNS_ADDRESS] if user_dns else list(hc.get("Dns") or [])
        if not servers and not hc.get("DnsSearch") and not hc.get("DnsOptions"):
            return
        try:
            with open(c.resolv_conf_path) as f:
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
        atomic_write(c.resolv_conf_path, "\n".join(out) + "\n")

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
        c = self.store.get(e.get("ContainerId", ""))
        if n.get("Default") or c is None:
            return None
        names = [c.name, *aliases, c.id[:12], c.config.get("Hostname") or ""]
        return list(dict.fromkeys(x for x in names if x))

    def _top_level(self, c: Any) -> None:
        ns = c.network_settings
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
        for e in self.hns.endpoints_of_container(c.id):
            for p in e["Policies"]:
                if p["Type"] == "PortMapping":
                    m = port_mapping_from(p)
                    key = f"{m.InternalPort}/{m.proto_name}"
                    out[key] = (out.get(key) or []) + [
                        {"HostIp": m.VIP or "0.0.0.0", "HostPort": str(m.ExternalPort)}]
        return out

    async def on_stop(self, c: Any) -> None:
        self.dns.stop(c.id)
        ns_id = c.silobox.pop("NetworkNamespace", None)
        eps = [e["ID"] for e in self.hns.endpoints_of_container(c.id)]
        if eps and ns_id and self._joined_by_others(c):
            # Containers that joined this one keep the namespace alive: its vNICs must go
            # explicitly, or they would outlive their released addresses.
            await self.hns.delete_endpoints(eps, None)
            eps = []
        if eps or ns_id:
            await self.hns.delete_endpoints(eps, ns_id)
        ns = c.network_settings
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
        ns_id = c.silobox.get("NetworkNamespace")
        if not ns_id:
            return
        if any(not self.hns.networks.get(e["VirtualNetwork"], {}).get("Default", True)
               for e in self.hns.endpoints_of_container(c.id)):
            try:
                if (c.host_config.get("Isolation") or "").lower() == "hyperv":
                    await self._serve_dns_for_vm(c, recovering=True)
                else:
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
    nets = c.network_settings["Networks"]
    shown = c.silobox.get("ShownAs") or {}
    if not shown:
        return nets
    return {shown.get(k, k): v for k, v in nets.items()}
