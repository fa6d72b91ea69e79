"""Approving a braked plan instead of failing the run.

When a plan trips the brake (too many deactivations or membership removals), a deployment run
pauses with a form in the Prefect UI (Runs → the paused run → Resume): which limits tripped, the
counts, and the plan artifacts listing every destructive operation. An administrator approves
or rejects, giving their name; the decision is recorded with the run in the store. A run of
`usersync sync` on a terminal asks there instead. Anywhere else (no deployment, no terminal)
the braked target fails as before, and `allow_mass_changes` releases it for one run.

A run whose pause times out is rejected. What happens after an approval (the plan is made
again, and loaded only if its destructive operations are the ones approved) is the flow's.

As it pauses, a run emits `usersync.approval.requested` (the automation "usersync: approval
requested" of `usersync alerts install` turns it into a notification), and `usersync approve
RUN` / `usersync reject RUN` answer the form from a shell (`answer`), as the UI's Resume does.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Running
from prefect.utilities.urls import url_for
from pydantic import Field
from usersync_tasks.report import announce_approval_requested

from usersync import BrakedTarget, ConfigError, UsersyncError

#: How often a paused run looks whether someone answered (seconds).
POLL_SECONDS = 5
#: The pause key of an approval round ("brake-approval-1", ...): how a run waiting for an
#: approval is told from one paused for anything else.
PAUSE_KEY_PREFIX = "brake-approval-"


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
        _announce(profile, braked, timeout_seconds, round_no)
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
                key=f"{PAUSE_KEY_PREFIX}{round_no}",
            )
        except FlowPauseTimeout:
            _running_again_after_the_pause()
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


def _running_again_after_the_pause() -> None:
    """Put this run back to Running once its pause timed out, so that it ends in its own
    state (Braked, not Prefect's "paused and never resumed" failure, which the "sync failed"
    alert would report as well). Prefect refuses any other way out of an expired pause."""
    run = FlowRunContext.get().flow_run  # type: ignore[union-attr] - "ui" means a flow run
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(
            run.id, Running(message="the approval timed out: taken as a rejection"), force=True
        )


def run_url(flow_run_id: UUID | str) -> str | None:
    """The run's page in the Prefect UI (None when no UI URL is known)."""
    return url_for("flow-run", obj_id=str(flow_run_id))


def _announce(
    profile: str, braked: list[BrakedTarget], timeout_seconds: float, round_no: int
) -> None:
    """Tell whoever listens that this run now waits for an approval, and until when."""
    run = FlowRunContext.get().flow_run  # type: ignore[union-attr] - "ui" means a flow run
    announce_approval_requested(
        profile,
        [
            {
                "target": b.target,
                "limits": [asdict(limit) for limit in b.limits],
                "plan_artifact": b.plan_artifact,
                "destructive": b.destructive,
            }
            for b in braked
        ],
        flow_run_id=str(run.id),
        flow_run_name=run.name,
        url=run_url(run.id),
        deadline=datetime.now(UTC) + timedelta(seconds=timeout_seconds),
        round_no=round_no,
    )


class NotWaitingError(UsersyncError):
    """The run named is not waiting for an approval."""


def waiting_run(run: str) -> FlowRun:
    """The flow run `run` (its id, or the name of a run paused for an approval).

    Raises:
        ConfigError: no such run, or the name fits several paused runs.
        NotWaitingError: the run is not paused for an approval of its braked plan.
    """
    try:
        run_id: UUID | None = UUID(run)
    except ValueError:
        run_id = None  # a name: only the runs paused now can be meant
    with get_client(sync_client=True) as client:
        if run_id is not None:
            try:
                found = client.read_flow_run(run_id)
            except ObjectNotFound:
                raise ConfigError(f"no flow run {run} on this Prefect server") from None
        else:
            paused = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=[run]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])),
                )
            )
            if not paused:
                raise ConfigError(
                    f"no paused flow run named '{run}': give the run's id (the URL's last part, "
                    "or the approval notification's)"
                )
            if len(paused) > 1:
                ids = ", ".join(str(r.id) for r in paused)
                raise ConfigError(f"several paused runs are named '{run}': give one id of {ids}")
            found = paused[0]
    state = found.state
    waiting = (
        state is not None
        and state.is_paused()
        and str(state.state_details.pause_key or "").startswith(PAUSE_KEY_PREFIX)
    )
    if not waiting:
        raise NotWaitingError(
            f"flow run {found.name} ({found.id}) is not waiting for an approval: it is "
            f"{state.name if state else 'without a state'}"
        )
    return found


def answer(run: str, *, approve: bool, name: str, comment: str = "") -> FlowRun:
    """Approve or reject the braked plan flow run `run` waits on, as the UI's form does.

    Returns:
        The flow run answered.

    Raises:
        ConfigError: no such run, or `name` is empty.
        NotWaitingError: the run is not (or no longer) waiting for an approval.
    """
    if not name.strip():
        raise ConfigError("--name is required: it is recorded with the decision")
    found = waiting_run(run)
    with get_client(sync_client=True) as client:
        result = client.resume_flow_run(
            found.id, run_input={"approve": approve, "name": name.strip(), "comment": comment}
        )
    if result.status.value != "ACCEPT":
        reason = getattr(result.details, "reason", None) or result.status.value
        raise NotWaitingError(f"flow run {found.name} ({found.id}) was not resumed: {reason}")
    return found
