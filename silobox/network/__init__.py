"""The Host Networking Service (HNS) on Linux: networks, endpoints, namespaces and policies.

``service.HostNetworkingService`` keeps HostComputeNetwork/HostComputeEndpoint/
HostComputeNamespace records in silod's store and derives the kernel state from them: a bridge
per network in silobox's vSwitch namespace, veth vNICs, network namespaces as compartments
(``netlink.py``, the only pyroute2 user) and one nftables table for WinNAT's job
(``nft.py``, the only libnftables user).
"""
