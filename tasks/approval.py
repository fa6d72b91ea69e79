"""Approving a braked plan instead of failing the run.

When a plan trips the brake (too many deactivations or membership removals), a deployment run
pauses with a form in the Prefect UI (Runs → the paused run → Resume): which limits tripped, the
counts, and the plan artifacts listing every destructive operation. An administrator approves
or rejects, giving their name; the decision is recorded with the run in the store. A run of
`usersync sync` on a terminal asks there instead. Anywhere else (no deployment, no terminal)
the braked target fails as before, and `allow_mass_changes` releases it for one run.

A run whose pause times out is rejected. What happens after an approval (the plan is made
again, and loaded only if its destructive operations are the ones approved) is the flow's.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from usersync.plan import BrakeLimit

#: How often a paused run looks whether someone answered (seconds).
POLL_SECONDS = 5


class BrakeApproval(RunInput):
    """The form an administrator fills in to let a braked plan run."""

    approve: bool = Field(
        False,
        title="Approve",
        description="Tick to let this run make the destructive changes listed above; leave "
        "it unticked to reject them (the braked targets then fail, nothing is written there).",
    )
    name: str = Field(
        title="Your name",
        min_length=1,
        max_length=200,
        description="Recorded with the decision in usersync's store.",
    )
    comment: str = Field("", title="Comment", max_length=2000)


@dataclass
class Decision:
    """What was decided about a braked plan, by whom and how."""

    approved: bool
    by: str
    channel: str  # "ui", "terminal" or "timeout"
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    comment: str = ""
    limits: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BrakedTarget:
    """A target whose plan tripped the brake, as the approver sees it."""

    target: str
    limits: tuple[BrakeLimit, ...]
    plan_artifact: str
    destructive: int


def channel() -> str | None:
    """How this run can ask: "ui" in a deployment run, "terminal" when a person sits at
    standard input (`usersync sync`), else None (the brake fails the target)."""
    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None and context.flow_run.deployment_id:
        return "ui"
    if os.environ.get("USERSYNC_NO_PROMPT") != "1" and sys.stdin is not None and sys.stdin.isatty():
        return "terminal"
    return None


def describe(profile: str, braked: list[BrakedTarget], round_no: int) -> str:
    """The markdown shown above the approval form."""
    lines = [
        f"# usersync: approve the braked plan of profile {profile}?",
        "",
    ]
    if round_no > 1:
        lines += [
            "The source or the targets changed while this run waited, so the plan was made "
            "again and differs from the one shown before. This is the new plan.",
            "",
        ]
    for item in braked:
        lines += [
            f"## {item.target}: {item.destructive} destructive operation(s)",
            "",
            *[f"- {limit.what}: **{limit.count}** (limit {limit.limit})" for limit in item.limits],
            "",
            f"Every operation is in the artifact `{item.plan_artifact}` (Artifacts tab).",
            "",
        ]
    lines += [
        "Approve only after checking the source: a changed filter, base DN or a renamed group "
        "is the usual cause. After approval the plan is made again; it runs only if its "
        "destructive operations are exactly these, otherwise you are asked again.",
    ]
    return "\n".join(lines)


def ask(
    profile: str, braked: list[BrakedTarget], *, timeout_seconds: float, round_no: int = 1
) -> Decision | None:
    """Ask whether the braked plans may run; None when nobody can be asked here."""
    how = channel()
    limits = [f"{b.target}: {limit.what}: {limit.count}" for b in braked for limit in b.limits]
    text = describe(profile, braked, round_no)
    logger = get_run_logger()
    if how == "ui":
        logger.warning(
            "the brake stopped %s; waiting up to %.0f s for an approval in the Prefect UI "
            "(this run → Resume)",
            ", ".join(b.target for b in braked),
            timeout_seconds,
        )
        try:
            answer = pause_flow_run(
                wait_for_input=BrakeApproval.with_initial_data(description=text),
                timeout=int(timeout_seconds),
                poll_interval=min(POLL_SECONDS, max(1, int(timeout_seconds // 2))),
                key=f"brake-approval-{round_no}",
            )
        except FlowPauseTimeout:
            return Decision(False, "nobody", "timeout", limits=limits)
        return Decision(answer.approve, answer.name, "ui", comment=answer.comment, limits=limits)
    if how == "terminal":
        print(text, file=sys.stderr)
        reply = input(
            "Approve these destructive changes? Type your name to approve, empty to reject: "
        )
        name = reply.strip()
        return Decision(bool(name), name or "terminal", "terminal", limits=limits)
    return None
