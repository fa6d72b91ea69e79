"""The `test-sync` flow under the Prefect test server: the markdown artifact an admin reads.

The sample directory runs in a real slapd; the profile points at the sandbox Jira, which the
flow must never contact for writes (Test Sync only reads the source).
"""

from __future__ import annotations

import asyncio

import pytest
from prefect.client.orchestration import get_client
from usersync_flows.sync_preview import run_test_sync_flow

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]


def latest_artifact(key: str) -> str:
    async def read() -> str:
        async with get_client() as client:
            artifacts = await client.read_latest_artifacts()
        return next(a for a in artifacts if a.key == key).data

    return asyncio.run(read())


def test_test_sync_flow_publishes_what_the_directory_holds_and_jira_would_get(make_profile, jira):
    emulator, url = jira
    make_profile(url, name="preview-prof")

    result = run_test_sync_flow(profile="preview-prof", login="asmith")

    assert result["matches"] == 1
    assert result["targets"]["jira"]["account"]["email"] == "asmith@example.org"
    text = latest_artifact("test-sync-preview-prof")
    assert "# Test Sync: preview-prof, uid = `asmith`" in text
    assert "| givenName | Alice |" in text  # every attribute the directory returns
    assert "## jira (jira): what usersync would write" in text
    assert "| username | asmith |" in text
    assert "| display_name | Alice Smith |" in text
    groups = next(line for line in text.splitlines() if line.startswith("Groups: "))
    assert {"developers", "project-leads", "jira-software-users"} <= set(
        groups.removeprefix("Groups: ").split(", ")
    )
    assert emulator.app.writes() == []  # a preview writes nothing


def test_test_sync_flow_with_a_wildcard_login_matches_nobody(make_profile, jira):
    _, url = jira
    make_profile(url, name="preview-star")

    result = run_test_sync_flow(profile="preview-star", login="*")

    assert result["matches"] == 0
    assert "**0 users match**" in latest_artifact("test-sync-preview-star")


def test_test_sync_shows_custom_attributes(make_profile, jira):
    emulator, url = jira
    attributes = (
        "target,source,transform,targets\n"
        "username,uid,strip lower,\n"
        "email,mail,strip lower,\n"
        "display_name,displayName|cn,strip,\n"
        "custom:employee-type,employeeType,strip upper,jira\n"
    )
    make_profile(url, name="preview-custom", attributes=attributes)

    result = run_test_sync_flow(profile="preview-custom", login="dbrown")

    assert result["targets"]["jira"]["account"]["custom:employee-type"] == "CONTRACTOR"
    assert "| custom:employee-type | CONTRACTOR |" in latest_artifact("test-sync-preview-custom")
    assert emulator.app.writes() == []
