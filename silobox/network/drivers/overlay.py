"""``overlay``: a VXLAN tunnel port on the network's bridge.

The VNI comes from ``-o com.docker.network.driver.overlay.vxlanid_list`` or is the first free
one from 4096; the tunnel's underlay socket stays in the host namespace, bound to the address
of the NIC named by ``-o com.docker.network.windowsshim.interface`` (the local VTEP, which stays
the host's); remote VTEPs come from ``-o silobox.overlay.peers=IP,...``. Endpoints get an MTU
50 bytes below the NIC's (HNS's ``EncapOverhead``)."""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar

from silobox.errors import Conflict, InvalidArgument
from silobox.network.drivers.base import (OPT_INTERFACE, OPT_PEERS, OPT_VXLAN_PORT,
                                          OPT_VXLANID, DriverSettings, NetworkDriver,
                                          NetworkRequest, refuse_used_interface,
                                          require_external_subnet)
from silobox.network.objects import HostComputeNetwork

VXLAN_OVERHEAD = 50
FIRST_VNI = 4096


class OverlayDriver(NetworkDriver):
    name: ClassVar[str] = "overlay"
    hns_type: ClassVar[str] = "Overlay"
    encap_overhead: ClassVar[int] = VXLAN_OVERHEAD
    uplink_required: ClassVar[str] = (f"the overlay driver needs the host interface of the "
                                      f"underlay: -o {OPT_INTERFACE}=IFNAME (its address is "
                                      "the local VTEP)")

    @classmethod
    def settings(cls, opts: dict[str, str], interface: str, req: NetworkRequest
                 ) -> DriverSettings:
        require_external_subnet(cls.name, req)
        refuse_used_interface(interface, req)
        s = DriverSettings(cls.name, interface=interface)
        if OPT_VXLANID in opts:
            text = opts[OPT_VXLANID].split(",")[0].strip()
            try:
                s.vni = int(text)
            except ValueError:
                raise InvalidArgument(f"invalid VXLAN id {opts[OPT_VXLANID]!r}") from None
            if not 1 <= s.vni <= 0xFFFFFF:
                raise InvalidArgument(f"VXLAN id {s.vni} is out of range 1-16777215")
            if s.vni in req.used_vnis:
                raise Conflict(f"VXLAN id {s.vni} is already used by another network")
        else:
            s.vni = next(v for v in range(FIRST_VNI, 0xFFFFFF) if v not in req.used_vnis)
        for peer in filter(None, (p.strip() for p in opts.get(OPT_PEERS, "").split(","))):
            try:
                s.peers.append(str(ipaddress.IPv4Address(peer)))
            except ValueError:
                raise InvalidArgument(f"invalid VTEP address {peer!r} in {OPT_PEERS}") from None
        if OPT_VXLAN_PORT in opts:
            try:
                s.vxlan_port = int(opts[OPT_VXLAN_PORT])
            except ValueError:
                s.vxlan_port = 0
            if not 1 <= s.vxlan_port <= 65535:
                raise InvalidArgument(f"invalid VXLAN UDP port {opts[OPT_VXLAN_PORT]!r}")
        return s

    @classmethod
    def check_uplink(cls, name: str, info: dict[str, Any] | None, ours: bool) -> None:
        super().check_uplink(name, info, ours)
        assert info is not None
        if not info["ipv4"]:
            raise InvalidArgument(f"network interface {name} has no IPv4 address to use as the "
                                  "local VXLAN tunnel endpoint")

    def prepare(self, n: HostComputeNetwork, s: DriverSettings) -> None:
        n.Policies = [{"Type": "VSID", "Settings": {"VSID": s.vni}}]
        n.Vni, n.Peers, n.VxlanPort = s.vni, s.peers, s.vxlan_port
        n.LocalVtep = n.Uplink["IPv4"][0]

    async def create(self, n: HostComputeNetwork) -> None:
        await self.netlink.run(self.netlink.ensure_vxlan, self.names.vxlan_port(n),
                               self.names.bridge(n), n.Vni, n.LocalVtep, n.VxlanPort,
                               n.Peers or [])

    async def remove(self, n: HostComputeNetwork) -> None:
        vx = self.names.vxlan_port(n)
        await self.netlink.settle(self.netlink.delete_link, "switch", vx)
        await self.netlink.settle(self.netlink.delete_link, "host", vx)
        await self.netlink.settle(self.netlink.remove_vswitch, self.names.bridge(n),
                                  self.names.host_port(n))

    def owned_links(self, n: HostComputeNetwork) -> tuple[set[str], set[str]]:
        return set(), {self.names.bridge(n), self.names.vxlan_port(n)}

    def endpoint_mtu(self, n: HostComputeNetwork) -> int:
        return int((n.Uplink or {}).get("Mtu") or 1500) - self.encap_overhead
