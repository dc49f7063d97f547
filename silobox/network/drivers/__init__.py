"""HNS network drivers: one class per kind of network, behind ``base.NetworkDriver``.

``nat`` (``nat.py``) switches internally and NATs through the host; ``transparent``,
``l2bridge`` and ``l2tunnel`` (``transparent.py``, ``l2bridge.py``) bind a host NIC to an
external vSwitch; ``overlay`` (``overlay.py``) tunnels over VXLAN; ``null`` and ``host``
(``null.py``) are the drivers of the pre-defined networks and make no endpoints.
``parse`` validates ``network create``'s driver and ``-o`` options; ``Drivers`` holds the
service's instance of each.
"""

from __future__ import annotations

from typing import Any

from silobox.errors import InvalidArgument
from silobox.network.drivers.base import (OPT_INTERFACE, OPT_PARENT, OPT_PEERS,
                                          OPT_VXLAN_PORT, OPT_VXLANID, DriverSettings, Names,
                                          NetworkDriver, NetworkRequest)
from silobox.network.drivers.l2bridge import L2BridgeDriver, L2TunnelDriver, mac_rewrite_rules
from silobox.network.drivers.nat import NatDriver
from silobox.network.drivers.null import HostDriver, NullDriver
from silobox.network.drivers.overlay import FIRST_VNI, VXLAN_OVERHEAD, OverlayDriver
from silobox.network.drivers.transparent import ExternalSwitchDriver, TransparentDriver
from silobox.network.objects import HostComputeNetwork

__all__ = ["DRIVERS", "Drivers", "DriverSettings", "EXTERNAL", "FIRST_VNI", "HNS_TYPES",
           "KNOWN_OPTIONS", "Names", "NetworkDriver", "NetworkRequest", "OPT_INTERFACE",
           "OPT_PARENT", "OPT_PEERS", "OPT_VXLANID", "OPT_VXLAN_PORT", "VXLAN_OVERHEAD",
           "check_interface", "mac_rewrite_rules", "parse"]

CLASSES: dict[str, type[NetworkDriver]] = {c.name: c for c in (
    NatDriver, TransparentDriver, L2BridgeDriver, L2TunnelDriver, OverlayDriver,
    NullDriver, HostDriver)}
DRIVERS = ("nat", "transparent", "l2bridge", "l2tunnel", "overlay")   # networks can be made
EXTERNAL = tuple(n for n in DRIVERS if issubclass(CLASSES[n], ExternalSwitchDriver))
HNS_TYPES = {n: CLASSES[n].hns_type for n in DRIVERS}
ALIASES = {"bridge": "nat"}       # Docker's name on Linux for the nat driver
KNOWN_OPTIONS = {OPT_INTERFACE, OPT_PARENT, OPT_VXLANID, OPT_PEERS, OPT_VXLAN_PORT,
                 "com.docker.network.windowsshim.networkname",
                 "com.docker.network.windowsshim.hnsid"}


def driver_class(driver: str) -> type[NetworkDriver]:
    cls = CLASSES.get(ALIASES.get(driver, driver))
    if cls is None:
        raise InvalidArgument(f'plugin "{driver}" not found: silobox supports the drivers '
                              + ", ".join(DRIVERS))
    return cls


def parse(driver: str, options: dict[str, str], *, subnet: str | None, internal: bool,
          ipv6: bool, used_interfaces: set[str], used_vnis: set[int]) -> DriverSettings:
    """Docker's ``network create`` driver and ``-o`` options → settings, or a precise error."""
    cls = driver_class(driver)
    opts = dict(options or {})
    for k in opts:
        if k.startswith(("com.docker.network.windowsshim.", "com.docker.network.driver.overlay.",
                         "silobox.")) and k not in KNOWN_OPTIONS:
            raise InvalidArgument(f"option {k} is not supported by silobox")
    if opts.get(OPT_INTERFACE) and opts.get(OPT_PARENT) and \
            opts[OPT_INTERFACE] != opts[OPT_PARENT]:
        raise InvalidArgument(f"options {OPT_INTERFACE} and {OPT_PARENT} name different "
                              "interfaces")
    iface = opts.get(OPT_INTERFACE) or opts.get(OPT_PARENT) or ""
    return cls.settings(opts, iface, NetworkRequest(subnet, internal, ipv6, used_interfaces,
                                                    used_vnis))


def check_interface(driver: str, name: str, info: dict[str, Any] | None, ours: bool) -> None:
    """Refuse a NIC the driver cannot bind (see each driver's ``check_uplink``)."""
    driver_class(driver).check_uplink(name, info, ours)


class Drivers:
    """The service's instance of each driver, sharing its netlink worker and names."""

    def __init__(self, netlink: Any, names: Names) -> None:
        self._by_name = {name: cls(netlink, names) for name, cls in CLASSES.items()}

    def __getitem__(self, driver: str) -> NetworkDriver:
        return self._by_name[ALIASES.get(driver, driver)]

    def of(self, n: HostComputeNetwork) -> NetworkDriver:
        return self[n.Driver]
