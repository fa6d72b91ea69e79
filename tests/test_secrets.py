"""Secrets travel wrapped from the profile to the call that sends them (issue 25 point 6)."""

from __future__ import annotations

import pytest

from usersync.config import LdapSourceConfig, SecretRef, resolve_secret, reveal
from usersync.sources.ldap import LdapSource

SECRET = "hunter2-correct-horse"


def test_a_resolved_secret_never_shows_but_reveals_its_value(monkeypatch) -> None:
    monkeypatch.setenv("BIND_PW", SECRET)
    secret = resolve_secret(SecretRef(env="BIND_PW"))
    assert SECRET not in repr(secret) and SECRET not in str(secret) and SECRET not in f"{secret}"
    assert reveal(secret) == SECRET
    assert SECRET not in repr(
        resolve_secret(SecretRef(prefect_secret="blk"), load_prefect_secret=lambda _: SECRET)
    )


def test_a_source_holds_its_password_wrapped(monkeypatch) -> None:
    monkeypatch.setenv("BIND_PW", SECRET)
    config = LdapSourceConfig.model_validate(
        {
            "kind": "ldap",
            "url": "ldap://127.0.0.1:1",
            "bind_dn": "cn=sync,dc=corp",
            "bind_password": {"env": "BIND_PW"},
            "user_base_dn": "ou=people,dc=corp",
            "group_base_dn": "ou=groups,dc=corp",
            "allow_cleartext_bind": True,
        }
    )
    with LdapSource.from_config(config) as source:
        assert SECRET not in repr(vars(source))


@pytest.mark.parametrize("value", ["", None])
def test_an_empty_secret_is_still_refused(monkeypatch, value) -> None:
    if value is None:
        monkeypatch.delenv("BIND_PW", raising=False)
    else:
        monkeypatch.setenv("BIND_PW", value)
    from usersync.errors import ConfigError

    with pytest.raises(ConfigError, match="BIND_PW"):
        resolve_secret(SecretRef(env="BIND_PW"))
