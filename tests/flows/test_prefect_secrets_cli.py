"""`usersync check` and `usersync test-sync` read Prefect Secret blocks from the configured API.

A profile may name its target's password as a Prefect Secret block; with PREFECT_API_URL set
(here: the session's test server) the CLI checks read it there, as the flows do. Without a
Prefect API the check says what to set.
"""

from __future__ import annotations

import pytest
from prefect.blocks.system import Secret
from prefect.settings import PREFECT_API_URL, temporary_settings
from usersync_cli.main import main

from tests.flows.conftest import JIRA_PASSWORD

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]

BLOCK = "usersync-test-jira-password"


@pytest.fixture
def profile_with_a_secret_block(make_profile, jira):
    emulator, url = jira
    folder = make_profile(url, name="secretive")
    path = folder / "profile.yaml"
    text = path.read_text(encoding="utf-8")
    env_ref = "password: {env: TEST_JIRA_PASSWORD}"
    assert env_ref in text
    path.write_text(text.replace(env_ref, f"password: {{prefect_secret: {BLOCK}}}"), "utf-8")
    Secret(value=JIRA_PASSWORD).save(BLOCK, overwrite=True)
    return emulator


def test_check_reads_the_targets_password_from_a_prefect_secret_block(
    profile_with_a_secret_block, capsys
):
    assert main(["check", "secretive"]) == 0

    out = capsys.readouterr().out
    assert "target jira: OK" in out
    assert "source: OK" in out
    assert profile_with_a_secret_block.app.writes() == []


def test_test_sync_reads_prefect_secret_blocks_too(profile_with_a_secret_block, capsys):
    assert main(["test-sync", "secretive", "asmith"]) == 0
    assert "| display_name | Alice Smith |" in capsys.readouterr().out


def test_check_without_a_prefect_api_says_what_to_set(profile_with_a_secret_block, capsys):
    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert main(["check", "secretive"]) == 1

    out = capsys.readouterr().out
    assert f"secret '{BLOCK}' is a Prefect Secret block: set PREFECT_API_URL" in out


def test_check_names_a_missing_secret_block(profile_with_a_secret_block, capsys):
    Secret.delete(BLOCK)
    assert main(["check", "secretive"]) == 1

    assert f"Prefect Secret block '{BLOCK}' not found on" in capsys.readouterr().out
