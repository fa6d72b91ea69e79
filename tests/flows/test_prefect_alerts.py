"""Alerts: `usersync alerts install --block NAME`, then a sync that fails and one the brake stops.

The notification block is a Prefect Custom Webhook pointed at a receiver in this test, so what
the administrator would get (subject and body) is read as it arrives, sent by the Prefect
server's own automation service.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from usersync_cli.main import main
from usersync_flows.sync import sync
from usersync_sandbox.server import serve
from usersync_tasks.alerts import APPROVAL, BRAKED, FAILED, SEATS, SECURITY

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]


class Receiver:
    """An ASGI app that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        self.messages: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.messages.append(json.loads(body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def wait_for(self, text: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if text in message["subject"] + message["body"]:
                    return message
            time.sleep(0.5)
        raise AssertionError(f"no notification with {text!r}; got {self.messages}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    app = Receiver()
    with serve(app) as url:
        CustomWebhookNotificationBlock(
            name="usersync test receiver",
            url=url,
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
        ).save("usersync-alerts-test", overwrite=True)
        yield app
    with get_client(sync_client=True) as client:
        for name in (FAILED, BRAKED, SEATS, SECURITY, APPROVAL):
            for automation in client.read_automations_by_name(name):
                client.delete_automation(automation.id)


def test_alerts_install_creates_the_automations_and_they_notify(
    make_profile, jira, receiver, capsys
):
    _, url = jira

    assert main(["alerts", "install", "--block", "usersync-alerts-test"]) == 0
    assert main(["alerts", "install", "--block", "custom-webhook/usersync-alerts-test"]) == 0
    out = capsys.readouterr().out
    assert f"automation '{FAILED}'" in out and f"automation '{BRAKED}'" in out

    with get_client(sync_client=True) as client:
        installed = {a.name: a for a in client.read_automations() if a.name.startswith("usersync:")}
    # installed twice, replaced, not doubled
    assert set(installed) == {FAILED, BRAKED, SEATS, SECURITY, APPROVAL}
    assert installed[APPROVAL].trigger.expect == {"usersync.approval.requested"}
    assert installed[SEATS].trigger.expect == {"usersync.licence.short"}
    assert installed[SECURITY].trigger.expect == {"usersync.sync.security"}
    failed = installed[FAILED]
    assert failed.enabled
    assert failed.trigger.expect == {
        "prefect.flow-run.Failed",
        "prefect.flow-run.Crashed",
        "prefect.flow-run.TimedOut",
    }
    assert installed[BRAKED].trigger.expect == {"usersync.sync.braked"}
    block_id = installed[BRAKED].actions[0].block_document_id
    assert failed.actions[0].block_document_id == block_id

    # A first sync provisions everyone; then the directory "loses" most users: the brake.
    make_profile(url, extra_settings="  max_deactivations: 3")
    sync(profile="testprof")
    make_profile(
        url, extra_settings="  max_deactivations: 3", extra_source="  user_filter: (uid=a*)"
    )
    state = sync(profile="testprof", return_state=True)
    assert state.is_failed() and state.name == "Braked", state

    braked = receiver.wait_for("the brake stopped profile testprof")
    assert "A guard stopped profile testprof before any write" in braked["body"]
    assert "- target jira: the plan exceeds the brake" in braked["body"]
    assert "--allow-mass-changes" in braked["body"]
    assert "artifact plan-testprof-<target>" in braked["body"]

    # A dry run the brake would stop is a completed run: the plan is its result.
    state = sync(profile="testprof", dry_run=True, return_state=True)
    assert state.is_completed(), state
    dry = receiver.wait_for("the brake stopped profile testprof (dry run)")
    assert "found plans a real run would stop at" in dry["body"]
    assert "- target jira: the brake would stop a real run: deactivations:" in dry["body"]

    # One notification per run: no "sync failed" on top of the brake, none per target.
    time.sleep(5)
    subjects = [m["subject"] for m in receiver.messages]
    assert not any("ended Failed" in subject for subject in subjects), subjects
    assert len(subjects) == 2, subjects


def test_alerts_install_names_a_block_that_cannot_notify(capsys):
    from prefect.blocks.system import Secret

    Secret(value="not a notifier").save("usersync-not-a-notifier", overwrite=True)

    assert main(["alerts", "install", "--block", "usersync-not-a-notifier"]) == 2
    err = capsys.readouterr().err
    assert "no notification block named 'usersync-not-a-notifier'" in err
    assert "a secret, which cannot notify" in err
    assert main(["alerts", "install", "--block", "no-such-block"]) == 2
