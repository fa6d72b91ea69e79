"""Delta runs: plan from what changed since the last runs wrote, reading only those accounts.

A *reconcile* run reads every desired account and every managed group from the product and
repairs whatever differs, hand-made drift included: its cost grows with the directory. A
*delta* run compares the desired state with what the store knows the last runs wrote to this
product (`AppliedRecord`: a fingerprint per linked account, with its key, name and active flag,
and one per managed group's member set) and reads from the product only the accounts and groups
whose fingerprint moved, to check them first. Everything else is taken as written (`actual_of`
builds it from the desired state), so the planner is the same one and decides the same way; a
delta run whose plan would touch anything outside what changed is not trusted and reconciles.

A delta run becomes a reconcile run, and says why (`reconcile_reason`), when nothing was
written yet, when the last reconcile is older than `settings.reconcile_interval_hours`, when
the profile's settings or mapped columns changed since, or when an account it reads is not what
the store says was written (deleted, renamed, (de)activated by hand). A hand edit of a value
(an e-mail changed in the product) is not seen by a delta run: the next reconcile repairs it.

The fingerprints are pandas' stable row hashes over the values a product holds (user names and
e-mail addresses case-folded, as the planner compares them); `GONE` marks an account or group
that should not be there (a leaver deactivated, a group no rule maps any more).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from usersync.config import Profile
from usersync.model import (
    CUSTOM_PREFIX,
    TARGET_MEMBERSHIP_COLUMNS,
    TARGET_USER_COLUMNS,
    DesiredState,
    TargetState,
    conform,
)
from usersync.store import AppliedRecord

#: The fingerprint of an account or group that should not be there.
GONE = 0
#: The fingerprint of a rejected user the source has active: nothing is written to its
#: account (it keeps what it has), yet it is not `GONE`: should the user leave, its account is
#: deactivated (deprovisioning wins over rejection), so leaving must move its fingerprint.
KEPT = 2
#: The run kinds.
RECONCILE = "reconcile"
DELTA = "delta"
RUN_MODES = (DELTA, RECONCILE)

#: What the fingerprint of an account covers (plus its `custom:` columns).
USER_VALUES = ("username", "email", "display_name", "active")


def _hashes(frame: pd.DataFrame) -> np.ndarray:
    """One int64 per row, never `GONE`."""
    if not len(frame):
        return np.zeros(0, dtype="int64")
    out = pd.util.hash_pandas_object(frame, index=False).to_numpy().view("int64").copy()
    out[out == GONE] = 1
    out[out == KEPT] = 3
    return out


def user_columns(users: pd.DataFrame) -> list[str]:
    """The columns an account's fingerprint covers, in a fixed order."""
    custom = sorted(c for c in users.columns if c.startswith(CUSTOM_PREFIX))
    return [c for c in USER_VALUES if c in users.columns] + custom


def user_fingerprints(users: pd.DataFrame, rejected: pd.DataFrame | None = None) -> pd.Series:
    """Each desired user's fingerprint (int64), and `KEPT` for each rejected user the source
    has active (`rejected`: `DesiredState.rejected`), indexed by source id."""
    columns = user_columns(users)
    values = pd.DataFrame({c: users[c].astype("string") for c in columns})
    for column in ("username", "email"):
        if column in values:
            values[column] = values[column].str.casefold()
    out = pd.Series(_hashes(values), index=pd.Index(users["source_id"].astype(str)))
    if rejected is None or not len(rejected) or "active" not in rejected:
        return out
    # An unknown flag counts as disabled, as the planner counts it (the account is deactivated).
    active = rejected["active"].astype("boolean").fillna(False).astype(bool)
    kept = rejected.loc[active.to_numpy(), "source_id"].dropna().astype(str)
    kept = pd.Index(kept[~kept.isin(out.index)].drop_duplicates())
    return pd.concat([out, pd.Series(KEPT, index=kept, dtype="int64")])


def group_fingerprints(desired: DesiredState) -> pd.Series:
    """Each desired group's fingerprint (int64) over its flags and its member set, indexed by
    the case-folded group name. Order-free: the members' hashes are summed."""
    groups = desired.groups
    keys = groups["group"].astype("string").str.casefold()
    flags = groups.drop(columns=["group"]).astype("string")
    own = pd.Series(
        _hashes(flags.assign(_key=keys.to_numpy()))
        if len(flags.columns)
        else _hashes(keys.to_frame()),
        index=keys.to_numpy(),
    )
    own = own[~own.index.duplicated()]
    members = desired.memberships
    if len(members):
        extra = [c for c in members.columns if c not in ("source_id", "username", "group")]
        rows = pd.DataFrame(
            {
                "source_id": members["source_id"].astype("string"),
                **{c: members[c].astype("string") for c in extra},
            }
        )
        member_keys = members["group"].astype("string").str.casefold().to_numpy()
        summed = pd.Series(_hashes(rows).view("uint64")).groupby(member_keys).sum()
        total = own.reindex(own.index.union(summed.index)).fillna(0).to_numpy().astype("int64")
        added = summed.reindex(own.index.union(summed.index)).fillna(0).to_numpy()
        with np.errstate(over="ignore"):
            mixed = total.view("uint64") + added.astype("uint64")
        own = pd.Series(mixed.view("int64"), index=own.index.union(summed.index))
    own[own == GONE] = 1
    return own


def basis_of(profile: Profile, target: str, desired: DesiredState) -> str:
    """The fingerprint of what the account and group fingerprints depend on besides the data:
    the target's settings, the profile's settings and the users' columns."""
    settings = {
        "target": profile.targets[target].model_dump(mode="json"),
        "settings": profile.settings.model_dump(mode="json"),
        "columns": user_columns(desired.users),
    }
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def reconcile_due(reconciled_at: datetime | None, now: datetime, interval_hours: float) -> bool:
    """Whether a product's last reconcile (None: never) is older than the profile's interval."""
    return reconciled_at is None or now - reconciled_at > timedelta(hours=interval_hours)


def reconcile_reason(
    record: AppliedRecord | None, basis: str, now: datetime, interval_hours: float
) -> str | None:
    """Why a delta run must read everything instead; None when a delta run may go on."""
    if record is None:
        return "nothing was written to this product by a run yet (its first run reconciles)"
    if record.reconciled_at is None:
        return "no reconcile run of this product has ended without a failure yet"
    if record.basis != basis:
        return "the profile's settings or mapped columns changed since the last run"
    if reconcile_due(record.reconciled_at, now, interval_hours):
        hours = (now - record.reconciled_at).total_seconds() / 3600
        return (
            f"the last reconcile ended {hours:.1f} h ago, longer than "
            f"settings.reconcile_interval_hours={interval_hours:g}"
        )
    return None


@dataclass(frozen=True)
class Scope:
    """What a delta run reads and may change: the accounts and groups whose fingerprint moved."""

    #: source ids of the users that changed (new, changed, gone, or not written last time)
    users: frozenset[str]
    #: case-folded names of the groups whose member set or flags changed
    groups: frozenset[str]
    #: what to ask the product for: user names (desired and last written), keys, group names
    usernames: tuple[str, ...]
    keys: tuple[str, ...]
    group_names: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.users and not self.groups


def scope_of(
    desired: DesiredState,
    users_fp: pd.Series,
    groups_fp: pd.Series,
    ledger: pd.DataFrame,
    record: AppliedRecord,
    only: frozenset[str] | None = None,
) -> Scope:
    """The users and groups whose fingerprint differs from what was written.

    `only` (source ids): a delta run scoped to these identities (an offboarding) reads and
    plans those of them that changed, and no group: the groups whose member set moved keep
    their old fingerprints, so the next delta run reads them."""
    written_users = pd.Series(
        record.users["fingerprint"].to_numpy(), index=record.users["source_id"].astype(str)
    )
    linked = ledger.loc[ledger["kind"] == "user"]
    ids = pd.Index(users_fp.index).union(linked["source_id"].dropna().astype(str))
    ids = ids.union(written_users.index)
    want = users_fp.reindex(ids).fillna(GONE).astype("int64")
    have = written_users[~written_users.index.duplicated()].reindex(ids)
    changed_users = frozenset(ids[(have.isna() | (have != want)).to_numpy()])

    written_groups = pd.Series(
        record.groups["fingerprint"].to_numpy(), index=record.groups["group"].astype(str)
    )
    managed = ledger.loc[ledger["kind"] == "group", "name"].dropna().astype("string").str.casefold()
    names = pd.Index(groups_fp.index).union(pd.Index(managed)).union(written_groups.index)
    want_g = groups_fp.reindex(names).fillna(GONE).astype("int64")
    have_g = written_groups[~written_groups.index.duplicated()].reindex(names)
    changed_groups = frozenset(names[(have_g.isna() | (have_g != want_g)).to_numpy()])
    if only is not None:
        changed_users, changed_groups = changed_users & only, frozenset()

    users = desired.users
    mine = users.loc[users["source_id"].astype(str).isin(changed_users)]
    mine_linked = linked.loc[linked["source_id"].astype(str).isin(changed_users)]
    usernames = [*mine["username"].dropna().astype(str), *mine_linked["name"].dropna().astype(str)]
    group_rows = desired.groups.loc[
        desired.groups["group"].astype("string").str.casefold().isin(changed_groups), "group"
    ]
    ledger_groups = ledger.loc[
        (ledger["kind"] == "group")
        & ledger["name"].astype("string").str.casefold().isin(changed_groups),
        "name",
    ]
    group_names = [*group_rows.dropna().astype(str), *ledger_groups.dropna().astype(str)]
    return Scope(
        users=changed_users,
        groups=changed_groups,
        usernames=tuple(dict.fromkeys(n.casefold() for n in usernames)),
        keys=tuple(dict.fromkeys(mine_linked["target_key"].dropna().astype(str))),
        group_names=tuple(dict.fromkeys(group_names)),
    )


def inconsistency(read: TargetState, scope: Scope, record: AppliedRecord) -> str | None:
    """Whether an account the run read is not what the store says was written (deleted,
    renamed or (de)activated by hand); None when every one is."""
    written = record.users.loc[
        record.users["source_id"].astype(str).isin(scope.users)
        & (record.users["fingerprint"] != GONE)
    ]
    if not len(written):
        return None
    found = read.users.set_index(read.users["target_key"].astype(str))
    found = found[~found.index.duplicated()]
    problems = []
    for key, name, active in zip(
        written["target_key"].astype(str),
        written["name"].astype(str),
        written["active"],
        strict=True,
    ):
        if key not in found.index:
            problems.append(f"{name} (deleted, or its key changed)")
            continue
        row = found.loc[key]
        if str(row["username"]).casefold() != name.casefold():
            problems.append(f"{name} (now called {row['username']})")
        elif not pd.isna(row["active"]) and bool(row["active"]) != bool(active):
            problems.append(f"{name} ({'activated' if row['active'] else 'deactivated'} by hand)")
    if not problems:
        return None
    shown = ", ".join(problems[:5]) + (
        f" and {len(problems) - 5} more" if len(problems) > 5 else ""
    )
    return f"the product differs from what the last run wrote: {shown}"


def actual_of(
    desired: DesiredState,
    ledger: pd.DataFrame,
    read: TargetState,
    scope: Scope,
) -> TargetState:
    """The product as a delta run takes it: what it read for the scope, and, for every other
    linked account and managed group, what was written last (the desired values: their
    fingerprints did not move)."""
    linked = ledger.loc[ledger["kind"] == "user", ["source_id", "target_key"]].dropna()
    linked = linked.loc[~linked["source_id"].astype(str).isin(scope.users)]
    linked = linked.drop_duplicates("source_id")
    users = desired.users.assign(source_id=desired.users["source_id"].astype("string"))
    kept = users.merge(linked.astype({"source_id": "string"}), on="source_id", how="inner")
    kept = kept.loc[~kept["target_key"].astype(str).isin(set(read.users["target_key"].dropna()))]
    custom = [c for c in read.users.columns if c.startswith(CUSTOM_PREFIX)]
    columns = {**TARGET_USER_COLUMNS, **{c: "string" for c in custom}}
    written_users = conform(
        kept[[c for c in columns if c in kept.columns]], columns, what="written users"
    )
    all_users = pd.concat([read.users, written_users], ignore_index=True)

    # Memberships of the groups that did not change: the desired ones of linked accounts, under
    # the name each account has in the product now.
    name_of = dict(
        zip(all_users["target_key"].astype(str), all_users["username"].astype(str), strict=True)
    )
    key_of = dict(
        zip(linked["source_id"].astype(str), linked["target_key"].astype(str), strict=True)
    )
    key_of.update(
        dict(
            zip(
                ledger.loc[ledger["kind"] == "user", "source_id"].dropna().astype(str),
                ledger.loc[ledger["kind"] == "user"]
                .dropna(subset=["source_id"])["target_key"]
                .astype(str),
                strict=True,
            )
        )
    )
    members = desired.memberships
    if "once" in members.columns:
        members = members.loc[~members["once"].fillna(False).astype(bool)]
    gkeys = members["group"].astype("string").str.casefold()
    unchanged = members.loc[~gkeys.isin(scope.groups).to_numpy()]
    keys = unchanged["source_id"].astype(str).map(key_of)
    names = keys.map(name_of)
    written_members = pd.DataFrame({"username": names, "group": unchanged["group"]}).dropna()
    memberships = pd.concat(
        [read.memberships, conform(written_members, TARGET_MEMBERSHIP_COLUMNS, what="members")],
        ignore_index=True,
    )
    groups_read = set(read.groups["group"].astype("string").str.casefold())
    unchanged_groups = desired.groups.loc[
        ~desired.groups["group"].astype("string").str.casefold().isin(scope.groups | groups_read),
        ["group"],
    ]
    groups = pd.concat([read.groups, unchanged_groups], ignore_index=True)
    return TargetState(users=all_users, groups=groups, memberships=memberships, leads=read.leads)


def strays(plan: pd.DataFrame, scope: Scope, ledger: pd.DataFrame) -> pd.DataFrame:
    """Operations of a delta plan about an account or group outside the scope (none, unless
    what was taken as written is not what the product holds)."""
    if not len(plan):
        return plan
    key_to_source = dict(
        zip(
            ledger.loc[ledger["kind"] == "user", "target_key"].astype(str),
            ledger.loc[ledger["kind"] == "user", "source_id"].astype(str),
            strict=True,
        )
    )
    source = plan["source_id"].astype("string").fillna("")
    source = source.where(
        source != "", plan["target_key"].astype(str).map(key_to_source).astype("string").fillna("")
    )
    in_users = source.isin(scope.users)
    group = plan["group"].astype("string").fillna("").str.casefold()
    in_groups = (group != "") & group.isin(scope.groups)
    return plan.loc[~(in_users | in_groups).to_numpy()]


def next_record(
    *,
    previous: AppliedRecord | None,
    scope: Scope | None,
    desired: DesiredState,
    users_fp: pd.Series,
    groups_fp: pd.Series,
    ledger: pd.DataFrame,
    plan: pd.DataFrame,
    failed_seqs: set[int],
    basis: str,
    now: datetime,
    reconciled: bool,
    conflicts: pd.DataFrame | None = None,
) -> AppliedRecord:
    """What the store knows was written once a load is done: for what the run covered (all
    of it in a reconcile run, the scope in a delta run), the desired fingerprints of linked
    accounts and managed groups, `GONE` for the linked accounts and groups no longer desired;
    nothing for an account or group whose operations did not all succeed, nor for an account
    the plan listed as a conflict (a rename the product refused keeps the account's old name:
    it does not hold what the source says), so the next delta run reads it again. `ledger`:
    the ledger after the load."""
    bad = plan.loc[plan["seq"].isin(failed_seqs)] if len(plan) else plan
    bad_users = set(bad["source_id"].astype("string").dropna().astype(str)) if len(bad) else set()
    bad_keys = set(bad["target_key"].astype("string").dropna().astype(str)) if len(bad) else set()
    if conflicts is not None and len(conflicts):
        bad_users |= set(conflicts["source_id"].astype("string").dropna().astype(str)) - {""}
        bad_keys |= set(conflicts["target_key"].astype("string").dropna().astype(str)) - {""}
    if bad_keys:
        key_to_source = dict(
            zip(
                ledger.loc[ledger["kind"] == "user", "target_key"].astype(str),
                ledger.loc[ledger["kind"] == "user", "source_id"].astype(str),
                strict=True,
            )
        )
        bad_users |= {key_to_source[k] for k in bad_keys if k in key_to_source}
    bad_groups = (
        set(bad["group"].astype("string").dropna().str.casefold()) - {""} if len(bad) else set()
    )
    linked = ledger.loc[ledger["kind"] == "user"].dropna(subset=["source_id"])
    linked = linked.drop_duplicates("source_id", keep="last").set_index(
        linked.drop_duplicates("source_id", keep="last")["source_id"].astype(str)
    )
    desired_users = desired.users.set_index(desired.users["source_id"].astype(str))
    desired_users = desired_users[~desired_users.index.duplicated()]
    covered = (
        set(users_fp.index) | set(linked.index) if scope is None else set(scope.users)
    ) - bad_users
    # Only accounts linked now are recorded (a conflict or a refusal is read again next time).
    entries = linked.loc[linked.index.isin(covered)]
    sids = entries.index
    in_desired = sids.isin(desired_users.index)
    wanted = users_fp[~users_fp.index.duplicated()].reindex(sids)
    kept = ~in_desired & (wanted == KEPT).to_numpy()
    # What was last written of a kept (rejected, active) user's account: it still holds it.
    if previous is not None:
        before = previous.users.drop_duplicates("source_id", keep="last")
        was_active = before.set_index(before["source_id"].astype(str))["active"].reindex(sids)
    else:
        was_active = pd.Series(pd.NA, index=sids, dtype="boolean")
    kept_active = was_active.astype("boolean").fillna(True).to_numpy(dtype=bool)
    desired_rows = desired_users.reindex(sids)
    fresh = pd.DataFrame(
        {
            "source_id": sids,
            "fingerprint": np.where(
                in_desired, wanted.fillna(GONE).to_numpy(), np.where(kept, KEPT, GONE)
            ),
            "target_key": entries["target_key"].astype(str).to_numpy(),
            "name": np.where(
                in_desired,
                desired_rows["username"].astype(str).to_numpy(),
                entries["name"].astype(str).to_numpy(),
            ),
            "active": np.where(
                in_desired,
                desired_rows["active"].fillna(False).to_numpy(dtype=bool),
                kept & kept_active,
            ),
        }
    )

    managed = set(ledger.loc[ledger["kind"] == "group", "name"].dropna().astype(str).str.casefold())
    group_cover = (
        set(groups_fp.index) | managed if scope is None else set(scope.groups)
    ) - bad_groups
    group_rows = [(g, int(groups_fp[g]) if g in groups_fp.index else GONE) for g in group_cover]
    fresh_groups = pd.DataFrame(group_rows, columns=["group", "fingerprint"])

    if scope is not None and previous is not None:
        keep = previous.users.loc[~previous.users["source_id"].astype(str).isin(scope.users)]
        fresh = pd.concat([keep, fresh], ignore_index=True)
        keep_g = previous.groups.loc[~previous.groups["group"].astype(str).isin(scope.groups)]
        fresh_groups = pd.concat([keep_g, fresh_groups], ignore_index=True)
    users = pd.DataFrame(
        {
            "source_id": fresh["source_id"].astype("string"),
            "fingerprint": fresh["fingerprint"].astype("int64"),
            "target_key": fresh["target_key"].astype("string"),
            "name": fresh["name"].astype("string"),
            "active": fresh["active"].astype("boolean"),
        }
    )
    groups = pd.DataFrame(
        {
            "group": fresh_groups["group"].astype("string"),
            "fingerprint": fresh_groups["fingerprint"].astype("int64"),
        }
    )
    return AppliedRecord(
        users=users,
        groups=groups,
        basis=basis,
        reconciled_at=now if reconciled else (previous.reconciled_at if previous else None),
        applied_at=now,
    )
