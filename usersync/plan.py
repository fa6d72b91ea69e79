"""Desired − target − ledger → an ordered table of operations.

`plan_changes` is a pure function: the same inputs give the same plan. Identity is by key: the
ledger links each source id to the product's immutable account key, and the account is found
by that key whatever it is called now (a rename made by hand in the product is followed, then
undone by the source's name). A source user without a live link takes over, in this order:
an account whose owner left the source or is disabled there (a re-created identity: relinked),
an account nobody manages with the same username (adopted), else a new account (created). Two
live identities claiming one account get no operation and are listed as conflicts.

Source data never grants privileges or identities: an account an administrator holds is never
adopted or relinked (nor any, when the administrators cannot be established), a relink obeys
the adoption policy, no rule creates or fills a group that grants administration unless the
profile allows it, and an on-the-fly rule never takes over an existing group usersync did not
create. Each refusal is a conflict, and the security-relevant ones are alerts too.

Deprovisioning wins over rejection: a managed account whose source user is disabled or gone is
deactivated even when the mapping now rejects that user (mail cleared at off-boarding), and
whatever groups it holds by then. Only accounts in the ledger are ever deactivated; a protected
one is held back, loudly. Groups are owned through the ledger too: in every
group usersync manages (mapped now or at any time before), the source decides the memberships
of the accounts it manages, also when a source group empties, is renamed or disappears; other
accounts' memberships are never touched. Values the target cannot read are unknown, never
empty, and never "changed". Everything is computed with joins over whole columns; no Python
loop walks the directory. What stops a plan that is too destructive is in `guards`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from usersync.config import SyncSettings
from usersync.model import (
    CONFLICT_COLUMNS,
    CUSTOM_PREFIX,
    DESIRED_GROUP_FLAGS,
    LEDGER_COLUMNS,
    MEMBERSHIP_ONCE,
    OPERATIONS,
    PLAN_COLUMNS,
    DesiredState,
    TargetState,
    conform,
    empty_frame,
)


@dataclass(frozen=True)
class PlanInput:
    """Everything the planner reads for one target."""

    target: str
    desired: DesiredState
    actual: TargetState
    ledger: pd.DataFrame
    settings: SyncSettings
    #: usernames never touched: the settings' list plus the account usersync signs in as
    protected: tuple[str, ...] = ()
    #: usernames (case-folded) of the product's administrators that usersync may not adopt or
    #: relink (those `manage_admin_accounts` lists are left out); managed ones still leave
    administrators: frozenset[str] = frozenset()
    #: why the administrators cannot all be established: then nobody is adopted or relinked
    admin_problem: str | None = None
    #: group names (case-folded) that grant administration and that no rule may create or
    #: fill (those `settings.groups.allow_privileged_groups` names are left out)
    privileged_groups: frozenset[str] = frozenset()
    #: group names (case-folded) that grant access to the product (application roles'
    #: groups, licensing groups): `keep_existing_groups: false` never removes anyone from them
    access_groups: frozenset[str] = frozenset()
    #: group names (case-folded) the product puts every account this plan creates in by itself:
    #: their memberships count as present (asking again is a write the product refuses)
    new_account_groups: frozenset[str] = frozenset()
    #: accounts other profiles manage on the same target instance: target_key → profile
    foreign: dict[str, str] = field(default_factory=dict)
    #: of those, the ones whose profile yields to this one (settings.precedence): taken over
    takeover: dict[str, str] = field(default_factory=dict)
    #: ...and the ones whose profile comes first: left to it quietly (not a conflict)
    deferred: frozenset[str] = frozenset()
    #: usernames (case-folded) of the accounts other profiles manage: never removed from a
    #: group by this profile, whatever keep_existing_users says
    foreign_names: frozenset[str] = frozenset()
    #: whether the product can rename accounts (Confluence cannot)
    can_rename: bool = True
    #: who takes over what a deactivated account leads: {"project": user, "component": user};
    #: a missing entry means none is configured
    default_leads: dict[str, str] = field(default_factory=dict)
    #: why the configured default leads cannot take over (missing, inactive), if they cannot
    lead_problem: str | None = None


@dataclass(frozen=True)
class PlannedChanges:
    """The plan for one target and what it could not decide."""

    operations: pd.DataFrame  # model.PLAN_COLUMNS
    conflicts: pd.DataFrame = field(default_factory=lambda: empty_frame(CONFLICT_COLUMNS))
    #: attribute → number of managed accounts whose value the target would not reveal
    unverifiable: dict[str, int] = field(default_factory=dict)
    #: what a person must look at (a privileged group refused, a leaver held back, rights
    #: that cannot be read): one line each, for the log, the summary and an event
    alerts: tuple[str, ...] = ()
    #: group names (case-folded) no rule may land on this run (privileged, or existing groups
    #: an on-the-fly rule may not take over): never recorded as managed
    refused_groups: frozenset[str] = frozenset()


def _key(values: pd.Series) -> pd.Series:
    return values.astype("string").str.casefold()


def _flag(values: pd.Series) -> pd.Series:
    """A boolean column with unknown read as False, as a plain bool array."""
    return values.astype("boolean").fillna(False).astype(bool)


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


def plan_changes(data: PlanInput) -> PlannedChanges:
    """The operations that bring one target in line with the desired state, and the conflicts.

    Returns:
        Operations with `model.PLAN_COLUMNS`, ordered by `model.OPERATIONS`, then username,
        group; conflicts with `model.CONFLICT_COLUMNS`; counts of unverifiable attributes.
    """
    settings = data.settings
    target = data.target
    desired = data.desired.users.assign(key=lambda f: _key(f["username"]))
    rejected = data.desired.rejected
    actual = data.actual.users.assign(key=lambda f: _key(f["username"]))
    accounts = actual.rename(columns=lambda c: f"t_{c}")
    ledger = conform(data.ledger, LEDGER_COLUMNS, what="ledger") if len(data.ledger) else None
    ledger = ledger if ledger is not None else empty_frame(LEDGER_COLUMNS)
    protected = set(_key(pd.Series(list(data.protected), dtype="string")))

    # Live links: ledger entries whose account still exists (found by key, whatever its name).
    links = ledger.loc[ledger["kind"] == "user", ["source_id", "target_key"]].dropna()
    links = links.drop_duplicates("target_key", keep="last").drop_duplicates("source_id")
    live = links.merge(accounts, left_on="target_key", right_on="t_target_key")
    owner_of = pd.Series(live["source_id"].array, index=live["target_key"].array)

    # The state of every source id the run knows: active, disabled, rejected or gone.
    # (Series rather than sets and dicts: 100k ids are hashed in C, not iterated in Python.)
    active_ids = desired.loc[_flag(desired["active"]), "source_id"]
    rejected_active = _flag(rejected["active"]) if "active" in rejected else None
    live_rejected_ids = (
        rejected.loc[rejected_active, "source_id"]
        if rejected_active is not None
        else rejected["source_id"].iloc[0:0]
    )
    last = desired.drop_duplicates("source_id", keep="last")
    desired_key_of = pd.Series(last["key"].array, index=last["source_id"].array)

    linked = desired.merge(live.drop(columns="target_key"), on="source_id").assign(how="linked")
    unlinked = desired.loc[~desired["source_id"].isin(live["source_id"])]
    by_name = unlinked.merge(accounts, left_on="key", right_on="t_key", how="left")
    by_name["owner"] = by_name["t_target_key"].map(owner_of).astype("string")
    wants = _flag(by_name["active"])
    found = by_name["t_target_key"].notna()
    owned = by_name["owner"].notna()
    owner_live = by_name["owner"].isin(active_ids) | by_name["owner"].isin(live_rejected_ids)
    owner_renamed_away = (
        data.can_rename
        & by_name["owner"].isin(active_ids)
        & (by_name["owner"].map(desired_key_of).astype("string") != by_name["t_key"])
    )
    # An account another profile manages on this instance is that profile's, whatever its name.
    # Unless the profiles' precedence gives it to this one (taken over whatever the adoption
    # policy: it is managed already, by a profile the administrator ranked lower).
    by_name["foreign"] = by_name["t_target_key"].map(data.foreign).astype("string")
    taken_over = by_name["t_target_key"].isin(data.takeover) & found
    by_name.loc[taken_over, "foreign"] = pd.NA
    elsewhere = found & by_name["foreign"].notna() & wants
    deferred = elsewhere & by_name["t_target_key"].isin(data.deferred)
    found = found & by_name["foreign"].isna()
    unowned = found & ~owned & wants
    may_adopt = _may_adopt(by_name, settings.adoption)
    # An administrator is never handed to whoever holds the name in the IdP; when the
    # administrators cannot be established, nobody is (fail closed).
    is_protected_name = by_name["t_key"].isin(protected)
    admin_held = (
        pd.Series(True, index=by_name.index)
        if data.admin_problem
        else by_name["t_key"].isin(data.administrators)
    ) & ~is_protected_name
    adopt = unowned & (may_adopt | taken_over) & ~admin_held
    # A re-created identity takes its predecessor's account only as the adoption policy
    # would let it take any account: a new person with the old person's username is not them.
    departed = found & owned & ~owner_live & wants
    relink = departed & may_adopt & ~admin_held
    disputed = found & owned & owner_live & ~owner_renamed_away & wants
    create = wants & ~elsewhere & (~found | (owned & owner_renamed_away))

    by_name = by_name.drop(columns="foreign").assign(elsewhere=elsewhere & ~deferred)
    claimed = by_name.loc[by_name["elsewhere"]]
    by_name = by_name.drop(columns="elsewhere")
    by_name["taken_over"] = taken_over
    matched = pd.concat(
        [
            linked,
            by_name.loc[adopt].drop(columns="owner").assign(how="adopted"),
            by_name.loc[relink].drop(columns="owner").assign(how="relinked"),
        ],
        ignore_index=True,
    )
    is_protected = matched["t_key"].isin(protected) | matched["key"].isin(protected)
    matched = matched.loc[~is_protected].reset_index(drop=True)
    to_create = by_name.loc[create & ~by_name["key"].isin(protected)].drop(columns="owner")
    if not settings.create_users:
        to_create = to_create.iloc[0:0]

    refused = by_name.loc[unowned & ~(may_adopt | taken_over) & ~is_protected_name]
    conflicts = [
        by_name.loc[(unowned | departed) & admin_held & (may_adopt | taken_over)].assign(
            target_key=lambda f: f["t_target_key"],
            reason=lambda f: (
                "account '"
                + f["t_username"]
                + "' "
                + (
                    "cannot be verified not to be an administrator (" + data.admin_problem + ")"
                    if data.admin_problem
                    else "is an administrator of the product"
                )
                + ": not adopted or relinked, nothing changed; list it in "
                "settings.manage_admin_accounts to let usersync manage it"
            ),
        ),
        by_name.loc[departed & ~may_adopt & ~is_protected_name].assign(
            target_key=lambda f: f["t_target_key"],
            reason=lambda f: _relink_refusal(f, settings.adoption),
        ),
        claimed.assign(
            target_key=lambda f: f["t_target_key"],
            reason=lambda f: (
                "account '"
                + f["t_username"]
                + "' is managed by profile "
                + f["t_target_key"].map(data.foreign).astype("string")
                + " on this instance: left to it (one profile owns an account)"
            ),
        ),
        refused.assign(
            target_key=lambda f: f["t_target_key"],
            reason=lambda f: _adoption_refusal(f, settings.adoption),
        ),
        by_name.loc[found & wants & by_name["t_key"].isin(protected)].assign(
            target_key=lambda f: f["t_target_key"],
            reason=lambda f: (
                "account '"
                + f["t_username"]
                + "' is protected (protected_usernames, or the account usersync signs in as): "
                "left alone"
            ),
        ),
        by_name.loc[disputed].assign(
            target_key=lambda f: f["t_target_key"],
            reason=lambda f: (
                "account '"
                + f["t_username"]
                + "' is already linked to another live source user ("
                + f["owner"]
                + "); neither is changed until one of them leaves the source"
            ),
        ),
    ]

    parts: list[pd.DataFrame] = []
    if len(to_create):
        parts.append(
            _ops(
                to_create,
                "create_user",
                target=target,
                target_key="",
                group="",
                before="",
                # Custom attributes too: the loader writes them once the account exists.
                after=_json_columns(
                    to_create,
                    [
                        "username",
                        "email",
                        "display_name",
                        *(c for c in to_create.columns if c.startswith(CUSTOM_PREFIX)),
                    ],
                    {},
                ),
                reason="no account with this username",
            )
        )
    adopted = matched["how"] == "adopted"
    if adopted.any() and "taken_over" in matched:
        taken = adopted & matched["taken_over"].fillna(False).astype(bool)
        matched.loc[taken, "how"] = "taken over"
    for how, op, reason in (
        ("adopted", "adopt_user", "existing account with the same username; managed from now"),
        (
            "taken over",
            "adopt_user",
            "managed by a profile that yields to this one (settings.precedence); managed "
            "by this profile from now",
        ),
        (
            "relinked",
            "relink_user",
            "re-created in the source: takes over the account of its predecessor, who left",
        ),
    ):
        rows = matched.loc[matched["how"] == how]
        if len(rows):
            parts.append(
                _ops(
                    rows,
                    op,
                    target=target,
                    target_key=rows["t_target_key"],
                    group="",
                    before=rows["t_username"],
                    after="",
                    reason=reason,
                )
            )

    live_matched = matched.loc[_flag(matched["active"])]
    unverifiable: dict[str, int] = {}
    if settings.update_users and len(live_matched):
        updates, rename_conflicts, unknown = _updates(
            live_matched, actual, target, can_rename=data.can_rename
        )
        parts.extend(updates)
        conflicts.append(rename_conflicts)
        unverifiable = unknown

    if settings.reactivate_users:
        back = live_matched.loc[~_flag(live_matched["t_active"])]
        if len(back):
            parts.append(_activation(back, target, active=True, reason="active in the source"))

    leaving = _leaving(matched, live, desired, rejected, protected)
    held = _held_leavers(live, desired, rejected, protected)
    conflicts.append(held)
    if settings.deactivate_missing_users:
        going = leaving.loc[_flag(leaving["t_active"])]
        handover, blocked = _lead_handover(data, going)
        parts.append(handover)
        conflicts.append(blocked)
        going = going.loc[~going["t_target_key"].isin(set(blocked["target_key"]))]
        if len(going):
            parts.append(_activation(going, target, active=False))

    group_parts, skipped_groups, refused_groups = _group_ops(
        data, ledger, live_matched, to_create, leaving
    )
    parts.extend(group_parts)
    conflicts.append(skipped_groups)
    conflicts.append(refused_groups[["reason"]].assign(source_id="", username="", target_key=""))
    alerts = _alerts(data, held, refused_groups)

    conflict_rows = pd.concat([c for c in conflicts if len(c)] or [empty_frame(CONFLICT_COLUMNS)])
    conflict_frame = conform(
        conflict_rows[list(CONFLICT_COLUMNS)].fillna(""), CONFLICT_COLUMNS, what="conflicts"
    )
    refused_keys = frozenset(refused_groups["gkey"])
    if not parts:
        return PlannedChanges(
            empty_frame(PLAN_COLUMNS), conflict_frame, unverifiable, alerts, refused_keys
        )
    plan = pd.concat([p for p in parts if len(p)] or [empty_frame(PLAN_COLUMNS)], ignore_index=True)
    order = {op: i for i, op in enumerate(OPERATIONS)}
    plan = plan.assign(
        _op=plan["op"].map(order),
        _user=plan["username"].astype("string").str.casefold(),
        _group=plan["group"].astype("string").str.casefold(),
    ).sort_values(["_op", "_user", "_group"], kind="stable", ignore_index=True)
    plan["seq"] = range(1, len(plan) + 1)
    operations = conform(plan[list(PLAN_COLUMNS)].fillna(""), PLAN_COLUMNS, what="plan")
    return PlannedChanges(operations, conflict_frame, unverifiable, alerts, refused_keys)


def _lead_handover(data: PlanInput, going: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """reassign_lead rows for what the accounts being deactivated lead, and the accounts whose
    deactivation cannot go ahead (conflict rows): Jira refuses to deactivate a project lead or
    a component lead (its user service checks both).

    Projects go to `default_leads["project"]`; components to `default_leads["component"]`,
    else the default project lead, else their project's own lead when that account stays.
    Whoever would lead something nobody can take over stays active, and the conflict row names
    each project and component.
    """
    leads = data.actual.leads
    empty = (empty_frame(PLAN_COLUMNS), empty_frame(CONFLICT_COLUMNS))
    if not len(leads) or not len(going):
        return empty
    roles = leads.assign(ukey=_key(leads["username"])).merge(
        going[["source_id", "t_target_key", "t_username", "t_key"]],
        left_on="ukey",
        right_on="t_key",
    )
    if not len(roles):
        return empty
    usable = data.lead_problem is None
    project_lead = data.default_leads.get("project") if usable else None
    component_lead = (data.default_leads.get("component") or project_lead) if usable else None
    new_lead = roles["kind"].map({"project": project_lead, "component": component_lead})
    # Without a default, a component goes to its project's lead, unless that lead leaves too.
    leaving = set(_key(going["t_username"]))
    projects = leads.loc[leads["kind"] == "project"]
    staying_leads = projects.loc[~_key(projects["username"]).isin(leaving)]
    lead_of_project = pd.Series(
        staying_leads["username"].array, index=staying_leads["id"].array, dtype="string"
    )
    own = roles["project"].map(lead_of_project).astype("string")
    new_lead = new_lead.astype("string").fillna(own.where(roles["kind"] == "component"))
    # The default lead itself leaving: the handover cannot happen.
    new_lead = new_lead.where(_key(new_lead.astype("string")) != roles["ukey"])
    stuck = roles.loc[new_lead.isna()]
    blocked_keys = set(stuck["t_target_key"])
    moving = roles.loc[new_lead.notna() & ~roles["t_target_key"].isin(blocked_keys)]
    rows = empty_frame(PLAN_COLUMNS)
    if len(moving):
        before = [
            json.dumps({"kind": k, "id": i, "name": n, "project": p, "lead": u}, ensure_ascii=False)
            for k, i, n, p, u in zip(
                moving["kind"],
                moving["id"],
                moving["name"],
                moving["project"],
                moving["username"],
                strict=True,
            )
        ]
        rows = _ops(
            moving,
            "reassign_lead",
            target=data.target,
            target_key=moving["t_target_key"],
            username=moving["t_username"],
            group="",
            before=pd.Series(before, index=moving.index, dtype="string"),
            after=new_lead[moving.index].map(lambda u: json.dumps({"lead": u})).astype("string"),
            reason=(
                "leads "
                + moving["kind"]
                + " "
                + moving["name"].fillna(moving["id"])
                + "; handed over before the deactivation"
            ),
        )
    if not len(stuck):
        return rows, empty[1]
    why = data.lead_problem or (
        "no default_project_lead or default_component_lead is configured for this target, "
        "and no staying project lead can take a component over"
        if not data.default_leads
        else "the default lead is the account being deactivated"
    )
    described = stuck.assign(
        what=lambda f: (
            f["kind"]
            + " "
            + f["name"].fillna(f["id"])
            + (" (" + f["id"] + ")").where(
                f["kind"] == "project", " (project " + f["project"] + ")"
            )
        )
    )
    blocked = (
        described.groupby(["t_target_key", "t_username", "source_id"], as_index=False)["what"]
        .agg(lambda parts: ", ".join(sorted(parts)))
        .assign(
            target_key=lambda f: f["t_target_key"],
            username=lambda f: f["t_username"],
            reason=lambda f: (
                "not deactivated: account '"
                + f["t_username"]
                + "' leads "
                + f["what"]
                + ", and Jira refuses to deactivate a project or component lead; "
                + why
                + "; set default_project_lead (and default_component_lead) on the target, or "
                "hand them over in Jira"
            ),
        )
    )
    return rows, blocked[list(CONFLICT_COLUMNS)]


def _activation(
    accounts: pd.DataFrame, target: str, *, active: bool, reason: str | None = None
) -> pd.DataFrame:
    """reactivate_user (active) or deactivate_user rows for these matched accounts; without a
    `reason`, each row's own `reason` column says why."""
    columns: dict[str, pd.Series | str] = {
        "target": target,
        "target_key": accounts["t_target_key"],
        "username": accounts["t_username"],
        "group": "",
        "before": json.dumps({"active": not active}),
        "after": json.dumps({"active": active}),
    }
    if reason is not None:
        columns["reason"] = reason
    return _ops(accounts, "reactivate_user" if active else "deactivate_user", **columns)


def _may_adopt(by_name: pd.DataFrame, policy: str) -> pd.Series:
    """Which unmanaged accounts found by username may be adopted under the profile's policy.

    `username_and_email` (the default) wants the e-mail to match too, case-insensitively:
    adopting by name alone would let whoever controls a name in the IdP take over an account
    (and its password reset) by giving it their address. An e-mail the target will not reveal
    cannot match.
    """
    if policy == "never":
        return pd.Series(False, index=by_name.index)
    if policy == "username":
        return pd.Series(True, index=by_name.index)
    same = (
        by_name["email"].fillna("").str.casefold() == by_name["t_email"].fillna("").str.casefold()
    )
    return (by_name["email"].notna() & by_name["t_email"].notna() & same).astype(bool)


def _adoption_refusal(rows: pd.DataFrame, policy: str) -> pd.Series:
    """Why an existing account was not adopted, in the admin's words."""
    if policy == "never":
        why = "adoption: never"
    else:
        why = pd.Series(
            "its e-mail differs from the source's (adoption: username_and_email)",
            index=rows.index,
            dtype="string",
        ).mask(
            rows["t_email"].isna(),
            "its e-mail cannot be read to confirm it (adoption: username_and_email)",
        )
    return (
        "an account '"
        + rows["t_username"]
        + "' exists that usersync does not manage, and "
        + why
        + ": not adopted, nothing changed; fix the e-mail on either side or set adoption"
    )


def _relink_refusal(rows: pd.DataFrame, policy: str) -> pd.Series:
    """Why a new identity did not take over its departed namesake's account."""
    why = (
        "adoption: never"
        if policy == "never"
        else "its e-mail differs from the new source user's (adoption: username_and_email)"
    )
    return (
        "account '"
        + rows["t_username"]
        + "' belonged to a source user who left ("
        + rows["owner"].fillna("")
        + "), and "
        + why
        + ": a new identity with that username is not relinked to it; the old account stays "
        "its departed owner's (deactivated). Rename one of the two in the IdP, or fix the "
        "e-mail if it is the same person"
    )


def _held_leavers(
    live: pd.DataFrame, desired: pd.DataFrame, rejected: pd.DataFrame, protected: set[str]
) -> pd.DataFrame:
    """Conflict rows for managed accounts whose source user is disabled or gone but which are
    protected (protected_usernames, or the account usersync signs in as): still active, and a
    person must decide. Every other managed leaver is deactivated, whatever groups it holds."""
    mine = live.loc[live["t_key"].isin(protected) & _flag(live["t_active"])]
    if not len(mine):
        return empty_frame(CONFLICT_COLUMNS)
    active = set(desired.loc[_flag(desired["active"]), "source_id"])
    if "active" in rejected:
        active |= set(rejected.loc[_flag(rejected["active"]), "source_id"])
    else:
        active |= set(rejected["source_id"])
    gone = mine.loc[~mine["source_id"].isin(active)]
    return gone.assign(
        target_key=gone["t_target_key"],
        username=gone["t_username"],
        reason=(
            "NOT deactivated: account '"
            + gone["t_username"]
            + "' is managed and its source user is disabled or gone, but it is protected "
            "(protected_usernames, or the account usersync signs in as); deactivate it by hand "
            "or take it off the list"
        ),
    )[list(CONFLICT_COLUMNS)]


def _alerts(data: PlanInput, held: pd.DataFrame, refused_groups: pd.DataFrame) -> tuple[str, ...]:
    """The lines a person must read: security refusals and held-back leavers."""
    lines = [f"{data.target}: {reason}" for reason in refused_groups["reason"]]
    lines += [f"{data.target}: {reason}" for reason in held["reason"]]
    if data.admin_problem:
        lines.append(
            f"{data.target}: administrators cannot be established ({data.admin_problem}): "
            "no unmanaged account is adopted or relinked until they can"
        )
    return tuple(lines)


def _updates(
    live: pd.DataFrame, actual: pd.DataFrame, target: str, *, can_rename: bool = True
) -> tuple[list[pd.DataFrame], pd.DataFrame, dict[str, int]]:
    """update_user rows for accounts whose attributes differ; renames onto a taken name are
    conflicts, and values the target would not reveal are counted, never compared.

    Case-only differences of username and e-mail are not changes: the products store them
    case-insensitively. A value the source leaves empty is no opinion (the products keep a
    value rather than blank it).
    """
    last = actual.drop_duplicates("key", keep="last")
    holder = pd.Series(last["target_key"].array, index=last["key"].array)
    rename = live["key"] != live["t_key"]
    taken = (
        rename
        & live["key"].map(holder).notna()
        & (live["key"].map(holder).astype("string") != live["t_target_key"])
    )
    if not can_rename:
        taken = rename
    email_known = live["t_email"].notna()
    email = (
        live["email"].notna()
        & email_known
        & (live["email"].fillna("").str.casefold() != live["t_email"].fillna("").str.casefold())
    )
    display = live["display_name"].notna() & (
        live["display_name"].fillna("") != live["t_display_name"].fillna("")
    )
    # Custom attributes the target read back (`t_custom:<name>`): compared as stored strings.
    custom = {
        c: live[c].notna() & (live[c].fillna("") != live[f"t_{c}"].fillna(""))
        for c in live.columns
        if c.startswith(CUSTOM_PREFIX) and f"t_{c}" in live.columns
    }
    unknown = {"email": int((~email_known & live["email"].notna()).sum())}
    unknown = {k: v for k, v in unknown.items() if v}
    rename_ok = rename & ~taken
    why = (
        "another account has that username"
        if can_rename
        else "the product cannot rename accounts over its API; rename it there by hand"
    )
    clashes = live.loc[taken].assign(
        target_key=lambda f: f["t_target_key"],
        reason=lambda f: (
            "cannot rename account '" + f["t_username"] + "' to '" + f["username"] + "': " + why
        ),
    )
    any_custom = pd.Series(False, index=live.index)
    for mask in custom.values():
        any_custom = any_custom | mask
    changed = live.loc[rename_ok | email | display | any_custom].copy()
    if not len(changed):
        return [], clashes, unknown
    masks = {"username": rename_ok, "email": email, "display_name": display, **custom}
    for name, mask in masks.items():
        changed[f"new_{name}"] = changed[name].where(mask.loc[changed.index])
        changed[f"old_{name}"] = changed[f"t_{name}"].where(mask.loc[changed.index])
    row = _ops(
        changed,
        "update_user",
        target=target,
        target_key=changed["t_target_key"],
        username=changed["t_username"],
        group="",
        before=_json_columns(changed, [f"old_{n}" for n in masks], {f"old_{n}": n for n in masks}),
        after=_json_columns(changed, [f"new_{n}" for n in masks], {f"new_{n}": n for n in masks}),
        desired=_json_columns(changed, ["username", "email", "display_name", *custom], {}),
        reason="attributes differ from the source",
    )
    return [row], clashes, unknown


def _leaving(
    matched: pd.DataFrame,
    live: pd.DataFrame,
    desired: pd.DataFrame,
    rejected: pd.DataFrame,
    protected: set[str],
) -> pd.DataFrame:
    """Managed accounts whose source user is disabled or gone, whatever the mapping says.

    A user the mapping rejects but who is still active in the source keeps the account; one
    who is disabled or gone loses it even when rejected. An account a re-created identity takes
    over in this plan is not leaving.
    """
    disabled = matched.loc[~_flag(matched["active"]) & (matched["how"] == "linked")].assign(
        reason="disabled in the source"
    )
    taken_over = matched["t_target_key"]
    rejected_active = (
        set(rejected.loc[_flag(rejected["active"]), "source_id"])
        if "active" in rejected
        else set(rejected["source_id"])
    )
    rejected_disabled = set(rejected["source_id"]) - rejected_active
    orphans = live.loc[
        ~live["source_id"].isin(desired["source_id"])
        & ~live["source_id"].isin(rejected_active)
        & ~live["t_target_key"].isin(taken_over)
        & ~live["t_key"].isin(protected)
    ].copy()
    orphans["reason"] = "no longer in the source"
    orphans.loc[orphans["source_id"].isin(rejected_disabled), "reason"] = (
        "disabled in the source (its mapping is rejected; deprovisioning wins)"
    )
    columns = ["source_id", "t_target_key", "t_username", "t_key", "t_active", "reason"]
    return pd.concat([disabled[columns], orphans[columns]], ignore_index=True)


def _group_flags(desired_groups: pd.DataFrame) -> pd.DataFrame:
    """Desired groups with every `DESIRED_GROUP_FLAGS` column (defaults where absent)."""
    out = desired_groups.assign(gkey=lambda f: _key(f["group"]))
    for name, default in DESIRED_GROUP_FLAGS.items():
        out[name] = out[name].fillna(default).astype(bool) if name in out else default
    return out


def _folded_codes(*columns: pd.Series) -> tuple[list[np.ndarray], pd.Index]:
    """Each column's case-folded values as integer codes into one index of folded values.

    A column is factorised first, so `casefold` runs once per distinct value rather than per
    row (a million memberships name a few thousand groups and accounts). NA is a value of its
    own, equal only to itself, as it was in the joins on strings these codes replace.
    """
    factorised = [pd.factorize(c.astype("string"), use_na_sentinel=False) for c in columns]
    distinct = pd.concat(
        [pd.Series(uniques, dtype="string") for _, uniques in factorised], ignore_index=True
    )
    codes, folded = pd.factorize(distinct.str.casefold(), use_na_sentinel=False)
    out = []
    start = 0
    for local, uniques in factorised:
        out.append(codes[start : start + len(uniques)].astype(np.int32)[local])
        start += len(uniques)
    return out, pd.Index(folded)


def _code_mask(index: pd.Index, values: Iterable[object]) -> np.ndarray:
    """A boolean array over `index`'s codes: True for the codes of `values` found there."""
    mask = np.zeros(len(index), dtype=bool)
    found = index.get_indexer(pd.Index(list(values), dtype="string"))
    mask[found[found >= 0]] = True
    return mask


def _join(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the inner join of two integer key arrays (negative keys match nothing),
    ordered as `DataFrame.merge` orders an inner join: by the left rows."""
    valid = np.flatnonzero(right >= 0)
    keys = pd.Index(right[valid])
    if keys.is_unique:
        # The usual case (each account, each source id once): a lookup, no merge tables.
        found = keys.get_indexer(left)
        rows = np.flatnonzero(found >= 0).astype(np.int32)
        return rows, valid[found[rows]].astype(np.int32)
    joined = pd.DataFrame({"key": left, "left": np.arange(len(left))}).merge(
        pd.DataFrame({"key": right[valid], "right": valid}), on="key"
    )
    return joined["left"].to_numpy(np.int32), joined["right"].to_numpy(np.int32)


def _rows(frame: pd.DataFrame, positions: np.ndarray, **columns: str) -> dict[str, pd.Series]:
    """Columns of `frame` at `positions` (new name → column), with a fresh index."""
    return {new: frame[old].iloc[positions].reset_index(drop=True) for new, old in columns.items()}


def _group_ops(
    data: PlanInput,
    ledger: pd.DataFrame,
    live_matched: pd.DataFrame,
    created: pd.DataFrame,
    leaving: pd.DataFrame,
) -> tuple[list[pd.DataFrame], pd.DataFrame, pd.DataFrame]:
    """create_group, add_membership and remove_membership rows, the groups skipped, and the
    groups refused (columns group, gkey, reason).

    The groups usersync manages are the mapped ones plus every group the ledger remembers,
    except groups only joined at creation (`default-new`); the accounts whose memberships it
    decides are the managed accounts that stay active (and, with `memberships_of_deactivated:
    remove`, those leaving or already inactive). With `settings.groups.keep_existing_groups`
    off, every group a managed account is in counts as managed. A group whose rules say
    `keep_existing_users: no` loses the members the source does not list, unmanaged accounts
    included (never protected ones, nor accounts another profile manages). A missing group
    usersync may not create is skipped with its memberships, and reported.

    Source data never grants privileges: a group that grants administration (`privileged_groups`)
    is never created or given members, and an on-the-fly group lands only on a group usersync
    created (the ledger says so) or on one it creates now; an existing group it did not create
    needs a rule that names it (a manual row is that explicit link). Either refusal is a listed
    conflict, and the group is not managed because of the mapping (a privileged group the
    ledger remembers still loses the managed accounts the source does not put there). With
    `keep_existing_groups: false`, groups that grant administration or access to the product are
    left alone unless a rule names them.

    The membership tables run to a million rows, so their names are turned into integer codes
    once (case-folded group names, case-folded usernames, source ids) and every join and
    anti-join below is on those codes; only the rows that become operations are built as
    frames of strings.
    """
    target = data.target
    settings = data.settings
    out: list[pd.DataFrame] = []
    desired_groups = _group_flags(data.desired.groups)
    existing = set(_key(data.actual.groups["group"]))
    group_rows = ledger.loc[ledger["kind"] == "group"]
    created_by_us = set(
        _key(group_rows.loc[group_rows["origin"].fillna("created") == "created", "name"])
    )
    privileged = desired_groups["gkey"].isin(data.privileged_groups)
    taken = (
        ~desired_groups["named"]
        & desired_groups["gkey"].isin(existing)
        & ~desired_groups["gkey"].isin(created_by_us)
        & ~privileged
    )
    refused = desired_groups.loc[privileged | taken, ["group", "gkey"]].assign(
        privileged=privileged[privileged | taken]
    )
    desired_groups = desired_groups.loc[~(privileged | taken)]
    missing = desired_groups.loc[~desired_groups["gkey"].isin(existing)]
    new_groups = missing.loc[missing["create"]]
    skipped_groups = missing.loc[~missing["create"]]
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

    # Who stays: matched active accounts (key known) and accounts being created (key not yet).
    # An existing account is named as it is now: a rename in this plan may be refused (a
    # taken name, a product that cannot rename), and the source's new name may belong to
    # another account; the loader follows the key to the new name once the rename succeeded.
    staying = pd.concat(
        [
            live_matched[["source_id", "t_target_key", "t_username"]].rename(
                columns={"t_username": "username"}
            ),
            created[["source_id", "username"]].assign(t_target_key=""),
        ],
        ignore_index=True,
    )
    wanted = data.desired.memberships
    members = data.actual.memberships
    accounts = data.actual.users

    # Case-folded group names: one code space for every table that names groups.
    ledger_groups = ledger.loc[ledger["kind"] == "group", "name"]
    (wanted_g, member_g, _, _), gkeys = _folded_codes(
        wanted["group"], members["group"], desired_groups["group"], ledger_groups
    )
    once_only = _code_mask(gkeys, desired_groups.loc[~desired_groups["enforce"], "gkey"])
    managed = _code_mask(gkeys, [*desired_groups["gkey"], *_key(ledger_groups)]) & ~once_only
    refused_mask = _code_mask(gkeys, refused["gkey"])
    skipped_mask = _code_mask(gkeys, skipped_groups["gkey"]) | refused_mask
    untouchable = (
        _code_mask(gkeys, [*data.privileged_groups, *data.access_groups, *refused["gkey"]])
        & ~managed
    )
    strict = _code_mask(gkeys, desired_groups.loc[~desired_groups["keep_users"], "gkey"])

    # Case-folded usernames, and source ids (those of the staying accounts).
    (member_u, account_u, staying_u), ukeys = _folded_codes(
        members["username"], accounts["username"], staying["username"]
    )
    staying_sid, source_ids = pd.factorize(staying["source_id"], use_na_sentinel=False)
    wanted_sid = source_ids.get_indexer(wanted["source_id"])
    if MEMBERSHIP_ONCE in wanted:
        # Groups for new users: joined by the accounts this plan creates, never enforced.
        once = wanted[MEMBERSHIP_ONCE].fillna(False).to_numpy(dtype=bool)
        is_created = _code_mask(source_ids, created["source_id"])
        known = wanted_sid >= 0
        for_new = np.zeros(len(wanted_sid), dtype=bool)
        for_new[known] = is_created[wanted_sid[known]]
        wanted_sid = np.where(once & ~for_new, -1, wanted_sid)

    # want: the memberships the source gives the staying accounts (wanted row, staying row).
    want_row, want_stay = _join(wanted_sid, staying_sid)
    want_g = wanted_g[want_row]
    skipped_rows = skipped_mask[want_g]
    skipped_counts = pd.Series(gkeys[want_g[skipped_rows]]).value_counts()
    refused_report = _refused_groups(refused, skipped_counts)
    want_row, want_stay, want_g = (a[~skipped_rows] for a in (want_row, want_stay, want_g))
    want_sid = staying_sid[want_stay]

    # have: the target's memberships of accounts it lists (membership row, account row), in
    # the groups whose memberships usersync decides; of those, the staying accounts' ones.
    have_row, have_account = _join(member_u, account_u)
    have_g = member_g[have_row]
    decided = (
        managed[have_g]
        if settings.groups.keep_existing_groups
        else ~once_only[have_g] & ~untouchable[have_g]
    )
    have_row, have_account, have_g = (a[decided] for a in (have_row, have_account, have_g))
    account_tk, account_keys = pd.factorize(accounts["target_key"], use_na_sentinel=False)
    have_tk = account_tk[have_account]
    live_tk = account_keys.get_indexer(live_matched["t_target_key"])
    held, held_live = _join(have_tk, live_tk)
    held_sid = staying_sid[held_live]  # live_matched rows come first in staying

    width = len(gkeys) + 1
    want_pairs = want_sid.astype(np.int64) * width + want_g
    held_pairs = held_sid.astype(np.int64) * width + have_g[held]
    add = ~pd.Series(want_pairs).isin(held_pairs).to_numpy()
    # A new account is in the product's groups for new accounts as soon as it exists.
    granted = _code_mask(gkeys, data.new_account_groups)
    add &= ~(granted[want_g] & (want_stay >= len(live_matched)))
    if add.any():
        rows = pd.DataFrame(
            {
                **_rows(wanted, want_row[add], source_id="source_id", group="group"),
                **_rows(staying, want_stay[add], username="username", target_key="t_target_key"),
            }
        )
        out.append(
            _ops(
                rows,
                "add_membership",
                target=target,
                before="",
                after="",
                reason="member in the source",
            )
        )
    skipped_report = _skipped_groups(skipped_groups, skipped_counts)
    if not settings.remove_memberships:
        return out, skipped_report, refused_report

    # Removals, in this order, each membership once: the staying accounts' memberships the
    # source does not give; unlisted members of keep_existing_users: no groups; with
    # memberships_of_deactivated: remove, the memberships of accounts leaving or inactive.
    extra = ~pd.Series(held_pairs).isin(want_pairs).to_numpy()
    extra_row = have_row[held[extra]]
    removals = [
        pd.DataFrame(
            {
                **_rows(members, extra_row, username="username", group="group"),
                **_rows(accounts, have_account[held[extra]], target_key="target_key"),
                **_rows(live_matched, held_live[extra], source_id="source_id"),
                "reason": pd.Series(
                    "no longer a member in the source",
                    index=range(len(extra_row)),
                    dtype="string",
                ).mask(
                    ~managed[member_g[extra_row]],
                    "in a group no rule maps (settings.groups.keep_existing_groups: false)",
                ),
            }
        )
    ]
    removal_rows = [extra_row]
    if strict.any():
        keep = np.zeros(len(ukeys), dtype=bool)
        keep[staying_u[want_stay]] = True
        keep[member_u[have_row[held]]] = True
        keep |= _code_mask(ukeys, _key(pd.Series(list(data.protected), dtype="string")))
        keep |= _code_mask(ukeys, data.administrators)
        keep |= _code_mask(ukeys, data.foreign_names)
        unlisted = np.flatnonzero(strict[member_g] & ~keep[member_u])
        # The account a username names (the last one listed, should the product list two).
        last = ~pd.Index(account_u).duplicated(keep="last")
        key_of = pd.Series(
            accounts["target_key"].to_numpy()[last], index=account_u[last], dtype="string"
        )
        removals.append(
            pd.DataFrame(
                {
                    **_rows(members, unlisted, username="username", group="group"),
                    "target_key": key_of.reindex(member_u[unlisted]).reset_index(drop=True),
                    "source_id": "",
                    "reason": "not listed by the source in this group (keep_existing_users: no)",
                }
            )
        )
        removal_rows.append(unlisted)
    if settings.memberships_of_deactivated == "remove":
        inactive_managed = pd.concat(
            [
                leaving[["source_id", "t_target_key", "reason"]],
                _inactive_managed(data, ledger, leaving),
            ],
            ignore_index=True,
        ).drop_duplicates("t_target_key")
        in_managed = np.flatnonzero(managed[have_g])
        gone, gone_account = _join(
            have_tk[in_managed], account_keys.get_indexer(inactive_managed["t_target_key"])
        )
        gone_row = have_row[in_managed[gone]]
        removals.append(
            pd.DataFrame(
                {
                    **_rows(members, gone_row, username="username", group="group"),
                    **_rows(accounts, have_account[in_managed[gone]], target_key="target_key"),
                    **_rows(inactive_managed, gone_account, source_id="source_id"),
                    "reason": "account deactivated (memberships_of_deactivated: remove)",
                }
            )
        )
        removal_rows.append(gone_row)
    rows = np.concatenate(removal_rows)
    first = ~pd.Index(member_u[rows].astype(np.int64) * width + member_g[rows]).duplicated()
    extra = pd.concat(removals, ignore_index=True).loc[first]
    if len(extra):
        out.append(
            _ops(
                extra,
                "remove_membership",
                target=target,
                target_key=extra["target_key"].fillna(""),
                before="",
                after="",
            )
        )
    return out, skipped_report, refused_report


def _refused_groups(refused: pd.DataFrame, counts: pd.Series) -> pd.DataFrame:
    """One row per group no rule may land on (group, gkey, reason), with how many
    memberships the rules wanted there (`counts`: case-folded group name → number)."""
    reasons = [
        f"group '{group}' grants administration in the product: no rule creates it or adds "
        f"members to it ({int(counts.get(gkey, 0))} membership(s) refused); if the IdP is "
        "the authority on who administers the product, name it in "
        "settings.groups.allow_privileged_groups"
        if privileged
        else f"group '{group}' exists in the product and usersync did not create it: an "
        f"on-the-fly rule does not take over an existing group ({int(counts.get(gkey, 0))} "
        f"membership(s) skipped); link it with a manual row in groups.csv (source group, "
        f"{group}, manual) if the source group is meant to fill it"
        for group, gkey, privileged in zip(
            refused["group"], refused["gkey"], refused["privileged"], strict=True
        )
    ]
    return pd.DataFrame(
        {"group": refused["group"], "gkey": refused["gkey"], "reason": reasons}, dtype="string"
    )


def _skipped_groups(groups: pd.DataFrame, counts: pd.Series) -> pd.DataFrame:
    """One conflict row per missing group usersync may not create, with how many memberships
    it skips (`counts`: case-folded group name → number)."""
    if not len(groups):
        return empty_frame(CONFLICT_COLUMNS)
    rows = [
        {
            "source_id": "",
            "username": "",
            "target_key": "",
            "reason": (
                f"group '{group}' does not exist in the target and is not created (a manual "
                "rule with create: no, or settings.groups.create_missing: false): "
                f"{int(counts.get(gkey, 0))} membership(s) skipped"
            ),
        }
        for group, gkey in zip(groups["group"], groups["gkey"], strict=True)
    ]
    return pd.DataFrame(rows, columns=list(CONFLICT_COLUMNS), dtype="string")


def _inactive_managed(data: PlanInput, ledger: pd.DataFrame, leaving: pd.DataFrame) -> pd.DataFrame:
    """Managed accounts already inactive in the target whose source user is not active."""
    links = ledger.loc[ledger["kind"] == "user", ["source_id", "target_key"]]
    accounts = data.actual.users.loc[~_flag(data.actual.users["active"]), ["target_key"]]
    active_ids = set(data.desired.users.loc[_flag(data.desired.users["active"]), "source_id"])
    found = links.merge(accounts, on="target_key")
    found = found.loc[~found["source_id"].isin(active_ids)]
    return found.rename(columns={"target_key": "t_target_key"}).assign(reason="")
