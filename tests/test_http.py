"""The shared HTTP client: what it retries, how long it waits, and which error it raises.

Each test serves a tiny ASGI app over real HTTP (wrapped in the sandbox's `Instrumented`
fault layer where a fault is needed) and gives `ApiClient` a retry policy that records its
waits instead of sleeping, so nothing here really sleeps.
"""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from usersync.errors import (
    TargetAuthError,
    TargetConflictError,
    TargetNotFoundError,
    TargetPermissionError,
    TargetRejectedError,
    TargetUnreachableError,
    TransientError,
)
from usersync.http import ApiClient, RetryPolicy, parse_retry_after
from usersync.sandbox.faults import Instrumented
from usersync.sandbox.server import serve


async def answer(request: Request) -> Response:
    """`/status/{code}` answers that status with a Jira-style error body; `/ok` answers 200."""
    code = int(request.path_params.get("code", 200))
    if code == 200:
        return JSONResponse({"ok": True})
    return JSONResponse({"errorMessages": [f"refused with {code}"], "errors": {}}, code)


APP = Instrumented(
    Starlette(
        routes=[Route("/ok", answer), Route("/status/{code:int}", answer, methods=["GET", "POST"])]
    )
)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(APP) as url:
        yield url


@pytest.fixture
def app() -> Iterator[Instrumented]:
    APP.faults = type(APP.faults)()
    APP.rate_limit_headers = lambda seconds: {"Retry-After": str(int(seconds))}
    APP.clear_log()
    yield APP


def client(url: str, waits: list[float], **policy: float) -> ApiClient:
    retry = RetryPolicy(sleep=waits.append, **policy)  # type: ignore[arg-type]
    return ApiClient("test", url, retry=retry, timeout_seconds=5)


# -- Retry-After ---------------------------------------------------------------------------


def test_parse_retry_after_seconds_and_http_date() -> None:
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
    later = email.utils.format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(later, now=now) == 90.0
    assert parse_retry_after(email.utils.format_datetime(now - timedelta(hours=1)), now=now) == 0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_429_waits_the_seconds_the_server_asks(base_url: str, app: Instrumented) -> None:
    app.faults.retry_after_seconds = 6
    app.faults.script.extend(["429", "429"])
    waits: list[float] = []

    assert client(base_url, waits).get_json("/ok") == {"ok": True}
    assert waits == [6.0, 6.0]
    assert [r.status for r in app.requests] == [429, 429, 200]


def test_429_with_an_http_date_waits_until_then(base_url: str, app: Instrumented) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    app.rate_limit_headers = lambda _: {"Retry-After": email.utils.format_datetime(when, True)}
    app.faults.script.append("429")
    waits: list[float] = []

    client(base_url, waits).get_json("/ok")

    assert len(waits) == 1 and 25 <= waits[0] <= 30


def test_retry_after_is_capped(base_url: str, app: Instrumented) -> None:
    app.faults.retry_after_seconds = 3600
    app.faults.script.append("429")
    waits: list[float] = []

    client(base_url, waits, max_wait_seconds=45).get_json("/ok")

    assert waits == [45.0]


def test_503_without_retry_after_backs_off_and_succeeds(base_url: str, app: Instrumented) -> None:
    app.faults.script.extend(["503", "502"])
    waits: list[float] = []

    client(base_url, waits, backoff_seconds=1).get_json("/ok")

    assert len(waits) == 2 and 0.5 <= waits[0] <= 1 and 1 <= waits[1] <= 2


def test_server_error_storm_ends_in_transient_error(base_url: str, app: Instrumented) -> None:
    app.faults.error_every = 1
    waits: list[float] = []

    with pytest.raises(TransientError) as caught:
        client(base_url, waits, max_attempts=3).get_json("/ok")

    assert caught.value.status == 500
    assert len(app.requests) == 3 and len(waits) == 2
    assert "after 3 attempt(s)" in str(caught.value)


# -- refusals are not retried --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, TargetRejectedError),
        (401, TargetAuthError),
        (403, TargetPermissionError),
        (404, TargetNotFoundError),
        (409, TargetConflictError),
        (422, TargetRejectedError),
    ],
)
def test_refusals_are_not_retried(
    base_url: str, app: Instrumented, status: int, error: type[Exception]
) -> None:
    waits: list[float] = []

    with pytest.raises(error) as caught:
        client(base_url, waits).request("POST", f"/status/{status}", json={"name": "x"})

    assert len(app.requests) == 1 and waits == []
    assert caught.value.status == status  # type: ignore[attr-defined]
    assert caught.value.attempts == 1  # type: ignore[attr-defined]
    assert f"refused with {status}" in str(caught.value)


def test_refusal_after_a_retry_says_how_many_attempts(base_url: str, app: Instrumented) -> None:
    app.faults.script.append("503")
    with pytest.raises(TargetRejectedError) as caught:
        client(base_url, []).request("POST", "/status/400")
    assert caught.value.attempts == 2


def test_credentials_never_appear_in_messages(base_url: str, app: Instrumented) -> None:
    api = ApiClient(
        "test",
        base_url,
        headers={"Authorization": "Bearer very-secret-token"},
        retry=RetryPolicy(sleep=lambda _: None),
    )
    with pytest.raises(TargetAuthError) as caught:
        api.get_json("/status/401")
    assert "very-secret-token" not in str(caught.value)
    assert "check the credentials" in str(caught.value)


# -- transport failures --------------------------------------------------------------------


def test_dropped_connections_are_retried(base_url: str, app: Instrumented) -> None:
    app.faults.script.append("drop")
    waits: list[float] = []

    assert client(base_url, waits).get_json("/ok") == {"ok": True}
    assert len(waits) == 1


def test_dropped_connections_to_the_end_are_unreachable(base_url: str, app: Instrumented) -> None:
    app.faults.drop_every = 1
    waits: list[float] = []

    with pytest.raises(TargetUnreachableError) as caught:
        client(base_url, waits, max_attempts=4).get_json("/ok")

    assert len(app.requests) == 4 and len(waits) == 3
    assert caught.value.status is None


def test_closed_port_is_unreachable_quickly_with_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    waits: list[float] = []
    started = time.monotonic()

    with pytest.raises(TargetUnreachableError) as caught:
        client(f"http://127.0.0.1:{port}/rest/api/2", waits, max_attempts=3).get_json("/myself")

    assert time.monotonic() - started < 2
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "GET /myself" in str(caught.value)
    assert len(waits) == 2
