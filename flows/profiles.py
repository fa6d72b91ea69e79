"""The `sync` flow as each profile's deployment offers it: entrypoint `flows/profiles.py:<profile>`.

Prefect builds a deployment's run form from its entrypoint's signature when `prefect deploy`
runs, and `flows/sync.py:sync` cannot know which targets a profile has. So a sync deployment
names its profile in its entrypoint, and this module answers with the very same `sync` flow
(name, run names, behaviour) whose Targets field is a choice among that profile's targets
(read from its profile.yaml when the entrypoint is loaded: by `prefect deploy`, and by the
worker when a run starts). `prefect deploy` alone thus gives the complete form; after adding a
target to a profile, deploy again.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Annotated, Literal

from prefect import Flow
from pydantic import WithJsonSchema
from usersync_flows.sync import SYNC_FLOW_OPTIONS, sync

from usersync import load_profile


@cache
def sync_for(profile: str) -> Flow:
    """`sync`, with `targets` a choice among `profile`'s targets.

    Raises:
        ConfigError: the profile does not load here (unknown, or an invalid profile.yaml).
    """
    names = tuple(load_profile(profile).targets)
    # A choice of one is still a list to choose from (pydantic would write it as a "const").
    choice = Annotated[
        Literal[names],  # type: ignore[valid-type] - built from the profile
        WithJsonSchema({"type": "string", "enum": list(names)}),
    ]
    signature = inspect.signature(sync.fn, eval_str=True)
    parameters = [
        p.replace(annotation=list[choice] | None) if p.name == "targets" else p  # type: ignore[valid-type]
        for p in signature.parameters.values()
    ]

    def sync_profile(**parameters):  # the signature below is what Prefect reads
        return sync.fn(**parameters)

    sync_profile.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    sync_profile.__annotations__ = {p.name: p.annotation for p in parameters}
    sync_profile.__doc__ = sync.fn.__doc__
    sync_profile.__module__ = sync.fn.__module__
    return Flow(sync_profile, **SYNC_FLOW_OPTIONS)


def __getattr__(name: str) -> Flow:
    """`usersync_flows.profiles.<profile>` (what Prefect's entrypoint loader asks for)."""
    if name.startswith("__"):
        raise AttributeError(name)
    return sync_for(name)
