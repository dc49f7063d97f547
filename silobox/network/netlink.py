"""Netlink: the vSwitch, host vNICs, endpoint vNICs and network compartments, with pyroute2.

This module is the only importer of pyroute2. Windows objects and their Linux form:

* network compartment (HostComputeNamespace) = a network namespace kept alive by a bind mount of
  ``/proc/thread-self/ns/net`` on a file under silod's exec root;
* Hyper-V internal vSwitch = a Linux bridge, inside silobox's own "vSwitch" network namespace
  (see ``service.py`` for why it is not in the host's namespace);
* host vNIC ``vEthernet (nat)`` = a passthru macvlan of the bridge device, moved to the host's
  namespace: it carries the gateway address and the Windows name as its link alias (an older
  silod made it a veth pair whose other end is a bridge port; such a pair is kept);
* container vNIC = a veth pair created with its peer already named ``eth0`` in the container's
  namespace (about 15 ms cheaper than create-then-move).

silod is a threaded asyncio process that must never fork, so namespaces are not made with
``ip netns``/pyroute2's forking helpers: one dedicated worker thread does all netlink work and
enters a namespace with ``unshare``/``setns`` on itself only (network namespaces are per thread),
always returning to the host's namespace before it takes the next job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import socket
from typing import Any, Callable, Iterator, TypeVar

from silobox.errors import SystemFailure, Unavailable
from silobox.kernel import libc

T = TypeVar("T")
IFA_F_NODAD = 0x02
MACVLAN_FLAG_NOPROMISC = 1


def _iproute() -> Any:
    from pyroute2 import IPRoute
    return IPRoute()


def _err(op: str, e: BaseException, obj: str = "") -> SystemFailure:
    return SystemFailure(f"{op}{' ' + obj if obj else ''}: {e}", operation=op, object_id=obj,
                         cause=e)


class Netlink:
    """The worker thread that owns every netlink socket of the networking service."""

    def __init__(self, switch_path: str) -> None:
        self.switch_path = switch_path
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hns-netlink")
        self._host: Any = None
        self._switch: Any = None
        self._home = -1
        self._bridges: dict[str, int] = {}   # bridge name → index in the switch namespace
        self._jobs: list[concurrent.futures.Future[Any]] = []   # submitted, maybe not done

    # ----- running in the worker -------------------------------------------------------------
    def _submit(self, fn: Callable[..., T], *args: Any) -> "concurrent.futures.Future[T]":
        job = self._pool.submit(fn, *args)
        self._jobs = [j for j in self._jobs if not j.done()] + [job]
        return job

    def idle(self) -> bool:
        """No job is queued or running in the worker (asked on the loop, the only submitter,
        so it stays true until the loop submits again)."""
        return all(j.done() for j in self._jobs)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in the worker. A cancelled caller drops the job if it has not started;
        a started job finishes (the kernel work of a cancelled create may still land)."""
        return await asyncio.wrap_future(self._submit(fn, *args))

    async def settle(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in the worker to completion even if the caller is cancelled: teardown.

        The worker takes jobs in order, so this runs after every job submitted before it; a
        teardown therefore always sees what a create in flight when its caller was cancelled
        left behind (removing a namespace on the loop while the worker was still creating it
        left the namespace mounted)."""
        job = asyncio.wrap_future(self._submit(fn, *args))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(_log_failure)   # nobody is left to raise a failure to
            raise

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Synchronous form, for start-up before the event loop serves requests."""
        return self._submit(fn, *args).result()

    def close(self) -> None:
        def _close() -> None:
            for s in (self._host, self._switch):
                if s is not None:
                    s.close()
            if self._home >= 0:
                os.close(self._home)
        try:
            self._pool.submit(_close).result(5)
        except Exception:
            pass
        self._pool.shutdown(wait=False)

    # The methods below run in the worker thread only.
    @property
    def host(self) -> Any:
        if self._host is None:
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            self._host = _iproute()
        return self._host

    @property
    def switch(self) -> Any:
        if self._switch is None:
            self.host  # noqa: B018 - remembers the home namespace first
            self.ensure_netns(self.switch_path)
            with self.inside(self.switch_path):
                self._switch = _iproute()
                _write_sysctl("net/ipv4/ip_forward", "0")
                for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables",
                             "bridge-nf-call-arptables"):
                    with contextlib.suppress(OSError):
                        _write_sysctl(f"net/bridge/{name}", "0")
                self._link_up_by_name(self._switch, "lo")
        return self._switch

    @contextlib.contextmanager
    def inside(self, path: str) -> Iterator[None]:
        """Run the block with this thread in the network namespace bound at ``path``."""
        self.host  # noqa: B018
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(fd, libc.CLONE_NEWNET)
        finally:
            os.close(fd)
        try:
            yield
        finally:
            libc.setns(self._home, libc.CLONE_NEWNET)

    # ----- network compartments --------------------------------------------------------------
    def ensure_netns(self, path: str) -> bool:
        """Create the namespace file at ``path`` unless it is one already; True if created."""
        if is_netns(path):
            return False
        self.host  # noqa: B018
        os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        os.close(fd)
        try:
            libc.unshare(libc.CLONE_NEWNET)
            try:
                libc.mount("/proc/thread-self/ns/net", path, None, libc.MS_BIND)
            finally:
                libc.setns(self._home, libc.CLONE_NEWNET)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return True

    @staticmethod
    def remove_netns(path: str) -> None:
        """Drop the namespace's bind mount; the kernel destroys it and its veths when unused."""
        try:
            libc.umount2(path, libc.MNT_DETACH)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):
                raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    # ----- links ------------------------------------------------------------------------------
    @staticmethod
    def _index(ipr: Any, name: str) -> int | None:
        """The link's index, asked of the kernel by name (``link_lookup`` dumps every link,
        which costs milliseconds with a hundred endpoints)."""
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            found = ipr.link("get", ifname=name)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        return found[0]["index"] if found else None

    @staticmethod
    def _link_up_by_name(ipr: Any, name: str) -> None:
        idx = Netlink._index(ipr, name)
        if idx is not None:
            ipr.link("set", index=idx, state="up")

    def link_names(self, where: str) -> list[str]:
        ipr = self.host if where == "host" else self.switch
        return [l.get_attr("IFLA_IFNAME") for l in ipr.get_links()]

    def delete_link(self, where: str, name: str) -> None:
        ipr = self.host if where == "host" else self.switch
        if where != "host":
            self._bridges.pop(name, None)
        idx = self._index(ipr, name)
        if idx is not None:
            with contextlib.suppress(Exception):
                ipr.link("del", index=idx)

    def ensure_vswitch(self, bridge: str, host_port: str, switch_port: str, gateway: str,
                       prefix_len: int, alias: str, mac: str,
                       gateway6: tuple[str, int] | None = None) -> None:
        """The network's bridge in the vSwitch namespace plus its host vNIC carrying the gateway.

        Idempotent: what exists is kept, what is missing is created (silod start reconciles)."""
        sw = self.switch
        host = self.host
        self._bridges.pop(bridge, None)
        try:
            if self._index(sw, bridge) is None:
                sw.link("add", ifname=bridge, kind="bridge")
            bidx = self._index(sw, bridge)
            sw.link("set", index=bidx, state="up")
            if self._index(host, host_port) is None:
                for stale in (switch_port, host_port):
                    if self._index(sw, stale) is not None:
                        sw.link("del", index=self._index(sw, stale))
                # The host vNIC is a passthru macvlan of the bridge device itself, moved to the
                # host: frames between host and containers cross no extra veth pair (about 6%
                # more host → container throughput than a veth, measured). "nopromisc" and a
                # bridge MAC equal to the vNIC's keep the bridge out of promiscuous mode: only
                # frames for that MAC, broadcasts and multicasts reach the host.
                sw.link("set", index=bidx, address=mac)
                sw.link("add", ifname=host_port, kind="macvlan", link=bidx,
                        macvlan_mode="passthru", macvlan_flags=MACVLAN_FLAG_NOPROMISC)
                sw.link("set", index=self._index(sw, host_port), net_ns_fd=self._home)
            hidx = self._index(host, host_port)
            # The kernel takes at most 254 bytes of alias (IFALIASZ less the NUL, which pyroute2
            # counts): a longer network name is shown cut, not refused with ERANGE.
            host.link("set", index=hidx,
                      ifalias=alias.encode()[:254].decode("utf-8", "ignore"))
            # Published ports reached at 127.0.0.1 are DNATed in the output hook and routed out
            # of this link: allowed on this one interface only, never host-wide.
            _write_sysctl(f"net/ipv4/conf/{host_port}/route_localnet", "1")
            with contextlib.suppress(OSError):
                _write_sysctl(f"net/ipv6/conf/{host_port}/disable_ipv6",
                              "0" if gateway6 else "1")
            have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                    for a in host.get_addr(index=hidx)}
            if (gateway, prefix_len) not in have:
                host.addr("add", index=hidx, address=gateway, prefixlen=prefix_len)
            if gateway6 and gateway6 not in have:
                host.addr("add", index=hidx, address=gateway6[0], prefixlen=gateway6[1],
                          flags=IFA_F_NODAD)
            host.link("set", index=hidx, state="up")
            sidx = self._index(sw, switch_port)
            if sidx is not None:   # a host vNIC made as a veth pair by an older silod
                sw.link("set", index=sidx, master=bidx, state="up")
        except SystemFailure:
            raise
        except Exception as e:
            raise _err("create vSwitch", e, bridge) from e

    def remove_vswitch(self, bridge: str, host_port: str) -> None:
        self.delete_link("host", host_port)
        self.delete_link("switch", bridge)

    # ----- external vSwitches: an uplink NIC or a VXLAN tunnel on the bridge ----------------
    def nic_info(self, name: str) -> dict[str, Any] | None:
        """The host NIC ``name`` as the drivers need to judge it (None: not in the host)."""
        idx = self._index(self.host, name)
        if idx is None:
            return None
        link = self.host.get_links(idx)[0]
        info = link.get_attr("IFLA_LINKINFO")
        return {
            "mac": link.get_attr("IFLA_ADDRESS"), "mtu": link.get_attr("IFLA_MTU"),
            "master": link.get_attr("IFLA_MASTER"), "up": bool(link["flags"] & 1),
            "kind": info.get_attr("IFLA_INFO_KIND") if info else None,
            "ipv4": [a.get_attr("IFA_ADDRESS") for a in self.host.get_addr(index=idx, family=2)],
        }

    def ensure_bridge(self, bridge: str) -> None:
        sw = self.switch
        self._bridges.pop(bridge, None)
        if self._index(sw, bridge) is None:
            sw.link("add", ifname=bridge, kind="bridge")
        sw.link("set", index=self._index(sw, bridge), state="up")

    def adopt_uplink(self, bridge: str, nic: str, mac: str | None, learning: bool) -> None:
        """The external vSwitch takes the NIC: it moves into the vSwitch namespace as a bridge
        port (Hyper-V binds the physical NIC to the switch the same way). ``mac``: a new own
        address for the port, so the NIC's address is free to stand for the containers."""
        sw = self.switch
        try:
            self.ensure_bridge(bridge)
            if self._index(sw, nic) is None:
                hidx = self._index(self.host, nic)
                if hidx is None:
                    raise SystemFailure(f"network interface {nic} not found",
                                        operation="create network")
                fd = os.open(self.switch_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    self.host.link("set", index=hidx, net_ns_fd=fd)
                finally:
                    os.close(fd)
            idx = self._index(sw, nic)
            if mac:
                sw.link("set", index=idx, address=mac)
            sw.link("set", index=idx, master=self._index(sw, bridge), state="up")
            sw.brport("set", index=idx, learning=1 if learning else 0)
        except SystemFailure:
            raise
        except Exception as e:
            raise _err("attach network interface", e, nic) from e

    def release_uplink(self, nic: str, mac: str | None, up: bool) -> None:
        """The NIC goes back to the host as it was (own MAC, state); idempotent."""
        sw = self.switch
        idx = self._index(sw, nic)
        if idx is None:
            return
        try:
            sw.link("set", index=idx, master=0, state="down")
            if mac:
                sw.link("set", index=idx, address=mac)
            sw.link("set", index=idx, net_ns_fd=self._home)
            hidx = self._index(self.host, nic)
            if hidx is not None and up:
                self.host.link("set", index=hidx, state="up")
        except Exception as e:
            raise _err("release network interface", e, nic) from e

    def ensure_vxlan(self, name: str, bridge: str, vni: int, local: str, port: int,
                     peers: list[str]) -> None:
        """A VXLAN tunnel port on the bridge. It is made in the host namespace, so its UDP
        socket (the underlay) stays there, and then moved into the vSwitch namespace; every
        peer VTEP gets an all-zeros FDB entry (head-end replication of floods), and remote
        MACs are learnt from what arrives, so known unicast goes to one VTEP only."""
        sw = self.switch
        try:
            self.ensure_bridge(bridge)
            if self._index(sw, name) is None:
                if self._index(self.host, name) is None:
                    try:
                        self.host.link("add", ifname=name, kind="vxlan", vxlan_id=vni,
                                       vxlan_local=local, vxlan_port=port, vxlan_learning=1)
                    except Exception as e:
                        if getattr(e, "code", 0) == errno.EOPNOTSUPP:
                            raise Unavailable(
                                "this kernel has no vxlan link type (CONFIG_VXLAN) and none can "
                                "be loaded: overlay networks are not available on this host",
                                operation="create network") from None
                        raise
                fd = os.open(self.switch_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    self.host.link("set", index=self._index(self.host, name), net_ns_fd=fd)
                finally:
                    os.close(fd)
            idx = self._index(sw, name)
            sw.link("set", index=idx, master=self._index(sw, bridge), state="up")
            have = {n.get_attr("NDA_DST") for n in sw.fdb("dump", ifindex=idx)
                    if n.get_attr("NDA_LLADDR") == "00:00:00:00:00:00"}
            for peer in peers:
                if peer not in have:
                    sw.fdb("append", ifindex=idx, lladdr="00:00:00:00:00:00", dst=peer)
        except (SystemFailure, Unavailable):
            raise
        except Exception as e:
            raise _err("create VXLAN tunnel", e, name) from e

    def switch_nft(self, commands: list[dict[str, Any]]) -> None:
        """One nftables batch run inside the vSwitch namespace (its bridge-family table)."""
        self.switch  # noqa: B018
        self.nft_in(self.switch_path, commands)

    def nft_in(self, netns_path: str, commands: list[dict[str, Any]]) -> None:
        """One nftables batch run inside a namespace (a context made there, so its socket is)."""
        from silobox.network.nft import Nft
        with self.inside(netns_path):
            ctx = Nft()
            try:
                ctx.run(commands)
            finally:
                ctx.close()

    def set_routes(self, netns_path: str, ifname: str, add: list[tuple[str, str]],
                   remove: list[tuple[str, str]]) -> None:
        """Route policies: (destination prefix, next hop or '') routes via ``ifname``."""
        with self.inside(netns_path):
            inner = _iproute()
            try:
                idx = self._index(inner, ifname)
                if idx is None:
                    raise SystemFailure(f"{ifname} is missing in the compartment",
                                        operation="route policy")
                for dst, via in remove:
                    with contextlib.suppress(Exception):
                        inner.route("del", dst=dst, oif=idx, **({"gateway": via} if via else {}))
                for dst, via in add:
                    kw: dict[str, Any] = {"gateway": via} if via else {"scope": 253}
                    inner.route("replace", dst=dst, oif=idx, **kw)
            except SystemFailure:
                raise
            except Exception as e:
                raise _err("route policy", e, ifname) from e
            finally:
                inner.close()

    def netns_routes(self, netns_path: str) -> list[tuple[str, str, str]]:
        """(destination, gateway, device) of the compartment's main table, for views/tests."""
        with self.inside(netns_path):
            inner = _iproute()
            try:
                names = {l["index"]: l.get_attr("IFLA_IFNAME") for l in inner.get_links()}
                return [(f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}",
                         r.get_attr("RTA_GATEWAY") or "", names.get(r.get_attr("RTA_OIF"), ""))
                        for r in inner.get_routes(family=2, table=254)]
            finally:
                inner.close()

    # ----- endpoints --------------------------------------------------------------------------
    def create_endpoint(self, netns_path: str, bridge: str, port: str, mac: str,
                        addresses: list[tuple[str, int]], gateway: str | None,
                        ifname: str = "eth0", create_ns: bool = True, mtu: int = 0,
                        isolated: bool = False, gateway6: str | None = None) -> None:
        """A container vNIC: veth ``port`` on the bridge, peer ``ifname`` inside ``netns_path``."""
        sw = self.switch
        try:
            if create_ns:
                self.ensure_netns(netns_path)
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                # Enslaved and up in the same request that creates it (one round trip less).
                # The bridge's index is remembered: asking for it is a round trip whose answer
                # pyroute2 decodes in full (~0.5 ms of CPU). A remembered index that went stale
                # (the bridge made again by someone else) fails the request; asked anew then.
                for fresh in (bridge not in self._bridges, True):
                    bidx = self._bridge_index(bridge, fresh)
                    try:
                        sw.link("add", ifname=port, kind="veth", master=bidx, state="up",
                                **({"mtu": mtu} if mtu else {}),
                                peer={"ifname": ifname, "net_ns_fd": fd, "address": mac})
                        break
                    except Exception:
                        if fresh:
                            raise
            finally:
                os.close(fd)
            if isolated:
                sw.brport("set", index=self._index(sw, port), isolated=1)
            with self.inside(netns_path):
                inner = _iproute()
                try:
                    if create_ns:   # a new namespace's loopback is always index 1
                        inner.link("set", index=1, state="up")
                    else:
                        self._link_up_by_name(inner, "lo")
                    # an ioctl in this thread's namespace: a netlink "get" costs ~20× more
                    idx = socket.if_nametoindex(ifname)
                    if mtu:
                        inner.link("set", index=idx, mtu=mtu)
                    for addr, plen in addresses:
                        # IPv6: no duplicate address detection (IPAM guarantees uniqueness),
                        # so the address is usable at once, not "tentative" for a second.
                        inner.addr("add", index=idx, address=addr, prefixlen=plen,
                                   **({"flags": IFA_F_NODAD} if ":" in addr else {}))
                    inner.link("set", index=idx, state="up")
                    if gateway:
                        inner.route("add", dst="0.0.0.0/0", gateway=gateway, oif=idx)
                    if gateway6:
                        inner.route("add", dst="::/0", gateway=gateway6, oif=idx, family=10)
                finally:
                    inner.close()
        except SystemFailure:
            raise
        except Exception as e:
            raise _err("create endpoint", e, port) from e

    def _bridge_index(self, bridge: str, fresh: bool) -> int:
        if fresh or bridge not in self._bridges:
            self._bridges.pop(bridge, None)
            idx = self._index(self.switch, bridge)
            if idx is None:
                raise SystemFailure(f"vSwitch {bridge} is missing", operation="create endpoint")
            self._bridges[bridge] = idx
        return self._bridges[bridge]

    def create_tap_endpoint(self, bridge: str, port: str, mtu: int = 0,
                            isolated: bool = False) -> None:
        """A VM's vNIC: a persistent tap ``port`` on the bridge, which the VM's QEMU opens (the
        guest addresses its end; ``delete_link("switch", port)`` removes it)."""
        sw = self.switch
        try:
            bidx = self._index(sw, bridge)
            if bidx is None:
                raise SystemFailure(f"vSwitch {bridge} is missing", operation="create endpoint")
            with self.inside(self.switch_path):   # the tap ioctl finds names in this namespace
                sw.link("add", ifname=port, kind="tuntap", mode="tap",
                        ifr={"no_pi": True, "vnet_hdr": True, "one_queue": False,
                             "multi_queue": False})
            pidx = self._index(sw, port)
            sw.link("set", index=pidx, master=bidx, state="up", **({"mtu": mtu} if mtu else {}))
            if isolated:
                sw.brport("set", index=pidx, isolated=1)
        except SystemFailure:
            raise
        except Exception as e:
            raise _err("create endpoint", e, port) from e

    def remove_endpoint_link(self, netns_path: str, ifname: str) -> None:
        """Detach one vNIC from a namespace that stays (network disconnect)."""
        with self.inside(netns_path):
            inner = _iproute()
            try:
                idx = self._index(inner, ifname)
                if idx is not None:
                    inner.link("del", index=idx)
            finally:
                inner.close()

    def netns_links(self, netns_path: str) -> list[str]:
        with self.inside(netns_path):
            inner = _iproute()
            try:
                return [l.get_attr("IFLA_IFNAME") for l in inner.get_links()]
            finally:
                inner.close()

    def udp_socket_in(self, netns_path: str, address: str, port: int) -> Any:
        """A UDP socket bound inside the namespace (it stays there after the thread leaves)."""
        with self.inside(netns_path):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((address, port))
                s.setblocking(False)
            except BaseException:
                s.close()
                raise
        return s

    def host_routes(self) -> list[tuple[str, int]]:
        """(destination, prefix length) of every IPv4 route and address of the host."""
        out = []
        for table in (254, 255):
            for r in self.host.get_routes(family=2, table=table):
                dst = r.get_attr("RTA_DST")
                if dst and r["dst_len"] > 0:
                    out.append((dst, r["dst_len"]))
        for a in self.host.get_addr(family=2):
            out.append((a.get_attr("IFA_ADDRESS"), a["prefixlen"]))
        return out

    def host_routes6(self) -> list[tuple[str, int]]:
        """(destination, prefix length) of the host's IPv6 routes and global addresses."""
        out = []
        for r in self.host.get_routes(family=10, table=254):
            dst = r.get_attr("RTA_DST")
            if dst and r["dst_len"] > 0 and not dst.startswith("fe80"):
                out.append((dst, r["dst_len"]))
        for a in self.host.get_addr(family=10):
            addr = a.get_attr("IFA_ADDRESS")
            if not addr.startswith("fe80") and addr != "::1":
                out.append((addr, a["prefixlen"]))
        return out

    def host_addresses(self) -> list[str]:
        return [a.get_attr("IFA_ADDRESS") for a in self.host.get_addr(family=2)]


def _log_failure(job: "asyncio.Future[Any]") -> None:
    if not job.cancelled() and job.exception() is not None:
        import logging
        logging.getLogger("silobox.network").warning("network teardown: %s", job.exception())


def is_netns(path: str) -> bool:
    """True if ``path`` is a bind-mounted network namespace (nsfs), not an empty file."""
    try:
        st = os.stat(path)
        parent = os.stat(os.path.dirname(path))
    except OSError:
        return False
    return st.st_dev != parent.st_dev


def _write_sysctl(name: str, value: str) -> None:
    with open(f"/proc/sys/{name}", "w") as f:
        f.write(value)
