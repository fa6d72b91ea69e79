"""Loads pace themselves: one limiter per target instance, shared by every client and thread.

A 429 pauses every worker on the instance until its Retry-After has passed; the products'
rate-limit headers space requests before a 429 happens; concurrency halves on a 429 or a 5xx and
grows back while answers are clean. Each test serves a tiny ASGI app over real HTTP; clocks and
sleeps are the test's own wherever a wait is asserted, so nothing depends on timing except the
one check that a paused worker has not sent anything yet.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from usersync_sandbox.faults import Faults, Instrumented
from usersync_sandbox.server import serve

from usersync.errors import TargetDeadlineError, TransientError
from usersync.http import ApiClient, InstanceLimiter, RetryPolicy, limiter_for


class FakeClock:
    """A monotonic clock that moves only when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += seconds


class ServerBucket:
    """The server side of Jira's rate limiting: a token bucket on the test's clock."""

    def __init__(self, clock: FakeClock, size: int, fill_per_second: int) -> None:
        self.clock = clock
        self.size = size
        self.fill = fill_per_second
        self.tokens = float(size)
        self.at = clock()

    def take(self) -> tuple[bool, dict[str, str]]:
        now = self.clock()
        self.tokens = min(self.size, self.tokens + (now - self.at) * self.fill)
        self.at = now
        allowed = self.tokens >= 1
        if allowed:
            self.tokens -= 1
        wait = 0 if allowed else math.ceil((1 - self.tokens) / self.fill)
        return allowed, {
            "X-RateLimit-Limit": str(self.size),
            "X-RateLimit-Remaining": str(math.floor(self.tokens)),
            "X-RateLimit-FillRate": str(self.fill),
            "X-RateLimit-Interval-Seconds": "1",
            "Retry-After": str(wait),
        }


BUCKET: list[ServerBucket] = []


async def ok(_request: Request) -> Response:
    return JSONResponse({"ok": True})


async def limited(_request: Request) -> Response:
    allowed, headers = BUCKET[0].take()
    if not allowed:
        return JSONResponse({"errorMessages": ["Rate limit exceeded"]}, 429, headers=headers)
    return JSONResponse({"ok": True}, headers=headers)


APP = Instrumented(Starlette(routes=[Route("/ok", ok), Route("/limited", limited)]))


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(APP) as url:
        yield url


@pytest.fixture
def app() -> Iterator[Instrumented]:
    APP.faults = Faults()
    APP.rate_limit_headers = lambda seconds: {"Retry-After": str(int(seconds))}
    APP.clear_log()
    BUCKET.clear()
    yield APP


def client(url: str, limiter: InstanceLimiter, **policy: object) -> ApiClient:
    retry = RetryPolicy(**{"sleep": lambda _s: None, **policy})  # type: ignore[arg-type]
    return ApiClient("test", url, retry=retry, timeout_seconds=5, limiter=limiter)


def test_clients_of_one_instance_share_one_limiter() -> None:
    jira = limiter_for("https://Jira.Example.com:443/jira/rest/api/2")

    assert limiter_for("https://jira.example.com/jira/") is jira
    assert limiter_for("https://jira.example.com/jira/rest/api/latest") is jira
    assert limiter_for("https://jira.example.com/confluence/rest/api") is not jira


def test_a_429_on_one_thread_pauses_the_others(base_url: str, app: Instrumented) -> None:
    app.faults.retry_after_seconds = 30
    app.faults.script.append("429")
    limiter = InstanceLimiter("test")
    waiting, go_on = threading.Event(), threading.Event()
    asked: list[float] = []

    def held_wait(seconds: float) -> None:
        asked.append(seconds)
        waiting.set()
        go_on.wait(10)

    first = client(base_url, limiter, sleep=held_wait)
    second = client(base_url, limiter)
    with ThreadPoolExecutor(2) as pool:
        rate_limited = pool.submit(first.get_json, "/ok")
        assert waiting.wait(10)
        other = pool.submit(second.get_json, "/ok")
        time.sleep(0.3)
        # The other worker got nothing from the server yet: it has not sent its request.
        assert [r.status for r in app.requests] == [429]
        assert not other.done()
        go_on.set()
        assert rate_limited.result(10) == other.result(10) == {"ok": True}

    assert asked == [30.0]
    assert [r.status for r in app.requests] == [429, 200, 200]


def test_a_pause_that_outlasts_the_deadline_sends_nothing(base_url: str, app: Instrumented) -> None:
    limiter = InstanceLimiter("test")
    limiter.pause(60)
    api = client(base_url, limiter)
    api.deadline = time.monotonic() + 1

    with pytest.raises(TargetDeadlineError, match="time budget"):
        api.get_json("/ok")
    assert app.requests == []


def test_rate_limit_headers_slow_the_client_before_a_429(base_url: str, app: Instrumented) -> None:
    clock = FakeClock()
    BUCKET.append(ServerBucket(clock, size=5, fill_per_second=2))
    limiter = InstanceLimiter("test", clock=clock, sleep=clock.sleep)
    retried: list[float] = []
    api = client(base_url, limiter, sleep=retried.append)

    for _ in range(15):
        api.get_json("/limited")

    assert [r.status for r in app.requests] == [200] * 15
    assert retried == []
    # Five tokens at once, then one per half second as the bucket refills.
    assert clock.slept == pytest.approx([0.5] * 10)


def test_without_rate_limit_headers_the_same_load_meets_429s(
    base_url: str, app: Instrumented
) -> None:
    clock = FakeClock()
    BUCKET.append(ServerBucket(clock, size=5, fill_per_second=2))
    # Headers stripped: the client cannot know the bucket, only the 429 tells it.
    limiter = InstanceLimiter("test", clock=clock, sleep=clock.sleep)
    limiter.observe = lambda _headers: None  # type: ignore[method-assign]
    api = client(base_url, limiter, sleep=clock.sleep)

    for _ in range(8):
        api.get_json("/limited")

    assert [r.status for r in app.requests].count(429) >= 1


def test_429s_are_waited_out_apart_from_the_attempts(base_url: str, app: Instrumented) -> None:
    app.faults.retry_after_seconds = 1
    app.faults.script.extend(["429"] * 6)
    waits: list[float] = []
    api = client(base_url, InstanceLimiter("test"), sleep=waits.append, max_attempts=2)

    assert api.get_json("/ok") == {"ok": True}
    assert waits == [1.0] * 6

    app.faults.rate_limit_every = 1
    with pytest.raises(TransientError, match="HTTP 429 after 4 attempt"):
        client(base_url, InstanceLimiter("test"), max_rate_limited=4).get_json("/ok")


def test_concurrency_drops_on_429_and_5xx_and_grows_back(base_url: str, app: Instrumented) -> None:
    limiter = InstanceLimiter("test", initial_concurrency=8)
    api = client(base_url, limiter)
    app.faults.retry_after_seconds = 0
    app.faults.script.extend(["429", "503", "429"])

    api.get_json("/ok")
    # 8 halved by each refusal (each sent after the previous cut) to 1; the clean answer that
    # ended the call earned one back.
    assert limiter.concurrency == 2

    app.faults.latency_seconds = 0.01  # a steady round trip, so "fast" means something
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _n: api.get_json("/ok"), range(200)))

    assert limiter.concurrency >= 4
    assert limiter.in_flight == 0
