"""The `sync` flow: one profile (one IdP), its targets, optionally a dry run.

What a deployment, a UI run or `usersync sync` starts. It wires the tasks: validate the
profile, extract once, then per target transform → plan → (load) → report. A target that
fails (unreachable, refused credentials, a guard) fails alone; the others complete, and the
run ends Failed with every target's outcome in the summary artifact and the store.
Parameters carry names only: secrets come from environment variables or Secret blocks.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks import report, steps
from usersync.errors import UsersyncError
from usersync.model import SourceSnapshot
from usersync.report import summary_text
from usersync.store import Store
from usersync.sync import (
    DETAILS_KEPT,
    LoadedProfile,
    TargetOutcome,
    default_lease_holder,
    failed_operations,
    profile_lease,
    select_targets,
)


class SyncFailed(UsersyncError):
    """At least one target failed or had failed operations."""


@flow(name="sync", flow_run_name="sync-{profile}", validate_parameters=True)
def sync(
    profile: str,
    targets: list[str] | None = None,
    dry_run: bool = False,
    allow_mass_changes: bool = False,
    store_url: str | None = None,
    full: bool = False,
    wait_seconds: float = 0,
) -> list[dict]:
    """Sync one profile's source into its targets.

    Args:
        profile: the folder name under mappings/.
        targets: the profile's targets to sync (default: all).
        dry_run: plan and publish the plan; write nothing anywhere.
        allow_mass_changes: release the brake on deactivations and membership removals for
            this run (after checking the plan of a dry run).
        store_url: SQLAlchemy URL of the store (default: $USERSYNC_STORE_URL or
            sqlite:///var/usersync.db). Give a URL without a password; use the
            environment variable for credentials.
        full: read the whole source even where an incremental read is possible (AD with
            `incremental.enabled`); a full read also catches deletions.
        wait_seconds: when another run of this profile is under way (from any entry point),
            wait this long for it to finish; then this run stops without reading or writing.
    """
    logger = get_run_logger()
    loaded = steps.load_profile(profile)
    chosen = select_targets(loaded.profile, targets)
    store = Store.open(store_url)
    holder = _lease_holder()
    try:
        with profile_lease(store, profile, holder, wait_seconds=wait_seconds):
            snapshot, outcomes = _sync_profile(
                loaded, chosen, store, store_url, dry_run, allow_mass_changes, full, holder
            )
    finally:
        store.close()
    report.publish_summary(profile, outcomes, dry_run, snapshot.counts)
    text = summary_text(outcomes)
    logger.info("summary:\n%s", text)
    bad = [o for o in outcomes if o.status in ("failed", "partial")]
    if bad:
        raise SyncFailed(
            "; ".join(f"{o.target}: {o.status}" + (f" ({o.error})" if o.error else "") for o in bad)
        )
    return [o.as_dict() for o in outcomes]


def _sync_profile(
    loaded: LoadedProfile,
    chosen: list[str],
    store: Store,
    store_url: str | None,
    dry_run: bool,
    allow_mass_changes: bool,
    full: bool,
    holder: str,
) -> tuple[SourceSnapshot, list[TargetOutcome]]:
    """Extract once, then each target in turn, renewing the profile's lease as it goes."""
    profile = loaded.profile.name
    try:
        snapshot = steps.extract(loaded, store_url, full)
    except Exception as exc:
        # The audit trail shows the attempt for every target, with the reason nothing ran.
        for name in chosen:
            run_id = store.start_run(profile, name, dry_run=dry_run, flow_run_id=_run_id())
            store.finish_run(run_id, "failed", {}, f"source: {exc}")
        raise
    outcomes = []
    for name in chosen:
        store.renew_lease(profile, holder)
        outcomes.append(
            _sync_target(
                loaded, name, snapshot, store, store_url, dry_run, allow_mass_changes, holder
            )
        )
    # An incremental source moves its watermark only when every target succeeded.
    steps.advance_watermark(snapshot, store_url, [o.status for o in outcomes], dry_run)
    return snapshot, outcomes


def _run_id() -> str:
    return str(flow_run.get_id() or "")


def _lease_holder() -> str:
    run = flow_run.get_id()
    return f"flow run {flow_run.get_name()} ({run})" if run else default_lease_holder()


def _sync_target(
    loaded: LoadedProfile,
    name: str,
    snapshot: SourceSnapshot,
    store: Store,
    store_url: str | None,
    dry_run: bool,
    allow_mass_changes: bool,
    holder: str,
) -> TargetOutcome:
    """Plan and load one target; any error fails this target only."""
    logger = get_run_logger()
    run_id = store.start_run(loaded.profile.name, name, dry_run=dry_run, flow_run_id=_run_id())
    outcome = TargetOutcome(target=name, status="failed", run_id=run_id)
    try:
        desired = steps.transform(loaded, snapshot, name)
        outcome.rejected = len(desired.rejected)
        outcome.rejected_users = (
            desired.rejected[["locator", "reason"]]
            .head(DETAILS_KEPT)
            .astype(object)
            .to_dict("records")
        )
        target_plan = steps.plan(loaded, name, desired, store_url, allow_mass_changes)
        outcome.planned = target_plan.counts()
        outcome.conflicts = target_plan.conflicts.astype(object).to_dict("records")
        outcome.unverifiable = target_plan.unverifiable
        for conflict in outcome.conflicts[:50]:
            logger.warning(
                "%s: no operation for %s: %s", name, conflict["username"], conflict["reason"]
            )
        for attribute, count in outcome.unverifiable.items():
            logger.warning(
                "%s: %s of %d managed account(s) cannot be read with these credentials; "
                "left alone, not compared",
                name,
                attribute,
                count,
            )
        store.record_plan(run_id, target_plan.plan)
        report.publish_plan(loaded.profile.name, target_plan)
        if dry_run:
            outcome.status = "planned"
        else:
            result = steps.load(loaded, name, target_plan, store_url, run_id, holder)
            outcome.executed = result.counts()
            outcome.failures = failed_operations(target_plan.plan, result)
            outcome.status = result.status
            outcome.error = result.quarantined
    except UsersyncError as exc:
        logger.error("%s: %s", name, exc)
        outcome.error = str(exc)
        outcome.status = "failed"
    except Exception as exc:
        # Not an error usersync expects (a bug, an odd answer): still this target's alone.
        logger.exception("%s: unexpected error", name)
        outcome.error = f"unexpected {type(exc).__name__}: {exc}"
        outcome.status = "failed"
    store.finish_run(
        run_id,
        outcome.status,
        {"planned": outcome.planned, "executed": outcome.executed, "rejected": outcome.rejected},
        outcome.error,
    )
    return outcome
