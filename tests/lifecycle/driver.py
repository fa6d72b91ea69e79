"""Run one sync the way flows/sync.py does, without Prefect (which costs seconds per run).

`run_sync` calls the engine's steps in the order `flows.sync._sync_target` does: load, extract
once, then per target transform, open the client, plan (guards run here), record the plan,
load, finish the run. When the engine's step functions change, this is the one place to adjust.
`KillingStore` stands in for a process killed in the middle of a load: it lets the store record
the outcomes of the phase that reached the limit, then raises before the ledger learns of them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import pandas as pd

from usersync import sync
from usersync.errors import UsersyncError
from usersync.store import Store

#: The keyword that releases the brake for one run (renamed in the engine at some point).
_PLAN_PARAMETERS = inspect.signature(sync.plan_target_sync).parameters
RELEASE_KEYWORD = next(
    name for name in ("allow_mass_changes", "allow_mass_deactivation") if name in _PLAN_PARAMETERS
)


class LoadKilled(Exception):
    """The sync process died in the middle of a load (simulated)."""


@dataclass
class TargetRun:
    status: str  # succeeded | partial | failed | killed
    plan: pd.DataFrame | None = None
    error: BaseException | None = None
    #: how the run read the product: "reconcile" or "delta" (None: it never planned)
    mode: str | None = None
    #: why a run asked for as a delta run reconciled instead
    mode_reason: str | None = None


class KillingStore:
    """A store that dies after `after` executed operations, before the ledger remembers them."""

    def __init__(self, store: Store, after: int) -> None:
        self._store = store
        self._left = after
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def record_outcomes(self, run_id: int, outcomes: Any) -> None:
        outcomes = list(outcomes)
        self._store.record_outcomes(run_id, outcomes)
        self._left -= len(outcomes)

    def remember(self, *args: Any, **kwargs: Any) -> None:
        if self._left <= 0:
            self.fired = True
            raise LoadKilled("the sync process was killed in the middle of the load")
        self._store.remember(*args, **kwargs)


def run_sync(
    profile: str,
    store: Store,
    *,
    release_brake: bool = False,
    kill: dict[str, int] | None = None,
    mode: str = "reconcile",
) -> dict[str, TargetRun]:
    """Sync every target of `profile`; each target fails alone, as in the flow.

    Args:
        profile: the profile's folder name under $USERSYNC_MAPPINGS_DIR.
        store: the store (runs, audit trail, ledger).
        release_brake: release the brake for this run.
        kill: target → kill the load after this many executed operations.
        mode: "reconcile" (read everything) or "delta" (read what changed: `usersync.delta`).

    Raises:
        GuardError, SourceError: from extract (no target is touched). Anything that is not a
        `UsersyncError` propagates: in a test it is a finding, not an expected failure.
    """
    loaded = sync.prepare_profile(profile)
    snapshot = sync.extract(loaded, store=store)
    runs: dict[str, TargetRun] = {}
    for name in loaded.profile.targets:
        run_id = store.start_run(profile, name, dry_run=False)
        writer: Any = store
        if kill and name in kill:
            writer = KillingStore(store, kill[name])
        try:
            desired = sync.transform(loaded, snapshot, name)
            with sync.open_target_for(loaded, name) as client:
                target_plan = sync.plan_target_sync(
                    loaded,
                    name,
                    client,
                    desired,
                    store,
                    mode=mode,
                    **{RELEASE_KEYWORD: release_brake},
                )
                store.record_plan(run_id, target_plan.plan)
                result = sync.load_target_sync(loaded, client, target_plan, writer, run_id)
        except LoadKilled as exc:
            runs[name] = TargetRun("killed", error=exc)  # a dead process finishes no run
            continue
        except UsersyncError as exc:
            store.finish_run(run_id, "failed", {}, str(exc))
            runs[name] = TargetRun("failed", error=exc)
            continue
        store.finish_run(run_id, result.status, {"executed": result.counts()}, result.quarantined)
        runs[name] = TargetRun(
            result.status,
            plan=target_plan.plan,
            mode=target_plan.mode,
            mode_reason=target_plan.mode_reason,
        )
    return runs
