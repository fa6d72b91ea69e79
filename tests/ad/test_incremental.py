"""Incremental extraction against the real Samba AD DC: uSNChanged watermark, merge, full reads.

The tests work in their own OU (a handful of users and groups) so that what they change does
not disturb the other AD tests; each test starts with its own store, hence with a full read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from ldap3 import MODIFY_ADD, MODIFY_REPLACE
from usersync_sandbox.jira import JiraEmulator
from usersync_sandbox.server import serve

from tests.ad.conftest import USER_CLASSES, AdDirectory, ad_source_config, admin_connection
from tests.store_reading import saved_watermark
from usersync import sync
from usersync.config import Profile, TargetConfig
from usersync.errors import UsersyncError
from usersync.mapping import load_tables
from usersync.model import SourceSnapshot
from usersync.sources.ldap import LdapSource
from usersync.sources.watermark import advance_watermark, poll_leavers
from usersync.store import Store
from usersync.store.schema import source_watermarks

ATTRIBUTES = ["sAMAccountName", "mail", "displayName"]
JIRA_PASSWORD = "jira-admin-pw"
JIRA_ENV = "USERSYNC_TEST_INC_JIRA_PASSWORD"


class IncrementalOu:
    """The OU these tests own: People and Groups under it, and ways to change them."""

    def __init__(self, directory: AdDirectory) -> None:
        self.directory = directory
        self.root = f"OU=incremental,{directory.root}"
        self.people = f"OU=People,{self.root}"
        self.groups = f"OU=Groups,{self.root}"

    def user_dn(self, cn: str) -> str:
        return f"CN={cn},{self.people}"

    def group_dn(self, cn: str) -> str:
        return f"CN={cn},{self.groups}"

    def add_user(self, sam: str, *, groups: tuple[str, ...] = ()) -> None:
        conn = admin_connection(self.directory.dc)
        attributes = {
            "sAMAccountName": sam,
            "mail": f"{sam}@example.test",
            "displayName": f"Inc {sam}",
            "userAccountControl": "544",
        }
        assert conn.add(self.user_dn(sam), USER_CLASSES, attributes), conn.result
        for group in groups:
            change = {"member": [(MODIFY_ADD, [self.user_dn(sam)])]}
            assert conn.modify(self.group_dn(group), change), conn.result
        conn.unbind()

    def set_mail(self, sam: str, mail: str) -> None:
        conn = admin_connection(self.directory.dc)
        assert conn.modify(self.user_dn(sam), {"mail": [(MODIFY_REPLACE, [mail])]}), conn.result
        conn.unbind()

    def disable_user(self, sam: str) -> None:
        conn = admin_connection(self.directory.dc)
        change = {"userAccountControl": [(MODIFY_REPLACE, ["546"])]}  # + ACCOUNTDISABLE
        assert conn.modify(self.user_dn(sam), change), conn.result
        conn.unbind()

    def delete_user(self, sam: str) -> None:
        conn = admin_connection(self.directory.dc)
        assert conn.delete(self.user_dn(sam)), conn.result
        conn.unbind()

    def config(self, **overrides: Any) -> Any:
        fields: dict[str, Any] = {
            "user_base_dn": self.people,
            "group_base_dn": self.groups,
            "incremental": {"enabled": True, "full_every_hours": 24},
        }
        fields.update(overrides)
        return ad_source_config(self.directory, **fields)


@pytest.fixture(scope="module")
def ou(ad_directory: AdDirectory) -> IncrementalOu:
    place = IncrementalOu(ad_directory)
    conn = admin_connection(ad_directory.dc)
    for dn in (place.root, place.people, place.groups):
        assert conn.add(dn, ["top", "organizationalUnit"], {}), conn.result
    for cn in ("inc-team", "inc-all"):
        assert conn.add(place.group_dn(cn), ["top", "group"], {"sAMAccountName": cn}), conn.result
    parent = {"sAMAccountName": "inc-parent", "member": [place.group_dn("inc-team")]}
    assert conn.add(place.group_dn("inc-parent"), ["top", "group"], parent), conn.result
    conn.unbind()
    for sam in ("inc1", "inc2"):
        place.add_user(sam, groups=("inc-team", "inc-all"))
    for sam in ("inc3", "inc4"):
        place.add_user(sam, groups=("inc-all",))
    return place


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    yield opened
    opened.close()


def loaded_profile(ou: IncrementalOu, tmp_path: Path, jira_url: str, **source: Any) -> Any:
    os.environ[JIRA_ENV] = JIRA_PASSWORD
    (tmp_path / "attributes.csv").write_text(
        "target,source,transform\n"
        "username,sAMAccountName,strip lower\n"
        "email,mail,strip lower\n"
        "display_name,displayName,strip\n",
        encoding="utf-8",
    )
    (tmp_path / "groups.csv").write_text(
        "source_group,target_group,mode\ninc-team,inc-team,manual\n", encoding="utf-8"
    )
    target = TargetConfig(
        kind="jira",
        url=jira_url,
        auth={"kind": "basic", "username": "admin", "password": {"env": JIRA_ENV}},
        max_attempts=1,
        timeout_seconds=5,
    )
    profile = Profile(name="ad-inc", source=ou.config(**source), targets={"jira": target})
    return sync.LoadedProfile(profile, load_tables(tmp_path, target_names=["jira"]))


def run_sync(
    loaded: Any, store: Store, *, full: bool = False, dry_run: bool = False
) -> SourceSnapshot:
    """What the sync flow does, without Prefect: extract, per target plan and load, advance."""
    snapshot = sync.extract(loaded, store=store, full=full)
    statuses = []
    for name in loaded.profile.targets:
        try:
            desired = sync.transform(loaded, snapshot, name)
            with sync.open_target_for(loaded, name) as client:
                plan = sync.plan_target_sync(loaded, name, client, desired, store)
                if dry_run:
                    statuses.append("planned")
                    continue
                run_id = store.start_run(loaded.profile.name, name, dry_run=False)
                store.record_plan(run_id, plan.plan)
                statuses.append(sync.load_target_sync(loaded, client, plan, store, run_id).status)
        except UsersyncError:
            statuses.append("failed")
    advance_watermark(store, snapshot, statuses=statuses, dry_run=dry_run)
    return snapshot


def stored_usn(store: Store) -> int:
    return saved_watermark(store, "ad-inc")[0].usn


def canonical(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Rows in `key` order; categorical columns (an incremental read's memberships stay coded)
    as the strings they stand for."""
    coded = [name for name in frame if isinstance(frame[name].dtype, pd.CategoricalDtype)]
    return frame.astype(dict.fromkeys(coded, "string")).sort_values(key).reset_index(drop=True)


# -- the tests -------------------------------------------------------------------------------


def test_incremental_read_reads_only_changes_and_equals_a_full_read(
    ou: IncrementalOu, store: Store, tmp_path: Path
) -> None:
    loaded = loaded_profile(ou, tmp_path, "http://127.0.0.1:9")
    first = sync.extract(loaded, store=store)
    assert first.notes[-1].startswith("full read (no watermark or cached snapshot yet)")
    advance_watermark(store, first, statuses=["succeeded"], dry_run=False)
    usn = stored_usn(store)

    ou.set_mail("inc1", "inc1.new@example.test")
    ou.add_user("inc5", groups=("inc-team",))

    second = sync.extract(loaded, store=store)
    (note,) = second.notes
    assert note.startswith(f"incremental since USN {usn} on ")
    assert "2 changed user(s) and 1 group(s) read" in note
    with LdapSource.from_config(ou.config()) as source:
        full = source.extract(ATTRIBUTES)
    pd.testing.assert_frame_equal(
        canonical(second.users, ["source_id"]), canonical(full.users, ["source_id"])
    )
    pd.testing.assert_frame_equal(
        canonical(second.groups, ["source_group_id"]), canonical(full.groups, ["source_group_id"])
    )
    pd.testing.assert_frame_equal(
        canonical(second.memberships, ["source_group", "source_id"]),
        canonical(full.memberships, ["source_group", "source_id"]),
    )
    mails = dict(zip(second.users["sAMAccountName"], second.users["mail"], strict=True))
    assert mails["inc1"] == "inc1.new@example.test"
    assert "inc5" in mails


@pytest.mark.parametrize("nesting", ["in_chain", "flatten"])
def test_nested_groups_pick_up_a_member_added_deep_in_the_nest(
    ou: IncrementalOu, store: Store, tmp_path: Path, nesting: str
) -> None:
    """inc-parent contains inc-team: a user joining inc-team changes inc-parent's members,
    though inc-parent's own uSNChanged does not move."""
    loaded = loaded_profile(ou, tmp_path, "http://127.0.0.1:9", nested_groups=nesting)
    advance_watermark(
        store, sync.extract(loaded, store=store), statuses=["succeeded"], dry_run=False
    )
    ou.add_user(f"inc-deep-{nesting}", groups=("inc-team",))
    merged = sync.extract(loaded, store=store)
    assert merged.notes[0].startswith("incremental since USN")
    with LdapSource.from_config(ou.config(nested_groups=nesting)) as source:
        full = source.extract(ATTRIBUTES)
    key = ["source_group", "source_id"]
    pd.testing.assert_frame_equal(
        canonical(merged.memberships, key), canonical(full.memberships, key)
    )
    deep = merged.users.loc[merged.users["sAMAccountName"] == f"inc-deep-{nesting}", "source_id"]
    parent = merged.memberships.loc[merged.memberships["source_group"] == "inc-parent"]
    assert set(deep) <= set(parent["source_id"])


def test_deleted_user_is_deactivated_by_the_full_read_not_the_incremental_one(
    ou: IncrementalOu, store: Store, tmp_path: Path
) -> None:
    emulator = JiraEmulator(admin=("admin", JIRA_PASSWORD))
    ou.add_user("inc-leaver", groups=("inc-team",))
    with serve(emulator.app) as url:
        loaded = loaded_profile(ou, tmp_path, url)
        run_sync(loaded, store)
        assert emulator.user("inc-leaver").active
        ou.delete_user("inc-leaver")

        incremental = run_sync(loaded, store)
        assert incremental.notes[0].startswith("incremental since USN")
        assert emulator.user("inc-leaver").active  # the deletion is not visible yet

        full = run_sync(loaded, store, full=True)
        assert full.notes[-1].startswith("full read (a full read was requested)")
    assert emulator.user("inc-leaver").active is False


def test_another_dc_or_an_old_full_read_forces_a_full_read(
    ou: IncrementalOu, store: Store, tmp_path: Path
) -> None:
    loaded = loaded_profile(ou, tmp_path, "http://127.0.0.1:9")
    advance_watermark(
        store, sync.extract(loaded, store=store), statuses=["succeeded"], dry_run=False
    )
    with store.engine.begin() as conn:
        conn.execute(source_watermarks.update().values(dc="CN=NTDS Settings,CN=OTHER-DC"))
    other_dc = sync.extract(loaded, store=store)
    assert other_dc.notes[-1].startswith("full read (another domain controller")

    advance_watermark(store, other_dc, statuses=["succeeded"], dry_run=False)
    assert sync.extract(loaded, store=store).notes[0].startswith("incremental since USN")
    with store.engine.begin() as conn:
        conn.execute(
            source_watermarks.update().values(full_read_at=datetime.now(UTC) - timedelta(hours=25))
        )
    overdue = sync.extract(loaded, store=store)
    assert "older than incremental.full_every_hours=24" in overdue.notes[-1]


def test_scope_change_forces_a_full_read(ou: IncrementalOu, store: Store, tmp_path: Path) -> None:
    loaded = loaded_profile(ou, tmp_path, "http://127.0.0.1:9")
    advance_watermark(
        store, sync.extract(loaded, store=store), statuses=["succeeded"], dry_run=False
    )
    narrower = loaded_profile(
        ou, tmp_path, "http://127.0.0.1:9", user_filter="(&(objectClass=user)(mail=*))"
    )
    snapshot = sync.extract(narrower, store=store)
    assert snapshot.notes[-1].startswith("full read (the source settings or the mapped attributes")


def test_failed_or_dry_run_does_not_advance_the_watermark(
    ou: IncrementalOu, store: Store, tmp_path: Path
) -> None:
    emulator = JiraEmulator(admin=("admin", JIRA_PASSWORD))
    with serve(emulator.app) as url:
        loaded = loaded_profile(ou, tmp_path, url)
        run_sync(loaded, store)
        before = stored_usn(store)
        ou.set_mail("inc2", "inc2.changed@example.test")

        run_sync(loaded, store, dry_run=True)
        assert stored_usn(store) == before

    # The same profile with Jira down: the target fails, the watermark stays.
    down = loaded_profile(ou, tmp_path, "http://127.0.0.1:9")
    run_sync(down, store)
    assert stored_usn(store) == before

    with serve(emulator.app) as url:
        again = run_sync(loaded_profile(ou, tmp_path, url), store)
        # The change made before the failed run is still read, then the watermark moves.
        assert "1 changed user(s)" in again.notes[0]
    assert stored_usn(store) > before
    assert emulator.user("inc2").email == "inc2.changed@example.test"


def test_a_poll_names_the_users_disabled_since_the_last_run_and_nothing_else(
    ou: IncrementalOu, store: Store, tmp_path: Path
) -> None:
    ou.add_user("inc-leaver", groups=("inc-team",))
    emulator = JiraEmulator(admin=("admin", JIRA_PASSWORD))
    with serve(emulator.app) as url, LdapSource.from_config(ou.config()) as source:
        loaded = loaded_profile(ou, tmp_path, url)
        assert poll_leavers(source, "ad-inc", ATTRIBUTES, store).reason == (
            "no watermark or cached snapshot yet"
        )
        synced = run_sync(loaded, store)
        ids = dict(zip(synced.users["sAMAccountName"], synced.users["source_id"], strict=True))
        before = stored_usn(store)
        assert poll_leavers(source, "ad-inc", ATTRIBUTES, store).source_ids == ()

        ou.disable_user("inc-leaver")
        ou.set_mail("inc3", "inc3.moved@example.test")  # changed, still active: no leaver
        polled = poll_leavers(source, "ad-inc", ATTRIBUTES, store)

        assert polled.source_ids == (ids["inc-leaver"],) and polled.changed == 2
        assert stored_usn(store) == before  # a poll moves nothing
        # The run it starts deactivates the leaver and moves the mark: no longer news.
        run_sync(loaded, store)
        assert emulator.user("inc-leaver").active is False
        assert poll_leavers(source, "ad-inc", ATTRIBUTES, store).source_ids == ()


def test_a_delta_run_knows_from_the_usn_alone_that_nothing_changed(
    ou: IncrementalOu, store: Store, tmp_path: Path
) -> None:
    emulator = JiraEmulator(admin=("admin", JIRA_PASSWORD))
    with serve(emulator.app) as url:
        loaded = loaded_profile(ou, tmp_path, url, inactive_accounts="disabled")
        assert sync.unchanged_source(loaded, ["jira"], store) is None  # nothing written yet
        run_sync(loaded, store)
        quiet = sync.unchanged_source(loaded, ["jira"], store)
        assert quiet is not None and "nothing changed in the source" in quiet and "USN" in quiet

        ou.set_mail("inc4", "inc4.quiet@example.test")
        assert sync.unchanged_source(loaded, ["jira"], store) is None  # the USN moved
        run_sync(loaded, store)
        assert sync.unchanged_source(loaded, ["jira"], store) is not None
        assert emulator.user("inc4").email == "inc4.quiet@example.test"

    # Where an account may expire (the default), the USN cannot vouch: the source is read.
    expiring = loaded_profile(ou, tmp_path, "http://127.0.0.1:9")
    assert sync.unchanged_source(expiring, ["jira"], store) is None
