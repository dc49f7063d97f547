"""The embedded DNS server of user-created networks (Docker's 127.0.0.11, HNS's DNS proxy).

For each container on a user-created network, silod holds one UDP socket bound to
127.0.0.11:53 *inside the container's network namespace* (made by the netlink worker while it
stands in that namespace; a socket keeps the namespace it was created in), and serves it from
its own event loop. No packet redirection is needed and no process runs in the container.
Names of containers on a shared network (name, short/full id, aliases) answer with their
address there; other names are forwarded to the host's resolvers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any, Callable

log = logging.getLogger("silobox.network.dns")

DNS_ADDRESS = "127.0.0.11"
Resolver = Callable[[str, str], list[str]]
"""(querying container id, name) → IPv4 and IPv6 addresses (empty: not a container name)."""


def host_resolvers(path: str = "/etc/resolv.conf") -> list[str]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
            out.append(parts[1])
    return out


def parse_question(data: bytes) -> tuple[int, int, str, int, int] | None:
    """(id, flags, name, qtype, end offset of the question) of a one-question query."""
    if len(data) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", data[:6])
    if qd != 1 or flags & 0x8000:
        return None
    labels, i = [], 12
    while i < len(data):
        n = data[i]
        if n == 0:
            i += 1
            break
        if n & 0xC0:
            return None
        labels.append(data[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    if i + 4 > len(data):
        return None
    qtype, _qclass = struct.unpack("!HH", data[i:i + 4])
    return qid, flags, ".".join(labels).lower(), qtype, i + 4


def answer(data: bytes, qid: int, flags: int, end: int, addresses: list[str],
           qtype: int, rcode: int = 0) -> bytes:
    """A response echoing the question with A and/or AAAA records (or none) and ``rcode``."""
    rd = flags & 0x0100
    ans = []
    for a in addresses:
        if ":" in a and qtype in (28, 255):
            ans.append((28, socket.inet_pton(socket.AF_INET6, a)))
        elif ":" not in a and qtype in (1, 255):
            ans.append((1, socket.inet_aton(a)))
    head = struct.pack("!HHHHHH", qid, 0x8480 | rd | rcode, 1, len(ans), 0, 0)
    body = data[12:end]
    for rtype, raw in ans:
        body += struct.pack("!HHHIH", 0xC00C, rtype, 1, 600, len(raw)) + raw
    return head + body


class _Server(asyncio.DatagramProtocol):
    def __init__(self, owner: "EmbeddedDNS", container_id: str) -> None:
        self.owner = owner
        self.container_id = container_id
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        q = parse_question(data)
        if q is None:
            return
        qid, flags, name, qtype, end = q
        found = self.owner.resolve(self.container_id, name.rstrip("."))
        if found:
            self.transport.sendto(answer(data, qid, flags, end, found, qtype), addr)
            return
        asyncio.ensure_future(self._forward(data, addr, qid, flags, end, qtype))

    async def _forward(self, data: bytes, addr: Any, qid: int, flags: int, end: int,
                       qtype: int) -> None:
        loop = asyncio.get_running_loop()
        for upstream in self.owner.upstreams:
            fut: asyncio.Future = loop.create_future()

            class _Up(asyncio.DatagramProtocol):
                def datagram_received(self, reply: bytes, _a: Any) -> None:
                    if not fut.done():
                        fut.set_result(reply)

            try:
                tr, _ = await loop.create_datagram_endpoint(_Up, remote_addr=(upstream, 53))
            except OSError:
                continue
            try:
                tr.sendto(data)
                reply = await asyncio.wait_for(fut, 2.0)
                self.transport.sendto(reply, addr)
                return
            except (asyncio.TimeoutError, OSError):
                continue
            finally:
                tr.close()
        self.transport.sendto(answer(data, qid, flags, end, [], qtype, rcode=2), addr)


class EmbeddedDNS:
    """One responder per container compartment, all on silod's event loop."""

    def __init__(self, resolve: Resolver) -> None:
        self.resolve = resolve
        self.upstreams = host_resolvers()
        self._servers: dict[str, Any] = {}

    async def serve(self, container_id: str, sock: socket.socket) -> None:
        self.stop(container_id)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Server(self, container_id), sock=sock)
        self._servers[container_id] = transport

    def stop(self, container_id: str) -> None:
        t = self._servers.pop(container_id, None)
        if t is not None:
            t.close()

    def close(self) -> None:
        for cid in list(self._servers):
            self.stop(cid)
