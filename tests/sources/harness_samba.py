"""The source contract's Active Directory: the session's Samba AD DC (`samba_dc`, shared with
tests/ad), the scenario added over LDAPS under an OU of its own: users with
`userAccountControl` (the disabled one with ACCOUNTDISABLE), groups with `member` values."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from ldap3 import MODIFY_REPLACE
from usersync_sandbox.samba import SambaDC

from tests.ad.conftest import DISABLED, ENABLED, USER_CLASSES, admin_connection
from tests.sources.harness import PAGE_SIZE, SCENARIO, SourceEnv, read_cut_short
from usersync.config import LdapSourceConfig, LdapTls, SecretRef
from usersync.sources.ldap import LdapSource


def _seed(dc: SambaDC, root: str) -> None:
    people, groups = f"OU=People,{root}", f"OU=Groups,{root}"
    conn = admin_connection(dc)
    try:
        for ou in (root, people, groups):
            assert conn.add(ou, ["top", "organizationalUnit"]), conn.result
        for user in SCENARIO.users:
            attributes = {
                "sAMAccountName": user.login,
                "userPrincipalName": f"{user.login}@example.test",
                "givenName": user.given,
                "sn": user.family,
                "mail": user.email,
                "userAccountControl": ENABLED if user.active else DISABLED,
            }
            assert conn.add(f"CN={user.login},{people}", USER_CLASSES, attributes), conn.result
        for number, (name, members) in enumerate(SCENARIO.groups.items()):
            attributes = {
                "sAMAccountName": f"contract-group-{number}",
                "member": [f"CN={login},{people}" for login in members],
            }
            assert conn.add(f"CN={name},{groups}", ["top", "group"], attributes), conn.result
    finally:
        conn.unbind()


@contextmanager
def environment(request: pytest.FixtureRequest) -> Iterator[SourceEnv]:
    dc: SambaDC = request.getfixturevalue("samba_dc")
    root = f"OU=usersync-contract,{dc.base_dn}"
    _seed(dc, root)

    def open_source(port: int = 636) -> LdapSource:
        config = LdapSourceConfig(
            kind="ldap",
            flavour="active_directory",
            url=f"ldaps://127.0.0.1:{port}",
            tls=LdapTls(mode="ldaps", ca_file=dc.ca_file),
            bind_dn=dc.admin_upn,
            bind_password=SecretRef(env="UNUSED"),
            user_base_dn=f"OU=People,{root}",
            group_base_dn=f"OU=Groups,{root}",
            page_size=PAGE_SIZE,
            connect_timeout_seconds=5,
            receive_timeout_seconds=30,
        )
        return LdapSource(config, dc.admin_password)

    def set_given_name(login: str, given: str) -> None:
        conn = admin_connection(dc)
        changes: dict[str, Any] = {"givenName": [(MODIFY_REPLACE, [given])]}
        assert conn.modify(f"CN={login},OU=People,{root}", changes), conn.result
        conn.unbind()

    env = SourceEnv(
        name="samba",
        fields={"login": "sAMAccountName", "email": "mail", "given": "givenName", "family": "sn"},
        open_source=open_source,
        failing_read=lambda share: read_cut_short(
            ("127.0.0.1", 636), open_source, env.attributes, share
        ),
        set_given_name=set_given_name,
    )
    yield env
