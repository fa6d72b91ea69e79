"""Served deployments: each profile's offboarding run, started in seconds by a long-running process.

`usersync serve PROFILE...` runs `serve_profiles`: it serves one deployment per profile,
`sync/<profile>-offboarding`, whose trigger is the inbox's `usersync.inbox.offboarded`
event about that profile (tasks/inbox_events.py): a delta run scoped to the users the push
disabled or deleted (`only`), which deactivates them before anything else changes. The
process holds the flow in memory (no entrypoint to load, no worker to pull code), and polls
for runs every `poll_seconds` (Prefect's default, PREFECT_RUNNER_POLL_FREQUENCY, is 10 s: the
latency of every run it takes). Each run runs in a thread of this process (flows/warm.py), where
usersync is already imported: Prefect's own runner would start a new interpreter for it.

For a profile whose LDAP source reads incrementally, the process also polls the directory for
users disabled since the last run (tasks/leaver_poll.py, every `leaver_poll_seconds`), and the
same deployment triggers on what the poll emits (`usersync.source.offboarded`).
"""

from __future__ import annotations

from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from usersync_flows.sync import sync
from usersync_flows.warm import WarmRunner
from usersync_tasks.inbox_events import OFFBOARDED_EVENT, profile_resource
from usersync_tasks.leaver_poll import (
    POLL_EVERY_SECONDS,
    SOURCE_OFFBOARDED_EVENT,
    LeaverPoller,
    pollable,
)

#: How often the serving process asks for runs to start (seconds), unless told otherwise.
POLL_SECONDS = 1.0


def offboarding_deployment(profile: str) -> RunnerDeployment:
    """`sync/<profile>-offboarding`: a delta run scoped to the users an offboarding push names."""
    return sync.to_deployment(
        name=f"{profile}-offboarding",
        description=(
            f"Offboarding of profile {profile}: a push into its inbox that disables or deletes "
            "a user, or a poll of its LDAP source that finds one disabled, triggers a delta run "
            "scoped to that user (deactivated first, in seconds). "
            "Served by `usersync serve`; the scheduled runs are the profile's own deployments."
        ),
        parameters={"profile": profile, "mode": "delta"},
        tags=["usersync", f"profile:{profile}", "offboarding"],
        triggers=[
            DeploymentEventTrigger(
                name=f"{profile}: offboarding push",
                expect={OFFBOARDED_EVENT, SOURCE_OFFBOARDED_EVENT},
                match={"prefect.resource.id": profile_resource(profile)["prefect.resource.id"]},
                parameters={
                    "profile": profile,
                    "mode": "delta",
                    "only": "{{ event.payload.users }}",
                },
            )
        ],
    )


def serve_profiles(
    profiles: list[str],
    *,
    limit: int = 4,
    poll_seconds: float = POLL_SECONDS,
    leaver_poll_seconds: float = POLL_EVERY_SECONDS,
) -> None:
    """Serve every profile's offboarding deployment from this process until it is stopped, and
    poll the incremental LDAP sources among them for leavers (`leaver_poll_seconds` 0: not)."""
    poller = None
    polled = pollable(profiles) if leaver_poll_seconds > 0 else []
    if polled:
        poller = LeaverPoller(polled, leaver_poll_seconds)
        poller.start()
    try:
        WarmRunner(
            [offboarding_deployment(p) for p in profiles],
            sync,
            limit=limit,
            poll_seconds=poll_seconds,
        ).serve()
    finally:
        if poller is not None:
            poller.stop()
