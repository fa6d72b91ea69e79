"""Benchmark: the mapping step and the planner on a 100k-user estate, first with a delta, then with none.

Generates a source snapshot (default 100,000 users, 2,000 groups, 1,000,000 memberships) and
maps it with the shipped attribute table and a groups table of one on-the-fly rule (`*`) and
one default group, which is what a previous sync made the target hold: the target state and
the ledger are built from that desired state (every account created by usersync). Then the
standard delta is applied to the source (1% of users deleted, 1% created with memberships like
the others', 5% modified: display name, and e-mail for a third of them, a few renames, and
`--membership-churn` of the memberships moved), and it times:

- `usersync.mapping.desired_state` on the changed snapshot;
- `usersync.plan.plan_changes` against the target as it stands, printing the plan's op counts
  and checking them against the delta;
- the second run: the target and ledger as the plan leaves them, which must plan zero ops.

Inputs are canonical frames (`usersync.model.conform`), so each step sees what a sync gives it.
Figures are noisy: compare within one run.

    .venv/bin/python bench/plan.py [--users 100000] [--groups 2000] [--memberships 1000000]
        [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pandas as pd

from usersync.config import SyncSettings
from usersync.mapping import (
    DEFAULT_ATTRIBUTES_CSV,
    MappingTables,
    desired_state,
    parse_attributes,
    parse_groups,
)
from usersync.model import (
    LEDGER_COLUMNS,
    SOURCE_GROUP_COLUMNS,
    SOURCE_MEMBERSHIP_COLUMNS,
    SOURCE_USER_COLUMNS,
    TARGET_GROUP_COLUMNS,
    TARGET_MEMBERSHIP_COLUMNS,
    TARGET_USER_COLUMNS,
    DesiredState,
    SourceSnapshot,
    TargetState,
    conform,
)
from usersync.plan import PlanInput, plan_changes

TARGET = "jira"
DEFAULT_GROUP = "jira-software-users"
GROUPS_CSV = f"""source_group,target_group,mode,targets
*,,on-the-fly,
,{DEFAULT_GROUP},default,
"""
PEOPLE = "ou=people,dc=example,dc=org"
SEED = 20240611
T = TypeVar("T")


def source_id(number: int) -> str:
    return f"{number:08x}-0000-4000-8000-{number:012x}"


def users_frame(numbers: np.ndarray) -> pd.DataFrame:
    """Active source users numbered `numbers`, with uid, mail and displayName."""
    uid = pd.Series([f"u{n:07d}" for n in numbers], dtype="string")
    display = [f"Given{n % 997} Family{n}" for n in numbers]
    frame = pd.DataFrame(
        {
            "source_id": pd.Series([source_id(n) for n in numbers], dtype="string"),
            "locator": "uid=" + uid + f",{PEOPLE}",
            "active": pd.Series(True, index=uid.index, dtype="boolean"),
            "uid": uid,
            "mail": uid + "@example.org",
            "displayName": pd.Series(display, dtype="string"),
        }
    )
    return conform(frame, SOURCE_USER_COLUMNS, what="bench users")


def memberships_frame(users: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "source_id": pd.Series([source_id(n) for n in users], dtype="string"),
            "source_group": pd.Series([f"g{n:05d}" for n in groups], dtype="string"),
        }
    )
    return conform(frame, SOURCE_MEMBERSHIP_COLUMNS, what="bench memberships")


def random_pairs(rng: np.random.Generator, users: np.ndarray, groups: int, count: int):
    """`count` distinct (user, group) pairs drawn from `users` × range(groups)."""
    codes = rng.choice(len(users) * groups, size=count, replace=False)
    return users[codes % len(users)], codes // len(users)


def target_after(desired: DesiredState, keys: dict[str, str], gone: pd.DataFrame) -> TargetState:
    """The target as a sync of `desired` leaves it; `gone`: earlier accounts now deactivated."""
    users = desired.users.assign(target_key=desired.users["source_id"].map(keys))
    users = pd.concat([users, gone], ignore_index=True)
    return TargetState(
        users=conform(users[list(TARGET_USER_COLUMNS)], TARGET_USER_COLUMNS, what="target users"),
        groups=conform(desired.groups, TARGET_GROUP_COLUMNS, what="target groups"),
        memberships=conform(
            desired.memberships[list(TARGET_MEMBERSHIP_COLUMNS)],
            TARGET_MEMBERSHIP_COLUMNS,
            what="target memberships",
        ),
    )


def ledger_for(target: TargetState, keys: dict[str, str]) -> pd.DataFrame:
    """Every account of `target` (source id -> key in `keys`) and group, as created by usersync."""
    users = target.users
    owners = {key: sid for sid, key in keys.items()}
    groups = target.groups["group"]
    user_rows = pd.DataFrame(
        {
            "kind": "user",
            "source_id": users["target_key"].map(owners),
            "target_key": users["target_key"],
            "name": users["username"],
            "origin": "created",
        }
    )
    group_rows = pd.DataFrame(
        {
            "kind": "group",
            "source_id": "",
            "target_key": groups,
            "name": groups,
            "origin": "created",
        }
    )
    frame = pd.concat([user_rows, group_rows], ignore_index=True)
    return conform(frame, LEDGER_COLUMNS, what="bench ledger")


def timed(repeat: int, step: Callable[[], T]) -> tuple[float, T]:
    """The best of `repeat` runs of `step`, in seconds, and its last result."""
    best = float("inf")
    for _ in range(repeat):
        began = time.monotonic()
        result = step()
        best = min(best, time.monotonic() - began)
    return best, result


def current_rss_mb() -> float:
    """The process's resident memory now, in MB (Linux: /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def counts(plan: pd.DataFrame) -> dict[str, int]:
    return {str(op): int(n) for op, n in plan["op"].value_counts().sort_index().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=2_000)
    parser.add_argument("--memberships", type=int, default=1_000_000)
    parser.add_argument("--deleted", type=float, default=0.01, help="share of users deleted")
    parser.add_argument("--created", type=float, default=0.01, help="share of users created")
    parser.add_argument("--modified", type=float, default=0.05, help="share of users modified")
    parser.add_argument("--renames", type=int, default=20, help="users whose uid changes")
    parser.add_argument(
        "--membership-churn", type=float, default=0.01, help="share of memberships moved"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per timed step (best)")
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    tables = MappingTables(
        parse_attributes(DEFAULT_ATTRIBUTES_CSV), parse_groups(GROUPS_CSV, target_names=[TARGET])
    )
    settings = SyncSettings()

    # -- the estate as the previous sync left it ------------------------------------------
    began = time.monotonic()
    numbers = np.arange(args.users)
    member_users, member_groups = random_pairs(rng, numbers, args.groups, args.memberships)
    group_names = pd.Series([f"g{n:05d}" for n in range(args.groups)], dtype="string")
    groups = conform(
        pd.DataFrame({"source_group_id": group_names + "-id", "source_group": group_names}),
        SOURCE_GROUP_COLUMNS,
        what="bench groups",
    )
    before = SourceSnapshot(
        users=users_frame(numbers),
        groups=groups,
        memberships=memberships_frame(member_users, member_groups),
        source_kind="bench",
    )
    previous = desired_state(before, tables, TARGET)
    keys = {sid: f"JIRAUSER{10000 + i}" for i, sid in enumerate(before.users["source_id"])}
    no_users = pd.DataFrame(columns=list(TARGET_USER_COLUMNS))
    actual = target_after(previous, keys, no_users)
    ledger = ledger_for(actual, keys)
    print(
        f"estate: {len(before.users)} users, {len(groups)} groups, "
        f"{len(before.memberships)} source memberships -> {len(actual.memberships)} in the "
        f"target (with {DEFAULT_GROUP}); built in {time.monotonic() - began:.1f} s"
    )

    # The snapshot the estate was mapped from is not read again (a sync holds one snapshot).
    previous_users = previous.users
    del before, previous

    # -- the delta ----------------------------------------------------------------------
    shuffled = rng.permutation(numbers)
    n_deleted = round(args.users * args.deleted)
    n_modified = round(args.users * args.modified)
    deleted = np.sort(shuffled[:n_deleted])
    modified = np.sort(shuffled[n_deleted : n_deleted + n_modified])
    renamed = np.sort(shuffled[n_deleted + n_modified : n_deleted + n_modified + args.renames])
    created = np.arange(args.users, args.users + round(args.users * args.created))
    survivors = np.setdiff1d(numbers, deleted)

    users = users_frame(np.concatenate([survivors, created]))
    number = pd.Series(np.concatenate([survivors, created]))
    is_modified = number.isin(modified)
    users.loc[is_modified, "displayName"] = users.loc[is_modified, "displayName"] + " (changed)"
    mail_changed = number.isin(modified[::3])
    users.loc[mail_changed, "mail"] = "new." + users.loc[mail_changed, "mail"]
    is_renamed = number.isin(renamed)
    users.loc[is_renamed, "uid"] = users.loc[is_renamed, "uid"] + "r"

    kept = ~pd.Series(member_users).isin(deleted)
    n_churn = round(args.memberships * args.membership_churn)
    moved = rng.choice(np.flatnonzero(kept.to_numpy()), size=n_churn, replace=False)
    kept.iloc[moved] = False
    per_user = args.memberships // max(args.users, 1)
    new_users, new_groups = random_pairs(rng, created, args.groups, len(created) * per_user)
    churn_users, churn_groups = random_pairs(rng, survivors, args.groups, n_churn)
    # Pairs as one integer each (user × groups + group): a set of a million tuples would
    # weigh more than the planner's own working memory.
    is_fresh = ~np.isin(
        churn_users * args.groups + churn_groups, member_users * args.groups + member_groups
    )
    fresh_users, fresh_groups = churn_users[is_fresh], churn_groups[is_fresh]
    memberships = pd.concat(
        [
            memberships_frame(member_users[kept.to_numpy()], member_groups[kept.to_numpy()]),
            memberships_frame(new_users, new_groups),
            memberships_frame(fresh_users, fresh_groups),
        ],
        ignore_index=True,
    )
    after = SourceSnapshot(users=users, groups=groups, memberships=memberships, source_kind="bench")
    expected = {
        "add_membership": len(new_users) + len(created) + len(fresh_users),
        "create_user": len(created),
        "deactivate_user": len(deleted),
        "remove_membership": n_churn,
        "update_user": len(modified) + len(renamed),
    }
    print(
        f"delta: {len(deleted)} deleted, {len(created)} created, {len(modified)} modified "
        f"({len(modified[::3])} with a new e-mail), {len(renamed)} renamed, {n_churn} "
        f"memberships removed and {len(fresh_users)} added for existing users"
    )

    # -- first run: the delta -------------------------------------------------------------
    held = current_rss_mb()
    seconds, desired = timed(args.repeat, lambda: desired_state(after, tables, TARGET))
    print(
        f"desired_state: {seconds:.2f} s -> {len(desired.users)} users, {len(desired.groups)} "
        f"groups, {len(desired.memberships)} memberships, {len(desired.rejected)} rejected"
    )
    data = PlanInput(TARGET, desired, actual, ledger, settings, protected=("svc-usersync",))
    seconds, plan = timed(args.repeat, lambda: plan_changes(data).operations)
    got = counts(plan)
    print(f"plan_target (delta): {seconds:.2f} s -> {len(plan)} ops {got}")
    if got != expected:
        print(f"  WARNING: expected {expected}")

    # -- second run: the target as the plan left it -----------------------------------------
    for sid in desired.users["source_id"]:
        keys.setdefault(sid, f"JIRAUSER{10000 + len(keys)}")
    gone = previous_users[previous_users["source_id"].isin([source_id(n) for n in deleted])]
    gone = gone.assign(target_key=gone["source_id"].map(keys), active=False)
    actual_2 = target_after(desired, keys, gone[list(TARGET_USER_COLUMNS)])
    ledger_2 = ledger_for(actual_2, keys)
    data_2 = PlanInput(TARGET, desired, actual_2, ledger_2, settings, protected=("svc-usersync",))
    seconds, plan_2 = timed(args.repeat, lambda: plan_changes(data_2).operations)
    print(f"plan_target (second run, nothing changed): {seconds:.2f} s -> {len(plan_2)} ops")
    if len(plan_2):
        print(f"  WARNING: expected no ops, got {counts(plan_2)}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MB (RSS before the first timed step: {held:.0f} MB)")


if __name__ == "__main__":
    main()
