"""An emulator of the Confluence Data Center user and group administration API, over real HTTP.

`ConfluenceEmulator` serves what usersync's Confluence client calls, as the reference
(`shared/reference/atlassian-rest.md` §2 and §6) describes Confluence 7.x–9.x: the REST
resources under `<context>/rest/api` with Confluence's paging envelope (`results`, `start`,
`limit`, `size`, `_links.next` absent on the last page, a server cap that silently lowers
`limit`), the admin resources of 8.2 (groups, memberships, disable/enable) and 8.4 (create and
update users, list users) that answer 404 on older versions, the JSON-RPC API older sites need
(basic auth only, switched off unless asked for, as on a real site), the applinks manifest
that tells the version, Basic and Bearer (PAT) auth with 401/403, lower-case and trimmed
storage with case-insensitive lookups, Confluence's username rules, a licence limit (402)
with its headroom under `/rest/license/1.0/license` (`maxUsers`, `userCount`, `remainingSeats`),
Tomcat's refusal of encoded slashes in a path, and the query-parameter form of the group
member list that names with slashes need (from 10.2; before, `/group/member` is the group
named "member"). The supported versions (`SUPPORTED_VERSIONS`, newest by default) answer as
their API descriptions declare: e.g. a created group is 200 and the members of a group that
does not exist are an empty page. Whether the REST user object carries e-mails is an
option (`rest_email`), since the reference cannot confirm it. Administrators are who they are
in Confluence: members of confluence-administrators (its super group), and holders of the
Confluence Administrator or System Administrator global permission, granted to a user or a
group; from 9.2 `GET /rest/api/permissions` lists the global permission grants. The app is
wrapped in `Instrumented`, so tests read the request log and inject 429s with Confluence's
rate-limit headers.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from usersync_sandbox.faults import Instrumented

#: Versions in which the REST admin resources appeared (reference §2.2). Older emulated
#: versions answer 404 on these paths, as a real site does.
GROUP_ADMIN_SINCE = (8, 2)
USER_ADMIN_SINCE = (8, 4)

#: The Confluence versions usersync supports, each emulated as its API description declares it
#: (../shared/reference/specs: 9.3.1, 10.0.3 and 10.2.14 OpenAPI); the newest is the default.
SUPPORTED_VERSIONS = ("9.3.1", "10.0.3", "10.2.14")
DEFAULT_VERSION = SUPPORTED_VERSIONS[-1]

#: Since when `GET /rest/api/group/member?groupName=...` exists: the 10.2.14 description
#: declares it (getMembersByGroupName), the 9.3.1 and 10.0.3 ones do not. Before it, the path
#: `/group/member` is `/group/{groupName}` for the group named "member", as Jersey matches it.
GROUP_QUERY_SINCE = (10, 2)

#: Since when `GET /rest/api/permissions` lists the global permission grants. UNCONFIRMED: the
#: Data Center REST references document it for 9.2 (v9218) and 10.0 (v1000); earlier versions
#: are assumed not to have it and answer 404.
GLOBAL_PERMISSIONS_SINCE = (9, 2)

#: The licence resource (Confluence 5.x and later, UserCountResource): `GET .../maxUsers`,
#: `.../userCount` and `.../remainingSeats`, each `{"count": n}` (CONFSERVER-37100; public
#: monitoring scripts read `.count`). Not in the official REST reference; who may read it is
#: UNCONFIRMED (the resource checks permissions): an administrator here, the stricter reading.
LICENSE_ROOT = "/rest/license/1.0/license"
#: What maxUsers answers under an unlimited licence: Integer.MAX_VALUE (UserCountService
#: javadoc, Confluence 5.8-6.5).
UNLIMITED_MAX_USERS = 2**31 - 1

#: The group whose members Confluence always treats as administrators (its super group).
SUPER_GROUP = "confluence-administrators"
#: Global permissions as the REST API names them, (targetType, operationKey): Confluence
#: Administrator and System Administrator.
ADMIN_OPERATIONS = (("application", "administer"), ("system", "administer"))
#: What a fresh site grants its two stock groups.
DEFAULT_GROUP_GRANTS: dict[str, tuple[tuple[str, str], ...]] = {
    SUPER_GROUP: (
        ("application", "use"),
        *ADMIN_OPERATIONS,
        ("space", "create"),
        ("personal_space", "create"),
    ),
    "confluence-users": (
        ("application", "use"),
        ("space", "create"),
        ("personal_space", "create"),
    ),
}

#: Encoded characters Tomcat refuses in a request path before Confluence sees it: `%2F` (its
#: default `encodedSolidusHandling="reject"`) and `%5C` (decoded, then refused as a backslash).
#: Answered 404 here, as sites were seen to answer (reference §5.10: Atlassian specifics
#: UNCONFIRMED); a current Tomcat answers 400. Either way the REST resource never sees it.
REFUSED_ENCODED_IN_PATH = (b"%2f", b"%5c")

#: Characters Confluence refuses in a new username, besides whitespace (reference §2.3).
FORBIDDEN_USERNAME_CHARACTERS = frozenset("\\,+<>'\"")

DEFAULT_PAGE_LIMIT = 200
REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def confluence_error(status: int, message: str) -> dict[str, Any]:
    """Confluence's error body: `statusCode`, `message`, `reason` (reference §2.7)."""
    return {"statusCode": status, "message": message, "reason": REASONS.get(status, "")}


def confluence_rate_limit_headers(retry_after: float) -> dict[str, str]:
    """The headers of a rate-limited Confluence DC answer (token bucket, reference §2.7)."""
    seconds = int(retry_after) if float(retry_after).is_integer() else retry_after
    return {
        "retry-after": str(seconds),
        "X-RateLimit-Limit": "20",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Interval-Seconds": "1",
        "X-RateLimit-FillRate": "5",
    }


def parse_version(version: str) -> tuple[int, ...]:
    """(8, 9, 0) from "8.9.0"; non-numeric parts end the tuple."""
    parts: list[int] = []
    for part in version.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


@dataclass
class EmulatedUser:
    username: str  # stored lower case, as Confluence does
    user_key: str
    display_name: str
    email: str
    active: bool = True
    password: str | None = None


@dataclass
class EmulatedGroup:
    name: str  # stored lower case
    members: set[str] = field(default_factory=set)


class _Refused(Exception):
    """Raised inside a handler to answer with Confluence's error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ConfluenceEmulator:
    """Confluence DC's user/group REST and JSON-RPC APIs, in memory.

    Args:
        version: the Confluence version to emulate; below 8.2 (8.4 for users) the REST admin
            resources answer 404 and clients must use JSON-RPC.
        context_path: e.g. "/confluence"; every path (REST, RPC, manifest) lives under it.
        admin: username and password of a Confluence administrator.
        max_page_size: the server cap on `limit`; larger requests are silently reduced.
        license_limit: how many active users the licence allows; None for unlimited. Every
            active account counts (as if each held Can Use; Confluence counts those that do).
            Creating one past the limit answers 402.
        license_resource: whether `/rest/license/1.0/license/...` answers; False models a
            site where it does not (404), so clients must do without the headroom.
        unlimited_max_users: what maxUsers answers under an unlimited licence: Integer.MAX_VALUE
            (the UserCountService reading) or another reading seen in the wild (-1).
        remote_api_enabled: whether the JSON-RPC API is switched on. Off by default, as on a
            real site: the Remote API is deprecated since 5.5 and off unless an administrator
            enables it (reference §2.6).
        rest_email: whether `expand=details.personal` on a REST user object carries the
            user's e-mail (`details.personal.email`). UNCONFIRMED on Data Center (reference
            §2.3); off by default, because a Server user reported the expansion without e-mail
            (community question 588226) and Data Center's REST user objects show none. When
            off, the expansion is ignored, as Confluence ignores expansions it does not offer.
    """

    def __init__(
        self,
        version: str = DEFAULT_VERSION,
        context_path: str = "",
        admin: tuple[str, str] = ("admin", "admin"),
        max_page_size: int = DEFAULT_PAGE_LIMIT,
        license_limit: int | None = None,
        *,
        license_resource: bool = True,
        unlimited_max_users: int = UNLIMITED_MAX_USERS,
        remote_api_enabled: bool = False,
        rest_email: bool = False,
    ) -> None:
        self.version = version
        self.version_tuple = parse_version(version)
        self.context_path = "/" + context_path.strip("/") if context_path.strip("/") else ""
        self.max_page_size = max_page_size
        self.license_limit = license_limit
        self.license_resource = license_resource
        self.unlimited_max_users = unlimited_max_users
        self.remote_api_enabled = remote_api_enabled
        self.rest_email = rest_email
        self.users: dict[str, EmulatedUser] = {}
        self.groups: dict[str, EmulatedGroup] = {}
        self.tokens: dict[str, str] = {}
        #: global permission grants: ("user", userKey | "group", name, targetType, operationKey)
        self.global_permissions: set[tuple[str, str, str, str]] = set()
        self._task_ids = 0
        self.seed_user(admin[0], f"{admin[0]}@example.com", "Administrator", password=admin[1])
        for group, grants in DEFAULT_GROUP_GRANTS.items():
            self.seed_group(group, members=[admin[0]])
            for target_type, operation in grants:
                self.grant_global_permission(target_type, operation, group=group)
        self.app = Instrumented(
            _refuse_encoded_slashes(self._build_app()),
            rate_limit_headers=confluence_rate_limit_headers,
            error_body=confluence_error,
        )

    # -- seeding (the contract-suite protocol) -------------------------------------------

    def seed_user(
        self,
        username: str,
        email: str,
        display_name: str,
        active: bool = True,
        *,
        password: str | None = None,
        admin: bool = False,
    ) -> None:
        """Add a user directly (as a synced directory would: no name validation); `admin`
        grants it Confluence Administrator (see `grant_admin`)."""
        key = username.lower()
        self.users[key] = EmulatedUser(
            username=key,
            user_key=uuid.uuid4().hex,
            display_name=display_name,
            email=email,
            active=active,
            password=password,
        )
        if admin:
            self.grant_admin(key)

    def seed_group(self, name: str, members: Iterable[str] = ()) -> None:
        """Add a group with members (usernames, any case; they must exist)."""
        group = self.groups.setdefault(name.lower(), EmulatedGroup(name.lower()))
        for member in members:
            if member.lower() not in self.users:
                raise ValueError(f"seed_group {name}: no user {member!r}; seed the user first")
            group.members.add(member.lower())

    def add_token(self, token: str, username: str) -> str:
        """Register a personal access token of `username`; returns the token."""
        if username.lower() not in self.users:
            raise ValueError(f"add_token: no user {username!r}")
        self.tokens[token] = username.lower()
        return token

    def grant_global_permission(
        self,
        target_type: str,
        operation: str,
        *,
        user: str | None = None,
        group: str | None = None,
    ) -> None:
        """Grant a global permission, e.g. ("system", "administer"), to a user or a group."""
        if (user is None) == (group is None):
            raise ValueError("grant_global_permission: give a user or a group")
        if user is not None:
            subject = ("user", self._user_or_404(user).user_key)
        else:
            subject = ("group", self._group_or_404(str(group)).name)
        self.global_permissions.add((*subject, target_type, operation))

    def grant_admin(self, username: str, target_type: str = "application") -> None:
        """Grant an account Confluence Administrator (or, with "system", System Administrator)
        directly, as Global Permissions → Individual Users does."""
        self.grant_global_permission(target_type, "administer", user=username)

    def seed_admin_group(
        self, name: str, members: Iterable[str] = (), *, target_type: str = "application"
    ) -> None:
        """A group granted Confluence Administrator (or System Administrator), with members."""
        self.seed_group(name, members)
        self.grant_global_permission(target_type, "administer", group=name)

    def is_admin(self, user: EmulatedUser) -> bool:
        """Members of confluence-administrators, and holders of an administrator global
        permission, granted to them or to one of their groups."""
        groups = self.groups_of(user.username)
        if SUPER_GROUP in groups:
            return True
        subjects = {("user", user.user_key)} | {("group", g) for g in groups}
        return any(
            (kind, ident) in subjects and (target_type, operation) in ADMIN_OPERATIONS
            for kind, ident, target_type, operation in self.global_permissions
        )

    def groups_of(self, username: str) -> set[str]:
        """Names of the groups `username` belongs to (for assertions)."""
        name = username.lower()
        return {g.name for g in self.groups.values() if name in g.members}

    def rename_user(self, username: str, new_username: str) -> None:
        """Rename an account as an administrator would by hand: same key, same groups."""
        user = self.users.pop(username.lower())
        user.username = new_username.lower()
        self.users[user.username] = user
        for group in self.groups.values():
            if username.lower() in group.members:
                group.members.discard(username.lower())
                group.members.add(user.username)

    # -- routing -------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        api = "/rest/api"
        routes: list[BaseRoute] = [
            Route("/rest/applinks/1.0/manifest", self._manifest),
            Route(f"{api}/user/current", self._current_user),
            Route(f"{api}/user", self._get_user),
            Route(f"{api}/user/list", self._list_users),
            Route(f"{api}/user/memberof", self._member_of),
            Route(
                f"{api}/user/{{username}}/group/{{group}}",
                self._membership,
                methods=["PUT", "DELETE"],
            ),
            Route(f"{api}/group", self._list_groups),
            Route(f"{api}/permissions", self._list_global_permissions),
            # Before `/group/{group}`: Jersey prefers the literal path where it exists.
            Route(f"{api}/group/member", self._group_members_by_query),
            Route(f"{api}/group/{{group}}", self._get_group),
            Route(f"{api}/group/{{group}}/member", self._group_members),
            Route(f"{api}/admin/user", self._create_user, methods=["POST"]),
            Route(f"{api}/admin/user/{{username}}", self._admin_user, methods=["PUT", "DELETE"]),
            Route(f"{api}/admin/user/{{username}}/{{action}}", self._toggle_user, methods=["PUT"]),
            Route(f"{api}/admin/group", self._create_group, methods=["POST"]),
            Route(f"{api}/admin/group/{{group}}", self._delete_group, methods=["DELETE"]),
            Route(f"{LICENSE_ROOT}/{{figure}}", self._license_count),
            Route("/rpc/json-rpc/confluenceservice-v2", self._json_rpc, methods=["POST"]),
            Route("/rpc/json-rpc/confluenceservice-v2/{method}", self._json_rpc, methods=["POST"]),
        ]
        if self.context_path:
            routes = [Mount(self.context_path, routes=routes)]
        return Starlette(
            routes=routes,
            exception_handlers={
                _Refused: self._refused,
                404: self._unknown_path,
                405: self._method_not_allowed,
            },
        )

    async def _refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Refused)
        return JSONResponse(confluence_error(exc.status, exc.message), status_code=exc.status)

    async def _unknown_path(self, request: Request, exc: Exception) -> Response:
        """Confluence answers an unknown resource with its JSON error, as for any refusal."""
        message = f"null for uri: {request.url}"
        return JSONResponse(confluence_error(404, message), status_code=404)

    async def _method_not_allowed(self, request: Request, exc: Exception) -> Response:
        message = f"Method {request.method} is not allowed for {request.url.path}"
        response = JSONResponse(confluence_error(405, message), status_code=405)
        response.headers.update(getattr(exc, "headers", None) or {})
        return response

    # -- auth ----------------------------------------------------------------------------

    def _caller(self, request: Request) -> EmulatedUser | None:
        """The authenticated user, None when anonymous; 401 on credentials that do not match."""
        header = request.headers.get("authorization", "")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        user: EmulatedUser | None = None
        if scheme.lower() == "basic":
            try:
                username, _, password = base64.b64decode(value).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise _Refused(401, "Malformed basic authentication header") from None
            user = self.users.get(username.lower())
            if user is None or user.password is None or user.password != password:
                user = None
        elif scheme.lower() == "bearer":
            owner = self.tokens.get(value.strip())
            user = self.users.get(owner) if owner else None
        if user is None or not user.active:
            raise _Refused(401, "Authentication failed: invalid credentials")
        return user

    def _require(self, request: Request, *, admin: bool = False) -> EmulatedUser:
        user = self._caller(request)
        if user is None:
            raise _Refused(401, "This resource requires authentication")
        if admin and not self.is_admin(user):
            raise _Refused(403, f"User '{user.username}' is not a Confluence administrator")
        return user

    def _since(self, version: tuple[int, ...]) -> None:
        if self.version_tuple < version:
            # Before the resource existed the servlet simply had no such path.
            raise _Refused(404, "null for uri: the resource does not exist in this version")

    # -- representations -----------------------------------------------------------------

    def _base(self, request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}{self.context_path}"

    def _person(self, request: Request, user: EmulatedUser, expand: str = "") -> dict[str, Any]:
        person: dict[str, Any] = {
            "type": "known",
            "username": user.username,
            "userKey": user.user_key,
            "profilePicture": {
                "path": f"{self.context_path}/images/icons/profilepics/default.svg",
                "width": 48,
                "height": 48,
                "isDefault": True,
            },
            "displayName": user.display_name,
            "_links": {"self": f"{self._base(request)}/rest/api/user?key={user.user_key}"},
            "_expandable": {"status": ""},
        }
        expansions = expand.split(",")
        if "status" in expansions:
            person["status"] = "Active" if user.active else "Deactivated"
            del person["_expandable"]["status"]
        if self.rest_email:
            person["_expandable"]["details"] = ""
            if {"details", "details.personal"} & set(expansions):
                person["details"] = {"personal": {"email": user.email}}
                del person["_expandable"]["details"]
        return person

    def _group(self, request: Request, group: EmulatedGroup) -> dict[str, Any]:
        return {
            "type": "group",
            "name": group.name,
            "_links": {
                "self": f"{self._base(request)}/rest/api/group/{quote(group.name, safe='')}"
            },
        }

    def _page(self, request: Request, items: list[Any]) -> dict[str, Any]:
        """Confluence's paging envelope; `limit` is silently capped at `max_page_size`."""
        start = _int_param(request, "start", 0)
        limit = min(_int_param(request, "limit", DEFAULT_PAGE_LIMIT), self.max_page_size)
        limit = max(limit, 1)
        results = items[start : start + limit]
        path = request.url.path.removeprefix(self.context_path)
        query = dict(request.query_params)
        links = {
            "base": self._base(request),
            "context": self.context_path,
            "self": f"{self._base(request)}{quote(path)}?{urlencode(query)}",
        }
        if start + limit < len(items):
            links["next"] = (
                f"{quote(path)}?{urlencode({**query, 'start': start + limit, 'limit': limit})}"
            )
        if start > 0:
            links["prev"] = (
                f"{quote(path)}?{urlencode({**query, 'start': max(0, start - limit), 'limit': limit})}"
            )
        return {
            "results": results,
            "start": start,
            "limit": limit,
            "size": len(results),
            "_links": links,
        }

    def _user_or_404(self, username: str) -> EmulatedUser:
        user = self.users.get(username.lower())
        if user is None:
            raise _Refused(404, f"No user found with username: {username}")
        return user

    def _group_or_404(self, name: str) -> EmulatedGroup:
        group = self.groups.get(name.lower())
        if group is None:
            raise _Refused(404, f"No group found with name: {name}")
        return group

    def _remove_user(self, user: EmulatedUser) -> None:
        """Delete an account with its memberships and global permissions."""
        del self.users[user.username]
        for group in self.groups.values():
            group.members.discard(user.username)
        self.global_permissions = {
            g for g in self.global_permissions if g[:2] != ("user", user.user_key)
        }

    def _remove_group(self, group: EmulatedGroup) -> None:
        """Delete a group with its global permissions."""
        del self.groups[group.name]
        self.global_permissions = {
            g for g in self.global_permissions if g[:2] != ("group", group.name)
        }

    # -- REST handlers -------------------------------------------------------------------

    async def _manifest(self, request: Request) -> Response:
        fields = {
            "id": "c0nf1uen-ce00-0000-0000-emulator0000",
            "name": "Confluence",
            "typeId": "confluence",
            "version": self.version,
            "buildNumber": str(
                sum(p * 10 ** (4 - 2 * i) for i, p in enumerate(self.version_tuple[:3]))
            ),
            "applinksVersion": "9.0.0",
            "url": self._base(request),
        }
        # Jersey answers JSON when asked for it and XML otherwise (the default of the resource).
        if "json" in request.headers.get("accept", ""):
            return JSONResponse(fields)
        xml = "".join(f"<{k}>{v}</{k}>" for k, v in fields.items())
        return Response(f"<manifest>{xml}</manifest>", media_type="application/xml")

    async def _current_user(self, request: Request) -> Response:
        user = self._caller(request)
        if user is None:
            return JSONResponse({"type": "anonymous", "displayName": "Anonymous"})
        return JSONResponse(self._person(request, user))

    async def _get_user(self, request: Request) -> Response:
        self._require(request)
        expand = request.query_params.get("expand", "")
        if "username" in request.query_params:
            user = self._user_or_404(request.query_params["username"])
        elif "key" in request.query_params:
            key = request.query_params["key"]
            found = [u for u in self.users.values() if u.user_key == key]
            if not found:
                raise _Refused(404, f"No user found with key: {key}")
            user = found[0]
        else:
            raise _Refused(400, "A username or key query parameter is required")
        return JSONResponse(self._person(request, user, expand))

    async def _list_users(self, request: Request) -> Response:
        self._require(request)
        self._since(USER_ADMIN_SINCE)
        expand = request.query_params.get("expand", "")
        users = [self._person(request, u, expand) for _, u in sorted(self.users.items())]
        return JSONResponse(self._page(request, users))

    async def _member_of(self, request: Request) -> Response:
        """The groups of an account; one that does not exist is in none (200 with an empty
        page: the descriptions declare 200 and 403 only)."""
        self._require(request)
        username = request.query_params.get("username", "").lower()
        groups = [
            self._group(request, self.groups[name]) for name in sorted(self.groups_of(username))
        ]
        return JSONResponse(self._page(request, groups))

    async def _list_groups(self, request: Request) -> Response:
        self._require(request)
        groups = [self._group(request, g) for _, g in sorted(self.groups.items())]
        return JSONResponse(self._page(request, groups))

    async def _get_group(self, request: Request) -> Response:
        self._require(request)
        return JSONResponse(self._group(request, self._group_or_404(request.path_params["group"])))

    async def _list_global_permissions(self, request: Request) -> Response:
        """Every global permission grant, as a bare array (the resource takes no parameters).

        Subjects: `{"type": "group", "name", "displayName"}` and, for users, the stricter
        reading of what the reference leaves open (its schema shows only `type` and
        `displayName`): `{"type": "user", "userKey", "displayName"}`, no username.
        Whether a Confluence Administrator without System Administrator may read it is
        UNCONFIRMED; here any administrator may.
        """
        self._since(GLOBAL_PERMISSIONS_SINCE)
        self._require(request, admin=True)
        by_key = {u.user_key: u for u in self.users.values()}
        grants = []
        for kind, ident, target_type, operation in sorted(self.global_permissions):
            if kind == "user":
                subject = {
                    "type": "user",
                    "userKey": ident,
                    "displayName": by_key[ident].display_name,
                }
            else:
                subject = {"type": "group", "name": ident, "displayName": ident}
            grants.append(
                {
                    "operation": {"targetType": target_type, "operationKey": operation},
                    "subject": subject,
                }
            )
        return JSONResponse(grants)

    async def _group_members(self, request: Request) -> Response:
        """A group's members; a group that does not exist has none (200 with an empty page:
        the descriptions declare 200 and 403 only, no 404)."""
        self._require(request)
        name = request.path_params["group"]
        group = self.groups.get(name.lower(), EmulatedGroup(name.lower()))
        return self._members_page(request, group)

    async def _group_members_by_query(self, request: Request) -> Response:
        if self.version_tuple < GROUP_QUERY_SINCE:
            # No such resource yet: the path is `/group/{groupName}` with the name "member".
            self._require(request)
            return JSONResponse(self._group(request, self._group_or_404("member")))
        self._require(request)
        # `groupName`, as the 10.2 description declares it (not required there: without it,
        # no group, no members).
        name = request.query_params.get("groupName", "")
        return self._members_page(request, self.groups.get(name.lower(), EmulatedGroup(name)))

    def _members_page(self, request: Request, group: EmulatedGroup) -> Response:
        expand = request.query_params.get("expand", "")
        members = [
            self._person(request, self.users[name], expand) for name in sorted(group.members)
        ]
        return JSONResponse(self._page(request, members))

    async def _create_user(self, request: Request) -> Response:
        self._require(request, admin=True)
        self._since(USER_ADMIN_SINCE)
        body = await _json_object(request)
        # Confluence trims what it stores (and lower-case is checked on the trimmed name).
        username = str(body.get("userName") or "").strip()
        full_name = str(body.get("fullName") or "").strip()
        email = str(body.get("email") or "").strip()
        password = body.get("password")
        notify = bool(body.get("notifyViaEmail", False))
        problem = username_problem(username, allow_upper=False) or full_name_problem(full_name)
        if problem is None and not _looks_like_email(email):
            problem = f"email: '{email}' is not a valid e-mail address"
        if problem is None and bool(password) == notify:
            problem = "Give either a password (with notifyViaEmail false) or notifyViaEmail true"
        if problem:
            raise _Refused(400, problem)
        if username in self.users:
            raise _Refused(409, f"A user with username '{username}' already exists")
        self._check_licence()
        self.seed_user(username, email, full_name, password=password or None)
        self.groups["confluence-users"].members.add(username)
        return JSONResponse({"userKey": self.users[username].user_key}, status_code=201)

    async def _admin_user(self, request: Request) -> Response:
        self._require(request, admin=True)
        name = request.path_params["username"]
        if request.method == "DELETE":
            self._since(GROUP_ADMIN_SINCE)
            self._remove_user(self._user_or_404(name))
            self._task_ids += 1
            task = f"{self._task_ids:08d}-user-removal"
            return JSONResponse(
                {"id": task, "links": {"status": f"{self.context_path}/rest/api/longtask/{task}"}},
                status_code=202,
            )
        self._since(USER_ADMIN_SINCE)
        user = self._user_or_404(name)
        body = await _json_object(request)
        # The stricter reading of UserDetailsForUpdate (reference §2.3): both fields required,
        # nothing else accepted. A client that satisfies this satisfies the lenient one too.
        unknown = set(body) - {"email", "fullName"}
        if unknown:
            raise _Refused(
                400, f"Only email and fullName can be changed, not {', '.join(sorted(unknown))}"
            )
        missing = [field for field in ("email", "fullName") if field not in body]
        if missing:
            raise _Refused(400, f"{' and '.join(missing)} must be given")
        full_name = str(body["fullName"] or "").strip()
        email = str(body["email"] or "").strip()
        problem = full_name_problem(full_name)
        if problem:
            raise _Refused(400, problem)
        if not _looks_like_email(email):
            raise _Refused(400, f"email: '{email}' is not a valid e-mail address")
        user.email = email
        user.display_name = full_name
        return Response(status_code=204)

    async def _toggle_user(self, request: Request) -> Response:
        self._require(request, admin=True)
        self._since(GROUP_ADMIN_SINCE)
        action = request.path_params["action"]
        if action not in ("disable", "enable"):
            raise _Refused(404, f"No such resource: {action}")
        user = self._user_or_404(request.path_params["username"])
        user.active = action == "enable"
        return Response(status_code=204)

    async def _create_group(self, request: Request) -> Response:
        self._require(request, admin=True)
        self._since(GROUP_ADMIN_SINCE)
        body = await _json_object(request)
        # The documented schema is {"name"} without additional properties, yet the common
        # clients send {"type": "group", "name": ...} and it works (reference §2.4).
        unknown = set(body) - {"name", "type"}
        if unknown or body.get("type", "group") != "group":
            raise _Refused(400, f"Unrecognized field(s) {', '.join(sorted(unknown)) or 'type'}")
        name = str(body.get("name") or "").strip()
        if not name:
            raise _Refused(400, "Group name must not be empty")
        if name.lower() in self.groups:
            raise _Refused(409, f"A group with name '{name.lower()}' already exists")
        self.seed_group(name)
        # 200, not 201: every description declares 200 for a created group.
        return JSONResponse(self._group(request, self.groups[name.lower()]))

    async def _delete_group(self, request: Request) -> Response:
        self._require(request, admin=True)
        self._since(GROUP_ADMIN_SINCE)
        self._remove_group(self._group_or_404(request.path_params["group"]))
        return Response(status_code=204)

    async def _membership(self, request: Request) -> Response:
        self._require(request, admin=True)
        self._since(GROUP_ADMIN_SINCE)
        user = self._user_or_404(request.path_params["username"])
        group = self._group_or_404(request.path_params["group"])
        if request.method == "PUT":
            group.members.add(user.username)
        else:
            group.members.discard(user.username)
        return Response(status_code=204)

    def licensed_user_count(self) -> int:
        """The accounts counting towards the licence: the active ones."""
        return sum(1 for u in self.users.values() if u.active)

    def _check_licence(self) -> None:
        if self.license_limit is not None and self.licensed_user_count() >= self.license_limit:
            raise _Refused(
                402,
                f"Cannot create user: the licence allows {self.license_limit} users "
                "and no licences are left",
            )

    async def _license_count(self, request: Request) -> Response:
        """`maxUsers`, `userCount` or `remainingSeats` as `{"count": n}`.

        Under an unlimited licence maxUsers is Integer.MAX_VALUE and remainingSeats has no
        number (the service's Optional is empty); what the resource then answers is
        UNCONFIRMED: `{}` here, so a client must not need it. Over the limit remainingSeats
        is 0 (UNCONFIRMED whether Confluence answers a negative number).
        """
        figure = request.path_params["figure"]
        if not self.license_resource or figure not in ("maxUsers", "userCount", "remainingSeats"):
            raise _Refused(404, f"null for uri: {request.url}")
        self._require(request, admin=True)
        used = self.licensed_user_count()
        if figure == "userCount":
            return JSONResponse({"count": used})
        if figure == "maxUsers":
            limit = self.unlimited_max_users if self.license_limit is None else self.license_limit
            return JSONResponse({"count": limit})
        if self.license_limit is None:
            return JSONResponse({})
        return JSONResponse({"count": max(0, self.license_limit - used)})

    # -- JSON-RPC ------------------------------------------------------------------------

    async def _json_rpc(self, request: Request) -> Response:
        if not self.remote_api_enabled:
            raise _Refused(403, "The Remote API (XML-RPC & SOAP) is disabled on this site")
        if request.headers.get("authorization", "").lower().startswith("bearer"):
            raise _Refused(401, "JSON-RPC does not accept personal access tokens; use basic auth")
        caller = self._require(request)
        body = await _json_any(request)
        envelope = "method" not in request.path_params
        if envelope:
            if not isinstance(body, dict) or "method" not in body:
                raise _Refused(400, "Expected a JSON-RPC request object")
            method, params, request_id = body["method"], body.get("params") or [], body.get("id")
        else:
            method, params, request_id = request.path_params["method"], body or [], None
        if not isinstance(params, list):
            raise _Refused(400, "JSON-RPC params must be an array of positional arguments")
        try:
            result = self._rpc_call(caller, method, params)
        except _Refused as exc:
            # The RPC plugin reports a RemoteException as a JSON-RPC error object, HTTP 200.
            error = {"code": exc.status, "name": "JSONRPCError", "message": exc.message}
            return JSONResponse({"jsonrpc": "2.0", "error": error, "id": request_id})
        if envelope:
            return JSONResponse({"jsonrpc": "2.0", "result": result, "id": request_id})
        if result is None:
            return Response(status_code=200)
        return JSONResponse(result)

    def _rpc_call(self, caller: EmulatedUser, method: str, params: list[Any]) -> Any:
        reads = {"getUser", "hasUser", "hasGroup", "getGroups", "getUserGroups"}
        writes = {
            "addUser",
            "editUser",
            "deactivateUser",
            "reactivateUser",
            "removeUser",
            "addGroup",
            "removeGroup",
            "addUserToGroup",
            "removeUserFromGroup",
        }
        if method not in reads | writes:
            raise _Refused(404, f"No such operation: {method}")
        if method in writes and not self.is_admin(caller):
            raise _Refused(
                403, f"NotPermittedException: '{caller.username}' is not an administrator"
            )

        def arg(index: int) -> Any:
            if index >= len(params):
                raise _Refused(400, f"{method}: missing argument {index + 1}")
            return params[index]

        if method == "getUser":
            user = self._user_or_404(str(arg(0)))
            return {
                "name": user.username,
                "fullname": user.display_name,
                "email": user.email,
                "key": user.user_key,
                "url": f"{self.context_path}/display/~{user.username}",
            }
        if method == "hasUser":
            return str(arg(0)).lower() in self.users
        if method == "hasGroup":
            return str(arg(0)).lower() in self.groups
        if method == "getGroups":
            return sorted(self.groups)
        if method == "getUserGroups":
            return sorted(self.groups_of(self._user_or_404(str(arg(0))).username))
        if method == "addUser":
            details = arg(0)
            if not isinstance(details, dict):
                raise _Refused(400, "addUser: the first argument must be a user object")
            username = str(details.get("name") or "").strip()
            full_name = str(details.get("fullname") or "").strip()
            problem = username_problem(username, allow_upper=False) or full_name_problem(full_name)
            if problem:
                raise _Refused(400, f"addUser: {problem}")
            if username in self.users:
                raise _Refused(409, f"addUser: user '{username}' already exists")
            self._check_licence()
            self.seed_user(
                username, str(details.get("email") or "").strip(), full_name, password=str(arg(1))
            )
            self.groups["confluence-users"].members.add(username)
            return None  # the light form answers an empty body (reference §2.6)
        if method == "editUser":
            details = arg(0)
            user = self._user_or_404(str(details.get("name") or ""))
            user.display_name = str(details.get("fullname") or user.display_name).strip()
            user.email = str(details.get("email") or user.email).strip()
            return True
        if method in ("deactivateUser", "reactivateUser"):
            self._user_or_404(str(arg(0))).active = method == "reactivateUser"
            return True
        if method == "removeUser":
            self._remove_user(self._user_or_404(str(arg(0))))
            return True
        if method == "addGroup":
            name = str(arg(0)).strip().lower()
            if name in self.groups:
                raise _Refused(409, f"addGroup: group '{name}' already exists")
            self.seed_group(name)
            return True
        if method == "removeGroup":
            self._remove_group(self._group_or_404(str(arg(0))))
            return True
        user = self._user_or_404(str(arg(0)))
        group = self._group_or_404(str(arg(1)))
        if method == "addUserToGroup":
            group.members.add(user.username)
        else:
            group.members.discard(user.username)
        return True


def _refuse_encoded_slashes(app: Any) -> Any:
    """Answer 404 to a path holding an encoded slash or backslash, as Tomcat refuses it.

    The check reads the raw path: the decoded one would turn `a%2Fb` into two segments and
    hide what Tomcat sees.
    """

    async def guarded(scope: dict, receive: Any, send: Any) -> None:
        raw = scope.get("raw_path") or scope.get("path", "").encode()
        if scope["type"] == "http" and any(code in raw.lower() for code in REFUSED_ENCODED_IN_PATH):
            response = JSONResponse(
                confluence_error(404, "The request path contains an encoded / or \\"),
                status_code=404,
            )
            await response(scope, receive, send)
            return
        await app(scope, receive, send)

    return guarded


def username_problem(username: str, *, allow_upper: bool = True) -> str | None:
    """Why Confluence would refuse `username` for a new account, or None (reference §2.3)."""
    if not username.strip():
        return "userName must not be blank"
    if any(ch.isspace() for ch in username):
        return f"userName '{username}' must not contain whitespace"
    bad = sorted(set(username) & FORBIDDEN_USERNAME_CHARACTERS)
    if bad:
        return f"userName '{username}' must not contain {' '.join(bad)}"
    if username.lower() == "anonymous":
        return "userName must not be 'anonymous'"
    if not allow_upper and username != username.lower():
        return f"userName '{username}' must not contain upper-case characters"
    return None


def full_name_problem(full_name: str) -> str | None:
    """Why Confluence would refuse `full_name`, or None."""
    if not full_name.strip():
        return "fullName must not be blank"
    if "<" in full_name or ">" in full_name:
        return f"fullName '{full_name}' must not contain < or >"
    if full_name.lower() == "anonymous":
        return "fullName must not be 'anonymous'"
    return None


def _looks_like_email(value: str) -> bool:
    return re.fullmatch(r"[^@\s]+@[^@\s]+", value) is not None


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return max(0, int(raw))
    except ValueError:
        raise _Refused(400, f"Query parameter {name} must be a number, not '{raw}'") from None


async def _json_any(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return None
    try:
        return await request.json()
    except ValueError:
        raise _Refused(400, "The request body is not valid JSON") from None


async def _json_object(request: Request) -> dict[str, Any]:
    body = await _json_any(request)
    if not isinstance(body, dict):
        raise _Refused(400, "Expected a JSON object in the request body")
    return body
