"""The Host Networking Service (HNS) on Linux: networks, endpoints, namespaces and policies.

``service.HostNetworkingService`` keeps HostComputeNetwork/HostComputeEndpoint/
HostComputeNamespace records (``objects.py``) in silod's store and derives the kernel state
from them: one driver class per network type (``drivers/``: nat, transparent, l2bridge,
l2tunnel, overlay, null/host) makes a network's switch and vNICs in silobox's vSwitch network
namespace, network namespaces are compartments (``netlink.py``, the only pyroute2 user), and
one nftables table does WinNAT's job (``winnat.py`` over ``nft.py``, the only libnftables user).
"""
