"""Identity sources: open the one a profile names."""

from __future__ import annotations

from usersync.config import SecretLoader, SourceConfig
from usersync.sources.base import Source, SourceCheck

__all__ = ["Source", "SourceCheck", "open_source"]


def open_source(config: SourceConfig, *, load_prefect_secret: SecretLoader | None = None) -> Source:
    """The source client for a profile's `source:` section, with its secret resolved."""
    if config.kind == "ldap":
        from usersync.sources.ldap import LdapSource

        return LdapSource.from_config(config, load_prefect_secret=load_prefect_secret)
    raise NotImplementedError(f"source kind {config.kind!r}")  # pragma: no cover - schema-checked
