"""The host's forwarding, owned as dockerd and netavark own it.

A nat network's containers reach the world through the *host's* IP stack: their packets come in
on the host vNIC (``sbx<tag>nat<k>``), are routed, masqueraded and leave through the host's
uplink. Two host settings decide whether that works, and silod takes care of both:

* ``net.ipv4.ip_forward``: switched on while silod runs a nat network that is not internal;
  ``net.ipv6.conf.all.forwarding`` likewise while one of them has an IPv6 subnet (each with a
  lease of its own).
  Several silods (tests, development) may share a host, so the switch is leased: a host-wide
  lease file under ``/run`` records the value found before the first silod changed it and the
  daemons holding it (``flock`` on the sysctl file guards it); the last holder to stop
  cleanly writes the found value back and the lease file goes. A value that
  was already 1 is never touched.
* a host firewall whose ``forward`` hook drops by default (IPv4 and IPv6) (Docker's iptables ``FORWARD`` policy
  DROP, an nftables ruleset with ``policy drop``): a packet dropped by any base chain is
  dropped, so an ``accept`` in silobox's own table cannot help. silod appends narrowly scoped
  accept rules to each such chain, one set per nat network and address family: from the
  network's host vNIC with a source in its subnet, and to it for replies and published
  (DNATed) connections.
  Every rule carries the comment ``silobox`` (``silobox_<tag>`` for other daemons); those and
  only those are removed when the network goes and at a clean stop. iptables' own chains
  (``ip``/``ip6 filter FORWARD`` of iptables-nft, legacy iptables' ``filter``) are written
  with the iptables/ip6tables tool of that backend, so iptables keeps reading them; other tables through
  libnftables.

``HostForwarding.report()`` is what ``silo info`` shows.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from silobox.atomic import atomic_write
from silobox.errors import SystemFailure

log = logging.getLogger("silobox.network")

LEASE_FILE = "/run/silobox-ip-forward.json"
LEASE6_FILE = "/run/silobox-ipv6-forward.json"
IPV4_FORWARD = "/proc/sys/net/ipv4/ip_forward"
IPV6_FORWARD = "/proc/sys/net/ipv6/conf/all/forwarding"
LEGACY_TABLES = {"ip": "/proc/net/ip_tables_names", "ip6": "/proc/net/ip6_tables_names"}


@dataclass(frozen=True)
class RoutedNetwork:
    """A network whose traffic the host forwards: its host vNIC, IPv4 and IPv6 subnets."""

    name: str
    host_port: str
    subnet: str
    subnet6: str = ""          # '' unless the network has IPv6 (``--ipv6``)


@dataclass
class FirewallHook:
    """One foreign base chain on the forward hook that drops by default."""

    backend: str            # "nft", "iptables-nft" or "iptables-legacy"
    family: str
    table: str
    chain: str
    rules: int = 0          # accept rules of ours in it

    @property
    def label(self) -> str:
        return f"{self.backend}: {self.family} {self.table} {self.chain}"


@dataclass
class ForwardingState:
    ip_forward: str = ""             # "enabled by silod", "already enabled", "disabled", ...
    hooks: list[FirewallHook] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SysctlLease:
    """A forwarding sysctl (``net.ipv4.ip_forward``, ``net.ipv6.conf.all.forwarding``) turned
    on while any silod holds it, restored by the last one."""

    def __init__(self, holder: str, path: str = LEASE_FILE, sysctl: str = IPV4_FORWARD,
                 others: Callable[[], list[str]] | None = None) -> None:
        self.holder = holder                 # "<pid> <root>"
        self.path = path
        self.sysctl = sysctl
        # Other engines' links that route through the host too (Docker started after silod
        # found forwarding on and never recorded needing it): restoring would cut them off.
        self.others = others or other_engines_links
        self.name = sysctl.removeprefix("/proc/sys/").replace("/", ".")
        self.held = False

    @contextlib.contextmanager
    def _locked(self) -> Any:
        # The lock is taken on the sysctl's own file: nothing to create, nothing left behind.
        fd = os.open(self.sysctl, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with open(self.path) as f:
                    doc = json.load(f)
            except (FileNotFoundError, ValueError):
                doc = {}
            if not isinstance(doc, dict):
                doc = {}
            yield doc
        finally:
            os.close(fd)

    @staticmethod
    def _live_holders(doc: dict[str, Any], without: str = "") -> list[str]:
        """The holders whose silod still runs; entries that do not parse are dropped."""
        live = []
        for h in doc.get("holders") or []:
            try:
                if h != without and _alive(int(str(h).split()[0])):
                    live.append(h)
            except (ValueError, IndexError):
                continue
        return live

    def _save(self, doc: dict[str, Any]) -> None:
        if doc.get("holders"):
            atomic_write(self.path, json.dumps(doc))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _read(self) -> str:
        with open(self.sysctl) as f:
            return f.read().strip()

    def _write(self, value: str) -> None:
        with open(self.sysctl, "w") as f:
            f.write(value)

    def acquire(self) -> str:
        """Turn forwarding on (if off) and hold it; returns what was done, for ``info``."""
        with self._locked() as doc:
            holders = self._live_holders(doc)
            current = self._read()
            if current != "1":
                self._write("1")
                if not holders:
                    doc["original"] = current
                log.info("enabled %s (was %s) for the nat networks' outbound traffic; "
                         "restored when the last silod stops", self.name, current)
            if self.holder not in holders:
                holders.append(self.holder)
            doc["holders"] = holders
            self._save(doc)
            self.held = True
            return ("enabled by silod" if doc.get("original", "1") != "1"
                    else "already enabled")

    def release(self) -> None:
        """Drop our hold; the last holder writes back the value found before the first."""
        if not self.held:
            return
        with self._locked() as doc:
            holders = self._live_holders(doc, without=self.holder)
            doc["holders"] = holders
            if not holders:
                self._restore(doc)
            self._save(doc)
        self.held = False

    def reap(self) -> None:
        """A lease whose holders were all killed (no clean stop released it) is settled by
        the next silod, also one that does not need the sysctl itself: the found value comes
        back as after a release."""
        if self.held or not os.path.exists(self.path):
            return
        with self._locked() as doc:
            if self._live_holders(doc):
                return
            doc["holders"] = []
            self._restore(doc)
            self._save(doc)

    def _restore(self, doc: dict[str, Any]) -> None:
        if doc.get("original", "1") == "1" or self._read() != "1":
            return
        others = self.others()
        if others:
            log.info("left %s on: %s of another engine route through the host",
                     self.name, ", ".join(others[:5]))
        else:
            self._write(doc["original"])
            log.info("restored %s to %s", self.name, doc["original"])


OTHER_ENGINES = ("docker0", "br-", "podman", "cni", "virbr", "lxcbr", "lxdbr", "incusbr",
                 "flannel", "cilium_", "kube-bridge")


def other_engines_links(sys_net: str = "/sys/class/net") -> list[str]:
    """Links other container engines and hypervisors route their guests through (Docker's
    ``docker0`` and ``br-<id>``, Podman's, CNI's, libvirt's, LXC's, Kubernetes CNIs')."""
    try:
        names = os.listdir(sys_net)
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(OTHER_ENGINES))


def _iptables_tool(backend: str, family: str = "ip") -> str | None:
    """iptables' tool of a backend for a family (``ip6tables-nft`` for ``ip6``)."""
    base = "ip6tables" if family == "ip6" else "iptables"
    return shutil.which(f"{base}-legacy" if backend == "iptables-legacy" else f"{base}-nft")


class ForwardRules:
    """Our accept rules in foreign forward-hook chains whose policy is drop."""

    FAMILIES = ("ip", "ip6", "inet")

    def __init__(self, nft: Callable[[], Any], comment: str, own_tables: set[str]) -> None:
        self._nft = nft                       # lazily made libnftables context (nft.Nft)
        self.comment = comment
        self.own_tables = own_tables          # our own tables are never "foreign"
        self.hooks: list[FirewallHook] = []
        self.errors: list[str] = []

    # ----- discovery ----------------------------------------------------------------------------
    def drop_chains(self, legacy: bool = True) -> list[FirewallHook]:
        """Every base chain of another owner on the IPv4 or IPv6 forward hook with policy drop
        (legacy iptables' only when ``legacy``: that asks a subprocess)."""
        found: list[FirewallHook] = []
        try:
            out = self._nft().run([{"list": {"chains": {}}}])
        except SystemFailure:
            out = {}
        for item in out.get("nftables", []):
            c = item.get("chain")
            if not c or c.get("hook") != "forward" or c.get("policy") != "drop":
                continue
            if c["family"] not in self.FAMILIES or c["table"] in self.own_tables:
                continue
            iptables = (c["family"] in ("ip", "ip6") and c["table"] == "filter"
                        and c["name"] == "FORWARD")
            backend = ("iptables-nft" if iptables and _iptables_tool("iptables-nft", c["family"])
                       else "nft")
            found.append(FirewallHook(backend, c["family"], c["table"], c["name"]))
        if legacy:
            for family in ("ip", "ip6"):
                if self._legacy_forward_drops(family):
                    found.append(FirewallHook("iptables-legacy", family, "filter", "FORWARD"))
        return found

    @staticmethod
    def _legacy_filter_present(family: str = "ip") -> bool:
        """Legacy iptables' filter table exists (never asked otherwise: listing it would
        instantiate it)."""
        try:
            with open(LEGACY_TABLES[family]) as f:
                return "filter" in f.read().split()
        except OSError:
            return False

    def _legacy_forward_drops(self, family: str) -> bool:
        if not self._legacy_filter_present(family):
            return False
        tool = _iptables_tool("iptables-legacy", family)
        if not tool:
            return False
        r = subprocess.run([tool, "-w", "5", "-S", "FORWARD"], capture_output=True, text=True,
                           timeout=30)
        return r.returncode == 0 and "-P FORWARD DROP" in r.stdout.splitlines()

    def signature(self) -> list[tuple[str, str, str, str]]:
        """What ``sync`` last found, to notice a firewall that appeared since (Docker started
        after silod, an administrator's policy change) without listing rules."""
        return sorted((h.backend, h.family, h.table, h.chain) for h in self.hooks)

    def intact(self) -> bool:
        """Our rules are still in every chain ``sync`` put them in: a firewall reload
        (``nft -f`` with ``flush ruleset``, ``iptables-restore``, ufw or firewalld) recreates
        the same dropping chain without them."""
        placed = {(h.family, h.table, h.chain) for h in self.hooks if h.rules}
        if not placed:
            return True
        found = {(h.family, h.table, h.chain) for h in self._chains_with_ours()}
        return placed <= found

    def nft_signature(self) -> list[tuple[str, str, str, str]]:
        return sorted([(h.backend, h.family, h.table, h.chain)
                       for h in self.drop_chains(legacy=False)]
                      + [s for s in self.signature() if s[0] == "iptables-legacy"])

    # ----- rules --------------------------------------------------------------------------------
    def sync(self, networks: list[RoutedNetwork]) -> None:
        """Make our rules in every dropping chain exactly those for ``networks``; rules of
        ours in chains that no longer drop (or for networks that are gone) are removed."""
        self.errors = []
        hooks = self.drop_chains() if networks else []
        wanted = {(h.backend, h.family, h.table, h.chain) for h in hooks}
        for h in self._chains_with_ours():
            if (h.backend, h.family, h.table, h.chain) not in wanted:
                self._apply(h, [])
        for h in hooks:
            self._apply(h, networks)
        self.hooks = hooks

    def remove_all(self) -> None:
        for h in self._chains_with_ours():
            self._apply(h, [])
        self.hooks = []

    def _chains_with_ours(self) -> list[FirewallHook]:
        """Chains holding a rule with our comment (also after a killed silod)."""
        out: list[FirewallHook] = []
        items: list[dict[str, Any]] = []
        for family in self.FAMILIES:
            try:
                items += self._nft().run([{"list": {"ruleset": {"family": family}}}]).get(
                    "nftables", [])
            except SystemFailure:
                pass
        seen = set()
        for item in items:
            r = item.get("rule")
            if r and r.get("comment") == self.comment:
                key = (r["family"], r["table"], r["chain"])
                if key not in seen and r["table"] not in self.own_tables:
                    seen.add(key)
                    out.append(FirewallHook("nft", *key))
        for family in ("ip", "ip6"):
            for backend in ("iptables-nft", "iptables-legacy"):
                if backend == "iptables-legacy" and not self._legacy_filter_present(family):
                    continue
                if backend == "iptables-nft" and not self._nft_filter_forward(family):
                    continue
                if self._iptables_ours(backend, family, "FORWARD"):
                    out = [h for h in out if not (backend == "iptables-nft"
                                                  and h.family == family and h.table == "filter"
                                                  and h.chain == "FORWARD")]
                    out.append(FirewallHook(backend, family, "filter", "FORWARD"))
        return out

    def _nft_filter_forward(self, family: str = "ip") -> bool:
        """iptables-nft's ``ip``/``ip6 filter FORWARD`` exists (asked of libnftables, no
        subprocess)."""
        try:
            self._nft().run([{"list": {"chain": {"family": family, "table": "filter",
                                                 "name": "FORWARD"}}}])
            return True
        except SystemFailure:
            return False

    def _apply(self, h: FirewallHook, networks: list[RoutedNetwork]) -> None:
        try:
            if h.backend == "nft":
                self._apply_nft(h, networks)
            else:
                self._apply_iptables(h, networks)
        except (SystemFailure, OSError, subprocess.SubprocessError) as e:
            msg = f"forward rules in {h.label}: {e}"
            log.warning("%s", msg)
            self.errors.append(msg)

    @staticmethod
    def _subnets(family: str, n: RoutedNetwork) -> list[tuple[str, str]]:
        """(payload protocol, subnet) pairs of a network that a chain of ``family`` sees."""
        out = []
        if family in ("ip", "inet"):
            out.append(("ip", n.subnet))
        if family in ("ip6", "inet") and n.subnet6:
            out.append(("ip6", n.subnet6))
        return out

    # nftables tables of others
    def _nft_rules(self, h: FirewallHook, n: RoutedNetwork) -> list[list[dict[str, Any]]]:
        from silobox.network import nft as N
        rules = []
        for proto, subnet in self._subnets(h.family, n):
            sub = N.prefix(subnet)
            rules += [
                [N.match(N.meta("iifname"), n.host_port), N.match(N.payload(proto, "saddr"), sub),
                 {"accept": None}],
                [N.match(N.meta("oifname"), n.host_port), N.match(N.payload(proto, "daddr"), sub),
                 N.match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                 {"accept": None}],
                [N.match(N.meta("oifname"), n.host_port), N.match(N.payload(proto, "daddr"), sub),
                 N.match({"ct": {"key": "status"}}, "dnat", "in"), {"accept": None}],
            ]
        return rules

    def _apply_nft(self, h: FirewallHook, networks: list[RoutedNetwork]) -> None:
        loc = {"family": h.family, "table": h.table, "chain": h.chain}
        try:
            doc = self._nft().run([{"list": {"chain": {
                "family": h.family, "table": h.table, "name": h.chain}}}])
        except SystemFailure:
            return  # the chain is gone, and our rules with it
        cmds: list[dict[str, Any]] = []
        for item in doc.get("nftables", []):
            r = item.get("rule")
            if r and r.get("comment") == self.comment:
                cmds.append({"delete": {"rule": {**loc, "handle": r["handle"]}}})
        before = len(cmds)
        added = 0
        for n in networks:
            for expr in self._nft_rules(h, n):
                cmds.append({"add": {"rule": {**loc, "expr": expr, "comment": self.comment}}})
                added += 1
        if cmds:
            self._nft().run(cmds)
        h.rules = added
        self._log(h, before, h.rules, networks)

    @staticmethod
    def _log(h: FirewallHook, before: int, after: int, networks: list[RoutedNetwork]) -> None:
        if after and after != before:
            log.info("%s drops forwarded traffic by default: %d accept rules for %s there",
                     h.label, after, ", ".join(n.name for n in networks))
        elif before and not after:
            log.info("removed silod's %d accept rules from %s", before, h.label)

    # iptables' own chains
    def _ipt_specs(self, family: str, n: RoutedNetwork) -> list[list[str]]:
        c = ["-m", "comment", "--comment", self.comment, "-j", "ACCEPT"]
        out = []
        for _, subnet in self._subnets(family, n):
            out += [["-s", subnet, "-i", n.host_port] + c,
                    ["-d", subnet, "-o", n.host_port, "-m", "conntrack", "--ctstate",
                     "RELATED,ESTABLISHED,DNAT"] + c]
        return out

    def _iptables(self, backend: str, family: str, *args: str, check: bool = True
                  ) -> subprocess.CompletedProcess[str]:
        tool = _iptables_tool(backend, family)
        if not tool:
            raise SystemFailure(f"{backend} ({family}) is not installed", operation="iptables")
        r = subprocess.run([tool, "-w", "5", *args], capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise SystemFailure(f"{os.path.basename(tool)} {' '.join(args)}: "
                                f"{r.stderr.strip()}", operation="iptables")
        return r

    def _iptables_ours(self, backend: str, family: str, chain: str) -> list[list[str]]:
        """Our rules in the chain, as ``-S`` shows them (without ``-A CHAIN``)."""
        if not _iptables_tool(backend, family):
            return []
        r = self._iptables(backend, family, "-S", chain, check=False)
        if r.returncode != 0:
            return []
        out = []
        for line in r.stdout.splitlines():
            words = shlex.split(line)
            if words[:2] != ["-A", chain]:
                continue
            i = words.index("--comment") if "--comment" in words else -1
            if i >= 0 and i + 1 < len(words) and words[i + 1] == self.comment:
                out.append(words[2:])
        return out

    def _apply_iptables(self, h: FirewallHook, networks: list[RoutedNetwork]) -> None:
        present = self._iptables_ours(h.backend, h.family, h.chain)
        wanted = [s for n in networks for s in self._ipt_specs(h.family, n)]
        if sorted(present) != sorted(wanted):
            self._log(h, len(present), len(wanted), networks)
        for spec in present:
            if spec not in wanted:
                self._iptables(h.backend, h.family, "-D", h.chain, *spec)
        for spec in wanted:
            if self._iptables(h.backend, h.family, "-C", h.chain, *spec,
                              check=False).returncode != 0:
                self._iptables(h.backend, h.family, "-A", h.chain, *spec)
        h.rules = len(wanted)


class HostForwarding:
    """What silod changes on the host so that nat networks route: the sysctls and the rules.

    ``enabled`` False (``silod --ip-forward=false`` / ``--forward-rules=false``): the
    administrator owns both; silod only reports what it sees."""

    def __init__(self, nft: Callable[[], Any], comment: str, own_tables: set[str], holder: str,
                 manage_sysctl: bool = True, manage_rules: bool = True,
                 lease_path: str = LEASE_FILE, lease6_path: str = LEASE6_FILE) -> None:
        self.manage_sysctl = manage_sysctl
        self.manage_rules = manage_rules
        self.lease = SysctlLease(holder, lease_path)
        self.lease6 = SysctlLease(holder, lease6_path, IPV6_FORWARD)
        self.rules = ForwardRules(nft, comment, own_tables)
        self.ip_forward = ""
        self.ip6_forward = ""
        self.sysctl_errors: dict[str, str] = {}
        self._checked = 0.0

    def _acquire(self, lease: SysctlLease) -> str:
        try:
            how = lease.acquire()
            self.sysctl_errors.pop(lease.name, None)
            return how
        except OSError as e:
            self.sysctl_errors[lease.name] = f"cannot enable {lease.name}: {e}"
            log.warning("%s", self.sysctl_errors[lease.name])
            return ""

    def sync(self, networks: list[RoutedNetwork]) -> None:
        """Called whenever the set of routed networks may have changed."""
        if networks and self.manage_sysctl and not self.lease.held:
            self.ip_forward = self._acquire(self.lease)
        if (any(n.subnet6 for n in networks) and self.manage_sysctl
                and not self.lease6.held):
            _warn_router_advertisements()
            self.ip6_forward = self._acquire(self.lease6)
        elif self.manage_sysctl and not self.lease6.held:
            self._reap(self.lease6)
        if self.manage_rules:
            self.rules.sync(networks)

    CHECK_INTERVAL = 1.0

    def check(self, networks: list[RoutedNetwork]) -> None:
        """Re-check at an endpoint's start: a firewall that appeared since the last sync
        (Docker started after silod) gets our rules too. Listing the chains costs ~7 ms, so
        a burst of starts looks once a second."""
        now = time.monotonic()
        if not (self.manage_rules and networks) or now - self._checked < self.CHECK_INTERVAL:
            return
        self._checked = now
        if self.rules.nft_signature() != self.rules.signature() or not self.rules.intact():
            self.rules.sync(networks)

    def close(self) -> None:
        """Clean stop with no endpoint left: our rules go, the sysctl leases are released."""
        if self.manage_rules:
            self.rules.remove_all()
        self.lease.release()
        self.lease6.release()
        if self.manage_sysctl:
            self._reap(self.lease6)

    @staticmethod
    def _reap(lease: SysctlLease) -> None:
        try:
            lease.reap()
        except OSError as e:
            log.warning("cannot settle the %s lease of a killed silod: %s", lease.name, e)

    def report(self) -> dict[str, Any]:
        if not self.manage_sysctl:
            how = how6 = "not managed (--ip-forward=false)"
        else:
            how = (self.sysctl_errors.get(self.lease.name) or self.ip_forward
                   or "not needed (no routed network)")
            how6 = (self.sysctl_errors.get(self.lease6.name) or self.ip6_forward
                    or "not needed (no routed IPv6 network)")
        return {
            "IPv4Forwarding": _sysctl_on(IPV4_FORWARD),
            "IPForward": how,
            "IPv6Forwarding": _sysctl_on(IPV6_FORWARD),
            "IP6Forward": how6,
            "ForwardRules": ("not managed (--forward-rules=false)" if not self.manage_rules
                             else [{"Backend": h.backend, "Table": f"{h.family} {h.table}",
                                    "Chain": h.chain, "Rules": h.rules}
                                   for h in self.rules.hooks]),
            "Errors": list(self.rules.errors) + list(self.sysctl_errors.values()),
        }

    def warnings(self) -> list[str]:
        out = []
        r = self.report()
        if not r["IPv4Forwarding"]:
            out.append("WARNING: IPv4 forwarding is disabled; containers cannot reach "
                       "beyond the host")
        out += [f"WARNING: {e}" for e in r["Errors"]]
        if not self.manage_rules and self.rules.drop_chains():
            out.append("WARNING: the host's forward hook drops by default and silod does not "
                       "add accept rules (--forward-rules=false): allow the nat networks' "
                       "traffic yourself")
        return out


def _sysctl_on(path: str) -> bool:
    try:
        with open(path) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _warn_router_advertisements() -> None:
    """With IPv6 forwarding on, an interface whose ``accept_ra`` is 1 stops taking router
    advertisements (the kernel treats the host as a router); ``accept_ra=2`` keeps them. silod
    does not change an interface's setting: it says which would be affected."""
    base = "/proc/sys/net/ipv6/conf"
    try:
        names = os.listdir(base)
    except OSError:
        return
    affected = []
    for name in names:
        if name in ("all", "default", "lo"):
            continue
        try:
            with open(os.path.join(base, name, "accept_ra")) as f:
                if f.read().strip() == "1":
                    affected.append(name)
        except OSError:
            continue
    if affected and not _sysctl_on(IPV6_FORWARD):
        log.warning("enabling IPv6 forwarding: %s accept router advertisements only while "
                    "the host does not forward (accept_ra=1); set accept_ra=2 there if the "
                    "host's IPv6 configuration comes from them", ", ".join(sorted(affected)))
