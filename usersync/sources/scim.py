"""Read users, groups and memberships from any SCIM 2.0 server (RFC 7644), and turn SCIM JSON into
the canonical source tables.

`ScimSource` lists `/Users` and `/Groups` with a bearer token. Offset paging is not stable
(RFC 7644 §3.4.2.4: "clients MUST be prepared to handle inconsistent results") and servers
return fewer resources than asked for, so the listing (`usersync.paging`, the SCIM envelope)
advances by the number of resources a page actually holds, stops once it has walked
`totalResults`, keeps each id once, and refuses the listing (`IncompleteSourceError`, never a
smaller snapshot) when `totalResults` changes, a page comes back empty before the end, or
other than `totalResults` distinct ids arrive.
`snapshot_from_scim` is shared with the inbox source: users keyed by SCIM `id`, one string
column per attribute the mapping reads, named by its SCIM path (`userName`, `name.givenName`,
`emails` or `email` for the primary e-mail, `emails[type eq "work"].value`, an extension
attribute by its full URN path), groups by `displayName`, memberships from `members`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import pandas as pd

from usersync.config import ScimSourceConfig, Secret, SecretLoader, resolve_secret, reveal
from usersync.errors import (
    IncompleteSourceError,
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
)
from usersync.paging import SCIM_LIST, PagedEndpoint, Pager
from usersync.sources.base import Source, SourceCheck

#: The endpoints a snapshot reads, in order.
USERS_ENDPOINT = "/Users"
GROUPS_ENDPOINT = "/Groups"
#: Alias for the primary (else first) e-mail address, as profiles usually spell it.
EMAIL_ALIAS = "email"
#: `attr[type eq "work"]` with an optional `.sub` after it.
_TYPED_VALUE = re.compile(
    r'^(?P<attr>[^\[\]]+)\[\s*type\s+eq\s+"(?P<type>[^"]*)"\s*\](?:\.(?P<sub>.+))?$'
)
#: How many unresolved member values a note quotes.
NOTE_EXAMPLES = 3


# -- SCIM JSON → canonical tables ------------------------------------------------------------


def _get(node: dict[str, Any], name: str) -> Any:
    """`node[name]`, matching the key case-insensitively (SCIM attribute names are)."""
    if name in node:
        return node[name]
    folded = name.casefold()
    for key, value in node.items():
        if key.casefold() == folded:
            return value
    return None


def _pick(values: list[Any], type_: str | None = None) -> Any:
    """From a multi-valued attribute: the value of that type, else the primary one, else the first."""
    items = [v for v in values if v is not None]
    if type_ is not None:
        items = [v for v in items if isinstance(v, dict) and str(_get(v, "type") or "") == type_]
    for item in items:
        if isinstance(item, dict) and _get(item, "primary") is True:
            return item
    return items[0] if items else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        value = _get(value, "value")
        return None if value is None else _text(value)
    return str(value)


def scim_value(resource: dict[str, Any], path: str) -> str | None:
    """The string value of a SCIM attribute path in a resource, or None when it has none.

    Multi-valued attributes give their primary (else first) value; `emails[type eq "work"]`
    picks by type; a complex value gives its `value` sub-attribute unless the path names one.
    """
    if path == EMAIL_ALIAS:
        path = "emails"
    node: Any = resource
    if path.lower().startswith("urn:"):
        schema, _, path = path.rpartition(":")
        node = _get(resource, schema)
        if not isinstance(node, dict):
            return None
    typed = _TYPED_VALUE.match(path)
    if typed:
        values = _get(node, typed["attr"])
        item = _pick(values, typed["type"]) if isinstance(values, list) else None
        if item is None:
            return None
        return _text(_get(item, typed["sub"]) if typed["sub"] else item)
    for part in path.split("."):
        if isinstance(node, list):
            node = _pick(node)
        if not isinstance(node, dict):
            return None
        node = _get(node, part)
    if isinstance(node, list):
        node = _pick(node)
    return _text(node)


def snapshot_from_scim(
    users: Iterable[dict[str, Any]],
    groups: Iterable[dict[str, Any]],
    attributes: Sequence[str],
    *,
    source_kind: str,
    where: str,
) -> SourceSnapshot:
    """Turn SCIM User and Group resources into a `SourceSnapshot`.

    Args:
        users: User resources (JSON), each with its `id`.
        groups: Group resources (JSON), each with `id` and `displayName`.
        attributes: SCIM attribute paths the mapping reads; each becomes a string column.
        source_kind: recorded in the snapshot.
        where: names the source in messages and locators ("inbox acme", a base URL).

    Raises:
        IncompleteSourceError: a user or group has no id, or two share one.
    """
    users = list(users)
    groups = list(groups)
    user_ids = [_required_id(u, "user", where) for u in users]
    _refuse_duplicates(user_ids, "user", where)
    columns: dict[str, list[Any]] = {
        "source_id": user_ids,
        "locator": [
            _text(_get(_get(u, "meta") or {}, "location")) or f"{where}/Users/{uid}"
            for u, uid in zip(users, user_ids, strict=True)
        ],
        # RFC 7643 leaves `active` optional; an IdP that omits it has no disabled state to tell.
        "active": [_get(u, "active") is not False for u in users],
    }
    for attribute in dict.fromkeys(attributes):
        if attribute not in columns:
            columns[attribute] = [scim_value(u, attribute) for u in users]
    frame = pd.DataFrame(columns)
    for attribute in frame.columns:
        if attribute not in SOURCE_USER_COLUMNS:
            frame[attribute] = frame[attribute].astype("string")
    user_frame = conform(frame, SOURCE_USER_COLUMNS, what=f"{where} users")

    group_ids = [_required_id(g, "group", where) for g in groups]
    _refuse_duplicates(group_ids, "group", where)
    names = [_text(_get(g, "displayName")) for g in groups]
    notes: list[str] = []
    nameless = [gid for gid, name in zip(group_ids, names, strict=True) if not name]
    if nameless:
        notes.append(
            f"{len(nameless)} group(s) in {where} have no displayName and were left out, "
            f"e.g. {', '.join(nameless[:NOTE_EXAMPLES])}"
        )
    group_frame = conform(
        pd.DataFrame(
            {
                "source_group_id": [g for g, n in zip(group_ids, names, strict=True) if n],
                "source_group": [n for n in names if n],
            },
            dtype="string",
        ),
        SOURCE_GROUP_COLUMNS,
        what=f"{where} groups",
    )

    known = set(user_ids)
    rows: list[tuple[str, str]] = []
    unresolved: list[str] = []
    for group, name in zip(groups, names, strict=True):
        if not name:
            continue
        for member in _get(group, "members") or []:
            value = _text(_get(member, "value")) if isinstance(member, dict) else None
            if value in known:
                rows.append((value, name))
            else:
                unresolved.append(f"{name}: {value}")
    if unresolved:
        notes.append(
            f"{len(unresolved)} member(s) of groups in {where} are no user of the listing "
            f"(nested groups or deleted users) and were left out, e.g. "
            f"{', '.join(unresolved[:NOTE_EXAMPLES])}"
        )
    memberships = pd.DataFrame(rows, columns=list(SOURCE_MEMBERSHIP_COLUMNS), dtype="string")
    return SourceSnapshot(
        users=user_frame,
        groups=group_frame,
        memberships=conform(
            memberships.drop_duplicates(), SOURCE_MEMBERSHIP_COLUMNS, what=f"{where} memberships"
        ),
        source_kind=source_kind,
        notes=tuple(notes),
    )


def _required_id(resource: dict[str, Any], what: str, where: str) -> str:
    value = _text(_get(resource, "id"))
    if not value:
        raise IncompleteSourceError(
            f"{where}: a {what} has no id ({_text(_get(resource, 'userName')) or resource}); "
            "SCIM resources must carry one, so the snapshot is refused"
        )
    return value


def _refuse_duplicates(ids: list[str], what: str, where: str) -> None:
    seen: set[str] = set()
    twice = [i for i in ids if i in seen or seen.add(i)]
    if twice:
        raise IncompleteSourceError(
            f"{where}: {len(twice)} {what} id(s) appear twice, e.g. {twice[0]}; refused"
        )


# -- pulling from a SCIM server ----------------------------------------------------------------


class ScimSource(Source):
    """A SCIM 2.0 service provider read over HTTP with a bearer token.

    Args:
        config: the profile's `source` section.
        token: the bearer token (resolve it with `from_config`).
        transport: an httpx transport (tests of fault shapes).
    """

    kind = "scim"

    def __init__(
        self,
        config: ScimSourceConfig,
        token: Secret,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = config
        verify: Any = config.ca_file if config.ca_file else config.verify_tls
        self._client = ApiClient(
            f"scim source {config.url}",
            config.url,
            headers={"Authorization": f"Bearer {reveal(token)}", "Accept": "application/scim+json"},
            timeout_seconds=config.timeout_seconds,
            retry=RetryPolicy(max_attempts=config.max_attempts),
            verify=verify,
            transport=transport,
            errors=source_error_of,  # this layer's errors, not the targets'
        )
        self._pager = Pager(
            f"scim source {config.url}", malformed=SourceError, incomplete=IncompleteSourceError
        )

    @classmethod
    def from_config(
        cls, config: ScimSourceConfig, *, load_prefect_secret: SecretLoader | None = None
    ) -> ScimSource:
        """A `ScimSource` with its token resolved.

        Raises:
            ConfigError: the secret is not available.
        """
        return cls(config, resolve_secret(config.token, load_prefect_secret=load_prefect_secret))

    def close(self) -> None:
        self._client.close()

    def extract(self, attributes: Sequence[str]) -> SourceSnapshot:
        """Read every user and group (with members).

        Raises:
            SourceUnreachableError, SourceAuthError: the server did not answer or refused the token.
            IncompleteSourceError: the listing was inconsistent (see the module docstring).
            SourceError: any other refusal.
        """
        users = self.list_resources(USERS_ENDPOINT)
        groups = self.list_resources(GROUPS_ENDPOINT)
        return snapshot_from_scim(
            users, groups, attributes, source_kind=self.kind, where=self.config.url
        )

    def list_resources(self, endpoint: str) -> list[dict[str, Any]]:
        """Every resource of `endpoint`, each id once, or an error (never a partial list).

        Raises:
            IncompleteSourceError: `totalResults` changed, a page was empty before the end, or
                other than `totalResults` distinct ids arrived.
            SourceError: an answer without a valid `totalResults`.
            SourceUnreachableError, SourceAuthError, SourceError: as for `extract`.
        """
        where = f"{self.config.url}{endpoint}"
        what = endpoint.strip("/").lower()
        found: dict[str, dict[str, Any]] = {}
        pages = self._pager.pages(
            PagedEndpoint(endpoint, SCIM_LIST, self.config.page_size),
            lambda page: self._get(endpoint, dict(page), where),
            identity=lambda resource: _required_id(resource, what, where),
        )
        for page in pages:
            for resource in page:
                found[_required_id(resource, what, where)] = resource
            self.report_progress(what, len(found))
        return list(found.values())

    def check(self) -> SourceCheck:
        """Read `/ServiceProviderConfig`, then one user: proves reachability and the token."""
        where = self.config.url
        try:
            self._get("/ServiceProviderConfig", None, where)
            listed = self._get(USERS_ENDPOINT, {"startIndex": 1, "count": 1}, where)
        except SourceError as exc:
            return SourceCheck(False, str(exc))
        return SourceCheck(
            True,
            f"{where}: token accepted; {listed.get('totalResults', '?')} user(s) readable",
        )

    def _get(self, path: str, params: dict[str, Any] | None, where: str) -> dict[str, Any]:
        try:
            body = self._client.get_json(path, params=params)
        except SourceUnreachableError as exc:
            raise SourceUnreachableError(f"scim source {where}: {exc}", transient=False) from exc
        except SourceAuthError as exc:
            if exc.status == 403:
                raise SourceAuthError(
                    f"scim source {where}: the token may not read {path} (HTTP 403); grant it "
                    "read access to users and groups"
                ) from exc
            raise SourceAuthError(
                f"scim source {where}: the bearer token was refused (HTTP 401); check the "
                "token the profile's source.token names"
            ) from exc
        except SourceError as exc:
            raise SourceError(f"scim source {where}: {exc}", status=exc.status) from exc
        except ValueError as exc:
            raise SourceError(f"scim source {where}{path}: the answer is not JSON") from exc
        if not isinstance(body, dict):
            raise SourceError(f"scim source {where}{path}: expected a JSON object")
        return body
