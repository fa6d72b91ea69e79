"""An emulator of the Bitbucket Data Center REST 1.0 user, group and global-permission admin API.

`BitbucketEmulator` serves what usersync's Bitbucket client calls, as the product does it (see
../shared/reference/atlassian-rest.md §3 and §6): an optional context path, both
`/rest/api/1.0` and `/rest/api/latest`, the `{size,limit,start,isLastPage,nextPageStart,values}`
page with default limit 25 and a server-side cap, `filter` substring matching, the non-admin
lists any licensed user may read (`/users` with its `group` and `permission` filters, `/groups`
as a page of bare names), JSON answers typed `application/json;charset=UTF-8`, unknown paths
and methods answered with the JSON error body rather than a servlet page, create-user as
query parameters answering 204 with no body, 409 for existing users and groups, user slugs
that differ from usernames, global permissions as the only notion of a licensed (usable)
account, errors as `{"errors": [{"context", "message", "exceptionName"}]}`, and Bitbucket's
habit of answering a missing permission with 401 (not 403). Surrounding blanks of names,
e-mails and display names are trimmed; control and bidirectional-override characters and
names over 255 characters are a 400. Every authenticated answer names its account in
`X-AUSERNAME` (and its id in `X-AUSERID`), as Bitbucket does; `rename_user` renames an
account as an administrator would in the UI (the id stays). Personal access tokens work as
Bearer or as a basic-auth password, and are refused by every endpoint that needs ADMIN
(BSERV-10482). The ASGI app is wrapped in `Instrumented`, so tests get the request log and
can inject 429 (with `Retry-After`), 5xx and dropped connections.
"""

from __future__ import annotations

import base64
import itertools
import re
import secrets
import threading
import time
import unicodedata
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote_plus

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse as _StarletteJSONResponse
from starlette.responses import Response
from starlette.routing import Route
from usersync_sandbox.faults import Instrumented, retry_after_only
from usersync_sandbox.substring_index import CountedDict, SubstringIndex, TrackedDict

#: Global permissions, lowest first; each implies the ones before it.
GLOBAL_PERMISSIONS: tuple[str, ...] = ("LICENSED_USER", "PROJECT_CREATE", "ADMIN", "SYS_ADMIN")

#: The Bitbucket versions usersync supports, each emulated as its API description declares it
#: (../shared/reference/specs: 9.4 and 10.4 OpenAPI); the newest is the default.
SUPPORTED_VERSIONS = ("9.4.0", "10.4.0")
DEFAULT_VERSION = SUPPORTED_VERSIONS[-1]
#: Users carry `createdTimestamp` from 9.6 (SOURCES.md: absent in 9.4, present in 9.6 and 10.4).
CREATED_TIMESTAMP_SINCE = (9, 6)

DEFAULT_PAGE_LIMIT = 25
#: Bitbucket's real cap is not documented (reference: UNCONFIRMED); clients must follow
#: nextPageStart whatever limit they ask for, and the cap makes them prove it.
DEFAULT_MAX_PAGE_SIZE = 1000
DEFAULT_GROUP = "stash-users"

_EXC = "com.atlassian.bitbucket"
BAD_CREDENTIALS = f"{_EXC}.auth.IncorrectPasswordAuthenticationException"
NOT_PERMITTED = f"{_EXC}.AuthorisationException"
NO_SUCH_USER = f"{_EXC}.user.NoSuchUserException"
NO_SUCH_GROUP = f"{_EXC}.user.NoSuchGroupException"
DUPLICATE_USER = f"{_EXC}.user.DuplicateUserException"
DUPLICATE_GROUP = f"{_EXC}.user.DuplicateGroupException"
INVALID_ARGUMENT = f"{_EXC}.validation.ArgumentValidationException"
NOT_A_MEMBER = f"{_EXC}.user.NoSuchMembershipException"
CANNOT_DEMOTE_SELF = f"{_EXC}.permission.PermissionModificationException"
#: UNCONFIRMED exception name for a grant past the licensed user limit.
LICENCE_LIMIT = f"{_EXC}.license.LicenseLimitException"

TOKEN_ADMIN_REFUSAL = "Tokens may not have the following permission: ADMIN"

#: Bitbucket's user and group name columns are 255 characters wide.
MAX_NAME_LENGTH = 255
#: Bidirectional embedding/override and isolate controls (U+202A-U+202E, U+2066-U+2069).
BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def name_problem(name: str) -> str | None:
    """Why Bitbucket refuses this user or group name; None if it takes it.

    Bitbucket documents no rule (spaces, `@`, `+` are fine); what it answers for control
    characters, bidirectional controls or an overlong name is UNCONFIRMED, and the emulator
    takes the stricter reading: a 400.
    """
    if len(name) > MAX_NAME_LENGTH:
        return f"The name must be {MAX_NAME_LENGTH} characters or fewer."
    if any(unicodedata.category(ch) == "Cc" or ch in BIDI_CONTROLS for ch in name):
        return "The name must not contain control characters."
    return None


class JSONResponse(_StarletteJSONResponse):
    """Bitbucket's JSON answers name their charset, as its OpenAPI document lists them (some
    clients, atlassian-python-api among them, read a 401's body only with this exact type)."""

    media_type = "application/json;charset=UTF-8"


def header_username(name: str) -> str:
    """A username as the `X-AUSERNAME` header carries it.

    Whether Bitbucket encodes names that are not plain ASCII is UNCONFIRMED (headers carry
    Latin-1 at best); the emulator percent-encodes them the way Java's URLEncoder does, so
    that clients must cope with an encoded spelling.
    """
    return quote_plus(name, safe="*-._")


def user_slug(username: str) -> str:
    """The URL slug Bitbucket derives from a username: lower case, unsafe characters as `_`.

    `jane.doe@corp.example` → `jane.doe_corp.example`. Clients must take the slug from the
    user object, never compute it; the emulator derives it so that tests can show the two differ.
    """
    return re.sub(r"[^a-z0-9._-]", "_", username.lower())


def bitbucket_error(
    message: str, exception: str = "", context: str | None = None
) -> dict[str, list[dict[str, str | None]]]:
    """Bitbucket's error body: `{"errors": [{"context", "message", "exceptionName"}]}`; the
    exception name is null when no exception class stands behind the error."""
    return {
        "errors": [{"context": context, "message": message, "exceptionName": exception or None}]
    }


class BitbucketRefusal(Exception):
    """Raised inside a handler to answer with a Bitbucket error."""

    def __init__(self, status: int, message: str, exception: str, context: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.exception = exception
        self.context = context


#: The fields `filter` searches; changing one of an existing account counts as an edit.
_SEARCHED = frozenset({"name", "email", "display_name"})

#: Up to this many accounts created since the sorted user list was last built are inserted
#: into it one by one; more, and it is sorted again.
_INSERT_MAX = 1000


class Memberships:
    """Who is in each group, kept current by the accounts' `MemberSet`s: group key -> ids of
    the accounts whose `groups` hold it, and a counter per group that moves with each change.

    It lets a group's member list, a group's deletion and the licence count visit the members
    only, not every account (an account deleted keeps its ids here: readers check that it is
    still one of the emulator's accounts).
    """

    def __init__(self) -> None:
        self.ids: dict[str, set[int]] = {}
        self.versions: dict[str, int] = {}
        self.changes = 0

    def joined(self, group: str, uid: int) -> None:
        self.ids.setdefault(group, set()).add(uid)
        self._moved(group)

    def left(self, group: str, uid: int) -> None:
        held = self.ids.get(group)
        if held is not None:
            held.discard(uid)
            if not held:
                del self.ids[group]
        self._moved(group)

    def _moved(self, group: str) -> None:
        self.versions[group] = self.versions.get(group, 0) + 1
        self.changes += 1


class MemberSet(set):
    """An account's group keys (a set), telling `Memberships` of every key added or removed,
    whichever way the set is changed (the handlers, and tests that edit it directly)."""

    def __init__(self, index: Memberships, uid: int, keys: Iterable[str] = ()) -> None:
        super().__init__()
        self._index = index
        self._uid = uid
        self.update(keys)

    def add(self, key: str) -> None:
        if key not in self:
            super().add(key)
            self._index.joined(key, self._uid)

    def discard(self, key: str) -> None:
        if key in self:
            super().discard(key)
            self._index.left(key, self._uid)

    def remove(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.discard(key)

    def pop(self) -> str:
        key = super().pop()
        self._index.left(key, self._uid)
        return key

    def clear(self) -> None:
        for key in list(self):
            self.discard(key)

    def update(self, *others: Iterable[str]) -> None:
        for other in others:
            for key in list(other):
                self.add(key)

    def difference_update(self, *others: Iterable[str]) -> None:
        for other in others:
            for key in list(other):
                self.discard(key)

    def intersection_update(self, *others: Iterable[str]) -> None:
        kept = set(self).intersection(*others)
        for key in list(self):
            if key not in kept:
                self.discard(key)

    def symmetric_difference_update(self, other: Iterable[str]) -> None:
        for key in set(other):
            if key in self:
                self.discard(key)
            else:
                self.add(key)

    def __ior__(self, other: Any) -> MemberSet:
        self.update(other)
        return self

    def __iand__(self, other: Any) -> MemberSet:
        self.intersection_update(other)
        return self

    def __isub__(self, other: Any) -> MemberSet:
        self.difference_update(other)
        return self

    def __ixor__(self, other: Any) -> MemberSet:
        self.symmetric_difference_update(other)
        return self


def _numbers(version: str) -> tuple[int, ...]:
    """(9, 4, 0) from "9.4.0"; a part that is not a number ends it."""
    numbers: list[int] = []
    for part in version.split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


@dataclass
class EmulatedUser:
    id: int
    name: str
    email: str
    display_name: str
    password: str
    created: int
    groups: set[str] = field(default_factory=set)  # group keys (casefolded names)

    #: Moves whenever a searched field of an existing account changes (for `SubstringIndex`).
    edits: ClassVar[int] = 0

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SEARCHED:
            if name in self.__dict__:
                EmulatedUser.edits += 1
            self.__dict__.pop("_folded", None)
        held = self.__dict__.get("groups")
        if name == "groups" and isinstance(held, MemberSet) and not isinstance(value, MemberSet):
            # A plain set given to an account: its keys go into the indexed set it has.
            held.clear()
            held.update(value)
            return
        object.__setattr__(self, name, value)

    @property
    def folded(self) -> str:
        """Name, e-mail and display name casefolded, as the `filter` parameter searches them
        (kept until one of them changes: the index's rebuild reads every account's)."""
        text = self.__dict__.get("_folded")
        if text is None:
            text = "\0".join(f.casefold() for f in (self.name, self.email, self.display_name))
            self.__dict__["_folded"] = text
        return text

    def as_json(self, created: bool = True) -> dict[str, Any]:
        """The RestDetailedUser; `created` False leaves out `createdTimestamp` (before 9.6)."""
        # `active` is the directory flag: always true for internal users, and not the licence.
        detailed = {
            "name": self.name,
            "emailAddress": self.email,
            "displayName": self.display_name,
            "active": True,
            "slug": user_slug(self.name),
            "id": self.id,
            "type": "NORMAL",
            "directoryName": "Bitbucket Internal Directory",
            "deletable": True,
            "mutableDetails": True,
            "mutableGroups": True,
            "createdTimestamp": self.created,
            # `lastAuthenticationTimestamp` (a number) is left out for an account that never
            # signed in: Bitbucket omits null fields, and the descriptions declare no null.
        }
        if not created:
            del detailed["createdTimestamp"]
        return detailed

    def as_application_user(self, links_base: str) -> dict[str, Any]:
        """The RestApplicationUser of the non-admin `/users` list (no directory details)."""
        slug = user_slug(self.name)
        return {
            "name": self.name,
            "emailAddress": self.email,
            "displayName": self.display_name,
            "active": True,
            "slug": slug,
            "id": self.id,
            "type": "NORMAL",
            "links": {"self": [{"href": f"{links_base}/users/{slug}"}]},
        }


@dataclass
class EmulatedGroup:
    name: str


@dataclass
class Caller:
    username: str
    via_token: bool


class BitbucketEmulator:
    """A Bitbucket DC instance in memory, served as an ASGI app (`app`).

    Args:
        version: the Bitbucket version to emulate (`/application-properties` reports it); one
            of `SUPPORTED_VERSIONS` is emulated as its API description declares it: users carry
            `createdTimestamp` from 9.6 (absent in 9.4). The newest supported is the default.
        context_path: e.g. "/bitbucket"; every REST path sits under it.
        admin: username and password of a SYS_ADMIN account created up front.
        max_page_size: the largest `limit` the server honours; larger requests get this many.
        default_group: the group `addToDefaultGroup=true` puts new users in; it holds
            LICENSED_USER, as on a typical instance.
        remove_nonmember_status: what `remove-group` answers for a user who is not in the
            group (Bitbucket's real answer is UNCONFIRMED: 200 no-op or 404).
        licensed_users: the licence's user limit (None: unlimited). Past it, what would license
            one more account is refused with 403, as the reference says Bitbucket does
            (create with the default group, a LICENSED_USER grant, joining a licensing group).
    """

    def __init__(
        self,
        *,
        version: str = DEFAULT_VERSION,
        context_path: str = "",
        admin: tuple[str, str] = ("admin", "admin"),
        max_page_size: int = DEFAULT_MAX_PAGE_SIZE,
        default_group: str = DEFAULT_GROUP,
        remove_nonmember_status: int = 200,
        licensed_users: int | None = None,
    ) -> None:
        self.version = version
        #: whether users carry `createdTimestamp` (from 9.6; absent from the 9.4 description)
        self.created_timestamps = _numbers(version) >= CREATED_TIMESTAMP_SINCE
        #: the licence's user limit (None: unlimited); granting access past it is refused
        self.licensed_users = licensed_users
        self.context_path = "/" + context_path.strip("/") if context_path.strip("/") else ""
        self.max_page_size = max_page_size
        self.default_group = default_group
        self.remove_nonmember_status = remove_nonmember_status
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.users: TrackedDict = TrackedDict()  # by casefolded username
        self._by_filter = SubstringIndex(self.users, lambda u: u.folded, lambda: EmulatedUser.edits)
        self._by_id: dict[int, EmulatedUser] = {}  # every account made, deleted ones too
        self._memberships = Memberships()  # kept by the accounts' `groups`
        self.groups: dict[str, EmulatedGroup] = {}  # by casefolded group name
        # casefolded username -> direct permission
        self.user_permissions: CountedDict = CountedDict()
        self.group_permissions: CountedDict = CountedDict()  # casefolded group -> permission
        # Caches over the state above, each with what it was built from (see `_sorted_users`).
        self._sorted: tuple[tuple[int, int], list[str], list[EmulatedUser]] | None = None
        self._licensed: tuple[tuple[int, ...], list[str], list[EmulatedUser]] | None = None
        self._members_sorted: dict[str, tuple[tuple[int, int], list[EmulatedUser]]] = {}
        self._slugs: tuple[tuple[int, int], dict[str, EmulatedUser]] | None = None
        self._count: tuple[tuple[int, ...], int] | None = None
        self.tokens: dict[str, str] = {}  # token -> casefolded username
        self.seed_group(default_group, permission="LICENSED_USER")
        self.seed_user(admin[0], f"{admin[0]}@example.com", "Administrator", password=admin[1])
        self.user_permissions[admin[0].casefold()] = "SYS_ADMIN"
        self.app = Instrumented(
            self._starlette(),
            rate_limit_headers=retry_after_only,
            error_body=lambda _status, message: bitbucket_error(message),
        )

    # -- seeding and inspection (Python API for tests) ------------------------------------

    def seed_user(
        self,
        username: str,
        email: str,
        display_name: str,
        active: bool = True,
        *,
        password: str | None = None,
        permission: str | None = None,
        groups: Iterable[str] = (),
    ) -> None:
        """Create an account directly. `active=False` means: no global permission (unlicensed).

        `permission` grants a direct global permission other than LICENSED_USER (for an admin).
        """
        with self._lock:
            user = EmulatedUser(
                id=next(self._ids),
                name=username,
                email=email,
                display_name=display_name,
                password=password if password is not None else secrets.token_urlsafe(16),
                created=int(time.time() * 1000),
            )
            user.groups = MemberSet(self._memberships, user.id)
            self._by_id[user.id] = user
            user.folded  # noqa: B018 (the searched text, made now rather than at the first filter)
            self.users[username.casefold()] = user
            if permission or active:
                self.user_permissions[username.casefold()] = permission or "LICENSED_USER"
            for group in groups:
                user.groups.add(self._group(group).name.casefold())

    def seed_group(
        self, name: str, members: Iterable[str] = (), *, permission: str | None = None
    ) -> None:
        """Create a group with these (existing) members; `permission` grants it a global one."""
        with self._lock:
            self.groups.setdefault(name.casefold(), EmulatedGroup(name))
            if permission:
                self.group_permissions[name.casefold()] = permission
            for member in members:
                self._user(member).groups.add(name.casefold())

    def grant_admin(self, username: str, permission: str = "ADMIN") -> None:
        """Grant an existing account ADMIN (or SYS_ADMIN) directly, as under Global permissions."""
        with self._lock:
            self.user_permissions[self._user(username).name.casefold()] = permission

    def seed_admin_group(
        self, name: str, members: Iterable[str] = (), *, permission: str = "ADMIN"
    ) -> None:
        """A group holding ADMIN (or SYS_ADMIN): its members are administrators through it."""
        self.seed_group(name, members, permission=permission)

    def rename_user(self, username: str, new_name: str) -> None:
        """Rename an account directly, as an administrator would in the UI (the id stays)."""
        with self._lock:
            self._rename(self._user(username), new_name.strip())

    def add_token(self, username: str, token: str | None = None) -> str:
        """Issue a personal access token for `username`; return it."""
        with self._lock:
            self._user(username)
            token = token or secrets.token_urlsafe(32)
            self.tokens[token] = username.casefold()
            return token

    def direct_permission(self, username: str) -> str | None:
        """The global permission granted to the user directly, if any."""
        with self._lock:
            return self.user_permissions.get(username.casefold())

    def effective_permission(self, username: str) -> str | None:
        """The highest global permission the user holds, directly or through a group."""
        with self._lock:
            user = self._user(username)
            held = [self.user_permissions.get(user.name.casefold())]
            held += [self.group_permissions.get(g) for g in user.groups]
            ranks = [GLOBAL_PERMISSIONS.index(p) for p in held if p]
            return GLOBAL_PERMISSIONS[max(ranks)] if ranks else None

    def members(self, group: str) -> list[str]:
        """Usernames in `group`, sorted."""
        with self._lock:
            key = self._group(group).name.casefold()
            return sorted(u.name for u in self._sorted_members(key))

    # -- indexes: kept between requests, rebuilt (or extended) when the state moved --------

    def _live(self, user: EmulatedUser) -> bool:
        return self.users.get(user.name.casefold()) is user

    def _sorted_users(self) -> tuple[list[str], list[EmulatedUser]]:
        """Every account's key and the account, sorted by key (the casefolded name, which is
        the order of every user list). Accounts created since the last call are inserted;
        any other change to `users` (a deletion, a rename: `reshaped` moves) sorts again."""
        users = self.users
        seen = (users.reshaped, len(users))
        if self._sorted is not None and self._sorted[0] == seen:
            return self._sorted[1], self._sorted[2]
        if (
            self._sorted is not None
            and self._sorted[0][0] == users.reshaped
            and 0 < len(users) - self._sorted[0][1] <= _INSERT_MAX
        ):
            _, keys, values = self._sorted
            # Only additions since (anything else moves `reshaped`): the newest keys.
            for key in itertools.islice(reversed(users), len(users) - self._sorted[0][1]):
                at = bisect_left(keys, key)
                keys.insert(at, key)
                values.insert(at, users[key])
        else:
            keys = sorted(users)
            values = [users[key] for key in keys]
        self._sorted = (seen, keys, values)
        return keys, values

    def _sorted_licensed(self) -> tuple[list[str], list[EmulatedUser]]:
        """Keys and accounts of those granted a global permission directly, sorted by key
        (two lists: 100k pairs would be 100k objects for the garbage collector to follow)."""
        users, granted = self.users, self.user_permissions
        seen = (users.reshaped, len(users), granted.changes)
        if self._licensed is None or self._licensed[0] != seen:
            keys, values = self._sorted_users()
            chosen = [k in granted for k in keys]
            self._licensed = (
                seen,
                list(itertools.compress(keys, chosen)),
                list(itertools.compress(values, chosen)),
            )
        return self._licensed[1], self._licensed[2]

    def _sorted_members(self, group: str) -> list[EmulatedUser]:
        """The accounts whose groups hold this group key, sorted by name (casefolded)."""
        seen = (self._memberships.versions.get(group, 0), self.users.reshaped)
        cached = self._members_sorted.get(group)
        if cached is None or cached[0] != seen:
            members = (self._by_id[uid] for uid in self._memberships.ids.get(group, ()))
            chosen = sorted((u for u in members if self._live(u)), key=lambda u: u.name.casefold())
            cached = self._members_sorted[group] = (seen, chosen)
        return cached[1]

    def _holding(self, floor: int = 0) -> set[str]:
        """Keys of the accounts whose effective global permission ranks at least `floor`
        (0: any), as `effective_permission` would tell one account at a time."""
        users = self.users
        enough = {p for p in GLOBAL_PERMISSIONS if GLOBAL_PERMISSIONS.index(p) >= floor}
        held = {k for k, level in self.user_permissions.items() if level in enough and k in users}
        for group, level in self.group_permissions.items():
            if level in enough:
                held.update(u.name.casefold() for u in self._sorted_members(group))
        return held

    def _by_slug(self, slug: str) -> EmulatedUser | None:
        """The first account (in creation order) whose name gives this slug."""
        users = self.users
        seen = (users.reshaped, len(users))
        if self._slugs is not None and self._slugs[0][0] == users.reshaped:
            slugs = self._slugs[1]
            added = len(users) - self._slugs[0][1]
            newest = list(itertools.islice(reversed(users), added))
            for key in reversed(newest):
                slugs.setdefault(user_slug(users[key].name), users[key])
        else:
            slugs = {}
            for user in users.values():
                slugs.setdefault(user_slug(user.name), user)
        self._slugs = (seen, slugs)
        return slugs.get(slug)

    # -- lookups --------------------------------------------------------------------------

    def _user(self, name: str) -> EmulatedUser:
        user = self.users.get(name.casefold())
        if user is None:
            raise BitbucketRefusal(404, f"User {name} does not exist.", NO_SUCH_USER, "name")
        return user

    def _group(self, name: str) -> EmulatedGroup:
        group = self.groups.get(name.casefold())
        if group is None:
            raise BitbucketRefusal(404, f"Group {name} does not exist.", NO_SUCH_GROUP, "name")
        return group

    def _page(
        self,
        request: Request,
        items: list[Any],
        render: Callable[[Any], Any] | None = None,
    ) -> dict[str, Any]:
        """The page of `items` that `start` and `limit` ask for; `render` makes each value of
        the page (only those) into what the answer carries."""
        try:
            start = max(0, int(request.query_params.get("start", 0)))
            limit = int(request.query_params.get("limit", DEFAULT_PAGE_LIMIT))
        except ValueError as exc:
            raise BitbucketRefusal(400, f"Invalid paging: {exc}", INVALID_ARGUMENT) from exc
        limit = max(1, min(limit, self.max_page_size))
        values = items[start : start + limit]
        last = start + len(values) >= len(items)
        if render is not None:
            values = [render(item) for item in values]
        page: dict[str, Any] = {
            "size": len(values),
            "limit": limit,
            "start": start,
            "isLastPage": last,
            "values": values,
        }
        if not last:
            page["nextPageStart"] = start + len(values)
        return page

    @staticmethod
    def _matches(needle: str, *fields: str) -> bool:
        needle = needle.casefold()
        return not needle or any(needle in f.casefold() for f in fields)

    def _filtered_users(
        self, request: Request, users: list[EmulatedUser] | None = None
    ) -> list[EmulatedUser]:
        """`users` (sorted by casefolded name; default: every account) that the `filter`
        parameter matches, sorted by name. Over every account the index answers: a load of
        10k creations reads each back by filter, and a loop over all accounts was most of the
        emulator's time."""
        needle = request.query_params.get("filter", "").casefold()
        if "\0" in needle:
            return []  # no field holds a NUL (and the searched text joins fields with one)
        if not needle:
            return self._sorted_users()[1] if users is None else users
        if users is None:
            return sorted(self._by_filter.search(needle), key=lambda u: u.name.casefold())
        return [u for u in users if needle in u.folded]

    def _detailed(self, user: EmulatedUser) -> dict[str, Any]:
        return user.as_json(self.created_timestamps)

    # -- authentication -------------------------------------------------------------------

    def _caller(self, request: Request, *, needs: str) -> Caller:
        """Who is calling, refusing as Bitbucket does: 401 for bad credentials and for too
        little permission; a token never satisfies ADMIN."""
        header = request.headers.get("authorization", "")
        kind, _, value = header.partition(" ")
        caller: Caller | None = None
        if kind.lower() == "bearer" and value in self.tokens:
            caller = Caller(self.tokens[value], via_token=True)
        elif kind.lower() == "basic":
            try:
                username, _, secret = base64.b64decode(value).decode().partition(":")
            except ValueError:
                username, secret = "", ""
            user = self.users.get(username.casefold())
            if user is not None and secrets.compare_digest(user.password, secret):
                caller = Caller(user.name.casefold(), via_token=False)
            elif self.tokens.get(secret) == username.casefold():
                caller = Caller(username.casefold(), via_token=True)
        if caller is None:
            raise BitbucketRefusal(
                401,
                "Authentication failed. Please check your credentials and try again.",
                BAD_CREDENTIALS,
            )
        # Signed in: the answer names the account, whatever the permission check says next.
        request.state.account = self.users[caller.username]
        if caller.via_token and GLOBAL_PERMISSIONS.index(needs) >= GLOBAL_PERMISSIONS.index(
            "ADMIN"
        ):
            raise BitbucketRefusal(401, TOKEN_ADMIN_REFUSAL, NOT_PERMITTED)
        held = self.effective_permission(caller.username)
        if held is None or GLOBAL_PERMISSIONS.index(held) < GLOBAL_PERMISSIONS.index(needs):
            raise BitbucketRefusal(
                401,
                "You are not permitted to access this resource",
                NOT_PERMITTED,
            )
        return caller

    # -- routing --------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        table: list[tuple[str, str, Callable[[Request], Awaitable[Response]]]] = [
            ("/application-properties", "GET", self._application_properties),
            ("/users", "GET", self._list_application_users),
            ("/users/{slug}", "GET", self._get_user_by_slug),
            ("/groups", "GET", self._list_group_names),
            ("/admin/users", "GET", self._list_users),
            ("/admin/users", "POST", self._create_user),
            ("/admin/users", "PUT", self._update_user),
            ("/admin/users", "DELETE", self._delete_user),
            ("/admin/users/rename", "POST", self._rename_user),
            ("/admin/users/more-members", "GET", self._groups_of_user),
            ("/admin/users/add-groups", "POST", self._add_user_to_groups),
            ("/admin/users/add-group", "POST", self._add_user_to_group_deprecated),
            ("/admin/users/remove-group", "POST", self._remove_user_from_group),
            ("/admin/groups", "GET", self._list_groups),
            ("/admin/groups", "POST", self._create_group),
            ("/admin/groups", "DELETE", self._delete_group),
            ("/admin/groups/more-members", "GET", self._members_of_group),
            ("/admin/groups/add-users", "POST", self._add_users_to_group),
            ("/admin/groups/add-user", "POST", self._add_group_user_deprecated),
            ("/admin/groups/remove-user", "POST", self._remove_group_user_deprecated),
            ("/admin/license", "GET", self._license),
            ("/admin/permissions/users", "GET", self._list_user_permissions),
            ("/admin/permissions/users", "PUT", self._set_user_permission),
            ("/admin/permissions/users", "DELETE", self._revoke_user_permissions),
            ("/admin/permissions/groups", "GET", self._list_group_permissions),
            ("/admin/permissions/groups", "PUT", self._set_group_permission),
            ("/admin/permissions/groups", "DELETE", self._revoke_group_permissions),
        ]
        routes = []
        for api in ("1.0", "latest"):
            for path, method, handler in table:
                routes.append(
                    Route(
                        f"{self.context_path}/rest/api/{api}{path}",
                        self._guarded(handler),
                        methods=[method],
                    )
                )
        return routes

    def _starlette(self) -> Starlette:
        return Starlette(
            routes=self._routes(),
            exception_handlers={HTTPException: self._no_such_resource},
        )

    @staticmethod
    async def _no_such_resource(request: Request, exc: Exception) -> Response:
        """Unknown paths and methods, answered in Bitbucket's error shape (the exact wording
        of the product's message is UNCONFIRMED)."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = (
            f"{request.method} is not supported for {request.url.path}."
            if status == 405
            else f"No resource exists at {request.url.path}."
        )
        return JSONResponse(bitbucket_error(message), status_code=status)

    def _guarded(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                with self._lock:
                    response = await handler(request)
            except BitbucketRefusal as refusal:
                response = JSONResponse(
                    bitbucket_error(refusal.message, refusal.exception, refusal.context),
                    status_code=refusal.status,
                )
            account = getattr(request.state, "account", None)
            if account is not None:
                response.headers["X-AUSERNAME"] = header_username(account.name)
                response.headers["X-AUSERID"] = str(account.id)
            return response

        return endpoint

    @staticmethod
    def _required(source: Mapping[str, Any], name: str) -> str:
        """A required text parameter, trimmed as Bitbucket stores it."""
        value = source.get(name)
        if not isinstance(value, str) or not value.strip():
            raise BitbucketRefusal(400, f"{name} must be provided.", INVALID_ARGUMENT, name)
        return value.strip()

    @staticmethod
    def _valid_name(name: str, field: str = "name") -> str:
        problem = name_problem(name)
        if problem:
            raise BitbucketRefusal(400, problem, INVALID_ARGUMENT, field)
        return name

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as exc:
            raise BitbucketRefusal(400, "A JSON body is required.", INVALID_ARGUMENT) from exc
        if not isinstance(body, dict):
            raise BitbucketRefusal(400, "A JSON object is required.", INVALID_ARGUMENT)
        return body

    # -- handlers: instance and users -----------------------------------------------------

    async def _application_properties(self, request: Request) -> Response:
        # Anonymous on the real product too: the cheapest proof that the instance is there.
        return JSONResponse(
            {
                "version": self.version,
                "buildNumber": self.version.replace(".", "") + "000",
                "buildDate": "1700000000000",
                "displayName": "Bitbucket",
            }
        )

    async def _get_user_by_slug(self, request: Request) -> Response:
        self._caller(request, needs="LICENSED_USER")
        slug = request.path_params["slug"]
        user = self._by_slug(slug)
        if user is not None:
            return JSONResponse(
                {k: v for k, v in user.as_json(self.created_timestamps).items() if k != "deletable"}
            )
        raise BitbucketRefusal(404, f"User {slug} does not exist.", NO_SUCH_USER)

    async def _list_users(self, request: Request) -> Response:
        self._caller(request, needs="LICENSED_USER")
        return JSONResponse(self._page(request, self._filtered_users(request), self._detailed))

    async def _list_application_users(self, request: Request) -> Response:
        """`GET /users`: any licensed user's view; `group` keeps that group's members and
        `permission` (a global one) those holding at least that level."""
        self._caller(request, needs="LICENSED_USER")
        group = request.query_params.get("group")
        permission = request.query_params.get("permission")
        if permission and permission not in GLOBAL_PERMISSIONS:
            raise BitbucketRefusal(
                400,
                f"'{permission}' is not a valid global permission.",
                INVALID_ARGUMENT,
                "permission",
            )
        text = request.query_params.get("filter", "")
        needle = text.casefold()
        # The smallest candidate list first (each sorted by casefolded name), then every test.
        chosen: list[EmulatedUser]
        if needle and "\0" not in needle:
            chosen = sorted(self._by_filter.search(needle), key=lambda u: u.name.casefold())
        elif group:
            chosen = self._sorted_members(group.casefold())
        else:
            chosen = self._sorted_users()[1]
        if group:
            key = group.casefold()
            chosen = [u for u in chosen if key in u.groups]
        if permission:
            holding = self._holding(GLOBAL_PERMISSIONS.index(permission))
            chosen = [u for u in chosen if u.name.casefold() in holding]
        if needle:
            chosen = [u for u in chosen if self._matches(text, u.name, u.display_name, u.email)]
        base = str(request.base_url).rstrip("/") + self.context_path
        return JSONResponse(self._page(request, chosen, lambda u: u.as_application_user(base)))

    async def _create_user(self, request: Request) -> Response:
        self._caller(request, needs="ADMIN")
        query = request.query_params
        name = self._valid_name(self._required(query, "name"))
        display_name = self._required(query, "displayName")
        email = self._required(query, "emailAddress")
        notify = query.get("notify", "false").lower() == "true"
        password = query.get("password", "")
        if not notify and not password:
            raise BitbucketRefusal(
                400,
                "A password must be provided when the user is not notified.",
                INVALID_ARGUMENT,
                "password",
            )
        if name.casefold() in self.users:
            raise BitbucketRefusal(
                409, f"A user with the name '{name}' already exists.", DUPLICATE_USER, "name"
            )
        add_default = query.get("addToDefaultGroup", "true").lower() == "true"
        if add_default and self.group_permissions.get(self.default_group.casefold()):
            self._refuse_past_the_licence(1)
        self.seed_user(
            name,
            email,
            display_name,
            active=False,
            password=password or secrets.token_urlsafe(16),
            groups=[self.default_group] if add_default else (),
        )
        return Response(status_code=204)

    async def _update_user(self, request: Request) -> Response:
        self._caller(request, needs="ADMIN")
        body = await self._json(request)
        user = self._user(self._required(body, "name"))
        # Whether Bitbucket keeps a field the body leaves out is UNCONFIRMED; the emulator
        # takes the stricter reading and wants both.
        display_name = self._required(body, "displayName")
        email = self._required(body, "email")
        user.display_name = display_name
        user.email = email
        return JSONResponse(user.as_json(self.created_timestamps))

    async def _delete_user(self, request: Request) -> Response:
        caller = self._caller(request, needs="ADMIN")
        user = self._user(self._required(request.query_params, "name"))
        if user.name.casefold() == caller.username:
            raise BitbucketRefusal(409, "You cannot delete yourself.", CANNOT_DEMOTE_SELF)
        del self.users[user.name.casefold()]
        self.user_permissions.pop(user.name.casefold(), None)
        return JSONResponse(user.as_json(self.created_timestamps))

    async def _rename_user(self, request: Request) -> Response:
        self._caller(request, needs="ADMIN")
        body = await self._json(request)
        user = self._user(self._required(body, "name"))
        new_name = self._valid_name(self._required(body, "newName"), "newName")
        return JSONResponse(self._rename(user, new_name).as_json(self.created_timestamps))

    def _rename(self, user: EmulatedUser, new_name: str) -> EmulatedUser:
        old_key, new_key = user.name.casefold(), new_name.casefold()
        if new_key != old_key and new_key in self.users:
            raise BitbucketRefusal(
                409, f"A user with the name '{new_name}' already exists.", DUPLICATE_USER
            )
        del self.users[old_key]
        user.name = new_name
        self.users[new_key] = user
        if old_key in self.user_permissions:
            self.user_permissions[new_key] = self.user_permissions.pop(old_key)
        for token, owner in list(self.tokens.items()):
            if owner == old_key:
                self.tokens[token] = new_key
        return user

    # -- handlers: groups and memberships -------------------------------------------------

    async def _list_groups(self, request: Request) -> Response:
        self._caller(request, needs="LICENSED_USER")
        text = request.query_params.get("filter", "")
        chosen = sorted(
            (g.name for g in self.groups.values() if self._matches(text, g.name)),
            key=str.casefold,
        )
        return JSONResponse(
            self._page(request, [{"name": name, "deletable": True} for name in chosen])
        )

    async def _list_group_names(self, request: Request) -> Response:
        """`GET /groups`: a page of bare group names (strings), for any licensed user."""
        self._caller(request, needs="LICENSED_USER")
        text = request.query_params.get("filter", "")
        names = sorted(
            (g.name for g in self.groups.values() if self._matches(text, g.name)),
            key=str.casefold,
        )
        return JSONResponse(self._page(request, names))

    async def _create_group(self, request: Request) -> Response:
        self._caller(request, needs="ADMIN")
        name = self._valid_name(self._required(request.query_params, "name"))
        if name.casefold() in self.groups:
            raise BitbucketRefusal(
                409, f"A group named '{name}' already exists.", DUPLICATE_GROUP, "name"
            )
        self.seed_group(name)
        return JSONResponse({"name": name, "deletable": True})

    async def _delete_group(self, request: Request) -> Response:
        self._caller(request, needs="ADMIN")
        group = self._group(self._required(request.query_params, "name"))
        key = group.name.casefold()
        del self.groups[key]
        self.group_permissions.pop(key, None)
        for user in self._sorted_members(key):
            user.groups.discard(key)
        return JSONResponse({"name": group.name, "deletable": True})

    async def _members_of_group(self, request: Request) -> Response:
        self._caller(request, needs="LICENSED_USER")
        # A group that does not exist has no members: 200 and an empty page, as declared.
        key = self._required(request.query_params, "context").casefold()
        members = self._sorted_members(key) if key in self.groups else []
        return JSONResponse(
            self._page(request, self._filtered_users(request, members), self._detailed)
        )

    async def _license(self, request: Request) -> Response:
        """`GET /admin/license` (RestBitbucketLicense, as generated clients describe it; the
        path and the admin requirement are UNCONFIRMED against a live server)."""
        self._caller(request, needs="ADMIN")
        unlimited = self.licensed_users is None
        return JSONResponse(
            {
                "creationDate": 1_700_000_000_000,
                "purchaseDate": 1_700_000_000_000,
                "expiryDate": 4_100_000_000_000,
                "maximumNumberOfUsers": -1 if unlimited else self.licensed_users,
                "unlimitedNumberOfUsers": unlimited,
                "serverId": "BSAN-DBOX-0000-0001",
                "supportEntitlementNumber": "SEN-000000",
                "status": {
                    "serverId": "BSAN-DBOX-0000-0001",
                    "currentNumberOfUsers": self.licensed_count(),
                },
            }
        )

    async def _groups_of_user(self, request: Request) -> Response:
        # The spec's text for this endpoint is copied from the group variant; the payload is
        # groups (reference §3.4), which is what the product returns in practice.
        self._caller(request, needs="LICENSED_USER")
        # An account that does not exist is in no group: 200 and an empty page, as declared
        # (200 and 401 only, no 404).
        user = self.users.get(self._required(request.query_params, "context").casefold())
        text = request.query_params.get("filter", "")
        names = sorted(
            (
                self.groups[k].name
                for k in (user.groups if user else ())
                if self._matches(text, self.groups[k].name)
            ),
            key=str.casefold,
        )
        return JSONResponse(
            self._page(request, [{"name": name, "deletable": True} for name in names])
        )

    def licensed_count(self) -> int:
        """How many accounts hold a licence (any global permission, directly or by group)."""
        with self._lock:
            users = self.users
            seen = (
                users.reshaped,
                len(users),
                self.user_permissions.changes,
                self.group_permissions.changes,
                self._memberships.changes,
            )
            if self._count is None or self._count[0] != seen:
                granted = self.user_permissions
                direct = sum(1 for k, level in granted.items() if level and k in users)
                by_id = self._by_id
                through_groups = {
                    key
                    for group, level in self.group_permissions.items()
                    if level
                    for uid in self._memberships.ids.get(group, ())
                    if not granted.get(key := by_id[uid].name.casefold())
                    and users.get(key) is by_id[uid]
                }
                self._count = (seen, direct + len(through_groups))
            return self._count[1]

    def _refuse_past_the_licence(self, newly_licensed: int) -> None:
        if self.licensed_users is None or newly_licensed <= 0:
            return
        if self.licensed_count() + newly_licensed > self.licensed_users:
            # The wording is UNCONFIRMED; the status (403) is the reference's.
            raise BitbucketRefusal(
                403,
                f"This operation would exceed the licensed user limit of "
                f"{self.licensed_users} users.",
                LICENCE_LIMIT,
            )

    def _add(self, username: str, groups: list[str]) -> None:
        # All or nothing, as the product: every name is checked before anything changes.
        user = self._user(username)
        keys = [self._group(g).name.casefold() for g in groups]
        licensing = any(self.group_permissions.get(k) for k in keys)
        if licensing and self.effective_permission(user.name) is None:
            self._refuse_past_the_licence(1)
        user.groups.update(keys)

    def _remove(self, username: str, group: str) -> Response:
        user = self._user(username)
        key = self._group(group).name.casefold()
        if key not in user.groups and self.remove_nonmember_status == 404:
            raise BitbucketRefusal(
                404, f"User {user.name} is not a member of group {group}.", NOT_A_MEMBER
            )
        user.groups.discard(key)
        return Response(status_code=200)

    async def _add_user_to_groups(self, request: Request) -> Response:
        self._caller(request, needs="ADMIN")
        body = await self._json(request)
        groups = body.get("groups")
        if not isinstance(groups, list) or not groups:
            raise BitbucketRefusal(400, "groups must be provided.", INVALID_ARGUMENT, "groups")
        self._add(self._required(body, "user"), groups)
        return Response(status_code=200)

    async def _add_users_to_group(self, request: Request) -> Response:
        self._caller(request, needs="ADMIN")
        body = await self._json(request)
        group = self._required(body, "group")
        users = body.get("users")
        if not isinstance(users, list) or not users:
            raise BitbucketRefusal(400, "users must be provided.", INVALID_ARGUMENT, "users")
        self._group(group)
        for username in users:
            self._user(username)
        for username in users:
            self._add(username, [group])
        return Response(status_code=200)

    async def _add_user_to_group_deprecated(self, request: Request) -> Response:
        self._caller(request, needs="ADMIN")
        body = await self._json(request)  # context = user, itemName = group
        self._add(self._required(body, "context"), [self._required(body, "itemName")])
        return Response(status_code=200)

    async def _add_group_user_deprecated(self, request: Request) -> Response:
        self._caller(request, needs="ADMIN")
        body = await self._json(request)  # context = group, itemName = user
        self._add(self._required(body, "itemName"), [self._required(body, "context")])
        return Response(status_code=200)

    async def _remove_user_from_group(self, request: Request) -> Response:
        self._caller(request, needs="ADMIN")
        body = await self._json(request)  # context = user, itemName = group
        return self._remove(self._required(body, "context"), self._required(body, "itemName"))

    async def _remove_group_user_deprecated(self, request: Request) -> Response:
        self._caller(request, needs="ADMIN")
        body = await self._json(request)  # context = group, itemName = user
        return self._remove(self._required(body, "itemName"), self._required(body, "context"))

    # -- handlers: global permissions -----------------------------------------------------

    def _permission_param(self, request: Request) -> str:
        permission = self._required(request.query_params, "permission")
        if permission not in GLOBAL_PERMISSIONS:
            raise BitbucketRefusal(
                400,
                f"'{permission}' is not a global permission "
                f"(known: {', '.join(GLOBAL_PERMISSIONS)}).",
                INVALID_ARGUMENT,
                "permission",
            )
        return permission

    def _may_change(self, caller: Caller, current: str | None, wanted: str | None) -> None:
        """A caller may not touch a level above their own, nor grant one above their own."""
        mine = GLOBAL_PERMISSIONS.index(self.effective_permission(caller.username) or "ADMIN")
        for level in (current, wanted):
            if level and GLOBAL_PERMISSIONS.index(level) > mine:
                raise BitbucketRefusal(
                    409,
                    "You cannot modify a permission level higher than your own.",
                    CANNOT_DEMOTE_SELF,
                )

    async def _list_user_permissions(self, request: Request) -> Response:
        self._caller(request, needs="ADMIN")
        text = request.query_params.get("filter", "")
        needle = text.casefold()
        granted = self.user_permissions
        rows: list[EmulatedUser]
        if not needle:
            rows = self._sorted_licensed()[1]
        elif "\0" in needle:
            rows = [
                user
                for user in self._sorted_licensed()[1]
                if self._matches(text, user.name, user.display_name, user.email)
            ]
        else:
            # The index finds the few accounts the text matches (in any of the three fields).
            found = self._by_filter.search(needle)
            rows = sorted(
                (u for u in found if u.name.casefold() in granted), key=lambda u: u.name.casefold()
            )
        return JSONResponse(
            self._page(
                request,
                rows,
                lambda u: {"user": self._detailed(u), "permission": granted[u.name.casefold()]},
            )
        )

    async def _set_user_permission(self, request: Request) -> Response:
        caller = self._caller(request, needs="ADMIN")
        permission = self._permission_param(request)
        names = request.query_params.getlist("name")
        if not names:
            raise BitbucketRefusal(400, "name must be provided.", INVALID_ARGUMENT, "name")
        users = [self._user(name) for name in names]
        for user in users:
            key = user.name.casefold()
            if key == caller.username:
                raise BitbucketRefusal(
                    409, "You cannot modify your own permission level.", CANNOT_DEMOTE_SELF
                )
            self._may_change(caller, self.user_permissions.get(key), permission)
        self._refuse_past_the_licence(
            sum(1 for u in users if self.effective_permission(u.name) is None)
        )
        for user in users:
            self.user_permissions[user.name.casefold()] = permission
        return Response(status_code=204)

    async def _revoke_user_permissions(self, request: Request) -> Response:
        caller = self._caller(request, needs="ADMIN")
        user = self._user(self._required(request.query_params, "name"))
        key = user.name.casefold()
        if key == caller.username:
            raise BitbucketRefusal(
                409, "You cannot revoke your own permissions.", CANNOT_DEMOTE_SELF
            )
        self._may_change(caller, self.user_permissions.get(key), None)
        self.user_permissions.pop(key, None)
        return Response(status_code=204)

    async def _list_group_permissions(self, request: Request) -> Response:
        self._caller(request, needs="ADMIN")
        text = request.query_params.get("filter", "")
        rows = [
            {"group": {"name": self.groups[key].name, "deletable": True}, "permission": level}
            for key, level in sorted(self.group_permissions.items())
            if self._matches(text, self.groups[key].name)
        ]
        return JSONResponse(self._page(request, rows))

    async def _set_group_permission(self, request: Request) -> Response:
        caller = self._caller(request, needs="ADMIN")
        permission = self._permission_param(request)
        names = request.query_params.getlist("name")
        if not names:
            raise BitbucketRefusal(400, "name must be provided.", INVALID_ARGUMENT, "name")
        groups = [self._group(name) for name in names]
        for group in groups:
            self._may_change(caller, self.group_permissions.get(group.name.casefold()), permission)
        for group in groups:
            self.group_permissions[group.name.casefold()] = permission
        return Response(status_code=204)

    async def _revoke_group_permissions(self, request: Request) -> Response:
        caller = self._caller(request, needs="ADMIN")
        group = self._group(self._required(request.query_params, "name"))
        self._may_change(caller, self.group_permissions.get(group.name.casefold()), None)
        self.group_permissions.pop(group.name.casefold(), None)
        return Response(status_code=204)
