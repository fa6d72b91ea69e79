"""The `sync` flow: one profile (one IdP), its targets, optionally a dry run.

What a deployment, a UI run or `usersync sync` starts. It only wires tasks and engine steps:
validate the profile, extract once, then every target at once, each in a thread of its own
running transform → plan → (load) as tasks tagged `target:<name>` and `instance:<host[:port]>`,
then report. A target that fails (unreachable, refused credentials, a guard, a failed or
partial load) fails alone: the others complete, and the run ends Failed with every target's
outcome in the summary artifact and the store. The guards are the engine's
(`usersync.guards`); a target they stop emits `usersync.sync.braked` (tasks/report.py). A run
reconciles (reads everything) or, `mode="delta"`, reads what changed (`usersync.delta`,
nothing when the source's mark has not moved); `only` scopes it (an offboarding): a source that
reads identities by key (the inbox) is then read for them alone, and a target whose plan from
that read cannot stand (`usersync.WholeSourceNeeded`) is planned again from the whole source.

One run of a profile at a time: the profile's lease (`usersync.lease`, `runs.profile_turn`),
held through an approval pause; a deployment run finding it busy queues, or ends Skipped when
one already does (not Prefect's deployment concurrency limit: Prefect frees it when a run
pauses, then cancels it). Each target's client is opened, its secret resolved, once per run
(`RunTargets`). Parameters carry names only, never secrets.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

from prefect import flow, get_run_logger, tags
from prefect.states import Failed, State
from pydantic import Field
from usersync_flows.parameters import SYNC_FORM, ProfileName, RunMode, TargetName
from usersync_tasks import approval, report, runs, steps
from usersync_tasks.instances import instance_slot
from usersync_tasks.run_logs import engine_logs_in_run_log
from usersync_tasks.secrets import load_prefect_secret

from usersync import (
    BRAKED,
    GuardError,
    LoadedProfile,
    RunTargets,
    SourceSnapshot,
    Store,
    TargetOutcome,
    UsersyncError,
    WholeSourceNeeded,
    brake_verdict,
    drift_of,
    record_outcome,
    run_ending,
    select_targets,
    summary_text,
)


class _Hold:
    """A braked plan waits for an approval (rather than failing the target)."""


HOLD = _Hold()
#: How a target treats a braked plan: None (fail), HOLD (wait), or the approved signature.
Hold = _Hold | frozenset | None


class SyncFailed(UsersyncError):
    """At least one target failed or had failed operations."""


class SyncBraked(SyncFailed):
    """A guard stopped the run or some targets before any write, and nothing else failed: the
    run ends Failed in a state named Braked (its event is `prefect.flow-run.Braked`, so the
    "sync failed" alert stays quiet; the one notification is `usersync.sync.braked`'s)."""


#: How the `sync` flow is made (flows/profiles.py makes each profile's the same way).
SYNC_FLOW_OPTIONS = {"name": "sync", "flow_run_name": runs.run_name, "validate_parameters": True}


@flow(**SYNC_FLOW_OPTIONS)
def sync(
    profile: ProfileName = SYNC_FORM["profile"],
    targets: list[TargetName] | None = SYNC_FORM["targets"],
    dry_run: bool = SYNC_FORM["dry_run"],
    allow_mass_changes: bool = SYNC_FORM["allow_mass_changes"],
    full: bool = SYNC_FORM["full"],
    wait_seconds: Annotated[float, Field(ge=0, le=86400)] = SYNC_FORM["wait_seconds"],
    mode: RunMode = SYNC_FORM["mode"],
    only: list[str] | None = SYNC_FORM["only"],
) -> list[dict] | State:
    """Sync one profile's source into its targets (the parameters are the run form)."""
    with engine_logs_in_run_log():
        try:
            kind = runs.run_kind(mode, only)
            return _sync(profile, targets, dry_run, allow_mass_changes, full, wait_seconds, kind)
        except UsersyncError as exc:
            # Errors usersync expects say what is wrong and what to do: one line, no
            # traceback (a refused lease, a bad profile, an unreachable source). Called
            # directly (`usersync sync`), the flow raises `exc`.
            get_run_logger().error("%s", exc)
            return Failed(message=str(exc), data=exc)


def _sync(
    profile: str,
    targets: list[str] | None,
    dry_run: bool,
    allow_mass_changes: bool,
    full: bool,
    wait_seconds: float,
    kind: runs.RunKind,
) -> list[dict] | State:
    runs.refuse_a_profile_the_deployment_is_not_for(profile, dry_run)
    if dry_run:
        runs.tag_this_run(runs.DRY_RUN_TAG)
    loaded = steps.load_profile(profile)
    chosen = select_targets(loaded.profile, targets)
    store = Store.open()
    holder = runs.lease_holder()
    try:
        with runs.profile_turn(store, profile, holder, wait_seconds) as skipped:
            if skipped is not None:
                return skipped
            try:
                snapshot, outcomes = _sync_profile(
                    loaded, chosen, store, dry_run, allow_mass_changes, full, holder, kind
                )
            except GuardError as exc:  # the source guard: nothing was planned anywhere
                report.announce_brake(profile, [{"target": None, "reason": str(exc)}], dry_run)
                return runs.braked_state(exc, f"source: {exc}")
    finally:
        store.close()
    report.publish_summary(profile, outcomes, dry_run, snapshot.counts)
    report.publish_drift(profile, outcomes)
    get_run_logger().info("summary:\n%s", summary_text(outcomes))
    ending = run_ending(outcomes, dry_run=dry_run)
    if ending.announce:  # one notification per run, none after a person rejected the plan
        report.announce_brake(profile, ending.braked, dry_run)
    if ending.message and ending.braked_only:
        return runs.braked_state(SyncBraked(ending.message), ending.message)
    if ending.message:
        raise SyncFailed(ending.message)
    return [o.as_dict() for o in outcomes]


class _WholeSource:
    """The whole source, read at most once in a run, for the targets whose plan from a scoped
    read cannot stand."""

    def __init__(self, loaded: LoadedProfile, full: bool) -> None:
        self._loaded, self._full = loaded, full
        self._lock = threading.Lock()
        self._snapshot: SourceSnapshot | None = None

    def __call__(self) -> SourceSnapshot:
        with self._lock:
            if self._snapshot is None:
                self._snapshot = steps.extract(self._loaded, self._full)
            return self._snapshot


@dataclass(frozen=True)
class _Run:
    """What every target of one run shares."""

    loaded: LoadedProfile
    clients: RunTargets
    store: Store
    dry_run: bool
    allow_mass_changes: bool
    holder: str
    kind: runs.RunKind
    whole_source: Callable[[], SourceSnapshot]


def _sync_profile(
    loaded: LoadedProfile,
    chosen: list[str],
    store: Store,
    dry_run: bool,
    allow_mass_changes: bool,
    full: bool,
    holder: str,
    kind: runs.RunKind,
) -> tuple[SourceSnapshot, list[TargetOutcome]]:
    """Extract once, then every target at once, each renewing the profile's lease as it goes.

    A braked target waits for an approval where someone can be asked; the others load. An
    approved target is planned again from a fresh read and loads only if its destructive
    operations are the approved ones; otherwise the new plan is put to the approver."""
    profile = loaded.profile.name
    if (quiet := steps.unchanged(loaded, chosen, dry_run, kind)) is not None:
        return quiet  # a delta run, and the source says nothing changed: nothing to read
    whole = _WholeSource(loaded, full)
    try:
        scoped = None if kind.only is None else steps.extract_scoped(loaded, list(kind.only))
        snapshot = whole() if scoped is None else scoped
    except Exception as exc:
        # The audit trail shows the attempt for every target, with the reason nothing ran.
        status = BRAKED if isinstance(exc, GuardError) else "failed"
        for name in chosen:
            run_id = store.start_run(profile, name, dry_run=dry_run, flow_run_id=runs.run_id())
            store.finish_run(run_id, status, {}, f"source: {exc}")
        raise
    settings = loaded.profile.settings
    ask = not dry_run and not allow_mass_changes and settings.approval == "ask"
    hold: Hold = HOLD if ask and approval.channel() is not None else None
    with RunTargets(loaded, load_prefect_secret=load_prefect_secret) as clients:
        run = _Run(loaded, clients, store, dry_run, allow_mass_changes, holder, kind, whole)
        outcomes = _each_target(chosen, lambda name: _sync_target(run, name, snapshot, hold))
        done = {o.target: o for o in outcomes}
        round_no = 0
        while waiting := [o for o in done.values() if o.status == BRAKED and o.braked]:
            round_no += 1
            decision = approval.ask(
                profile,
                [o.braked for o in waiting],
                timeout_seconds=settings.approval_timeout_seconds,
                round_no=round_no,
            )
            for o in waiting:
                o.took_decision(decision.as_dict())
                record_outcome(store, o, snapshot)  # the braked run keeps the decision
            if not decision.approved:
                break
            get_run_logger().info("approved by %s: reading the source again", decision.by)
            snapshot = steps.extract(loaded, full)
            approved = {o.target: o.signature for o in waiting}
            decided = decision.as_dict()
            for o in _each_target(
                list(approved),
                lambda name, fresh=snapshot, approved=approved, decided=decided: _sync_target(
                    run, name, fresh, approved[name], decided
                ),
            ):
                done[o.target] = o
    outcomes = [done[name] for name in chosen]
    # An incremental source moves its watermark only when every target succeeded.
    steps.advance_watermark(snapshot, [o.status for o in outcomes], dry_run)
    return snapshot, outcomes


def _each_target(names: list[str], work: Callable[[str], TargetOutcome]) -> list[TargetOutcome]:
    """`work` for every target at once, each in a thread in a copy of this run's context."""
    with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="sync-target") as pool:
        futures = [pool.submit(contextvars.copy_context().run, work, name) for name in names]
        return [future.result() for future in futures]


def _sync_target(
    run: _Run, name: str, snapshot: SourceSnapshot, hold: Hold, decided: dict | None = None
) -> TargetOutcome:
    """Plan and load one target; any error fails this target only.

    `hold`: None, a braked plan fails the target; HOLD, it waits for an approval (status
    braked); a signature, the destructive operations approved (a plan with others waits).
    """
    logger = get_run_logger()
    run.store.renew_lease(run.loaded.profile.name, run.holder)
    run_id = run.store.start_run(
        run.loaded.profile.name, name, dry_run=run.dry_run, flow_run_id=runs.run_id()
    )
    outcome = TargetOutcome(target=name, status="failed", run_id=run_id, approval=decided)
    url = run.loaded.profile.targets[name].url
    try:
        with (
            tags(*runs.target_tags(run.loaded, name)),
            instance_slot(url, name, write=not run.dry_run),
        ):
            _plan_and_load(run, name, snapshot, outcome, hold)
    except GuardError as exc:
        logger.error("%s: %s", name, exc)
        outcome.error, outcome.status = str(exc), BRAKED
    except UsersyncError as exc:
        logger.error("%s: %s", name, exc)
        outcome.error, outcome.status = str(exc), "failed"
    except Exception as exc:
        # Not an error usersync expects (a bug, an odd answer): still this target's alone.
        logger.exception("%s: unexpected error", name)
        outcome.error, outcome.status = f"unexpected {type(exc).__name__}: {exc}", "failed"
    record_outcome(run.store, outcome, snapshot)
    return outcome


def _plan_and_load(
    run: _Run, name: str, snapshot: SourceSnapshot, outcome: TargetOutcome, hold: Hold
) -> None:
    """Transform, plan, publish the plan and (unless a dry run) load; fill in `outcome`."""
    loaded, store, dry_run = run.loaded, run.store, run.dry_run
    # Where a braked plan may wait for an approval, and in a dry run (which shows the whole
    # plan a real run would stop at), the brake is applied here, not in plan.
    brake_here = (hold is not None or dry_run) and not run.allow_mass_changes
    client = run.clients[name]
    allow = run.allow_mass_changes or brake_here
    mode, only, run_id = run.kind.mode, run.kind.only, outcome.run_id
    desired = steps.transform(loaded, snapshot, name)
    target_plan = steps.plan(loaded, name, client, desired, allow, run_id, dry_run, mode, only)
    if target_plan is None:  # a plan from a scoped read that could not stand (logged)
        desired = steps.transform(loaded, run.whole_source(), name)
        target_plan = steps.plan(loaded, name, client, desired, allow, run_id, dry_run, mode, only)
        if target_plan is None:
            raise WholeSourceNeeded(f"{name}: planned from the whole source, yet it asked for it")
    outcome.took_desired(desired)
    outcome.took_plan(target_plan)
    verdict = brake_here and brake_verdict(
        target_plan.plan,
        target_plan.ledger,
        target_plan.actual,
        loaded.profile.settings,
        target=name,
        plan_artifact=f"plan-{loaded.profile.name}-{name}",
        approved=None if dry_run or isinstance(hold, _Hold) else hold,
    )
    if verdict:
        outcome.took_brake(verdict, dry_run=dry_run)
        outcome.drift = drift_of(store, target_plan, braked=True)
    elif dry_run:
        outcome.status = "planned"
        outcome.drift = drift_of(store, target_plan)
    else:
        try:
            result = steps.load(loaded, name, client, target_plan, outcome.run_id, run.holder)
        except steps.LoadFailed as failed:  # the task ended Failed; its outcomes still count
            result = failed.result
        deactivated = outcome.took_load(target_plan, result)
        outcome.drift = drift_of(store, target_plan, deactivated=deactivated)
