"""Test-wide set-up: keep Prefect and the store out of the developer's home directory, and mark
every test that needs a real server so the fast lane (`make test-fast`) can leave it out."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from usersync_sandbox.samba import SambaDC

# Before anything imports prefect: a private PREFECT_HOME, no profile, no analytics noise.
_prefect_home = tempfile.mkdtemp(prefix="usersync-prefect-")
os.environ["PREFECT_HOME"] = _prefect_home
os.environ.setdefault("PREFECT_TEST_MODE", "1")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")

#: fixture → the marker of the server it starts. A test that uses one (directly or through
#: another fixture) gets the marker, so a new test needs no decorator of its own; a test that
#: starts a server without such a fixture marks itself.
SERVER_FIXTURES = {
    "slapd": "slapd",  # tests/sources: the session's directory
    "referred_directory": "slapd",  # tests/sources: three slapds joined by referrals
    "directory": "slapd",  # tests/flows (the demo directory), tests/sources/test_ldap_incremental
    "own_directory": "slapd",  # tests/flows: a demo directory of the test's own
    "ldap_world": "slapd",  # tests/hostile: the corpus loaded into a slapd
    "samba_dc": "samba",  # tests/ad: the session's Samba AD DC
    "prefect_server": "prefect",  # tests/flows: the session's Prefect test server
    "prefect_api": "prefect",  # tests/inbox/test_serve: a Prefect server for the inbox's events
    "postgres": "postgres",  # tests/e2e/test_scale_out: databases on the local PostgreSQL
}


#: Tests that need no server of their own but are whole syncs, not unit or contract tests:
#: `slow`, so the fast lane leaves them to `make test` (node id prefixes).
SLOW_TESTS = (
    "tests/e2e/",  # push into the inbox, sync all three products, read them back
    "tests/hostile/",  # the hostile corpus, end to end
    "tests/conformance/test_sync_exchanges.py",  # four syncs of all three products
    "tests/inbox/test_serve.py",  # `usersync inbox serve` in subprocesses
)


@pytest.fixture(scope="session")
def samba_dc() -> Iterator[SambaDC]:
    """The session's Samba AD DC (AD holds fixed ports: one per machine), for tests/ad and the
    source contract suite; skips where none can run (not root, Samba missing)."""
    from usersync_sandbox.samba import SambaDC, samba_available

    reason = samba_available()
    if reason:
        pytest.skip(f"no Samba AD DC here: {reason}")
    with SambaDC() as dc:
        print(
            f"\nSamba DC: provisioned in {dc.provision_seconds:.1f} s, started in "
            f"{dc.start_seconds:.1f} s"
        )
        yield dc


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _older_product_versions(items: list[pytest.Item]) -> set[str]:
    """Node ids of contract tests run against a product version older than the newest one the
    session runs for that product (`target_env` parameters are (product, version))."""
    runs: list[tuple[str, str, str]] = []
    for item in items:
        param = getattr(getattr(item, "callspec", None), "params", {}).get("target_env")
        if isinstance(param, tuple) and len(param) == 2:
            runs.append((item.nodeid, *param))
    newest: dict[str, str] = {}
    for _, product, version in runs:
        if product not in newest or _version_key(version) > _version_key(newest[product]):
            newest[product] = version
    return {nodeid for nodeid, product, version in runs if version != newest[product]}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what the fast lane leaves out: tests using a server (`SERVER_FIXTURES`), whole-sync
    tests (`SLOW_TESTS`), and the contract suite's runs against older product versions (the
    fast lane runs it against each product's newest; per-product tests pin the older
    versions' differences, and `make test` runs every version)."""
    older = _older_product_versions(items)
    for item in items:
        for fixture in SERVER_FIXTURES.keys() & set(item.fixturenames):
            item.add_marker(SERVER_FIXTURES[fixture])
        if item.nodeid.startswith(SLOW_TESTS) or item.nodeid in older:
            item.add_marker("slow")
