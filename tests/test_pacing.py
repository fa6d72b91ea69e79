"""Loads pace themselves: one limiter per target instance, shared by every client and thread.

A 429 pauses every worker on the instance until its Retry-After has passed; the products'
rate-limit headers space requests before a 429 happens; concurrency halves on a 429 or a 5xx and
grows back while answers are clean; the profile's `max_in_flight` and `requests_per_second` cap
one instance for every load of the process. Each test serves a tiny ASGI app, or the Jira
emulator, over real HTTP. Where the limiter's own arithmetic is asserted, clocks and sleeps are
the test's own; the profile's pace is measured where the product sees the requests (the
emulator's app wrapped to note arrivals and the requests in hand), with real time and margins.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from usersync_sandbox.faults import Faults, Instrumented
from usersync_sandbox.server import serve

from tests.targets import harness_jira
from tests.targets.conftest import TargetEnv
from tests.test_load import membership_plan, seed
from usersync.config import TargetConfig, format_validation_error
from usersync.errors import TargetDeadlineError, TransientError
from usersync.http import ApiClient, InstanceLimiter, RetryPolicy, limiter_for, pace_instance
from usersync.load import execute_plan
from usersync.targets import Target, open_target


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


# -- the profile's pace, measured where the product sees it --------------------------------


class ServerSide:
    """What the product sees of a load: when each request arrives and how many it is handling
    at once. Wraps the emulator's product app (inside `Instrumented`, so injected faults are
    not counted); each request is held `hold_seconds` so that requests in flight overlap."""

    def __init__(self, instrumented: Instrumented, hold_seconds: float = 0.0) -> None:
        self.product = instrumented.app
        instrumented.app = self
        self.hold = hold_seconds
        self.in_flight = 0
        self.peak = 0
        self.arrivals: list[float] = []

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        if scope["type"] != "http":
            await self.product(scope, receive, send)
            return
        self.arrivals.append(time.monotonic())
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.hold:
                await asyncio.sleep(self.hold)
            await self.product(scope, receive, send)
        finally:
            self.in_flight -= 1


@pytest.fixture
def jira() -> Iterator[TargetEnv]:
    with harness_jira.environment() as env:
        yield env


def jira_target(env: TargetEnv, **pace: float) -> Target:
    """A client of the emulator opened as a profile opens it: its pace from the target's
    settings, real waits (a 429's Retry-After is slept)."""
    url = env.target.url  # type: ignore[attr-defined]
    admin, password = harness_jira.ADMIN
    config = TargetConfig.model_validate(
        {
            "kind": "jira",
            "url": url,
            "auth": {"kind": "basic", "username": admin, "password": {"prefect_secret": "x"}},
            **pace,
        }
    )
    return open_target("jira", config, load_prefect_secret=lambda _name: password)


def memberships(env: TargetEnv, group: str, count: int) -> pd.DataFrame:
    users = [f"{group}-{n:03d}" for n in range(count)]
    seed(env, users, [group])
    return membership_plan([(group, user) for user in users])


def test_requests_to_one_instance_never_exceed_max_in_flight(jira: TargetEnv) -> None:
    plan = memberships(jira, "devs", 40)
    target = jira_target(jira, max_in_flight=3)
    server = ServerSide(jira.emulator.app, hold_seconds=0.02)

    result = execute_plan(target, plan, max_workers=16)

    assert {o.status for o in result.outcomes} == {"succeeded"}
    assert len(jira.emulator.group_members("devs")) == 40
    assert len(server.arrivals) == 40
    # Never more than the profile allows, and the load did use what it allows.
    assert server.peak == 3


def test_the_rate_stays_under_requests_per_second(jira: TargetEnv) -> None:
    plan = memberships(jira, "devs", 25)
    target = jira_target(jira, requests_per_second=20)
    server = ServerSide(jira.emulator.app)

    result = execute_plan(target, plan, max_workers=8)

    assert {o.status for o in result.outcomes} == {"succeeded"}
    arrivals = server.arrivals
    assert len(arrivals) == 25
    # 20 a second: 25 requests span at least 24 gaps of 50 ms (less the network's jitter),
    # and no second holds more than 20 of them (one more for the jitter at its edges).
    assert arrivals[-1] - arrivals[0] >= 24 / 20 * 0.9
    assert max(sum(start <= t < start + 1 for t in arrivals) for start in arrivals) <= 21


def test_two_loads_to_one_instance_share_one_budget(jira: TargetEnv) -> None:
    first = memberships(jira, "devs", 30)
    second = memberships(jira, "testers", 30)
    server = ServerSide(jira.emulator.app, hold_seconds=0.02)
    # Two runs in one process, each on its own thread and loop, each allowed 8 workers.
    one, other = jira_target(jira, max_in_flight=4), jira_target(jira, max_in_flight=4)

    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(lambda job: execute_plan(*job, max_workers=8), [(one, first), (other, second)])
        )

    assert all({o.status for o in r.outcomes} == {"succeeded"} for r in results)
    assert (
        len(jira.emulator.group_members("devs"))
        == len(jira.emulator.group_members("testers"))
        == 30
    )
    # Four for both together, not four each.
    assert server.peak == 4


def test_a_429_pauses_every_load_to_the_instance(jira: TargetEnv) -> None:
    first = memberships(jira, "devs", 40)
    second = memberships(jira, "testers", 40)
    answered: list[tuple[float, int]] = []
    jira.emulator.app.recorder = lambda exchange: answered.append(
        (time.monotonic(), exchange.status)
    )
    jira.emulator.app.faults.retry_after_seconds = 1
    jira.emulator.app.faults.script.append("429")
    # Each load alone takes about 0.2 s: well within the second the 429 asks for.
    ServerSide(jira.emulator.app, hold_seconds=0.02)
    one, other = jira_target(jira), jira_target(jira)

    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(lambda job: execute_plan(*job, max_workers=4), [(one, first), (other, second)])
        )

    assert all({o.status for o in r.outcomes} == {"succeeded"} for r in results)
    refused = next(at for at, status in answered if status == 429)
    # Requests already on their way when the 429 was answered may arrive just after it; after
    # those, neither load sends anything until the second it asked for has passed.
    later = sorted(at - refused for at, status in answered if at > refused + 0.05)
    assert later and later[0] >= 0.9
    assert [status for _, status in answered].count(429) == 1
    assert sum(status == 201 for _, status in answered) == 80


def test_the_profile_sets_the_instance_budget_and_the_stricter_wins() -> None:
    limiter = pace_instance(
        "https://jira.pace.example.com/jira", max_in_flight=6, requests_per_second=None
    )
    pace_instance(
        "https://JIRA.pace.example.com:443/jira/", max_in_flight=12, requests_per_second=5
    )

    assert limiter is limiter_for("https://jira.pace.example.com/jira/rest/api/2")
    assert limiter.concurrency <= limiter.max_in_flight == 6
    assert limiter.requests_per_second == 5


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        (
            "max_in_flight",
            0,
            "max_in_flight: 0 requests at once cannot be: give a whole number from 1 to 64",
        ),
        ("max_in_flight", 500, "from 1 to 64 (default 8)"),
        (
            "requests_per_second",
            0,
            "requests_per_second: 0.0 requests per second cannot be: give a number above 0",
        ),
        ("requests_per_second", -2, "or leave requests_per_second out"),
    ],
)
def test_bad_pacing_values_are_refused_in_one_line(setting: str, value: float, says: str) -> None:
    with pytest.raises(ValidationError) as refused:
        TargetConfig.model_validate(
            {
                "kind": "jira",
                "url": "https://jira.example.com",
                "auth": {"kind": "basic", "username": "a", "password": {"env": "X"}},
                setting: value,
            }
        )

    lines = format_validation_error(refused.value).splitlines()
    assert len(lines) == 1
    assert says in lines[0]
