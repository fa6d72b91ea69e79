"""A session-wide OpenLDAP slapd with test data built here, and configs pointing at it.

The directory holds `PAGED_USERS` ordinary users (several pages at `PAGE_SIZE`) and a handful
of edge cases, with `memberOf` written into the LDIF because slapadd runs no overlay. A
non-root account `cn=limited` may read only `LIMITED_TOTAL` entries per paged search, so that
slapd really ends a paged search early. The server listens on ldap:// (StartTLS) and ldaps://
with a throw-away CA.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from usersync.config import LdapSourceConfig, LdapTls, SecretRef
from usersync.sandbox.slapd import SlapdServer, ldif_entry

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
