"""What a sync did to one target: its outcome, kept in the store and shown in the summary.

Each step adds to a `TargetOutcome` (`took_desired`, `took_plan`, `took_brake`, `took_load`);
`record_outcome` writes it to the target's run in the store, again whenever it changes, and
`drift_of` makes the target's drift report from what the run read anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from usersync.drift import drift_report
from usersync.guards import BrakeVerdict
from usersync.load import LoadResult
from usersync.model import DesiredState, SourceSnapshot
from usersync.store import Store

if TYPE_CHECKING:
    from usersync.sync import TargetPlan

log = logging.getLogger("usersync.outcome")

#: A target a guard stopped before any write (it may wait for an approval).
BRAKED = "braked"
#: Conflicts kept with each run in the store (the plan artifact lists them all).
CONFLICTS_KEPT = 1000


@dataclass
class TargetOutcome:
    """What a sync did to one target (also what the summary shows)."""

    target: str
    #: planned (a dry run, or a plan a real run would have made), succeeded, partial (some
    #: operations failed or were skipped), failed (nothing or not all could be done: the
    #: error says why), braked (a guard stopped it before any write; it may wait for an
    #: approval, `braked` set)
    status: str
    planned: dict[str, int] = field(default_factory=dict)
    executed: dict[str, dict[str, int]] = field(default_factory=dict)
    rejected: int = 0
    error: str | None = None
    run_id: int | None = None
    #: users no operation was planned for, with why ({source_id, username, target_key, reason})
    conflicts: list[dict[str, str]] = field(default_factory=list)
    #: attribute → managed accounts whose value the target would not reveal
    unverifiable: dict[str, int] = field(default_factory=dict)
    #: source users the mapping or the product refuses ({locator, reason}), first ones only
    rejected_users: list[dict[str, str]] = field(default_factory=list)
    #: operations that failed ({seq, op, username, group, error}), first ones only
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: the decision on a braked plan ({approved, by, channel, at, comment, limits}), if any
    approval: dict[str, Any] | None = None
    #: a braked plan waiting for an approval: what the approver is shown, and what it does
    braked: Any = None
    signature: frozenset = frozenset()
    #: the drift report of this target (usersync.drift), None when no plan was made
    drift: dict[str, Any] | None = None
    #: licence seats needed and free, and how many seat-taking operations were held back
    seats: dict[str, Any] = field(default_factory=dict)
    #: what a person must look at: privileged groups refused, leavers held back, administrators
    #: that cannot be established (also the event `usersync.sync.security`)
    alerts: list[str] = field(default_factory=list)
    #: the kind of run its plan was (`usersync.delta`: "delta" or "reconcile"), None unplanned
    mode: str | None = None
    #: why a run asked for as a delta run reconciled instead
    mode_reason: str | None = None

    def took_desired(self, desired: DesiredState) -> None:
        """What the mapping made of the source for this target: the users it rejects."""
        self.rejected = len(desired.rejected)
        self.rejected_users = (
            desired.rejected[["locator", "reason"]]
            .head(DETAILS_KEPT)
            .astype(object)
            .to_dict("records")
        )

    def took_plan(self, target_plan: TargetPlan) -> None:
        """What the plan holds: counts, conflicts, unreadable values, seats, alerts."""
        self.planned = target_plan.counts()
        self.conflicts = target_plan.conflicts.astype(object).to_dict("records")
        self.unverifiable = target_plan.unverifiable
        self.seats = target_plan.seats
        self.alerts = list(target_plan.alerts)
        self.mode, self.mode_reason = target_plan.mode, target_plan.mode_reason

    def took_brake(self, verdict: BrakeVerdict, *, dry_run: bool) -> None:
        """The brake stopped the plan: a dry run shows what a real run would stop at; a real
        run is braked, waiting for an approval of `signature` where someone can give one."""
        self.braked = verdict.braked
        if dry_run:
            self.status = "planned"
            self.error = f"the brake would stop a real run: {verdict.text}"
            log.warning("%s: %s", self.target, self.error)
        else:
            self.status = BRAKED
            self.signature = verdict.signature
            self.error = verdict.text
            log.warning("%s: the plan exceeds the brake (%s); waiting", self.target, self.error)

    def took_load(self, target_plan: TargetPlan, result: LoadResult) -> frozenset[str]:
        """What the load did; returns the keys of the accounts it deactivated."""
        self.executed = result.counts()
        self.failures = failed_operations(target_plan.plan, result)
        self.status = result.status
        self.error = result.quarantined
        plan = target_plan.plan
        succeeded = {o.seq for o in result.outcomes if o.status == "succeeded"}
        return frozenset(
            plan.loc[(plan["op"] == "deactivate_user") & plan["seq"].isin(succeeded), "target_key"]
        )

    def took_decision(self, decision: dict[str, Any]) -> None:
        """The decision on its braked plan ({approved, by, channel, ...}); not approved, the
        target stops waiting and its error says why nothing was written."""
        self.approval = decision
        if decision.get("approved"):
            return
        reason = (
            "the approval timed out"
            if decision.get("channel") == "timeout"
            else f"{decision.get('by')} rejected it"
        )
        self.error = f"{self.error} Not approved: {reason}; nothing was written."
        self.braked = None  # no longer waiting

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": self.status,
            "planned": self.planned,
            "executed": self.executed,
            "rejected": self.rejected,
            "error": self.error,
            "run_id": self.run_id,
            "conflicts": self.conflicts,
            "unverifiable": self.unverifiable,
            "rejected_users": self.rejected_users,
            "failures": self.failures,
            "approval": self.approval,
            "seats": self.seats,
            "alerts": self.alerts,
            "mode": self.mode,
            "mode_reason": self.mode_reason,
        }


#: Rejected users and failed operations kept in a run's outcome (the store has every one).
DETAILS_KEPT = 200


def failed_operations(plan: pd.DataFrame, result: LoadResult) -> list[dict[str, Any]]:
    """The failed operations of a load with what they were about, first `DETAILS_KEPT`."""
    rows = plan.set_index("seq")
    out = []
    for outcome in result.outcomes:
        if outcome.status != "failed":
            continue
        row = rows.loc[outcome.seq]
        out.append(
            {
                "seq": outcome.seq,
                "op": outcome.op,
                "username": str(row["username"]),
                "group": str(row["group"]),
                "error": outcome.error or "",
            }
        )
        if len(out) >= DETAILS_KEPT:
            break
    return out


@dataclass(frozen=True)
class RunEnding:
    """How a run ends, from its targets' outcomes."""

    #: the targets a guard stopped, or whose dry run a real run would stop at ({target, reason})
    braked: list[dict[str, Any]]
    #: whether to announce the brake: once per run, not after a person rejected the plan
    announce: bool
    #: the failed, partial and braked targets in one line ("" when every target did its part)
    message: str
    #: every target that did not do its part was stopped by a guard (nothing else failed)
    braked_only: bool


def run_ending(outcomes: list[TargetOutcome], *, dry_run: bool) -> RunEnding:
    """How the run ends: which targets the brake stopped, whether a person needs telling,
    and the one line a failed (or braked) run ends with."""
    braked = [
        {"target": o.target, "reason": (o.error or "").removeprefix(f"{o.target}: ")}
        for o in outcomes
        if o.status == BRAKED or (dry_run and o.braked is not None)
    ]
    stopped = [o for o in outcomes if o.status == BRAKED]
    rejected = bool(stopped) and all(_rejected_by_a_person(o) for o in stopped)
    bad = [o for o in outcomes if o.status in ("failed", "partial", BRAKED)]
    message = "; ".join(
        f"{o.target}: {o.status}" + (f" ({o.error})" if o.error else "") for o in bad
    )
    return RunEnding(
        braked=braked,
        announce=bool(braked) and not rejected,
        message=message,
        braked_only=bool(bad) and all(o.status == BRAKED for o in bad),
    )


def _rejected_by_a_person(outcome: TargetOutcome) -> bool:
    decided = outcome.approval or {}
    return decided.get("approved") is False and decided.get("channel") in ("ui", "terminal")


def record_outcome(store: Store, outcome: TargetOutcome, snapshot: SourceSnapshot) -> None:
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
            # A delta or a reconcile run, and why a delta run reconciled (`usersync runs`).
            "mode": outcome.mode,
            "mode_reason": outcome.mode_reason,
        },
        outcome.error,
    )


def drift_of(
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
