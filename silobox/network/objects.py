"""HNS objects and typed policies, with the field names of HCN's schema and Get-HnsNetwork."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any


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
    """HCN ``ACL``. Linux: a rule of the network's forward chain (recorded, not yet enforced)."""

    Action: str = "Allow"
    Direction: str = "In"
    Protocols: str = ""
    LocalPorts: str = ""
    RemoteAddresses: str = ""
    Priority: int = 0


@dataclass
class Route:
    """HCN ``SDNRoute``: a route inside the compartment."""

    DestinationPrefix: str
    NextHop: str


def policy_json(p: Any) -> dict[str, Any]:
    return {"Type": type(p).__name__, "Settings": asdict(p)}


def port_mapping_from(d: dict[str, Any]) -> PortMapping:
    s = d.get("Settings", d)
    return PortMapping(int(s["Protocol"]), int(s["InternalPort"]), int(s["ExternalPort"]),
                       s.get("VIP", ""), int(s.get("Flags", 0)))
