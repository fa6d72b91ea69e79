"""The Confluence Data Center target: users and groups through the REST admin API, or JSON-RPC before 8.2.

Confluence's REST API manages groups and memberships since 8.2 and creates and updates users
since 8.4 (reference §2.2); older sites only offer the JSON-RPC API, which accepts basic auth
and no personal access token. `ConfluenceTarget` keeps the operations as data (`REST_ENDPOINTS`
with the version each appeared in, `JSONRPC_METHODS` for the fallback), chooses per operation
from the site's version (`confluence_api: auto`) or as configured, and reads every list with one
pager that follows `_links.next` (Confluence may silently cap `limit`). Confluence stores names
in lower case and refuses some characters in new usernames: usernames are lower-cased here and
a name Confluence would refuse is rejected before any request, with the user named.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pandas as pd

from usersync.config import BasicAuth, SecretLoader, TargetConfig, resolve_secret
from usersync.errors import (
    ConfigError,
    TargetConflictError,
    TargetError,
    TargetLicenceError,
    TargetNotFoundError,
    TargetPermissionError,
    TargetRejectedError,
)
from usersync.http import ApiClient, RetryPolicy
from usersync.model import (
    TARGET_GROUP_COLUMNS,
    TARGET_MEMBERSHIP_COLUMNS,
    TARGET_USER_COLUMNS,
    conform,
)
from usersync.targets.base import Target, TargetCheck

log = logging.getLogger("usersync.targets.confluence")

REST_ROOT = "/rest/api"
MANIFEST_PATH = "/rest/applinks/1.0/manifest"
JSONRPC_ROOT = "/rpc/json-rpc/confluenceservice-v2"

#: What we ask for per page; Confluence may answer with a smaller `limit` (reference §5.15).
PAGE_SIZE = 200

#: Above this many usernames `read_users` lists every user (one call per page of up to 200)
#: instead of looking each one up (one call per user). Measured on the emulator over loopback,
#: 3000 users: 3000 lookups 6.5 s, listing 16 pages 0.9 s; i.e. ~2.2 ms a lookup, ~55 ms a page.
#: Listing wins when more than ~1/8 of the site's users are asked for, and Confluence does not
#: tell its user count, so the threshold assumes a large site (100k users: listing ~500 pages).
#: Reading e-mails through JSON-RPC costs one more call per user found either way.
LIST_ALL_USERS_ABOVE = 1000

#: Characters Confluence refuses in new usernames, besides whitespace (reference §2.3).
FORBIDDEN_USERNAME_CHARACTERS = frozenset("\\,+<>'\"")

#: Groups whose members `check` takes for administrators. Confluence has no read-only REST
#: call that answers "may this account administer users" on every version, so `check` reads
#: the account's groups (writes, even refused ones, are not allowed in a check).
ADMIN_GROUPS = frozenset({"confluence-administrators"})


@dataclass(frozen=True)
class RestEndpoint:
    """One REST operation: method, path under /rest/api, accepted statuses, first version."""

    method: str
    path: str
    ok: tuple[int, ...] = (200,)
    since: tuple[int, ...] = ()


#: Every REST call the target makes. `{username}`/`{group}` are percent-encoded path segments.
REST_ENDPOINTS: dict[str, RestEndpoint] = {
    "current_user": RestEndpoint("GET", "/user/current"),
    "get_user": RestEndpoint("GET", "/user"),
    "member_of": RestEndpoint("GET", "/user/memberof"),
    "list_users": RestEndpoint("GET", "/user/list", since=(8, 4)),
    "group_members": RestEndpoint("GET", "/group/{group}/member"),
    "create_user": RestEndpoint("POST", "/admin/user", ok=(200, 201), since=(8, 4)),
    "update_user": RestEndpoint("PUT", "/admin/user/{username}", ok=(200, 204), since=(8, 4)),
    "deactivate_user": RestEndpoint(
        "PUT", "/admin/user/{username}/disable", ok=(200, 204), since=(8, 2)
    ),
    "reactivate_user": RestEndpoint(
        "PUT", "/admin/user/{username}/enable", ok=(200, 204), since=(8, 2)
    ),
    "create_group": RestEndpoint("POST", "/admin/group", ok=(200, 201), since=(8, 2)),
    "add_member": RestEndpoint(
        "PUT", "/user/{username}/group/{group}", ok=(200, 204), since=(8, 2)
    ),
    "remove_member": RestEndpoint(
        "DELETE", "/user/{username}/group/{group}", ok=(200, 204), since=(8, 2)
    ),
}

#: The JSON-RPC method that does each write on sites too old for its REST endpoint.
JSONRPC_METHODS: dict[str, str] = {
    "create_user": "addUser",
    "update_user": "editUser",
    "deactivate_user": "deactivateUser",
    "reactivate_user": "reactivateUser",
    "create_group": "addGroup",
    "add_member": "addUserToGroup",
    "remove_member": "removeUserFromGroup",
    "get_user": "getUser",
}

#: How JSON-RPC error texts map to our errors (the RPC API answers HTTP 200 with an error
#: object; which exception names real sites use per case is not documented).
JSONRPC_ERRORS: tuple[tuple[str, type[TargetError]], ...] = (
    ("already exist", TargetConflictError),
    ("licen", TargetLicenceError),
    ("notpermitted", TargetPermissionError),
    ("not permitted", TargetPermissionError),
    ("not an administrator", TargetPermissionError),
    ("no user", TargetNotFoundError),
    ("no group", TargetNotFoundError),
    ("does not exist", TargetNotFoundError),
    ("not found", TargetNotFoundError),
)


def confluence_username(username: str) -> str:
    """The username Confluence will store: lower case (Confluence refuses upper case)."""
    return username.lower()


def username_refusal(username: str) -> str | None:
    """Why Confluence would refuse `username` for a new account, or None (reference §2.3)."""
    if not username.strip():
        return "it is blank"
    if any(ch.isspace() for ch in username):
        return "it contains whitespace"
    bad = sorted(set(username) & FORBIDDEN_USERNAME_CHARACTERS)
    if bad:
        return f"it contains {' '.join(bad)}"
    if username.lower() == "anonymous":
        return "'anonymous' is reserved"
    return None


def parse_version(text: str) -> tuple[int, ...]:
    """(8, 9, 0) from "8.9.0" (or "8.9.0-m12"); stops at the first non-numeric part."""
    parts: list[int] = []
    for part in re.split(r"[.\-]", text.strip()):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


class ConfluenceTarget(Target):
    """Confluence Data Center (7.x–10.x) as a usersync target.

    Args:
        name: the target's name in the profile.
        url: the base URL including the context path, e.g. https://wiki.corp/confluence.
        auth: httpx basic auth, or None with `token`.
        token: a personal access token (sent as Bearer); REST only.
        api: "rest", "jsonrpc" or "auto" (REST where the site's version has it).
        retry, timeout_seconds, verify, transport: passed to `ApiClient`.
    """

    product = "confluence"

    def __init__(
        self,
        name: str,
        url: str,
        *,
        auth: httpx.BasicAuth | None = None,
        token: str | None = None,
        api: str = "auto",
        retry: RetryPolicy | None = None,
        timeout_seconds: float = 30.0,
        verify: Any = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(name)
        if (auth is None) == (token is None):
            raise ConfigError(f"confluence target '{name}': give basic auth or a token, not both")
        if api not in ("auto", "rest", "jsonrpc"):
            raise ConfigError(
                f"confluence target '{name}': confluence_api '{api}' (known: auto, rest, jsonrpc)"
            )
        self.url = url.rstrip("/")
        self.api = api
        self.uses_token = token is not None
        if api == "jsonrpc" and self.uses_token:
            raise ConfigError(self._pat_refused_message("confluence_api is jsonrpc"))
        headers = {"X-Atlassian-Token": "no-check"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._client = ApiClient(
            f"confluence '{name}'",
            self.url,
            auth=auth,
            headers=headers,
            timeout_seconds=timeout_seconds,
            retry=retry,
            verify=verify,
            transport=transport,
        )
        self._version: tuple[int, ...] | None = None
        self._announced = False
        self._email_via_rpc: bool | None = None if not self.uses_token else False

    @classmethod
    def from_config(
        cls,
        name: str,
        config: TargetConfig,
        *,
        load_prefect_secret: SecretLoader | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> ConfluenceTarget:
        """Build the target from its profile section; secrets are resolved here.

        Raises:
            ConfigError: the section is not a Confluence one, a secret is missing, or
                JSON-RPC is configured together with a personal access token.
        """
        if config.kind != "confluence":
            raise ConfigError(f"target '{name}' is kind {config.kind}, not confluence")
        auth: httpx.BasicAuth | None = None
        token: str | None = None
        if isinstance(config.auth, BasicAuth):
            password = resolve_secret(config.auth.password, load_prefect_secret=load_prefect_secret)
            auth = httpx.BasicAuth(config.auth.username, password)
        else:
            token = resolve_secret(config.auth.token, load_prefect_secret=load_prefect_secret)
        return cls(
            name,
            config.url,
            auth=auth,
            token=token,
            api=config.confluence_api,
            retry=retry
            or RetryPolicy(
                max_attempts=config.max_attempts, max_wait_seconds=config.max_retry_wait_seconds
            ),
            timeout_seconds=config.timeout_seconds,
            verify=config.ca_file or config.verify_tls,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    # -- version and API choice ----------------------------------------------------------

    @property
    def version(self) -> tuple[int, ...]:
        """The site's version from the applinks manifest (anonymous; read once)."""
        if self._version is None:
            try:
                response = self._client.request("GET", MANIFEST_PATH, ok=(200,))
            except TargetNotFoundError as exc:
                raise TargetRejectedError(
                    f"confluence '{self.name}': no applinks manifest at {self.url}{MANIFEST_PATH}"
                    " to tell the version (is the URL's context path right?); or set "
                    "confluence_api: rest or jsonrpc in the profile"
                ) from exc
            found = _manifest_version(response)
            if found is None:
                raise TargetRejectedError(
                    f"confluence '{self.name}': {self.url}{MANIFEST_PATH} does not name a "
                    "version; set confluence_api: rest or jsonrpc in the profile"
                )
            self._version = found
        return self._version

    def _uses_jsonrpc(self, operation: str) -> bool:
        """Whether this write goes through JSON-RPC (decided per operation, logged once)."""
        if self.api != "auto":
            return self.api == "jsonrpc"
        since = REST_ENDPOINTS[operation].since
        use_rpc = bool(since) and self.version < since
        if not self._announced:
            self._announced = True
            shown = ".".join(map(str, self.version))
            if self.version < (8, 2):
                log.info("confluence '%s': version %s, using JSON-RPC for writes", self.name, shown)
            elif self.version < (8, 4):
                log.info(
                    "confluence '%s': version %s, using REST for groups and memberships and "
                    "JSON-RPC to create and update users (REST has them from 8.4)",
                    self.name,
                    shown,
                )
            else:
                log.info("confluence '%s': version %s, using the REST API", self.name, shown)
        if use_rpc and self.uses_token:
            raise ConfigError(
                self._pat_refused_message(
                    f"Confluence {'.'.join(map(str, self.version))} has no REST endpoint to "
                    f"{operation.replace('_', ' ')} (it arrived in "
                    f"{'.'.join(map(str, since))})"
                )
            )
        return use_rpc

    def _pat_refused_message(self, why: str) -> str:
        return (
            f"confluence target '{self.name}': {why}, and Confluence's JSON-RPC API does not "
            "accept personal access tokens; configure auth kind: basic with a Confluence "
            "administrator's username and password"
        )

    # -- plumbing ------------------------------------------------------------------------

    def _rest(
        self,
        operation: str,
        *,
        username: str = "",
        group: str = "",
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
    ) -> httpx.Response:
        endpoint = REST_ENDPOINTS[operation]
        path = REST_ROOT + endpoint.path.format(
            username=quote(username, safe=""), group=quote(group, safe="")
        )
        try:
            return self._client.request(
                endpoint.method, path, params=params, json=json_body, ok=endpoint.ok
            )
        except TargetRejectedError as exc:
            raise _licence_error(exc) from exc

    def _pages(
        self, operation: str, *, group: str = "", params: Mapping[str, Any]
    ) -> Iterator[dict]:
        """Every result of a paged REST list, following `_links.next` to the end."""
        response = self._rest(
            operation, group=group, params={**params, "start": 0, "limit": PAGE_SIZE}
        ).json()
        seen: set[str] = set()
        while True:
            yield from response.get("results", [])
            following = (response.get("_links") or {}).get("next")
            if not following:
                return
            if following in seen:
                raise TargetError(
                    f"confluence '{self.name}': paging {REST_ENDPOINTS[operation].path} "
                    f"returned the same next link twice ({following}); the listing would be "
                    "incomplete"
                )
            seen.add(following)
            # `next` is relative to the site's base URL (context path included). Joined to the
            # configured URL, not to `_links.base`: a wrong "Server Base URL" setting on the
            # site must not send us elsewhere.
            response = self._client.get_json(self.url + following)

    def _rpc(self, method: str, *args: Any) -> Any:
        """Call a JSON-RPC method (light form: positional arguments as a JSON array)."""
        if self.uses_token:
            raise ConfigError(self._pat_refused_message(f"JSON-RPC method {method} is needed"))
        response = self._client.request("POST", f"{JSONRPC_ROOT}/{method}", json=list(args))
        if not response.content.strip():
            return None
        try:
            body = response.json()
        except ValueError:
            return response.text.strip()
        if isinstance(body, dict) and "error" in body:
            error = body["error"] or {}
            message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
            lowered = message.lower()
            kind = next((k for text, k in JSONRPC_ERRORS if text in lowered), TargetRejectedError)
            raise kind(
                f"confluence '{self.name}': JSON-RPC {method}: {message}", status=None, body=body
            )
        return body

    # -- reading -------------------------------------------------------------------------

    def read_users(self, usernames: Iterable[str]) -> pd.DataFrame:
        wanted = sorted({confluence_username(u) for u in usernames})
        people: list[dict] = []
        if wanted and len(wanted) > LIST_ALL_USERS_ABOVE and self._can_list_users():
            wanted_set = set(wanted)
            people = [
                p
                for p in self._pages("list_users", params={"expand": "status"})
                if str(p.get("username", "")).lower() in wanted_set
            ]
        else:
            for username in wanted:
                try:
                    people.append(
                        self._rest(
                            "get_user", params={"username": username, "expand": "status"}
                        ).json()
                    )
                except TargetNotFoundError:
                    continue
        rows = [
            {
                "target_key": p.get("userKey"),
                "username": p.get("username"),
                # Confluence's user object carries no e-mail (reference §2.3); see _email.
                "email": p.get("email") or self._email(str(p.get("username"))),
                "display_name": p.get("displayName"),
                "active": _is_active(p),
            }
            for p in people
        ]
        return conform(
            pd.DataFrame(rows, columns=list(TARGET_USER_COLUMNS)),
            TARGET_USER_COLUMNS,
            what=f"{self.name} users",
        )

    def _can_list_users(self) -> bool:
        if self.api == "rest":
            return True
        return self.version >= REST_ENDPOINTS["list_users"].since

    def _email(self, username: str) -> str | None:
        """A user's e-mail through JSON-RPC getUser, the only API that tells it.

        With a personal access token, or when the site's Remote API is off, e-mails are
        unknown (None): the planner must not read that as "changed".
        """
        if self._email_via_rpc is False:
            return None
        try:
            user = self._rpc(JSONRPC_METHODS["get_user"], username)
        except TargetNotFoundError:
            return None
        except (TargetPermissionError, TargetRejectedError) as exc:
            if self._email_via_rpc is None:
                log.warning(
                    "confluence '%s': e-mail addresses cannot be read (JSON-RPC getUser "
                    "refused: %s); enable the Remote API to compare e-mails",
                    self.name,
                    exc,
                )
            self._email_via_rpc = False
            return None
        self._email_via_rpc = True
        return user.get("email") if isinstance(user, dict) else None

    def read_groups(self, groups: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        found: list[str] = []
        memberships: list[dict[str, str]] = []
        for group in sorted({g.lower() for g in groups}):
            try:
                members = [
                    str(p["username"])
                    for p in self._pages("group_members", group=group, params={"expand": "status"})
                ]
            except TargetNotFoundError:
                continue
            found.append(group)
            memberships.extend({"username": m, "group": group} for m in members)
        return (
            conform(
                pd.DataFrame({"group": found}, dtype="string"),
                TARGET_GROUP_COLUMNS,
                what=f"{self.name} groups",
            ),
            conform(
                pd.DataFrame(memberships, columns=list(TARGET_MEMBERSHIP_COLUMNS)),
                TARGET_MEMBERSHIP_COLUMNS,
                what=f"{self.name} members",
            ),
        )

    # -- writing -------------------------------------------------------------------------

    def create_user(self, username: str, email: str, display_name: str) -> str:
        """Create an active account; see `Target.create_user`.

        The username is lower-cased. A random password is set and no e-mail is sent: users
        sign in through the IdP (SSO) or an administrator resets the password.

        Raises:
            TargetRejectedError: Confluence would refuse the username or display name; nothing
                was sent.
            TargetLicenceError: the licence has no seat left.
            TargetConflictError: the username exists.
        """
        name = confluence_username(username)
        why = username_refusal(name)
        if why is None and ("<" in display_name or ">" in display_name):
            why = f"its display name '{display_name}' contains < or >"
        if why:
            raise TargetRejectedError(
                f"confluence '{self.name}': cannot create user '{username}': {why}; Confluence "
                "usernames may not contain whitespace or any of \\ , + < > ' \" (and display "
                "names no < >). Change this user's username mapping in attributes.csv."
            )
        password = secrets.token_urlsafe(24)
        if self._uses_jsonrpc("create_user"):
            self._rpc(
                JSONRPC_METHODS["create_user"],
                {"name": name, "fullname": display_name, "email": email},
                password,
            )
            return str(self._rpc(JSONRPC_METHODS["get_user"], name).get("key") or name)
        body = {
            "userName": name,
            "fullName": display_name,
            "email": email,
            "password": password,
            "notifyViaEmail": False,
        }
        return str(self._rest("create_user", json_body=body).json()["userKey"])

    def update_user(self, username: str, changes: Mapping[str, str]) -> None:
        """Change e-mail and/or display name; see `Target.update_user`.

        Raises:
            TargetRejectedError: a rename was asked: Confluence has no API to rename a user.
        """
        name = confluence_username(username)
        if "username" in changes:
            raise TargetRejectedError(
                f"confluence '{self.name}': cannot rename '{username}' to "
                f"'{changes['username']}': Confluence has no API for renames; rename the user "
                "in Confluence's user administration (or its user directory) and run again"
            )
        unknown = set(changes) - {"email", "display_name"}
        if unknown:
            raise TargetRejectedError(
                f"confluence '{self.name}': cannot change {', '.join(sorted(unknown))} of "
                f"'{username}': Confluence only stores e-mail and display name"
            )
        if not changes:
            return
        if self._uses_jsonrpc("update_user"):
            current = self._rpc(JSONRPC_METHODS["get_user"], name)
            self._rpc(
                JSONRPC_METHODS["update_user"],
                {
                    "name": name,
                    "fullname": changes.get("display_name", current.get("fullname")),
                    "email": changes.get("email", current.get("email")),
                },
            )
            return
        body = {}
        if "email" in changes:
            body["email"] = changes["email"]
        if "display_name" in changes:
            body["fullName"] = changes["display_name"]
        self._rest("update_user", username=name, json_body=body)

    def deactivate_user(self, username: str) -> None:
        self._user_write("deactivate_user", confluence_username(username))

    def reactivate_user(self, username: str) -> None:
        self._user_write("reactivate_user", confluence_username(username))

    def _user_write(self, operation: str, username: str) -> None:
        if self._uses_jsonrpc(operation):
            self._rpc(JSONRPC_METHODS[operation], username)
        else:
            self._rest(operation, username=username)

    def create_group(self, group: str) -> None:
        name = group.lower()
        if self._uses_jsonrpc("create_group"):
            self._rpc(JSONRPC_METHODS["create_group"], name)
        else:
            # "type" is outside the documented schema but what working clients send.
            self._rest("create_group", json_body={"type": "group", "name": name})

    def add_member(self, group: str, username: str) -> None:
        self._membership("add_member", group.lower(), confluence_username(username))

    def remove_member(self, group: str, username: str) -> None:
        self._membership("remove_member", group.lower(), confluence_username(username))

    def _membership(self, operation: str, group: str, username: str) -> None:
        if self._uses_jsonrpc(operation):
            self._rpc(JSONRPC_METHODS[operation], username, group)
        else:
            self._rest(operation, username=username, group=group)

    # -- housekeeping --------------------------------------------------------------------

    def check(self) -> TargetCheck:
        """Reachable, credentials accepted, administrator; writes nothing."""
        where = f"confluence '{self.name}' at {self.url}"
        try:
            version = ".".join(map(str, self.version))
        except TargetError as exc:
            return TargetCheck(False, f"{where}: not reachable as Confluence: {exc}")
        try:
            me = self._rest("current_user").json()
        except TargetError as exc:
            return TargetCheck(False, f"{where}: credentials refused: {exc}")
        if me.get("type") != "known":
            return TargetCheck(
                False,
                f"{where}: the credentials were not accepted (Confluence treats the caller as "
                "anonymous); check the username/password or token",
            )
        who = str(me.get("username", "?"))
        try:
            groups = {
                str(g.get("name", "")).lower()
                for g in self._pages("member_of", params={"username": who})
            }
        except TargetError as exc:
            return TargetCheck(False, f"{where}: could not read the groups of '{who}': {exc}")
        if not groups & ADMIN_GROUPS:
            return TargetCheck(
                False,
                f"{where}: '{who}' is not in {' or '.join(sorted(ADMIN_GROUPS))}, the group "
                "Confluence grants administration to; usersync needs a Confluence administrator "
                "(if your site grants it through another group, sync runs will still work)",
            )
        mode = "JSON-RPC" if self._uses_jsonrpc("create_user") else "REST"
        return TargetCheck(
            True, f"{where}: Confluence {version}, '{who}' is an administrator, {mode} API"
        )


def _licence_error(exc: TargetRejectedError) -> TargetRejectedError:
    """402 or a licence message becomes a `TargetLicenceError` saying what to do."""
    if isinstance(exc, TargetLicenceError):
        return exc
    if exc.status == 402 or (exc.status is None and "licen" in str(exc).lower()):
        return TargetLicenceError(
            f"{exc} — the Confluence licence is full: no user can be added until seats are "
            "freed (deactivate unused accounts) or the licence is raised",
            status=exc.status,
            body=exc.body,
        )
    return exc


def _is_active(person: Mapping[str, Any]) -> bool:
    status = person.get("status")
    if isinstance(status, Mapping):  # tolerate {"value": "Active"} shapes
        status = status.get("value")
    return str(status or "Active").lower() == "active"


def _manifest_version(response: httpx.Response) -> tuple[int, ...] | None:
    """The version from the applinks manifest, JSON or XML (its default)."""
    text = response.text
    try:
        version = json.loads(text).get("version")
    except (ValueError, AttributeError):
        match = re.search(r"<version>([^<]+)</version>", text)
        version = match.group(1) if match else None
    return parse_version(str(version)) if version else None
