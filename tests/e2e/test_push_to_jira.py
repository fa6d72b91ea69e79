"""miniOrange's push path end to end: SCIM pushes into the inbox reach the sandbox Jira.

The sample people are pushed over HTTP exactly as miniOrange would (POST /Users, POST /Groups,
PATCH members) into a real inbox; the shipped `demo-push` profile's sync (the engine's
extract → transform → plan → load) provisions them into the Jira emulator; then a new user, a
user set `active: false` and a member removed from a group are pushed, and the next sync
carries each change to Jira, checked through Jira's REST API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from usersync_sandbox.jira import JiraEmulator
from usersync_sandbox.push import SampleUser, ScimPusher, push_sample
from usersync_sandbox.server import serve

from usersync import sync
from usersync.errors import GuardError
from usersync.inbox import InboxApp, issue_token
from usersync.store import Store

PROFILE = "demo-push"
MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
JIRA_PASSWORD = "jira-admin-pw"


def _run_sync(store: Store) -> dict[str, int]:
    """One sync of the profile through the engine's steps; returns what was executed."""
    loaded = sync.prepare_profile(PROFILE)
    snapshot = sync.extract(loaded)
    desired = sync.transform(loaded, snapshot, "jira")
    with sync.open_target_for(loaded, "jira") as target:
        plan = sync.plan_target_sync(loaded, "jira", target, desired, store)
        run_id = store.start_run(PROFILE, "jira", dry_run=False)
        store.record_plan(run_id, plan.plan)
        result = sync.load_target_sync(loaded, target, plan, store, run_id)
    assert result.status == "succeeded", result.outcomes
    return plan.counts()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store.open(store_url)
    token = issue_token(store.engine, PROFILE).token
    jira = JiraEmulator(admin=("admin", JIRA_PASSWORD))
    with serve(InboxApp(store.engine)) as inbox_url, serve(jira.app) as jira_url:
        monkeypatch.setenv("USERSYNC_MAPPINGS_DIR", str(MAPPINGS))
        monkeypatch.setenv("USERSYNC_STORE_URL", store_url)
        monkeypatch.setenv("USERSYNC_DEMO_JIRA_URL", jira_url)
        monkeypatch.setenv("USERSYNC_DEMO_JIRA_PASSWORD", JIRA_PASSWORD)
        jira_api = httpx.Client(
            base_url=f"{jira_url}/rest/api/2", auth=("admin", JIRA_PASSWORD), timeout=10
        )
        yield {
            "store": store,
            "inbox": f"{inbox_url}/scim/v2/{PROFILE}",
            "token": token,
            "jira": jira_api,
        }
        jira_api.close()
    store.close()


def _jira_user(jira: httpx.Client, name: str) -> dict[str, Any] | None:
    response = jira.get("/user", params={"username": name})
    return response.json() if response.status_code == 200 else None


def _members(jira: httpx.Client, group: str) -> set[str]:
    response = jira.get(
        "/group/member", params={"groupname": group, "includeInactiveUsers": "true"}
    )
    assert response.status_code == 200, response.text
    return {m["name"] for m in response.json()["values"]}


def test_an_empty_inbox_stops_the_sync_before_any_write(world) -> None:
    with pytest.raises(GuardError, match="returned 0 user"):
        sync.extract(sync.prepare_profile(PROFILE))


def test_pushed_changes_reach_jira_on_the_next_sync(world) -> None:
    jira: httpx.Client = world["jira"]
    push_sample(world["inbox"], world["token"])

    first = _run_sync(world["store"])
    assert first["create_user"] == 5
    alice = _jira_user(jira, "asmith")
    assert alice is not None
    assert (alice["emailAddress"], alice["displayName"], alice["active"]) == (
        "asmith@example.org",
        "Alice Smith",
        True,
    )
    assert _members(jira, "developers") == {"asmith", "bjohnson", "cwilliams"}
    assert _members(jira, "project-leads") == {"dbrown"}
    # fmiller is pushed with active: false: an account disabled in the IdP is not provisioned
    assert _jira_user(jira, "fmiller") is None

    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.push_user(SampleUser("gnew", "Grace", "New", "gnew@example.org"))
        pusher.add_members("engineering", ["gnew"])
        pusher.set_active("ejones", False)
        pusher.remove_member("engineering", "bjohnson")

    second = _run_sync(world["store"])
    assert second.get("create_user") == 1
    grace = _jira_user(jira, "gnew")
    assert grace is not None and grace["active"] is True
    assert grace["emailAddress"] == "gnew@example.org"
    assert _jira_user(jira, "ejones")["active"] is False
    assert _members(jira, "developers") == {"asmith", "cwilliams", "gnew"}
    assert _jira_user(jira, "bjohnson")["active"] is True  # still in support: only left a group

    assert _run_sync(world["store"]) == {}  # nothing pushed since: nothing to do
