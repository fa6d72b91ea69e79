"""The product version is read and told: at Test Connection for every target, and once in
each run's log. Every supported version is named as supported; a version usersync is not
tested with (older, newer) is named with what may not work, as a warning that does not fail
Test Connection on its own.

Each emulator is started at the version under test and reports it as the real product does
(Jira `/serverInfo`, Confluence's applinks manifest, Bitbucket `/application-properties`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from usersync_sandbox.bitbucket import BitbucketEmulator
from usersync_sandbox.confluence import ConfluenceEmulator
from usersync_sandbox.jira import JiraEmulator
from usersync_sandbox.server import serve

from tests.targets.conftest import PRODUCT_VERSIONS, SUPPORTED_VERSIONS
from usersync import sync
from usersync.connection import ConnectionResult, check_connections
from usersync.sources.scim import snapshot_from_scim
from usersync.store import Store

PASSWORD = "admin-secret"
PROFILE = "versions"
EMULATORS = {"jira": JiraEmulator, "confluence": ConfluenceEmulator, "bitbucket": BitbucketEmulator}
TITLES = {"jira": "Jira", "confluence": "Confluence", "bitbucket": "Bitbucket"}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Starts `product` at `version` and writes a profile with it as target "t"."""

    @contextmanager
    def start(product: str, version: str) -> Iterator[str]:
        emulator = EMULATORS[product](admin=("admin", PASSWORD), version=version)
        with serve(emulator.app) as url:
            folder = tmp_path / "mappings" / PROFILE
            folder.mkdir(parents=True, exist_ok=True)
            profile = {
                "source": {
                    "kind": "miniorange-push",
                    "store_url": f"sqlite:///{tmp_path / 'store.db'}",
                },
                "targets": {
                    "t": {
                        "kind": product,
                        "url": url,
                        "timeout_seconds": 5,
                        "max_attempts": 1,
                        "auth": {
                            "kind": "basic",
                            "username": "admin",
                            "password": {"env": "VR_PASSWORD"},
                        },
                    }
                },
            }
            (folder / "profile.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
            (folder / "attributes.csv").write_text(
                "target,source,transform,regex,replacement,template,default\n"
                "username,userName,,,,,\nemail,email,,,,,\ndisplay_name,displayName,,,,,\n",
                encoding="utf-8",
            )
            (folder / "groups.csv").write_text("source_group,target_group,mode,targets\n", "utf-8")
            monkeypatch.setenv("USERSYNC_MAPPINGS_DIR", str(tmp_path / "mappings"))
            monkeypatch.setenv("VR_PASSWORD", PASSWORD)
            yield url

    return start


def _test_connection() -> ConnectionResult:
    (target,) = [
        r for r in check_connections(sync.prepare_profile(PROFILE)) if r.part == "target t"
    ]
    return target


@pytest.mark.parametrize(("product", "version"), PRODUCT_VERSIONS, ids="-".join)
def test_test_connection_names_each_supported_version_as_supported(site, product, version) -> None:
    with site(product, version):
        result = _test_connection()
    assert result.ok, result.detail
    assert f"{TITLES[product]} {version} (supported)" in result.detail
    assert "WARNING" not in result.detail


@pytest.mark.parametrize(
    ("product", "version", "what_may_not_work"),
    [
        ("jira", "8.20.0", "older than the versions usersync is tested with (9.12, 10.3, 11.3)"),
        ("jira", "8.20.0", "no user/list cursor"),
        ("jira", "10.1.0", "between the versions usersync is tested with"),
        ("jira", "12.0.0", "newer than the versions usersync is tested with (9.12, 10.3, 11.3)"),
        ("bitbucket", "8.9.0", "older than the versions usersync is tested with (9.4, 10.4)"),
        ("bitbucket", "11.0.0", "newer than the versions usersync is tested with (9.4, 10.4)"),
        ("confluence", "11.0.0", "newer than the versions usersync is tested with (9.x, 10.x)"),
    ],
)
def test_an_unsupported_version_is_a_warning_naming_what_may_not_work(
    site, product, version, what_may_not_work
) -> None:
    with site(product, version):
        result = _test_connection()
    assert result.ok, result.detail  # the version alone does not fail the check
    assert f"WARNING: {TITLES[product]} {version} (not supported: " in result.detail
    assert what_may_not_work in result.detail


def test_an_old_confluence_is_named_with_what_it_lacks(site) -> None:
    """Confluence 7.19 lists no global permissions over REST: the check fails for that (its
    administrators cannot be established), and the version line says why it is to be expected."""
    with site("confluence", "7.19.8"):
        result = _test_connection()
    assert "WARNING: Confluence 7.19.8 (not supported: older than the versions" in result.detail
    assert "REST user administration is missing (8.2+): JSON-RPC does every write" in result.detail
    assert "global permissions are not listed over REST (9.2+)" in result.detail
    assert not result.ok and "administrators cannot be established" in result.detail


@pytest.mark.parametrize(
    ("product", "version", "level"),
    [(p, SUPPORTED_VERSIONS[p][0], logging.INFO) for p in EMULATORS]
    + [("jira", "8.20.0", logging.WARNING), ("bitbucket", "8.9.0", logging.WARNING)],
    ids=lambda v: str(v),
)
def test_a_run_logs_the_version_of_each_target_once(
    site, tmp_path: Path, caplog, product, version, level
) -> None:
    with site(product, version):
        loaded = sync.prepare_profile(PROFILE)
        nobody = snapshot_from_scim(
            [], [], loaded.tables.source_attributes(), source_kind="scim", where="test"
        )
        desired = sync.transform(loaded, nobody, "t")
        store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
        with (
            caplog.at_level(logging.INFO, logger="usersync.sync"),
            sync.open_target_for(loaded, "t") as target,
        ):
            sync.plan_target_sync(loaded, "t", target, desired, store)
        store.close()
    lines = [r for r in caplog.records if f"{TITLES[product]} {version}" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert lines[0].levelno == level
    assert lines[0].getMessage().startswith(f"{product} 't': {TITLES[product]} {version} (")
