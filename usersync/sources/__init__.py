"""Identity sources, and `open_source`, which builds the one a profile's `source:` names.

Each source kind lives in its own module with a `Source` subclass offering
`from_config(config, *, load_prefect_secret=None)`. The registry maps a profile's `kind` to
that class as a "module:Class" string, imported only when a profile uses it.
"""

from __future__ import annotations

from usersync.config import SecretLoader, SourceConfig
from usersync.plugins import load_class
from usersync.sources.base import Source, SourceCheck

__all__ = ["SOURCE_CLASSES", "Source", "SourceCheck", "open_source"]

#: source kind (as profiles spell it) → "module:Class" of its reader.
SOURCE_CLASSES: dict[str, str] = {
    "ldap": "usersync.sources.ldap:LdapSource",
    "scim": "usersync.sources.scim:ScimSource",
    "miniorange-push": "usersync.sources.miniorange_push:MiniorangePushSource",
    "miniorange": "usersync.sources.miniorange:MiniorangeSource",
}


def open_source(config: SourceConfig, *, load_prefect_secret: SecretLoader | None = None) -> Source:
    """The source client for a profile's `source:` section, with its secret resolved.

    Raises:
        ConfigError: unknown kind, or a secret that cannot be resolved.
    """
    cls = load_class(SOURCE_CLASSES, config.kind, what="source")
    return cls.from_config(config, load_prefect_secret=load_prefect_secret)
