"""The LDAP source's Active Directory flavour, Test Sync and a rename sync, against a real Samba AD DC."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from ldap3 import BASE, MODIFY_REPLACE
from usersync_sandbox.jira import JiraEmulator
from usersync_sandbox.server import serve
from usersync_sandbox.slapd import make_test_certificates

import usersync.sources.ldap.active_directory as active_directory_module
from tests.ad.conftest import (
    BIG_GROUP_SIZE,
    PASSWORD_ENV,
    SPECIAL_USERS,
    AdConfigFactory,
    AdDirectory,
    ad_source_config,
    admin_connection,
)
from usersync.config import LdapTls, Profile, TargetConfig
from usersync.errors import (
    ConfigError,
    IncompleteSourceError,
    SourceAuthError,
    SourceUnreachableError,
)
from usersync.mapping import load_tables
from usersync.sources.ldap import LdapSource
from usersync.store import Store
from usersync.sync import (
    LoadedProfile,
    load_target_sync,
    open_target_for,
    plan_target_sync,
    transform,
)
from usersync.sync_preview import run_test_sync

ATTRIBUTES = ["sAMAccountName", "userPrincipalName", "mail", "displayName"]
ALL_USERS = BIG_GROUP_SIZE + len(SPECIAL_USERS)


@pytest.fixture(scope="module")
def snapshot(ad_directory: AdDirectory) -> Any:
    """One default extract (AD flavour over LDAPS), shared by the read-only tests."""
    config = ad_source_config(ad_directory)
    with LdapSource.from_config(config) as source:
        return source.extract(ATTRIBUTES)


def user(users: pd.DataFrame, sam: str) -> pd.Series:
    rows = users[users["sAMAccountName"] == sam]
    assert len(rows) == 1, f"expected one user {sam}, found {len(rows)}"
    return rows.iloc[0]


def members(snapshot: Any, group: str) -> set[str]:
    ids = set(snapshot.memberships.loc[snapshot.memberships["source_group"] == group, "source_id"])
    return set(snapshot.users.loc[snapshot.users["source_id"].isin(ids), "sAMAccountName"])


def raw_guid(ad_directory: AdDirectory, dn: str) -> bytes:
    conn = admin_connection(ad_directory.dc)
    conn.search(dn, "(objectClass=*)", search_scope=BASE, attributes=["objectGUID"])
    raw = conn.response[0]["raw_attributes"]["objectGUID"][0]
    conn.unbind()
    return raw


# -- the AD flavour ------------------------------------------------------------------------


def test_ad_defaults_fill_only_what_the_profile_leaves_unset(ad_config: AdConfigFactory) -> None:
    config = ad_config()
    assert config.id_attribute == "objectGUID"
    assert config.user_filter == "(&(objectCategory=person)(objectClass=user))"
    assert ad_config(user_filter="(objectClass=user)").user_filter == "(objectClass=user)"


def test_users_are_keyed_by_object_guid_read_little_endian(
    snapshot: Any, ad_directory: AdDirectory
) -> None:
    assert len(snapshot.users) == ALL_USERS
    alice = user(snapshot.users, "alice")
    raw = raw_guid(ad_directory, ad_directory.user_dn("alice"))
    assert alice["source_id"] == str(uuid.UUID(bytes_le=raw))
    assert alice["source_id"] != str(uuid.UUID(bytes=raw))  # the big-endian reading differs
    assert alice["userPrincipalName"] == "alice@example.test"


def test_group_of_1600_members_is_read_whole(snapshot: Any) -> None:
    assert len(members(snapshot, "big")) == BIG_GROUP_SIZE


def test_small_range_windows_read_the_whole_group(ad_directory: AdDirectory) -> None:
    config = ad_source_config(ad_directory, member_range_size=100, page_size=1000)
    with LdapSource.from_config(config) as source:
        got = source.extract(["sAMAccountName"])
    assert len(members(got, "big")) == BIG_GROUP_SIZE


def test_a_failing_range_window_fails_the_read(
    ad_directory: AdDirectory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window that errors (here: its entry is gone) must not leave a truncated group."""
    config = ad_source_config(ad_directory, member_range_size=1000)
    source = LdapSource.from_config(config)
    real_search = active_directory_module.search  # the ranged reads, on any connection

    def search(conn: Any, base: str, search_filter: str, **kwargs: Any) -> Any:
        if any(";range=1000-" in a for a in kwargs.get("attributes") or ()):
            base = f"CN=gone,{ad_directory.groups}"  # the server answers noSuchObject
        return real_search(conn, base, search_filter, **kwargs)

    monkeypatch.setattr(active_directory_module, "search", search)
    with source, pytest.raises(IncompleteSourceError, match="ranged read of member"):
        source.extract(["sAMAccountName"])


def test_disabled_and_expired_accounts_follow_the_profile(ad_directory: AdDirectory) -> None:
    states = {}
    for setting in ("disabled_or_expired", "disabled", "none"):
        with LdapSource.from_config(
            ad_source_config(ad_directory, inactive_accounts=setting)
        ) as source:
            found = source.find_users("sAMAccountName", "disabled", ["sAMAccountName"])
            expired = source.find_users("sAMAccountName", "expired", ["sAMAccountName"])
        states[setting] = (bool(found.iloc[0]["active"]), bool(expired.iloc[0]["active"]))
    assert states == {
        "disabled_or_expired": (False, False),
        "disabled": (False, True),
        "none": (True, True),
    }


def test_default_extract_marks_only_disabled_and_expired_inactive(snapshot: Any) -> None:
    inactive = set(snapshot.users.loc[~snapshot.users["active"], "sAMAccountName"])
    assert inactive == {"disabled", "expired"}


@pytest.mark.parametrize(
    ("nesting", "level1", "level2"),
    [
        ("direct", {"erin"}, {"dave"}),
        ("in_chain", {"erin", "dave", "carol"}, {"dave", "carol"}),
        ("flatten", {"erin", "dave", "carol"}, {"dave", "carol"}),
    ],
)
def test_three_level_nesting(
    ad_directory: AdDirectory, nesting: str, level1: set[str], level2: set[str]
) -> None:
    with LdapSource.from_config(ad_source_config(ad_directory, nested_groups=nesting)) as source:
        got = source.extract(["sAMAccountName"])
    assert members(got, "level1") == level1
    assert members(got, "level2") == level2
    assert members(got, "level3") == {"carol"}
    nested_noted = any("level2" in note for note in got.notes)
    assert nested_noted == (nesting == "direct")  # direct mode says what it left out


def test_non_ascii_names_and_escaped_comma_dn(snapshot: Any, ad_directory: AdDirectory) -> None:
    zoe = user(snapshot.users, "zoe")
    assert zoe["displayName"] == "Zoë Müller"
    assert zoe["mail"] == "zoë@example.test"
    assert user(snapshot.users, "björn")["displayName"] == "Björn Ångström"
    smith = user(snapshot.users, "jsmith")
    assert smith["locator"].startswith("CN=Smith\\, John,")
    # engineering lists Smith by DN; the outsider (outside the user base) is left out, noted.
    assert members(snapshot, "engineering") == {"zoe", "jsmith", "rename2"}
    assert any("outsider" in note for note in snapshot.notes)


def test_renamed_user_keeps_its_source_id(ad_directory: AdDirectory) -> None:
    config = ad_source_config(ad_directory)
    dn = ad_directory.user_dn("rename-source")
    with LdapSource.from_config(config) as source:
        before = source.find_users("sAMAccountName", "rename1", ATTRIBUTES)
    conn = admin_connection(ad_directory.dc)
    changes = {
        "sAMAccountName": [(MODIFY_REPLACE, ["renamed1"])],
        "userPrincipalName": [(MODIFY_REPLACE, ["renamed1@example.test"])],
    }
    assert conn.modify(dn, changes), conn.result
    conn.unbind()
    with LdapSource.from_config(config) as source:
        after = source.find_users("sAMAccountName", "renamed1", ATTRIBUTES)
        gone = source.find_users("sAMAccountName", "rename1", ATTRIBUTES)
    assert len(gone) == 0
    assert after.iloc[0]["source_id"] == before.iloc[0]["source_id"]
    assert after.iloc[0]["userPrincipalName"] == "renamed1@example.test"


# -- TLS -------------------------------------------------------------------------------------


def test_starttls_validates_against_the_dc_ca(ad_config: AdConfigFactory) -> None:
    dc_ca = ad_config().tls.ca_file
    good = ad_config(url="ldap://127.0.0.1:389", tls=LdapTls(mode="starttls", ca_file=dc_ca))
    with LdapSource.from_config(good) as source:
        assert source.check().ok
        assert len(source.find_users("sAMAccountName", "alice", ["mail"])) == 1


def test_ldaps_with_another_ca_is_refused(ad_config: AdConfigFactory, tmp_path: Path) -> None:
    other = make_test_certificates(tmp_path, name="some other CA")
    config = ad_config(tls=LdapTls(mode="ldaps", ca_file=other.ca_file))
    with (
        LdapSource.from_config(config) as source,
        pytest.raises(SourceUnreachableError) as err,
    ):
        source.extract(["mail"])
    assert "could not be validated" in str(err.value)
    assert str(other.ca_file) in str(err.value)


def test_cleartext_bind_is_refused_by_usersync_before_connecting(
    ad_config: AdConfigFactory,
) -> None:
    config = ad_config(url="ldap://127.0.0.1:389", tls=LdapTls(mode="none"))
    with LdapSource.from_config(config) as source, pytest.raises(ConfigError) as err:
        source.extract(["mail"])
    assert "allow_cleartext_bind" in str(err.value)


def test_cleartext_bind_allowed_by_profile_is_refused_by_the_dc(
    ad_config: AdConfigFactory,
) -> None:
    config = ad_config(
        url="ldap://127.0.0.1:389", tls=LdapTls(mode="none"), allow_cleartext_bind=True
    )
    with LdapSource.from_config(config) as source, pytest.raises(SourceAuthError) as err:
        source.extract(["mail"])
    message = str(err.value)
    assert "strongerAuthRequired" in message
    assert "requires an encrypted connection" in message or "require an encrypted" in message


# -- lookups: injection and Test Sync ----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["*", "big*", "alice)(sAMAccountName=*", "*)(|(sAMAccountName=*", "\\", "alice\0", "\\2a"],
)
def test_filter_injection_finds_nothing_extra(ad_config: AdConfigFactory, value: str) -> None:
    with LdapSource.from_config(ad_config()) as source:
        found = source.find_users("sAMAccountName", value, ["sAMAccountName"])
    assert len(found) == 0


def test_star_in_a_value_matches_only_itself(ad_config: AdConfigFactory) -> None:
    with LdapSource.from_config(ad_config()) as source:
        found = source.find_users("displayName", "Star * (x) \\ name", ["sAMAccountName"])
    assert list(found["sAMAccountName"]) == ["star"]


def test_a_binary_attribute_in_the_mapping_is_refused_naming_an_entry(
    ad_config: AdConfigFactory,
) -> None:
    # objectGUID is 16 random bytes: across all users some are not UTF-8.
    with LdapSource.from_config(ad_config()) as source, pytest.raises(ConfigError) as err:
        source.extract(["objectGUID"])
    message = str(err.value)
    assert "attribute objectGUID is binary, not text" in message
    assert message.startswith("CN=")  # the entry it was found in
    assert "attributes.csv" in message


def _tables(tmp_path: Path, targets: list[str]) -> Any:
    (tmp_path / "attributes.csv").write_text(
        "target,source,transform\n"
        "username,sAMAccountName,strip lower\n"
        "email,mail,strip lower\n"
        "display_name,displayName,strip\n",
        encoding="utf-8",
    )
    (tmp_path / "groups.csv").write_text(
        "source_group,target_group,mode\n"
        "engineering,developers,manual\n"
        "level1,level-one,manual\n"
        ",jira-software-users,default\n",
        encoding="utf-8",
    )
    return load_tables(tmp_path, target_names=targets)


def _loaded(source: Any, jira_url: str, tmp_path: Path) -> LoadedProfile:
    os.environ["USERSYNC_TEST_JIRA_PASSWORD"] = "jira-admin-pw"
    target = TargetConfig(
        kind="jira",
        url=jira_url,
        auth={
            "kind": "basic",
            "username": "admin",
            "password": {"env": "USERSYNC_TEST_JIRA_PASSWORD"},
        },
    )
    profile = Profile(name="ad-test", source=source, targets={"jira": target})
    return LoadedProfile(profile, _tables(tmp_path, ["jira"]))


def test_test_sync_shows_directory_and_what_jira_would_get(
    ad_directory: AdDirectory, tmp_path: Path
) -> None:
    loaded = _loaded(
        ad_source_config(ad_directory, nested_groups="in_chain"), "http://127.0.0.1:9", tmp_path
    )
    report = run_test_sync(loaded, "carol")
    assert report.matches == 1
    assert report.directory_attributes["sAMAccountName"] == ["carol"]
    assert "objectSid" in report.directory_attributes  # every attribute, binary ones as hex
    assert set(report.source_groups) == {"level1", "level2", "level3"}
    (jira,) = report.targets
    assert jira.account == {
        "username": "carol",
        "email": "carol@example.test",
        "display_name": "User carol",
        "active": True,
    }
    assert jira.groups == ["jira-software-users", "level-one"]
    text = report.markdown()
    assert "| sAMAccountName | carol |" in text
    assert "level-one" in text


@pytest.mark.parametrize("value", ["*", "car*", "carol)(cn=*", "\\", "\0"])
def test_test_sync_with_injection_input_finds_nobody(
    ad_directory: AdDirectory, tmp_path: Path, value: str
) -> None:
    loaded = _loaded(ad_source_config(ad_directory), "http://127.0.0.1:9", tmp_path)
    report = run_test_sync(loaded, value)
    assert report.matches == 0
    assert "0 users match" in report.markdown()


def test_test_sync_by_another_attribute_and_disabled_user(
    ad_directory: AdDirectory, tmp_path: Path
) -> None:
    loaded = _loaded(ad_source_config(ad_directory), "http://127.0.0.1:9", tmp_path)
    report = run_test_sync(loaded, "disabled@example.test", attribute="userPrincipalName")
    assert report.matches == 1
    assert report.active is False
    assert report.targets[0].account["active"] is False  # type: ignore[index]


# -- end to end: a rename in AD updates the same Jira account ---------------------------------


def _sync_once(loaded: LoadedProfile, store: Store) -> None:
    with LdapSource.from_config(loaded.profile.source) as source:
        snapshot = source.extract(loaded.tables.source_attributes())
    desired = transform(loaded, snapshot, "jira")
    with open_target_for(loaded, "jira") as target:
        plan = plan_target_sync(loaded, "jira", target, desired, store)
        run_id = store.start_run("ad-test", "jira", dry_run=False)
        store.record_plan(run_id, plan.plan)
        result = load_target_sync(loaded, target, plan, store, run_id)
    assert result.status == "succeeded", result.outcomes


def test_rename_in_ad_updates_the_same_jira_account(
    ad_directory: AdDirectory, tmp_path: Path
) -> None:
    emulator = JiraEmulator(admin=("admin", "jira-admin-pw"))
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    # Only engineering's users, to keep the run small: zoe, jsmith, rename2.
    source = ad_source_config(
        ad_directory,
        user_filter="(&(objectCategory=person)(objectClass=user)"
        f"(memberOf={ad_directory.group_dn('engineering')}))",
    )
    with serve(emulator.app) as url:
        loaded = _loaded(source, url, tmp_path)
        _sync_once(loaded, store)
        first = emulator.user("rename2")
        assert first is not None and first.active
        key, count = first.key, len(emulator.usernames)

        conn = admin_connection(ad_directory.dc)
        changes = {
            "sAMAccountName": [(MODIFY_REPLACE, ["renamed2"])],
            "mail": [(MODIFY_REPLACE, ["renamed2@example.test"])],
        }
        assert conn.modify(ad_directory.user_dn("rename-jira"), changes), conn.result
        conn.unbind()

        _sync_once(loaded, store)
    store.close()
    renamed = emulator.user("renamed2")
    assert renamed is not None
    assert renamed.key == key  # the same account, renamed
    assert renamed.email == "renamed2@example.test"
    assert emulator.user("rename2") is None
    assert len(emulator.usernames) == count  # no second account
    assert "renamed2" in emulator.group_members("developers")


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_test_sync_prints_the_preview(
    ad_directory: AdDirectory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dc = ad_directory.dc
    folder = tmp_path / "corp-ad"
    folder.mkdir()
    (folder / "profile.yaml").write_text(
        f"""
source:
  kind: ldap
  flavour: active_directory
  url: {dc.ldaps_url}
  tls: {{mode: ldaps, ca_file: {dc.ca_file}}}
  bind_dn: {dc.admin_upn}
  bind_password: {{env: {PASSWORD_ENV}}}
  user_base_dn: {ad_directory.people}
  group_base_dn: {ad_directory.groups}
targets:
  jira:
    kind: jira
    url: http://127.0.0.1:9
    auth: {{kind: basic, username: admin, password: {{env: USERSYNC_TEST_JIRA_PASSWORD}}}}
""",
        encoding="utf-8",
    )
    _tables(folder, ["jira"])
    monkeypatch.setenv("USERSYNC_MAPPINGS_DIR", str(tmp_path))
    from usersync_cli.main import main

    assert main(["test-sync", "corp-ad", "Zoë Müller", "--attribute", "displayName"]) == 0
    out = capsys.readouterr().out
    assert "| username | zoe |" in out
    assert "developers" in out
    assert main(["test-sync", "corp-ad", "*"]) == 1
    assert "0 users match" in capsys.readouterr().out
