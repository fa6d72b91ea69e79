"""The Confluence Data Center target: users and groups through the REST admin API, or JSON-RPC before 8.2.

Confluence's REST API manages groups and memberships since 8.2 and creates and updates users
since 8.4 (reference §2.2); older sites only offer the JSON-RPC API, which accepts basic auth
and no personal access token. `ConfluenceTarget` keeps the operations as data (`REST_ENDPOINTS`
with the version each appeared in, `JSONRPC_METHODS` for the fallback), chooses per operation
from the site's version (`confluence_api: auto`) or as configured, and reads every list
through `usersync.paging`, which follows `_links.next` (Confluence may silently cap `limit`).
Confluence stores names trimmed and in lower case and refuses some characters in new
usernames: usernames are normalised here and a name Confluence would refuse is rejected before
any request, with the user named. What else is hard, and where it is absorbed: e-mails are not part of the REST user
object on every site (`_emails`: REST expansion, else JSON-RPC, else unknown, never empty); an
update must carry e-mail and full name together (`update_user`); a create whose answer was
lost is read back before it is sent again (`create_user`, `create_group`); and a name with a
slash cannot travel in a URL path on Tomcat (`fits_in_path`: such groups are read through the
query-parameter member list and written through JSON-RPC). The administrators usersync must
not take over (`administrators`) are the members of confluence-administrators and, where the
site lists its global permissions over REST (documented for 9.2 and later), the users and
groups granted Confluence Administrator or System Administrator. The licence's headroom
(`licence_seats`) is read from `/rest/license/1.0/license`, and a create past the limit (402)
is a `TargetLicenceError`.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pandas as pd

from usersync.config import BasicAuth, Secret, SecretLoader, TargetConfig, resolve_secret, reveal
from usersync.errors import (
    ConfigError,
    TargetAuthError,
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
from usersync.paging import CONFLUENCE_PAGE, PagedEndpoint, Pager
from usersync.targets.base import (
    STOCK_ADMIN_GROUPS,
    Privileges,
    Seats,
    Target,
    TargetCheck,
    normalise_name,
)
from usersync.targets.licence import read_count, read_limit, says_unlimited

log = logging.getLogger("usersync.targets.confluence")

REST_ROOT = "/rest/api"
MANIFEST_PATH = "/rest/applinks/1.0/manifest"
#: The licence's user limit and the users counting towards it, each `{"count": n}`: a resource
#: outside the REST reference (CONFSERVER-37100 names it; monitoring scripts read `.count`).
LICENSE_MAX_USERS = "/rest/license/1.0/license/maxUsers"
LICENSE_USER_COUNT = "/rest/license/1.0/license/userCount"
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

#: Characters that cannot reach Confluence inside a URL path segment, even percent-encoded:
#: Tomcat refuses `%2F` and `%5C` before Confluence sees the request (reference §5.10). Names
#: holding them are read through query parameters and written through JSON-RPC.
PATH_REFUSED_CHARACTERS = frozenset("/\\")

#: Expansions on every user read: `status` (active or not) and `details.personal`, which may
#: carry the e-mail (reference §2.3: UNCONFIRMED on Data Center). Asking costs nothing: a site
#: that does not offer an expansion ignores it.
PERSON_EXPAND = "status,details.personal"

#: Groups whose members `check` takes for administrators. Confluence has no read-only REST
#: call that answers "may this account administer users" on every version, so `check` reads
#: the account's groups (writes, even refused ones, are not allowed in a check).
ADMIN_GROUPS = frozenset({"confluence-administrators"})
#: The group Confluence puts new accounts in, which holds "Can use" on a stock site.
DEFAULT_USER_GROUP = "confluence-users"
#: Groups that grant access ("Can use") on a stock site: what counts as an access group when
#: the global permissions cannot be read (`users` is the pre-5 default group).
STOCK_ACCESS_GROUPS = frozenset({DEFAULT_USER_GROUP, "users"})
#: The global permission that lets an account use Confluence, as the REST API names it.
USE_OPERATION = ("application", "use")

#: Global permissions that make an administrator, as `GET /rest/api/permissions` names them
#: (targetType, operationKey): Confluence Administrator and System Administrator.
ADMIN_OPERATIONS = frozenset({("application", "administer"), ("system", "administer")})


@dataclass(frozen=True)
class RestEndpoint:
    """One REST operation: method, path under /rest/api, accepted statuses, first version, and
    whether it is a list in Confluence's paging envelope."""

    method: str
    path: str
    ok: tuple[int, ...] = (200,)
    since: tuple[int, ...] = ()
    paged: bool = False


#: Every REST call the target makes. `{username}`/`{group}` are percent-encoded path segments.
REST_ENDPOINTS: dict[str, RestEndpoint] = {
    "current_user": RestEndpoint("GET", "/user/current"),
    # Every global permission grant, one unpaged array. Documented in the 9.2 and 10.x REST
    # references; its first version is UNCONFIRMED, so it is asked and a 404 means "absent".
    "global_permissions": RestEndpoint("GET", "/permissions"),
    "get_user": RestEndpoint("GET", "/user"),
    "member_of": RestEndpoint("GET", "/user/memberof", paged=True),
    "list_users": RestEndpoint("GET", "/user/list", since=(8, 4), paged=True),
    "list_groups": RestEndpoint("GET", "/group", paged=True),
    "group_members": RestEndpoint("GET", "/group/{group}/member", paged=True),
    # The query-parameter form, for names that cannot travel in a path: declared from 10.2
    # (getMembersByGroupName); before, `/group/member` is the path form for a group "member".
    "group_members_by_query": RestEndpoint("GET", "/group/member", since=(10, 2), paged=True),
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
    """The username Confluence will store: trimmed, lower case (it refuses upper case)."""
    return username.strip().lower()


def fits_in_path(name: str) -> bool:
    """Whether `name` reaches Confluence intact as one percent-encoded URL path segment.

    Not with a slash or backslash (Tomcat refuses them encoded), nor as "." or "..", which
    are path steps, not names. `%`, `?`, `#` and the like are fine once percent-encoded.
    """
    return not (set(name) & PATH_REFUSED_CHARACTERS) and name not in (".", "..")


def rest_email(person: Mapping[str, Any]) -> str | None:
    """The e-mail a REST user object carries, if any: `details.personal.email` or `email`."""
    details = person.get("details")
    personal = details.get("personal") if isinstance(details, Mapping) else None
    candidates = [personal.get("email") if isinstance(personal, Mapping) else None]
    candidates.append(person.get("email"))
    for value in candidates:
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


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
        admin_groups: groups whose members are administrators whatever the global permissions
            say (by default confluence-administrators, Confluence's super group).
        retry, timeout_seconds, verify, transport: passed to `ApiClient`.
    """

    product = "confluence"
    can_rename = False

    def __init__(
        self,
        name: str,
        url: str,
        *,
        auth: httpx.BasicAuth | None = None,
        token: Secret | None = None,
        api: str = "auto",
        admin_groups: Iterable[str] = ADMIN_GROUPS,
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
        self.admin_groups = frozenset(g.strip().lower() for g in admin_groups if g.strip())
        self.uses_token = token is not None
        if api == "jsonrpc" and self.uses_token:
            raise ConfigError(self._pat_refused_message("confluence_api is jsonrpc"))
        headers = {"X-Atlassian-Token": "no-check"}
        if token is not None:
            headers["Authorization"] = f"Bearer {reveal(token)}"
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
        self._pager = Pager(f"confluence '{name}'", malformed=_NotAPage, incomplete=TargetError)
        #: whether JSON-RPC getUser tells e-mails: None until asked, False after a refusal
        self._email_via_rpc: bool | None = None if not self.uses_token else False
        #: whether this site's REST user objects carry e-mails (seen once, then trusted)
        self._email_via_rest = False

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
        token: Secret | None = None
        if isinstance(config.auth, BasicAuth):
            password = resolve_secret(config.auth.password, load_prefect_secret=load_prefect_secret)
            auth = httpx.BasicAuth(config.auth.username, reveal(password))
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
            admin_groups=(*ADMIN_GROUPS, *config.admin_groups),
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

    def server_version(self) -> tuple[int, ...]:
        """The site's version (`version`), for `Target.product_version`."""
        return self.version

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
        """Every result of a paged REST list, following `_links.next` to the end.

        `next` is relative to the site's base URL (context path included). It is joined to the
        configured URL, not to `_links.base`: a wrong "Server Base URL" setting on the site
        must not send us elsewhere.

        Raises:
            _NotAPage: the answer is not Confluence's paging envelope (a path that means
                something else on this version).
        """
        endpoint = REST_ENDPOINTS[operation]
        assert endpoint.paged, f"{operation} is not a paged list"
        pages = self._pager.pages(
            PagedEndpoint(endpoint.path, CONFLUENCE_PAGE, PAGE_SIZE),
            lambda page: self._rest(operation, group=group, params={**params, **page}).json(),
            follow=lambda following: self._client.get_json(self.url + following),
        )
        for page in pages:
            yield from page

    def _rest_once(
        self,
        operation: str,
        *,
        json_body: Any,
        applied: Callable[[], str | None],
        result: Callable[[httpx.Response], str],
    ) -> str:
        """A REST create that must take effect once: `ApiClient.write_once` with `applied`."""
        endpoint = REST_ENDPOINTS[operation]
        try:
            return self._client.write_once(
                endpoint.method,
                REST_ROOT + endpoint.path,
                json=json_body,
                ok=endpoint.ok,
                applied=applied,
                result=result,
            )
        except TargetRejectedError as exc:
            raise _licence_error(exc) from exc

    def _rpc(self, method: str, *args: Any) -> Any:
        """Call a JSON-RPC method (light form: positional arguments as a JSON array).

        Sent again after a lost answer: every method called this way is a read or a write
        whose repeat changes nothing (set a value, add a member again). Creates go through
        `_rpc_once`.
        """
        if self.uses_token:
            raise ConfigError(self._pat_refused_message(f"JSON-RPC method {method} is needed"))
        response = self._client.request(
            "POST", f"{JSONRPC_ROOT}/{method}", json=list(args), replay_safe=True
        )
        return self._rpc_answer(method, response)

    def _rpc_once(
        self,
        operation: str,
        args: list[Any],
        *,
        applied: Callable[[], str | None],
        result: Callable[[], str],
    ) -> str:
        """A JSON-RPC create that must take effect once (see `ApiClient.write_once`).

        The RPC API answers HTTP 200 with an error object, so an "already exists" that follows
        a lost answer arrives as a success of the HTTP call: if `applied` was asked before (a
        try may have taken effect), it is asked again before the conflict is reported.
        """
        method = JSONRPC_METHODS[operation]
        if self.uses_token:
            raise ConfigError(self._pat_refused_message(f"JSON-RPC method {method} is needed"))
        asked = False

        def check() -> str | None:
            nonlocal asked
            asked = True
            return applied()

        def answered(response: httpx.Response) -> str:
            try:
                self._rpc_answer(method, response)
            except TargetConflictError:
                found = applied() if asked else None
                if found is None:
                    raise
                return found
            return result()

        return self._client.write_once(
            "POST", f"{JSONRPC_ROOT}/{method}", json=args, applied=check, result=answered
        )

    def _rpc_instead(self, operation: str, args: list[Any], *, why: str) -> None:
        """A write through JSON-RPC: on old sites, or (`why`) when REST cannot carry a name.

        In the second case a refusal is this object's failure, not the target's: JSON-RPC is
        off on most sites, and the token or the Remote API setting says nothing about the
        other operations.
        """
        method = JSONRPC_METHODS[operation]
        if not why:
            self._rpc(method, *args)
            return
        advice = (
            "JSON-RPC can do it, but needs basic auth and the Remote API switched on (General "
            "Configuration → Further Configuration); or rename it in the mapping tables"
        )
        if self.uses_token:
            raise TargetRejectedError(
                f"confluence '{self.name}': cannot {operation.replace('_', ' ')}: {why}. "
                f"{advice} (this target uses a personal access token)"
            )
        try:
            self._rpc(method, *args)
        except (TargetAuthError, TargetPermissionError, TargetNotFoundError) as exc:
            if isinstance(exc, TargetNotFoundError) and exc.status is None:
                raise  # the RPC API answered: no such user or group
            raise TargetRejectedError(
                f"confluence '{self.name}': cannot {operation.replace('_', ' ')}: {why}. "
                f"{advice}. JSON-RPC answered: {exc}",
                status=exc.status,
                body=exc.body,
            ) from exc

    def _rpc_answer(self, method: str, response: httpx.Response) -> Any:
        """The result of a JSON-RPC answer; its error object becomes our error."""
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
            error = kind(
                f"confluence '{self.name}': JSON-RPC {method}: {message}", status=None, body=body
            )
            raise _licence_error(error) if isinstance(error, TargetLicenceError) else error
        return body

    # -- reading -------------------------------------------------------------------------

    def read_users(self, usernames: Iterable[str]) -> pd.DataFrame:
        wanted = sorted({confluence_username(u) for u in usernames if u})
        return self._users_frame(self._people(wanted, by="username"))

    def read_users_by_key(self, keys: Iterable[str]) -> pd.DataFrame:
        """Accounts by userKey (`GET /user?key=`), whatever they are called now."""
        wanted = sorted({k for k in keys if k})
        return self._users_frame(self._people(wanted, by="key"))

    def administrators(self) -> set[str]:
        """Members of the admin groups, and holders of an administrator global permission.

        `GET /rest/api/permissions` (one request, no paging) names the users and groups
        granted Confluence Administrator or System Administrator; each group's members are
        then read like any group's (paged), and a user named only by key is looked up. A site
        without that resource (404), or one that refuses it to this account (403), leaves
        only the admin groups, and a user granted administration directly goes unseen: a
        warning says so (and `privileges` says the administrators are not known). A grant
        whose subject cannot be told is an error, not a guess.
        """
        return set(self.privileges().administrators)

    def privileges(self) -> Privileges:
        """The administrators, the groups granting administration, and whether they are known.

        The privileged groups are the admin groups and every group granted an administrator
        global permission. When the global permissions cannot be read, administrators granted
        directly or through another group go unseen: the answer says so (`problem`), and
        usersync then adopts and relinks nobody (fail closed).
        """
        grants = self._administrator_grants()
        usernames, groups = grants if grants is not None else (set(), set())
        admins = {normalise_name(name) for name in usernames}
        _found, members = self.read_groups(sorted(self.admin_groups | groups))
        admins.update(normalise_name(str(name)) for name in members["username"])
        problem = None
        if grants is None:
            problem = (
                f"the global permissions cannot be read (GET {REST_ROOT}/permissions); accounts "
                "granted Confluence Administrator or System Administrator directly or through a "
                f"group other than {', '.join(sorted(self.admin_groups))} cannot be told apart; "
                "give the account usersync signs in as the right to read global permissions "
                "(Confluence 9.2+)"
            )
        privileged = STOCK_ADMIN_GROUPS | self.admin_groups | groups
        return Privileges(frozenset(admins), frozenset(privileged), problem)

    def access_groups(self) -> set[str]:
        """confluence-users and every group granted "Can use" (`GET /permissions`); the stock
        groups alone when the global permissions cannot be read."""
        try:
            grants = self._rest("global_permissions").json()
        except (TargetNotFoundError, TargetPermissionError):
            grants = []
        groups = set(STOCK_ACCESS_GROUPS)
        for grant in grants if isinstance(grants, list) else []:
            operation = grant.get("operation") or {}
            subject = grant.get("subject") or {}
            if (operation.get("targetType"), operation.get("operationKey")) != USE_OPERATION:
                continue
            name = subject.get("name") or subject.get("displayName")
            if str(subject.get("type") or "").lower() == "group" and name:
                groups.add(str(name).strip().lower())
        return groups

    def groups_of_new_accounts(self) -> set[str]:
        """Confluence puts an account created over the REST admin API in its default group."""
        return {DEFAULT_USER_GROUP}

    def _administrator_grants(self) -> tuple[set[str], set[str]] | None:
        """(usernames, group names) granted an administrator global permission; None when the
        site will not show its global permissions."""
        try:
            grants = self._rest("global_permissions").json()
        except (TargetNotFoundError, TargetPermissionError) as exc:
            log.warning(
                "confluence '%s': the global permissions cannot be read (GET %s/permissions: "
                "%s); only members of %s count as administrators, and accounts granted "
                "Confluence Administrator or System Administrator directly or through another "
                "group are not protected",
                self.name,
                REST_ROOT,
                exc,
                ", ".join(sorted(self.admin_groups)),
            )
            return None
        if not isinstance(grants, list):
            raise TargetRejectedError(
                f"confluence '{self.name}': GET {REST_ROOT}/permissions answered something "
                f"other than a list of grants: {str(grants)[:200]}"
            )
        usernames: set[str] = set()
        keys: set[str] = set()
        groups: set[str] = set()
        for grant in grants:
            operation = grant.get("operation") or {}
            if (operation.get("targetType"), operation.get("operationKey")) not in ADMIN_OPERATIONS:
                continue
            subject = grant.get("subject") or {}
            kind = str(subject.get("type") or "").lower()
            # Which fields name a subject is UNCONFIRMED (the reference's schema shows only
            # `type` and `displayName`): every plausible one is read, the most specific first.
            if kind == "group" and (name := subject.get("name") or subject.get("displayName")):
                groups.add(str(name).strip().lower())
            elif kind in ("user", "known") and subject.get("username"):
                usernames.add(str(subject["username"]))
            elif kind in ("user", "known") and (
                key := subject.get("userKey") or subject.get("key")
            ):
                keys.add(str(key))
            else:
                raise TargetRejectedError(
                    f"confluence '{self.name}': cannot tell who holds the global permission "
                    f"{operation.get('operationKey')}/{operation.get('targetType')} (subject "
                    f"{subject!r}); usersync refuses to guess which accounts are administrators"
                )
        usernames.update(str(p.get("username")) for p in self._people(sorted(keys), by="key"))
        return usernames, groups

    def current_account(self) -> str | None:
        """The username behind the credentials (`GET /user/current`; PAT or basic auth)."""
        me = self._rest("current_user").json()
        if me.get("type") != "known" or not me.get("username"):
            return None
        return str(me["username"])

    def stored_form(self, users: pd.DataFrame) -> pd.DataFrame:
        """Values as Confluence stores them: trimmed (the default), usernames in lower case."""
        out = super().stored_form(users)
        if "username" in out.columns:
            out["username"] = out["username"].str.lower()
        return out

    def refused_name(self, kind: str, name: str) -> str | None:
        """What Confluence refuses; upper case in a username is not refused but lower-cased.

        Usernames: the default's rules, then Confluence's (reference §2.3: no whitespace, none
        of \\ , + < > ' ", not "anonymous"). Group names: the default's rules only; the
        reference names no character Confluence refuses in a group name (names it cannot carry
        in a URL path go through JSON-RPC: see `unsendable_name`).
        """
        why = super().refused_name(kind, name)
        if why is not None or kind != "user":
            return why
        refusal = username_refusal(confluence_username(name))
        return f"Confluence refuses this username: {refusal}" if refusal else None

    def refused_value(self, attribute: str, value: str) -> str | None:
        """The default's rules, and Confluence's for a full name: no `<` or `>`, and not
        "anonymous" (reference §2.3)."""
        why = super().refused_value(attribute, value)
        if why is None and attribute == "display_name":
            if "<" in value or ">" in value:
                why = "Confluence refuses < and > in a display name"
            elif value.strip().casefold() == "anonymous":
                why = "Confluence refuses the display name 'anonymous'"
        return why

    def unsendable_name(self, kind: str, name: str) -> str | None:
        """A name with `/` or `\\`, which REST cannot carry in a path, needs JSON-RPC: it cannot
        be sent when the Remote API is off or out of reach of these credentials (asked once,
        and only when such a name is planned)."""
        if fits_in_path(name) or self._remote_api_on():
            return None
        return (
            f"the {kind} name holds / or \\, which Confluence's REST API cannot carry in a "
            "path, and its Remote API (JSON-RPC) is off or needs basic auth; switch it on "
            "(General Configuration → Further Configuration) or rename it in the mapping"
        )

    def _remote_api_on(self) -> bool:
        """Whether JSON-RPC answers these credentials (a getUser of the account itself, asked
        once and only when a name needs it)."""
        if self._email_via_rpc is None:
            me = self.current_account()
            if me:
                self._rpc_email(me)
        return bool(self._email_via_rpc)

    def _people(self, wanted: list[str], *, by: str) -> list[dict]:
        """REST person objects whose `by` ("username" or "key") is in `wanted`.

        One lookup per value, or, for many values, the full user list (see
        `LIST_ALL_USERS_ABOVE`). Both carry `PERSON_EXPAND`, so the e-mail comes in the same
        call wherever the site's REST offers it.
        """
        field = {"username": "username", "key": "userKey"}[by]
        if len(wanted) > LIST_ALL_USERS_ABOVE and self._can_list_users():
            wanted_set = set(wanted)
            fold = str.lower if by == "username" else str
            return [
                p
                for p in self._pages("list_users", params={"expand": PERSON_EXPAND})
                if fold(str(p.get(field, ""))) in wanted_set
            ]
        people = []
        for value in wanted:
            try:
                people.append(
                    self._rest("get_user", params={by: value, "expand": PERSON_EXPAND}).json()
                )
            except TargetNotFoundError:
                continue
        return people

    def _users_frame(self, people: list[dict]) -> pd.DataFrame:
        rows = [
            {
                "target_key": p.get("userKey"),
                "username": p.get("username"),
                "email": email,
                "display_name": p.get("displayName"),
                "active": _is_active(p),
            }
            for p, email in zip(people, self._emails(people), strict=True)
        ]
        return conform(
            pd.DataFrame(rows, columns=list(TARGET_USER_COLUMNS)),
            TARGET_USER_COLUMNS,
            what=f"{self.name} users",
        )

    def _emails(self, people: list[dict]) -> list[str | None]:
        """Each person's e-mail, None where it cannot be known (never "": unknown ≠ empty).

        REST first: the person objects were read with `details.personal` expanded, which may
        carry the e-mail (reference §2.3: UNCONFIRMED on Data Center). Once any person came
        with one, the site's REST tells e-mails, and a person without one simply has none we
        may see. Otherwise JSON-RPC `getUser`, one call per person (the RPC API has no list
        call that carries e-mails), if basic auth is used and the Remote API answers; else
        unknown.
        """
        emails = [rest_email(p) for p in people]
        if any(emails):
            self._email_via_rest = True
        if self._email_via_rest:
            return emails
        return [
            e or self._rpc_email(str(p.get("username")))
            for e, p in zip(emails, people, strict=True)
        ]

    def _can_list_users(self) -> bool:
        if self.api == "rest":
            return True
        return self.version >= REST_ENDPOINTS["list_users"].since

    def _rpc_email(self, username: str) -> str | None:
        """A user's e-mail through JSON-RPC getUser; None when it cannot be read.

        With a personal access token, or when the site's Remote API is off or gone, e-mails
        are unknown (None) and JSON-RPC is not asked again: the planner must not read that as
        "changed".
        """
        if self._email_via_rpc is False:
            return None
        try:
            user = self._rpc(JSONRPC_METHODS["get_user"], username)
        except (
            TargetAuthError,
            TargetPermissionError,
            TargetRejectedError,
            TargetNotFoundError,
        ) as exc:
            if isinstance(exc, TargetNotFoundError) and exc.status is None:
                return None  # the RPC API answered: no such user
            if self._email_via_rpc is None:
                log.warning(
                    "confluence '%s': e-mail addresses cannot be read: REST does not return "
                    "them and the Remote API refused getUser (%s); e-mails are treated as "
                    "unknown, never compared or written. To sync them, switch the Remote API on "
                    "(General Configuration > Further Configuration) and use basic auth",
                    self.name,
                    _server_said(exc),
                )
            self._email_via_rpc = False
            return None
        self._email_via_rpc = True
        email = user.get("email") if isinstance(user, dict) else None
        return str(email).strip() if email and str(email).strip() else None

    def read_user_groups(self, usernames: Sequence[str]) -> pd.DataFrame:
        """Every group of these accounts: `GET /user/memberof?username=` paged, per account."""
        rows = []
        for username in dict.fromkeys(str(n) for n in usernames if n):
            try:
                groups = [g for g in self._pages("member_of", params={"username": username})]
            except TargetNotFoundError:
                continue  # deleted meanwhile: nothing to remove
            rows.extend((username, str(g["name"])) for g in groups if g.get("name"))
        return pd.DataFrame(rows, columns=["username", "group"], dtype="string")

    def read_groups(self, groups: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The groups that exist (from the group list: the member list of a group that does
        not exist is declared as a 200, so it cannot tell) and their members."""
        found: list[str] = []
        memberships: list[dict[str, str]] = []
        wanted = sorted({g.strip().lower() for g in groups if g and g.strip()})
        every_group = self._every_group() if wanted else set()
        for group in wanted:
            if group not in every_group:
                continue
            if fits_in_path(group):
                try:
                    members = self._member_names("group_members", group=group)
                except TargetNotFoundError:
                    continue  # deleted meanwhile
            else:
                members = self._members_by_query(group)
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

    def _member_names(
        self, operation: str, *, group: str = "", params: Mapping[str, Any] | None = None
    ) -> list[str]:
        pages = self._pages(operation, group=group, params={**(params or {}), "expand": "status"})
        return [str(p["username"]) for p in pages]

    def _every_group(self) -> set[str]:
        """Every group name on the site, lower case (`GET /group`, paged; every version)."""
        return {str(g.get("name", "")).lower() for g in self._pages("list_groups", params={})}

    def _members_by_query(self, group: str) -> list[str]:
        """Members of a group whose name cannot travel in a path, by the query-parameter form
        (`GET /group/member?groupName=`), which Confluence has from 10.2. Before, nothing is
        sent: `/group/member` there is the path form for a group called "member"."""
        since = REST_ENDPOINTS["group_members_by_query"].since
        try:
            available = self.version >= since
        except TargetRejectedError:
            available = True  # the version cannot be read (no manifest): ask, its answer tells
        if available:
            try:
                return self._member_names("group_members_by_query", params={"groupName": group})
            except (TargetNotFoundError, _NotAPage) as exc:
                problem = f"GET {REST_ROOT}/group/member answered: {exc}"
        else:
            shown = ".".join(map(str, self.version))
            problem = f"Confluence {shown} has no query-parameter form of the member list"
        raise TargetRejectedError(
            f"confluence '{self.name}': cannot read the members of group '{group}': its "
            "name holds a character Confluence's web server refuses in a URL path (/ or \\) "
            f"and {problem} (it arrived in {'.'.join(map(str, since))}). Rename the group in "
            "groups.csv, or upgrade Confluence"
        )

    # -- writing -------------------------------------------------------------------------

    def create_user(self, username: str, email: str, display_name: str) -> str:
        """Create an active account; see `Target.create_user`.

        The username is lower-cased and trimmed. A random password is set and no e-mail is
        sent: users sign in through the IdP (SSO) or an administrator resets the password. If
        the answer is lost after Confluence may have created the account, the account is read
        before the request is sent again or a failure reported: an account with this username
        (and this e-mail, where e-mails can be read) is the one we made, and its key is
        returned.

        Raises:
            TargetRejectedError: Confluence would refuse the username (`refused_name`) or the
                display name; nothing was sent.
            TargetLicenceError: the licence has no seat left.
            TargetConflictError: the username exists.
        """
        name = confluence_username(username)
        why = self.refused_name("user", username)
        if why is None and ("<" in display_name or ">" in display_name):
            why = f"its display name '{display_name}' contains < or >"
        if why:
            raise TargetRejectedError(
                f"confluence '{self.name}': cannot create user '{username}': {why}; Confluence "
                "usernames may not contain whitespace or any of \\ , + < > ' \" (and display "
                "names no < >). Change this user's username mapping in attributes.csv."
            )
        password = secrets.token_urlsafe(24)

        def made_by_us() -> str | None:
            return self._account_matching(name, email)

        if self._uses_jsonrpc("create_user"):
            details = {"name": name, "fullname": display_name, "email": email}
            return self._rpc_once(
                "create_user",
                [details, password],
                applied=made_by_us,
                result=lambda: str(self._rpc(JSONRPC_METHODS["get_user"], name).get("key") or name),
            )
        body = {
            "userName": name,
            "fullName": display_name,
            "email": email,
            "password": password,
            "notifyViaEmail": False,
        }
        return self._rest_once(
            "create_user",
            json_body=body,
            applied=made_by_us,
            result=lambda response: str(response.json()["userKey"]),
        )

    def _account_matching(self, username: str, email: str) -> str | None:
        """The key of account `username` if it is the one a create with `email` would make.

        The e-mail must match (ignoring case) where it can be read; where it cannot, the
        username alone decides.
        """
        people = self._people([username], by="username")
        if not people:
            return None
        [found] = self._emails(people)
        if found is not None and email and found.casefold() != email.strip().casefold():
            return None
        return str(people[0].get("userKey") or username)

    def update_user(
        self,
        username: str,
        changes: Mapping[str, str],
        desired: Mapping[str, str] | None = None,
    ) -> None:
        """Change e-mail and/or display name; see `Target.update_user`.

        `PUT /admin/user/{username}` is sent with both `email` and `fullName`, whichever
        changes. The reference (§2.3) leaves open whether the body may hold only what changes,
        must hold both, or replaces both; sending both, each the value the source wants,
        satisfies all three readings. The unchanged one comes from `desired`, else from what
        Confluence holds now.

        Raises:
            TargetRejectedError: a rename was asked (Confluence has no API to rename a user),
                or the unchanged value is neither given nor readable.
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
        values = self._full_details(username, name, changes, desired or {})
        if self._uses_jsonrpc("update_user") or not fits_in_path(name):
            details = {"name": name, "fullname": values["display_name"], "email": values["email"]}
            self._rpc_instead("update_user", [details], why=self._path_reason(name))
            return
        body = {"email": values["email"], "fullName": values["display_name"]}
        self._rest("update_user", username=name, json_body=body)

    def _full_details(
        self, username: str, name: str, changes: Mapping[str, str], desired: Mapping[str, Any]
    ) -> dict[str, str]:
        """E-mail and display name to send: the changes, then `desired`, then what is stored."""
        values = {a: changes[a] for a in ("email", "display_name") if a in changes}
        for attribute in ("email", "display_name"):
            wanted = desired.get(attribute)
            if attribute not in values and isinstance(wanted, str) and wanted.strip():
                values[attribute] = wanted
        if len(values) < 2:
            people = self._people([name], by="username")
            if not people:
                raise TargetNotFoundError(
                    f"confluence '{self.name}': no user '{username}' to update", status=404
                )
            [email] = self._emails(people)
            stored = {"email": email, "display_name": people[0].get("displayName")}
            for attribute, value in stored.items():
                if attribute not in values and value:
                    values[attribute] = str(value)
        if len(values) < 2:
            raise TargetRejectedError(
                f"confluence '{self.name}': cannot update '{username}': Confluence needs the "
                "e-mail and the full name together, and the current e-mail cannot be read (no "
                "e-mail in REST user objects, and JSON-RPC unavailable); map an e-mail for this "
                "user in attributes.csv"
            )
        return values

    def deactivate_user(self, username: str) -> None:
        self._user_write("deactivate_user", confluence_username(username))

    def reactivate_user(self, username: str) -> None:
        self._user_write("reactivate_user", confluence_username(username))

    def _user_write(self, operation: str, username: str) -> None:
        if self._uses_jsonrpc(operation) or not fits_in_path(username):
            self._rpc_instead(operation, [username], why=self._path_reason(username))
        else:
            self._rest(operation, username=username)

    def create_group(self, group: str) -> None:
        """Create a group; see `Target.create_group`.

        Like `create_user`, a create whose answer was lost is checked before it is sent again
        or reported: if the group exists then, the create took effect.
        """
        why = self.refused_name("group", group)
        if why:
            raise TargetRejectedError(
                f"confluence '{self.name}': cannot create group {group!r}: {why}. Change its "
                "mapping in groups.csv."
            )
        name = group.strip().lower()

        def made_by_us() -> str | None:
            return name if self._group_exists(name) else None

        if self._uses_jsonrpc("create_group"):
            self._rpc_once("create_group", [name], applied=made_by_us, result=lambda: name)
            return
        # "type" is outside the documented schema but what working clients send.
        self._rest_once(
            "create_group",
            json_body={"type": "group", "name": name},
            applied=made_by_us,
            result=lambda response: name,
        )

    def _group_exists(self, group: str) -> bool:
        # The group list, not `GET /group/{name}`: no description declares its 404.
        return group in self._every_group()

    def add_member(self, group: str, username: str) -> None:
        self._membership("add_member", group, username)

    def remove_member(self, group: str, username: str) -> None:
        self._membership("remove_member", group, username)

    def _membership(self, operation: str, group: str, username: str) -> None:
        group, username = group.strip().lower(), confluence_username(username)
        if self._uses_jsonrpc(operation) or not (fits_in_path(group) and fits_in_path(username)):
            why = self._path_reason(username) or self._path_reason(group, kind="group")
            self._rpc_instead(operation, [username, group], why=why)
        else:
            self._rest(operation, username=username, group=group)

    def _path_reason(self, name: str, *, kind: str = "user") -> str:
        """Why a write about `name` cannot go through REST, or "" when it can."""
        if fits_in_path(name):
            return ""
        return (
            f"{kind} '{name}' holds a character Confluence's web server refuses in a URL path "
            "(/ or \\), and the REST resource takes it in its path"
        )

    # -- licence -------------------------------------------------------------------------

    def licence_seats(self) -> Seats:
        """The licence's free seats: `maxUsers`, then (unless unlimited) `userCount`, of
        `/rest/license/1.0/license` (two requests at most; writes nothing).

        Returns:
            `Seats`; `known` False when the resource is refused (401/403: the account may
            not read it) or absent (404), or answers without a count, with the reason.

        Raises:
            TargetError: Confluence could not be reached or answered otherwise.
        """
        where = f"confluence '{self.name}'"
        body = self._licence_answer(LICENSE_MAX_USERS)
        if isinstance(body, str):
            return Seats(None, known=False, detail=f"{where}: licence seats unknown: {body}")
        limit = read_limit(body.get("count"))
        if says_unlimited(body) or limit.unlimited:
            return Seats(None, detail=f"{where}: unlimited licence")
        if limit.value is None:
            return Seats(
                None,
                known=False,
                detail=f"{where}: licence seats unknown: {LICENSE_MAX_USERS} answered a user "
                f"limit usersync cannot read: {str(body)[:200]}",
            )
        counted = self._licence_answer(LICENSE_USER_COUNT)
        used = read_count(counted.get("count")) if isinstance(counted, dict) else None
        if used is None:
            why = counted if isinstance(counted, str) else f"no count: {str(counted)[:200]}"
            return Seats(None, known=False, detail=f"{where}: licence seats unknown: {why}")
        free = max(0, limit.value - used)
        return Seats(
            free,
            limit=limit.value,
            used=used,
            detail=f"{where}: {used} of {limit.value} licensed users, {free} free",
        )

    def _licence_answer(self, path: str) -> dict[str, Any] | str:
        """What a licence resource answers (an object), or why there is nothing (a sentence)."""
        try:
            body = self._client.get_json(path)
        except (TargetAuthError, TargetPermissionError, TargetNotFoundError) as exc:
            why = (
                "this site has no such resource"
                if isinstance(exc, TargetNotFoundError)
                else "the account may not read it (a Confluence administrator can)"
            )
            return f"{path} was refused (HTTP {exc.status}): {why}"
        if not isinstance(body, dict):
            return f"{path} answered something other than an object: {str(body)[:200]}"
        return body

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


class _NotAPage(TargetRejectedError):
    """A list call answered with something other than Confluence's paging envelope."""


#: What a licence refusal adds to the product's words.
LICENCE_FULL_ADVICE = (
    "the Confluence licence is full: no user can be added until seats are freed (deactivate "
    "unused accounts) or the licence is raised"
)


def _licence_error(exc: TargetRejectedError) -> TargetRejectedError:
    """402 or a licence message (REST or JSON-RPC) becomes a `TargetLicenceError` saying
    what to do."""
    if LICENCE_FULL_ADVICE in str(exc):
        return exc
    if (
        isinstance(exc, TargetLicenceError)
        or exc.status == 402
        or (exc.status is None and "licen" in str(exc).lower())
    ):
        return exc.restated(
            f"{exc} — {LICENCE_FULL_ADVICE}",
            TargetLicenceError,
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


def _server_said(error: TargetError) -> str:
    """What the server answered to a refused call, without the client's own prefix and hints:
    "HTTP 403: Remote API is disabled"."""
    body = error.body
    message = None
    if isinstance(body, dict):
        inner = body.get("error")
        message = body.get("message") or (
            inner.get("message") if isinstance(inner, dict) else inner
        )
    elif isinstance(body, str):
        message = body
    status = f"HTTP {error.status}" if error.status else "no HTTP status"
    return f"{status}: {str(message).strip()[:200]}" if message else status
