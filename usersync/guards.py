"""Every guard of a sync in one place: what stops or holds back writes before any is sent.

- The source guard (`check_source`): fewer users than `settings.min_source_users` stops the
  run before anything is planned (an empty or cut source never deprovisions anyone).
- The brake (`brake_limits`, `check_brake`, `brake_verdict`): a plan with more destructive
  changes (deactivations, membership removals; by count, by share of the managed accounts,
  per group) than the settings allow is refused, or, where someone can be asked, waits for an
  approval of exactly its destructive operations (`destructive_signature`).
- The seat guard (`seat_guard`): creations and reactivations the licence has no seat for are
  held back, each a conflict saying why.

The engine's steps call them (`sync.extract`, `sync.plan_target_sync`); the flow asks
`brake_verdict` whether a plan waits for an approval. Each refusal names the limit, the
numbers and the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from usersync.config import SeatSettings, SyncSettings
from usersync.errors import GuardError
from usersync.model import DesiredState, SourceSnapshot, TargetState

if TYPE_CHECKING:
    from usersync.targets.base import Target

log = logging.getLogger("usersync.guards")

#: Share-of-managed brakes apply only from this many managed accounts (small estates churn).
RATIO_BRAKE_MINIMUM = 20
#: The per-group share brake applies only to groups with at least this many members.
GROUP_RATIO_BRAKE_MINIMUM = 10
#: The release parameter named in brake messages (flow parameter and CLI flag).
RELEASE_PARAMETER = "allow_mass_changes"
#: The destructive operations the brake counts.
DESTRUCTIVE = ("deactivate_user", "remove_membership")


def _folded(values: pd.Series) -> pd.Series:
    return values.str.casefold()


def check_source(snapshot: SourceSnapshot, settings: SyncSettings) -> None:
    """Refuse a source that returned fewer users than `settings.min_source_users`.

    Raises:
        GuardError: with the count, the minimum and where to look.
    """
    minimum = settings.min_source_users
    if len(snapshot.users) < minimum:
        raise GuardError(
            f"the source returned {len(snapshot.users)} user(s), fewer than min_source_users="
            f"{minimum}; the run stops before any write. Check the base DN and the user filter."
        )


# -- the brake ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BrakeLimit:
    """One limit a plan exceeded."""

    what: str
    count: int
    limit: str


def brake_limits(
    plan: pd.DataFrame, ledger: pd.DataFrame, actual: TargetState, settings: SyncSettings
) -> list[BrakeLimit]:
    """Every destructive-change limit this plan exceeds (empty: the plan may run).

    Deactivations by count and by share of the managed accounts; membership removals by count,
    by share of the managed accounts' memberships, and per group by share of its members.
    """
    if not len(plan):
        return []
    tripped: list[BrakeLimit] = []
    managed = int((ledger["kind"] == "user").sum()) if len(ledger) else 0
    deactivations = int((plan["op"] == "deactivate_user").sum())
    if deactivations > settings.max_deactivations:
        tripped.append(
            BrakeLimit(
                "deactivations", deactivations, f"max_deactivations={settings.max_deactivations}"
            )
        )
    if (
        deactivations
        and managed >= RATIO_BRAKE_MINIMUM
        and deactivations / managed > settings.max_deactivation_ratio
    ):
        tripped.append(
            BrakeLimit(
                f"deactivations ({deactivations / managed:.0%} of {managed} managed accounts)",
                deactivations,
                f"max_deactivation_ratio={settings.max_deactivation_ratio}",
            )
        )
    removals = plan.loc[plan["op"] == "remove_membership"]
    if len(removals) > settings.max_membership_removals:
        tripped.append(
            BrakeLimit(
                "membership removals",
                len(removals),
                f"max_membership_removals={settings.max_membership_removals}",
            )
        )
    if len(removals):
        sizes = _folded(actual.memberships["group"]).value_counts()
        per_group = _folded(removals["group"]).value_counts()
        for gkey, count in per_group.items():
            size = int(sizes.get(gkey, 0))
            if (
                size >= GROUP_RATIO_BRAKE_MINIMUM
                and count / size > settings.max_group_removal_ratio
            ):
                name = removals.loc[_folded(removals["group"]) == gkey, "group"].iloc[0]
                tripped.append(
                    BrakeLimit(
                        f"removals from group '{name}' ({count} of its {size} members)",
                        int(count),
                        f"max_group_removal_ratio={settings.max_group_removal_ratio}",
                    )
                )
    return tripped


def check_brake(
    plan: pd.DataFrame,
    ledger: pd.DataFrame,
    actual: TargetState,
    settings: SyncSettings,
    target: str,
) -> None:
    """Refuse a plan that makes more destructive changes than the settings allow.

    Raises:
        GuardError: naming every limit exceeded, the numbers, and the release parameter.
    """
    tripped = brake_limits(plan, ledger, actual, settings)
    if not tripped:
        return
    details = brake_text(tripped)
    raise GuardError(
        f"{target}: the plan exceeds the brake: {details}. Nothing was written. Check the "
        "source and the mapping first (a changed filter, base DN or renamed group is the usual "
        f"cause); if the change is intended, run once with {RELEASE_PARAMETER} "
        f"(usersync sync --allow-mass-changes) after reviewing a dry run's plan."
    )


def brake_text(limits: list[BrakeLimit]) -> str:
    """The limits a plan exceeds, as one clause: "deactivations: 30 (limit ...); ..."."""
    return "; ".join(f"{t.what}: {t.count} (limit {t.limit})" for t in limits)


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


@dataclass(frozen=True)
class BrakedTarget:
    """A target whose plan tripped the brake, as the approver sees it."""

    target: str
    limits: tuple[BrakeLimit, ...]
    plan_artifact: str
    destructive: int


@dataclass(frozen=True)
class BrakeVerdict:
    """A plan the brake stops: the limits it exceeds, what an approval would be given for,
    and what the approver is shown."""

    limits: tuple[BrakeLimit, ...]
    signature: frozenset
    braked: BrakedTarget

    @property
    def text(self) -> str:
        return brake_text(list(self.limits))


def brake_verdict(
    plan: pd.DataFrame,
    ledger: pd.DataFrame,
    actual: TargetState,
    settings: SyncSettings,
    *,
    target: str,
    plan_artifact: str,
    approved: frozenset | None = None,
) -> BrakeVerdict | None:
    """Whether the brake stops this plan: None when it exceeds no limit, or when its
    destructive operations are exactly the `approved` ones (an approval holds for those
    operations, not for whatever a later read plans)."""
    limits = brake_limits(plan, ledger, actual, settings)
    if not limits:
        return None
    signature = destructive_signature(plan)
    if approved is not None and signature == approved:
        return None
    braked = BrakedTarget(
        target, tuple(limits), plan_artifact, int(plan["op"].isin(DESTRUCTIVE).sum())
    )
    return BrakeVerdict(tuple(limits), signature, braked)


# -- licence seats -----------------------------------------------------------------------


#: Operations that give an account access, so take a licence seat.
SEAT_TAKING = ("create_user", "reactivate_user")


def seat_guard(
    operations: pd.DataFrame,
    conflicts: pd.DataFrame,
    target: Target,
    settings: SeatSettings,
    desired: DesiredState,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Hold back creations and reactivations the product's licence has no seat for.

    The seats are read only when the plan takes some. Seats that deactivations in the same
    plan would free are not counted: they are free only once those succeed (the next run uses
    them). `create_none` holds back every seat-taking operation when they do not all fit;
    `by_priority` lets through as many as fit, members of `priority_groups` first (in that
    order), then by username. A held-back account's memberships wait with it. Each held-back
    account is a conflict row saying why.

    Returns:
        The operations, the conflicts, and the seat figures for the summary.
    """
    taking = operations.loc[operations["op"].isin(SEAT_TAKING)]
    if not len(taking):
        return operations, conflicts, {}
    seats = target.licence_seats()
    figures: dict[str, Any] = {
        "needed": len(taking),
        "free": seats.free,
        "limit": seats.limit,
        "used": seats.used,
        "known": seats.known,
        "detail": seats.detail,
        "held_back": 0,
    }
    if not seats.known:
        # Said once and loudly; nothing is held back on a guess.
        log.error(
            "%s: licence seats cannot be read (%s): %d creation(s)/reactivation(s) go ahead "
            "unchecked; the product refuses any past its limit",
            target.name,
            seats.detail,
            len(taking),
        )
    if not seats.known or seats.free is None or len(taking) <= seats.free:
        return operations, conflicts, figures
    if settings.when_short == "create_none":
        allowed = 0
        held = taking
    else:
        allowed = max(seats.free, 0)
        held = _by_seat_priority(taking, settings.priority_groups, desired).iloc[allowed:]
    held_sources = set(held["source_id"]) - {""}
    waits = (
        (operations["op"] == "add_membership")
        & (operations["target_key"] == "")
        & operations["source_id"].isin(held_sources)
    )
    kept = operations.loc[~operations.index.isin(held.index) & ~waits]
    why = (
        f"not {{}}: the licence has {seats.free} free seat(s) and this plan needs "
        f"{len(taking)} ({settings.when_short}); free seats or raise the licence, and the next run "
        "goes on (seats that deactivations free count once they succeed)"
    )
    rows = pd.DataFrame(
        {
            "source_id": held["source_id"],
            "username": held["username"],
            "target_key": held["target_key"],
            "reason": [
                why.format("created" if op == "create_user" else "reactivated") for op in held["op"]
            ],
        },
        dtype="string",
    )
    figures["held_back"] = len(held)
    first = ", ".join(str(n) for n in held["username"].head(5))
    log.warning(
        "%s: licence seats: %d needed, %d free: %d creation(s)/reactivation(s) held back "
        "(first: %s%s; the plan artifact lists them all)",
        target.name,
        len(taking),
        seats.free,
        len(held),
        first,
        ", ..." if len(held) > 5 else "",
    )
    return (
        kept.reset_index(drop=True),
        pd.concat([conflicts, rows], ignore_index=True) if len(conflicts) else rows,
        figures,
    )


def _by_seat_priority(
    taking: pd.DataFrame, groups: tuple[str, ...], desired: DesiredState
) -> pd.DataFrame:
    """Seat-taking operations in seat order: members of `groups` first, in that order."""
    rank = {g.casefold(): i for i, g in enumerate(groups)}
    members = desired.memberships.assign(
        rank=desired.memberships["group"].str.casefold().map(rank)
    ).dropna(subset=["rank"])
    best = members.groupby("source_id")["rank"].min()
    order = taking.assign(
        _rank=taking["source_id"].map(best).fillna(len(groups)),
        _name=taking["username"].str.casefold(),
    )
    return order.sort_values(["_rank", "_name"], kind="stable").drop(columns=["_rank", "_name"])
