"""The target products usersync writes into, and `open_target`, which builds one from a profile.

Each product lives in its own module (`jira`, `confluence`, `bitbucket`) with a `Target`
subclass offering `from_config(name, config, *, load_prefect_secret=None)`. The registry maps a
profile's `kind` to that class as a "module:Class" string, imported only when a profile uses
it, so a product's dependencies and import cost stay out of runs that do not need them.
"""

from __future__ import annotations

from usersync.config import SecretLoader, TargetConfig
from usersync.http import pace_instance
from usersync.plugins import load_class
from usersync.targets.base import Target, TargetCheck

#: product kind (as profiles spell it) → "module:Class" of its client.
TARGET_CLASSES: dict[str, str] = {
    "jira": "usersync.targets.jira:JiraTarget",
    "confluence": "usersync.targets.confluence:ConfluenceTarget",
    "bitbucket": "usersync.targets.bitbucket:BitbucketTarget",
}


def open_target(
    name: str, config: TargetConfig, *, load_prefect_secret: SecretLoader | None = None
) -> Target:
    """The client for profile target `name`, with its secret resolved.

    Args:
        name: the target's name in the profile.
        config: its settings from profile.yaml.
        load_prefect_secret: reads a Prefect Secret block by name (the engine has no Prefect).

    Raises:
        ConfigError: unknown kind, or a secret that cannot be resolved.
    """
    cls = load_class(TARGET_CLASSES, config.kind, what=f"target '{name}'")
    # The profile's pace is the instance's, shared by every client of it in the process.
    pace_instance(
        str(config.url),
        max_in_flight=config.max_in_flight,
        requests_per_second=config.requests_per_second,
    )
    return cls.from_config(name, config, load_prefect_secret=load_prefect_secret)


__all__ = ["TARGET_CLASSES", "Target", "TargetCheck", "open_target"]
