"""The protocol every network driver implements, and the names of the kernel objects.

The service (``service.py``) owns the records, IPAM and the host's NAT table; a driver owns
what makes one kind of network exist in the kernel: its switch, its uplink, the endpoint's
vNIC options. Every kernel call goes through the ``Netlink`` worker it is given (``run`` for
work a cancelled caller may drop, ``settle`` for teardown), so a recording stand-in of that
seam is enough to test a driver's decisions without a kernel.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from silobox.errors import Conflict, InvalidArgument
from silobox.network.objects import HostComputeEndpoint, HostComputeNetwork

OPT_INTERFACE = "com.docker.network.windowsshim.interface"
OPT_PARENT = "parent"
OPT_VXLANID = "com.docker.network.driver.overlay.vxlanid_list"
OPT_PEERS = "silobox.overlay.peers"
OPT_VXLAN_PORT = "silobox.overlay.port"
OVERLAY_OPTIONS = (OPT_VXLANID, OPT_PEERS, OPT_VXLAN_PORT)


@dataclass
class DriverSettings:
    """What a driver needs besides the subnet, validated at ``network create``."""

    driver: str
    interface: str = ""
    vni: int = 0
    peers: list[str] = field(default_factory=list)
    vxlan_port: int = 4789


@dataclass
class NetworkRequest:
    """The parts of a ``network create`` a driver's validation looks at."""

    subnet: str | None = None
    internal: bool = False
    ipv6: bool = False
    used_interfaces: set[str] = field(default_factory=set)
    used_vnis: set[int] = field(default_factory=set)


class Names:
    """Names of a daemon's kernel objects: ``sbx<tag>…`` plus the network's index, so that
    several daemons on one host never take each other's links for orphans."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def host_port(self, n: HostComputeNetwork) -> str:
        return f"{self.prefix}nat{n.Index}"

    def bridge(self, n: HostComputeNetwork) -> str:
        return f"{self.prefix}br{n.Index}"

    def switch_port(self, n: HostComputeNetwork) -> str:
        return f"{self.prefix}hp{n.Index}"

    def vxlan_port(self, n: HostComputeNetwork) -> str:
        return f"{self.prefix}vx{n.Index}"

    def endpoint_port(self, endpoint_id: str) -> str:
        room = 15 - len(self.prefix) - 1
        return f"{self.prefix}v{endpoint_id.replace('-', '').lower()[:room]}"

    def ours_on_host(self, name: str) -> bool:
        """A link in the host's namespace that a network of this daemon made."""
        rest = name[len(self.prefix):] if name.startswith(self.prefix) else None
        return rest is not None and any(rest.startswith(k) and rest[len(k):].isdigit()
                                        for k in ("nat", "vx"))


class NetworkDriver(abc.ABC):
    """One kind of HNS network. Class attributes state what the service must do around it;
    the methods are the driver's verbs. Defaults fit a driver with nothing of that kind."""

    name: ClassVar[str]                    # Docker's driver name
    hns_type: ClassVar[str]                # HNS's network Type
    routed: ClassVar[bool] = False         # the host routes (and NATs) for its containers
    publishes_ports: ClassVar[bool] = False
    host_subnets_matter: ClassVar[bool] = False   # its subnet must avoid the host's routes
    rewrites_macs: ClassVar[bool] = False  # takes part in the vSwitch's MAC rewrite table
    encap_overhead: ClassVar[int] = 0      # bytes the endpoint MTU leaves for encapsulation
    isolated_ports: ClassVar[bool] = False  # container ports only forward to the uplink
    uplink_required: ClassVar[str] = ""    # why a network of it cannot do without a NIC

    def __init__(self, netlink: Any, names: Names) -> None:
        self.netlink = netlink
        self.names = names

    # ----- network create: validation and the record ------------------------------------------
    @classmethod
    def settings(cls, opts: dict[str, str], interface: str, req: NetworkRequest
                 ) -> DriverSettings:
        """Docker's ``-o`` options (already checked for known names) → settings, or the
        precise reason they do not fit this driver."""
        for k in OVERLAY_OPTIONS:
            if k in opts:
                raise InvalidArgument(f"option {k} is only valid with -d overlay")
        return DriverSettings(cls.name, interface=interface)

    @classmethod
    def check_uplink(cls, name: str, info: dict[str, Any] | None, ours: bool) -> None:
        """Refuse a NIC that cannot serve this driver (only drivers with a NIC are asked)."""
        if info is None:
            raise InvalidArgument(f"network interface {name} not found on the host")
        if name == "lo" or ours:
            raise InvalidArgument(f"network interface {name} cannot be an uplink")

    def prepare(self, n: HostComputeNetwork, s: DriverSettings) -> None:
        """Fill the record's driver fields and network policies before it is stored."""

    def reserve(self, n: HostComputeNetwork, allocate_mac: Callable[[str], str]) -> None:
        """Take MACs of the network's pool for the driver's own ports (in the store's
        transaction that creates the record)."""

    # ----- the kernel ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def create(self, n: HostComputeNetwork) -> None:
        """Make the network exist in the kernel. Idempotent: silod's start calls it for every
        stored network to restore what a reboot or a kill left missing."""

    @abc.abstractmethod
    async def remove(self, n: HostComputeNetwork) -> None:
        """``network rm``: everything ``create`` made goes; a borrowed NIC goes back."""

    async def release(self, n: HostComputeNetwork) -> None:
        """silod stops with no endpoint left: give the host back what the network borrowed."""

    def owned_links(self, n: HostComputeNetwork) -> tuple[set[str], set[str]]:
        """(links in the host's namespace, links in the vSwitch namespace) this network owns:
        the orphan sweep at start keeps them."""
        return set(), {self.names.bridge(n)}

    async def attach(self, n: HostComputeNetwork, e: HostComputeEndpoint, netns: str,
                     create_ns: bool) -> None:
        """The endpoint's vNIC: a bridge port of the network, its peer in ``netns`` (created
        there first if ``create_ns``) with the endpoint's addresses, MAC and routes. (Its
        removal is the same for every driver: the veth goes with the namespace, or by name;
        the service does it.)"""
        gw = None if n.Internal or e.IfName != "eth0" else e.GatewayAddress
        addresses = [(e.IPAddress, e.PrefixLength)]
        if e.IPv6Address:
            addresses.append((e.IPv6Address, int(e.IPv6PrefixLength or 0)))
        gw6 = e.GatewayAddressV6 if gw else None
        await self.netlink.run(
            self.netlink.create_endpoint, netns, self.names.bridge(n),
            self.names.endpoint_port(e.ID), e.mac, addresses, gw, e.IfName, create_ns,
            self.endpoint_mtu(n), self.isolated_ports, gw6)

    async def attach_tap(self, n: HostComputeNetwork, e: HostComputeEndpoint) -> None:
        """A utility VM's vNIC: a tap as the bridge port, opened by the VM's QEMU; the guest
        gives its card the endpoint's MAC, addresses and routes."""
        await self.netlink.run(self.netlink.create_tap_endpoint, self.names.bridge(n),
                               self.names.endpoint_port(e.ID), self.endpoint_mtu(n),
                               self.isolated_ports)

    def endpoint_mtu(self, n: HostComputeNetwork) -> int:
        """The vNIC's MTU (0: the kernel's default)."""
        return 0


def refuse_used_interface(iface: str, req: NetworkRequest) -> None:
    if iface and iface in req.used_interfaces:
        raise Conflict(f"network interface {iface} is already used by another network")


def require_external_subnet(driver: str, req: NetworkRequest) -> None:
    """The drivers whose containers sit on an outside segment: addresses are static."""
    if req.internal:
        raise InvalidArgument(f"--internal is not supported by the {driver} driver (its "
                              "containers are on the external network by definition)")
    if req.ipv6:
        raise InvalidArgument(f"IPv6 is not supported by the {driver} driver")
    if not req.subnet:
        raise InvalidArgument(f"the {driver} driver needs --subnet (and usually --gateway): "
                              "silobox assigns addresses statically, it has no DHCP client")
