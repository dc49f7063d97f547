"""IPAM and MAC pools: HNS's address allocation, persisted in silod's store.

Each network has one IPv4 subnet and one 4096-address MAC pool shaped like Hyper-V's
(``00-15-5D-YY-Z0-00`` … ``00-15-5D-YY-ZF-FF``). Leases are rows with a primary key on
(network, address), so two endpoints can never hold the same address or MAC even if two
allocations raced; allocation itself is synchronous on silod's event loop. Addresses are handed
out round-robin after the last one given, so a just-freed address is not reused at once (stale
ARP entries in peers).
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any

from silobox.errors import Conflict, InvalidArgument

SCHEMA = [
    "CREATE TABLE hns_networks (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, data TEXT NOT NULL)",
    "CREATE TABLE hns_endpoints (id TEXT PRIMARY KEY, network_id TEXT NOT NULL, "
    "data TEXT NOT NULL)",
    "CREATE TABLE ipam_leases (network_id TEXT NOT NULL, address INTEGER NOT NULL, "
    "endpoint_id TEXT NOT NULL, PRIMARY KEY (network_id, address))",
    "CREATE TABLE mac_leases (network_id TEXT NOT NULL, mac INTEGER NOT NULL, "
    "endpoint_id TEXT NOT NULL, PRIMARY KEY (network_id, mac))",
    # IPv6 addresses do not fit SQLite's 64-bit integers: canonical text.
    "CREATE TABLE ipam6_leases (network_id TEXT NOT NULL, address TEXT NOT NULL, "
    "endpoint_id TEXT NOT NULL, PRIMARY KEY (network_id, address))",
]
V6_SCAN = 1 << 16
"""IPv6 addresses are handed out in order from the subnet's start; at most this many are
considered (a /64 is never exhausted, but a scan must end)."""

HYPERV_OUI = 0x00155D


def mac_text(value: int, sep: str = ":") -> str:
    return sep.join(f"{(value >> s) & 0xFF:02x}" for s in range(40, -1, -8))


def mac_value(text: str) -> int:
    digits = text.replace(":", "").replace("-", "").lower()
    if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits):
        raise InvalidArgument(f"invalid MAC address: {text}")
    return int(digits, 16)


def new_mac_pool(taken: list[tuple[int, int]]) -> tuple[int, int]:
    """A fresh 4096-address pool ``00-15-5D-YY-Z0-00``…``-ZF-FF`` not used by another network."""
    for _ in range(64):
        start = (HYPERV_OUI << 24) | (secrets.randbelow(256) << 16) | (secrets.randbelow(16) << 12)
        end = start + 0xFFF
        if all(end < s or start > e for s, e in taken):
            return start, end
    raise Conflict("no free MAC pool left")


class Ipam:
    """Leases of one store; every method runs inside the caller's transaction or its own."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def allocate_ip(self, network_id: str, subnet: str, gateway: str, endpoint_id: str,
                    wanted: str | None = None, ip_range: str | None = None,
                    hint: int | None = None) -> str:
        net = ipaddress.IPv4Network(subnet)
        gw = int(ipaddress.IPv4Address(gateway)) if gateway else -1
        used = {r["address"] for r in self.db.query(
            "SELECT address FROM ipam_leases WHERE network_id = ?", (network_id,))}
        if wanted:
            a = ipaddress.IPv4Address(wanted)
            if a not in net or a in (net.network_address, net.broadcast_address) or int(a) == gw:
                raise InvalidArgument(f"Address {wanted} is not available in subnet {subnet}")
            if int(a) in used:
                raise Conflict(f"Address already in use: {wanted}")
            self._lease(network_id, int(a), endpoint_id)
            return str(a)
        pool = ipaddress.IPv4Network(ip_range) if ip_range else net
        lo, hi = int(pool.network_address) + 1, int(pool.broadcast_address) - 1
        lo = max(lo, int(net.network_address) + 1)
        hi = min(hi, int(net.broadcast_address) - 1)
        if hint is None:
            row = self.db.query_one(
                "SELECT MAX(address) AS m FROM ipam_leases WHERE network_id = ?", (network_id,))
            hint = row["m"] + 1 if row and row["m"] is not None else lo
        start = hint if lo <= hint <= hi else lo
        size = hi - lo + 1
        for i in range(size):
            cand = lo + (start - lo + i) % size
            if cand != gw and cand not in used:
                self._lease(network_id, cand, endpoint_id)
                return str(ipaddress.IPv4Address(cand))
        raise Conflict(f"no available IPv4 addresses on this network's address pools: "
                       f"{subnet} is exhausted")

    def allocate_ip6(self, network_id: str, subnet: str, gateway: str, endpoint_id: str,
                     wanted: str | None = None, ip_range: str | None = None) -> str:
        """An IPv6 address of ``subnet`` (the first free one of ``ip_range``, or of the
        subnet after the gateway, or ``wanted``)."""
        net = ipaddress.IPv6Network(subnet)
        gw = ipaddress.IPv6Address(gateway)
        used = {ipaddress.IPv6Address(r["address"]) for r in self.db.query(
            "SELECT address FROM ipam6_leases WHERE network_id = ?", (network_id,))}
        if wanted:
            try:
                a = ipaddress.IPv6Address(wanted)
            except ValueError:
                raise InvalidArgument(f"invalid IPv6 address {wanted}") from None
            if a not in net or a == net.network_address or a == gw:
                raise InvalidArgument(f"Address {wanted} is not available in subnet {subnet}")
            if a in used:
                raise Conflict(f"Address already in use: {wanted}")
            cand = a
        else:
            pool = ipaddress.IPv6Network(ip_range) if ip_range else net
            first = max(int(pool.network_address) + (1 if ip_range else 0),
                        int(net.network_address) + 1)
            last = min(int(pool.broadcast_address), first + V6_SCAN)
            for i in range(first, last + 1):
                cand = ipaddress.IPv6Address(i)
                if cand != gw and cand not in used:
                    break
            else:
                raise Conflict(f"no available IPv6 addresses on this network's address pools: "
                               f"{subnet} is exhausted")
        self.db.execute("INSERT INTO ipam6_leases (network_id, address, endpoint_id) "
                        "VALUES (?, ?, ?)", (network_id, str(cand), endpoint_id))
        return str(cand)

    def _lease(self, network_id: str, address: int, endpoint_id: str) -> None:
        self.db.execute("INSERT INTO ipam_leases (network_id, address, endpoint_id) "
                        "VALUES (?, ?, ?)", (network_id, address, endpoint_id))

    def allocate_mac(self, network_id: str, pool: tuple[int, int], endpoint_id: str,
                     wanted: str | None = None) -> str:
        used = {r["mac"] for r in self.db.query(
            "SELECT mac FROM mac_leases WHERE network_id = ?", (network_id,))}
        if wanted:
            v = mac_value(wanted)
            if v in used:
                raise Conflict(f"MAC address already in use: {wanted}")
            cand = v
        else:
            for cand in range(pool[0], pool[1] + 1):
                if cand not in used and (cand & 0xFF) not in (0x00,):
                    break
            else:
                raise Conflict("the network's MAC pool is exhausted")
        self.db.execute("INSERT INTO mac_leases (network_id, mac, endpoint_id) VALUES (?, ?, ?)",
                        (network_id, cand, endpoint_id))
        return mac_text(cand)

    def release(self, network_id: str, endpoint_id: str) -> None:
        self.db.execute("DELETE FROM ipam_leases WHERE network_id = ? AND endpoint_id = ?",
                        (network_id, endpoint_id))
        self.db.execute("DELETE FROM mac_leases WHERE network_id = ? AND endpoint_id = ?",
                        (network_id, endpoint_id))
        self.db.execute("DELETE FROM ipam6_leases WHERE network_id = ? AND endpoint_id = ?",
                        (network_id, endpoint_id))

    def release_network(self, network_id: str) -> None:
        self.db.execute("DELETE FROM ipam_leases WHERE network_id = ?", (network_id,))
        self.db.execute("DELETE FROM mac_leases WHERE network_id = ?", (network_id,))
        self.db.execute("DELETE FROM ipam6_leases WHERE network_id = ?", (network_id,))

    def lease_count(self, network_id: str | None = None) -> int:
        if network_id is None:
            return self.db.query_one("SELECT COUNT(*) AS n FROM ipam_leases")["n"]
        return self.db.query_one("SELECT COUNT(*) AS n FROM ipam_leases WHERE network_id = ?",
                                 (network_id,))["n"]


def free_subnet(occupied: list[tuple[str, int]], candidates: list[str]) -> str | None:
    """The first candidate /20 overlapping no host route or address, nor another network."""
    taken = [ipaddress.IPv4Network(f"{a}/{l}", strict=False) for a, l in occupied]
    for cidr in candidates:
        n = ipaddress.IPv4Network(cidr)
        if not any(n.overlaps(t) for t in taken):
            return cidr
    return None


def free_subnet6(occupied: list[tuple[str, int]], wanted: str | None) -> str | None:
    """``wanted`` if it overlaps nothing, else None; without ``wanted`` a random ULA /64
    (RFC 4193: fd00::/8 + 40 random bits) that overlaps nothing."""
    taken = [ipaddress.IPv6Network(f"{a}/{l}", strict=False) for a, l in occupied]
    if wanted:
        n = ipaddress.IPv6Network(wanted, strict=False)
        return None if any(n.overlaps(t) for t in taken) else str(n)
    for _ in range(32):
        n = ipaddress.IPv6Network(((0xFD << 120) | (secrets.randbits(40) << 80), 64))
        if not any(n.overlaps(t) for t in taken):
            return str(n)
    return None


def default_candidates() -> list[str]:
    """192.168.48.0/20 first (the talk's), then the rest of 192.168/16, then 172.16/12."""
    out = ["192.168.48.0/20"]
    out += [str(n) for n in ipaddress.IPv4Network("192.168.0.0/16").subnets(new_prefix=20)
            if str(n) != "192.168.48.0/20"]
    out += [str(n) for n in ipaddress.IPv4Network("172.16.0.0/12").subnets(new_prefix=20)]
    return out


# ----- choosing a new network's subnets ------------------------------------------------------

def choose_subnet(subnet: str | None, occupied: list[tuple[str, int]],
                  ours: list[tuple[str, list[str]]]) -> ipaddress.IPv4Network:
    """The given subnet if it is free, or the first free default pool."""
    if not subnet:
        free = free_subnet(occupied, default_candidates())
        if free is None:
            raise Conflict("could not find an available, non-overlapping IPv4 address pool "
                           "among the defaults to assign to the network")
        return ipaddress.IPv4Network(free)
    net = _given(subnet, ipaddress.IPv4Network, 30)
    if free_subnet(occupied, [str(net)]) is None:
        raise Conflict(f"Pool overlaps with other one on this address space: {net} "
                       f"overlaps {overlapped(net, occupied, ours)}")
    return net


def _given(text: str, kind: Any, longest: int) -> Any:
    """A subnet the user gave, checked: a network of ``kind`` no longer than ``longest``."""
    try:
        net = kind(text, strict=False)
    except ValueError as e:
        raise InvalidArgument(f"invalid subnet {text}: {e}") from None
    if net.prefixlen > longest:
        raise InvalidArgument(f"subnet {text} is too small")
    return net


def overlapped(net: ipaddress.IPv4Network | ipaddress.IPv6Network,
               occupied: list[tuple[str, int]], ours: list[tuple[str, list[str]]]) -> str:
    """What a new subnet overlaps, named for the user: a network of ours or a host route."""
    for name, prefixes in ours:
        for prefix in prefixes:
            other = ipaddress.ip_network(prefix, strict=False)
            if other.version == net.version and other.overlaps(net):  # type: ignore[arg-type]
                return f"the subnet {other} of network {name}"
    for address, length in occupied:
        other = ipaddress.ip_network(f"{address}/{length}", strict=False)
        if other.version == net.version and other.overlaps(net):  # type: ignore[arg-type]
            return f"{other}, a route or address of this host"
    return "a host route or another network"


def choose_subnet6(subnet6: str | None, gateway6: str | None, ip_range6: str | None,
                   host_routes6: list[tuple[str, int]], ours: list[tuple[str, list[str]]]
                   ) -> dict[str, Any]:
    """The IPv6 subnet record of a new network: the given one, or a random ULA /64, and
    the range its addresses are leased from (``--ip-range``); the caller gives it an ID."""
    if subnet6:
        net6 = _given(subnet6, ipaddress.IPv6Network, 120)
    occupied = list(host_routes6)
    occupied += [(p.split("/")[0], int(p.split("/")[1]))
                 for _, prefixes in ours for p in prefixes if ":" in p]
    free = free_subnet6(occupied, subnet6)
    if free is None:
        if not subnet6:
            raise Conflict("could not find an available IPv6 address pool")
        raise Conflict(f"Pool overlaps with other one on this address space: {net6} "
                       f"overlaps {overlapped(net6, occupied, ours)}")
    net6 = ipaddress.IPv6Network(free)
    range6 = ""
    if ip_range6:
        try:
            r6 = ipaddress.IPv6Network(ip_range6, strict=False)
        except ValueError as e:
            raise InvalidArgument(f"invalid range {ip_range6}: {e}") from None
        if not r6.subnet_of(net6):
            raise InvalidArgument(f"no matching subnet for range {ip_range6}")
        range6 = str(r6)
    if gateway6:
        try:
            gw6 = ipaddress.IPv6Address(gateway6)
        except ValueError:
            raise InvalidArgument(f"invalid gateway {gateway6}") from None
        if gw6 not in net6:
            raise InvalidArgument(f"no matching subnet for gateway {gateway6}")
    else:
        gw6 = net6.network_address + 1
    record = {"AddressPrefix": str(net6), "GatewayAddress": str(gw6), "ID": "",
              "Policies": [], "State": 0, "AdditionalParams": {}}
    if range6:
        record["IPRange"] = range6
    return record
