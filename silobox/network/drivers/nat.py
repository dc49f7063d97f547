"""``nat`` (Docker's ``bridge``): an internal vSwitch with a host vNIC and WinNAT.

The bridge lives in silobox's vSwitch namespace; the host vNIC ``vEthernet (<net>)`` carries
the gateway address in the host's namespace, where the service's nftables table NATs the
subnet's egress and publishes ports (``service.py``)."""

from __future__ import annotations

from typing import Callable, ClassVar

from silobox.errors import InvalidArgument
from silobox.network.drivers.base import (OPT_INTERFACE, DriverSettings, NetworkDriver,
                                          NetworkRequest)
from silobox.network.objects import HostComputeNetwork, OutBoundNAT, policy_json


class NatDriver(NetworkDriver):
    name: ClassVar[str] = "nat"
    hns_type: ClassVar[str] = "nat"
    routed: ClassVar[bool] = True
    publishes_ports: ClassVar[bool] = True
    host_subnets_matter: ClassVar[bool] = True

    @classmethod
    def settings(cls, opts: dict[str, str], interface: str, req: NetworkRequest
                 ) -> DriverSettings:
        if interface:
            raise InvalidArgument(f"the nat driver has no uplink: option {OPT_INTERFACE} "
                                  "needs -d transparent, l2bridge, l2tunnel or overlay")
        return super().settings(opts, interface, req)

    def prepare(self, n: HostComputeNetwork, s: DriverSettings) -> None:
        n.Policies = [] if n.Internal else [policy_json(OutBoundNAT())]

    def reserve(self, n: HostComputeNetwork, allocate_mac: Callable[[str], str]) -> None:
        n.HostMac = allocate_mac("host")

    async def create(self, n: HostComputeNetwork) -> None:
        await self.netlink.run(
            self.netlink.ensure_vswitch, self.names.bridge(n), self.names.host_port(n),
            self.names.switch_port(n), n.subnet["GatewayAddress"], n.prefix_length,
            f"vEthernet ({n.Name})", n.HostMac, self._gateway6(n))

    @staticmethod
    def _gateway6(n: HostComputeNetwork) -> tuple[str, int] | None:
        s6 = n.subnet6
        if s6 is None:
            return None
        return s6["GatewayAddress"], int(s6["AddressPrefix"].split("/")[1])

    async def remove(self, n: HostComputeNetwork) -> None:
        await self.netlink.settle(self.netlink.remove_vswitch, self.names.bridge(n),
                                  self.names.host_port(n))

    async def release(self, n: HostComputeNetwork) -> None:
        await self.netlink.settle(self.netlink.delete_link, "host", self.names.host_port(n))

    def owned_links(self, n: HostComputeNetwork) -> tuple[set[str], set[str]]:
        return {self.names.host_port(n)}, {self.names.bridge(n), self.names.switch_port(n)}

