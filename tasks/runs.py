"""This flow run as Prefect knows it: its name, tags, deployment, the profile it is bound to,
its kind (delta or reconcile, scoped or not), its turn at the profile's lease, how it ends braked.

A deployment is bound to the profile its own parameters name: a run of it that asks for another
profile is refused before anything is read, and a deployment tagged `dry-run` makes dry runs
only. Runs outside a deployment (the CLI, the demo, a subflow) are not bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.runtime import deployment as this_deployment
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from pydantic.fields import FieldInfo

from usersync import (
    RUN_MODES,
    ConfigError,
    LoadedProfile,
    Store,
    UsersyncError,
    default_lease_holder,
    instance_of,
    profile_lease,
    queue_for_turn,
    renewed_lease,
)

#: The tag of a dry run's flow run.
DRY_RUN_TAG = "dry-run"


@dataclass(frozen=True)
class RunKind:
    """A reconcile run (everything read) or a delta run (what changed: `usersync.delta`), and
    the identities a scoped delta run is for (None: every one)."""

    mode: str
    only: tuple[str, ...] | None = None


def run_kind(mode: str, only: list[str] | None) -> RunKind:
    """The run's kind from its `mode` and `only` parameters.

    Raises:
        ConfigError: an unknown mode, or `only` with a reconcile run (which reads everything).
    """
    # A caller of the flow's function itself (flows/profiles.py wraps it for each profile's
    # deployment) gets the run form's Field objects as defaults: take their values.
    mode = getattr(mode, "default", mode) if isinstance(mode, FieldInfo) else mode
    only = getattr(only, "default", only) if isinstance(only, FieldInfo) else only
    if mode not in RUN_MODES:
        raise ConfigError(f"mode {mode!r}: unknown run kind (known: {', '.join(RUN_MODES)})")
    if only is not None and mode != "delta":
        raise ConfigError(
            "only: a reconcile run reads and plans everything; give mode=delta to scope a run "
            "to some identities"
        )
    return RunKind(mode, None if only is None else tuple(dict.fromkeys(only)))


def braked_state(exc: UsersyncError, message: str) -> State:
    """The end of a run a guard stopped: Failed (nothing was synced), named Braked; called
    directly (`usersync sync`), the flow raises `exc`."""
    get_run_logger().error("braked: %s", message)
    return Failed(name="Braked", message=message, data=exc)


def run_name() -> str:
    """sync-<profile>[-dry-run]; a run its deployment refuses is named after the deployment's
    profile (sync-<bound>-refused), where the admin looks for that deployment's runs."""
    parameters = flow_run.parameters
    bound = None
    if this_deployment.id:  # the deployment's own parameters, not this run's
        with get_client(sync_client=True) as client:
            bound = (client.read_deployment(UUID(this_deployment.id)).parameters or {}).get(
                "profile"
            )
    if bound and bound != parameters["profile"]:
        return f"sync-{bound}-refused"
    return f"sync-{parameters['profile']}" + ("-dry-run" if parameters.get("dry_run") else "")


def deployment_id() -> UUID | None:
    context = FlowRunContext.get()
    return context.flow_run.deployment_id if context and context.flow_run else None


def run_id() -> str:
    return str(flow_run.get_id() or "")


def lease_holder() -> str:
    """Who holds a profile's lease: this flow run, else this process."""
    run = flow_run.get_id()
    return f"flow run {flow_run.get_name()} ({run})" if run else default_lease_holder()


def refuse_a_profile_the_deployment_is_not_for(profile: str, dry_run: bool) -> None:
    """A deployment syncs the profile its own parameters name, and no other.

    Its schedule, alerts and tags are that profile's; a UI or API run that asks for another
    profile is refused before anything is read. A deployment tagged `dry-run` (its runs carry
    the tag from the moment they are created) makes dry runs only.

    Raises:
        ConfigError: this run's profile is not the deployment's, or a dry-run deployment was
            asked for a real run.
    """
    deployment = deployment_id()
    if deployment is None:
        return
    with get_client(sync_client=True) as client:
        found = client.read_deployment(deployment)
    bound = (found.parameters or {}).get("profile")
    if bound is not None and bound != profile:
        raise ConfigError(
            f"deployment '{found.name}' syncs profile '{bound}' only; this run asked for "
            f"profile '{profile}' and stops before reading or writing anything. Run the "
            f"deployment of profile '{profile}' instead (or `usersync sync {profile}`)."
        )
    if DRY_RUN_TAG in (found.tags or []) and not dry_run:
        raise ConfigError(
            f"deployment '{found.name}' makes dry runs only (tag {DRY_RUN_TAG}); this run "
            "asked for a real one and stops before reading or writing anything. Run the "
            f"deployment '{bound or profile}' for a real sync."
        )


def tag_this_run(tag: str) -> None:
    """Add `tag` to this flow run's tags (deployment runs get theirs before the flow starts)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    run = context.flow_run
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, tags=sorted({*run.tags, tag}))


@contextmanager
def profile_turn(
    store: Store, profile: str, holder: str, wait_seconds: float
) -> Iterator[State | None]:
    """Hold the profile's lease for the block, renewed all along (through an approval pause).

    Outside a deployment (`usersync sync`, the demo) a busy profile stops the run at once, or
    after `wait_seconds` (ProfileBusyError). A deployment run queues (`queue_for_turn`); one
    that finds another already queued ends Skipped (a Completed state). Yields None once the
    lease is held, or the Skipped state (nothing held, nothing read).
    """
    if deployment_id() is None:
        with (
            profile_lease(store, profile, holder, wait_seconds=wait_seconds),
            renewed_lease(store, profile, holder),
        ):
            yield None
        return
    skipped = queue_for_turn(store, profile, holder)
    if skipped is not None:
        get_run_logger().info("skipped: %s", skipped)
        yield Completed(name="Skipped", message=f"Skipped: {skipped}")
        return
    try:
        with renewed_lease(store, profile, holder):
            yield None
    finally:
        store.release_lease(profile, holder)


def target_tags(loaded: LoadedProfile, name: str) -> list[str]:
    """The tags of a target's task runs: its name, and the instance it writes to (host and
    port as `config.instance_of` normalises them)."""
    instance = urlsplit(instance_of(loaded.profile.targets[name].url))
    return [f"target:{name}", f"instance:{instance.netloc}"]
