"""``null`` and ``host``: the drivers of Docker's pre-defined ``none`` and ``host`` networks.

Neither makes endpoints: a ``--network none`` container keeps the empty network namespace its
silo unshares (only ``lo``), a ``--network host`` one does not unshare the network namespace at
all (the engine's network hook decides this per container). There is exactly one network of
each, so creating another is refused, as dockerd does."""

from __future__ import annotations

from typing import ClassVar

from silobox.errors import InvalidArgument
from silobox.network.drivers.base import DriverSettings, NetworkDriver, NetworkRequest
from silobox.network.objects import HostComputeNetwork


class PredefinedDriver(NetworkDriver):
    network: ClassVar[str]                 # the one network of this driver

    @classmethod
    def settings(cls, opts: dict[str, str], interface: str, req: NetworkRequest
                 ) -> DriverSettings:
        raise InvalidArgument(f'only one instance of "{cls.name}" network is allowed')

    async def create(self, n: HostComputeNetwork) -> None:
        raise InvalidArgument(f'only one instance of "{self.name}" network is allowed')

    async def remove(self, n: HostComputeNetwork) -> None:
        raise InvalidArgument(f"{self.network} is a pre-defined network and cannot be removed")


class NullDriver(PredefinedDriver):
    name: ClassVar[str] = "null"
    hns_type: ClassVar[str] = "None"
    network: ClassVar[str] = "none"


class HostDriver(PredefinedDriver):
    name: ClassVar[str] = "host"
    hns_type: ClassVar[str] = "Host"
    network: ClassVar[str] = "host"
