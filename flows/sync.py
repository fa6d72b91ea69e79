"""The `sync` flow: one profile (one IdP), its targets, optionally a dry run.

What a deployment, a UI run or `usersync sync` starts. It wires the tasks: validate the
profile, extract once, then every target at once, each in a thread of its own running
transform → plan → (load) as tasks tagged `target:<name>` and `instance:<host[:port]>` (so
tag-based concurrency limits can hold back one product instance), then report. A target that
fails (unreachable, refused credentials, a guard, a failed or partial load) fails alone: the
others complete, and the run ends Failed with every target's outcome in the summary artifact
and the store. A guard that stops a target emits `usersync.sync.braked` (see tasks/report.py).

A deployment is bound to the profile its own parameters name: a run of it that asks for
another profile is refused before anything is read. One run of a profile at a time: the
profile's lease in the store (`_profile_turn`), held and renewed through an approval pause;
a deployment run that finds it busy queues behind it, or ends Skipped when one already does.
(Not Prefect's deployment concurrency limit: Prefect frees it when a run pauses, and the
paused run's engine, failing to renew the freed slot, then cancels it within minutes.) The store is configuration (`USERSYNC_STORE_URL`),
never a parameter. Dry runs are named `sync-<profile>-dry-run` and tagged `dry-run`.
Parameters carry names only: secrets come from environment variables or Secret blocks.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Annotated
from urllib.parse import urlsplit
from uuid import UUID

import pandas as pd
from prefect import flow, get_run_logger, tags
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.runtime import deployment as this_deployment
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from pydantic import Field
from usersync_flows.parameters import PROFILE_HELP, ProfileName, TargetName, form_field
from usersync_tasks import approval, report, steps
from usersync_tasks.instances import instance_slot
from usersync_tasks.run_logs import engine_logs_in_run_log

from usersync import (
    DETAILS_KEPT,
    ConfigError,
    GuardError,
    LoadedProfile,
    SourceSnapshot,
    Store,
    TargetOutcome,
    TargetPlan,
    UsersyncError,
    brake_limits,
    conflict_lines,
    default_lease_holder,
    drift_report,
    failed_operations,
    instance_of,
    profile_lease,
    select_targets,
    summary_text,
)

#: The tag of a dry run's flow run.
DRY_RUN_TAG = "dry-run"
#: A target whose plan tripped the brake: it waits for an approval (`braked` set), or, not
#: approved (rejected, timed out, nobody to ask), wrote nothing.
BRAKED = "braked"
#: The destructive operations the brake counts.
DESTRUCTIVE = ("deactivate_user", "remove_membership")


class _Hold:
    """A braked plan waits for an approval (rather than failing the target)."""


HOLD = _Hold()
#: How a target treats a braked plan: None (fail), HOLD (wait), or the approved signature.
Hold = _Hold | frozenset | None


def destructive_signature(plan: pd.DataFrame) -> frozenset:
    """The destructive operations of a plan, as what they do (op, account, group): the set an
    approval is given for."""
    rows = plan.loc[plan["op"].isin(DESTRUCTIVE)]
    return frozenset(
        (op, key or user.casefold(), group.casefold())
        for op, key, user, group in zip(
            rows["op"], rows["target_key"], rows["username"], rows["group"], strict=True
        )
    )


class SyncFailed(UsersyncError):
    """At least one target failed or had failed operations."""


class SyncBraked(SyncFailed):
    """A guard stopped the run or some targets before any write, and nothing else failed: the
    run ends Failed in a state named Braked (its event is `prefect.flow-run.Braked`, so the
    "sync failed" alert stays quiet; the one notification is `usersync.sync.braked`'s)."""


#: Conflicts kept with each run in the store (the plan artifact lists them all).
CONFLICTS_KEPT = 1000


def _run_name() -> str:
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


#: How the `sync` flow is made (flows/profiles.py makes each profile's the same way).
SYNC_FLOW_OPTIONS = {"name": "sync", "flow_run_name": _run_name, "validate_parameters": True}


@flow(**SYNC_FLOW_OPTIONS)
def sync(
    profile: ProfileName = form_field("Profile", PROFILE_HELP),  # noqa: B008 - the run form (flows/parameters.py)
    targets: list[TargetName] | None = form_field(  # noqa: B008 - the run form (flows/parameters.py)
        "Targets",
        "Which of the profile's targets to sync, by their names under `targets:` in its "
        "profile.yaml (the deployment's description lists them); empty: all of them. An "
        "unknown name stops the run before anything is read.",
        None,
    ),
    dry_run: bool = form_field(
        "Dry run",
        "Plan and publish the plan (artifact plan-<profile>-<target>); write nothing anywhere. "
        "The run is named sync-<profile>-dry-run and tagged dry-run.",
        False,
    ),
    allow_mass_changes: bool = form_field(
        "Allow mass changes",
        "Release the brake on deactivations and membership removals for this run only, "
        "after checking the plan of a dry run.",
        False,
    ),
    full: bool = form_field(
        "Full read",
        "Read the whole source even where an incremental read is possible (Active Directory "
        "with incremental.enabled); a full read also catches deletions.",
        False,
    ),
    wait_seconds: Annotated[float, Field(ge=0, le=86400)] = form_field(
        "Wait for a run in progress (seconds)",
        "Outside a deployment (usersync sync): when another run of this profile is under way, "
        "wait this long for it, then stop without reading or writing. A deployment run always "
        "queues behind a run in progress (one waits; later ones end Skipped).",
        0,
    ),
) -> list[dict] | State:
    """Sync one profile's source into its targets (the parameters are the run form)."""
    with engine_logs_in_run_log():
        try:
            return _sync(profile, targets, dry_run, allow_mass_changes, full, wait_seconds)
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
) -> list[dict] | State:
    logger = get_run_logger()
    _refuse_a_profile_the_deployment_is_not_for(profile, dry_run)
    if dry_run:
        _tag_this_run(DRY_RUN_TAG)
    loaded = steps.load_profile(profile)
    chosen = select_targets(loaded.profile, targets)
    store = Store.open()
    holder = _lease_holder()
    try:
        with _profile_turn(store, profile, holder, wait_seconds) as skipped:
            if skipped is not None:
                return skipped
            try:
                snapshot, outcomes = _sync_profile(
                    loaded, chosen, store, dry_run, allow_mass_changes, full, holder
                )
            except GuardError as exc:  # the source guard: nothing was planned anywhere
                report.announce_brake(profile, [{"target": None, "reason": str(exc)}], dry_run)
                return _braked_state(exc, f"source: {exc}")
    finally:
        store.close()
    report.publish_summary(profile, outcomes, dry_run, snapshot.counts)
    report.publish_drift(profile, outcomes)
    text = summary_text(outcomes)
    logger.info("summary:\n%s", text)
    braked = [
        {"target": o.target, "reason": (o.error or "").removeprefix(f"{o.target}: ")}
        for o in outcomes
        if o.status == BRAKED or (dry_run and o.braked is not None)
    ]
    # One notification per run: not after a person rejected the plan (they know), else once.
    stopped = [o for o in outcomes if o.status == BRAKED]
    if braked and not (stopped and all(_rejected_by_a_person(o) for o in stopped)):
        report.announce_brake(profile, braked, dry_run)
    bad = [o for o in outcomes if o.status in ("failed", "partial", BRAKED)]
    if bad:
        message = "; ".join(
            f"{o.target}: {o.status}" + (f" ({o.error})" if o.error else "") for o in bad
        )
        if all(o.status == BRAKED for o in bad):
            return _braked_state(SyncBraked(message), message)
        raise SyncFailed(message)
    return [o.as_dict() for o in outcomes]


def _rejected_by_a_person(outcome: TargetOutcome) -> bool:
    decided = outcome.approval or {}
    return decided.get("approved") is False and decided.get("channel") in ("ui", "terminal")


def _braked_state(exc: UsersyncError, message: str) -> State:
    """The end of a run a guard stopped: Failed (nothing was synced), named Braked; called
    directly (`usersync sync`), the flow raises `exc`."""
    get_run_logger().error("braked: %s", message)
    return Failed(name="Braked", message=message, data=exc)


#: How often a run renews the profile's lease it holds (a paused run too), and how often a
#: queued run looks whether its turn came (seconds).
RENEW_EVERY_SECONDS = 60.0
QUEUE_POLL_SECONDS = 3.0
#: How long the place of the run queued behind the holder lasts unless renewed.
QUEUE_PLACE_SECONDS = 120.0


@contextmanager
def _profile_turn(
    store: Store, profile: str, holder: str, wait_seconds: float
) -> Iterator[State | None]:
    """Hold the profile's lease for the block, renewed all along (through an approval pause).

    The lease is the one layer that keeps two runs of a profile apart, from any entry point.
    Outside a deployment (`usersync sync`, the demo) a busy profile stops the run at once, or
    after `wait_seconds` (ProfileBusyError). A deployment run queues instead: the first run
    to find the profile busy waits for its turn, however long the holder takes (it may wait
    for an approval; a holder that dies lets its lease expire); any other run finding one
    already queued ends Skipped (a Completed state): the queued run reads the source when it
    starts, so it syncs whatever the skipped one would have. Yields None once the lease is
    held, or the Skipped state (nothing held, nothing read).
    """
    if _deployment_id() is None:
        with (
            profile_lease(store, profile, holder, wait_seconds=wait_seconds),
            _renewed(store, profile, holder),
        ):
            yield None
        return
    skipped = _queue_for(store, profile, holder)
    if skipped is not None:
        yield skipped
        return
    try:
        with _renewed(store, profile, holder):
            yield None
    finally:
        store.release_lease(profile, holder)


def _queue_for(store: Store, profile: str, holder: str) -> State | None:
    """Take the profile's lease, waiting behind its holder if this run is the first to wait.

    Returns:
        None with the lease taken, or the Skipped state when another run already waits.
    """
    current = store.acquire_lease(profile, holder)
    if current is None:
        return None
    place = f"{profile} (next)"
    queued = store.acquire_lease(place, holder, seconds=QUEUE_PLACE_SECONDS)
    if queued is not None:
        message = (
            f"profile {profile} is being synced by {current['holder']}, and "
            f"{queued['holder']} is queued behind it; that run reads the source when it starts, "
            "so this one stops here without reading or writing anything"
        )
        get_run_logger().info("skipped: %s", message)
        return Completed(name="Skipped", message=f"Skipped: {message}")
    logger = get_run_logger()
    logger.info(
        "profile %s is being synced by %s (since %s UTC); this run waits for its turn",
        profile,
        current["holder"],
        f"{current['acquired_at']:%Y-%m-%d %H:%M:%S}",
    )
    started = time.monotonic()
    try:
        while store.acquire_lease(profile, holder) is not None:
            time.sleep(QUEUE_POLL_SECONDS)
            store.renew_lease(place, holder, seconds=QUEUE_PLACE_SECONDS)
    finally:
        store.release_lease(place, holder)
    logger.info("profile %s: its turn came after %.0f s", profile, time.monotonic() - started)
    return None


@contextmanager
def _renewed(store: Store, profile: str, holder: str) -> Iterator[None]:
    """Renew the profile's lease every minute while the block runs (a pause waiting for an
    approval may last longer than a lease)."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(RENEW_EVERY_SECONDS):
            try:
                store.renew_lease(profile, holder)
            except Exception as exc:  # the next try may work; the lease outlives a few misses
                get_run_logger().warning(
                    "renewing the lease of profile %s failed: %s", profile, exc
                )

    renewer = threading.Thread(
        target=contextvars.copy_context().run, args=(renew,), name="profile-lease", daemon=True
    )
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)


def _deployment_id() -> UUID | None:
    context = FlowRunContext.get()
    return context.flow_run.deployment_id if context and context.flow_run else None


def _refuse_a_profile_the_deployment_is_not_for(profile: str, dry_run: bool) -> None:
    """A deployment syncs the profile its own parameters name, and no other.

    Its schedule, alerts and tags are that profile's; a UI or API run that asks for another
    profile is refused before anything is read. A deployment tagged `dry-run` (its runs carry
    the tag from the moment they are created) makes dry runs only. Runs outside a deployment
    (the CLI, the demo, a subflow) and deployments that name no profile are not bound.

    Raises:
        ConfigError: this run's profile is not the deployment's, or a dry-run deployment was
            asked for a real run.
    """
    deployment_id = _deployment_id()
    if deployment_id is None:
        return
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    bound = (deployment.parameters or {}).get("profile")
    if bound is not None and bound != profile:
        raise ConfigError(
            f"deployment '{deployment.name}' syncs profile '{bound}' only; this run asked for "
            f"profile '{profile}' and stops before reading or writing anything. Run the "
            f"deployment of profile '{profile}' instead (or `usersync sync {profile}`)."
        )
    if DRY_RUN_TAG in (deployment.tags or []) and not dry_run:
        raise ConfigError(
            f"deployment '{deployment.name}' makes dry runs only (tag {DRY_RUN_TAG}); this run "
            "asked for a real one and stops before reading or writing anything. Run the "
            f"deployment '{bound or profile}' for a real sync."
        )


def _tag_this_run(tag: str) -> None:
    """Add `tag` to this flow run's tags (deployment runs get theirs before the flow starts)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    run = context.flow_run
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, tags=sorted({*run.tags, tag}))


def _sync_profile(
    loaded: LoadedProfile,
    chosen: list[str],
    store: Store,
    dry_run: bool,
    allow_mass_changes: bool,
    full: bool,
    holder: str,
) -> tuple[SourceSnapshot, list[TargetOutcome]]:
    """Extract once, then every target at once, each renewing the profile's lease as it goes.

    A target whose plan trips the brake waits, where someone can be asked (a deployment run
    or a terminal), for an approval; the others load meanwhile. An approved target is planned
    again from a fresh read and loads only if its destructive operations are the approved
    ones; otherwise the new plan is put to the approver.
    """
    profile = loaded.profile.name
    try:
        snapshot = steps.extract(loaded, full)
    except Exception as exc:
        # The audit trail shows the attempt for every target, with the reason nothing ran.
        status = BRAKED if isinstance(exc, GuardError) else "failed"
        for name in chosen:
            run_id = store.start_run(profile, name, dry_run=dry_run, flow_run_id=_run_id())
            store.finish_run(run_id, status, {}, f"source: {exc}")
        raise
    settings = loaded.profile.settings
    ask = (
        not dry_run
        and not allow_mass_changes
        and settings.approval == "ask"
        and approval.channel() is not None
    )
    hold: Hold = HOLD if ask else None
    done = {
        o.target: o
        for o in _each_target(
            chosen,
            lambda name: _sync_target(
                loaded, name, snapshot, store, dry_run, allow_mass_changes, holder, hold
            ),
        )
    }
    round_no = 0
    while waiting := [o for o in done.values() if o.status == BRAKED and o.braked is not None]:
        round_no += 1
        decision = approval.ask(
            profile,
            [o.braked for o in waiting if o.braked is not None],
            timeout_seconds=settings.approval_timeout_seconds,
            round_no=round_no,
        )
        assert decision is not None  # asked only where someone can answer
        for o in waiting:
            o.approval = decision.as_dict()
            _record(store, o, snapshot)  # the braked run keeps the decision
        if not decision.approved:
            for o in waiting:
                reason = (
                    "the approval timed out"
                    if decision.channel == "timeout"
                    else f"{decision.by} rejected it"
                )
                o.error = f"{o.error} Not approved: {reason}; nothing was written."
                o.braked = None  # no longer waiting
                _record(store, o, snapshot)
            break
        get_run_logger().info("approved by %s: reading the source again", decision.by)
        snapshot = steps.extract(loaded, full)
        approved = {o.target: o.signature for o in waiting}
        again = partial(
            _sync_target,
            snapshot=snapshot,
            store=store,
            dry_run=dry_run,
            allow_mass_changes=allow_mass_changes,
            holder=holder,
            decided=decision.as_dict(),
        )
        for o in _each_target(
            list(approved),
            lambda name, again=again, approved=approved: again(loaded, name, hold=approved[name]),
        ):
            done[o.target] = o
    outcomes = [done[name] for name in chosen]
    # An incremental source moves its watermark only when every target succeeded.
    steps.advance_watermark(snapshot, [o.status for o in outcomes], dry_run)
    return snapshot, outcomes


def _each_target(names: list[str], work: Callable[[str], TargetOutcome]) -> list[TargetOutcome]:
    """`work` for every target at once, each in a thread running in a copy of this context
    (so its tasks belong to this flow run)."""
    with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="sync-target") as pool:
        futures = [pool.submit(contextvars.copy_context().run, work, name) for name in names]
        return [future.result() for future in futures]


def _run_id() -> str:
    return str(flow_run.get_id() or "")


def _lease_holder() -> str:
    run = flow_run.get_id()
    return f"flow run {flow_run.get_name()} ({run})" if run else default_lease_holder()


def target_tags(loaded: LoadedProfile, name: str) -> list[str]:
    """The tags of a target's task runs: its name, and the instance it writes to (host and
    port as `config.instance_of` normalises them)."""
    instance = urlsplit(instance_of(loaded.profile.targets[name].url))
    return [f"target:{name}", f"instance:{instance.netloc}"]


def _sync_target(
    loaded: LoadedProfile,
    name: str,
    snapshot: SourceSnapshot,
    store: Store,
    dry_run: bool,
    allow_mass_changes: bool,
    holder: str,
    hold: Hold = None,
    decided: dict | None = None,
) -> TargetOutcome:
    """Plan and load one target; any error fails this target only.

    `hold`: None, a braked plan fails the target; HOLD, it waits for an approval (status
    braked); a signature, the destructive operations approved (a plan with others waits).
    """
    logger = get_run_logger()
    profile = loaded.profile.name
    store.renew_lease(profile, holder)
    run_id = store.start_run(profile, name, dry_run=dry_run, flow_run_id=_run_id())
    outcome = TargetOutcome(target=name, status="failed", run_id=run_id, approval=decided)
    try:
        url = loaded.profile.targets[name].url
        with tags(*target_tags(loaded, name)), instance_slot(url, name, write=not dry_run):
            _plan_and_load(
                loaded, name, snapshot, store, dry_run, allow_mass_changes, holder, outcome, hold
            )
    except GuardError as exc:
        logger.error("%s: %s", name, exc)
        outcome.error = str(exc)
        outcome.status = BRAKED
    except UsersyncError as exc:
        logger.error("%s: %s", name, exc)
        outcome.error = str(exc)
        outcome.status = "failed"
    except Exception as exc:
        # Not an error usersync expects (a bug, an odd answer): still this target's alone.
        logger.exception("%s: unexpected error", name)
        outcome.error = f"unexpected {type(exc).__name__}: {exc}"
        outcome.status = "failed"
    _record(store, outcome, snapshot)
    return outcome


def _record(store: Store, outcome: TargetOutcome, snapshot: SourceSnapshot) -> None:
    """Write the target's outcome to its run in the store (again, when it changes)."""
    store.finish_run(
        outcome.run_id,
        outcome.status,
        {
            "planned": outcome.planned,
            "executed": outcome.executed,
            "rejected": outcome.rejected,
            "source": snapshot.counts,
            # What `usersync conflicts` lists: accounts no operation was planned for, and why.
            "conflicts": outcome.conflicts[:CONFLICTS_KEPT],
            "conflict_count": len(outcome.conflicts),
            # Who approved (or rejected) a braked plan, when and how.
            "approval": outcome.approval,
            # What no source, rule or profile explains (`usersync drift`).
            "drift": outcome.drift,
            "seats": outcome.seats,
        },
        outcome.error,
    )


def _plan_and_load(
    loaded: LoadedProfile,
    name: str,
    snapshot: SourceSnapshot,
    store: Store,
    dry_run: bool,
    allow_mass_changes: bool,
    holder: str,
    outcome: TargetOutcome,
    hold: Hold = None,
) -> None:
    """Transform, plan, publish the plan and (unless a dry run) load; fill in `outcome`."""
    logger = get_run_logger()
    desired = steps.transform(loaded, snapshot, name)
    outcome.rejected = len(desired.rejected)
    outcome.rejected_users = (
        desired.rejected[["locator", "reason"]].head(DETAILS_KEPT).astype(object).to_dict("records")
    )
    # Where a braked plan may wait for an approval, and in a dry run (which shows the whole
    # plan a real run would stop at), the brake is applied here, not in plan.
    brake_here = hold is not None or dry_run
    target_plan = steps.plan(loaded, name, desired, allow_mass_changes or brake_here)
    outcome.planned = target_plan.counts()
    outcome.conflicts = target_plan.conflicts.astype(object).to_dict("records")
    outcome.unverifiable = target_plan.unverifiable
    outcome.seats = target_plan.seats
    if target_plan.seats.get("held_back"):
        report.announce_seats(loaded.profile.name, name, target_plan.seats, dry_run)
    outcome.alerts = list(target_plan.alerts)
    if outcome.alerts:
        report.announce_security(loaded.profile.name, name, outcome.alerts, dry_run)
    for line in conflict_lines(outcome.conflicts):
        logger.warning("%s: %s", name, line)
    for attribute, count in outcome.unverifiable.items():
        logger.warning(
            "%s: %s of %d managed account(s) cannot be read with these credentials; "
            "left alone, not compared",
            name,
            attribute,
            count,
        )
    store.record_plan(outcome.run_id, target_plan.plan)
    report.publish_plan(loaded.profile.name, target_plan)
    if brake_here and not allow_mass_changes:
        limits = brake_limits(
            target_plan.plan, target_plan.ledger, target_plan.actual, loaded.profile.settings
        )
        signature = destructive_signature(target_plan.plan)
        if limits and dry_run:
            # The plan is the dry run's result; a real run would stop at the brake.
            outcome.status = "planned"
            outcome.error = "the brake would stop a real run: " + "; ".join(
                f"{t.what}: {t.count} (limit {t.limit})" for t in limits
            )
            outcome.braked = approval.BrakedTarget(
                name,
                tuple(limits),
                f"plan-{loaded.profile.name}-{name}",
                int(target_plan.plan["op"].isin(DESTRUCTIVE).sum()),
            )
            logger.warning("%s: %s", name, outcome.error)
            outcome.drift = _drift(store, target_plan, braked=True)
            return
        if limits and signature != hold:
            outcome.status = BRAKED
            outcome.signature = signature
            outcome.error = "; ".join(f"{t.what}: {t.count} (limit {t.limit})" for t in limits)
            outcome.braked = approval.BrakedTarget(
                name,
                tuple(limits),
                f"plan-{loaded.profile.name}-{name}",
                int(target_plan.plan["op"].isin(DESTRUCTIVE).sum()),
            )
            logger.warning("%s: the plan exceeds the brake (%s); waiting", name, outcome.error)
            outcome.drift = _drift(store, target_plan, braked=True)
            return
    if dry_run:
        outcome.status = "planned"
        outcome.drift = _drift(store, target_plan)
        return
    try:
        result = steps.load(loaded, name, target_plan, outcome.run_id, holder)
    except steps.LoadFailed as failed:
        # The load task ended Failed; its outcomes still make the summary.
        result = failed.result
    outcome.executed = result.counts()
    outcome.failures = failed_operations(target_plan.plan, result)
    outcome.status = result.status
    outcome.error = result.quarantined
    plan = target_plan.plan
    succeeded = {o.seq for o in result.outcomes if o.status == "succeeded"}
    deactivated = plan.loc[
        (plan["op"] == "deactivate_user") & plan["seq"].isin(succeeded), "target_key"
    ]
    outcome.drift = _drift(store, target_plan, deactivated=frozenset(deactivated))


def _drift(
    store: Store,
    target_plan: TargetPlan,
    *,
    braked: bool = False,
    deactivated: frozenset[str] | None = None,
) -> dict:
    """The target's drift report, from what this run read (see usersync.drift)."""
    return drift_report(
        plan=target_plan.plan,
        desired_users=target_plan.desired.users,
        desired_groups=target_plan.desired.groups,
        actual_users=target_plan.actual.users,
        memberships=target_plan.actual.memberships,
        ledger=target_plan.ledger,
        protected=target_plan.protected,
        foreign_names=target_plan.foreign_names,
        claimed_twice=store.claimed_twice(target_plan.instance) if target_plan.instance else None,
        conflicts=target_plan.conflicts,
        deactivated=deactivated,
        braked=braked,
    )
