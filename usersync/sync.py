"""The steps of one sync, callable without Prefect: extract, transform, plan, load.

The Prefect tasks in `tasks/` are thin wrappers around these functions; tests and the CLI can
call them directly. Each step takes plain values (profile, tables, frames) and returns plain
values, so a step can be re-run or inspected alone. Guards run before any write: an empty or
too small source stops `extract`, a mass deactivation stops `plan_target_sync`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from usersync.config import Profile, SecretLoader, load_profile, profile_dir
from usersync.errors import GuardError
from usersync.load import LoadResult, Outcome, execute_plan
from usersync.mapping import MappingTables, desired_state, load_tables
from usersync.model import DesiredState, SourceSnapshot, TargetState
from usersync.plan import PlanInput, check_deactivation_brake, plan_target
from usersync.sources import open_source
from usersync.sources.watermark import extract_with_watermark, incremental_enabled
from usersync.store import Store
from usersync.targets import open_target
from usersync.targets.base import Target

log = logging.getLogger("usersync.sync")


@dataclass(frozen=True)
class LoadedProfile:
    """A validated profile and its validated tables."""

    profile: Profile
    tables: MappingTables


def load(profile_name: str) -> LoadedProfile:
    """Read and validate `mappings/<profile_name>/` entirely (profile.yaml and both tables).

    Raises:
        ConfigError: anything invalid, with file and line.
    """
    profile = load_profile(profile_name)
    tables = load_tables(profile_dir(profile_name), target_names=profile.targets)
    return LoadedProfile(profile, tables)


def select_targets(profile: Profile, wanted: list[str] | None) -> list[str]:
    """The profile's targets to sync: all, or the named ones (unknown names are an error)."""
    from usersync.errors import ConfigError

    if not wanted:
        return list(profile.targets)
    unknown = [name for name in wanted if name not in profile.targets]
    if unknown:
        raise ConfigError(
            f"profile {profile.name} has no target(s) {', '.join(unknown)} "
            f"(it has: {', '.join(profile.targets)})"
        )
    return list(dict.fromkeys(wanted))


def extract(
    loaded: LoadedProfile,
    *,
    load_prefect_secret: SecretLoader | None = None,
    store: Store | None = None,
    full: bool = False,
) -> SourceSnapshot:
    """Read the complete source snapshot and apply the source guards.

    With a store and an incremental source (AD, `incremental.enabled`), only the changes since
    the last successful run are read and merged into its snapshot, unless a full read is due
    or `full` asks for one; `sources.watermark.save_checkpoint` advances it after success.

    Raises:
        SourceError: unreachable, refused credentials, or a possibly incomplete read.
        GuardError: fewer users than `settings.min_source_users` (an empty source never
            deprovisions anyone).
    """
    with open_source(loaded.profile.source, load_prefect_secret=load_prefect_secret) as source:
        attributes = loaded.tables.source_attributes()
        if store is not None and incremental_enabled(loaded.profile.source):
            snapshot = extract_with_watermark(
                source, loaded.profile.name, attributes, store, full=full
            )
        else:
            snapshot = source.extract(attributes)
    minimum = loaded.profile.settings.min_source_users
    if len(snapshot.users) < minimum:
        raise GuardError(
            f"the source returned {len(snapshot.users)} user(s), fewer than min_source_users="
            f"{minimum}; the run stops before any write. Check the base DN and the user filter."
        )
    return snapshot


def transform(loaded: LoadedProfile, snapshot: SourceSnapshot, target: str) -> DesiredState:
    """Apply the mapping tables for one target."""
    return desired_state(snapshot, loaded.tables, target)


def protected_usernames(profile: Profile, target: str) -> tuple[str, ...]:
    """Accounts never touched in `target`: the configured list and the target's own account."""
    names = list(profile.settings.protected_usernames)
    auth = profile.targets[target].auth
    if auth.kind == "basic":
        names.append(auth.username)
    return tuple(names)


@dataclass
class TargetPlan:
    """The plan for one target with what it was computed from."""

    target: str
    plan: pd.DataFrame
    desired: DesiredState
    actual: TargetState
    ledger: pd.DataFrame

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.plan["op"].value_counts().items()}


def plan_target_sync(
    loaded: LoadedProfile,
    target_name: str,
    target: Target,
    desired: DesiredState,
    store: Store,
    *,
    allow_mass_deactivation: bool = False,
) -> TargetPlan:
    """Read the target's current state for the users and groups concerned, then plan.

    Raises:
        TargetError: reading the target failed.
        GuardError: the plan trips the deactivation brake.
    """
    profile = loaded.profile
    ledger = store.ledger(profile.name, target_name)
    usernames = pd.concat(
        [desired.users["username"], ledger.loc[ledger["kind"] == "user", "name"]],
        ignore_index=True,
    ).dropna()
    usernames = list(dict.fromkeys(usernames.str.casefold()))
    groups = list(dict.fromkeys(desired.groups["group"].dropna()))
    actual = target.read_state(usernames, groups)
    plan = plan_target(
        PlanInput(
            target=target_name,
            desired=desired,
            actual=actual,
            ledger=ledger,
            settings=profile.settings,
            protected=protected_usernames(profile, target_name),
        )
    )
    if not allow_mass_deactivation:
        check_deactivation_brake(plan, ledger, profile.settings, target_name)
    return TargetPlan(target_name, plan, desired, actual, ledger)


@dataclass
class TargetOutcome:
    """What a sync did to one target (also what the summary shows)."""

    target: str
    status: str  # planned | succeeded | partial | failed
    planned: dict[str, int] = field(default_factory=dict)
    executed: dict[str, dict[str, int]] = field(default_factory=dict)
    rejected: int = 0
    error: str | None = None
    run_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": self.status,
            "planned": self.planned,
            "executed": self.executed,
            "rejected": self.rejected,
            "error": self.error,
            "run_id": self.run_id,
        }


def load_target_sync(
    loaded: LoadedProfile,
    target: Target,
    target_plan: TargetPlan,
    store: Store,
    run_id: int,
    *,
    max_workers: int = 4,
) -> LoadResult:
    """Execute a plan, recording each outcome and the ledger changes as each phase finishes."""
    profile = loaded.profile.name

    def record(outcomes: list[Outcome]) -> None:
        store.record_outcomes(run_id, [(o.seq, o.status, o.error) for o in outcomes])
        store.remember(
            profile, target_plan.target, [o.ledger for o in outcomes if o.ledger is not None]
        )

    return execute_plan(target, target_plan.plan, max_workers=max_workers, on_outcomes=record)


def open_target_for(
    loaded: LoadedProfile, target_name: str, *, load_prefect_secret: SecretLoader | None = None
) -> Target:
    """The client of one of the profile's targets, with its secret resolved."""
    return open_target(
        target_name,
        loaded.profile.targets[target_name],
        load_prefect_secret=load_prefect_secret,
    )
