"""LdapSource against a real OpenLDAP slapd: complete reads or errors, never a partial snapshot."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from usersync_sandbox.server import free_port
from usersync_sandbox.slapd import SlapdServer, ldif_entry, make_test_certificates

from tests.sources.conftest import (
    ELSEWHERE,
    GROUPS,
    LIMITED_DN,
    LIMITED_PASSWORD,
    LIMITED_TOTAL,
    LOCAL_PASSWORD,
    PAGE_SIZE,
    PAGED_USERS,
    PEOPLE,
    REMOTE,
    STAR_DISPLAY_NAME,
    LdapConfigFactory,
    ReferredDirectory,
)
from usersync.config import LdapSourceConfig, LdapTls, Profile, SecretRef
from usersync.connection import check_connections
from usersync.errors import (
    ConfigError,
    IncompleteSourceError,
    SourceAuthError,
    SourceUnreachableError,
)
from usersync.mapping import (
    DEFAULT_ATTRIBUTES_CSV,
    MappingTables,
    map_attributes,
    parse_attributes,
)
from usersync.model import SOURCE_MEMBERSHIP_COLUMNS, SOURCE_USER_COLUMNS
from usersync.sources.ldap import DnIndex, LdapSource, canonical_id, normalise_dn
from usersync.sources.ldap.referrals import parse_reference
from usersync.sources.ldap.schema import AttributeSchema
from usersync.sync import LoadedProfile

ADMIN_PASSWORD = "secret"
BASE_DN = "dc=example,dc=org"
ATTRIBUTES = ["uid", "mail", "displayName", "cn"]
INACTIVE = "(employeeType=inactive)"


def by_uid(users: pd.DataFrame, uid: str) -> pd.Series:
    rows = users[users["uid"] == uid]
    assert len(rows) == 1, f"expected one user {uid}, found {len(rows)}"
    return rows.iloc[0]


def members_of(snapshot: Any, group: str) -> set[str]:
    """uids of the group's members, through the users frame."""
    ids = set(snapshot.memberships.loc[snapshot.memberships["source_group"] == group, "source_id"])
    return set(snapshot.users.loc[snapshot.users["source_id"].isin(ids), "uid"])


# -- DN normalisation (no server) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (
            r"cn=Smith\, John,ou=people,dc=example,dc=org",
            r"CN=smith\2c JOHN,OU=People,DC=Example,DC=org",
        ),
        (r"cn=Smith\, John,ou=people", r"cn = Smith\, John , ou = people"),
        ("uid=a+cn=b,ou=x", "CN=B+UID=A,OU=X"),
        ("cn=Zoë Müller,ou=x", r"cn=Zo\C3\AB M\C3\BCller,ou=x"),
        ("cn=a;ou=x", "cn=a,ou=x"),
        ("cn=trailing\\ ,ou=x", "cn=trailing\\20,ou=x"),
        ("cn=\\ lead,ou=x", "CN=\\20LEAD,OU=X"),
    ],
)
def test_equivalent_dns_normalise_alike(left: str, right: str) -> None:
    assert normalise_dn(left) == normalise_dn(right)
    assert normalise_dn(left) is not None


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (r"cn=Smith\, John,ou=people", "cn=Smith,cn=John,ou=people"),
        ("uid=a,ou=x", "uid=a,ou=y"),
        ("uid=a+cn=b,ou=x", "uid=a,cn=b,ou=x"),
        ("cn=trailing\\ ,ou=x", "cn=trailing,ou=x"),
    ],
)
def test_different_dns_normalise_apart(left: str, right: str) -> None:
    assert normalise_dn(left) != normalise_dn(right)


@pytest.mark.parametrize("bad", ["not a dn", "cn=a,=b", "cn=trailing\\"])
def test_invalid_dns_normalise_to_none(bad: str) -> None:
    assert normalise_dn(bad) is None


def test_ids_become_canonical_uuids() -> None:
    guid = uuid.UUID("a1b2c3d4-e5f6-4789-8abc-def012345678")
    assert canonical_id("objectGUID", guid.bytes_le, "cn=x") == str(guid)
    assert canonical_id("entryUUID", b"A1B2C3D4-E5F6-4789-8ABC-DEF012345678", "cn=x") == str(guid)
    with pytest.raises(IncompleteSourceError, match="16-byte GUID"):
        canonical_id("objectGUID", b"short", "cn=x")


def test_dn_index_finds_entries_however_the_dn_is_spelt() -> None:
    smith = r"cn=Smith\, John,ou=people,dc=example,dc=org"
    index = DnIndex([(smith, "id-smith"), ("uid=zoe,ou=people,dc=example,dc=org", "id-zoe")])
    assert index.get("UID=Zoe,OU=People,DC=example,DC=org") == "id-zoe"  # exact, lower-cased
    asked = [
        "uid=zoe,ou=people,dc=example,dc=org",
        r"CN=smith\2c JOHN , OU=People,dc=EXAMPLE,dc=org",  # only equal once normalised
        "uid=nobody,ou=people,dc=example,dc=org",
        "not a dn",
    ]
    assert index.get_many(asked) == ["id-zoe", "id-smith", None, None]
    assert [index.get(dn) for dn in asked] == ["id-zoe", "id-smith", None, None]


SPELLINGS = st.sampled_from(
    [
        "uid=ann,ou=people,dc=example,dc=org",
        "UID=Ann,OU=People,DC=example,DC=org",
        "uid=ann , ou=people,dc=example,dc=org",
        r"cn=Smith\, John,ou=people,dc=example,dc=org",
        r"cn=smith\2c john,ou=people,dc=example,dc=org",
        "uid=zoe,ou=people,dc=example,dc=org",
        "uid=bo,ou=people,dc=example,dc=org",
        "not a dn",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    cached=st.lists(st.tuples(SPELLINGS, st.sampled_from(["i1", "i2", "i3", "i4"])), max_size=6),
    changed=st.lists(st.tuples(SPELLINGS, st.sampled_from(["c1", "c2"])), max_size=3),
    values=st.lists(SPELLINGS, max_size=6),
)
def test_an_index_of_the_entries_values_spell_answers_as_the_index_of_all(
    cached: list[tuple[str, str]], changed: list[tuple[str, str]], values: list[str]
) -> None:
    """An incremental read indexes only the cached users whose DN a member value spells byte
    for byte, then the changed users; anything else is looked up among all of them. Its
    answers are those of the index of every entry, a DN given twice included."""
    every = DnIndex([*cached, *changed])
    spelled = set(values)
    near = DnIndex(
        [*[(dn, v) for dn, v in cached if dn in spelled], *changed],
        whole=lambda: DnIndex([*cached, *changed]),
    )
    raw = [value.encode() for value in values]
    assert near.get_many_raw(raw) == every.get_many_raw(raw)
    assert near.get_many(values) == every.get_many(values)
    assert [near.get(value) for value in values] == [every.get(value) for value in values]


# -- extraction ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snapshot(slapd: SlapdServer) -> Any:
    """One full extract in group_member mode, with the disabled filter, shared by the tests."""
    config = LdapSourceConfig(
        kind="ldap",
        url=slapd.url,
        bind_dn=slapd.admin_dn,
        bind_password=SecretRef(env="USERSYNC_TEST_LDAP_PASSWORD"),
        allow_cleartext_bind=True,
        user_base_dn=PEOPLE,
        group_base_dn=GROUPS,
        page_size=PAGE_SIZE,
        disabled_filter=INACTIVE,
    )
    with LdapSource(config, ADMIN_PASSWORD) as source:
        return source.extract(ATTRIBUTES)


@pytest.mark.slapd
def test_extract_reads_every_user_over_many_pages(snapshot: Any, directory_facts: dict) -> None:
    users = snapshot.users
    assert directory_facts["user_count"] > 10 * PAGE_SIZE
    assert len(users) == directory_facts["user_count"]
    assert list(users.columns) == [*SOURCE_USER_COLUMNS, *ATTRIBUTES]
    assert users["source_id"].is_unique
    assert all(str(uuid.UUID(sid)) == sid for sid in users["source_id"])
    assert set(users["uid"]) >= {f"user{n:04d}" for n in range(PAGED_USERS)}
    assert by_uid(users, "user0042")["locator"] == f"uid=user0042,{PEOPLE}"
    assert by_uid(users, "user0042")["mail"] == "user0042@example.org"
    assert snapshot.source_kind == "ldap"


@pytest.mark.slapd
def test_extract_marks_disabled_users_inactive(snapshot: Any, directory_facts: dict) -> None:
    inactive = snapshot.users.loc[~snapshot.users["active"], "uid"]
    assert set(inactive) == {f"user{n:04d}" for n in range(0, PAGED_USERS, 100)}
    assert len(inactive) == directory_facts["inactive_count"]


@pytest.mark.slapd
def test_extract_keeps_missing_and_non_ascii_values_as_they_are(snapshot: Any) -> None:
    assert pd.isna(by_uid(snapshot.users, "nomail")["mail"])
    zoe = by_uid(snapshot.users, "zoe")
    assert zoe["cn"] == "Zoë Müller"
    assert zoe["mail"] == "zoë@example.org"
    assert by_uid(snapshot.users, "MJones")["mail"] == "Michael.Jones@Example.org"
    assert snapshot.users["mail"].dtype == "string"


@pytest.mark.slapd
def test_extract_reads_groups_and_resolves_members_by_normalised_dn(
    snapshot: Any, directory_facts: dict
) -> None:
    assert set(snapshot.groups["source_group"]) == {"everyone", "even", "engineering"}
    assert snapshot.groups["source_group_id"].is_unique
    assert list(snapshot.memberships.columns) == list(SOURCE_MEMBERSHIP_COLUMNS)
    assert not snapshot.memberships.duplicated().any()
    sizes = snapshot.memberships["source_group"].value_counts().to_dict()
    assert sizes == directory_facts["group_sizes"]
    # Smith's member value is `CN=smith\2c JOHN , OU=People,...`; the entry is cn=Smith\2C John.
    assert members_of(snapshot, "engineering") == {"jsmith", "zoe"}
    # The nested group and the user outside the base are left out, and said so.
    (note,) = snapshot.notes
    assert note.startswith("2 member value(s)")
    assert "cn=even" in note and "uid=outsider" in note


@pytest.mark.slapd
def test_member_of_mode_gives_the_same_memberships(
    ldap_config: LdapConfigFactory, snapshot: Any
) -> None:
    with LdapSource(ldap_config(membership="member_of"), ADMIN_PASSWORD) as source:
        via_member_of = source.extract(["uid"])
    pairs = set(via_member_of.memberships.itertuples(index=False, name=None))
    assert pairs == set(snapshot.memberships.itertuples(index=False, name=None))
    assert via_member_of.notes == ()


@pytest.mark.slapd
def test_attribute_columns_are_named_as_the_caller_spells_them(
    ldap_config: LdapConfigFactory,
) -> None:
    with LdapSource(ldap_config(), ADMIN_PASSWORD) as source:
        users = source.find_users("uid", "zoe", ["UID", "Mail", "telephoneNumber"])
    assert list(users.columns) == [*SOURCE_USER_COLUMNS, "UID", "Mail", "telephoneNumber"]
    assert users.iloc[0]["Mail"] == "zoë@example.org"
    assert pd.isna(users.iloc[0]["telephoneNumber"])
    assert bool(users.iloc[0]["active"])  # no disabled_filter: everyone is active


@pytest.mark.slapd
def test_extract_reports_running_totals_after_each_page(
    ldap_config: LdapConfigFactory, directory_facts: dict
) -> None:
    heard: list[tuple[str, int]] = []
    with LdapSource(ldap_config(), ADMIN_PASSWORD) as source:
        source.on_progress = lambda what, count: heard.append((what, count))
        snapshot = source.extract(["uid"])
    users = [count for what, count in heard if what == "users"]
    user_count = directory_facts["user_count"]
    assert users == [min(page * PAGE_SIZE, user_count) for page in range(1, len(users) + 1)]
    assert users[-1] == len(snapshot.users) == user_count
    assert [count for what, count in heard if what == "groups"] == [3]  # one page
    # everyone lists every user, even half of the paged ones, engineering 4 values.
    member_values = user_count + PAGED_USERS // 2 + 4
    assert [count for what, count in heard if what == "members"] == [member_values]


@pytest.mark.slapd
def test_a_failing_progress_callback_does_not_fail_the_read(
    ldap_config: LdapConfigFactory, directory_facts: dict
) -> None:
    def broken(what: str, count: int) -> None:
        raise RuntimeError("artifact store down")

    with LdapSource(ldap_config(), ADMIN_PASSWORD) as source:
        source.on_progress = broken
        assert len(source.extract(["uid"]).users) == directory_facts["user_count"]


@pytest.mark.slapd
def test_a_paged_search_the_server_cuts_short_raises(ldap_config: LdapConfigFactory) -> None:
    config = ldap_config(bind_dn=LIMITED_DN)
    with (
        LdapSource(config, LIMITED_PASSWORD) as source,
        pytest.raises(IncompleteSourceError) as caught,
    ):
        source.extract(["uid"])
    message = str(caught.value)
    assert "result 4 sizeLimitExceeded" in message
    assert f"after {LIMITED_TOTAL - LIMITED_TOTAL % PAGE_SIZE} entries" in message
    assert "limits" in message  # says what to do


@pytest.mark.slapd
def test_duplicate_or_missing_ids_are_refused(ldap_config: LdapConfigFactory) -> None:
    duplicate = LdapSource(ldap_config(id_attribute="employeeType"), ADMIN_PASSWORD)
    with duplicate, pytest.raises(IncompleteSourceError, match="share the id staff"):
        duplicate.extract(["uid"])
    missing = LdapSource(ldap_config(id_attribute="employeeNumber"), ADMIN_PASSWORD)
    with (
        missing,
        pytest.raises(IncompleteSourceError, match=r"user0000,ou=people.* has no employeeN"),
    ):
        missing.extract(["uid"])


@pytest.mark.slapd
def test_entry_attributes_after_a_paged_read_keep_the_servers_spelling(
    ldap_config: LdapConfigFactory,
) -> None:
    # The pager decodes entries its own way on this connection; the entry read after it (Test
    # Sync's view of the directory entry) must come back as ldap3 gives it.
    with LdapSource(ldap_config(), ADMIN_PASSWORD) as source:
        (locator,) = source.find_users("uid", "zoe", ["uid"])["locator"]
        shown = source.entry_attributes(locator)
        again = source.find_users("uid", "zoe", ["displayName"])
    assert shown["displayName"] == ["Zoë Müller"]
    assert shown["objectClass"] == ["inetOrgPerson"]
    assert list(again["displayName"]) == ["Zoë Müller"]


# -- find_users ------------------------------------------------------------------------------


@pytest.mark.slapd
@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("uid", "*"),
        ("uid", "*)(uid=*"),
        ("uid", "user0001)(|(uid=*"),
        ("uid", "\\"),
        ("uid", "\x00"),
        ("uid", "user*"),
        ("displayName", "Star*"),
        ("cn", "*)(objectClass=*"),
    ],
)
def test_find_users_treats_filter_characters_as_data(
    ldap_config: LdapConfigFactory, attribute: str, value: str
) -> None:
    with LdapSource(ldap_config(), ADMIN_PASSWORD) as source:
        assert source.find_users(attribute, value, ["uid"]).empty


@pytest.mark.slapd
def test_find_users_finds_exact_matches_including_special_characters(
    ldap_config: LdapConfigFactory,
) -> None:
    with LdapSource(ldap_config(disabled_filter=INACTIVE), ADMIN_PASSWORD) as source:
        star = source.find_users("displayName", STAR_DISPLAY_NAME, ["uid"])
        assert list(star["uid"]) == ["star"]
        # uid matching is case-insensitive in the schema; the value comes back as stored.
        assert list(source.find_users("uid", "mjones", ["uid"])["uid"]) == ["MJones"]
        smith = source.find_users("cn", "Smith, John", ["uid"])
        assert list(smith["uid"]) == ["jsmith"]
        inactive = source.find_users("uid", "user0100", ["uid"])
        assert list(inactive["active"]) == [False]


@pytest.mark.slapd
@pytest.mark.parametrize("attribute", ["uid)(cn=*", "uid=x", "", "1uid", "mail "])
def test_find_users_rejects_invalid_attribute_names(
    ldap_config: LdapConfigFactory, attribute: str
) -> None:
    source = LdapSource(ldap_config(), ADMIN_PASSWORD)
    with source, pytest.raises(ConfigError, match="not an LDAP attribute name"):
        source.find_users(attribute, "x", ["uid"])


# -- connection, authentication, TLS ---------------------------------------------------------


@pytest.mark.slapd
def test_wrong_password_is_an_auth_error_naming_dn_and_url(
    ldap_config: LdapConfigFactory, slapd: SlapdServer
) -> None:
    with LdapSource(ldap_config(), "not-the-password") as source:
        with pytest.raises(SourceAuthError) as caught:
            source.extract(["uid"])
        check = source.check()
    message = str(caught.value)
    assert slapd.admin_dn in message and slapd.url in message
    assert "not-the-password" not in message
    assert "env:USERSYNC_TEST_LDAP_PASSWORD" in message  # where to fix it
    assert not check.ok and slapd.admin_dn in check.detail


@pytest.mark.slapd
def test_closed_port_is_unreachable(ldap_config: LdapConfigFactory) -> None:
    url = f"ldap://127.0.0.1:{free_port()}"
    with LdapSource(ldap_config(url=url), ADMIN_PASSWORD) as source:
        with pytest.raises(SourceUnreachableError, match=f"{url}: cannot connect"):
            source.extract(["uid"])
        check = source.check()
    assert not check.ok and url in check.detail


@pytest.mark.slapd
def test_cleartext_bind_is_refused_unless_allowed(ldap_config: LdapConfigFactory) -> None:
    with LdapSource(ldap_config(allow_cleartext_bind=False), ADMIN_PASSWORD) as source:
        with pytest.raises(ConfigError, match="allow_cleartext_bind"):
            source.extract(["uid"])
        assert "allow_cleartext_bind" in source.check().detail


@pytest.mark.slapd
def test_empty_password_is_refused_not_sent_as_anonymous_bind(
    ldap_config: LdapConfigFactory,
) -> None:
    with LdapSource(ldap_config(), "") as source, pytest.raises(ConfigError, match="is empty"):
        source.extract(["uid"])


@pytest.mark.slapd
def test_check_reports_success_and_a_missing_base(ldap_config: LdapConfigFactory) -> None:
    with LdapSource(ldap_config(), ADMIN_PASSWORD) as source:
        good = source.check()
    assert good.ok and PEOPLE in good.detail
    with LdapSource(
        ldap_config(user_base_dn="ou=nobody,dc=example,dc=org"), ADMIN_PASSWORD
    ) as source:
        missing = source.check()
    assert not missing.ok and "ou=nobody,dc=example,dc=org does not exist" in missing.detail


@pytest.mark.slapd
@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_tls_with_the_right_ca_works(
    ldap_config: LdapConfigFactory, slapd: SlapdServer, mode: str
) -> None:
    assert slapd.certificates is not None
    url = slapd.ldaps_url if mode == "ldaps" else slapd.url
    tls = LdapTls(mode=mode, ca_file=slapd.certificates.ca_file)
    config = ldap_config(url=url, tls=tls, allow_cleartext_bind=False)
    with LdapSource(config, ADMIN_PASSWORD) as source:
        assert source.check().ok
        assert list(source.find_users("uid", "zoe", ["cn"])["cn"]) == ["Zoë Müller"]


@pytest.mark.slapd
@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_tls_with_a_wrong_ca_fails_clearly(
    ldap_config: LdapConfigFactory, slapd: SlapdServer, tmp_path: Path, mode: str
) -> None:
    other_ca = make_test_certificates(tmp_path, name="some other CA").ca_file
    url = slapd.ldaps_url if mode == "ldaps" else slapd.url
    config = ldap_config(url=url, tls=LdapTls(mode=mode, ca_file=other_ca))
    with LdapSource(config, ADMIN_PASSWORD) as source:
        with pytest.raises(SourceUnreachableError) as caught:
            source.extract(["uid"])
        check = source.check()
    assert "certificate could not be validated" in str(caught.value)
    assert str(other_ca) in str(caught.value)
    assert not check.ok and "certificate could not be validated" in check.detail
    # A lab directory may turn validation off explicitly.
    lax = ldap_config(url=url, tls=LdapTls(mode=mode, ca_file=other_ca, validate_certificate=False))
    with LdapSource(lax, ADMIN_PASSWORD) as source:
        assert source.check().ok


@pytest.mark.slapd
def test_from_config_resolves_the_password_from_the_environment(
    ldap_config: LdapConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USERSYNC_TEST_LDAP_PASSWORD", ADMIN_PASSWORD)
    with LdapSource.from_config(ldap_config()) as source:
        assert source.check().ok


# -- the demo directory ----------------------------------------------------------------------


@pytest.mark.slapd
@pytest.mark.parametrize(
    ("deref_aliases", "uids"),
    [("always", {"alice", "carol"}), ("never", {"alice"})],
)
def test_deref_aliases_decides_whether_an_alias_brings_its_target(
    deref_aliases: str, uids: set[str]
) -> None:
    people, staff = f"ou=people,{BASE_DN}", f"ou=staff,{BASE_DN}"
    ldif = "".join(
        [
            ldif_entry(BASE_DN, {"objectClass": ["dcObject", "organization"], "o": "E", "dc": "example"}),
            *(ldif_entry(ou, {"objectClass": "organizationalUnit", "ou": ou[3:8]}) for ou in (people, staff, f"ou=groups,{BASE_DN}")),
            ldif_entry(f"uid=alice,{people}", {"objectClass": "inetOrgPerson", "uid": "alice", "cn": "A", "sn": "A"}),
            ldif_entry(f"uid=carol,{staff}", {"objectClass": "inetOrgPerson", "uid": "carol", "cn": "C", "sn": "C"}),
            # An alias in the user base standing for a user outside it.
            ldif_entry(f"uid=carol,{people}", {"objectClass": ["alias", "extensibleObject"], "uid": "carol", "aliasedObjectName": f"uid=carol,{staff}"}),
        ]
    )  # fmt: skip
    with SlapdServer(ldif) as server:
        config = LdapSourceConfig(
            kind="ldap",
            url=server.url,
            bind_dn=server.admin_dn,
            bind_password=SecretRef(env="UNUSED"),
            allow_cleartext_bind=True,
            user_base_dn=people,
            group_base_dn=f"ou=groups,{BASE_DN}",
            deref_aliases=deref_aliases,
        )
        with LdapSource(config, server.admin_password) as source:
            users = source.extract(["uid"]).users
    assert set(users["uid"]) == uids


@pytest.mark.slapd
def test_sample_directory_loads_and_extracts_cleanly() -> None:
    with SlapdServer.for_demo() as server:
        config = LdapSourceConfig(
            kind="ldap",
            url=server.url,
            bind_dn=server.admin_dn,
            bind_password=SecretRef(env="UNUSED"),
            allow_cleartext_bind=True,
            user_base_dn=f"ou=people,{server.base_dn}",
            group_base_dn=f"ou=groups,{server.base_dn}",
            disabled_filter=INACTIVE,
        )
        with LdapSource(config, server.admin_password) as source:
            by_group = source.extract(["uid", "mail", "displayName"])
        with LdapSource(config.model_copy(update={"membership": "member_of"}), "secret") as source:
            by_member_of = source.extract(["uid"])
    users = by_group.users
    assert len(users) == 20
    assert list(users.loc[~users["active"], "uid"]) == ["mgonzalez"]
    assert pd.isna(by_uid(users, "nwilson")["mail"])
    assert by_uid(users, "zmueller")["displayName"] == "Zoë Müller"
    assert "jsmith" in members_of(by_group, "engineering")
    assert set(by_group.groups["source_group"]) == {
        "engineering",
        "platform",
        "sales",
        "support",
        "managers",
        "all-staff",
    }
    # The nested group and the service account outside ou=people are noted, not members.
    assert by_group.notes and by_group.notes[0].startswith("2 member value(s)")
    pairs = set(by_group.memberships.itertuples(index=False, name=None))
    assert pairs == set(by_member_of.memberships.itertuples(index=False, name=None))


@pytest.mark.slapd
def test_a_missing_group_base_is_an_incomplete_read(ldap_config: LdapConfigFactory) -> None:
    config = ldap_config(group_base_dn="ou=nogroups,dc=example,dc=org")
    with (
        LdapSource(config, ADMIN_PASSWORD) as source,
        pytest.raises(IncompleteSourceError) as caught,
    ):
        source.extract(["uid"])
    assert "result 32 noSuchObject" in str(caught.value)
    assert "check the base DN of the groups" in str(caught.value)


def test_missing_slapd_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from usersync_sandbox import slapd as slapd_module

    monkeypatch.setattr(slapd_module.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(slapd_module.SlapdError, match="slapd not found; run `make setup`"):
        SlapdServer().start()


# -- nested groups where IN_CHAIN is unavailable ------------------------------------------------


@pytest.mark.parametrize("nesting", ["flatten", "in_chain"])
def test_nested_group_is_flattened_here_without_in_chain(
    ldap_config: LdapConfigFactory, nesting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """slapd has no IN_CHAIN: `in_chain` falls back to flattening, and says so."""
    monkeypatch.setenv("USERSYNC_TEST_LDAP_PASSWORD", ADMIN_PASSWORD)
    with LdapSource.from_config(ldap_config(nested_groups=nesting)) as source:
        snapshot = source.extract(ATTRIBUTES)
    engineering = members_of(snapshot, "engineering")
    assert {"jsmith", "zoe"} <= engineering
    assert {f"user{n:04d}" for n in range(0, PAGED_USERS, 2)} <= engineering  # via cn=even
    assert len(engineering) == 2 + PAGED_USERS // 2
    fell_back = any("IN_CHAIN" in note for note in snapshot.notes)
    assert fell_back == (nesting == "in_chain")


# -- referrals ---------------------------------------------------------------------------------


def referred_config(directory: ReferredDirectory, **overrides: Any) -> LdapSourceConfig:
    """A config for the main server of the referred directory, over LDAPS with the CA file."""
    main = directory.main
    assert main.certificates is not None
    fields: dict[str, Any] = {
        "kind": "ldap",
        "url": main.ldaps_url,
        "tls": LdapTls(mode="ldaps", ca_file=main.certificates.ca_file),
        "bind_dn": main.admin_dn,
        "bind_password": SecretRef(env="UNUSED"),
        "user_base_dn": PEOPLE,
        "group_base_dn": GROUPS,
        "connect_timeout_seconds": 5,
        "receive_timeout_seconds": 20,
        **overrides,
    }
    return LdapSourceConfig(**fields)


@pytest.mark.slapd
@pytest.mark.parametrize("base", [PEOPLE, REMOTE], ids=["search-reference", "referral-result"])
def test_a_referral_is_an_incomplete_read_unless_followed(
    referred_directory: ReferredDirectory, base: str
) -> None:
    # Under PEOPLE the server answers with a searchResRef beside the local users; with the
    # referral entry itself as the base, with result 10 (referral). Either way users are
    # missing from what it sent.
    config = referred_config(referred_directory, user_base_dn=base)
    with (
        LdapSource(config, ADMIN_PASSWORD) as source,
        pytest.raises(IncompleteSourceError) as caught,
    ):
        source.extract(["uid"])
    message = str(caught.value)
    assert referred_directory.remote_url in message
    assert "follow_referrals: true" in message
    assert "nothing was used" in message


@pytest.mark.slapd
@pytest.mark.parametrize("page_size", [1, 500])
def test_followed_referrals_add_the_users_held_elsewhere(
    referred_directory: ReferredDirectory, page_size: int
) -> None:
    config = referred_config(referred_directory, follow_referrals=True, page_size=page_size)
    with LdapSource(config, ADMIN_PASSWORD) as source:
        snapshot = source.extract(["uid", "mail"])
    users = snapshot.users
    expected = {*referred_directory.local_users, *referred_directory.remote_users}
    assert set(users["uid"]) == expected and len(users) == len(expected)
    assert users["source_id"].is_unique
    assert by_uid(users, "remote2")["locator"] == f"uid=remote2,{REMOTE}"
    assert by_uid(users, "remote2")["mail"] == "remote2@example.org"
    # A group on the main server resolves a member held on the referred one.
    assert members_of(snapshot, "mixed") == {"local1", "remote1"}


@pytest.mark.slapd
def test_a_referral_result_is_followed_to_its_server(
    referred_directory: ReferredDirectory,
) -> None:
    config = referred_config(referred_directory, user_base_dn=REMOTE, follow_referrals=True)
    with LdapSource(config, ADMIN_PASSWORD) as source:
        users = source.extract(["uid"]).users
    assert set(users["uid"]) == set(referred_directory.remote_users)


@pytest.mark.slapd
def test_a_referred_server_whose_certificate_fails_validation_is_an_incomplete_read(
    referred_directory: ReferredDirectory,
) -> None:
    # The foreign server's certificate is signed by a CA other than the profile's ca_file:
    # following the referral uses the profile's TLS settings, so it must fail, not read.
    config = referred_config(referred_directory, user_base_dn=ELSEWHERE, follow_referrals=True)
    with (
        LdapSource(config, ADMIN_PASSWORD) as source,
        pytest.raises(IncompleteSourceError) as caught,
    ):
        source.extract(["uid"])
    message = str(caught.value)
    assert referred_directory.foreign.url in message
    assert "certificate could not be validated" in message
    assert isinstance(caught.value.__cause__, SourceUnreachableError)


@pytest.mark.slapd
def test_a_referred_server_refusing_the_bind_is_an_incomplete_read(
    referred_directory: ReferredDirectory,
) -> None:
    # The referred server gets the same bind, and refuses it: it has no such account.
    main = referred_directory.main
    config = referred_config(
        referred_directory,
        url=main.url,
        tls=LdapTls(),
        allow_cleartext_bind=True,
        bind_dn=f"uid=local1,{PEOPLE}",
        follow_referrals=True,
    )
    with (
        LdapSource(config, LOCAL_PASSWORD) as source,
        pytest.raises(IncompleteSourceError) as caught,
    ):
        source.extract(["uid"])
    assert referred_directory.remote.url in str(caught.value)
    assert isinstance(caught.value.__cause__, SourceAuthError)


def test_reference_urls_are_parsed_or_refused_clearly() -> None:
    parsed = parse_reference("ldap://127.0.0.1:3890/ou=remote,ou=people,dc=example,dc=org??sub")
    assert parsed.server_url == "ldap://127.0.0.1:3890"
    assert parsed.dn == "ou=remote,ou=people,dc=example,dc=org"
    assert parsed.scope == "SUBTREE"
    ad = parse_reference("ldaps://example.test/CN=Configuration,DC=example,DC=test")
    assert (ad.server_url, ad.scope) == ("ldaps://example.test", None)
    assert parse_reference("ldap://[::1]/cn=a%3Fb,dc=x").dn == "cn=a?b,dc=x"
    for unusable in ["http://x/dc=a", "ldap:///dc=a", "ldap://x:port/dc=a", "ldap://x/dc=a?cn"]:
        with pytest.raises(IncompleteSourceError, match="cannot follow"):
            parse_reference(unusable)


# -- attribute names through the schema ---------------------------------------------------------


def test_schema_maps_aliases_oids_and_case_to_the_primary_name() -> None:
    schema = AttributeSchema.parse(
        [
            "( 2.5.4.4 NAME ( 'sn' 'surname' ) DESC 'RFC2256: NAME in a DESC' SUP name )",
            "( 0.9.2342.19200300.100.1.1 NAME ( 'uid' 'userid' ) EQUALITY caseIgnoreMatch )",
            "( 1.2.840.113556.1.4.221 NAME 'sAMAccountName' SYNTAX '1.3.6.1.4.1.1466.115.121.1.15' )",
            "( 1.3.6.1.4.1.99999.1 )",
            "not a definition",
        ],
        source="test",
    )
    assert schema.canonical("Surname") == schema.canonical("2.5.4.4") == "sn"
    assert schema.canonical("userID") == "uid"
    assert schema.canonical("samaccountname") == "samaccountname"
    assert schema.canonical("2.5.4.4;Lang-DE") == "sn;lang-de"
    assert schema.canonical("1.3.6.1.4.1.99999.1") == "1.3.6.1.4.1.99999.1"
    assert schema.canonical("name") is None  # only mentioned (SUP, DESC), never defined
    assert schema.key("fooBar") == "foobar"
    assert schema.suggestions("sAMAcountName") == ["sAMAccountName"]


@pytest.mark.slapd
def test_aliases_and_oids_in_the_mapping_read_their_values(
    ldap_config: LdapConfigFactory,
) -> None:
    # slapd answers `userid`, `surname`, `commonName` and `2.5.4.4` with uid, sn, cn and sn.
    names = ["userid", "surname", "commonName", "2.5.4.4", "MAIL"]
    with LdapSource(ldap_config(), ADMIN_PASSWORD) as source:
        snapshot = source.extract(names)
        found = source.find_users("surname", "Müller", ["userid"])
    users = snapshot.users
    assert list(users.columns) == [*SOURCE_USER_COLUMNS, *names]
    zoe = users[users["userid"] == "zoe"].iloc[0]
    assert (zoe["surname"], zoe["commonName"], zoe["2.5.4.4"]) == ("Müller", "Zoë Müller", "Müller")
    assert zoe["MAIL"] == "zoë@example.org"
    assert users["surname"].notna().all() and users["commonName"].notna().all()
    assert list(found["userid"]) == ["zoe"]
    # The mapping step finds the columns by the profile's own spelling. (attributes.csv
    # cannot name an OID yet: usersync.mapping.ATTRIBUTE_NAME wants a leading letter.)
    rules = parse_attributes(
        "target,source,transform,template\n"
        "username,userid,lower,\n"
        "email,MAIL,,\n"
        "display_name,,template,{commonName} ({surname})\n"
    )
    mapped = map_attributes(users, rules)
    row = mapped.loc[zoe.name]
    assert (row["username"], row["email"]) == ("zoe", "zoë@example.org")
    assert row["display_name"] == "Zoë Müller (Müller)"


@pytest.mark.slapd
def test_an_attribute_the_schema_lacks_is_refused_naming_it_and_attributes_csv(
    ldap_config: LdapConfigFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with LdapSource(ldap_config(), ADMIN_PASSWORD) as source:
        with pytest.raises(ConfigError) as caught:
            source.extract(["uid", "fooBar", "telephonNumber"])
        checked = source.check_attributes(["uid", "fooBar"])
        with pytest.raises(ConfigError, match="does not define the attribute 'fooBar'"):
            source.find_users("fooBar", "x", ["uid"])
    message = str(caught.value)
    assert "'fooBar', 'telephonNumber'" in message and "attributes.csv" in message
    assert "did you mean telephoneNumber" in message
    assert "'uid'" not in message
    assert not checked.ok and "'fooBar'" in checked.detail

    # Test Connection (`usersync check`) fails the source for it; nothing is read or written.
    monkeypatch.setenv("USERSYNC_TEST_LDAP_PASSWORD", ADMIN_PASSWORD)
    profile = Profile.model_validate(
        {
            "name": "schema-check",
            "source": ldap_config().model_dump(),
            "targets": {
                "jira": {
                    "kind": "jira",
                    "url": "http://127.0.0.1:9",
                    "auth": {"kind": "token", "token": {"env": "USERSYNC_TEST_UNUSED"}},
                }
            },
        }
    )
    tables = MappingTables(parse_attributes("target,source\nusername,uid\nemail,fooBar\n"), ())
    source_result = check_connections(LoadedProfile(profile, tables))[0]
    assert source_result.part == "source" and not source_result.ok
    assert "'fooBar'" in source_result.detail and "attributes.csv" in source_result.detail
    good = MappingTables(parse_attributes("target,source\nusername,userid\nemail,mail\n"), ())
    assert check_connections(LoadedProfile(profile, good))[0].ok


@pytest.mark.slapd
def test_the_shipped_attribute_table_still_reads_an_ldap_directory(
    ldap_config: LdapConfigFactory,
) -> None:
    # It lists other IdPs' names as alternatives (userName, sAMAccountName): not typos.
    names = MappingTables(parse_attributes(DEFAULT_ATTRIBUTES_CSV), ()).source_attributes()
    with LdapSource(ldap_config(), ADMIN_PASSWORD) as source:
        users = source.extract(names).users
        assert source.check_attributes(names).ok
    mapped = map_attributes(users, parse_attributes(DEFAULT_ATTRIBUTES_CSV))
    assert mapped["username"].notna().all()


def test_the_package_exports_what_the_rest_of_usersync_imports() -> None:
    """The split into modules keeps `usersync.sources.ldap`'s public surface."""
    import usersync.sources.ldap as package

    assert sorted(package.__all__) == [
        "DirectoryChanges",
        "DirectoryPosition",
        "DnIndex",
        "FILETIME_UNIX_OFFSET_SECONDS",
        "LdapSource",
        "canonical_id",
        "normalise_dn",
    ]
    assert all(getattr(package, name) is not None for name in package.__all__)
