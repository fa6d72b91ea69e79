"""The shared HTTP client of every target: timeouts, retries that honour Retry-After, one error taxonomy.

Each product module builds an `ApiClient` with its base URL and auth and calls `request`.
Transient answers (429, 5xx, dropped connections, timeouts) are retried with exponential
backoff and jitter, waiting what `Retry-After` asks for when the server says (seconds or an
HTTP date, capped). Everything else becomes the matching `usersync.errors` class at once, with
a message that names the product, the call and what the server said. Credentials are never
part of a message or a log line.
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
from typing import Any

import httpx

from usersync.errors import (
    TargetAuthError,
    TargetConflictError,
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
    ) -> httpx.Response:
        """Send one call, retrying transient failures; return the response if its status is in `ok`.

        Raises:
            TransientError: still 429/5xx after the last attempt.
            TargetUnreachableError: no answer (connect error, reset, timeout) after the last attempt.
            TargetAuthError, TargetPermissionError, TargetNotFoundError, TargetConflictError,
            TargetRejectedError: the server refused the call (401, 403, 404, 409, other 4xx).
        """
        ok = frozenset(ok)
        what = f"{self.product}: {method} {path}"
        attempt = 0
        while True:
            attempt += 1
            self.sent[method] = self.sent.get(method, 0) + 1
            try:
                response = self._client.request(method, path, params=params, json=json)
            except httpx.TransportError as exc:
                if attempt >= self.retry.max_attempts:
                    raise TargetUnreachableError(
                        f"{what}: no answer from {self.base_url} after {attempt} attempt(s): "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                wait = self.retry.backoff(attempt)
                log.warning("%s: %s, retrying in %.1fs", what, type(exc).__name__, wait)
                self.retry.sleep(wait)
                continue
            if response.status_code in ok:
                return response
            if response.status_code in RETRIABLE_STATUSES:
                if attempt >= self.retry.max_attempts:
                    raise TransientError(
                        f"{what}: HTTP {response.status_code} after {attempt} attempt(s): "
                        f"{error_text(response)}",
                        status=response.status_code,
                        body=_body(response),
                    )
                asked = parse_retry_after(response.headers.get("Retry-After"))
                wait = (
                    min(asked, self.retry.max_wait_seconds)
                    if asked is not None
                    else self.retry.backoff(attempt)
                )
                log.warning("%s: HTTP %s, retrying in %.1fs", what, response.status_code, wait)
                self.retry.sleep(wait)
                continue
            raise self._refusal(what, response, attempts=attempt)

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
