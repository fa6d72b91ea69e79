"""Resolve secrets named in a profile from Prefect Secret blocks, at run time.

Flows pass `load_prefect_secret` to the engine; the CLI passes `load_prefect_secret_if_configured`,
which needs a Prefect API (`PREFECT_API_URL`) and says so when there is none, rather than
looking in an empty ephemeral server.
"""

from __future__ import annotations

from prefect.blocks.system import Secret
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings

from usersync import ConfigError


def load_prefect_secret(name: str) -> str:
    """The value of the Prefect Secret block `name` (never logged, never a flow parameter).

    Raises:
        ConfigError: no Secret block of that name on the configured Prefect API.
    """
    try:
        value = Secret.load(name).get()
    except ValueError as exc:
        # Prefect raises ValueError("Unable to find block document ...") from ObjectNotFound.
        if not isinstance(exc.__cause__, ObjectNotFound):
            raise
        raise ConfigError(
            f"Prefect Secret block '{name}' not found on {get_current_settings().api.url}: "
            f"create it (UI: Blocks → Secret, or `Secret(value=...).save('{name}')`)"
        ) from None
    return str(value)


def load_prefect_secret_if_configured(name: str) -> str:
    """`load_prefect_secret` when a Prefect API is configured, else a clear ConfigError."""
    if not get_current_settings().api.url:
        raise ConfigError(
            f"secret '{name}' is a Prefect Secret block: set PREFECT_API_URL to the Prefect "
            "server that holds it (or name an environment variable in the profile instead)"
        )
    return load_prefect_secret(name)
