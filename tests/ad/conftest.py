"""Test data created over LDAPS in the session's Samba AD DC (`samba_dc`), and configs for it.

AD holds fixed ports, so every AD test shares one DC, started by `tests/conftest.py` (the
source contract suite in tests/sources uses it too). The data lives under its
own OU: `BIG_GROUP_SIZE` users in a group big enough to need range retrieval, a three-level
nested group, disabled and expired accounts, non-ASCII names, a DN with an escaped comma, and
accounts the rename tests may change (one per test, so the tests stay independent). Users are
added without passwords (userAccountControl 544 = NORMAL_ACCOUNT | PASSWD_NOTREQD), pipelined
over one connection: about 6 ms each, where a password would cost Samba a key derivation each.
"""

from __future__ import annotations

import functools
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest
from ldap3 import ASYNC, MODIFY_ADD, NONE, SYNC, Connection, Server, Tls
from ldap3.core.exceptions import LDAPSessionTerminatedByServerError, LDAPSocketOpenError
from usersync_sandbox.samba import SambaDC

from usersync.config import LdapSourceConfig, LdapTls, SecretRef

PASSWORD_ENV = "USERSYNC_TEST_AD_PASSWORD"
BIG_GROUP_SIZE = 1600
ENABLED = "544"  # NORMAL_ACCOUNT | PASSWD_NOTREQD
DISABLED = "546"  # ... | ACCOUNTDISABLE
#: accountExpires of 1 (100 ns after 1601-01-01): long expired.
LONG_AGO = "1"
SMITH_CN = "Smith, John"


def admin_connection(dc: SambaDC, *, strategy: Any = SYNC) -> Connection:
    """A bound LDAPS connection as Administrator (for creating and changing test data)."""
    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(dc.ca_file))
    server = Server(dc.ldaps_url, use_ssl=True, tls=tls, get_info=NONE)
    # A DC still digesting a burst of writes on a busy 2-core machine sometimes drops a new
    # session at bind; the test data is worth a few patient tries, not a failed session.
    for attempt in range(1, 7):
        try:
            return Connection(
                server,
                user=dc.admin_upn,
                password=dc.admin_password,
                client_strategy=strategy,
                auto_bind=True,
                auto_range=False,
                return_empty_attributes=False,
            )
        except (LDAPSessionTerminatedByServerError, LDAPSocketOpenError):
            if attempt == 6:
                raise
            time.sleep(2 * attempt)
    raise AssertionError("unreachable")


class AdDirectory:
    """Where the test data lives in the DC, and the facts tests assert against."""

    def __init__(self, dc: SambaDC) -> None:
        self.dc = dc
        self.root = f"OU=usersync-test,{dc.base_dn}"
        self.people = f"OU=People,{self.root}"
        self.groups = f"OU=Groups,{self.root}"
        self.outside = f"OU=Outside,{self.root}"
        self.smith_dn = f"CN=Smith\\, John,{self.people}"

    def user_dn(self, cn: str) -> str:
        return f"CN={cn},{self.people}"

    def group_dn(self, cn: str) -> str:
        return f"CN={cn},{self.groups}"


def _user(sam: str, **extra: str) -> dict[str, Any]:
    attributes = {
        "sAMAccountName": sam,
        "userPrincipalName": f"{sam}@example.test",
        "mail": f"{sam}@example.test",
        "displayName": f"User {sam}",
        "givenName": "User",
        "sn": sam,
        "userAccountControl": ENABLED,
    }
    attributes.update(extra)
    return attributes


USER_CLASSES = ["top", "person", "organizationalPerson", "user"]
#: cn -> attributes of the hand-made users (beside the big group's).
SPECIAL_USERS: dict[str, dict[str, Any]] = {
    "alice": _user("alice", displayName="Alice Example"),
    "carol": _user("carol"),
    "dave": _user("dave"),
    "erin": _user("erin"),
    "disabled": _user("disabled", userAccountControl=DISABLED),
    "expired": _user("expired", accountExpires=LONG_AGO),
    "Zoë Müller": _user(
        "zoe", displayName="Zoë Müller", givenName="Zoë", sn="Müller", mail="zoë@example.test"
    ),
    "Björn": _user("björn", displayName="Björn Ångström"),
    SMITH_CN: _user("jsmith", displayName="John Smith"),
    "rename-source": _user("rename1", displayName="Rename One"),
    "rename-jira": _user("rename2", displayName="Rename Two"),
    "star": _user("star", displayName="Star * (x) \\ name"),
}
#: group cn -> member cns (users) and nested group cns.
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "level3": (["carol"], []),
    "level2": (["dave"], ["level3"]),
    "level1": (["erin"], ["level2"]),
    "engineering": (["Zoë Müller", SMITH_CN, "rename-jira"], []),
}


def _build(directory: AdDirectory) -> None:
    conn = admin_connection(directory.dc, strategy=ASYNC)
    pending: list[tuple[int, str]] = []

    def add(dn: str, classes: list[str], attributes: dict[str, Any]) -> None:
        pending.append((conn.add(dn, classes, attributes), dn))

    def settle() -> None:
        for message_id, dn in pending:
            _response, result = conn.get_response(message_id, timeout=60)
            if result["result"] != 0:
                raise RuntimeError(f"adding {dn} failed: {result}")
        pending.clear()

    add(directory.root, ["top", "organizationalUnit"], {})
    settle()
    for ou in (directory.people, directory.groups, directory.outside):
        add(ou, ["top", "organizationalUnit"], {})
    settle()
    for number in range(BIG_GROUP_SIZE):
        add(directory.user_dn(f"big{number:04d}"), USER_CLASSES, _user(f"big{number:04d}"))
    for cn, attributes in SPECIAL_USERS.items():
        dn = directory.smith_dn if cn == SMITH_CN else directory.user_dn(cn)
        add(dn, USER_CLASSES, attributes)
    add(f"CN=outsider,{directory.outside}", USER_CLASSES, _user("outsider"))
    for cn in [*GROUPS, "big"]:
        add(directory.group_dn(cn), ["top", "group"], {"sAMAccountName": f"grp-{cn}"})
    settle()
    conn.unbind()

    members = {
        cn: [directory.smith_dn if u == SMITH_CN else directory.user_dn(u) for u in users]
        + [directory.group_dn(g) for g in nested]
        for cn, (users, nested) in GROUPS.items()
    }
    members["engineering"].append(f"CN=outsider,{directory.outside}")
    members["big"] = [directory.user_dn(f"big{n:04d}") for n in range(BIG_GROUP_SIZE)]
    _add_members(directory, members)


#: AD's permissive modify: adding a value already there succeeds (a retried chunk may have
#: been applied before the session dropped).
PERMISSIVE_MODIFY = ("1.2.840.113556.1.4.1413", False, None)
#: Member values per modify: one request of 1,500 values was seen to make Samba drop the
#: session when the machine was loaded.
MEMBERS_PER_MODIFY = 250


def _add_members(directory: AdDirectory, members: dict[str, list[str]]) -> None:
    conn = admin_connection(directory.dc)
    try:
        for cn, values in members.items():
            for start in range(0, len(values), MEMBERS_PER_MODIFY):
                chunk = values[start : start + MEMBERS_PER_MODIFY]
                for attempt in range(1, 4):
                    try:
                        ok = conn.modify(
                            directory.group_dn(cn),
                            {"member": [(MODIFY_ADD, chunk)]},
                            controls=[PERMISSIVE_MODIFY],
                        )
                        break
                    except LDAPSessionTerminatedByServerError:
                        if attempt == 3:
                            raise
                        time.sleep(2 * attempt)
                        conn = admin_connection(directory.dc)
                if not ok:
                    raise RuntimeError(f"adding members to {cn} failed: {conn.result}")
    finally:
        conn.unbind()


@pytest.fixture(scope="session")
def ad_directory(samba_dc: SambaDC) -> AdDirectory:
    directory = AdDirectory(samba_dc)
    began = time.monotonic()
    _build(directory)
    print(
        f"AD test data: {BIG_GROUP_SIZE + len(SPECIAL_USERS)} users in "
        f"{time.monotonic() - began:.1f} s"
    )
    os.environ[PASSWORD_ENV] = samba_dc.admin_password
    return directory


AdConfigFactory = Callable[..., LdapSourceConfig]


def ad_source_config(directory: AdDirectory, **overrides: Any) -> LdapSourceConfig:
    """An AD-flavoured LdapSourceConfig over LDAPS (validated); keyword arguments override."""
    dc = directory.dc
    fields: dict[str, Any] = {
        "kind": "ldap",
        "flavour": "active_directory",
        "url": dc.ldaps_url,
        "tls": LdapTls(mode="ldaps", ca_file=dc.ca_file),
        "bind_dn": dc.admin_upn,
        "bind_password": SecretRef(env=PASSWORD_ENV),
        "user_base_dn": directory.people,
        "group_base_dn": directory.groups,
        "connect_timeout_seconds": 5,
        "receive_timeout_seconds": 30,
    }
    fields.update(overrides)
    return LdapSourceConfig(**fields)


@pytest.fixture
def ad_config(ad_directory: AdDirectory) -> AdConfigFactory:
    """`ad_source_config` bound to the session's directory."""
    return functools.partial(ad_source_config, ad_directory)
