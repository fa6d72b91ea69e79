"""The shared HTTP client of every target: timeouts, retries that honour Retry-After, one error taxonomy.

Each product module builds an `ApiClient` with its base URL and auth and calls `request`.
Transient answers (429, 5xx, dropped connections, timeouts) are retried with exponential
backoff and jitter, waiting what `Retry-After` asks for when the server says (seconds or an
HTTP date, capped). Everything else becomes the matching `usersync.errors` class at once, with
a message that names the product, the call and what the server said. Credentials are never
part of a message or a log line.

A write that is not idempotent (POST, PATCH) is never sent twice blindly: once a try may have
reached the server (a 5xx, a connection lost after sending, a read timeout), sending it again
could do it twice. `write_once` takes a read that tells whether the write took effect and asks
it before every further try and before reporting a failure; `request` does not repeat such a
write at all unless the caller says a repeat is harmless (`replay_safe`). Only a 429 (refused
before any work) or a connection that was never made is retried without asking.
"""

from __future__ import annotations

import email.utils
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

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
)

log = logging.getLogger("usersync.http")

RETRIABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Sending these twice may do the work twice (HTTP gives GET, PUT and DELETE no such risk).
NOT_IDEMPOTENT_METHODS = frozenset({"POST", "PATCH"})
#: Transport failures that prove the request never reached the server: no connection was made.
NEVER_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

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
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

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
    """What an Atlassian error body says, in one line.

    Understands Jira's `{"errorMessages": [...], "errors": {...}}`, Confluence's `{"message"}`
    and Bitbucket's `{"errors": [{"message"}]}`; falls back to the first 200 characters of text.
    """
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


def _body(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return response.text


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
    ) -> None:
        self.product = product
        self.retry = retry or RetryPolicy()
        verify_arg: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=str(verify)) if isinstance(verify, Path) else verify
        )
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
        outcome = self._exchange(
            method, path, params=params, json=json, ok=ok, replay_safe=replay_safe, applied=None
        )
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
        what = f"{self.product}: {method} {path}"
        attempt = 0
        #: whether an earlier try may have been applied without our hearing of it
        maybe_applied = False
        while True:
            attempt += 1
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise TargetDeadlineError(
                    f"{what}: not sent: the run's time budget for this target ran out"
                )
            self.sent[method] = self.sent.get(method, 0) + 1
            try:
                response = self._client.request(method, path, params=params, json=json)
            except httpx.TransportError as exc:
                reached = not isinstance(exc, NEVER_SENT_ERRORS)
                failure: TargetError = TargetUnreachableError(
                    f"{what}: no answer from {self.base_url} after {attempt} attempt(s): "
                    f"{type(exc).__name__}: {exc}",
                    attempts=attempt,
                )
                cause: BaseException | None = exc
                wait = self.retry.backoff(attempt)
                reason = type(exc).__name__
            else:
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
            if attempt >= self.retry.max_attempts:
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
            self.retry.sleep(wait)

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
