"""Incremental reads of OpenLDAP against a real slapd: entryCSN past the contextCSN watermark.

Each test starts its own small slapd (with the syncprov overlay, which keeps contextCSN, unless
the test is about its absence) and its own store, so the first read is always a full one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from ldap3 import MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE, Connection, Server
from usersync_sandbox.slapd import SlapdServer, ldif_entry

from tests.store_reading import saved_watermark
from usersync.config import LdapSourceConfig, SecretRef, load_profile
from usersync.model import SourceSnapshot
from usersync.sources.ldap import LdapSource
from usersync.sources.watermark import advance_watermark, extract_with_watermark, poll_leavers
from usersync.store import Store

BASE = "dc=example,dc=org"
PEOPLE = f"ou=people,{BASE}"
GROUPS = f"ou=groups,{BASE}"
PASSWORD_ENV = "USERSYNC_TEST_LDAP_INC_PASSWORD"
PROFILE = "openldap-inc"
ATTRIBUTES = ["uid", "mail"]


def user_dn(uid: str) -> str:
    return f"uid={uid},{PEOPLE}"


def group_dn(cn: str) -> str:
    return f"cn={cn},{GROUPS}"


def directory_ldif() -> str:
    entries = [
        ldif_entry(BASE, {"objectClass": ["dcObject", "organization"], "o": "Ex", "dc": "example"}),
        ldif_entry(PEOPLE, {"objectClass": "organizationalUnit", "ou": "people"}),
        ldif_entry(GROUPS, {"objectClass": "organizationalUnit", "ou": "groups"}),
    ]
    for uid in ("u1", "u2", "u3", "u4"):
        entries.append(user_entry(uid))
    entries.append(group_entry("team", ["u1", "u2"]))
    entries.append(group_entry("all", ["u1", "u2", "u3", "u4"]))
    entries.append(group_entry("quiet", ["u3"]))
    # Written last, so it holds the contextCSN a first read sees; the next read, which reads
    # that CSN's microsecond again, finds it outside the user and group bases.
    entries.append(ldif_entry(f"ou=other,{BASE}", {"objectClass": "organizationalUnit"}))
    return "".join(entries)


def user_entry(uid: str) -> str:
    return ldif_entry(
        user_dn(uid),
        {"objectClass": "inetOrgPerson", "uid": uid, "cn": uid, "sn": uid, "mail": f"{uid}@ex.org"},
    )


def group_entry(cn: str, members: list[str]) -> str:
    return ldif_entry(
        group_dn(cn), {"objectClass": "groupOfNames", "cn": cn, "member": map(user_dn, members)}
    )


class Directory:
    """A slapd loaded online (so the memberof overlay keeps memberOf) and ways to change it."""

    def __init__(self, server: SlapdServer) -> None:
        self.server = server

    def admin(self) -> Connection:
        conn = Connection(
            Server(self.server.url),
            self.server.admin_dn,
            self.server.admin_password,
            auto_bind=True,
        )
        return conn

    def modify(self, dn: str, changes: dict[str, Any]) -> None:
        conn = self.admin()
        assert conn.modify(dn, changes), conn.result
        conn.unbind()

    def set_mail(self, uid: str, mail: str) -> None:
        self.modify(user_dn(uid), {"mail": [(MODIFY_REPLACE, [mail])]})

    def add_member(self, group: str, uid: str) -> None:
        self.modify(group_dn(group), {"member": [(MODIFY_ADD, [user_dn(uid)])]})

    def remove_member(self, group: str, uid: str) -> None:
        self.modify(group_dn(group), {"member": [(MODIFY_DELETE, [user_dn(uid)])]})

    def add_user(self, uid: str) -> None:
        self.server.add_ldif(user_entry(uid))

    def delete_user(self, uid: str) -> None:
        conn = self.admin()
        assert conn.delete(user_dn(uid)), conn.result
        conn.unbind()

    def config(self, **overrides: Any) -> LdapSourceConfig:
        fields: dict[str, Any] = {
            "kind": "ldap",
            "url": self.server.url,
            "bind_dn": self.server.admin_dn,
            "bind_password": SecretRef(env=PASSWORD_ENV),
            "allow_cleartext_bind": True,
            "user_base_dn": PEOPLE,
            "group_base_dn": GROUPS,
            "incremental": {"enabled": True, "full_every_hours": 24},
        }
        fields.update(overrides)
        return LdapSourceConfig(**fields)


def start_directory(*, syncprov: bool) -> Iterator[Directory]:
    with SlapdServer(directory_ldif(), load="online", syncprov=syncprov) as server:
        yield Directory(server)


@pytest.fixture
def directory(monkeypatch: pytest.MonkeyPatch) -> Iterator[Directory]:
    monkeypatch.setenv(PASSWORD_ENV, "secret")
    yield from start_directory(syncprov=True)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    yield opened
    opened.close()


def read(
    directory: Directory, store: Store, *, now: datetime | None = None, **config: Any
) -> SourceSnapshot:
    with LdapSource.from_config(directory.config(**config)) as source:
        return extract_with_watermark(source, PROFILE, ATTRIBUTES, store, now=now)


def synced(store: Store, snapshot: SourceSnapshot, *statuses: str) -> None:
    """What the flow does after the targets: advance the watermark if all succeeded."""
    advance_watermark(store, snapshot, statuses=list(statuses or ["succeeded"]), dry_run=False)


def member_rows(snapshot: SourceSnapshot) -> set[tuple[str, str]]:
    by_id = dict(zip(snapshot.users["source_id"], snapshot.users["uid"], strict=True))
    return {
        (by_id[sid], group)
        for sid, group in snapshot.memberships[["source_id", "source_group"]].to_numpy().tolist()
    }


def canonical(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    return frame.sort_values(key).reset_index(drop=True)


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("membership", ["group_member", "member_of"])
def test_changes_additions_and_membership_changes_are_read_and_merged(
    directory: Directory, store: Store, membership: str
) -> None:
    first = read(directory, store, membership=membership)
    assert first.notes[-1].startswith("full read (no watermark or cached snapshot yet)")
    synced(store, first)

    directory.set_mail("u2", "u2.new@ex.org")
    directory.add_user("u5")
    directory.add_member("team", "u5")
    directory.remove_member("all", "u3")
    incremental = read(directory, store, membership=membership)

    note = incremental.notes[0]
    assert note.startswith("incremental since contextCSN "), note
    # u2 and u5 changed; team and all changed; quiet and u1, u3, u4 were not read.
    assert "2 changed user(s) and 2 group(s) read" in note, note
    with LdapSource.from_config(directory.config(membership=membership)) as source:
        full = source.extract(ATTRIBUTES)
    assert canonical(incremental.users, "source_id").equals(canonical(full.users, "source_id"))
    assert member_rows(incremental) == member_rows(full)
    assert ("u5", "team") in member_rows(incremental)
    assert ("u3", "all") not in member_rows(incremental)
    assert ("u3", "quiet") in member_rows(incremental)
    mail = incremental.users.set_index("uid")["mail"]
    assert mail["u2"] == "u2.new@ex.org"


def test_no_change_reads_nothing_new(directory: Directory, store: Store) -> None:
    synced(store, read(directory, store))
    again = read(directory, store)
    assert "incremental since contextCSN" in again.notes[0]
    assert "0 changed user(s) and 0 group(s) read" in again.notes[0]
    assert len(again.users) == 4


def test_a_deletion_is_seen_by_the_scheduled_full_read_only(
    directory: Directory, store: Store
) -> None:
    start = datetime.now(UTC)
    synced(store, read(directory, store, now=start))
    directory.delete_user("u4")

    incremental = read(directory, store, now=start + timedelta(hours=1))
    assert incremental.notes[0].startswith("incremental since contextCSN")
    assert "u4" in set(incremental.users["uid"])  # a deletion changes no entry in scope
    synced(store, incremental)

    due = read(directory, store, now=start + timedelta(hours=25))
    assert "older than incremental.full_every_hours=24" in due.notes[-1]
    assert "u4" not in set(due.users["uid"])
    assert all(uid != "u4" for uid, _ in member_rows(due))


def test_a_run_whose_targets_failed_reads_the_same_changes_again(
    directory: Directory, store: Store
) -> None:
    synced(store, read(directory, store))
    before = saved_watermark(store, PROFILE)[0].usn
    directory.set_mail("u1", "u1.new@ex.org")

    failed = read(directory, store)
    assert "1 changed user(s)" in failed.notes[0]
    synced(store, failed, "succeeded", "failed")  # one target failed: nothing advances
    assert saved_watermark(store, PROFILE)[0].usn == before
    advance_watermark(store, failed, statuses=["succeeded"], dry_run=True)  # nor a dry run
    assert saved_watermark(store, PROFILE)[0].usn == before

    retried = read(directory, store)
    assert "1 changed user(s)" in retried.notes[0]
    assert retried.users.set_index("uid")["mail"]["u1"] == "u1.new@ex.org"
    synced(store, retried)
    assert saved_watermark(store, PROFILE)[0].usn > before


def test_a_watermark_ahead_of_the_server_or_of_another_server_forces_a_full_read(
    directory: Directory, store: Store
) -> None:
    first = read(directory, store)
    synced(store, first)
    watermark, parts = saved_watermark(store, PROFILE)

    ahead = watermark.__class__(**{**watermark.__dict__, "usn": watermark.usn + 10**12})
    store.save_source_watermark(PROFILE, ahead, parts)
    went_back = read(directory, store)
    assert "full read (the server or database's mark went back" in went_back.notes[-1]
    synced(store, went_back)

    # The same entries on another slapd (a reload or a replacement): another identity.
    for other in start_directory(syncprov=True):
        moved = read(other, store)
        assert "full read (another server or database" in moved.notes[-1]


def test_without_contextcsn_every_run_is_a_full_read_and_says_why(
    monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "secret")
    for plain in start_directory(syncprov=False):
        snapshot = read(plain, store)
        assert "no syncprov overlay" in snapshot.notes[-1]
        assert snapshot.notes[-1].endswith("the next run reads everything again")
        assert len(snapshot.users) == 4
        synced(store, snapshot)
        with pytest.raises(KeyError):  # nothing kept: a watermark would mean nothing
            saved_watermark(store, PROFILE)


def test_an_openldap_profile_may_enable_incremental_reads(tmp_path: Path) -> None:
    folder = tmp_path / "openldap-inc"
    folder.mkdir()
    (folder / "profile.yaml").write_text(
        """
source:
  kind: ldap
  url: ldaps://ldap.example.test
  tls: {mode: ldaps}
  bind_dn: cn=usersync,dc=example,dc=test
  bind_password: {env: LDAP_PASSWORD}
  user_base_dn: ou=people,dc=example,dc=test
  group_base_dn: ou=groups,dc=example,dc=test
  incremental: {enabled: true, full_every_hours: 12}
targets:
  jira: {kind: jira, url: https://jira.test, auth: {kind: token, token: {env: JIRA_PAT}}}
""",
        encoding="utf-8",
    )
    source = load_profile("openldap-inc", root=tmp_path).source
    assert isinstance(source, LdapSourceConfig)
    assert source.flavour == "openldap" and source.incremental.enabled


def test_a_poll_names_the_users_disabled_since_the_last_run(
    directory: Directory, store: Store
) -> None:
    config = {"disabled_filter": "(employeeType=left)"}
    with LdapSource.from_config(directory.config(**config)) as source:
        assert poll_leavers(source, PROFILE, ATTRIBUTES, store).reason == (
            "no watermark or cached snapshot yet"
        )
        first = read(directory, store, **config)
        ids = dict(zip(first.users["uid"], first.users["source_id"], strict=True))
        synced(store, first)
        assert poll_leavers(source, PROFILE, ATTRIBUTES, store) == poll_leavers(
            source, PROFILE, ATTRIBUTES, store
        )
        assert poll_leavers(source, PROFILE, ATTRIBUTES, store).source_ids == ()

        directory.modify(user_dn("u2"), {"employeeType": [(MODIFY_REPLACE, ["left"])]})
        directory.set_mail("u3", "u3.moved@ex.org")  # changed, still active: no leaver
        polled = poll_leavers(source, PROFILE, ATTRIBUTES, store)
        assert polled.source_ids == (ids["u2"],) and polled.reason is None

        # The run that deactivates u2 moves the watermark: no longer news.
        synced(store, read(directory, store, **config))
        assert poll_leavers(source, PROFILE, ATTRIBUTES, store).source_ids == ()

        # Another scope (here: the attributes the mapping reads) spoils the mark: no guess.
        assert poll_leavers(source, PROFILE, [*ATTRIBUTES, "cn"], store).reason == (
            "the source settings or the mapped attributes changed since the watermark"
        )
