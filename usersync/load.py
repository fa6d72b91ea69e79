"""Execute a plan against one target: phase by phase, bounded concurrency, failures isolated.

Revocations go first: the deactivations of accounts that lead nothing (a lead hands its
projects over at the end, then goes) and the removals from groups that grant administration or
access to the product (`revoking_groups`), before any creation or update of the same plan, so
that a leaver's access ends as soon as possible. The rest runs in the plan's order of kinds
(groups, then accounts, then memberships, then hand-overs and the remaining deactivations);
within one kind they are independent and run at once, `max_workers` at a time,
each in a greenlet on one asyncio loop (`usersync.cooperative`): the target modules stay plain
code, their requests go out through `usersync.wire`, and no thread has to win the interpreter
lock back for each answer, which on busy cores is what slowed a threaded load. One
failing operation does not stop the others, but operations that depend on it are skipped (no
memberships for an account whose creation failed). A refusal of the credentials or the
permission, or a target that stopped answering, quarantines the target for the rest of the
run: the remaining operations are skipped, not hammered. Each outcome says what the ledger
must now remember.

A target with a bulk call for memberships (`add_members(group, usernames)`, Bitbucket's
add-users) gets a group's new members in calls of up to `max_members_per_call` names; if it
refuses one (all or nothing: a user deleted since the plan), that call's rows are added one by
one, so each operation still has its own outcome. How many requests are in flight at once is
the HTTP layer's to decide (`usersync.http.InstanceLimiter`, shared per instance, with the
profile's `max_in_flight` and `requests_per_second`); `max_workers` only bounds it from above.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import pandas as pd

from usersync import cooperative
from usersync.capabilities import BulkMembershipWriter, members_per_call, offers
from usersync.errors import (
    TargetAuthError,
    TargetConflictError,
    TargetDeadlineError,
    TargetError,
    TargetLicenceError,
    TargetPermissionError,
    TargetRejectedError,
    TargetUnreachableError,
)
from usersync.model import CUSTOM_PREFIX, OPERATIONS
from usersync.store import LedgerEntry
from usersync.targets.base import Target

log = logging.getLogger("usersync.load")

#: Errors after which no further call to the target makes sense in this run.
QUARANTINE_ERRORS = (
    TargetAuthError,
    TargetPermissionError,
    TargetUnreachableError,
    TargetDeadlineError,
)


@dataclass(frozen=True)
class Outcome:
    seq: int
    op: str
    #: succeeded | failed | skipped | rejected (the product refused this user's data: listed,
    #: remembered, not sent again until the data changes; not a failure of the run)
    status: str
    error: str | None = None
    ledger: LedgerEntry | None = None


@dataclass
class LoadResult:
    """What executing one target's plan did."""

    outcomes: list[Outcome] = field(default_factory=list)
    quarantined: str | None = None

    def counts(self) -> dict[str, dict[str, int]]:
        """{op: {succeeded: n, failed: n, skipped: n}} for the ops that occurred."""
        out: dict[str, dict[str, int]] = {}
        for outcome in self.outcomes:
            per_op = out.setdefault(outcome.op, {"succeeded": 0, "failed": 0, "skipped": 0})
            per_op[outcome.status] = per_op.get(outcome.status, 0) + 1
        return out

    @property
    def failed(self) -> int:
        return sum(o.status == "failed" for o in self.outcomes)

    @property
    def status(self) -> str:
        if self.quarantined:
            return "failed"
        done = ("succeeded", "rejected")
        return "partial" if any(o.status not in done for o in self.outcomes) else "succeeded"


def _changes(row: dict, column: str = "after") -> dict[str, str]:
    values = json.loads(row[column] or "{}")
    return {k: str(v) for k, v in values.items() if v is not None}


class _Accounts:
    """Which name addresses each account while the plan runs, and which creations failed.

    Plan rows name existing accounts as they are called now; a rename that succeeds moves
    every later row for the same key to the new name.
    """

    def __init__(self, rows: list[dict]) -> None:
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()
        self.failed_sources: set[str] = set()
        self.failed_groups: set[str] = set()
        #: accounts whose lead roles could not all be handed over (not deactivated then)
        self.failed_handovers: set[str] = set()

    def name(self, row: dict) -> str:
        with self._lock:
            return (
                self._names.get(row["target_key"], row["username"])
                if row["target_key"]
                else row["username"]
            )

    def renamed(self, key: str, name: str) -> None:
        with self._lock:
            self._names[key] = name


def _run_one(target: Target, row: dict, accounts: _Accounts) -> Outcome:
    """Perform one operation; translate its result into an outcome and a ledger entry."""
    op, seq = row["op"], int(row["seq"])
    group = row["group"]
    username = accounts.name(row)
    source_id = row["source_id"] or None
    entry: LedgerEntry | None = None
    if op == "create_group":
        try:
            target.create_group(group)
        except TargetConflictError:
            # Created meanwhile (another profile syncing the same instance, an admin): the
            # plan wanted the group to exist, and it does.
            log.info(
                "%s: group %s already exists (created since the plan was made)", target.name, group
            )
        entry = LedgerEntry("group", group.casefold(), group)
    elif op in ("adopt_user", "relink_user"):
        origin = "adopted" if op == "adopt_user" else "created"
        entry = LedgerEntry("user", row["target_key"], row["username"], source_id, origin=origin)
    elif op == "create_user":
        after = _changes(row)
        key = target.create_user(after["username"], after.get("email", ""), after["display_name"])
        entry = LedgerEntry("user", key, after["username"], source_id)
        custom = {k: v for k, v in after.items() if k.startswith(CUSTOM_PREFIX)}
        if custom:
            # The account exists and is linked whatever happens next; a refused attribute
            # fails this operation and is written by the next run's update.
            try:
                target.update_user(after["username"], custom, after)
            except Exception as exc:
                return Outcome(
                    seq, op, "failed", f"created, but its custom attributes: {exc}", ledger=entry
                )
    elif op == "update_user":
        changes = _changes(row)
        target.update_user(username, changes, _changes(row, "desired"))
        new_name = changes.get("username", username)
        if "username" in changes:
            accounts.renamed(row["target_key"], new_name)
        entry = LedgerEntry("user", row["target_key"], new_name, source_id, "adopted")
    elif op == "reactivate_user":
        target.reactivate_user(username)
    elif op == "reassign_lead":
        role, after = _changes(row, "before"), _changes(row)
        target.reassign_lead(role["kind"], role["id"], after["lead"])
    elif op == "deactivate_user":
        target.deactivate_user(username)
    elif op == "add_membership":
        target.add_member(group, username)
    elif op == "remove_membership":
        target.remove_member(group, username)
    else:  # pragma: no cover - the planner only emits OPERATIONS
        raise ValueError(f"unknown operation {op!r}")
    return Outcome(seq, op, "succeeded", ledger=entry)


#: One operation's row and what became of it: its outcome, or what it raised.
Result = tuple[dict, "Outcome | Exception"]


def _attempt(target: Target, rows: Sequence[dict], accounts: _Accounts) -> list[Result]:
    """Run one operation (a one-row list); what it raised is its result, not the caller's."""
    (row,) = rows
    try:
        return [(row, _run_one(target, row, accounts))]
    except Exception as exc:  # one operation's failure, whatever it is, stays its own
        return [(row, exc)]


def _add_members(target: Target, rows: Sequence[dict], accounts: _Accounts) -> list[Result]:
    """Add the members of one group (`rows`) in one bulk call; if it is refused, one by one.

    A refusal that stops the target (credentials, deadline, no answer) fails every row; any
    other refusal of the call (a user deleted since the plan makes Bitbucket refuse them all)
    is settled row by row, so only the bad row fails.
    """
    group = rows[0]["group"]
    try:
        target.add_members(group, [accounts.name(row) for row in rows])  # type: ignore[attr-defined]
    except QUARANTINE_ERRORS as exc:
        return [(row, exc) for row in rows]
    except Exception as exc:
        if len(rows) == 1:
            return [(rows[0], exc)]
        log.info(
            "%s: adding %d members to %s in one call failed (%s); adding them one by one",
            target.name,
            len(rows),
            group,
            exc,
        )
        results: list[Result] = []
        for row in rows:
            stop = next((r for _, r in results if isinstance(r, QUARANTINE_ERRORS)), None)
            results += [(row, stop)] if stop is not None else _attempt(target, [row], accounts)
        return results
    return [(row, Outcome(int(row["seq"]), row["op"], "succeeded")) for row in rows]


def _units(
    target: Target, op: str, rows: list[dict]
) -> list[tuple[Callable[[Target, Sequence[dict], _Accounts], list[Result]], list[dict]]]:
    """The calls a phase's runnable rows become: one per row, or bulk membership calls."""
    if op != "add_membership" or not offers(target, BulkMembershipWriter):
        return [(_attempt, [row]) for row in rows]
    size = members_per_call(target)
    by_group: dict[str, list[dict]] = {}
    for row in rows:
        by_group.setdefault(row["group"].casefold(), []).append(row)
    return [
        (_add_members, members[start : start + size])
        for members in by_group.values()
        for start in range(0, len(members), size)
    ]


def execute_plan(
    target: Target,
    plan: pd.DataFrame,
    *,
    max_workers: int = 4,
    on_outcomes: Callable[[list[Outcome]], None] | None = None,
    revoking_groups: Collection[str] = (),
) -> LoadResult:
    """Run `plan` against `target`, revocations first.

    Every failure stays with its operation and its true dependants: only the memberships of
    an account whose creation failed, and those of a group whose creation failed, are
    skipped. A failed update never holds back a deactivation or a membership removal of the
    same account (revoking access does not wait on an unrelated write). Any exception, not
    only the target errors usersync expects, fails its operation alone.

    Args:
        target: the open target client.
        plan: the planner's operations (`model.PLAN_COLUMNS`).
        max_workers: calls in flight at once within one kind of operation.
        on_outcomes: called after each phase with its outcomes (to record them as they happen).
        revoking_groups: case-folded names of the groups whose removals run in the first phase
            with the deactivations (the product's privileged and access groups).

    Returns:
        Every operation's outcome and whether the target was quarantined.
    """
    rows = plan.astype(object).where(plan.notna(), "").to_dict("records")
    phases = _phases(rows, {str(g).casefold() for g in revoking_groups})
    return cooperative.run(lambda: _execute(target, rows, phases, max_workers, on_outcomes))


def _phases(rows: list[dict], revoking_groups: set[str]) -> list[tuple[str, list[dict]]]:
    """The plan's rows in the order they run: revocations, then each kind of `OPERATIONS`.

    A revocation is a deactivation of an account no hand-over is planned for (Jira refuses
    to deactivate a lead, so those wait for their `reassign_lead`) or a removal from one of
    `revoking_groups`. Each phase holds one kind of operation, so that bulk membership calls
    and the skip rules keep working phase by phase."""
    leads = {r["target_key"] for r in rows if r["op"] == "reassign_lead"}

    def revokes(row: dict) -> bool:
        if row["op"] == "deactivate_user":
            return row["target_key"] not in leads
        return row["op"] == "remove_membership" and row["group"].casefold() in revoking_groups

    first = [r for r in rows if revokes(r)]
    rest = [r for r in rows if not revokes(r)]
    return [
        *(
            (op, [r for r in first if r["op"] == op])
            for op in ("deactivate_user", "remove_membership")
        ),
        *((op, [r for r in rest if r["op"] == op]) for op in OPERATIONS),
    ]


def _execute(
    target: Target,
    rows: list[dict],
    phases: list[tuple[str, list[dict]]],
    max_workers: int,
    on_outcomes: Callable[[list[Outcome]], None] | None,
) -> LoadResult:
    """`execute_plan`'s phases, on the loop of `cooperative.run`."""
    result = LoadResult()
    accounts = _Accounts(rows)
    for op, phase in phases:
        if not phase:
            continue
        outcomes: list[Outcome] = []
        runnable = []
        for row in phase:
            reason = _skip_reason(row, result.quarantined, accounts)
            if reason:
                outcomes.append(Outcome(int(row["seq"]), op, "skipped", reason))
            else:
                runnable.append(row)
        calls = [
            functools.partial(run, target, unit, accounts)
            for run, unit in _units(target, op, runnable)
        ]
        done_calls = cooperative.gather(calls, limit=max_workers)
        for row, done in [pair for pairs in done_calls for pair in pairs]:
            if isinstance(done, Outcome):
                outcomes.append(done)
                continue
            text = (
                str(done)
                if isinstance(done, TargetError)
                else (f"unexpected {type(done).__name__}: {done}")
            )
            status = "rejected" if _refuses_the_data(op, done) else "failed"
            outcomes.append(Outcome(int(row["seq"]), op, status, text))
            if op == "create_user" and row["source_id"]:
                accounts.failed_sources.add(row["source_id"])
            if op == "create_group":
                accounts.failed_groups.add(row["group"].casefold())
            if op == "reassign_lead":
                accounts.failed_handovers.add(row["target_key"])
            if isinstance(done, QUARANTINE_ERRORS) and not result.quarantined:
                result.quarantined = str(done)
        outcomes.sort(key=lambda o: o.seq)
        result.outcomes.extend(outcomes)
        if on_outcomes:
            on_outcomes(outcomes)
    return result


#: Operations whose refusal (a 4xx about the request) is about one user's data.
USER_DATA_OPERATIONS = ("create_user", "update_user")


def _refuses_the_data(op: str, error: BaseException) -> bool:
    """Whether the product refused this user's data (not the transport, the credentials, the
    licence or a name taken): a rejection to list and remember, not a failed run."""
    return (
        op in USER_DATA_OPERATIONS
        and isinstance(error, TargetRejectedError)
        and not isinstance(error, TargetLicenceError)
        and (error.status is None or 400 <= error.status < 500)
    )


def _skip_reason(row: dict, quarantined: str | None, accounts: _Accounts) -> str | None:
    if quarantined:
        return f"skipped: target quarantined after: {quarantined}"
    if row["op"] in ("add_membership", "remove_membership"):
        if not row["target_key"] and row["source_id"] in accounts.failed_sources:
            return f"skipped: creating user {row['username']} failed"
        if row["group"].casefold() in accounts.failed_groups:
            return f"skipped: creating group {row['group']} failed"
    if row["op"] == "deactivate_user" and row["target_key"] in accounts.failed_handovers:
        return (
            f"skipped: handing over what {row['username']} leads failed (the product refuses "
            "to deactivate a project lead)"
        )
    return None


__all__ = ["LoadResult", "Outcome", "execute_plan"]
