"""A source user a target rejects is announced to automations: `usersync.sync.rejected`.

The sample directory has nwilson without an e-mail, which Jira requires: the sync rejects him
(never sent) and the run emits one `usersync.sync.rejected` event for the profile naming him
and why, read back from the Prefect server's event store.
"""

from __future__ import annotations

import time

import httpx
import pytest
from prefect.settings import get_current_settings
from usersync_flows.sync import sync
from usersync_tasks.report import REJECTED_EVENT

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]


def events_of(profile: str, name: str, at_least: int, timeout: float = 60) -> list[dict]:
    """The events `name` about `profile` (events reach the server asynchronously: wait)."""
    api = get_current_settings().api.url
    query = {
        "filter": {
            "event": {"name": [name]},
            "resource": {"id": [f"usersync.profile.{profile}"]},
        },
        "limit": 50,
    }
    deadline = time.monotonic() + timeout
    while True:
        events = httpx.post(f"{api}/events/filter", json=query, timeout=10).json()["events"]
        if len(events) >= at_least or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_a_run_that_rejects_a_user_emits_one_rejected_event_naming_him(make_profile, jira):
    _, url = jira
    make_profile(url, name="rejecting")

    (outcome,) = sync(profile="rejecting")
    assert outcome["rejected"] == 1

    (event,) = events_of("rejecting", REJECTED_EVENT, at_least=1)
    assert event["payload"]["dry_run"] is False
    (target,) = event["payload"]["targets"]
    assert target["target"] == "jira" and target["count"] == 1
    (user,) = target["users"]
    assert "nwilson" in user["locator"]
    assert "mail" in user["reason"].lower()


def test_a_run_that_rejects_nobody_emits_no_rejected_event(make_profile, jira):
    _, url = jira
    make_profile(
        url, name="accepting", extra_source="  user_filter: (&(objectClass=inetOrgPerson)(mail=*))"
    )

    (outcome,) = sync(profile="accepting")
    assert outcome["status"] == "succeeded" and outcome["rejected"] == 0

    # the completed event of the same run arrives; a rejected one never does
    assert events_of("accepting", "usersync.sync.completed", at_least=1)
    assert events_of("accepting", REJECTED_EVENT, at_least=1, timeout=3) == []
