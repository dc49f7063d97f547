"""Shared test conventions: a unique prefix per run, root checks and feature markers."""

from __future__ import annotations

import os
import secrets

import pytest

RUN_ID = os.environ.get("SILOBOX_TEST_RUN") or secrets.token_hex(3)
os.environ["SILOBOX_TEST_RUN"] = RUN_ID


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "root: needs root and the real kernel")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: namespaces, cgroups and mounts are real here")
    for item in items:
        if "kernel" in item.nodeid.split("/") or "integration" in item.nodeid.split("/") \
                or item.get_closest_marker("root"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def run_id() -> str:
    """Unique per test run: every host object a test creates carries it."""
    return RUN_ID
