"""Resolve secrets named in a profile from Prefect Secret blocks, at run time."""

from __future__ import annotations

from prefect.blocks.system import Secret


def load_prefect_secret(name: str) -> str:
    """The value of the Prefect Secret block `name` (never logged, never a flow parameter)."""
    value = Secret.load(name).get()
    return str(value)
