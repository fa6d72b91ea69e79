"""Publish a run's plan and summary as Prefect artifacts, and the events alerts listen to.

Events (resource `usersync.profile.<profile>`, related to the flow run that emits them):

- `usersync.sync.completed`, once per run that got past extract, with payload
  `{"dry_run": bool, "targets": [outcome, ...]}`; each outcome is `TargetOutcome.as_dict()`:
  target, status (planned | succeeded | partial | failed | braked), planned {op: n}, executed
  {op: {succeeded, failed, skipped}}, rejected, error, run_id (the store's), conflicts,
  unverifiable, rejected_users, failures.
- `usersync.sync.rejected`, once per run in which a target rejects source users (the mapping
  or the product refuses them: no e-mail, a name or value the product will not take, a refusal
  the product answered before), with payload `{"dry_run": bool, "targets": [{"target": name,
  "count": n, "users": [{"locator", "reason"}, ...]}]}`: the first `REJECTED_SHOWN` users of
  each target (the summary artifact and the completed event carry more).
- `usersync.sync.security`, when a target's plan refused what IdP data must never do or
  held back what it cannot do safely (a group that grants administration, an existing group
  an on-the-fly rule may not take over, a protected leaver left active, administrators that
  cannot be established), with payload `{"target": name, "alerts": [str, ...], "dry_run": bool}`.
- `usersync.sync.braked`, once per run, when a guard stopped targets (the brake on
  deactivations and membership removals; in a dry run: would stop a real run) or the whole
  run (a source with fewer users than min_source_users), with payload `{"targets": [{"target":
  name or null for the source, "reason": str}], "dry_run": bool}`. Not emitted when a person
  rejected the plan (they asked for it) nor while a run waits for an approval
  (`usersync.approval.requested` is that run's notification).
- `usersync.approval.requested`, when a run pauses for an approval of its braked plan (see
  `announce_approval_requested`): who must act, on what, where and by when.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from usersync import (
    PLAN_ROWS_SHOWN,
    TargetOutcome,
    TargetPlan,
    drift_markdown,
    plan_rows,
    seats_text,
    summary_markdown,
)

COMPLETED_EVENT = "usersync.sync.completed"
SEATS_EVENT = "usersync.licence.short"
BRAKED_EVENT = "usersync.sync.braked"
SECURITY_EVENT = "usersync.sync.security"
APPROVAL_EVENT = "usersync.approval.requested"
REJECTED_EVENT = "usersync.sync.rejected"
#: Rejected users named per target in `usersync.sync.rejected`: enough for a notification.
REJECTED_SHOWN = 10


def profile_resource(profile: str) -> dict[str, str]:
    """The event resource every usersync event of a profile is about."""
    return {"prefect.resource.id": f"usersync.profile.{profile}", "prefect.resource.name": profile}


@task(
    name="publish-plan",
    task_run_name="publish-plan-{target_plan.target}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def publish_plan(profile: str, target_plan: TargetPlan) -> None:
    """The plan of one target as a table artifact `plan-<profile>-<target>`."""
    shown = min(len(target_plan.plan), PLAN_ROWS_SHOWN)
    create_table_artifact(
        table=plan_rows(target_plan.plan, conflicts=target_plan.conflicts)
        or [{"op": "nothing to do"}],
        key=f"plan-{profile}-{target_plan.target}",
        description=f"{len(target_plan.plan)} operation(s) planned for {target_plan.target}"
        + (f" (first {shown} shown; the store has all)" if shown < len(target_plan.plan) else "")
        + _seats_line(target_plan.seats),
    )


def _seats_line(seats: dict) -> str:
    if not seats:
        return ""
    held = f", {seats['held_back']} held back" if seats["held_back"] else ""
    return f"; {seats_text(seats)}{held}"


@task(name="publish-summary", cache_policy=NO_CACHE, persist_result=False)
def publish_summary(
    profile: str, outcomes: Sequence[TargetOutcome], dry_run: bool, source_counts: dict
) -> None:
    """The run summary as a markdown artifact `summary-<profile>` and a Prefect event."""
    create_markdown_artifact(
        markdown=summary_markdown(profile, outcomes, dry_run=dry_run, source_counts=source_counts),
        key=f"summary-{profile}",
        description=f"usersync {profile}" + (" (dry run)" if dry_run else ""),
    )
    emit_event(
        event=COMPLETED_EVENT,
        resource=profile_resource(profile),
        payload={"dry_run": dry_run, "targets": [o.as_dict() for o in outcomes]},
    )
    announce_rejections(profile, outcomes, dry_run)


def announce_rejections(profile: str, outcomes: Sequence[TargetOutcome], dry_run: bool) -> None:
    """Emit `usersync.sync.rejected` once for the run if any target rejects source users."""
    targets = [
        {"target": o.target, "count": o.rejected, "users": o.rejected_users[:REJECTED_SHOWN]}
        for o in outcomes
        if o.rejected
    ]
    if not targets:
        return
    emit_event(
        event=REJECTED_EVENT,
        resource=profile_resource(profile),
        payload={"dry_run": dry_run, "targets": targets},
    )


@task(name="publish-drift", cache_policy=NO_CACHE, persist_result=False)
def publish_drift(profile: str, outcomes: Sequence[TargetOutcome]) -> None:
    """The drift of every target whose plan was made, as the markdown artifact
    `drift-<profile>` (also kept with each run in the store: `usersync drift`)."""
    drifts = {o.target: o.drift for o in outcomes if o.drift is not None}
    if not drifts:
        return
    create_markdown_artifact(
        markdown=drift_markdown(profile, drifts),
        key=f"drift-{profile}",
        description=f"usersync {profile}: what no source, rule or profile explains",
    )


def announce_seats(profile: str, target: str, seats: dict, dry_run: bool) -> None:
    """Emit `usersync.licence.short`: creations or reactivations held back for want of seats."""
    emit_event(
        event=SEATS_EVENT,
        resource=profile_resource(profile),
        payload={"target": target, "dry_run": dry_run, **seats},
    )


def announce_security(profile: str, target: str, alerts: list[str], dry_run: bool) -> None:
    """Emit `usersync.sync.security`: lines of this target's plan a person must read."""
    emit_event(
        event=SECURITY_EVENT,
        resource=profile_resource(profile),
        payload={"target": target, "alerts": alerts, "dry_run": dry_run},
    )


def announce_brake(profile: str, targets: list[dict[str, Any]], dry_run: bool) -> None:
    """Emit `usersync.sync.braked` once for the run: guards stopped these targets
    (`{"target": name or None for the whole run, "reason": str}`)."""
    emit_event(
        event=BRAKED_EVENT,
        resource=profile_resource(profile),
        payload={"targets": targets, "dry_run": dry_run},
    )


def announce_approval_requested(
    profile: str,
    targets: list[dict[str, Any]],
    *,
    flow_run_id: str,
    flow_run_name: str,
    url: str | None,
    deadline: datetime,
    round_no: int,
) -> None:
    """Emit `usersync.approval.requested`: this run pauses until someone approves or rejects.

    Payload: `{"targets": [{"target", "limits": [{"what", "count", "limit"}], "plan_artifact",
    "destructive"}], "flow_run_id", "flow_run_name", "url" (the run in the Prefect UI, or null
    when no UI URL is known), "deadline" (ISO 8601, UTC: the pause times out then, as a
    rejection), "round" (2 and more: the plan changed after an approval)}`.
    """
    emit_event(
        event=APPROVAL_EVENT,
        resource=profile_resource(profile),
        payload={
            "targets": targets,
            "flow_run_id": flow_run_id,
            "flow_run_name": flow_run_name,
            "url": url,
            "deadline": deadline.isoformat(timespec="seconds"),
            "round": round_no,
        },
    )
