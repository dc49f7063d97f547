"""Drivers on an *external* vSwitch bound to a host NIC: the base of transparent, l2bridge
and l2tunnel, and ``transparent`` itself.

The NIC (``-o com.docker.network.windowsshim.interface=IF`` or ``-o parent=IF``) moves into
silobox's vSwitch namespace as a port of the network's bridge, as Hyper-V binds a physical NIC
to an external switch without a management vNIC: it is dedicated to the network while the
network exists and comes back to the host, with its MAC and state, when the network is removed
or silod stops with no endpoint left. Containers are on that NIC's L2 segment with addresses
from the network's subnet (static IPAM); the gateway is a router outside; no NAT.
"""

from __future__ import annotations

from typing import Any, ClassVar

from silobox.errors import Conflict, InvalidArgument
from silobox.network.drivers.base import (OPT_INTERFACE, DriverSettings, NetworkDriver,
                                          NetworkRequest, refuse_used_interface,
                                          require_external_subnet)
from silobox.network.objects import HostComputeNetwork


class ExternalSwitchDriver(NetworkDriver):
    """A bridge in the vSwitch namespace with the host NIC as its uplink port."""

    takes_nic: ClassVar[bool] = True
    learning: ClassVar[bool] = True        # the uplink port learns source MACs

    @classmethod
    def settings(cls, opts: dict[str, str], interface: str, req: NetworkRequest
                 ) -> DriverSettings:
        s = super().settings(opts, interface, req)
        require_external_subnet(cls.name, req)
        if not interface:
            raise InvalidArgument(f"the {cls.name} driver needs the host interface to "
                                  f"bind: -o {OPT_INTERFACE}=IFNAME")
        refuse_used_interface(interface, req)
        return s

    @classmethod
    def check_uplink(cls, name: str, info: dict[str, Any] | None, ours: bool) -> None:
        """Besides a missing or unusable NIC: one enslaved elsewhere, or one carrying host
        addresses, which the host would lose with the NIC."""
        super().check_uplink(name, info, ours)
        assert info is not None
        if info["master"]:
            raise Conflict(f"network interface {name} is already enslaved to another device")
        if info["ipv4"]:
            raise Conflict(f"network interface {name} carries host addresses "
                           f"({', '.join(info['ipv4'])}); the {cls.name} driver takes the "
                           "whole NIC into the vSwitch, so use a NIC dedicated to containers")

    async def create(self, n: HostComputeNetwork) -> None:
        await self.netlink.run(self.netlink.adopt_uplink, self.names.bridge(n), n.nic,
                               n.UplinkPortMac, self.learning)

    async def remove(self, n: HostComputeNetwork) -> None:
        await self.release(n)
        await self.netlink.settle(self.netlink.remove_vswitch, self.names.bridge(n),
                                  self.names.host_port(n))

    async def release(self, n: HostComputeNetwork) -> None:
        up = n.Uplink
        await self.netlink.settle(self.netlink.release_uplink, up["Interface"], up["Mac"],
                                  up.get("Up", False))

    def owned_links(self, n: HostComputeNetwork) -> tuple[set[str], set[str]]:
        return set(), {self.names.bridge(n), n.nic}


class TransparentDriver(ExternalSwitchDriver):
    """Containers are on the NIC's segment with their own MACs."""

    name: ClassVar[str] = "transparent"
    hns_type: ClassVar[str] = "Transparent"
