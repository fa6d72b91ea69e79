"""The `test-connection` flow: the seed's Test Connection button for one profile.

It checks the profile's source and every target (reachable, credentials accepted, permissions
sufficient), publishes the results as a Markdown artifact `test-connection-<profile>`, and ends
Failed when any check failed, so the UI shows it at a glance. It writes nothing anywhere, so
one deployment serves every profile (`test-connection/on-demand` in prefect.yaml).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from usersync_flows.parameters import ProfileName, form_field
from usersync_tasks import steps
from usersync_tasks.run_logs import engine_logs_in_run_log
from usersync_tasks.secrets import load_prefect_secret

from usersync import UsersyncError, check_connections, connection_markdown


class ConnectionFailed(UsersyncError):
    """At least one part of the profile failed its check."""


@flow(name="test-connection", flow_run_name="test-connection-{profile}")
def test_connection(
    profile: ProfileName = form_field(  # noqa: B008 - the run form (flows/parameters.py)
        "Profile", "The profile to check: a folder under mappings/. Nothing is written."
    ),
) -> list[dict]:
    """Check the source and each target of `profile`; write nothing."""
    with engine_logs_in_run_log():
        loaded = steps.load_profile(profile)
        results = check_connections(loaded, load_prefect_secret=load_prefect_secret)
    logger = get_run_logger()
    for r in results:
        (logger.info if r.ok else logger.error)("%s (%s): %s", r.part, r.kind, r.detail)
    create_markdown_artifact(
        markdown=connection_markdown(profile, results),
        key=f"test-connection-{profile}",
        description=f"Test Connection of profile {profile}",
    )
    failed = [r for r in results if not r.ok]
    if failed:
        raise ConnectionFailed("; ".join(f"{r.part}: {r.detail}" for r in failed))
    return [r.as_dict() for r in results]
