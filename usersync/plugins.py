"""Classes named as "module:Class" strings, imported on first use.

Sources, targets and sandbox emulators are registered by kind in tables of such strings, so a
run imports only the products and sources its profile uses.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from usersync.errors import ConfigError


def load_class(registry: Mapping[str, str], kind: str, *, what: str) -> Any:
    """The class registered for `kind`.

    Args:
        registry: kind → "module:Class".
        kind: the kind a profile names.
        what: how messages name the setting, e.g. "target 'jira'".

    Raises:
        ConfigError: no such kind; the message lists the known ones.
    """
    location = registry.get(kind)
    if location is None:
        raise ConfigError(f"{what}: unknown kind '{kind}' (known: {', '.join(registry)})")
    module_name, _, class_name = location.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
