"""HNS records and typed policies, with the field names of HCN's schema and Get-HnsNetwork."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar


def new_guid() -> str:
    """HNS ids are upper-case GUIDs."""
    return str(uuid.uuid4()).upper()


@dataclass
class PortMapping:
    """HCN ``PortMapping`` (v1 ``NAT``): host ``ExternalPort`` → container ``InternalPort``.

    Linux: an nftables ``dnat`` in the prerouting and output hooks of silobox's table."""

    Protocol: int            # 6 TCP, 17 UDP
    InternalPort: int
    ExternalPort: int
    VIP: str = ""            # host address the mapping is bound to ("" = every address)
    Flags: int = 0

    @property
    def proto_name(self) -> str:
        return "udp" if self.Protocol == 17 else "tcp"


@dataclass
class OutBoundNAT:
    """HCN ``OutBoundNAT``: SNAT of container egress. Linux: nftables ``masquerade``."""

    VirtualIP: str = ""
    Exceptions: list[str] = field(default_factory=list)


@dataclass
class ACL:
    """HCN ``ACL``: enforced by ``policies.py`` as a stateful nftables table in the endpoint's
    compartment. Lists are comma-separated strings, as in HNS."""

    Action: str = "Allow"            # Allow | Block
    Direction: str = "In"            # In | Out
    Protocols: str = ""              # "6", "17", "1", ... ("" = any)
    LocalAddresses: str = ""
    RemoteAddresses: str = ""
    LocalPorts: str = ""             # "80,8000-8100" (TCP/UDP only)
    RemotePorts: str = ""
    Priority: int = 0                # lower first
    Id: str = ""


@dataclass
class Route:
    """HCN ``SDNRoute``: a route of the compartment through the endpoint's vNIC."""

    DestinationPrefix: str
    NextHop: str = ""
    NeedEncap: bool = False


def policy_json(p: Any) -> dict[str, Any]:
    return {"Type": type(p).__name__, "Settings": asdict(p)}


def port_mapping_from(d: dict[str, Any]) -> PortMapping:
    s = d.get("Settings", d)
    return PortMapping(int(s["Protocol"]), int(s["InternalPort"]), int(s["ExternalPort"]),
                       s.get("VIP", ""), int(s.get("Flags", 0)))


# ----- the records: HostComputeNetwork, HostComputeEndpoint, HostComputeNamespace ------------

class _Record:
    """A typed HNS record whose attribute names are the keys of HNS's JSON (Get-HnsNetwork).

    ``from_json``/``to_json`` read and write the stored form; keys this version does not know
    are kept in ``Extra`` and written back, and optional fields that are ``None`` are left out,
    so a store written by an older or newer silod round-trips unchanged. ``rec["Key"]`` and
    ``rec.get("Key")`` read fields as the dict records did (callers of the service still use
    them); ``None`` counts as absent there too."""

    Extra: dict[str, Any]
    TRANSIENT: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        names = {f.name for f in fields(cls)} - {"Extra"}   # type: ignore[arg-type]
        rec = cls(**{k: v for k, v in data.items() if k in names})
        rec.Extra = {k: v for k, v in data.items() if k not in names and k != "Extra"}
        return rec

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)   # type: ignore[arg-type]
               if f.name != "Extra" and f.name not in self.TRANSIENT}
        out = {k: v for k, v in out.items() if v is not None}
        return {**self.Extra, **out}

    def _field(self, key: str) -> bool:
        return key != "Extra" and key in {f.name for f in fields(self)}   # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        value = getattr(self, key) if self._field(key) else self.Extra[key]
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __setitem__(self, key: str, value: Any) -> None:
        if self._field(key):
            setattr(self, key, value)
        else:
            self.Extra[key] = value


R = TypeVar("R", bound=_Record)


@dataclass(eq=False)
class HostComputeNetwork(_Record):
    """HCN ``HostComputeNetwork``: a virtual network, its subnets, MAC pool and policies.

    ``Driver`` is Docker's name of the driver that realises it (``drivers/``); the fields
    after ``MaxConcurrentEndpoints`` belong to one driver each and are ``None`` elsewhere."""

    ID: str
    Name: str
    Type: str = "nat"                      # HNS's type: nat, Transparent, L2Bridge, ...
    Driver: str = "nat"                    # records older than the drivers are nat
    Index: int = 0                         # numbers the kernel objects' names
    Uplink: dict[str, Any] = field(default_factory=dict)   # the host NIC: Interface, Mac, ...
    DockerId: str = ""
    ActivityId: str = ""
    LayeredOn: str = ""
    NatName: str = ""
    Version: int = 0
    Flags: int = 0
    State: int = 1
    Subnets: list[dict[str, Any]] = field(default_factory=list)   # IPv4 first, then IPv6
    MacPools: list[dict[str, Any]] = field(default_factory=list)
    IPRange: str = ""
    Internal: bool = False
    Labels: dict[str, str] = field(default_factory=dict)
    Options: dict[str, str] = field(default_factory=dict)
    Default: bool = False
    Policies: list[dict[str, Any]] = field(default_factory=list)
    Created: float = 0.0
    TotalEndpoints: int = 0
    MaxConcurrentEndpoints: int = 0
    IPv6: bool | None = None
    NextAddress: int | None = None         # round-robin IPAM cursor
    DockerDriver: str | None = None        # created as "bridge": shown as asked
    HostMac: str | None = None             # nat: the host vNIC's MAC
    UplinkPortMac: str | None = None       # l2bridge/l2tunnel: the NIC's bridge port MAC
    SourceMac: str | None = None           # l2bridge/l2tunnel: the MAC containers show outside
    Vni: int | None = None                 # overlay
    Peers: list[str] | None = None
    VxlanPort: int | None = None
    LocalVtep: str | None = None
    Degraded: str = ""                     # why it cannot be realised now (never stored)
    Extra: dict[str, Any] = field(default_factory=dict)

    TRANSIENT: ClassVar[frozenset[str]] = frozenset({"Degraded"})

    @property
    def subnet(self) -> dict[str, Any]:
        """The IPv4 subnet record (always the first)."""
        return self.Subnets[0]

    @property
    def subnet6(self) -> dict[str, Any] | None:
        """The IPv6 subnet record of an ``--ipv6`` network."""
        return next((s for s in self.Subnets[1:] if ":" in s["AddressPrefix"]), None)

    @property
    def prefix_length(self) -> int:
        return int(self.subnet["AddressPrefix"].split("/")[1])

    @property
    def nic(self) -> str:
        """The host NIC bound to the network ('' for nat and a NIC-less overlay)."""
        return (self.Uplink or {}).get("Interface", "")

    @property
    def mac_pool(self) -> tuple[str, str]:
        return self.MacPools[0]["StartMacAddress"], self.MacPools[0]["EndMacAddress"]


@dataclass(eq=False)
class HostComputeEndpoint(_Record):
    """HCN ``HostComputeEndpoint``: a vNIC on a network, its addresses and policies, in one
    namespace (``Namespace.ID``; ``State`` 2 once attached there)."""

    ID: str
    Name: str = ""
    VirtualNetwork: str = ""
    VirtualNetworkName: str = ""
    IPAddress: str = ""
    PrefixLength: int = 0
    GatewayAddress: str = ""
    MacAddress: str = ""                   # HNS's form, 00-15-5D-...
    Namespace: dict[str, Any] = field(default_factory=dict)   # {"ID": ..., "CompartmentId": 0}
    Policies: list[dict[str, Any]] = field(default_factory=list)
    State: int = 1
    ContainerId: str = ""
    IfName: str = "eth0"
    Aliases: list[str] = field(default_factory=list)
    EnableInternalDNS: bool = False
    Created: float = 0.0
    IPv6Address: str | None = None
    IPv6PrefixLength: int | None = None
    GatewayAddressV6: str | None = None
    Extra: dict[str, Any] = field(default_factory=dict)

    ATTACHED: ClassVar[int] = 2

    @property
    def namespace_id(self) -> str:
        return (self.Namespace or {}).get("ID", "")

    @property
    def in_guest(self) -> bool:
        """A utility VM's vNIC (a tap on the switch): its namespace is the guest's, not a
        network namespace of the host (HCN's namespace ``Type`` ``Guest``)."""
        return (self.Namespace or {}).get("Type") == "Guest"

    @property
    def mac(self) -> str:
        """The MAC in the kernel's form, 00:15:5d:..."""
        return self.MacAddress.replace("-", ":").lower()

    @property
    def attached(self) -> bool:
        return self.State == self.ATTACHED

    def has_policy(self, kind: str) -> bool:
        return any(p["Type"] == kind for p in self.Policies)

    def port_mappings(self) -> list[PortMapping]:
        return [port_mapping_from(p) for p in self.Policies if p["Type"] == "PortMapping"]


@dataclass(eq=False)
class HostComputeNamespace(_Record):
    """HCN ``HostComputeNamespace``: a network compartment (a network namespace bound at
    ``Path``) and the endpoints in it. The service owns its life: created by the first
    attach, removed once, whoever asks first (a remove racing an exit finds it gone)."""

    ID: str
    Path: str = ""
    ContainerId: str = ""
    Endpoints: list[str] = field(default_factory=list)
    Extra: dict[str, Any] = field(default_factory=dict)
