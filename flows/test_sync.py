"""The `test-sync` flow: the Test Sync button, for one login of one profile.

It finds the user in the profile's source (the value escaped into the filter), and publishes
a markdown artifact `test-sync-<profile>` with every attribute the directory returns and what
usersync would write in each target (mapped attributes, groups). It reads the source only and
writes nothing anywhere. The work is `usersync.testsync.run_test_sync`; this flow wires it.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks.secrets import load_prefect_secret
from usersync import sync
from usersync.testsync import run_test_sync


@flow(name="test-sync", flow_run_name="test-sync-{profile}", validate_parameters=True)
def run_test_sync_flow(profile: str, login: str, attribute: str | None = None) -> dict:
    """Preview what usersync would do for one user.

    Args:
        profile: the folder name under mappings/.
        login: the value to look up (taken literally: `*` matches only a star).
        attribute: the attribute to match (default sAMAccountName on AD, uid elsewhere).
    """
    loaded = sync.load(profile)
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
