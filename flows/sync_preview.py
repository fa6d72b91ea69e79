"""The `test-sync` flow: the Test Sync button, for one login of one profile.

It finds the user in the profile's source (the value escaped into the filter), and publishes
a markdown artifact `test-sync-<profile>` with every attribute the directory returns and what
usersync would write in each target (mapped attributes, groups). It reads the source only and
writes nothing anywhere, so one deployment serves every profile (`test-sync/on-demand`). The
work is `usersync.sync_preview.run_test_sync`; this flow wires it.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from usersync_flows.parameters import ProfileName, form_field
from usersync_tasks.run_logs import engine_logs_in_run_log
from usersync_tasks.secrets import load_prefect_secret

from usersync import prepare_profile, run_test_sync


@flow(name="test-sync", flow_run_name="test-sync-{profile}", validate_parameters=True)
def run_test_sync_flow(
    profile: ProfileName = form_field(  # noqa: B008 - the run form (flows/parameters.py)
        "Profile", "The profile whose source is searched: a folder under mappings/."
    ),
    login: str = form_field(
        "Login",
        "The value to look up, taken literally (`*` matches only a star), e.g. a username.",
    ),
    attribute: str | None = form_field(
        "Attribute",
        "The source attribute to match; empty: sAMAccountName on Active Directory, uid elsewhere.",
        None,
    ),
) -> dict:
    """Preview what usersync would do for one user; write nothing."""
    with engine_logs_in_run_log():
        loaded = prepare_profile(profile)
        report = run_test_sync(
            loaded, login, attribute=attribute, load_prefect_secret=load_prefect_secret
        )
    create_markdown_artifact(
        markdown=report.markdown(),
        key=f"test-sync-{profile}",
        description=f"Test Sync of {report.attribute}={login!r}: {report.matches} match(es)",
    )
    get_run_logger().info(
        "test sync %s %s=%r: %d match(es)", profile, report.attribute, login, report.matches
    )
    return {
        "matches": report.matches,
        "source_id": report.source_id,
        "targets": {
            p.target: {"account": p.account, "groups": p.groups, "rejected": p.rejected}
            for p in report.targets
        },
    }
