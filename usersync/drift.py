"""The drift report: what in a target no source, no rule and no profile explains.

Computed from what a sync has read anyway (no request of its own), per target:

- `orphans`: accounts in the groups usersync manages that no profile manages and no source
  user explains (not a desired account, not a rejected source user's name, not protected).
  Only those groups' members are seen: an account in no managed group is not read by a sync,
  so it cannot be reported without listing every account (which a sync does not do).
- `blocked`: managed accounts, active in the target, whose source user is disabled or gone,
  but that this run does not deactivate: the brake held the plan, the account leads a project
  and no default lead can take over, `deactivate_missing_users` is off, or the deactivation
  failed.
- `claimed_twice`: accounts two profiles' ledgers both claim on this instance (usersync never
  makes that; a restored backup or a hand-edited store can).
- `unmapped_groups`: groups usersync manages (the ledger) that no rule maps any more; their
  managed members are being removed, behind the brake.

Each entry is a dict with `name` and `why`; lists are capped at `DRIFT_KEPT` per kind.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

#: Entries kept per kind and target (the counts are exact).
DRIFT_KEPT = 500
KINDS = ("orphans", "blocked", "claimed_twice", "unmapped_groups")


def _key(values: Any) -> pd.Series:
    return pd.Series(values, dtype="string").str.casefold()


def drift_report(
    *,
    plan: pd.DataFrame,
    desired_users: pd.DataFrame,
    desired_groups: pd.DataFrame,
    actual_users: pd.DataFrame,
    memberships: pd.DataFrame,
    ledger: pd.DataFrame,
    protected: tuple[str, ...] = (),
    foreign_names: frozenset[str] = frozenset(),
    claimed_twice: pd.DataFrame | None = None,
    conflicts: pd.DataFrame | None = None,
    deactivated: frozenset[str] | None = None,
    braked: bool = False,
) -> dict[str, Any]:
    """The drift of one target after planning (and, if it ran, loading).

    Args:
        plan: the planned operations (`model.PLAN_COLUMNS`).
        desired_users, desired_groups: the mapping's result for this target.
        actual_users, memberships: what the sync read of the target.
        ledger: this profile's ledger for the target.
        protected: usernames never touched (not orphans: they are the product's own).
        foreign_names: names of accounts other profiles manage on the instance.
        claimed_twice: rows (target_key, name, profiles) two profiles both claim.
        conflicts: the plan's conflicts (why a deactivation was held back).
        deactivated: keys whose deactivation succeeded (None: nothing was loaded).
        braked: the brake held this target's plan (nothing planned runs).

    Returns:
        {kind: {"count": n, "items": [{"name", "why"}, ...]}} for every kind in `KINDS`.
    """
    report: dict[str, Any] = {}
    explained = (
        set(_key(desired_users["username"]))
        | set(_key(list(protected)))
        | set(foreign_names)
        | set(_key(ledger.loc[ledger["kind"] == "user", "name"]))
    )
    managed_keys = set(ledger.loc[ledger["kind"] == "user", "target_key"].dropna())
    managed_names = set(
        _key(actual_users.loc[actual_users["target_key"].isin(managed_keys), "username"])
    )
    members = memberships.assign(ukey=_key(memberships["username"]).to_numpy())
    strays = members.loc[~members["ukey"].isin(explained | managed_names)]
    orphans = (
        strays.groupby("ukey", sort=True)
        .agg(name=("username", "first"), groups=("group", lambda g: ", ".join(sorted(set(g)))))
        .reset_index(drop=True)
    )
    report["orphans"] = _items(
        orphans["name"],
        "in managed group(s) " + orphans["groups"] + "; no profile manages it and no source "
        "user explains it",
    )

    # Managed, active in the target, source user not active: who is not being deactivated?
    active_ids = set(
        desired_users.loc[desired_users["active"].fillna(False).astype(bool), "source_id"]
    )
    links = ledger.loc[ledger["kind"] == "user", ["source_id", "target_key"]]
    accounts = actual_users.loc[actual_users["active"].fillna(False).astype(bool)]
    leaving = links.loc[~links["source_id"].isin(active_ids)].merge(accounts, on="target_key")
    planned = set(plan.loc[plan["op"] == "deactivate_user", "target_key"])
    why_held = {}
    if conflicts is not None and len(conflicts):
        why_held = dict(zip(conflicts["target_key"], conflicts["reason"], strict=False))
    rows = []
    for key, name in zip(leaving["target_key"], leaving["username"], strict=True):
        if key in planned and not braked and (deactivated is None or key in deactivated):
            continue
        if braked and key in planned:
            why = "its deactivation is held by the brake (awaiting approval or allow_mass_changes)"
        elif key in planned:
            why = "its deactivation was planned but did not succeed"
        elif key in why_held:
            why = why_held[key]
        else:
            why = "not deactivated (deactivate_missing_users is off, or a rule keeps it)"
        rows.append((name, f"source user disabled or gone, account still active: {why}"))
    report["blocked"] = _items([r[0] for r in rows], [r[1] for r in rows])

    twice = (
        claimed_twice if claimed_twice is not None else pd.DataFrame(columns=["name", "profiles"])
    )
    report["claimed_twice"] = _items(
        twice["name"], "claimed by profiles " + twice["profiles"].astype("string")
    )

    mapped = set(_key(desired_groups["group"]))
    remembered = ledger.loc[ledger["kind"] == "group", "name"].dropna()
    gone = remembered[~_key(remembered).isin(mapped).to_numpy()]
    report["unmapped_groups"] = _items(
        gone,
        "usersync manages it (ledger) but no rule maps it any more; its managed members are "
        "removed (behind the brake)",
    )
    return report


def _items(names: Any, why: Any) -> dict[str, Any]:
    """{"count", "items": [{"name", "why"}]} of these names; `why` is one text for all or one
    per name."""
    names = list(pd.Series(names, dtype="string").fillna(""))
    reasons = (
        [why] * len(names)
        if isinstance(why, str)
        else list(pd.Series(why, dtype="string").fillna(""))
    )
    items = [{"name": n, "why": w} for n, w in zip(names, reasons, strict=True)]
    return {"count": len(items), "items": items[:DRIFT_KEPT]}


def drift_markdown(profile: str, drifts: dict[str, dict[str, Any]]) -> str:
    """The drift of every target as one markdown page."""
    lines = [f"# Drift: {profile}", ""]
    titles = {
        "orphans": "Accounts nobody explains",
        "blocked": "Leavers still active",
        "claimed_twice": "Accounts two profiles claim",
        "unmapped_groups": "Managed groups no rule maps",
    }
    for target, drift in drifts.items():
        counts = ", ".join(f"{titles[k].lower()}: {drift[k]['count']}" for k in KINDS)
        lines += [f"## {target}", "", counts, ""]
        for kind in KINDS:
            if not drift[kind]["count"]:
                continue
            lines += [
                f"### {titles[kind]} ({drift[kind]['count']})",
                "",
                "| name | why |",
                "| --- | --- |",
            ]
            lines += [
                f"| {i['name'].replace('|', '/')} | {i['why'].replace('|', '/')} |"
                for i in drift[kind]["items"]
            ]
            lines.append("")
    return "\n".join(lines) + "\n"


__all__ = ["DRIFT_KEPT", "KINDS", "drift_markdown", "drift_report"]
