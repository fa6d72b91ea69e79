"""The source contract's OpenLDAP: a slapd of its own (syncprov, so it keeps the contextCSN an
incremental read needs), the scenario added over LDAP (`ldapadd`, overlays running), a disabled
user marked by `employeeType: disabled` and the profile's `disabled_filter` saying so."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from ldap3 import MODIFY_REPLACE, Connection, Server
from usersync_sandbox.slapd import SlapdServer, ldif_entry

from tests.sources.harness import PAGE_SIZE, SCENARIO, SourceEnv, read_cut_short
from usersync.config import LdapSourceConfig, SecretRef
from usersync.sources.ldap import LdapSource

BASE = "dc=contract,dc=example"
PEOPLE = f"ou=people,{BASE}"
GROUPS = f"ou=groups,{BASE}"


#: Most of the bytes of a small read are the subschema entry, read first: a connection that
#: drops then escapes as ldap3's own exception (`sources/ldap/decoding.py: base_entry` maps
#: no communication error), not as the SourceUnreachableError the Source interface promises.
def _user_dn(login: str) -> str:
    return f"uid={login},{PEOPLE}"


def scenario_ldif() -> str:
    parts = [
        ldif_entry(BASE, {"objectClass": ["dcObject", "organization"], "o": "C", "dc": "contract"}),
        ldif_entry(PEOPLE, {"objectClass": "organizationalUnit", "ou": "people"}),
        ldif_entry(GROUPS, {"objectClass": "organizationalUnit", "ou": "groups"}),
    ]
    for user in SCENARIO.users:
        attributes = {
            "objectClass": "inetOrgPerson",
            "uid": user.login,
            "cn": f"{user.given} {user.family}",
            "givenName": user.given,
            "sn": user.family,
            "mail": user.email,
            "employeeType": "staff" if user.active else "disabled",
        }
        parts.append(ldif_entry(_user_dn(user.login), attributes))
    for name, members in SCENARIO.groups.items():
        attributes = {"objectClass": "groupOfNames", "cn": name, "member": map(_user_dn, members)}
        parts.append(ldif_entry(f"cn={name},{GROUPS}", attributes))
    return "".join(parts)


@contextmanager
def environment(request: pytest.FixtureRequest) -> Iterator[SourceEnv]:
    with SlapdServer(scenario_ldif(), base_dn=BASE, load="online", syncprov=True) as server:

        def config(url: str, **overrides: Any) -> LdapSourceConfig:
            return LdapSourceConfig(
                kind="ldap",
                url=url,
                bind_dn=server.admin_dn,
                bind_password=SecretRef(env="UNUSED"),
                allow_cleartext_bind=True,
                user_base_dn=PEOPLE,
                group_base_dn=GROUPS,
                disabled_filter="(employeeType=disabled)",
                page_size=PAGE_SIZE,
                connect_timeout_seconds=5,
                receive_timeout_seconds=10,
                **overrides,
            )

        def open_source(url: str = server.url) -> LdapSource:
            return LdapSource(config(url), server.admin_password)

        def set_given_name(login: str, given: str) -> None:
            conn = Connection(
                Server(server.url), server.admin_dn, server.admin_password, auto_bind=True
            )
            assert conn.modify(_user_dn(login), {"givenName": [(MODIFY_REPLACE, [given])]})
            conn.unbind()

        env = SourceEnv(
            name="openldap",
            fields={"login": "uid", "email": "mail", "given": "givenName", "family": "sn"},
            open_source=open_source,
            failing_read=lambda share: read_cut_short(
                ("127.0.0.1", server.port),
                lambda port: open_source(f"ldap://127.0.0.1:{port}"),
                env.attributes,
                share,
            ),
            set_given_name=set_given_name,
        )
        yield env
