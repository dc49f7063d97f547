"""Host forwarding rules (network/forwarding.py) against real firewalls, in a namespace of ours.

Every firewall here — Docker's iptables-nft ``FORWARD`` policy DROP, legacy iptables, an nft
table with ``policy drop`` — is made inside a network namespace the test creates, and the
module runs in a child process inside it (``ip netns exec``), so the host's ruleset is never
read for writing nor changed. The sysctl lease is tested on a file standing in for /proc/sys.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

from silobox.network.forwarding import SysctlLease as Lease, other_engines_links

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = r"""
import json, sys
from silobox.network.forwarding import ForwardRules, RoutedNetwork
from silobox.network.nft import Nft
nft = Nft()
fr = ForwardRules(lambda: nft, "silobox_0042", {"silobox_0042"})
nets = [RoutedNetwork(*n) for n in json.loads(sys.argv[2])]
if sys.argv[1] == "sync":
    fr.sync(nets)
else:
    fr.remove_all()
print(json.dumps({"hooks": [[h.backend, h.family, h.table, h.chain, h.rules] for h in fr.hooks],
                  "errors": fr.errors}))
"""


def ns_run(ns: str, *args: str, check: bool = True) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    if check and r.returncode != 0:
        raise AssertionError(f"{args}: {r.stderr}")
    return r.stdout


@pytest.fixture
def netns():
    ns = f"sbxfw{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def child(ns: str, op: str, nets: list[tuple[str, ...]]) -> dict:
    out = ns_run(ns, sys.executable, "-c", CHILD, op, json.dumps(nets))
    return json.loads(out.strip().splitlines()[-1])


NETS = [("nat", "sbx0042nat0", "192.168.48.0/20"), ("n1", "sbx0042nat1", "10.77.0.0/24")]


def test_iptables_nft_forward_drop_gets_exactly_our_rules(netns: str) -> None:
    if not shutil.which("iptables-nft"):
        pytest.skip("iptables-nft is not installed")
    ns_run(netns, "iptables-nft", "-P", "FORWARD", "DROP")
    ns_run(netns, "iptables-nft", "-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT")
    r = child(netns, "sync", NETS)
    assert ["iptables-nft", "ip", "filter", "FORWARD", 4] in r["hooks"], r
    rules = ns_run(netns, "iptables-nft", "-S", "FORWARD")   # iptables still reads its chain
    assert "-P FORWARD DROP" in rules and "-A FORWARD -i docker0 -j ACCEPT" in rules
    ours = [l for l in rules.splitlines() if "silobox_0042" in l]
    assert len(ours) == 4, rules
    assert any("-s 192.168.48.0/20 -i sbx0042nat0" in l for l in ours)
    assert any("-d 10.77.0.0/24 -o sbx0042nat1" in l and "RELATED,ESTABLISHED,DNAT" in l
               for l in ours)
    # idempotent; a network removed takes its rules, and only those
    child(netns, "sync", NETS)
    r = child(netns, "sync", NETS[:1])
    rules = ns_run(netns, "iptables-nft", "-S", "FORWARD")
    assert len([l for l in rules.splitlines() if "silobox_0042" in l]) == 2
    assert "10.77.0.0/24" not in rules
    child(netns, "remove", [])
    rules = ns_run(netns, "iptables-nft", "-S", "FORWARD")
    assert "silobox" not in rules
    assert "-P FORWARD DROP" in rules and "-A FORWARD -i docker0 -j ACCEPT" in rules


def test_ip6tables_and_inet_forward_drop_get_ipv6_rules(netns: str) -> None:
    """Docker with its ip6tables on drops forwarded IPv6 too: an IPv6 network gets its pair
    there (an IPv4-only one none), an inet chain gets both families' rules."""
    if not shutil.which("ip6tables-nft"):
        pytest.skip("ip6tables-nft is not installed")
    nets = [("nat", "sbx0042nat0", "192.168.48.0/20"),
            ("v6", "sbx0042nat1", "10.77.0.0/24", "fd00:42:42::/64")]
    ns_run(netns, "ip6tables-nft", "-P", "FORWARD", "DROP")
    ns_run(netns, "nft", "add table inet fw; add chain inet fw forward "
           "{ type filter hook forward priority 0; policy drop; }")
    r = child(netns, "sync", nets)
    assert ["iptables-nft", "ip6", "filter", "FORWARD", 2] in r["hooks"], r
    assert ["nft", "inet", "fw", "forward", 9] in r["hooks"], r
    rules = ns_run(netns, "ip6tables-nft", "-S", "FORWARD")
    ours = [l for l in rules.splitlines() if "silobox_0042" in l]
    assert len(ours) == 2 and "-P FORWARD DROP" in rules, rules
    assert any("-s fd00:42:42::/64 -i sbx0042nat1" in l for l in ours), ours
    inet = ns_run(netns, "nft", "list", "chain", "inet", "fw", "forward")
    assert "ip6 saddr fd00:42:42::/64" in inet and "ip saddr 192.168.48.0/20" in inet, inet
    child(netns, "remove", [])
    assert "silobox" not in ns_run(netns, "ip6tables-nft", "-S", "FORWARD")
    assert "silobox" not in ns_run(netns, "nft", "list", "chain", "inet", "fw", "forward")


def test_nft_table_with_policy_drop(netns: str) -> None:
    ns_run(netns, "nft", "add table inet fw; add chain inet fw ffwd "
           "{ type filter hook forward priority 0; policy drop; }; "
           "add rule inet fw ffwd iifname lo accept")
    ns_run(netns, "nft", "add table ip silobox_0042; add chain ip silobox_0042 forward "
           "{ type filter hook forward priority -1; policy drop; }")  # ours: never touched
    r = child(netns, "sync", NETS)
    assert r["hooks"] == [["nft", "inet", "fw", "ffwd", 6]], r
    listed = json.loads(ns_run(netns, "nft", "-j", "list", "chain", "inet", "fw", "ffwd"))
    rules = [i["rule"] for i in listed["nftables"] if "rule" in i]
    assert len(rules) == 7 and sum(r.get("comment") == "silobox_0042" for r in rules) == 6
    text = ns_run(netns, "nft", "list", "chain", "inet", "fw", "ffwd")
    assert 'iifname "sbx0042nat0" ip saddr 192.168.48.0/20 accept' in text
    assert "ct status dnat" in text and "ct state established,related" in text
    # the chain stops dropping: our rules leave it
    ns_run(netns, "nft", "add chain inet fw ffwd { policy accept; }")
    r = child(netns, "sync", NETS)
    assert r["hooks"] == []
    assert "silobox" not in ns_run(netns, "nft", "list", "chain", "inet", "fw", "ffwd")
    assert "iifname \"lo\" accept" in ns_run(netns, "nft", "list", "chain", "inet", "fw", "ffwd")
    assert ns_run(netns, "nft", "list", "chain", "ip", "silobox_0042", "forward").count(
        "accept") == 0


def test_legacy_iptables_forward_drop(netns: str) -> None:
    if not shutil.which("iptables-legacy"):
        pytest.skip("iptables-legacy is not installed")
    ns_run(netns, "iptables-legacy", "-P", "FORWARD", "DROP", check=False)
    if "-P FORWARD DROP" not in ns_run(netns, "iptables-legacy", "-S", "FORWARD", check=False):
        pytest.skip("this kernel has no legacy ip_tables")
    try:
        r = child(netns, "sync", NETS[:1])
        assert ["iptables-legacy", "ip", "filter", "FORWARD", 2] in r["hooks"], r
        rules = ns_run(netns, "iptables-legacy", "-S", "FORWARD")
        assert len([l for l in rules.splitlines() if "silobox_0042" in l]) == 2, rules
        child(netns, "remove", [])
        rules = ns_run(netns, "iptables-legacy", "-S", "FORWARD")
        assert "silobox" not in rules and "-P FORWARD DROP" in rules
    finally:
        ns_run(netns, "iptables-legacy", "-F", "FORWARD", check=False)


def test_no_dropping_firewall_no_rules(netns: str) -> None:
    r = child(netns, "sync", NETS)
    assert r == {"hooks": [], "errors": []}


def test_sysctl_lease_is_shared_and_restored(tmp_path) -> None:
    sysctl = tmp_path / "ip_forward"
    sysctl.write_text("0\n")
    lease = str(tmp_path / "lease.json")
    me = os.getpid()

    def SysctlLease(holder: str, path: str, sysctl: str) -> Lease:
        return Lease(holder, path, sysctl, others=lambda: [])

    a = SysctlLease(f"{me} /a", lease, str(sysctl))
    b = SysctlLease(f"{me} /b", lease, str(sysctl))
    assert a.acquire() == "enabled by silod" and sysctl.read_text() == "1"
    assert b.acquire() == "enabled by silod"
    a.release()
    assert sysctl.read_text() == "1"          # b still holds it
    b.release()
    assert sysctl.read_text() == "0" and not os.path.exists(lease)
    # a holder that died without releasing does not keep it forever
    dead = subprocess.Popen(["true"])
    dead.wait()
    SysctlLease(f"{dead.pid} /c", lease, str(sysctl)).acquire()
    c = SysctlLease(f"{me} /d", lease, str(sysctl))
    c.acquire()
    c.release()
    assert sysctl.read_text() == "0"
    # already on: never touched
    sysctl.write_text("1")
    d = SysctlLease(f"{me} /e", lease, str(sysctl))
    assert d.acquire() == "already enabled"
    d.release()
    assert sysctl.read_text() == "1"
    # a lease file that does not parse is not fatal
    with open(lease, "w") as f:
        f.write('{"holders": ["not-a-pid", 7, ""]}')
    f2 = SysctlLease(f"{me} /h", lease, str(sysctl))
    f2.acquire()
    f2.release()
    with open(lease, "w") as f:
        f.write("[1, 2]")
    f3 = SysctlLease(f"{me} /i", lease, str(sysctl))
    f3.acquire()
    f3.release()
    assert sysctl.read_text().strip() == "1"


def test_forwarding_stays_on_for_another_engine(tmp_path) -> None:
    """A Docker started after silod found forwarding on and relies on it: the last silod
    leaves it on rather than cut Docker's containers off."""
    sysctl = tmp_path / "ip_forward"
    sysctl.write_text("0\n")
    lease = str(tmp_path / "lease.json")
    links: list[str] = []
    a = Lease(f"{os.getpid()} /a", lease, str(sysctl), others=lambda: links)
    a.acquire()
    links.append("docker0")
    a.release()
    assert sysctl.read_text() == "1" and not os.path.exists(lease)
    net = tmp_path / "net"
    for name in ("lo", "eth0", "docker0", "br-0123456789ab", "sbx12nat0", "virbr0"):
        (net / name).mkdir(parents=True)
    assert other_engines_links(str(net)) == ["br-0123456789ab", "docker0", "virbr0"]


def test_a_killed_holders_lease_is_settled_by_the_next_silod(tmp_path) -> None:
    """A silod killed while it held IPv6 forwarding leaves the lease; the next silod settles
    it even when it has no IPv6 network itself (it never acquires that lease)."""
    sysctl = tmp_path / "forwarding"
    sysctl.write_text("0\n")
    lease = str(tmp_path / "lease6.json")
    dead = subprocess.Popen(["true"])
    dead.wait()
    Lease(f"{dead.pid} /killed", lease, str(sysctl), others=lambda: []).acquire()
    assert sysctl.read_text().strip() == "1" and os.path.exists(lease)
    live = Lease(f"{os.getpid()} /live", lease, str(sysctl), others=lambda: [])
    other = Lease(f"{os.getpid()} /other", lease, str(sysctl), others=lambda: [])
    other.acquire()
    live.reap()                       # a live holder: nothing to settle
    assert sysctl.read_text().strip() == "1"
    other.release()
    assert sysctl.read_text().strip() == "0" and not os.path.exists(lease)
    Lease(f"{dead.pid} /killed", lease, str(sysctl), others=lambda: []).acquire()
    live.reap()
    assert sysctl.read_text().strip() == "0" and not os.path.exists(lease)
