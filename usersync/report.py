"""Human-readable reports of a sync: the summary text and the plan as table rows.

Prefect-free so the CLI and the tasks print the same thing; the Prefect layer publishes these
as artifacts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from usersync.model import OPERATIONS
from usersync.outcome import TargetOutcome

#: Plan rows shown in one artifact; the store keeps every row.
PLAN_ROWS_SHOWN = 1000
#: Rows of each detail table (conflicts, failures, rejected users) in the summary, per target.
DETAIL_ROWS_SHOWN = 100


def plan_rows(
    plan: pd.DataFrame, limit: int = PLAN_ROWS_SHOWN, conflicts: pd.DataFrame | None = None
) -> list[dict[str, Any]]:
    """The first `limit` plan rows as plain JSON values (numpy/pandas scalars converted).

    Conflicts (users no operation was planned for) follow the operations as rows whose op is
    `conflict`, so the plan artifact shows them where an admin looks for that user.
    """
    rows = json.loads(
        plan.drop(columns=["desired"], errors="ignore").head(limit).to_json(orient="records")
    )
    if conflicts is not None and len(conflicts) and len(rows) < limit:
        extra = conflicts.head(limit - len(rows)).assign(op="conflict")
        rows += json.loads(extra.to_json(orient="records"))
    return rows


def seats_text(seats: dict) -> str:
    """`TargetPlan.seats` in words: "licence seats needed N, free F"."""
    free = "unlimited" if seats["free"] is None else seats["free"]
    if not seats["known"]:
        free = f"unknown ({seats['detail']})"
    return f"licence seats needed {seats['needed']}, free {free}"


def op_counts(counts: dict[str, int]) -> str:
    """Operation counts in plan order, zeros left out: "create_user 5, add_membership 12"
    ("nothing" when all are zero)."""
    parts = [f"{op} {counts[op]}" for op in OPERATIONS if counts.get(op)]
    return ", ".join(parts) or "nothing"


def done_counts(outcome: TargetOutcome) -> dict[str, int]:
    """What was written to the target, per operation (0 for all when nothing was loaded: a dry
    run, a braked or rejected plan, a target that failed before its load)."""
    return {op: c["succeeded"] for op, c in outcome.executed.items() if c.get("succeeded")}


def failed_counts(outcome: TargetOutcome) -> dict[str, int]:
    """Operations that failed or were skipped during the load, per operation."""
    return {
        op: c.get("failed", 0) + c.get("skipped", 0)
        for op, c in outcome.executed.items()
        if c.get("failed", 0) + c.get("skipped", 0)
    }


def summary_markdown(
    profile: str, outcomes: Sequence[TargetOutcome], *, dry_run: bool, source_counts: dict
) -> str:
    """The run summary: source counts, then one row per target: what was planned, what was
    done (written), what failed. Planned and done are never mixed: a target whose plan was
    braked, rejected or not loaded shows nothing done."""
    mode = "dry run: planned only, nothing written" if dry_run else "sync"
    lines = [
        f"# usersync {profile}: {mode}",
        "",
        "Source: " + ", ".join(f"{v} {k}" for k, v in source_counts.items()),
        "",
        "| target | status | planned | done | failed or skipped | rejected | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        done = "nothing (dry run)" if dry_run else op_counts(done_counts(outcome))
        failed = failed_counts(outcome)
        error = (outcome.error or "").replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {outcome.target} | {outcome.status} | {op_counts(outcome.planned)} | {done} | "
            f"{op_counts(failed) if failed else ''} | {outcome.rejected} | {error} |"
        )
    kinds = [line for line in map(mode_line, outcomes) if line]
    if kinds:
        lines += ["", *[f"- {line}" for line in kinds]]
    for outcome in outcomes:
        if outcome.alerts:
            lines += ["", f"## {outcome.target}: needs a person (security)", ""]
            lines += [f"- **{line}**" for line in outcome.alerts[:DETAIL_ROWS_SHOWN]]
            if len(outcome.alerts) > DETAIL_ROWS_SHOWN:
                lines.append(f"- ... and {len(outcome.alerts) - DETAIL_ROWS_SHOWN} more")
        seats = outcome.seats
        if seats:
            line = f"{outcome.target}: {seats_text(seats)}"
            if seats["held_back"]:
                line += (
                    f": **{seats['held_back']} creation(s)/reactivation(s) held back** "
                    "(listed below; seats that deactivations free count once they succeed)"
                )
            lines += ["", line + "."]
        for attribute, count in outcome.unverifiable.items():
            lines += [
                "",
                f"{outcome.target}: {attribute} of {count} managed account(s) cannot be read "
                "with these credentials: left alone, never compared.",
            ]
        _detail_table(
            lines,
            f"{outcome.target}: failed operations",
            ["op", "username", "group", "error"],
            outcome.failures,
        )
        _detail_table(
            lines,
            f"{outcome.target}: source users not provisioned (rejected)",
            ["locator", "reason"],
            outcome.rejected_users,
            total=outcome.rejected,
        )
        _detail_table(
            lines,
            f"{outcome.target}: no operation planned for",
            ["username", "source_id", "reason"],
            outcome.conflicts,
        )
    return "\n".join(lines) + "\n"


def _detail_table(
    lines: list[str],
    title: str,
    columns: list[str],
    rows: Sequence[dict[str, Any]],
    *,
    total: int | None = None,
) -> None:
    """Append a markdown table of `rows` (first `DETAIL_ROWS_SHOWN`) under `title`, if any."""
    if not rows:
        return
    lines += ["", f"## {title}", "", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for row in rows[:DETAIL_ROWS_SHOWN]:
        cells = [str(row.get(c) or "").replace("|", "\\|").replace("\n", " ") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    more = (total if total is not None else len(rows)) - min(len(rows), DETAIL_ROWS_SHOWN)
    if more > 0:
        lines.append(f"... and {more} more (the run's log and the store have them all)")


def mode_line(outcome: TargetOutcome) -> str | None:
    """What kind of run the target's plan was ("jira: delta run", "jira: reconcile run instead
    of delta: <why>"); None before a plan was made."""
    if outcome.mode is None:
        return None
    if outcome.mode_reason:
        return f"{outcome.target}: reconcile run instead of delta: {outcome.mode_reason}"
    return f"{outcome.target}: {outcome.mode} run"


def summary_text(outcomes: Sequence[TargetOutcome]) -> str:
    """A few lines for a terminal: per target, what was planned and what was done, and what
    kind of run it was."""
    out = []
    for o in outcomes:
        done = "nothing (dry run)" if o.status == "planned" else op_counts(done_counts(o))
        failed = failed_counts(o)
        out.append(
            f"{o.target}: {o.status}: planned {op_counts(o.planned)}; done {done}"
            + (f"; failed or skipped {op_counts(failed)}" if failed else "")
            + f"; rejected {o.rejected}"
            + (f"; error: {o.error}" if o.error else "")
        )
        if (kind := mode_line(o)) is not None:
            out.append(kind)
    return "\n".join(out)


def conflict_lines(conflicts: Sequence[dict[str, Any]], most: int = 50) -> list[str]:
    """The conflicts for a log: one line per distinct reason, with how many accounts it holds
    back and the first of them (a guard holding back 1,600 accounts for one reason is one line;
    the plan artifact and `usersync conflicts` list them all)."""
    by_reason: dict[str, list[str]] = {}
    for conflict in conflicts:
        by_reason.setdefault(str(conflict.get("reason") or ""), []).append(
            str(conflict.get("username") or "")
        )
    lines = []
    for reason, names in list(by_reason.items())[:most]:
        named = [n for n in names if n]
        if len(names) == 1:
            lines.append(f"no operation for {named[0]}: {reason}" if named else reason)
            continue
        first = ", ".join(named[:5]) + (", ..." if len(named) > 5 else "")
        lines.append(f"{len(names)} account(s) ({first}): {reason}")
    if len(by_reason) > most:
        lines.append(f"... and {len(by_reason) - most} more reason(s): see the plan artifact")
    return lines


#: Characters of an error kept in a table cell (`usersync runs --run` shows operations).
ERROR_CHARS_SHOWN = 70


def _table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    """Rows as aligned text columns (numbers, the columns in `right`, to the right)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(header), *[line(r) for r in rows]]


def _total(counts: dict[str, Any] | None, part: str) -> int:
    counts = counts or {}
    if part == "planned":
        return sum((counts.get("planned") or {}).values())
    executed = counts.get("executed") or {}
    keys = ("succeeded",) if part == "done" else ("failed", "skipped")
    return sum(c.get(k, 0) for c in executed.values() for k in keys)


def runs_table(runs: pd.DataFrame, limit: int, run_url: Any = None) -> str:
    """The recorded runs, newest first, one flow run a group: when, profile, kind, then per
    target its outcome and operation counts (planned, done, failed or skipped) and the
    store's run id; under each group the Prefect flow run (`run_url(id)`, else its id).

    Args:
        runs: `Store.runs()` rows, newest first.
        limit: flow runs shown at most.
        run_url: a function from a flow run id to its UI URL (or None); None: ids only.
    """
    if runs.empty:
        return "no runs recorded"
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in runs.to_dict("records"):
        key = _short(row["flow_run_id"]) or f"store run {row['id']}"
        if key not in groups and len(groups) == limit:
            break
        groups.setdefault(key, []).append(row)
    header = [
        "when (UTC)",
        "profile",
        "kind",
        "target",
        "outcome",
        "planned",
        "done",
        "failed",
        "id",
    ]
    lines: list[str] = []
    rows: list[list[str]] = []
    ends: list[tuple[int, str]] = []
    for key, members in groups.items():
        members.sort(key=lambda r: r["id"])
        first = members[0]
        for n, row in enumerate(members):
            outcome = str(row["status"])
            approval = (row["counts"] or {}).get("approval")
            if approval:
                verdict = "approved" if approval.get("approved") else "not approved"
                outcome += f" ({verdict}: {approval.get('by')})"
            rows.append(
                [
                    f"{first['started_at']:%Y-%m-%d %H:%M}" if n == 0 else "",
                    first["profile"] if n == 0 else "",
                    _kind(first) if n == 0 else "",
                    row["target"],
                    outcome,
                    str(_total(row["counts"], "planned")),
                    str(_total(row["counts"], "done")),
                    str(_total(row["counts"], "failed")),
                    str(row["id"]),
                ]
            )
        recorded = bool(_short(first["flow_run_id"]))
        where = (run_url(key) if run_url and recorded else None) or (
            f"flow run {key}" if recorded else "no flow run recorded"
        )
        ends.append((len(rows), f"  ↳ {where}"))
    table = _table(header, rows, right={5, 6, 7, 8})
    lines.append(table[0])
    done = 0
    for end, link in ends:
        lines += table[1 + done : 1 + end]
        lines.append(link)
        done = end
    return "\n".join(lines)


def _kind(row: dict[str, Any]) -> str:
    """A run's kind for `usersync runs`: dry run, delta, reconcile, or a delta run that
    reconciled ("reconcile (delta asked)"); "sync" for runs recorded before delta runs."""
    counts = row["counts"] or {}
    if row["dry_run"]:
        return "dry run"
    if counts.get("mode_reason"):
        return "reconcile (delta asked)"
    return counts.get("mode") or "sync"


def run_operations_text(runs: pd.DataFrame, operations: dict[int, pd.DataFrame]) -> str:
    """One flow run's targets (its store runs) and each one's operations, with their status.

    Args:
        runs: the store runs of that flow run (one per target, two for a target that waited
            for an approval), any order.
        operations: each store run id's `Store.operations()` frame.
    """
    lines: list[str] = []
    for row in sorted(runs.to_dict("records"), key=lambda r: r["id"]):
        counts = row["counts"] or {}
        kind = _kind(row)
        lines.append(
            f"{row['profile']} / {row['target']}: {row['status']} ({kind}, store run {row['id']}, "
            f"started {row['started_at']:%Y-%m-%d %H:%M:%S} UTC, flow run "
            f"{_short(row['flow_run_id']) or '-'})"
        )
        if _short(row["error"]):
            lines.append(f"  error: {row['error']}")
        if counts.get("mode_reason"):
            lines.append(f"  reconcile run instead of delta: {counts['mode_reason']}")
        approval = counts.get("approval")
        if approval:
            verdict = "approved" if approval.get("approved") else "not approved"
            comment = f": {approval['comment']}" if approval.get("comment") else ""
            lines.append(
                f"  {verdict} by {approval.get('by')} ({approval.get('channel')}, "
                f"{approval.get('at')}){comment}"
            )
        frame = operations.get(row["id"])
        if frame is None or frame.empty:
            lines += ["  no operations", ""]
            continue
        table = [
            [
                str(op.seq),
                op.op,
                _short(op.username),
                _short(op.group_name),
                op.status,
                _short(op.error),
            ]
            for op in frame.itertuples()
        ]
        lines += [
            "  " + line
            for line in _table(["seq", "op", "user", "group", "status", "error"], table, {0})
        ]
        lines.append("")
    return "\n".join(lines).rstrip()


def _short(text: Any) -> str:
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return ""
    text = str(text).replace("\n", " ")
    return text if len(text) <= ERROR_CHARS_SHOWN else text[: ERROR_CHARS_SHOWN - 1] + "…"
