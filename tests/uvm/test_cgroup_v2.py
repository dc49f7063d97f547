"""cgroup v2 proven on a real v2 host: the job-object tests that skip on a v1/hybrid host run
inside the utility VM, whose guest kernel mounts only the unified hierarchy with every controller.

pytest runs once in the guest over the tests below (one VM boot per session); each host test
reports one guest test's outcome, so a failure names the guest test and carries its message.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

JOBOBJECT = "tests/kernel/test_jobobject.py"
GUEST_TESTS = [
    f"{JOBOBJECT}::test_backend_selection_matches_layout",
    f"{JOBOBJECT}::test_device_filter_programs_pass_the_verifier",
    f"{JOBOBJECT}::test_v2_device_filter_on_unified",
    f"{JOBOBJECT}::test_v2_lifecycle_on_unified",
    f"{JOBOBJECT}::test_v2_limits",
    f"{JOBOBJECT}::test_v2_pids_limit_stops_fork_bomb",
    f"{JOBOBJECT}::test_v2_cpu_max_throttles",
    f"{JOBOBJECT}::test_v2_freeze_and_kill_with_controllers",
    f"{JOBOBJECT}::test_v2_statistics_are_sane",
    f"{JOBOBJECT}::test_v2_io_max",
    f"{JOBOBJECT}::test_v2_rename_keeps_members_and_limits",
    f"{JOBOBJECT}::test_v2_container_sees_its_limits_at_sys_fs_cgroup",
]


@pytest.fixture(scope="session")
def guest_results(uvm) -> dict[str, tuple[str, str]]:
    """Run pytest in the guest over GUEST_TESTS; nodeid → (outcome, message)."""
    # These must run on the guest's pure v2 hierarchy: prove that first.
    status, out, err = uvm.run(["sh", "-c", "cat /sys/fs/cgroup/cgroup.controllers; "
                                "grep -c ' - cgroup ' /proc/self/mountinfo || true"], timeout=60)
    controllers, v1_mounts = out.decode().split("\n")[:2]
    assert status == 0 and {"cpu", "memory", "pids", "io"} <= set(controllers.split()), out
    assert v1_mounts.strip() == "0", "the guest has cgroup v1 hierarchies"
    status, out, err = uvm.run(
        ["/opt/silobox/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         "--junitxml=/tmp/guest-results.xml", *GUEST_TESTS],
        cwd="/src", timeout=600)
    log = (out + err).decode(errors="replace")
    print(log)
    st, xml, _ = uvm.run(["cat", "/tmp/guest-results.xml"], timeout=60)
    assert st == 0, f"pytest in the guest wrote no results (exit {status}):\n{log[-3000:]}"
    results: dict[str, tuple[str, str]] = {}
    for case in ET.fromstring(xml).iter("testcase"):
        nodeid = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = tag
                message = (element.get("message") or "") + "\n" + (element.text or "")
                break
        results[nodeid] = (outcome, message.strip())
    return results


@pytest.mark.parametrize("nodeid", GUEST_TESTS, ids=lambda n: n.split("::")[-1])
def test_in_the_utility_vm(guest_results: dict[str, tuple[str, str]], nodeid: str) -> None:
    assert nodeid in guest_results, f"{nodeid} did not run in the guest"
    outcome, message = guest_results[nodeid]
    assert outcome == "passed", f"{nodeid} {outcome} in the utility VM:\n{message[-3000:]}"
