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
from usersync.sync import TargetOutcome

#: Plan rows shown in one artifact; the store keeps every row.
PLAN_ROWS_SHOWN = 1000


def plan_rows(plan: pd.DataFrame, limit: int = PLAN_ROWS_SHOWN) -> list[dict[str, Any]]:
    """The first `limit` plan rows as plain JSON values (numpy/pandas scalars converted)."""
    return json.loads(plan.head(limit).to_json(orient="records"))


def summary_markdown(
    profile: str, outcomes: Sequence[TargetOutcome], *, dry_run: bool, source_counts: dict
) -> str:
    """The run summary: source counts, then one row per target with planned/executed counts."""
    mode = "dry run: planned only, nothing written" if dry_run else "sync"
    lines = [
        f"# usersync {profile}: {mode}",
        "",
        "Source: " + ", ".join(f"{v} {k}" for k, v in source_counts.items()),
        "",
        "| target | status | " + " | ".join(OPERATIONS) + " | rejected | error |",
        "|---|---|" + "---|" * len(OPERATIONS) + "---|---|",
    ]
    for outcome in outcomes:
        cells = []
        for op in OPERATIONS:
            planned = outcome.planned.get(op, 0)
            done = outcome.executed.get(op)
            if done is None or dry_run:
                cells.append(str(planned))
            else:
                cell = f"{done['succeeded']}/{planned}"
                if done["failed"]:
                    cell += f" ({done['failed']} failed)"
                cells.append(cell)
        error = (outcome.error or "").replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {outcome.target} | {outcome.status} | "
            + " | ".join(cells)
            + f" | {outcome.rejected} | {error} |"
        )
    if not dry_run:
        lines += ["", "Cells read succeeded/planned."]
    return "\n".join(lines) + "\n"


def summary_text(outcomes: Sequence[TargetOutcome]) -> str:
    """A few lines for a terminal: per target, the counts a user looks at first."""
    out = []
    for o in outcomes:

        def n(op: str, o: TargetOutcome = o) -> int:
            done = o.executed.get(op)
            return done["succeeded"] if done else o.planned.get(op, 0)

        out.append(
            f"{o.target}: {o.status}: users created {n('create_user')}, "
            f"updated {n('update_user')}, adopted {n('adopt_user')}, "
            f"deactivated {n('deactivate_user')}, reactivated {n('reactivate_user')}; "
            f"groups created {n('create_group')}; memberships added {n('add_membership')}, "
            f"removed {n('remove_membership')}; rejected {o.rejected}"
            + (f"; error: {o.error}" if o.error else "")
        )
    return "\n".join(out)
