"""One profile, three products: each target's outcome is its own, and a dead one fails alone."""

from __future__ import annotations

import httpx
import pytest
from usersync_flows.sync import SyncFailed, sync
from usersync_sandbox.serve import Sandbox

from tests.flows.conftest import JIRA_PASSWORD
from usersync.store import Store, store_url

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]

OTHER_TARGETS = """  confluence:
    kind: confluence
    url: {confluence}
    auth: {{kind: basic, username: admin, password: {{env: TEST_JIRA_PASSWORD}}}}
    max_attempts: 2
    timeout_seconds: 5
  bitbucket:
    kind: bitbucket
    url: {bitbucket}
    auth: {{kind: basic, username: admin, password: {{env: TEST_JIRA_PASSWORD}}}}
    max_attempts: 2
    timeout_seconds: 5"""

ACTIVE_WITH_MAIL = 18


def confluence_user(url: str, username: str) -> dict | None:
    response = httpx.get(
        f"{url}/rest/api/user", params={"username": username}, auth=("admin", JIRA_PASSWORD)
    )
    return None if response.status_code == 404 else response.raise_for_status().json()


def bitbucket_licensed(url: str, username: str) -> bool:
    response = httpx.get(
        f"{url}/rest/api/1.0/admin/permissions/users",
        params={"filter": username},
        auth=("admin", JIRA_PASSWORD),
    ).raise_for_status()
    return any(v["user"]["name"] == username for v in response.json()["values"])


def test_all_three_products_are_synced_in_one_run(make_profile):
    with Sandbox(admin_password=JIRA_PASSWORD) as sandbox:
        make_profile(
            sandbox.url("jira"),
            extra_targets=OTHER_TARGETS.format(
                confluence=sandbox.url("confluence"), bitbucket=sandbox.url("bitbucket")
            ),
        )
        outcomes = {o["target"]: o for o in sync(profile="testprof")}

        assert {t: o["status"] for t, o in outcomes.items()} == {
            "jira": "succeeded",
            "confluence": "succeeded",
            "bitbucket": "succeeded",
        }
        for outcome in outcomes.values():
            assert outcome["executed"]["create_user"]["succeeded"] == ACTIVE_WITH_MAIL
        assert confluence_user(sandbox.url("confluence"), "asmith")["displayName"] == "Alice Smith"
        assert confluence_user(sandbox.url("confluence"), "mjones") is not None
        assert bitbucket_licensed(sandbox.url("bitbucket"), "asmith")
        assert not bitbucket_licensed(sandbox.url("bitbucket"), "mgonzalez")

        again = sync(profile="testprof")
        assert [o["planned"] for o in again] == [{}, {}, {}]


def test_a_stopped_product_fails_alone_and_the_others_complete(make_profile):
    with Sandbox(admin_password=JIRA_PASSWORD) as sandbox:
        make_profile(
            sandbox.url("jira"),
            extra_targets=OTHER_TARGETS.format(
                confluence=sandbox.url("confluence"), bitbucket=sandbox.url("bitbucket")
            ),
        )
        sandbox.stop("bitbucket")

        with pytest.raises(SyncFailed) as error:
            sync(profile="testprof")

        assert "bitbucket: failed" in str(error.value)
        assert "jira" not in str(error.value) and "confluence" not in str(error.value)
        assert confluence_user(sandbox.url("confluence"), "asmith") is not None
        jira = httpx.get(
            f"{sandbox.url('jira')}/rest/api/2/user",
            params={"username": "asmith"},
            auth=("admin", JIRA_PASSWORD),
        )
        assert jira.status_code == 200
    runs = Store.open(store_url()).runs("testprof").set_index("target")
    assert runs.loc["jira", "status"] == "succeeded"
    assert runs.loc["confluence", "status"] == "succeeded"
    assert runs.loc["bitbucket", "status"] == "failed"
    assert "no answer" in runs.loc["bitbucket", "error"]
