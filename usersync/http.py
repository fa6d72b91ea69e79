"""The HTTP client of the targets and of the sources read over HTTP (SCIM, miniOrange):
timeouts, retries that honour Retry-After, one error taxonomy.

Each product module (and each HTTP source) builds an `ApiClient` with its base URL and auth
and calls `request`; a source's client raises the source family (`errors=source_error_of`).
Transient answers (429, 5xx, dropped connections, timeouts) are retried with exponential
backoff and jitter, waiting what `Retry-After` asks for when the server says (seconds or an
HTTP date, capped). Everything else becomes the matching `usersync.errors` class at once, with
a message that names the product, the call and what the server said. A TLS certificate that
cannot be verified is not transient: it fails the call at once, once, saying how to fix it.
Credentials are never part of a message (`usersync.redaction.redact`) or of a log line (the
log record factory `usersync` installs on import, see `usersync.redaction`).

A write that is not idempotent (POST, PATCH) is never sent twice blindly: once a try may have
reached the server (a 5xx, a connection lost after sending, a read timeout), sending it again
could do it twice. `write_once` takes a read that tells whether the write took effect and asks
it before every further try and before reporting a failure; `request` does not repeat such a
write at all unless the caller says a repeat is harmless (`replay_safe`). Only a 429 (refused
before any work) or a connection that was never made is retried without asking.

Every client of one target instance (its base URL up to `/rest/`, normalised as
`usersync.config.instance_of` does) shares one `InstanceLimiter` per process, whatever the
thread: a 429 pauses every request to that instance until its Retry-After has passed; the
products' rate-limit headers (`X-RateLimit-Remaining`, `-Limit`, `-FillRate`,
`-Interval-Seconds`, sent by Jira and Confluence Data Center once an admin turns rate limiting
on) set a token bucket that spaces requests before a 429 happens; and the number of requests in
flight adapts, additively up while answers come back fast and clean, halved on a 429, a 5xx or
a lost connection. A 429 is the server asking for time, not a failed try: it is waited out up
to `RetryPolicy.max_rate_limited` times, apart from `max_attempts`, within the run's deadline.
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json import dumps as json_dumps
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from usersync import cooperative
from usersync.config import instance_of
from usersync.errors import (
    TargetAuthError,
    TargetConflictError,
    TargetDeadlineError,
    TargetError,
    TargetNotFoundError,
    TargetPermissionError,
    TargetRejectedError,
    TargetUnreachableError,
    TransientError,
    UsersyncError,
)
from usersync.redaction import redact
from usersync.wire import Request, Wire

log = logging.getLogger("usersync.http")

RETRIABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Sending these twice may do the work twice (HTTP gives GET, PUT and DELETE no such risk).
NOT_IDEMPOTENT_METHODS = frozenset({"POST", "PATCH"})
#: Transport failures that prove the request never reached the server: no connection was made.
NEVER_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: A path httpx sends as it is written: absolute, nothing in it to quote or normalise.
_PLAIN_PATH = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")

T = TypeVar("T")


@dataclass(frozen=True)
class _Applied(Generic[T]):
    """What `write_once`'s check found: the write took effect though its answer was lost."""

    value: T


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient failure."""

    max_attempts: int = 5
    max_wait_seconds: float = 120.0
    backoff_seconds: float = 0.5
    #: 429s waited out per call, apart from `max_attempts`: a 429 is refused before any work,
    #: and the wait it asks for is shared by every worker, so waiting it out costs no more
    #: than the server demands (the run's deadline still bounds it)
    max_rate_limited: int = 20
    sleep: Callable[[float], None] = field(default=cooperative.sleep, compare=False)

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter for the given 1-based attempt."""
        ceiling = min(self.max_wait_seconds, self.backoff_seconds * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent/bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def error_text(response: httpx.Response) -> str:
    """What an Atlassian error body says, in one line, credentials redacted.

    Understands Jira's `{"errorMessages": [...], "errors": {...}}`, Confluence's `{"message"}`
    and Bitbucket's `{"errors": [{"message"}]}`; falls back to the first 200 characters of text
    (a proxy's error page may echo the request's URL).
    """
    return redact(_error_text(response))


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip()
    parts: list[str] = []
    if isinstance(body, dict):
        parts.extend(str(m) for m in body.get("errorMessages") or [])
        errors = body.get("errors")
        if isinstance(errors, dict):
            parts.extend(f"{k}: {v}" for k, v in errors.items())
        elif isinstance(errors, list):
            parts.extend(
                str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors
            )
        if body.get("message"):
            parts.append(str(body["message"]))
    return "; ".join(parts) or response.text[:200].strip()


def certificate_failure(error: BaseException) -> str | None:
    """Why a TLS certificate could not be verified, if that is what `error` (or an error it
    wraps, as httpx and ldap3 do) is; None for any other error.

    Such a failure is permanent until the configuration or the server changes: trying again
    cannot help.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            # ldap3 makes its socket errors subclasses of what it caught, without its fields
            return getattr(current, "verify_message", None) or str(current)
        text = str(current)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            reason = re.search(r"certificate verify failed: ([^(]+?)\s*(?:\(_ssl|$)", text)
            return reason[1] if reason else text
        pending += [current.__cause__, current.__context__]
    return None


def _untrusted(what: str, url: str, ca_file: Path | None, reason: str) -> TargetUnreachableError:
    """The one-line error of a certificate that could not be verified: what, and the fix."""
    server = httpx.URL(url)
    origin = f"{server.scheme}://{server.netloc.decode()}"
    with_ca = f"with the CA file {ca_file}" if ca_file else "with the system's CAs"
    return TargetUnreachableError(
        redact(
            f"{what}: the TLS certificate of {origin} could not be verified {with_ca} "
            f"({reason}): give the CA that signed it with ca_file: on this target or source in "
            "the profile, or fix the server's certificate; not retried"
        ),
        attempts=1,
    )


def _body(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return response.text


#: The rate-limit headers of Jira and Confluence Data Center (Bitbucket's, if it sends them).
LIMIT_HEADER = "X-RateLimit-Limit"
REMAINING_HEADER = "X-RateLimit-Remaining"
FILL_RATE_HEADER = "X-RateLimit-FillRate"
INTERVAL_HEADER = "X-RateLimit-Interval-Seconds"

#: How a request ended, for the concurrency limit: the server answered at ease ("clean", a
#: refusal included), refused it for its rate ("throttled"), or was in trouble ("failed": a
#: 5xx, a lost or refused connection).
CLEAN, THROTTLED, FAILED = "clean", "throttled", "failed"


def _header_number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None and value.strip() else None
    except ValueError:
        return None


class InstanceLimiter:
    """The pace of one target instance, shared by every client and thread of the process.

    Three gates, passed in this order before each request (`admit`), released when its answer
    is in (`finish`):

    - concurrency: at most `concurrency` requests in flight. The limit grows by one per
      limit's worth of clean answers while they come back fast (no slower than twice the
      fastest recent one) and the limit is in use, and halves on a 429, a 5xx or a lost
      connection, at most once per round trip (answers to requests sent before the last cut
      say nothing new).
    - pauses: a 429 pauses every request to the instance until its Retry-After has passed; the
      thread that received it holds the pause while it waits and lifts it when it goes on.
    - tokens: when the answers carry the products' rate-limit headers, a token bucket of the
      announced size, refilled at the announced rate, spaces requests once the server's count
      of remaining tokens runs out, before it answers 429. An answer without them forgets the
      bucket (rate limiting is off, or the server does not say).

    Args:
        instance: what the limiter is for, in messages.
        initial_concurrency, min_concurrency, max_concurrency: the concurrency limit's start
            and bounds.
        clock: monotonic seconds (a test's fake clock).
        sleep: how the token bucket waits (a test's fake sleep, advancing its clock).
    """

    #: A clean answer slower than this many times the fastest recent one earns no growth.
    SLOW_FACTOR = 2.0

    def __init__(
        self,
        instance: str,
        *,
        initial_concurrency: int = 8,
        min_concurrency: int = 1,
        max_concurrency: int = 32,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = cooperative.sleep,
    ) -> None:
        self.instance = instance
        self.min_concurrency = min_concurrency
        self.max_concurrency = max_concurrency
        self._clock = clock
        self._sleep = sleep
        self._cond = threading.Condition()
        #: calls waiting on a loader's loop (`usersync.cooperative`), woken with the threads
        self._wakers: list[cooperative.Waker] = []
        #: the profile's ceiling on requests in flight (`pace`); None: only the adaptive limit
        self.max_in_flight: int | None = None
        #: the profile's ceiling on requests per second (`pace`), and the clock reading from
        #: which the next request may be sent under it
        self.requests_per_second: float | None = None
        self._next_slot = 0.0
        #: the concurrency limit (fractional while it grows); `concurrency` is what applies
        self.limit = float(initial_concurrency)
        self.in_flight = 0
        self._cut_at = -float("inf")
        self._fastest: float | None = None
        self._pauses: dict[int, float] = {}  # id → clock() at which it ends
        self._pause_ids = itertools.count(1)
        self._rate: float | None = None  # tokens per second; None: no bucket announced
        self._capacity = 0.0
        self._tokens = 0.0
        self._tokens_at = 0.0
        #: 429s received, and seconds the token bucket made requests wait (for reports)
        self.throttled = 0
        self.paced_seconds = 0.0

    @property
    def concurrency(self) -> int:
        """Requests allowed in flight now."""
        allowed = max(self.min_concurrency, int(self.limit))
        return min(allowed, self.max_in_flight) if self.max_in_flight else allowed

    def pace(self, *, max_in_flight: int | None, requests_per_second: float | None) -> None:
        """Set the ceilings a profile gives this instance; the stricter of two settings wins.

        Every run in the process that writes to the instance shares them: two profiles on one
        instance get one budget, not one each, and the strictest profile's figure holds.
        """
        with self._cond:
            if max_in_flight is not None:
                self.max_in_flight = min(max_in_flight, self.max_in_flight or max_in_flight)
            if requests_per_second is not None:
                self.requests_per_second = min(
                    requests_per_second, self.requests_per_second or requests_per_second
                )
            self._notify()

    def admit(self, deadline: float | None, what: str) -> float:
        """Wait until a request may be sent; return the clock reading when it may.

        Raises:
            TargetDeadlineError: a gate opens only after `deadline` (a pause asked for by the
                server, a token, a free slot); nothing was sent.
        """
        with self._cond:
            while self.in_flight >= self.concurrency:
                self._out_of_time(deadline, None, what, "a free request slot")
                self._wait(self._timeout(deadline, None))
            self.in_flight += 1
        try:
            self._wait_out_pauses(deadline, what)
            self._take_slot(deadline, what)
            self._take_token(deadline, what)
        except BaseException:
            self.finish(None, CLEAN)
            raise
        return self._clock()

    def finish(self, sent_at: float | None, outcome: str) -> None:
        """A request admitted at `sent_at` ended with `outcome` (CLEAN, THROTTLED, FAILED)."""
        with self._cond:
            now = self._clock()
            in_use = self.in_flight * 2 >= self.limit
            self.in_flight -= 1
            if sent_at is None:
                pass
            elif outcome == CLEAN:
                latency = now - sent_at
                if self._fastest is None or latency < self._fastest:
                    self._fastest = latency
                else:  # drift up slowly, so a lasting change of the path is noticed
                    self._fastest += (latency - self._fastest) * 0.01
                if in_use and latency <= self.SLOW_FACTOR * self._fastest + 0.002:
                    self.limit = min(self.max_concurrency, self.limit + 1 / self.limit)
            elif sent_at >= self._cut_at:
                self.limit = max(self.min_concurrency, self.limit / 2)
                self._cut_at = now
            self._notify()

    def observe(self, headers: Mapping[str, str]) -> None:
        """Read the token bucket the server announces in an answer's rate-limit headers."""
        remaining = _header_number(headers.get(REMAINING_HEADER))
        fill = _header_number(headers.get(FILL_RATE_HEADER))
        interval = _header_number(headers.get(INTERVAL_HEADER)) or 1.0
        size = _header_number(headers.get(LIMIT_HEADER))
        with self._cond:
            if remaining is None or not fill or fill <= 0 or interval <= 0:
                self._rate = None
                return
            self._rate = fill / interval
            self._capacity = size if size and size > 0 else max(remaining, fill)
            # The count is the server's once this request took its token; the others in
            # flight take theirs too.
            self._tokens = min(self._capacity, remaining - max(0, self.in_flight - 1))
            self._tokens_at = self._clock()

    def pause(self, seconds: float) -> int:
        """Stop every request to the instance for `seconds` (or until lifted); return its id."""
        with self._cond:
            pause = next(self._pause_ids)
            ends = self._clock() + seconds
            self._pauses[pause] = ends
            # The instance asked for time: the profile's rate resumes after the pause, not
            # with the requests its slots saved up meanwhile.
            self._next_slot = max(self._next_slot, ends)
            self.throttled += 1
            return pause

    def lift(self, pause: int) -> None:
        """End a pause early: its holder waited it out (on a clock of its own, in tests)."""
        with self._cond:
            self._pauses.pop(pause, None)
            self._notify()

    def _wait_out_pauses(self, deadline: float | None, what: str) -> None:
        with self._cond:
            while True:
                now = self._clock()
                for pause, until in list(self._pauses.items()):
                    if until <= now:
                        del self._pauses[pause]
                if not self._pauses:
                    return
                until = max(self._pauses.values())
                self._out_of_time(
                    deadline, until, what, "the end of the pause the server asked for"
                )
                self._wait(self._timeout(deadline, until))

    def _take_slot(self, deadline: float | None, what: str) -> None:
        """Wait for this request's turn under the profile's `requests_per_second`: one every
        1/rate seconds, no burst (a gap does not save up turns)."""
        with self._cond:
            if not self.requests_per_second:
                return
            now = self._clock()
            slot = max(now, self._next_slot)
            if deadline is not None and slot > deadline:
                self._out_of_time(deadline, slot, what, "its turn under requests_per_second")
            self._next_slot = slot + 1 / self.requests_per_second
            delay = slot - now
            self.paced_seconds += delay
        if delay > 0:
            self._sleep(delay)

    def _wait(self, timeout: float | None) -> None:
        """Wait for a notification, holding `_cond` (released meanwhile): on the loader's
        loop the other calls go on; on a thread, as `Condition.wait`."""
        if not cooperative.active():
            self._cond.wait(timeout)
            return
        waker = cooperative.Waker()
        self._wakers.append(waker)
        self._cond.release()
        try:
            waker.wait(timeout)
        finally:
            self._cond.acquire()
            if waker in self._wakers:
                self._wakers.remove(waker)

    def _notify(self) -> None:
        """Wake every waiter, threads and loop calls alike (holding `_cond`)."""
        self._cond.notify_all()
        wakers, self._wakers = self._wakers, []
        for waker in wakers:
            waker.wake()

    def _take_token(self, deadline: float | None, what: str) -> None:
        with self._cond:
            if self._rate is None:
                return
            now = self._clock()
            self._tokens = min(self._capacity, self._tokens + (now - self._tokens_at) * self._rate)
            self._tokens_at = now
            self._tokens -= 1  # below zero: a token reserved before it exists
            delay = -self._tokens / self._rate if self._tokens < 0 else 0.0
            if delay and deadline is not None and now + delay > deadline:
                self._tokens += 1
                self._out_of_time(deadline, now + delay, what, "the next token of its rate limit")
            self.paced_seconds += delay
        if delay:
            self._sleep(delay)

    def _out_of_time(
        self, deadline: float | None, until: float | None, what: str, waiting_for: str
    ) -> None:
        if deadline is None:
            return
        if self._clock() >= deadline or (until is not None and until > deadline):
            raise TargetDeadlineError(
                f"{what}: not sent: the run's time budget for this target runs out before "
                f"{waiting_for}"
            )

    def _timeout(self, deadline: float | None, until: float | None) -> float | None:
        ends = [t for t in (deadline, until) if t is not None]
        return max(0.0, min(ends) - self._clock()) + 0.001 if ends else None


_LIMITERS: dict[str, InstanceLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def instance_of_api(base_url: str) -> str:
    """The instance a REST root belongs to: the URL before `/rest/`, normalised."""
    return instance_of(base_url.split("/rest/", 1)[0])


def limiter_for(base_url: str) -> InstanceLimiter:
    """The process's one limiter of the instance `base_url` belongs to."""
    instance = instance_of_api(base_url)
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(instance)
        if limiter is None:
            limiter = _LIMITERS[instance] = InstanceLimiter(instance)
        return limiter


def pace_instance(
    url: str, *, max_in_flight: int | None, requests_per_second: float | None
) -> InstanceLimiter:
    """Give the instance `url` belongs to the profile's ceilings (`InstanceLimiter.pace`).

    The budget is the process's: every task and run in it that writes to the instance shares
    it. Processes do not share one (that would need a store on every request); one writer per
    instance at a time is what keeps them apart (`usersync_tasks.instances`).
    """
    limiter = limiter_for(url)
    limiter.pace(max_in_flight=max_in_flight, requests_per_second=requests_per_second)
    return limiter


class ApiClient:
    """An httpx client bound to one product instance, with retries and typed errors.

    Args:
        product: the name used in messages ("jira 'prod'").
        base_url: the instance's REST root, e.g. https://jira.corp/rest/api/2.
        auth: an httpx auth (basic) or None when `headers` carry a bearer token.
        headers: extra headers on every request.
        timeout_seconds: connect, read, write and pool timeout of every call.
        retry: the retry policy.
        verify: TLS verification (True, False, or a CA file).
        transport: for tests of fault shapes no server can produce.
        limiter: the pace of the instance; by default the process's one for the instance
            `base_url` belongs to (`limiter_for`), shared with every other client of it.
        errors: the layer's error for a failed call (a source's client: the source family);
            by default the target family is raised as it is.
    """

    def __init__(
        self,
        product: str,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_seconds: float = 30.0,
        retry: RetryPolicy | None = None,
        verify: bool | Path = True,
        transport: httpx.BaseTransport | None = None,
        limiter: InstanceLimiter | None = None,
        errors: Callable[[TargetError], UsersyncError] | None = None,
    ) -> None:
        self.product = product
        #: what a failed call raises: the target family, or what `errors` makes of it (a
        #: source's client raises the source family: `errors.source_error_of`)
        self._errors = errors
        self.retry = retry or RetryPolicy()
        self._ca_file = verify if isinstance(verify, Path) else None
        verify_arg: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=str(verify)) if isinstance(verify, Path) else verify
        )
        self._timeout = timeout_seconds
        self._tls = verify_arg if isinstance(verify_arg, ssl.SSLContext) else None
        if verify_arg is False:
            self._tls = ssl.create_default_context()
            self._tls.check_hostname = False
            self._tls.verify_mode = ssl.CERT_NONE
        #: tests' transports answer in-process: such a client always sends through them
        self._own_transport = transport is not None
        #: the wire form of a bare request to the base URL (host, default headers, credentials)
        self._template: Request | None = None
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            auth=auth,
            headers={"Accept": "application/json", **(headers or {})},
            timeout=httpx.Timeout(timeout_seconds),
            verify=verify_arg,
            transport=transport,
            follow_redirects=False,
        )
        #: Requests sent, by method, including retries (for the run summary).
        self.sent: dict[str, int] = {}
        #: time.monotonic() after which no request is sent and no wait begun (the run's time
        #: budget for this target); None: no budget
        self.deadline: float | None = None
        self.limiter = limiter or limiter_for(base_url)

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        ok: Iterable[int] = (200, 201, 204),
        replay_safe: bool | None = None,
    ) -> httpx.Response:
        """Send one call, retrying transient failures; return the response if its status is in `ok`.

        Args:
            replay_safe: whether sending the call again after a try that may have been applied
                is harmless. By default true for GET, PUT and DELETE and false for POST and
                PATCH, which are then not repeated once a try may have reached the server
                (use `write_once` to check and go on). Pass True for a POST whose repeat is
                harmless (a read sent as POST, adding a member twice).

        Raises:
            TransientError: still 429/5xx after the last attempt, or a 5xx to a write that is
                not replay-safe (which may have been applied).
            TargetUnreachableError: no answer (connect error, reset, timeout) after the last
                attempt, or no answer to a write that is not replay-safe once it was sent.
            TargetAuthError, TargetPermissionError, TargetNotFoundError, TargetConflictError,
            TargetRejectedError: the server refused the call (401, 403, 404, 409, other 4xx).
        """
        if replay_safe is None:
            replay_safe = method.upper() not in NOT_IDEMPOTENT_METHODS
        try:
            outcome = self._exchange(
                method, path, params=params, json=json, ok=ok, replay_safe=replay_safe, applied=None
            )
        except TargetError as exc:
            if self._errors is None:
                raise
            raise self._errors(exc) from exc
        assert isinstance(outcome, httpx.Response)
        return outcome

    def write_once(
        self,
        method: str,
        path: str,
        *,
        applied: Callable[[], T | None],
        result: Callable[[httpx.Response], T],
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        ok: Iterable[int] = (200, 201, 204),
    ) -> T:
        """Send a write that must take effect once, though answers can be lost.

        When a try may have reached the server without its answer arriving (5xx, connection
        lost after sending, read timeout), `applied()` is asked before the write is sent again
        and before a failure is reported: it reads the target and returns what the write
        produced (e.g. the new account's key) if it took effect, or None if it did not. A
        refusal that follows such a try (an "already exists" answered to the repeat) is also
        checked with `applied()` first. A 429 or a connection never made is retried as usual.

        Args:
            applied: reads whether the write took effect; its value, or None.
            result: what the write produced, from a successful answer.

        Returns:
            `result(response)` of a successful answer, or what `applied()` found.

        Raises:
            The errors of `request`; a failure is reported only after `applied()` said None.
        """
        outcome = self._exchange(
            method, path, params=params, json=json, ok=ok, replay_safe=False, applied=applied
        )
        if isinstance(outcome, httpx.Response):
            return result(outcome)
        return outcome.value

    def _exchange(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None,
        json: Any,
        ok: Iterable[int],
        replay_safe: bool,
        applied: Callable[[], T | None] | None,
    ) -> httpx.Response | _Applied[T]:
        """The retry loop of `request` and `write_once`."""
        ok = frozenset(ok)
        what = redact(f"{self.product}: {method} {path}")
        attempt = 0
        #: 429s among the attempts (waited out apart from the other failures)
        throttled = 0
        #: whether an earlier try may have been applied without our hearing of it
        maybe_applied = False
        while True:
            attempt += 1
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise TargetDeadlineError(
                    f"{what}: not sent: the run's time budget for this target ran out"
                )
            sent_at = self.limiter.admit(self.deadline, what)
            self.sent[method] = self.sent.get(method, 0) + 1
            pause: int | None = None
            try:
                response = self._send(method, path, params=params, json=json)
            except httpx.TransportError as exc:
                untrusted = certificate_failure(exc)
                if untrusted is not None:
                    # Says nothing of the instance's pace; the run cannot go on without a fix.
                    self.limiter.finish(None, CLEAN)
                    raise _untrusted(what, self.base_url, self._ca_file, untrusted) from exc
                self.limiter.finish(sent_at, FAILED)
                reached = not isinstance(exc, NEVER_SENT_ERRORS)
                failure: TargetError = TargetUnreachableError(
                    f"{what}: no answer from {redact(self.base_url)} after {attempt} attempt(s): "
                    f"{type(exc).__name__}: {exc}",
                    attempts=attempt,
                )
                cause: BaseException | None = exc
                wait = self.retry.backoff(attempt)
                reason = type(exc).__name__
            else:
                self.limiter.observe(response.headers)
                status = response.status_code
                self.limiter.finish(
                    sent_at,
                    THROTTLED
                    if status == 429
                    else FAILED
                    if status in RETRIABLE_STATUSES
                    else CLEAN,
                )
                if response.status_code in ok:
                    return response
                if response.status_code not in RETRIABLE_STATUSES:
                    refusal = self._refusal(what, response, attempts=attempt)
                    if maybe_applied and applied is not None:
                        # The refusal may be of the repeat ("already exists"): ask first.
                        found = self._check(applied, refusal)
                        if found is not None:
                            return _Applied(found)
                    raise refusal
                # A 429 is refused before any work is done; a 5xx may come after it.
                reached = response.status_code != 429
                failure = TransientError(
                    f"{what}: HTTP {response.status_code} after {attempt} attempt(s): "
                    f"{error_text(response)}",
                    status=response.status_code,
                    body=_body(response),
                    attempts=attempt,
                )
                cause = None
                asked = parse_retry_after(response.headers.get("Retry-After"))
                wait = (
                    min(asked, self.retry.max_wait_seconds)
                    if asked is not None
                    else self.retry.backoff(attempt)
                )
                reason = f"HTTP {response.status_code}"
                if not reached:
                    throttled += 1
                    # Every worker on the instance waits with this one; it holds the pause
                    # while it waits. If it gives up instead, the pause runs its course.
                    pause = self.limiter.pause(wait)
            checked = False
            if reached and not replay_safe:
                maybe_applied = True
                if applied is None:
                    raise type(failure)(
                        f"{failure}; not sent again: it may have been applied (read the target "
                        "to know)",
                        status=failure.status,
                        body=failure.body,
                        attempts=attempt,
                    ) from cause
                found = self._check(applied, failure)
                checked = True
                if found is not None:
                    log.warning("%s: %s, but the write took effect (checked)", what, reason)
                    return _Applied(found)
            if (
                throttled >= self.retry.max_rate_limited
                if pause is not None
                else attempt - throttled >= self.retry.max_attempts
            ):
                if maybe_applied and applied is not None:
                    found = None if checked else self._check(applied, failure)
                    if found is not None:
                        return _Applied(found)
                    failure = type(failure)(
                        f"{failure}; it did not take effect (checked)",
                        status=failure.status,
                        body=failure.body,
                        attempts=attempt,
                    )
                raise failure from cause
            if self.deadline is not None and time.monotonic() + wait > self.deadline:
                raise TargetDeadlineError(
                    f"{failure}; not retried: the run's time budget for this target runs out "
                    f"before the {wait:.0f} s wait asked for",
                    status=failure.status,
                    body=failure.body,
                    attempts=attempt,
                ) from cause
            log.warning("%s: %s, retrying in %.1fs", what, reason, wait)
            try:
                self.retry.sleep(wait)
            finally:
                if pause is not None:
                    self.limiter.lift(pause)

    def _send(
        self, method: str, path: str, *, params: Mapping[str, Any] | None, json: Any
    ) -> httpx.Response:
        """One try: on the loader's loop through `Wire`, else through the blocking client.

        Both send the request httpx builds (URL, headers, body, cookies, credentials).
        """
        if self._own_transport or not cooperative.active():
            return self._client.request(method, path, params=params, json=json)
        wire_request = self._wire_request(method, path, params, json)
        wire = cooperative.resource(
            self, lambda: Wire(timeout_seconds=self._timeout, ssl_context=self._tls)
        )
        response = cooperative.wait(wire.send(wire_request))
        if "set-cookie" in response.headers:
            response.request = self._client.build_request(method, path, params=params)
            self._client.cookies.extract_cookies(response)
        return response

    def _wire_request(
        self, method: str, path: str, params: Mapping[str, Any] | None, json: Any
    ) -> Request:
        """The request httpx would send, built without httpx's URL model where that is sure
        to give the same bytes: a plain path, no cookies, basic or no credentials."""
        auth = self._client.auth
        if (
            self._client.cookies
            or not _PLAIN_PATH.fullmatch(path)
            or not (auth is None or isinstance(auth, httpx.BasicAuth))
        ):
            request = self._client.build_request(method, path, params=params, json=json)
            if auth is not None:
                request = next(auth.sync_auth_flow(request))
            return Request.of(request)
        if self._template is None:
            template = self._client.build_request("GET", "/")
            if auth is not None:
                template = next(auth.sync_auth_flow(template))
            self._template = Request.of(template)
        target = self._template.target.rstrip(b"/") + path.encode("ascii")
        if params:
            target += b"?" + str(httpx.QueryParams(params)).encode("ascii")
        body = b""
        content: list[tuple[bytes, bytes]] = []
        if json is not None:
            body = json_dumps(
                json, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode("utf-8")
            content = [
                (b"Content-Length", str(len(body)).encode("ascii")),
                (b"Content-Type", b"application/json"),
            ]
        elif method in ("POST", "PUT", "PATCH"):
            content = [(b"Content-Length", b"0")]
        # In httpx's order: the client's headers, the body's, then the credentials.
        headers = self._template.headers
        if content and json is None:  # httpx puts an empty body's length after the host
            headers = [headers[0], *content, *headers[1:]]
        elif content:
            plain = [h for h in headers if h[0].lower() != b"authorization"]
            headers = [*plain, *content, *headers[len(plain) :]]
        return Request(self._template.origin, method.encode("ascii"), target, headers, body)

    @staticmethod
    def _check(applied: Callable[[], T | None], failure: TargetError) -> T | None:
        """Ask whether a write took effect; if even that fails, the outcome is unknown."""
        try:
            return applied()
        except TargetError as exc:
            unknown = isinstance(failure, TransientError | TargetUnreachableError)
            kind = type(failure) if unknown else TransientError
            raise kind(
                f"{failure}; whether it took effect is unknown, the check failed too: {exc}",
                status=failure.status,
                body=failure.body,
                attempts=failure.attempts,
            ) from exc

    def get_json(self, path: str, *, params: Mapping[str, Any] | None = None) -> Any:
        """GET and decode JSON."""
        return self.request("GET", path, params=params, ok=(200,)).json()

    def _refusal(self, what: str, response: httpx.Response, *, attempts: int) -> TargetError:
        status = response.status_code
        detail = error_text(response)
        kind: type[TargetError] = {
            401: TargetAuthError,
            403: TargetPermissionError,
            404: TargetNotFoundError,
            409: TargetConflictError,
        }.get(status, TargetRejectedError)
        hint = {
            401: " (check the credentials configured for this target)",
            403: " (the account needs administrator rights for user management)",
        }.get(status, "")
        return kind(
            f"{what}: HTTP {status}: {detail or response.reason_phrase}{hint}",
            status=status,
            body=_body(response),
            attempts=attempts,
        )
