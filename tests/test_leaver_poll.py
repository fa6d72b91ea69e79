"""The leaver poll of `usersync serve`: what it emits for the leavers an LDAP poll finds, and
that a failing poll is said once and tried again (the directory side: tests/sources and
tests/ad, `poll_leavers` against slapd and Samba AD)."""

from __future__ import annotations

import logging
import time

import pytest
import usersync_tasks.leaver_poll as leaver_poll
from usersync_tasks.leaver_poll import SOURCE_OFFBOARDED_EVENT, LeaverPoller, poll_once

from usersync.errors import SourceError
from usersync.sources.watermark import Leavers


class FakeStore:
    def close(self) -> None:
        pass


@pytest.fixture
def polled(monkeypatch: pytest.MonkeyPatch) -> list[Leavers | Exception]:
    """What the engine's poll answers, in turn (the last answer repeats)."""
    answers: list[Leavers | Exception] = []

    def poll(loaded: object, store: object, **_: object) -> Leavers | None:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(leaver_poll, "prepare_profile", lambda name: name)
    monkeypatch.setattr(leaver_poll.Store, "open", staticmethod(FakeStore))
    monkeypatch.setattr(leaver_poll, "poll_source_leavers", poll)
    return answers


def test_leavers_found_are_emitted_about_their_profile(polled: list) -> None:
    polled.append(Leavers(("guid-1", "guid-2"), changed=5))
    sent: list[dict] = []

    assert poll_once("corp-ad", lambda **event: sent.append(event)) == ("guid-1", "guid-2")

    assert sent == [
        {
            "event": SOURCE_OFFBOARDED_EVENT,
            "resource": {
                "prefect.resource.id": "usersync.profile.corp-ad",
                "prefect.resource.name": "corp-ad",
            },
            "payload": {"users": ["guid-1", "guid-2"]},
        }
    ]


@pytest.mark.parametrize(
    "answer", [Leavers(changed=3), Leavers(reason="no watermark or cached snapshot yet"), None]
)
def test_no_leaver_or_no_usable_mark_emits_nothing(polled: list, answer: Leavers | None) -> None:
    polled.append(answer)
    sent: list[dict] = []
    assert poll_once("corp-ad", lambda **event: sent.append(event)) == ()
    assert sent == []


def test_a_failing_poll_is_said_once_and_tried_again(
    polled: list, caplog: pytest.LogCaptureFixture
) -> None:
    down = SourceError("ldaps://dc.example.com: unreachable")
    polled.extend([down, down, down, Leavers(("guid-9",))])
    sent: list[dict] = []
    poller = LeaverPoller(["corp-ad"], every_seconds=0.01, emit=lambda **e: sent.append(e))

    with caplog.at_level(logging.ERROR, logger="usersync.serve.poll"):
        poller.start()
        deadline = time.monotonic() + 5
        while not sent and time.monotonic() < deadline:
            time.sleep(0.01)
        poller.stop()
        poller.join(5)

    assert sent and sent[0]["payload"] == {"users": ["guid-9"]}
    errors = [r.getMessage() for r in caplog.records]
    assert errors == ["corp-ad: leaver poll failed (tried again): SourceError: " + str(down)]
