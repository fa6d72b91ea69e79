"""Desired − target − ledger → an ordered table of operations, and the guards that stop a bad plan.

`plan_target` is a pure function: the same inputs give the same plan. It links each desired
user to a target account through the ledger (source id → product key, so renames update the
same account), else adopts an existing account with the same username (never a duplicate),
else creates one. Only accounts in the ledger are ever deactivated, and only memberships of
managed users in mapped groups are ever removed. Everything is computed with joins over whole
columns; no Python loop walks the directory. `check_deactivation_brake` refuses a plan that
would deactivate too many accounts at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from usersync.config import SyncSettings
from usersync.errors import GuardError
from usersync.model import (
    LEDGER_COLUMNS,
    OPERATIONS,
    PLAN_COLUMNS,
    DesiredState,
    TargetState,
    conform,
    empty_frame,
)

#: Share-of-managed brake applies only from this many managed accounts (small estates churn).
RATIO_BRAKE_MINIMUM = 20


@dataclass(frozen=True)
class PlanInput:
    """Everything the planner reads for one target."""

    target: str
    desired: DesiredState
    actual: TargetState
    ledger: pd.DataFrame
    settings: SyncSettings
    #: usernames never touched: the settings' list plus the target's own service account
    protected: tuple[str, ...] = ()


def _key(values: pd.Series) -> pd.Series:
    return values.astype("string").str.casefold()


def _json_columns(frame: pd.DataFrame, columns: list[str], renames: dict[str, str]) -> pd.Series:
    """One JSON object per row from the given columns, leaving out the missing values."""
    records = frame[columns].rename(columns=renames).to_dict("records")
    return pd.Series(
        [
            json.dumps({k: v for k, v in r.items() if not pd.isna(v)}, ensure_ascii=False)
            for r in records
        ],
        index=frame.index,
        dtype="string",
    )


def _ops(frame: pd.DataFrame, op: str, **columns: pd.Series | str) -> pd.DataFrame:
    out = pd.DataFrame(index=frame.index)
    for name in PLAN_COLUMNS:
        if name == "seq":
            continue
        value = columns.get(name, frame[name] if name in frame.columns else "")
        out[name] = value
    out["op"] = op
    return out


def plan_target(data: PlanInput) -> pd.DataFrame:
    """The operations that bring one target in line with the desired state.

    Returns:
        A frame with `model.PLAN_COLUMNS`, ordered by `model.OPERATIONS`, then username, group.
    """
    settings = data.settings
    desired = data.desired.users.assign(key=lambda f: _key(f["username"]))
    actual = data.actual.users.assign(key=lambda f: _key(f["username"]))
    ledger = (
        conform(data.ledger, LEDGER_COLUMNS, what="ledger")
        if len(data.ledger)
        else (empty_frame(LEDGER_COLUMNS))
    )
    ledger_users = ledger[ledger["kind"] == "user"][["source_id", "target_key"]]
    protected = set(_key(pd.Series(list(data.protected), dtype="string")))

    # Link: the ledger says which account a source id owns; the account must still exist.
    linked = desired.merge(ledger_users, on="source_id", how="left").merge(
        actual.rename(columns=lambda c: f"t_{c}"),
        left_on="target_key",
        right_on="t_target_key",
        how="left",
    )
    is_linked = linked["t_target_key"].notna()
    # Adopt: no live link, but an account with the same username exists and no other source
    # id owns it in the ledger.
    owned_keys = set(ledger_users["target_key"].dropna())
    unlinked = linked.loc[~is_linked, list(desired.columns)].merge(
        actual.rename(columns=lambda c: f"t_{c}"), left_on="key", right_on="t_key", how="left"
    )
    disputed = unlinked["t_target_key"].isin(owned_keys)
    adoptable = unlinked["t_target_key"].notna() & ~disputed
    matched = pd.concat(
        [linked.loc[is_linked].assign(how="linked"), unlinked.loc[adoptable].assign(how="adopted")],
        ignore_index=True,
    )
    missing = unlinked.loc[unlinked["t_target_key"].isna()]
    matched = matched.loc[~matched["t_key"].isin(protected) & ~matched["key"].isin(protected)]
    missing = missing.loc[~missing["key"].isin(protected)]

    parts: list[pd.DataFrame] = []
    target = data.target

    # Create accounts that do not exist; a user the source marks inactive is not created.
    to_create = missing.loc[missing["active"].fillna(False).astype(bool)]
    if settings.create_users and len(to_create):
        parts.append(
            _ops(
                to_create,
                "create_user",
                target=target,
                target_key="",
                group="",
                before="",
                after=_json_columns(to_create, ["username", "email", "display_name"], {}),
                reason="no account with this username",
            )
        )

    adopted = matched.loc[matched["how"] == "adopted"]
    if len(adopted):
        parts.append(
            _ops(
                adopted,
                "adopt_user",
                target=target,
                target_key=adopted["t_target_key"],
                group="",
                before="",
                after="",
                reason="existing account with the same username; usersync manages it from now",
            )
        )

    # Update attributes that differ. Case-only differences of username and e-mail are not
    # changes: the products store them case-insensitively.
    if settings.update_users and len(matched):
        rename = matched["key"] != matched["t_key"]
        email = (
            matched["email"].fillna("").str.casefold()
            != matched["t_email"].fillna("").str.casefold()
        )
        display = matched["display_name"].fillna("") != matched["t_display_name"].fillna("")
        changed = matched.loc[rename | email | display].copy()
        if len(changed):
            cols = {"username": rename, "email": email, "display_name": display}
            for name, mask in cols.items():
                changed[f"new_{name}"] = changed[name].where(mask.loc[changed.index])
                changed[f"old_{name}"] = changed[f"t_{name}"].where(mask.loc[changed.index])
            parts.append(
                _ops(
                    changed,
                    "update_user",
                    target=target,
                    target_key=changed["t_target_key"],
                    username=changed["t_username"],
                    group="",
                    before=_json_columns(
                        changed,
                        ["old_username", "old_email", "old_display_name"],
                        {f"old_{n}": n for n in cols},
                    ),
                    after=_json_columns(
                        changed,
                        ["new_username", "new_email", "new_display_name"],
                        {f"new_{n}": n for n in cols},
                    ),
                    reason="attributes differ from the source",
                )
            )

    want_active = matched["active"].fillna(False).astype(bool)
    is_active = matched["t_active"].fillna(False).astype(bool)
    if settings.reactivate_users:
        back = matched.loc[want_active & ~is_active]
        if len(back):
            parts.append(
                _ops(
                    back,
                    "reactivate_user",
                    target=target,
                    target_key=back["t_target_key"],
                    group="",
                    before='{"active": false}',
                    after='{"active": true}',
                    reason="active in the source",
                )
            )

    deactivate = _deactivations(data, matched, actual, ledger_users, protected)
    if settings.deactivate_missing_users and len(deactivate):
        parts.append(deactivate)

    parts.extend(_group_ops(data, matched, to_create if settings.create_users else None, ledger))

    if not parts:
        return empty_frame(PLAN_COLUMNS)
    plan = pd.concat(parts, ignore_index=True)
    order = {op: i for i, op in enumerate(OPERATIONS)}
    plan = plan.assign(
        _op=plan["op"].map(order),
        _user=plan["username"].astype("string").str.casefold(),
        _group=plan["group"].astype("string").str.casefold(),
    ).sort_values(["_op", "_user", "_group"], kind="stable", ignore_index=True)
    plan["seq"] = range(1, len(plan) + 1)
    return conform(plan[list(PLAN_COLUMNS)].fillna(""), PLAN_COLUMNS, what="plan")


def _deactivations(
    data: PlanInput,
    matched: pd.DataFrame,
    actual: pd.DataFrame,
    ledger_users: pd.DataFrame,
    protected: set[str],
) -> pd.DataFrame:
    """Managed, active accounts whose source user is disabled or gone (and not just rejected)."""
    disabled = matched.loc[
        ~matched["active"].fillna(False).astype(bool)
        & matched["t_active"].fillna(False).astype(bool)
    ]
    present = set(data.desired.users["source_id"]) | set(data.desired.rejected["source_id"])
    gone = ledger_users.loc[~ledger_users["source_id"].isin(present)].merge(actual, on="target_key")
    gone = gone.loc[gone["active"].fillna(False).astype(bool) & ~gone["key"].isin(protected)]
    rows = [
        _ops(
            disabled,
            "deactivate_user",
            target=data.target,
            target_key=disabled["t_target_key"],
            username=disabled["t_username"],
            group="",
            before='{"active": true}',
            after='{"active": false}',
            reason="disabled in the source",
        )
    ]
    rows.append(
        _ops(
            gone,
            "deactivate_user",
            target=data.target,
            group="",
            before='{"active": true}',
            after='{"active": false}',
            reason="no longer in the source",
        )
    )
    return pd.concat(rows, ignore_index=True) if len(disabled) or len(gone) else pd.DataFrame()


def _without(frame: pd.DataFrame, other: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The rows of `frame` whose `keys` do not occur in `other` (an anti-join)."""
    joined = frame.merge(other[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    return joined.loc[joined["_merge"] == "left_only"].drop(columns="_merge")


def _group_ops(
    data: PlanInput,
    matched: pd.DataFrame,
    created: pd.DataFrame | None,
    ledger: pd.DataFrame,
) -> list[pd.DataFrame]:
    target = data.target
    out: list[pd.DataFrame] = []
    desired_groups = data.desired.groups.assign(key=lambda f: _key(f["group"]))
    existing = set(_key(data.actual.groups["group"]))
    new_groups = desired_groups.loc[~desired_groups["key"].isin(existing)]
    if len(new_groups):
        out.append(
            _ops(
                new_groups,
                "create_group",
                target=target,
                source_id="",
                target_key="",
                username="",
                before="",
                after=_json_columns(new_groups, ["group"], {"group": "name"}),
                reason="mapped group missing in the target",
            )
        )

    # Users that will have an active account after this plan: matched and active in source,
    # plus those being created.
    live = matched.loc[matched["active"].fillna(False).astype(bool), ["source_id"]]
    if created is not None:
        live = pd.concat([live, created[["source_id"]]], ignore_index=True)
    want = data.desired.memberships.merge(live, on="source_id")
    want = want.assign(ukey=_key(want["username"]), gkey=_key(want["group"]))
    have = data.actual.memberships.assign(
        ukey=lambda f: _key(f["username"]), gkey=lambda f: _key(f["group"])
    )
    protected = set(_key(pd.Series(list(data.protected), dtype="string")))
    # Memberships are keyed by the account's current name in the target; a rename in this plan
    # moves the account to the desired name, so compare the old memberships by source id.
    current_names = matched[["source_id", "t_key"]]
    have_by_source = have.merge(current_names, left_on="ukey", right_on="t_key")
    add = _without(want, have_by_source, ["source_id", "gkey"])
    add = add.loc[~add["ukey"].isin(protected)]
    if len(add):
        out.append(
            _ops(
                add,
                "add_membership",
                target=target,
                target_key="",
                before="",
                after="",
                reason="member in the source",
            )
        )

    if data.settings.remove_memberships:
        managed_groups = set(_key(data.desired.groups["group"]))
        ledger_sources = set(ledger.loc[ledger["kind"] == "user", "source_id"])
        active_managed = matched.loc[
            matched["active"].fillna(False).astype(bool)
            & (matched["source_id"].isin(ledger_sources) | (matched["how"] == "adopted")),
            ["source_id", "username", "t_key"],
        ]
        extra = have_by_source.loc[have_by_source["gkey"].isin(managed_groups)].merge(
            active_managed[["source_id", "username"]], on="source_id", suffixes=("_t", "")
        )
        extra = _without(extra, want, ["source_id", "gkey"])
        extra = extra.loc[~extra["ukey"].isin(protected)]
        if len(extra):
            out.append(
                _ops(
                    extra,
                    "remove_membership",
                    target=target,
                    target_key="",
                    username=extra["username"],
                    before="",
                    after="",
                    reason="no longer a member in the source",
                )
            )
    return out


def check_deactivation_brake(
    plan: pd.DataFrame, ledger: pd.DataFrame, settings: SyncSettings, target: str
) -> None:
    """Refuse a plan that deactivates more accounts than the settings allow.

    Raises:
        GuardError: too many deactivations; the message gives the numbers and the way out.
    """
    count = int((plan["op"] == "deactivate_user").sum()) if len(plan) else 0
    if not count:
        return
    managed = int((ledger["kind"] == "user").sum()) if len(ledger) else 0
    too_many = count > settings.max_deactivations
    too_large_share = (
        managed >= RATIO_BRAKE_MINIMUM and count / managed > settings.max_deactivation_ratio
    )
    if too_many or too_large_share:
        raise GuardError(
            f"{target}: the plan deactivates {count} of {managed} managed accounts, more than "
            f"the brake allows (max_deactivations={settings.max_deactivations}, "
            f"max_deactivation_ratio={settings.max_deactivation_ratio}). Nothing was written. "
            "Check the source (a changed filter or base DN is the usual cause); if the change "
            "is intended, run once with allow_mass_deactivation."
        )
