"""`usersync inbox token` (issue once, rotate with a grace period) and the coalescing emitter."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from usersync_cli.main import main
from usersync_tasks.inbox_events import EVENT, InboxEventEmitter, inbox_event_callback

from usersync.inbox import token_is_valid
from usersync.store import Store

REPO = Path(__file__).resolve().parents[2]


def _token(out: str) -> str:
    match = re.search(r"bearer token \(shown once.*\): (\S+)", out)
    assert match, out
    return match.group(1)


def test_token_command_issues_once_and_rotates(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("USERSYNC_MAPPINGS_DIR", str(REPO / "mappings"))
    url = f"sqlite:///{tmp_path / 'store.db'}"
    assert main(["inbox", "token", "demo-push", "--store-url", url]) == 0
    first_out = capsys.readouterr().out
    first = _token(first_out)
    assert "/scim/v2/demo-push" in first_out

    assert main(["inbox", "token", "demo-push", "--store-url", url]) == 2
    assert "--rotate" in capsys.readouterr().err

    assert main(["inbox", "token", "demo-push", "--rotate", "--store-url", url]) == 0
    rotated = capsys.readouterr().out
    second = _token(rotated)
    assert "previous token stays valid until" in rotated
    engine = Store.open(url).engine
    assert token_is_valid(engine, "demo-push", first)
    assert token_is_valid(engine, "demo-push", second)
    assert first not in str(engine.connect().exec_driver_sql("select * from inbox_tokens").all())


def test_token_command_refuses_a_profile_that_does_not_read_the_inbox(monkeypatch, capsys) -> None:
    monkeypatch.setenv("USERSYNC_MAPPINGS_DIR", str(REPO / "mappings"))
    assert main(["inbox", "token", "demo"]) == 2
    assert "not from the inbox" in capsys.readouterr().err


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_changes_is_one_event_now_and_one_trailing(monkeypatch) -> None:
    sent: list[dict] = []
    clock = _Clock()
    emitter = InboxEventEmitter(10, emit=lambda **event: sent.append(event), clock=clock)
    timers: list[tuple] = []
    # no real timers: record what would be flushed, then flush by hand
    monkeypatch.setattr(
        "usersync_tasks.inbox_events.threading.Timer",
        lambda wait, fn, args: type(
            "T", (), {"daemon": True, "start": lambda self: timers.append((wait, fn, args))}
        )(),
    )
    for i in range(5):
        emitter("acme", {"method": "POST", "path": f"/Users/{i}", "status": 201})
        clock.now += 1
    emitter("other", {"method": "DELETE", "path": "/Users/x", "status": 204})
    assert [(e["event"], e["resource"]["prefect.resource.id"]) for e in sent] == [
        (EVENT, "usersync.profile.acme"),
        (EVENT, "usersync.profile.other"),
    ]
    assert len(timers) == 1 and timers[0][0] == pytest.approx(9)
    _, flush, args = timers[0]
    flush(*args)
    assert len(sent) == 3
    assert sent[2]["payload"]["changes"] == 4
    assert sent[2]["payload"]["last"]["path"] == "/Users/4"


def test_without_a_prefect_api_nothing_is_emitted(monkeypatch) -> None:
    """emit_event without an API would start a temporary Prefect server: it is never called."""
    called: list[dict] = []
    monkeypatch.setattr(
        "usersync_tasks.inbox_events.emit_event", lambda **event: called.append(event)
    )
    monkeypatch.setattr("usersync_tasks.inbox_events.configured_api_url", lambda: None)
    assert inbox_event_callback()[0] is None
    InboxEventEmitter()("acme", {"method": "POST", "path": "/Users", "status": 201})
    assert called == []
    monkeypatch.setattr(
        "usersync_tasks.inbox_events.configured_api_url", lambda: "http://prefect/api"
    )
    emitter, line = inbox_event_callback()
    assert isinstance(emitter, InboxEventEmitter) and "http://prefect/api" in line
    emitter("acme", {"method": "POST", "path": "/Users", "status": 201})
    assert [event["event"] for event in called] == [EVENT]
