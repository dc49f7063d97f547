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
