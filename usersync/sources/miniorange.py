"""Pull users from miniOrange's admin REST API with signed requests.

Every call is a POST with a JSON body repeating `customerKey`, signed with three headers:
`Customer-Key`, `Timestamp` (milliseconds since the epoch) and `Authorization`, the lower-case
hex SHA-512 of customerKey + timestamp + apiKey, concatenated (CONFIRMED in miniOrange's User,
Group and Super-Admin API guides). Answers carry a `status` string (`SUCCESS`, `ERROR`, and
for search `USER_FOUND`/`USER_NOT_FOUND`/...), which is what callers match on.
What the reference does NOT confirm stays out of the default path:
- listing all users: `/moas/api/admin/users/getall` (`batchSize`, `batchNo`) is seen in one
  third-party file only; it runs only with `experimental_getall: true`, pages until a batch is
  shorter than the largest one sent (`usersync.paging`; no total is known, so a truncated
  listing cannot be detected), and its answer shape (`users` list) is a guess the sandbox
  emulator shares;
- groups and memberships: no listing endpoint is known, so the snapshot has none (use the SCIM
  push, `kind: miniorange-push`, for groups);
- an immutable user id: the source id is the answer's `id` when present, else the username.
Single-user lookup (`users/get`, `users/search`) is documented by plugin code and is what
Test Connection and `find_user` use.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import pandas as pd

from usersync.config import (
    MiniorangeSourceConfig,
    Secret,
    SecretLoader,
    resolve_secret,
    reveal,
)
from usersync.errors import (
    ConfigError,
    SourceAuthError,
    SourceError,
    SourceUnreachableError,
    source_error_of,
)
from usersync.http import ApiClient, RetryPolicy
from usersync.model import (
    SOURCE_GROUP_COLUMNS,
    SOURCE_MEMBERSHIP_COLUMNS,
    SOURCE_USER_COLUMNS,
    SourceSnapshot,
    conform,
    empty_frame,
)
from usersync.paging import MINIORANGE_BATCHES, PagedEndpoint, Pager
from usersync.sources.base import Source, SourceCheck

#: Endpoints, relative to the host. GETALL is UNCONFIRMED (see the module docstring).
USER_GET = "/moas/api/admin/users/get"
USER_SEARCH = "/moas/api/admin/users/search"
USER_GETALL = "/moas/api/admin/users/getall"
#: A username no tenant has: searching it proves the signature without reading anyone.
CHECK_USERNAME = "usersync-connection-check"
#: `search` statuses that mean the request was accepted.
SEARCH_ANSWERS = frozenset({"USER_FOUND", "USER_NOT_FOUND", "USER_FOUND_UNDER_DIFFERENT_CUSTOMER"})


def sign(customer_key: str, timestamp_ms: str, api_key: str) -> str:
    """miniOrange's request signature: lower-case hex SHA-512 of key + timestamp + API key."""
    return hashlib.sha512(f"{customer_key}{timestamp_ms}{api_key}".encode()).hexdigest().lower()


def signed_headers(
    customer_key: str, api_key: str, *, clock: Callable[[], float] = time.time
) -> dict[str, str]:
    """The three headers that authenticate one request, for the current time."""
    timestamp = str(int(clock() * 1000))
    return {
        "Customer-Key": customer_key,
        "Timestamp": timestamp,
        "Authorization": sign(customer_key, timestamp, api_key),
    }


class MiniorangeSignature(httpx.Auth):
    """Signs every request as it is sent, so each retry carries a fresh Timestamp."""

    def __init__(
        self, customer_key: str, api_key: Secret, clock: Callable[[], float] = time.time
    ) -> None:
        self._customer_key = customer_key
        self._api_key = api_key  # revealed per request, to sign it
        self._clock = clock

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers.update(
            signed_headers(self._customer_key, reveal(self._api_key), clock=self._clock)
        )
        yield request


class MiniorangeSource(Source):
    """miniOrange's admin REST API.

    Args:
        config: the profile's `source` section.
        api_key: the API key (resolve it with `from_config`).
        clock: seconds since the epoch (tests of clock skew).
        transport: an httpx transport (tests).
    """

    kind = "miniorange"

    def __init__(
        self,
        config: MiniorangeSourceConfig,
        api_key: Secret,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = config
        self._client = ApiClient(
            f"miniorange {config.url}",
            config.url,
            auth=MiniorangeSignature(config.customer_key, api_key, clock),
            headers={"Content-Type": "application/json"},
            timeout_seconds=config.timeout_seconds,
            retry=RetryPolicy(max_attempts=config.max_attempts),
            transport=transport,
            errors=source_error_of,  # this layer's errors, not the targets'
        )
        self._pager = Pager(
            f"miniorange {config.url}",
            malformed=lambda problem: SourceError(
                f"{problem}; the endpoint is unconfirmed, turn experimental_getall off"
            ),
            incomplete=SourceError,
        )

    @classmethod
    def from_config(
        cls, config: MiniorangeSourceConfig, *, load_prefect_secret: SecretLoader | None = None
    ) -> MiniorangeSource:
        """A `MiniorangeSource` with its API key resolved.

        Raises:
            ConfigError: the secret is not available.
        """
        return cls(config, resolve_secret(config.api_key, load_prefect_secret=load_prefect_secret))

    def close(self) -> None:
        self._client.close()

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a signed request; return the JSON answer.

        Raises:
            SourceUnreachableError: no answer, or 429/5xx after the retries.
            SourceAuthError: the signature, key or timestamp was refused.
            SourceError: any other refusal, or an answer that is not a JSON object.
        """
        where = f"miniorange {self.config.url}{path}"
        payload = {"customerKey": self.config.customer_key, **body}
        try:
            response = self._client.request(
                "POST",
                path,
                json=payload,
                ok=(200,),
                replay_safe=True,  # reads: safe to repeat
            )
        except SourceUnreachableError as exc:
            raise SourceUnreachableError(f"{where}: {exc}", transient=False) from exc
        except SourceAuthError as exc:
            raise SourceAuthError(
                f"{where}: the signed request was refused ({exc}); check the customer key, "
                "the API key and the worker's clock (the Timestamp header must be current)"
            ) from exc
        except SourceError as exc:
            raise SourceError(f"{where}: {exc}", status=exc.status) from exc
        try:
            answer = response.json()
        except ValueError as exc:
            raise SourceError(f"{where}: the answer is not JSON: {response.text[:200]}") from exc
        if not isinstance(answer, dict):
            raise SourceError(f"{where}: expected a JSON object, got {answer!r:.200}")
        return answer

    def find_user(self, username: str) -> dict[str, Any] | None:
        """One user by username (`users/search`, then `users/get`), or None when unknown.

        Raises:
            SourceError: miniOrange answered ERROR or another unexpected status.
        """
        found = self.call(USER_SEARCH, {"username": username})
        status = found.get("status")
        if status in ("USER_NOT_FOUND", "USER_FOUND_UNDER_DIFFERENT_CUSTOMER"):
            return None
        if status != "USER_FOUND":
            raise SourceError(
                f"miniorange users/search {username!r}: {status}: {found.get('message')}"
            )
        user = self.call(USER_GET, {"username": username})
        if user.get("status") != "SUCCESS":
            raise SourceError(
                f"miniorange users/get {username!r}: {user.get('status')}: {user.get('message')}"
            )
        return user

    def extract(self, attributes: Sequence[str]) -> SourceSnapshot:
        """Every user via the UNCONFIRMED getall endpoint; no groups (none can be listed).

        Raises:
            ConfigError: `experimental_getall` is off (the default).
            SourceUnreachableError, SourceAuthError, SourceError: as for `call`.
        """
        if not self.config.experimental_getall:
            raise ConfigError(
                "source kind miniorange: miniOrange documents no endpoint that lists all users. "
                "Use kind: miniorange-push (miniOrange pushes over SCIM into `usersync inbox "
                "serve`), or, after checking /moas/api/admin/users/getall against your tenant, "
                "set source.experimental_getall: true"
            )
        users: list[dict[str, Any]] = []
        pages = self._pager.pages(
            PagedEndpoint(USER_GETALL, MINIORANGE_BATCHES, self.config.batch_size),
            self._getall_batch,
        )
        for batch in pages:
            users.extend(batch)
            self.report_progress("users", len(users))
        return self._snapshot(users, attributes)

    def _getall_batch(self, page: Mapping[str, Any]) -> dict[str, Any]:
        answer = self.call(USER_GETALL, dict(page))
        if answer.get("status") != "SUCCESS":
            raise SourceError(
                f"miniorange users/getall batch {page['batchNo']}: {answer.get('status')}: "
                f"{answer.get('message')}"
            )
        return answer

    def _snapshot(self, users: list[dict[str, Any]], attributes: Sequence[str]) -> SourceSnapshot:
        ids = [str(u.get("id") or u.get("username") or "") for u in users]
        columns: dict[str, list[Any]] = {
            "source_id": ids,
            "locator": [f"miniorange {self.config.url} user {u.get('username')}" for u in users],
            # miniOrange's disabled flag is not documented; every listed user counts as active.
            "active": [str(u.get("status", "")).upper() != "DISABLED" for u in users],
        }
        for attribute in dict.fromkeys(attributes):
            if attribute not in columns:
                columns[attribute] = [
                    None if u.get(attribute) is None else str(u.get(attribute)) for u in users
                ]
        frame = pd.DataFrame(columns)
        for name in frame.columns:
            if name not in SOURCE_USER_COLUMNS:
                frame[name] = frame[name].astype("string")
        return SourceSnapshot(
            users=conform(frame, SOURCE_USER_COLUMNS, what="miniorange users"),
            groups=empty_frame(SOURCE_GROUP_COLUMNS),
            memberships=empty_frame(SOURCE_MEMBERSHIP_COLUMNS),
            source_kind=self.kind,
            notes=(
                "miniorange REST: users from the unconfirmed getall endpoint (a truncated "
                "listing cannot be detected); groups are not read (no documented endpoint)",
            ),
        )

    def check(self) -> SourceCheck:
        """Sign a search for a username no tenant has: proves reachability, keys and clock."""
        try:
            answer = self.call(USER_SEARCH, {"username": CHECK_USERNAME})
        except SourceError as exc:
            return SourceCheck(False, str(exc))
        status = answer.get("status")
        if status not in SEARCH_ANSWERS:
            return SourceCheck(
                False,
                f"miniorange {self.config.url}: users/search answered {status}: "
                f"{answer.get('message')} (check the customer key and API key)",
            )
        listing = "on (experimental)" if self.config.experimental_getall else "off"
        return SourceCheck(
            True,
            f"miniorange {self.config.url}: signed requests accepted; user listing {listing}",
        )
