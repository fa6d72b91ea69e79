"""Prefect tasks around the engine's sync steps: retries, no caching, logging, progress.

Each task is a few lines around a `usersync.sync` function. None is cached or persists its
result: a cached "Completed" must never stand in for a write, and the frames they pass are not
worth hashing. One retry layer: the HTTP clients below retry what is transient, so only the
extract of a source without its own retries (LDAP) is retried here (`tasks.retry`). The store
is configuration, not a parameter: every task opens the one `USERSYNC_STORE_URL` names.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from usersync_tasks import report, runs
from usersync_tasks.progress import OperationCounter, calls_planned, extract_progress, load_progress
from usersync_tasks.retry import retry_transient
from usersync_tasks.runs import RunKind
from usersync_tasks.secrets import load_prefect_secret

import usersync as engine
from usersync import (
    DesiredState,
    LoadedProfile,
    LoadResult,
    SourceSnapshot,
    Store,
    Target,
    TargetOutcome,
    TargetPlan,
    UnchangedSnapshot,
    UsersyncError,
    conflict_lines,
    record_outcome,
)

SIDE_EFFECT_FREE = {"cache_policy": NO_CACHE, "persist_result": False}


class LoadFailed(UsersyncError):
    """A target's load failed or was partial; `result` holds every operation's outcome."""

    def __init__(self, message: str, result: LoadResult) -> None:
        super().__init__(message)
        self.result = result


@task(name="load-profile", **SIDE_EFFECT_FREE)
def load_profile(profile: str) -> LoadedProfile:
    """Validate profile.yaml and both mapping tables before anything else happens."""
    loaded = engine.prepare_profile(profile)
    get_run_logger().info(
        "profile %s: source %s, targets %s, %d attribute rule(s), %d group rule(s)",
        profile,
        loaded.profile.source.kind,
        ", ".join(loaded.profile.targets),
        len(loaded.tables.attributes),
        len(loaded.tables.groups),
    )
    for warning in loaded.tables.warnings:
        get_run_logger().warning(warning)
    return loaded


@task(
    name="extract",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_transient,
    **SIDE_EFFECT_FREE,
)
def extract(loaded: LoadedProfile, full: bool = False) -> SourceSnapshot:
    """Read the complete source snapshot (refused when it may be incomplete or is empty).

    An incremental source reads only what changed and merges it into the stored snapshot,
    unless `full` (or the schedule, or a change of DC or scope) calls for a full read.
    """
    store = Store.open()
    profile = loaded.profile.name
    try:
        key = f"extract-{profile}"
        with extract_progress(key, store.last_source_counts(profile)) as heard:
            snapshot = engine.extract(
                loaded,
                load_prefect_secret=load_prefect_secret,
                store=store,
                full=full,
                on_progress=heard,
            )
    finally:
        store.close()
    get_run_logger().info("extracted %s", snapshot.counts)
    for note in snapshot.notes:
        get_run_logger().warning(note)
    return snapshot


@task(
    name="extract-scoped",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_transient,
    **SIDE_EFFECT_FREE,
)
def extract_scoped(loaded: LoadedProfile, ids: list[str]) -> SourceSnapshot | None:
    """Read only the named identities by key, when the source can (the inbox): a run scoped to
    them (an offboarding) then neither reads nor maps the whole directory. None: the source
    cannot, read it whole."""
    snapshot = engine.extract_scoped(loaded, ids, load_prefect_secret=load_prefect_secret)
    if snapshot is not None:
        for note in snapshot.notes:
            get_run_logger().info(note)
    return snapshot


@task(name="unchanged-source", **SIDE_EFFECT_FREE)
def unchanged(
    loaded: LoadedProfile, chosen: list[str], dry_run: bool, kind: RunKind
) -> tuple[SourceSnapshot, list[TargetOutcome]] | None:
    """For a delta run of every identity whose source says nothing changed since the last
    run of each target (`usersync.unchanged_source`): each target's run, recorded as done with
    nothing planned. None otherwise (the run reads the source as usual)."""
    if kind.mode != "delta" or kind.only is not None:
        return None
    profile = loaded.profile.name
    store = Store.open()
    try:
        why = engine.unchanged_source(
            loaded, chosen, store, load_prefect_secret=load_prefect_secret
        )
        if why is None:
            return None
        get_run_logger().info("%s", why)
        snapshot = UnchangedSnapshot.of(why, store.last_source_counts(profile))
        outcomes = []
        for name in chosen:
            run_id = store.start_run(profile, name, dry_run=dry_run, flow_run_id=runs.run_id())
            status = "planned" if dry_run else "succeeded"
            outcome = TargetOutcome(target=name, status=status, run_id=run_id, mode="delta")
            record_outcome(store, outcome, snapshot)
            outcomes.append(outcome)
        return snapshot, outcomes
    finally:
        store.close()


@task(name="transform", task_run_name="transform-{target}", **SIDE_EFFECT_FREE)
def transform(loaded: LoadedProfile, snapshot: SourceSnapshot, target: str) -> DesiredState:
    """Apply the mapping tables for one target; report users the mapping rejects."""
    desired = engine.transform(loaded, snapshot, target)
    logger = get_run_logger()
    logger.info(
        "%s: %d user(s), %d group(s), %d membership(s) desired",
        target,
        len(desired.users),
        len(desired.groups),
        len(desired.memberships),
    )
    for row in desired.rejected.head(50).itertuples():
        logger.warning("%s: not provisioned: %s: %s", target, row.locator, row.reason)
    return desired


@task(name="plan", task_run_name="plan-{target}", **SIDE_EFFECT_FREE)
def plan(
    loaded: LoadedProfile,
    target: str,
    client: Target,
    desired: DesiredState,
    allow_mass_changes: bool,
    run_id: int,
    dry_run: bool,
    mode: str = "reconcile",
    only: list[str] | None = None,
) -> TargetPlan | None:
    """Read the target's state and compute the plan (guards run here, before any write);
    record it with the run, publish it, and say what a person must look at.

    `mode`: "reconcile" reads everything, "delta" what changed since the last runs wrote
    (`usersync.delta`); `only` scopes a delta run to those identities (an offboarding).
    None, saying why: `desired` was made from a scoped read and a plan from it cannot stand
    (`usersync.WholeSourceNeeded`); nothing was recorded, plan again from the whole source."""
    profile = loaded.profile.name
    store = Store.open()
    try:
        result = engine.plan_target_sync(
            loaded,
            target,
            client,
            desired,
            store,
            allow_mass_changes=allow_mass_changes,
            mode=mode,
            only=only,
        )
        store.record_plan(run_id, result.plan)
    except engine.WholeSourceNeeded as exc:
        get_run_logger().warning("%s: %s: planning from the whole source", target, exc)
        return None
    finally:
        store.close()
    logger = get_run_logger()
    if result.mode_reason:
        logger.warning("%s: reconcile run instead of delta: %s", target, result.mode_reason)
    else:
        scoped = f" scoped to {len(only)} identity(ies)" if only and result.mode == "delta" else ""
        logger.info("%s: %s run%s", target, result.mode, scoped)
    logger.info("%s: planned %s", target, result.counts() or "nothing")
    for line in conflict_lines(result.conflicts.astype(object).to_dict("records")):
        logger.warning("%s: %s", target, line)
    for attribute, count in result.unverifiable.items():
        logger.warning(
            "%s: %s of %d managed account(s) cannot be read here (the client said why above); "
            "left alone, not compared",
            target,
            attribute,
            count,
        )
    report.publish_plan(profile, result)
    if result.seats.get("held_back"):
        report.announce_seats(profile, target, result.seats, dry_run)
    if result.alerts:
        report.announce_security(profile, target, list(result.alerts), dry_run)
    return result


@task(name="load", task_run_name="load-{target}", **SIDE_EFFECT_FREE)
def load(
    loaded: LoadedProfile,
    target: str,
    client: Target,
    target_plan: TargetPlan,
    run_id: int,
    lease_holder: str | None = None,
) -> LoadResult:
    """Execute the plan against the target, recording every outcome and the ledger.

    The progress artifact `load-<profile>-<target>` follows the load as it goes.

    Raises:
        LoadFailed: the target was quarantined or some operations failed or were skipped
            (the task run ends Failed; the exception carries every outcome).
    """
    profile = loaded.profile.name
    store = Store.open()
    try:
        counter = OperationCounter(client)
        with load_progress(
            f"load-{profile}-{target}",
            f"load of {target}",
            counter,
            calls_planned(target_plan.plan),
        ) as progress:
            result = engine.load_target_sync(
                loaded,
                counter,  # type: ignore[arg-type] - a Target, counted
                target_plan,
                store,
                run_id,
                lease_holder=lease_holder,
            )
            progress["outcome"] = result.status
    finally:
        store.close()
    logger = get_run_logger()
    logger.info("%s: executed %s", target, result.counts())
    for outcome in result.outcomes:
        if outcome.status == "failed":
            logger.error(
                "%s: operation %d (%s) failed: %s", target, outcome.seq, outcome.op, outcome.error
            )
    if result.status != "succeeded":
        failed = sum(o.status == "failed" for o in result.outcomes)
        skipped = sum(o.status == "skipped" for o in result.outcomes)
        raise LoadFailed(
            f"{target}: load {result.status}: {failed} operation(s) failed, {skipped} skipped"
            + (f"; quarantined after: {result.quarantined}" if result.quarantined else ""),
            result,
        )
    return result


@task(name="advance-watermark", **SIDE_EFFECT_FREE)
def advance_watermark(snapshot: SourceSnapshot, statuses: list[str], dry_run: bool) -> None:
    """An incremental source's next read starts from this snapshot, if the run succeeded."""
    store = Store.open()
    try:
        saved = engine.advance_watermark(store, snapshot, statuses=statuses, dry_run=dry_run)
    finally:
        store.close()
    if saved is not None:
        get_run_logger().info(
            "watermark advanced to USN %d on %s", saved.watermark.usn, saved.watermark.dc
        )
