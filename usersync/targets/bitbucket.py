"""The Bitbucket Data Center target: users, groups and licences through REST 1.0 admin endpoints.

Bitbucket has no deactivate: an account is usable while it holds a global permission
(LICENSED_USER or higher), directly or through a group. So `deactivate_user` revokes the
user's direct global permissions and `reactivate_user` grants LICENSED_USER back, and
`read_users` reports `active` as "holds a licence" (the `active` flag of Bitbucket's user
object is the directory's and stays true). Accounts this client creates are not put in the
default group, so their licence is the direct grant usersync controls; a user who is also
licensed through a group cannot be deactivated here and gets an error naming the group. The
admin endpoints refuse personal access tokens (BSERV-10482), so a token-configured target
fails before any request with an error saying so. An account's immutable key is its numeric
id; Bitbucket has no lookup by id, so `read_users_by_key` pages through the user list once.
The account the client runs as is the one Bitbucket names in the `X-AUSERNAME` header of an
authenticated answer. Creating a user or a group, and renaming a user, are POSTs that are
never sent twice blindly: a lost answer is checked by reading the account (same username and
e-mail) or the group, and a recovered create still grants the licence. The accounts usersync
must not take over (`administrators`) are those holding ADMIN or SYS_ADMIN, directly or through
a group, read from the same global permission lists as the licences. Bitbucket documents no
username rules beyond the common ones (`Target.refused_name`): spaces, `@` and `+` are fine.
Endpoints are data (`ENDPOINTS`; the paged ones in `PAGED`, whose envelope `usersync.paging`
follows); the shared `ApiClient` does retries, pacing and error mapping. New members of a
group go in by the hundred (`add_members`, Bitbucket's add-users), which the loader uses when
it finds it.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, unquote_plus

import httpx
import pandas as pd

from usersync.config import (
    BasicAuth,
    SecretLoader,
    TargetConfig,
    TokenAuth,
    resolve_secret,
    reveal,
)
from usersync.errors import (
    ConfigError,
    TargetAuthError,
    TargetConflictError,
    TargetError,
    TargetNotFoundError,
    TargetPermissionError,
    TargetRejectedError,
    TargetUnreachableError,
    TransientError,
)
from usersync.http import ApiClient, RetryPolicy
from usersync.model import (
    TARGET_GROUP_COLUMNS,
    TARGET_MEMBERSHIP_COLUMNS,
    TARGET_USER_COLUMNS,
    empty_frame,
)
from usersync.paging import BITBUCKET_PAGE, PagedEndpoint, Pager
from usersync.targets.base import (
    STOCK_ADMIN_GROUPS,
    Privileges,
    Seats,
    Target,
    TargetCheck,
    normalise_name,
)
from usersync.targets.licence import read_count, read_limit, says_unlimited
from usersync.targets.versions import version_numbers

#: The REST root under the instance URL (which includes any context path).
API_ROOT = "/rest/api/1.0"

#: Every call this client makes, by purpose. Names travel as query parameters or JSON
#: fields; only `/users/{slug}` takes a slug, and this client does not need it.
ENDPOINTS: dict[str, str] = {
    "application_properties": "/application-properties",
    "users": "/admin/users",
    "rename_user": "/admin/users/rename",
    "groups": "/admin/groups",
    "group_members": "/admin/groups/more-members",
    "user_groups": "/admin/users/more-members",
    "add_user_to_groups": "/admin/users/add-groups",
    "add_users_to_group": "/admin/groups/add-users",
    "remove_user_from_group": "/admin/users/remove-group",
    "user_permissions": "/admin/permissions/users",
    "group_permissions": "/admin/permissions/groups",
    "license": "/admin/license",
}

#: The page size asked for; the server may cap it, and the pager follows nextPageStart anyway.
PAGE_LIMIT = 1000

#: The list calls, all in Bitbucket's `{values, isLastPage, nextPageStart}` envelope.
PAGED: dict[str, PagedEndpoint] = {
    name: PagedEndpoint(ENDPOINTS[name], BITBUCKET_PAGE, PAGE_LIMIT)
    for name in (
        "users",
        "groups",
        "group_members",
        "user_groups",
        "user_permissions",
        "group_permissions",
    )
}

#: Usernames per add-users call. Bitbucket documents no cap; this keeps a body small and a
#: refused call (all or nothing) cheap to settle one by one.
MEMBERS_PER_CALL = 100

#: Up to this many usernames are looked up one `filter` query each; more, and the client
#: reads the whole user list once (cheaper than thousands of filtered queries).
FILTERED_LOOKUP_MAX = 25

#: Global permissions, lowest first; any of them makes an account licensed.
GLOBAL_PERMISSIONS: tuple[str, ...] = ("LICENSED_USER", "PROJECT_CREATE", "ADMIN", "SYS_ADMIN")
ADMIN_PERMISSIONS = frozenset({"ADMIN", "SYS_ADMIN"})

PAT_REFUSED = (
    "Bitbucket's admin endpoints refuse personal access tokens (tokens cannot carry the "
    "ADMIN permission, BSERV-10482); configure auth kind 'basic' with the username and "
    "password of an account holding ADMIN or SYS_ADMIN"
)

#: Bitbucket answers both bad credentials and missing permission with 401; the exception
#: name in the body tells them apart.
_NOT_PERMITTED_EXCEPTION = "AuthorisationException"

#: The header in which Bitbucket names the account an authenticated request ran as.
USERNAME_HEADER = "X-AUSERNAME"

T = TypeVar("T")


class BitbucketTarget(Target):
    """Bitbucket Data Center (REST 1.0).

    Args:
        name: the target's name in the profile.
        client: an `ApiClient` whose base URL is the instance's `/rest/api/1.0`.
        admin_username: the account the client authenticates as (for `check`).
        auth_kind: "basic" or "token"; with "token" every call fails before it is sent.
    """

    product = "bitbucket"
    #: usernames per `add_members` call, read by the loader to size its batches
    max_members_per_call = MEMBERS_PER_CALL

    def __init__(
        self, name: str, client: ApiClient, *, admin_username: str = "", auth_kind: str = "basic"
    ) -> None:
        super().__init__(name)
        self.client = client
        self.admin_username = admin_username
        self.auth_kind = auth_kind
        self._version: tuple[int, ...] | None = None
        self._pager = Pager(
            f"bitbucket '{name}'", malformed=TargetRejectedError, incomplete=TargetRejectedError
        )

    @classmethod
    def from_config(
        cls,
        name: str,
        config: TargetConfig,
        *,
        load_prefect_secret: SecretLoader | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> BitbucketTarget:
        """Build the target from its profile entry, resolving the secret now.

        A token-configured target is built (so that `check` can say what is wrong) but
        refuses every call.

        Raises:
            ConfigError: the entry is not a Bitbucket target, or its secret cannot be resolved.
        """
        if config.kind != "bitbucket":
            raise ConfigError(f"target '{name}': kind is {config.kind!r}, expected 'bitbucket'")
        auth: httpx.Auth | None = None
        headers: dict[str, str] = {}
        username = ""
        if isinstance(config.auth, BasicAuth):
            username = config.auth.username
            secret = resolve_secret(config.auth.password, load_prefect_secret=load_prefect_secret)
            auth = httpx.BasicAuth(username, reveal(secret))
        elif isinstance(config.auth, TokenAuth):
            secret = resolve_secret(config.auth.token, load_prefect_secret=load_prefect_secret)
            headers["Authorization"] = f"Bearer {reveal(secret)}"
        client = ApiClient(
            f"bitbucket '{name}'",
            config.url + API_ROOT,
            auth=auth,
            # Public admin scripts send it on the query-parameter POSTs, which carry no JSON
            # body for the XSRF check to accept (reference §3.4, §5.18).
            headers={"X-Atlassian-Token": "no-check", **headers},
            timeout_seconds=config.timeout_seconds,
            retry=retry
            or RetryPolicy(
                max_attempts=config.max_attempts, max_wait_seconds=config.max_retry_wait_seconds
            ),
            verify=config.ca_file or config.verify_tls,
            transport=transport,
        )
        return cls(name, client, admin_username=username, auth_kind=config.auth.kind)

    def close(self) -> None:
        self.client.close()

    def server_version(self) -> tuple[int, ...]:
        """The Bitbucket version as numbers, from `/application-properties`; asked once."""
        if self._version is None:
            props = self.client.get_json(ENDPOINTS["application_properties"])
            text = props.get("version") if isinstance(props, dict) else None
            self._version = version_numbers(str(text or ""))
        return self._version

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, method: str, endpoint: str, **kwargs: Any) -> httpx.Response:
        """One call to a named endpoint, with Bitbucket's 401s told apart."""
        path = ENDPOINTS[endpoint]
        return self._guarded(
            f"{method} {path}", lambda: self.client.request(method, path, **kwargs)
        )

    def _write_once(
        self,
        method: str,
        endpoint: str,
        *,
        applied: Callable[[], T | None],
        result: Callable[[httpx.Response], T],
        **kwargs: Any,
    ) -> T:
        """A write that must happen once (see `ApiClient.write_once`), guarded like `_call`."""
        path = ENDPOINTS[endpoint]
        return self._guarded(
            f"{method} {path}",
            lambda: self.client.write_once(method, path, applied=applied, result=result, **kwargs),
        )

    def _guarded(self, what: str, send: Callable[[], T]) -> T:
        if self.auth_kind == "token":
            raise ConfigError(f"target '{self.name}': {PAT_REFUSED}")
        try:
            return send()
        except TargetAuthError as exc:
            raise self._explain_401(exc, what) from exc

    def _explain_401(self, exc: TargetAuthError, what: str) -> TargetError:
        """Bitbucket answers 401 for bad credentials and for missing permission alike."""
        errors = exc.body.get("errors") if isinstance(exc.body, dict) else None
        first = errors[0] if isinstance(errors, list) and errors else None
        if not isinstance(first, dict):
            return exc
        message = str(first.get("message") or "")
        where = f"bitbucket '{self.name}': {what}: HTTP 401: {message}"
        if "token" in message.lower():
            return TargetPermissionError(
                f"{where} ({PAT_REFUSED}; the configured password looks like a token)",
                status=exc.status,
                body=exc.body,
            )
        if str(first.get("exceptionName") or "").endswith(_NOT_PERMITTED_EXCEPTION):
            return TargetPermissionError(
                f"{where} (the account '{self.admin_username}' is valid but lacks the ADMIN "
                "global permission that user management needs; grant it ADMIN or use another "
                "account)",
                status=exc.status,
                body=exc.body,
            )
        return exc

    def _pages(self, endpoint: str, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Every value of a paged endpoint (`PAGED`), following nextPageStart until isLastPage."""
        pages = self._pager.pages(
            PAGED[endpoint],
            lambda page: self._call("GET", endpoint, params={**(params or {}), **page}).json(),
        )
        for page in pages:
            yield from page

    def _find_user(self, username: str) -> dict[str, Any] | None:
        wanted = normalise_name(username.strip())
        for user in self._pages("users", {"filter": username.strip()}):
            if normalise_name(user.get("name", "")) == wanted:
                return user
        return None

    def _find_group(self, group: str) -> str | None:
        """The group's name as Bitbucket spells it, or None if there is no such group."""
        wanted = normalise_name(group)
        return next(
            (
                g["name"]
                for g in self._pages("groups", {"filter": group})
                if normalise_name(g["name"]) == wanted
            ),
            None,
        )

    def _require_user(self, username: str) -> dict[str, Any]:
        user = self._find_user(username)
        if user is None:
            raise TargetNotFoundError(
                f"bitbucket '{self.name}': user '{username}' does not exist", status=404
            )
        return user

    def _direct_permissions(self, filter_text: str = "") -> dict[str, str]:
        """casefolded username → the global permission granted to the user directly."""
        params = {"filter": filter_text} if filter_text else {}
        return {
            normalise_name(row["user"]["name"]): row["permission"]
            for row in self._pages("user_permissions", params)
        }

    def _group_permissions(self) -> dict[str, tuple[str, str]]:
        """casefolded group name → (name, global permission), for groups holding one."""
        return {
            normalise_name(row["group"]["name"]): (row["group"]["name"], row["permission"])
            for row in self._pages("group_permissions")
        }

    def _licensing_groups(self) -> dict[str, str]:
        """casefolded group name → name, for groups holding a global permission."""
        return {key: name for key, (name, _level) in self._group_permissions().items()}

    def _group_licensed(self, usernames: set[str]) -> set[str]:
        """Which of these (casefolded) users hold a licence through a group."""
        if not usernames:
            return set()
        licensing = self._licensing_groups()
        if not licensing:
            return set()
        if len(usernames) <= FILTERED_LOOKUP_MAX:
            # The default group often holds everyone: ask per user rather than list it.
            return {
                name
                for name in usernames
                if any(
                    normalise_name(g["name"]) in licensing
                    for g in self._pages("user_groups", {"context": name})
                )
            }
        licensed: set[str] = set()
        for group in licensing.values():
            for member in self._pages("group_members", {"context": group}):
                key = normalise_name(member["name"])
                if key in usernames:
                    licensed.add(key)
        return licensed

    def _licensing_groups_of(self, username: str) -> list[str]:
        licensing = self._licensing_groups()
        return sorted(
            licensing[normalise_name(g["name"])]
            for g in self._pages("user_groups", {"context": username})
            if normalise_name(g["name"]) in licensing
        )

    # -- reading --------------------------------------------------------------------------

    def read_users(self, usernames: Iterable[str]) -> pd.DataFrame:
        """The accounts among `usernames`; `active` means licensed, directly or through a group."""
        wanted = {normalise_name(u): u for u in usernames}
        if not wanted:
            return empty_frame(TARGET_USER_COLUMNS)
        if len(wanted) <= FILTERED_LOOKUP_MAX:
            found = [u for u in (self._find_user(name) for name in wanted.values()) if u]
        else:
            found = [u for u in self._pages("users") if normalise_name(u["name"]) in wanted]
        return self._user_frame(found)

    def read_users_by_key(self, keys: Iterable[str]) -> pd.DataFrame:
        """The accounts with these numeric ids, under their names as they are now.

        Bitbucket's REST API looks users up by name or slug only, never by id, so the user
        list is read once (a page per `PAGE_LIMIT` accounts, whatever the number of keys).
        """
        wanted = {str(k).strip() for k in keys if str(k).strip()}
        if not wanted:
            return empty_frame(TARGET_USER_COLUMNS)
        return self._user_frame([u for u in self._pages("users") if str(u.get("id")) in wanted])

    def _user_frame(self, found: list[dict[str, Any]]) -> pd.DataFrame:
        """Bitbucket users as a `TARGET_USER_COLUMNS` frame, `active` meaning licensed."""
        if len(found) <= FILTERED_LOOKUP_MAX:
            direct: dict[str, str] = {}
            for user in found:
                direct.update(self._direct_permissions(user["name"]))
        else:
            direct = self._direct_permissions()
        keys = {normalise_name(u["name"]) for u in found}
        licensed = {k for k in keys if k in direct} | self._group_licensed(keys - set(direct))
        rows = [
            {
                "target_key": str(u["id"]),
                "username": u["name"],
                "email": u.get("emailAddress") or "",
                "display_name": u.get("displayName") or "",
                "active": normalise_name(u["name"]) in licensed,
            }
            for u in found
        ]
        return pd.DataFrame(rows, columns=list(TARGET_USER_COLUMNS)).astype(TARGET_USER_COLUMNS)

    def read_user_groups(self, usernames: Sequence[str]) -> pd.DataFrame:
        """Every group of these accounts: `GET /admin/users/more-members?context=` paged."""
        rows = []
        for username in dict.fromkeys(str(n) for n in usernames if n):
            try:
                groups = list(self._pages("user_groups", {"context": username}))
            except TargetNotFoundError:
                continue  # deleted meanwhile: nothing to remove
            rows.extend((username, str(g["name"])) for g in groups if g.get("name"))
        return pd.DataFrame(rows, columns=["username", "group"], dtype="string")

    def licence_seats(self) -> Seats:
        """Free seats from `GET /admin/license` (maximumNumberOfUsers minus
        status.currentNumberOfUsers; the path is UNCONFIRMED against a live server, the shape
        is the generated clients' RestBitbucketLicense). A refusal or an odd answer: unknown."""
        try:
            body = self._call("GET", "license").json()
        except (TargetError, ValueError) as exc:
            return Seats(None, known=False, detail=f"licence not readable: {exc}")
        if not isinstance(body, dict):
            return Seats(None, known=False, detail="licence answer is not an object")
        limit = read_limit(body.get("maximumNumberOfUsers"))
        if says_unlimited(body) or limit.unlimited:
            return Seats(None)
        status = body.get("status")
        used = read_count(status.get("currentNumberOfUsers")) if isinstance(status, dict) else None
        if limit.value is None or used is None:
            return Seats(
                None,
                known=False,
                detail=f"licence answer usersync cannot read (limit, users): {str(body)[:200]}",
            )
        return Seats(max(limit.value - used, 0), limit=limit.value, used=used)

    def read_groups(self, groups: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Which of `groups` exist, and all their members (licensed or not).

        Up to `FILTERED_LOOKUP_MAX` groups are looked up one `filter` query each; more, and
        the group list is read once (a page per `PAGE_LIMIT` groups).
        """
        wanted = list(dict.fromkeys(groups))
        if len(wanted) > FILTERED_LOOKUP_MAX:
            spelled = {normalise_name(g["name"]): g["name"] for g in self._pages("groups")}
            matches = [spelled.get(normalise_name(group)) for group in wanted]
        else:
            matches = [self._find_group(group) for group in wanted]
        found: list[str] = []
        members: list[dict[str, str]] = []
        for match in matches:
            if match is None:
                continue
            found.append(match)
            members += [
                {"username": m["name"], "group": match}
                for m in self._pages("group_members", {"context": match})
            ]
        return (
            pd.DataFrame({"group": found}, dtype="string").astype(TARGET_GROUP_COLUMNS),
            pd.DataFrame(members, columns=list(TARGET_MEMBERSHIP_COLUMNS)).astype(
                TARGET_MEMBERSHIP_COLUMNS
            ),
        )

    def administrators(self) -> set[str]:
        """Accounts holding ADMIN or SYS_ADMIN, granted directly or through a group."""
        return set(self.privileges().administrators)

    def privileges(self) -> Privileges:
        """Accounts holding ADMIN or SYS_ADMIN, directly or through a group, and those groups.

        Read from the global permission lists, as an administrator sees them under Global
        permissions: the users granted a level directly (`/admin/permissions/users`, which
        has no filter by level, so every directly licensed account is paged through too),
        the groups granted one (`/admin/permissions/groups`), and the members of the groups
        whose level is ADMIN or SYS_ADMIN. Whether `more-members` lists the members of
        nested groups (LDAP/Crowd directories) is UNCONFIRMED.
        """
        admins = {
            name for name, level in self._direct_permissions().items() if level in ADMIN_PERMISSIONS
        }
        groups = set()
        for key, (group, level) in self._group_permissions().items():
            if level in ADMIN_PERMISSIONS:
                groups.add(key)
                admins.update(
                    normalise_name(member["name"])
                    for member in self._pages("group_members", {"context": group})
                )
        return Privileges(frozenset(admins), frozenset(STOCK_ADMIN_GROUPS | groups))

    def access_groups(self) -> set[str]:
        """The groups holding a global permission (LICENSED_USER or higher): they license
        their members."""
        return set(self._licensing_groups())

    def current_account(self) -> str | None:
        """The account the credentials belong to, as Bitbucket names it (`X-AUSERNAME`).

        Whether Bitbucket percent-encodes a non-ASCII name in that header is UNCONFIRMED, so
        every plausible spelling (as sent, percent-decoded, UTF-8 read as Latin-1) is tried
        against the user list; without the header, the configured username is the answer.
        """
        response = self._call("GET", "users", params={"limit": 1})
        sent = response.headers.get(USERNAME_HEADER)
        if not sent or sent == "anonymous":
            return self.admin_username or None
        spellings = [sent, unquote(sent), unquote_plus(sent)]
        with contextlib.suppress(UnicodeError):
            spellings.append(sent.encode("latin-1").decode("utf-8"))
        candidates = list(dict.fromkeys(spellings))
        if len(candidates) == 1:
            return sent
        for candidate in candidates:
            user = self._find_user(candidate)
            if user is not None:
                return str(user["name"])
        return sent

    def create_user(self, username: str, email: str, display_name: str) -> str:
        """Create a licensed account; return its numeric id as the target key.

        Bitbucket demands a password unless it e-mails the user (`notify`), which needs a
        working mail server and sends mail nobody asked for. The account gets a random
        48-character password instead, used nowhere and never logged: people sign in through
        the IdP (SSO/Crowd) or set one with "forgot password". The account is kept out of
        the default group so that its licence is the direct grant `deactivate_user` revokes.
        If the answer to the create is lost, an account with this username and e-mail (any
        case) is the one it made; the licence is granted either way.

        Raises:
            TargetConflictError: another account has this username.
            TargetError: the account was made but the licence could not be granted (the
                message says so; the account exists, unlicensed).
        """
        self.refuse_name("user", username, f"create user '{username}'")

        def made_by_us() -> dict[str, Any] | None:
            user = self._find_user(username)
            held = str((user or {}).get("emailAddress") or "").strip().casefold()
            return user if user and held == email.strip().casefold() else None

        try:
            user = self._write_once(
                "POST",
                "users",
                params={
                    "name": username,
                    "displayName": display_name,
                    "emailAddress": email,
                    "password": secrets.token_urlsafe(36),
                    "addToDefaultGroup": "false",
                    "notify": "false",
                },
                ok=(204,),
                applied=made_by_us,
                result=lambda _response: self._require_user(username),
            )
        except TargetConflictError as exc:
            raise exc.restated(
                f"bitbucket '{self.name}': cannot create user '{username}': a user with that "
                "username already exists (adopt it or rename one of them)",
                TargetConflictError,
            ) from exc
        try:
            self._grant_licence(user["name"])
        except TargetError as exc:
            raise exc.restated(
                f"bitbucket '{self.name}': created user '{user['name']}' (id {user['id']}) but "
                f"could not grant its licence, so it cannot sign in yet: {exc}",
            ) from exc
        return str(user["id"])

    def update_user(
        self, username: str, changes: Mapping[str, str], desired: Mapping[str, str] | None = None
    ) -> None:
        """Rename first (if asked), then set display name and e-mail under the new name.

        Whether `PUT /admin/users` keeps a field the body leaves out is UNCONFIRMED, so the
        body always carries both: the changed value, else the desired one, else the one the
        account holds now (read only when `desired` does not say).
        """
        unknown = set(changes) - {"username", "email", "display_name"}
        if unknown:
            raise ValueError(f"update_user: unknown attribute(s) {', '.join(sorted(unknown))}")
        current = username
        if "username" in changes:
            new_name = changes["username"]
            self.refuse_name("user", new_name, f"rename '{username}'")
            if new_name.strip() != username.strip():
                current = self._rename(username, new_name)
        if "display_name" not in changes and "email" not in changes:
            return
        values = {
            attr: value
            for attr, value in (desired or {}).items()
            if isinstance(value, str) and value.strip()
        }
        values.update(changes)
        if "display_name" not in values or "email" not in values:
            held = self._require_user(current)
            values.setdefault("display_name", held.get("displayName") or "")
            values.setdefault("email", held.get("emailAddress") or "")
        body = {"name": current, "displayName": values["display_name"], "email": values["email"]}
        self._call("PUT", "users", json=body, ok=(200,))

    def _rename(self, username: str, new_name: str) -> str:
        """Rename an account; return the new name. A lost answer is checked by the user's id."""
        user = self._require_user(username)

        def renamed() -> bool | None:
            now = self._find_user(new_name)
            done = now is not None and now["id"] == user["id"] and now["name"] == new_name.strip()
            return True if done else None

        self._write_once(
            "POST",
            "rename_user",
            json={"name": user["name"], "newName": new_name},
            ok=(200,),
            applied=renamed,
            result=lambda _response: True,
        )
        return new_name.strip()

    def deactivate_user(self, username: str) -> None:
        """Revoke the user's direct global permissions (Bitbucket's stand-in for deactivate).

        Raises:
            TargetRejectedError: the user is still licensed through a group; the message names
                the group(s), which usersync does not change on its own.
        """
        self._call("DELETE", "user_permissions", params={"name": username}, ok=(204,))
        still = self._licensing_groups_of(username)
        if still:
            raise TargetRejectedError(
                f"bitbucket '{self.name}': revoked the direct licence of '{username}', but "
                f"the account is still licensed through group(s) {', '.join(still)}; remove "
                "it from those groups or revoke their global permission to deactivate it"
            )

    def reactivate_user(self, username: str) -> None:
        """Grant LICENSED_USER unless the user already holds a direct global permission.

        Granting blindly would demote an account that holds more (PUT sets the level).
        """
        if normalise_name(username) in self._direct_permissions(username):
            return
        self._require_user(username)
        self._grant_licence(username)

    def _grant_licence(self, username: str) -> None:
        self._call(
            "PUT",
            "user_permissions",
            params={"name": username, "permission": "LICENSED_USER"},
            ok=(204,),
        )

    def create_group(self, group: str) -> None:
        """Create a group; an existing one raises `TargetConflictError` (Bitbucket's 409).

        If the answer is lost, the group is looked for before the POST is sent again.
        """
        self.refuse_name("group", group, f"create group '{group}'")
        self._write_once(
            "POST",
            "groups",
            params={"name": group},
            ok=(200,),
            applied=lambda: True if self._find_group(group) else None,
            result=lambda _response: True,
        )

    def add_member(self, group: str, username: str) -> None:
        """Add a user to a group; Bitbucket accepts an existing membership as done."""
        self._call(
            "POST",
            "add_user_to_groups",
            json={"user": username, "groups": [group]},
            ok=(200,),
            replay_safe=True,
        )

    def add_members(self, group: str, usernames: Sequence[str]) -> None:
        """Add several users to a group, `max_members_per_call` per call (add-users).

        Bitbucket adds all or none: one missing user or group fails the call with a 404 and
        adds nobody (the loader then adds that call's users one by one to find the bad one).
        Members already in the group count as done, so a call sent again after a lost answer
        is harmless.
        """
        names = list(dict.fromkeys(usernames))
        for start in range(0, len(names), self.max_members_per_call):
            self._call(
                "POST",
                "add_users_to_group",
                json={"group": group, "users": names[start : start + self.max_members_per_call]},
                ok=(200, 204),
                replay_safe=True,
            )

    def remove_member(self, group: str, username: str) -> None:
        """Remove a user from a group; not a member counts as done.

        Whether Bitbucket answers 200 or 404 for a non-member is not documented, so a 404 is
        accepted when the user and the group both exist.
        """
        try:
            self._call(
                "POST",
                "remove_user_from_group",
                json={"context": username, "itemName": group},
                ok=(200, 204),
                # Sent again after a lost answer, it removes nothing or meets the 404 below.
                replay_safe=True,
            )
        except TargetNotFoundError:
            self._require_user(username)
            wanted = normalise_name(group)
            if self._find_group(group) is None:
                raise
            if any(
                normalise_name(g["name"]) == wanted
                for g in self._pages("user_groups", {"context": username})
            ):
                raise

    # -- housekeeping ---------------------------------------------------------------------

    def check(self) -> TargetCheck:
        """Reachable, credentials accepted, ADMIN held, no personal access token; no writes."""
        where = f"bitbucket '{self.name}' at {self.client.base_url}"
        try:
            props = self.client.get_json(ENDPOINTS["application_properties"])
        except (TargetUnreachableError, TransientError) as exc:
            return TargetCheck(False, f"{where}: not reachable: {exc}")
        except TargetAuthError as exc:
            return TargetCheck(False, f"{where}: credentials refused: {exc}")
        except TargetError as exc:
            return TargetCheck(False, f"{where}: does not look like Bitbucket's REST API: {exc}")
        version = props.get("version", "?") if isinstance(props, dict) else "?"
        if self.auth_kind == "token":
            return TargetCheck(False, f"{where} (Bitbucket {version}): {PAT_REFUSED}")
        try:
            # Needs ADMIN, writes nothing, and tells us the account's own level.
            own = self._direct_permissions(self.admin_username).get(
                normalise_name(self.admin_username)
            )
        except TargetPermissionError as exc:
            return TargetCheck(False, f"{where}: {exc}")
        except TargetAuthError as exc:
            return TargetCheck(
                False, f"{where}: credentials of '{self.admin_username}' refused: {exc}"
            )
        except TargetError as exc:
            return TargetCheck(False, f"{where}: {exc}")
        level = own or "ADMIN through a group"
        return TargetCheck(
            True, f"{where}: Bitbucket {version}, '{self.admin_username}' holds {level}"
        )
