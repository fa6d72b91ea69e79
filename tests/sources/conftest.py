"""A session-wide OpenLDAP slapd with test data built here, and configs pointing at it.

The directory holds `PAGED_USERS` ordinary users (several pages at `PAGE_SIZE`) and a handful
of edge cases, with `memberOf` written into the LDIF because slapadd runs no overlay. A
non-root account `cn=limited` may read only `LIMITED_TOTAL` entries per paged search, so that
slapd really ends a paged search early. The server listens on ldap:// (StartTLS) and ldaps://
with a throw-away CA. `referred_directory` is a second set of servers: a main slapd whose
referral entries point at two others (one sharing its CA, one not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from usersync_sandbox.slapd import SlapdServer, ldif_entry, make_test_certificates

from usersync.config import LdapSourceConfig, LdapTls, SecretRef

BASE = "dc=example,dc=org"
PEOPLE = f"ou=people,{BASE}"
GROUPS = f"ou=groups,{BASE}"
OUTSIDE = f"ou=outside,{BASE}"
PAGED_USERS = 1200
PAGE_SIZE = 100
INACTIVE_EVERY = 100  # user0000, user0100, ... are employeeType: inactive
LIMITED_DN = f"cn=limited,{BASE}"
LIMITED_PASSWORD = "limited-pw"
LIMITED_TOTAL = 150

SMITH_DN = rf"cn=Smith\, John,{PEOPLE}"
STAR_DISPLAY_NAME = "Star * (x) \\ name"


def _user(uid: str, **extra: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "objectClass": "inetOrgPerson",
        "uid": uid,
        "cn": f"User {uid}",
        "sn": uid,
        "mail": f"{uid.lower()}@example.org",
        "displayName": f"User {uid}",
        "employeeType": "staff",
    }
    attributes.update(extra)
    return {key: value for key, value in attributes.items() if value is not None}


def build_directory() -> tuple[str, dict[str, Any]]:
    """The test LDIF and facts about it the tests assert against."""
    users: dict[str, dict[str, Any]] = {}
    for number in range(PAGED_USERS):
        uid = f"user{number:04d}"
        inactive = number % INACTIVE_EVERY == 0
        users[f"uid={uid},{PEOPLE}"] = _user(uid, employeeType="inactive" if inactive else "staff")
    users[f"uid=nomail,{PEOPLE}"] = _user("nomail", mail=None)
    users[f"uid=zoe,{PEOPLE}"] = _user(
        "zoe", cn="Zoë Müller", sn="Müller", displayName="Zoë Müller", mail="zoë@example.org"
    )
    users[SMITH_DN] = _user("jsmith", cn="Smith, John", displayName="John Smith")
    users[f"uid=MJones,{PEOPLE}"] = _user("MJones", mail="Michael.Jones@Example.org")
    users[f"uid=star,{PEOPLE}"] = _user("star", displayName=STAR_DISPLAY_NAME)
    outsider = f"uid=outsider,{OUTSIDE}"

    people = list(users)
    groups: dict[str, list[str]] = {
        "everyone": people,
        "even": people[:PAGED_USERS:2],
        "engineering": [
            SMITH_DN,
            f"uid=zoe,{PEOPLE}",
            f"cn=even,{GROUPS}",  # a nested group: not a user, left out and noted
            outsider,  # a user outside the user base: left out and noted
        ],
    }
    member_of: dict[str, list[str]] = {}
    for name, members in groups.items():
        for member in members:
            member_of.setdefault(member.lower(), []).append(f"cn={name},{GROUPS}")

    parts = [
        ldif_entry(
            BASE, {"objectClass": ["dcObject", "organization"], "o": "Example", "dc": "example"}
        ),
        ldif_entry(PEOPLE, {"objectClass": "organizationalUnit", "ou": "people"}),
        ldif_entry(GROUPS, {"objectClass": "organizationalUnit", "ou": "groups"}),
        ldif_entry(OUTSIDE, {"objectClass": "organizationalUnit", "ou": "outside"}),
        ldif_entry(
            LIMITED_DN,
            {
                "objectClass": ["person", "simpleSecurityObject"],
                "cn": "limited",
                "sn": "limited",
                "userPassword": LIMITED_PASSWORD,
            },
        ),
        ldif_entry(outsider, _user("outsider")),
    ]
    for dn, attributes in users.items():
        memberships = member_of.get(dn.lower(), [])
        parts.append(ldif_entry(dn, {**attributes, "memberOf": memberships}))
    # In engineering, Smith's member value is spelled unlike the entry's DN (which slapd
    # stores as cn=Smith\2C John): resolution must compare normalised DNs.
    spelling = {SMITH_DN: r"CN=smith\2c JOHN , OU=People,dc=EXAMPLE,dc=org"}
    for name, members in groups.items():
        values = [spelling.get(m, m) for m in members] if name == "engineering" else members
        attributes = {"objectClass": "groupOfNames", "cn": name, "member": values}
        parts.append(ldif_entry(f"cn={name},{GROUPS}", attributes))
    facts = {
        "user_count": len(users),
        "inactive_count": len(range(0, PAGED_USERS, INACTIVE_EVERY)),
        "group_sizes": {"everyone": len(people), "even": PAGED_USERS // 2, "engineering": 2},
    }
    return "".join(parts), facts


@pytest.fixture(scope="session")
def directory_facts() -> dict[str, Any]:
    return build_directory()[1]


@pytest.fixture(scope="session")
def slapd() -> Iterator[SlapdServer]:
    """slapd with the test directory, TLS listeners and a size-limited account."""
    ldif, _facts = build_directory()
    limits = f'limits dn.exact="{LIMITED_DN}" size.prtotal={LIMITED_TOTAL}'
    with SlapdServer(ldif, tls=True, database_config=[limits]) as server:
        yield server


LdapConfigFactory = Callable[..., LdapSourceConfig]


@pytest.fixture
def ldap_config(slapd: SlapdServer) -> LdapConfigFactory:
    """Build an LdapSourceConfig for the test server; keyword arguments override fields."""

    def build(**overrides: Any) -> LdapSourceConfig:
        fields: dict[str, Any] = {
            "kind": "ldap",
            "url": slapd.url,
            "bind_dn": slapd.admin_dn,
            "bind_password": SecretRef(env="USERSYNC_TEST_LDAP_PASSWORD"),
            "allow_cleartext_bind": True,
            "user_base_dn": PEOPLE,
            "group_base_dn": GROUPS,
            "page_size": PAGE_SIZE,
            "connect_timeout_seconds": 5,
            "receive_timeout_seconds": 20,
            "tls": LdapTls(),
        }
        fields.update(overrides)
        return LdapSourceConfig(**fields)

    return build


# -- a directory split over servers by referrals ---------------------------------------------

REMOTE = f"ou=remote,{PEOPLE}"
#: A subtree of the main server whose only child refers to a server with a CA of its own.
ELSEWHERE = f"ou=elsewhere,{BASE}"
FOREIGN = f"ou=foreign,{ELSEWHERE}"
#: The password of the main server's local users (accounts the referred servers lack).
LOCAL_PASSWORD = "local-pw"


@dataclass(frozen=True)
class ReferredDirectory:
    """The main server and the servers its referral entries point at.

    `main` holds `PEOPLE` with the users `local_users`, the group `mixed` (a local and a
    remote member) and the referral entry `REMOTE` -> `remote`, which holds `remote_users`
    (its certificate is signed by the main server's CA). `ELSEWHERE` on main holds only the
    referral `FOREIGN` -> `foreign`, whose certificate another CA signed.
    """

    main: SlapdServer
    remote: SlapdServer
    foreign: SlapdServer
    local_users: tuple[str, ...]
    remote_users: tuple[str, ...]

    @property
    def remote_url(self) -> str:
        return f"{self.remote.url}/{REMOTE}"


def _suffix_entries() -> list[str]:
    return [
        ldif_entry(
            BASE, {"objectClass": ["dcObject", "organization"], "o": "Example", "dc": "example"}
        ),
        ldif_entry(PEOPLE, {"objectClass": "organizationalUnit", "ou": "people"}),
    ]


def _referral(dn: str, ou: str, url: str) -> str:
    # extensibleObject allows `ou` beside the referral class; slapd answers searches reaching
    # this entry with a reference to `url` (no ManageDsaIT control is sent).
    return ldif_entry(dn, {"objectClass": ["referral", "extensibleObject"], "ou": ou, "ref": url})


@pytest.fixture(scope="session")
def referred_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferredDirectory]:
    """Three slapds: the main one, with referral entries to the two others (see the class)."""
    certificates = make_test_certificates(tmp_path_factory.mktemp("shared-ca"))
    local_users = ("local1", "local2")
    remote_users = ("remote1", "remote2", "remote3")
    remote_ldif = [
        *_suffix_entries(),
        ldif_entry(REMOTE, {"objectClass": "organizationalUnit", "ou": "remote"}),
        *(ldif_entry(f"uid={uid},{REMOTE}", _user(uid)) for uid in remote_users),
    ]
    foreign_ldif = [
        *_suffix_entries(),
        ldif_entry(ELSEWHERE, {"objectClass": "organizationalUnit", "ou": "elsewhere"}),
        ldif_entry(FOREIGN, {"objectClass": "organizationalUnit", "ou": "foreign"}),
        ldif_entry(f"uid=foreigner,{FOREIGN}", _user("foreigner")),
    ]
    with (
        SlapdServer("".join(remote_ldif), tls=True, certificates=certificates) as remote,
        SlapdServer("".join(foreign_ldif), tls=True) as foreign,
    ):
        members = [f"uid=local1,{PEOPLE}", f"uid=remote1,{REMOTE}"]
        main_ldif = [
            *_suffix_entries(),
            ldif_entry(GROUPS, {"objectClass": "organizationalUnit", "ou": "groups"}),
            ldif_entry(ELSEWHERE, {"objectClass": "organizationalUnit", "ou": "elsewhere"}),
            *(
                ldif_entry(f"uid={uid},{PEOPLE}", _user(uid, userPassword=LOCAL_PASSWORD))
                for uid in local_users
            ),
            _referral(REMOTE, "remote", f"{remote.url}/{REMOTE}"),
            _referral(FOREIGN, "foreign", f"{foreign.url}/{FOREIGN}"),
            ldif_entry(
                f"cn=mixed,{GROUPS}",
                {"objectClass": "groupOfNames", "cn": "mixed", "member": members},
            ),
        ]
        with SlapdServer("".join(main_ldif), tls=True, certificates=certificates) as main:
            yield ReferredDirectory(main, remote, foreign, local_users, remote_users)
