"""An emulator of the Jira Data Center REST v2 user and group endpoints, for tests and the demo.

`JiraEmulator` serves, under an optional context path, the calls usersync makes against Jira
DC (`/rest/api/2/user`, `/user/search`, `/user/list`, `/group`, `/group/member`,
`/group/user`, `/groups/picker`, `/myself`, `/mypermissions`, `/serverInfo`,
`/applicationrole`), user properties (`/user/properties`), and projects and components with
their leads (`/project`, `/project/{key}/components`, `/component/{id}`), each under
`/rest/api/latest` too, with the product's envelopes, status codes and error bodies as documented in
shared/reference/atlassian-rest.md sections 1, 5 and 6: names are matched case-insensitively
and stored in lower case, user keys (`JIRAUSER10100`) survive renames, `/user/search` returns a
bare array truncated to its result window, `/user/list` exists from 10.3 only (each supported
version as its API description declares it: `SUPPORTED_VERSIONS`, newest by default), adding
an existing member is a 400, surrounding blanks of names,
e-mails and display names are trimmed, and names Jira refuses (`<`, `>`, `&` in usernames;
control and bidirectional-override characters, more than 255 characters) are a 400 in Jira's
error envelope. `rename_user` renames an account as an administrator would in Jira's user
browser (the key stays). Deactivating or deleting a project or component lead is refused
(400) until the project or component has another lead (Jira's user service validates both;
the stricter of the readings in the reference). Application roles and their licence seats are served at `/applicationrole` (and
`/applicationrole/{key}`): a role's seats are taken by the active members of the groups that
grant it (jira-software-users for Jira Software), each counted once. The seat limit is
unlimited, and licensing unmodelled, until a test sets one (`JiraEmulator(seats=N)`,
`set_seats`, `add_application_role`); from then on a new account joins its roles' default
groups while a seat is free, is created without application access when none is, and adding an
active account to a group of a full role is refused with a 400 naming the licence (Jira's own
status and text for that are UNCONFIRMED). Reactivating an account over the limit is not
refused (what Jira does then is UNCONFIRMED). Unknown paths answer 404 in Jira's error
envelope, and a trailing slash is ignored as Jersey does. Basic auth and bearer PATs are
checked; user and group administration needs an administrator. Administrators are who they are
in Jira: members of a group granted the Jira Administrators (`ADMINISTER`) or Jira System
Administrators (`SYSTEM_ADMIN`) global permission, which Jira grants to groups only; a fresh
site grants both to jira-administrators, where its first administrator sits, and
`grant_global_permission` grants them to other groups. The app is wrapped in
`Instrumented`, so tests read the request log and inject 429s (with Jira's `X-RateLimit-*`
headers), 5xx and dropped connections. Where the reference marks behaviour UNCONFIRMED, the
emulator takes the stricter reading (e.g. a PUT that changes nothing is a 400), so a client
that copes with it copes with the product.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from usersync_sandbox.faults import Instrumented

API_PREFIX = "/rest/api/2"
#: Jira serves every REST v2 resource under `/rest/api/latest` as well (clients such as the
#: jira package use that spelling for user and group administration).
API_PREFIXES = (API_PREFIX, "/rest/api/latest")
FIRST_PROJECT_ID = 10000
FIRST_COMPONENT_ID = 10000
#: Entity property keys are at most 255 characters (Jira Cloud docs, reference §1.5).
MAX_PROPERTY_KEY_LENGTH = 255
#: The longest entity property value, in characters of its JSON text. Jira DC's limit is
#: UNCONFIRMED (reference §1.5); 32768 is Jira Cloud's documented limit, and Jira's server code
#: refuses a longer value with FieldTooLongJsonPropertyException ("Value specified for field
#: 'value' is too long: N > M"), answered here as a 400.
MAX_PROPERTY_VALUE_LENGTH = 32768
FIRST_USER_ID = 10000
#: The Jira versions usersync supports, each emulated as its API description declares it
#: (../shared/reference/specs: the 9.12 WADL, the 10.3.24 and 11.3.8 OpenAPI); the newest is
#: the default.
SUPPORTED_VERSIONS = ("9.12.0", "10.3.24", "11.3.8")
DEFAULT_VERSION = SUPPORTED_VERSIONS[-1]
#: The result window of /user/search: 1000 (JRASERVER-65089; the 9.12 and 10.3 descriptions:
#: "The maximum allowed value is 1000"), 100 from 11 (the 11.3 description: "The maximum
#: allowed value is 100 (The combination of maxResults and startAt is limited to the first
#: 100 ..."); startAt + maxResults never reaches past the window.
SEARCH_WINDOW_BEFORE_11 = 1000
SEARCH_WINDOW_FROM_11 = 100
SMALL_SEARCH_WINDOW_SINCE = (11,)
USER_LIST_SINCE = (10, 3)
#: `PUT /project/{key}` answers 201 in the 9.12 WADL, 200 in the 10.3 and 11.3 descriptions.
PROJECT_UPDATE_200_SINCE = (10,)
USER_LIST_DEFAULT_PAGE = 2000
#: `jira.ajax.autocomplete.limit`, the default cap of /groups/picker.
GROUP_PICKER_LIMIT = 20
FORBIDDEN_USERNAME_CHARACTERS = "<>&"
#: Jira's user and group name columns are 255 characters wide.
MAX_NAME_LENGTH = 255
#: Bidirectional embedding/override and isolate controls (U+202A-U+202E, U+2066-U+2069).
BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))

NOT_AUTHENTICATED = "You are not authenticated. Authentication required to perform this operation."
NOT_USER_ADMIN = "You do not have the permission to perform this operation (error.no-permission)."
NOT_GROUP_ADMIN = (
    "You must be a Jira administrator to manage groups (rest.authorization.admin.required)."
)
NOTHING_TO_CHANGE = "error.no.value.found.to.be.changed"
USER_EXISTS = "A user with that username already exists."
GROUP_EXISTS = "A group or user with this name already exists."

#: The global permissions that make an administrator; SYSTEM_ADMIN includes ADMINISTER.
ADMIN_PERMISSIONS = ("ADMINISTER", "SYSTEM_ADMIN")
#: The group a fresh Jira (7+) grants both of them to, with its first administrator in it.
ADMIN_GROUP = "jira-administrators"

#: The application role a Jira Software site licenses, and the group that grants it (also the
#: group new accounts join), as on a fresh Jira Software site.
DEFAULT_ROLE = "jira-software"
DEFAULT_ROLE_NAME = "Jira Software"
DEFAULT_ROLE_GROUP = "jira-software-users"
#: How `/applicationrole` spells an unlimited role's seat numbers. UNCONFIRMED: the DC 11.3
#: spec (jira.js `ApplicationRole`) types them as plain numbers without saying; Jira's licence
#: API uses -1 for "unlimited users", taken here, next to `hasUnlimitedSeats: true`.
UNLIMITED_SEATS = -1
#: The refusal of a group add that would take a licence seat none is left for. UNCONFIRMED:
#: the status and text Jira gives are not in the reference; a 400 in Jira's error envelope,
#: naming the licence, is the plausible shape.
SEAT_LIMIT_REACHED = (
    "Cannot add user '{user}' to group '{group}': it grants {role}, and the user limit of "
    "your {role} license ({seats}) has been reached."
)


def parse_version(version: str) -> tuple[int, ...]:
    """`"10.3.1"` → `(10, 3, 1)`; non-numeric parts stop the parse (`"9.12.0-SNAPSHOT"`)."""
    numbers: list[int] = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def jira_error(status: int, message: str = "", errors: dict[str, str] | None = None) -> Response:
    """Jira's error envelope: `{"errorMessages": [...], "errors": {field: message}}`."""
    return JSONResponse(
        {"errorMessages": [message] if message else [], "errors": errors or {}}, status_code=status
    )


def jira_rate_limit_headers(retry_after: float, *, limit: int = 100, fill_rate: int = 10) -> dict:
    """The headers of a rate-limited Jira DC answer (token bucket; see reference §1.7)."""
    seconds = int(retry_after) if float(retry_after).is_integer() else retry_after
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Interval-Seconds": "1",
        "X-RateLimit-FillRate": str(fill_rate),
        "retry-after": str(seconds),
    }


def name_problem(name: str, *, username: bool) -> str | None:
    """Why Jira refuses this user (`username=True`) or group name; None if it takes it.

    `<`, `>` and `&` in usernames: reference §1.8 (a community answer). Control characters,
    bidirectional controls and the length: what Jira answers exactly is UNCONFIRMED; the
    emulator takes the stricter reading and refuses them.
    """
    if username and any(ch in name for ch in FORBIDDEN_USERNAME_CHARACTERS):
        return "The username must not contain '<', '>' or '&'."
    if len(name) > MAX_NAME_LENGTH:
        return f"The name must not be longer than {MAX_NAME_LENGTH} characters."
    if any(unicodedata.category(ch) == "Cc" or ch in BIDI_CONTROLS for ch in name):
        return "The name must not contain control characters."
    return None


def _java_boolean(value: str | None, default: bool) -> bool:
    # JAX-RS parses booleans with Boolean.valueOf: "true" in any case is true, anything else false.
    if value is None:
        return default
    return value.strip().lower() == "true"


@dataclass
class JiraUser:
    """One account as the emulator stores it (names in lower case, like Jira)."""

    id: int
    key: str
    name: str
    email: str
    display_name: str
    active: bool = True
    password: str = ""
    #: entity properties (`/user/properties`): key → JSON value
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class JiraProject:
    """A project: only what user administration touches (its lead)."""

    id: int
    key: str
    name: str
    lead_key: str


@dataclass
class JiraComponent:
    """A project component; `lead_key` None when it has no lead."""

    id: int
    project_key: str
    name: str
    lead_key: str | None = None
    assignee_type: str = "PROJECT_DEFAULT"


@dataclass
class JiraGroup:
    name: str
    #: member user keys, so that a rename keeps the memberships
    member_keys: set[str] = field(default_factory=set)


@dataclass
class ApplicationRole:
    """An application role (Jira Software, Jira Service Management, ...) and its licence seats.

    A role is granted through groups; its seats are taken by the active members of any of
    them, each counted once. `seats` None is an unlimited licence.
    """

    key: str
    name: str
    #: lower-case names of the groups that grant the role
    groups: set[str]
    #: the groups an account created with this role joins
    default_groups: set[str]
    #: whether an account created without `applicationKeys` gets this role
    selected_by_default: bool = False
    seats: int | None = None


class BadParameter(ValueError):
    """A query parameter that does not parse; answered with 400."""


class JiraEmulator:
    """Jira DC's user and group REST API over an in-memory directory.

    Args:
        version: the Jira version `/serverInfo` reports; it switches the `/user/search` window
            (1000 before 11.0, 100 from 11.0) and whether `/user/list` exists (10.3+).
        context_path: e.g. "/jira"; every path is served under it.
        admin: username and password of the seeded administrator.
        max_page_size: the largest page `/group/member` and `/user/search` return.
        max_list_page_size: the largest page `/user/list` returns.
        search_window: overrides the version's `/user/search` result window.
        rate_limit_headers_always: send `X-RateLimit-*` and `retry-after: 0` on every
            authenticated answer, as Jira does once an admin turns rate limiting on.
        seats: the Jira Software licence's user limit (see `set_seats`); None, the default,
            leaves licensing unmodelled: unlimited, and new accounts join no group.
    """

    def __init__(
        self,
        version: str = DEFAULT_VERSION,
        context_path: str = "",
        admin: tuple[str, str] = ("admin", "admin"),
        max_page_size: int = 50,
        *,
        max_list_page_size: int = USER_LIST_DEFAULT_PAGE,
        search_window: int | None = None,
        rate_limit_headers_always: bool = False,
        seats: int | None = None,
    ) -> None:
        self.version = version
        self.version_numbers = parse_version(version)
        self.context_path = "/" + context_path.strip("/") if context_path.strip("/") else ""
        self.max_page_size = max_page_size
        self.max_list_page_size = max_list_page_size
        default_window = (
            SEARCH_WINDOW_FROM_11
            if self.version_numbers >= SMALL_SEARCH_WINDOW_SINCE
            else SEARCH_WINDOW_BEFORE_11
        )
        self.search_window = search_window or default_window
        self.rate_limit_headers_always = rate_limit_headers_always
        self._lock = threading.RLock()
        self._users: dict[str, JiraUser] = {}  # by key
        self._keys_by_name: dict[str, str] = {}  # lower-case name → key
        self._groups: dict[str, JiraGroup] = {}  # lower-case name → group
        self._tokens: dict[str, str] = {}  # token → user key
        #: global permission → the groups it is granted to (Jira grants them to groups only)
        self.global_permissions: dict[str, set[str]] = {p: {ADMIN_GROUP} for p in ADMIN_PERMISSIONS}
        self._next_id = FIRST_USER_ID
        self._projects: dict[str, JiraProject] = {}  # upper-case key → project
        self._components: dict[int, JiraComponent] = {}  # id → component
        self._next_project_id = FIRST_PROJECT_ID
        self._next_component_id = FIRST_COMPONENT_ID
        #: application roles by key; the licence seats live here
        self.application_roles: dict[str, ApplicationRole] = {
            DEFAULT_ROLE: ApplicationRole(
                DEFAULT_ROLE,
                DEFAULT_ROLE_NAME,
                groups={DEFAULT_ROLE_GROUP},
                default_groups={DEFAULT_ROLE_GROUP},
                selected_by_default=True,
            )
        }
        # A stock site has its default role's group from the start (Jira Software's setup).
        self._groups[DEFAULT_ROLE_GROUP] = JiraGroup(DEFAULT_ROLE_GROUP)
        #: whether new accounts join the default groups of their roles, as Jira does for a
        #: user created without applicationKeys (so adding one there again answers 400)
        self.grants_application_access = True
        self.seed_user(
            admin[0], f"{admin[0]}@example.com", "Administrator", password=admin[1], admin=True
        )
        if seats is not None:
            self.set_seats(DEFAULT_ROLE, seats)
        routed = Starlette(
            routes=self._routes(),
            exception_handlers={404: _not_found, 405: _method_not_allowed},
        )
        self.app = Instrumented(
            _TrailingSlashTolerant(routed),
            rate_limit_headers=jira_rate_limit_headers,
            error_body=lambda status, message: {"errorMessages": [message], "errors": {}},
        )

    # -- seeding and state, for tests --------------------------------------------------------

    def seed_user(
        self,
        username: str,
        email: str,
        display_name: str,
        active: bool = True,
        password: str | None = None,
        admin: bool = False,
    ) -> str:
        """Add an account directly (no HTTP); return its key. `admin` puts it in
        jira-administrators (see `grant_admin`)."""
        with self._lock:
            if username.lower() in self._keys_by_name:
                raise ValueError(f"jira emulator: user {username!r} exists already")
            key = self._add_user(
                username, email, display_name, active, password or secrets.token_hex(8)
            ).key
            if admin:
                self.grant_admin(username)
            return key

    def seed_group(self, name: str, members: Iterable[str] = ()) -> None:
        """Add a group (if missing) with these members (usernames that must exist)."""
        with self._lock:
            group = self._groups.setdefault(name.lower(), JiraGroup(name.lower()))
            for username in members:
                user = self._user_by_name(username)
                if user is None:
                    raise ValueError(f"jira emulator: no user {username!r} to put in {name!r}")
                group.member_keys.add(user.key)

    def seed_project(self, key: str, name: str, lead: str) -> str:
        """Add a project led by `lead` (a username that must exist); return its key (upper case,
        as Jira keeps project keys)."""
        with self._lock:
            user = self._user_by_name(lead)
            if user is None:
                raise ValueError(f"jira emulator: no user {lead!r} to lead project {key!r}")
            if key.upper() in self._projects:
                raise ValueError(f"jira emulator: project {key!r} exists already")
            project = JiraProject(self._next_project_id, key.upper(), name, user.key)
            self._next_project_id += 1
            self._projects[project.key] = project
            return project.key

    def seed_component(self, project: str, name: str, lead: str | None = None) -> str:
        """Add a component to `project` (a key), led by `lead` if given; return its id."""
        with self._lock:
            found = self._projects.get(project.upper())
            if found is None:
                raise ValueError(f"jira emulator: no project {project!r} for component {name!r}")
            lead_key = None
            if lead is not None:
                user = self._user_by_name(lead)
                if user is None:
                    raise ValueError(f"jira emulator: no user {lead!r} to lead component {name!r}")
                lead_key = user.key
            component = JiraComponent(self._next_component_id, found.key, name, lead_key)
            self._next_component_id += 1
            self._components[component.id] = component
            return str(component.id)

    def project_lead(self, key: str) -> str | None:
        """The username leading project `key`, or None when there is no such project."""
        with self._lock:
            project = self._projects.get(key.upper())
            return self._users[project.lead_key].name if project else None

    def component_lead(self, component_id: str) -> str | None:
        """The username leading component `component_id` (None: no lead or no component)."""
        with self._lock:
            component = self._components.get(int(component_id))
            if component is None or component.lead_key is None:
                return None
            return self._users[component.lead_key].name

    def user_properties(self, username: str) -> dict[str, Any]:
        """A copy of the entity properties of account `username` (key → JSON value)."""
        with self._lock:
            user = self._user_by_name(username)
            if user is None:
                raise ValueError(f"jira emulator: no user {username!r}")
            return json.loads(json.dumps(user.properties))

    def grant_global_permission(self, permission: str, group: str) -> None:
        """Grant a global permission (e.g. ADMINISTER, SYSTEM_ADMIN) to an existing group."""
        with self._lock:
            if group.lower() not in self._groups:
                raise ValueError(f"jira emulator: no group {group!r} to grant {permission} to")
            self.global_permissions.setdefault(permission, set()).add(group.lower())

    def grant_admin(self, username: str) -> None:
        """Make an account an administrator the most direct way Jira has: as global
        permissions go to groups only, by adding it to jira-administrators (created if missing;
        the grants of that group are left as they are)."""
        self.seed_group(ADMIN_GROUP, members=[username])

    def seed_admin_group(
        self, name: str, members: Iterable[str] = (), *, permission: str = "SYSTEM_ADMIN"
    ) -> None:
        """A group granted SYSTEM_ADMIN (or another global permission), with these members."""
        with self._lock:
            self.seed_group(name, members)
            self.grant_global_permission(permission, name)

    def set_seats(self, role: str, seats: int | None) -> None:
        """Set the user limit of application role `role` (None: unlimited) and model licensing
        from now on, as Jira does: the role's groups are created if missing (empty: the
        seeded administrator takes no seat unless a test puts it there); a new account
        joins the default groups of the roles it gets while they have a free seat (beyond,
        Jira creates it without application access: it takes no seat and cannot log in); and
        adding an active account to a group of a full role is refused. Accounts seeded or put
        in groups directly (`seed_user`, `seed_group`) are not checked, so a test can set up a
        site already over its limit."""
        with self._lock:
            found = self.application_roles.get(role)
            if found is None:
                raise ValueError(
                    f"jira emulator: no application role {role!r} "
                    f"(known: {', '.join(sorted(self.application_roles))})"
                )
            if seats is not None and seats < 0:
                raise ValueError(f"jira emulator: {seats} seats for {role!r}; give 0 or more")
            found.seats = seats
            for group in found.groups:
                self._groups.setdefault(group, JiraGroup(group))
            self.grants_application_access = True

    def add_application_role(
        self,
        key: str,
        name: str,
        groups: Iterable[str],
        *,
        default_groups: Iterable[str] | None = None,
        selected_by_default: bool = False,
        seats: int | None = None,
    ) -> None:
        """Define another application role (e.g. jira-servicedesk) granted through `groups`
        (created if missing); `default_groups` defaults to all of them. Models licensing from
        now on, as `set_seats` does."""
        with self._lock:
            names = {g.strip().lower() for g in groups}
            defaults = {g.strip().lower() for g in default_groups} if default_groups else names
            self.application_roles[key] = ApplicationRole(
                key, name, names, defaults, selected_by_default
            )
            self.set_seats(key, seats)

    def role_users(self, role: str) -> set[str]:
        """Usernames taking a seat of application role `role` (active members of its groups)."""
        with self._lock:
            return {self._users[k].name for k in self._seat_holders(self.application_roles[role])}

    def is_admin(self, username: str) -> bool:
        """Whether the account holds ADMINISTER or SYSTEM_ADMIN through one of its groups."""
        with self._lock:
            user = self._user_by_name(username)
            return user is not None and self._holds(user, "ADMINISTER")

    def rename_user(self, username: str, new_name: str) -> None:
        """Rename an account directly, as an administrator would in Jira (the key stays)."""
        with self._lock:
            user = self._user_by_name(username)
            if user is None:
                raise ValueError(f"jira emulator: no user {username!r} to rename")
            if self._user_by_name(new_name) not in (None, user):
                raise ValueError(f"jira emulator: user {new_name!r} exists already")
            del self._keys_by_name[user.name]
            user.name = new_name.strip().lower()
            self._keys_by_name[user.name] = user.key

    def add_token(self, token: str, username: str) -> None:
        """Register a personal access token acting as `username`."""
        with self._lock:
            user = self._user_by_name(username)
            if user is None:
                raise ValueError(f"jira emulator: no user {username!r} for a token")
            self._tokens[token] = user.key

    def user(self, username: str) -> JiraUser | None:
        """A copy of the account called `username` (any case), or None."""
        with self._lock:
            user = self._user_by_name(username)
            return replace(user, properties=dict(user.properties)) if user else None

    def user_by_key(self, key: str) -> JiraUser | None:
        with self._lock:
            user = self._users.get(key)
            return replace(user, properties=dict(user.properties)) if user else None

    @property
    def usernames(self) -> list[str]:
        with self._lock:
            return sorted(user.name for user in self._users.values())

    @property
    def group_names(self) -> list[str]:
        with self._lock:
            return sorted(self._groups)

    def group_members(self, group: str) -> set[str] | None:
        """Usernames in `group`, or None when the group does not exist."""
        with self._lock:
            found = self._groups.get(group.lower())
            if found is None:
                return None
            return {self._users[key].name for key in found.member_keys}

    # -- internals ---------------------------------------------------------------------------

    def _add_user(
        self, name: str, email: str, display_name: str, active: bool, password: str
    ) -> JiraUser:
        user_id = self._next_id
        self._next_id += 1
        # Since Jira 8.4 new accounts get database-id keys, never derived from the name.
        user = JiraUser(
            id=user_id,
            key=f"JIRAUSER{user_id}",
            name=name.lower(),
            email=email,
            display_name=display_name,
            active=active,
            password=password,
        )
        self._users[user.key] = user
        self._keys_by_name[user.name] = user.key
        return user

    def _user_by_name(self, name: str | None) -> JiraUser | None:
        if not name:
            return None
        key = self._keys_by_name.get(name.lower())
        return self._users.get(key) if key else None

    def _holds(self, user: JiraUser, permission: str) -> bool:
        """Whether one of the user's groups is granted `permission` (SYSTEM_ADMIN implies
        ADMINISTER, as in Jira)."""
        implied = {permission, "SYSTEM_ADMIN"} if permission == "ADMINISTER" else {permission}
        granted = set().union(*(self.global_permissions.get(p, set()) for p in implied))
        return any(user.key in self._groups[g].member_keys for g in granted if g in self._groups)

    def _seat_holders(self, role: ApplicationRole) -> set[str]:
        """Keys of the accounts taking a seat of `role`: active members of its groups, once
        each (Jira counts users, not memberships; deactivated accounts take no seat)."""
        keys: set[str] = set()
        for name in role.groups:
            group = self._groups.get(name)
            if group is not None:
                keys |= {k for k in group.member_keys if self._users[k].active}
        return keys

    def _free_seats(self, role: ApplicationRole) -> int | None:
        """Seats left in `role` (negative when over the limit); None when unlimited."""
        if role.seats is None:
            return None
        return role.seats - len(self._seat_holders(role))

    def _roles_granted_to(self, user: JiraUser) -> list[ApplicationRole]:
        return [
            role
            for role in self.application_roles.values()
            if any(
                user.key in self._groups[g].member_keys for g in role.groups if g in self._groups
            )
        ]

    def _grant_default_access(self, user: JiraUser, keys: list[str] | None) -> None:
        """Put a new account in the default groups of the roles it gets (`keys`, or those
        selected by default), skipping a role with no seat left: Jira then creates the
        account without that application's access. UNCONFIRMED: that Jira creates the account
        rather than refusing the request; what it does is not in the reference."""
        if not self.grants_application_access:
            return
        roles = (
            [self.application_roles[k] for k in keys]
            if keys is not None
            else [r for r in self.application_roles.values() if r.selected_by_default]
        )
        for role in roles:
            free = self._free_seats(role)
            if free is not None and free <= 0:
                continue
            for name in role.default_groups:
                self._groups.setdefault(name, JiraGroup(name)).member_keys.add(user.key)

    def _refuse_past_seat_limit(self, user: JiraUser, group: JiraGroup) -> Response | None:
        """The 400 for adding an active account to a group that grants a full role it does
        not hold yet; None when the add takes no seat or one is free."""
        if not user.active:
            return None
        for role in self.application_roles.values():
            if group.name not in role.groups or user.key in self._seat_holders(role):
                continue
            free = self._free_seats(role)
            if free is not None and free <= 0:
                return jira_error(
                    400,
                    SEAT_LIMIT_REACHED.format(
                        user=user.name, group=group.name, role=role.name, seats=role.seats
                    ),
                )
        return None

    def _role_bean(self, role: ApplicationRole) -> dict[str, Any]:
        """An `ApplicationRole` as Jira DC shows it (jira.js server model, and the Jira DC
        example on wiki.resolution.de's licence monitoring page). `defined` is true: only
        licensed roles exist here. `remainingSeats` is the limit minus the seats taken, so it
        goes negative when a site is over its limit (UNCONFIRMED; a client should not rely on
        it staying at 0 or above)."""
        used = len(self._seat_holders(role))
        free = self._free_seats(role)
        return {
            "key": role.key,
            "groups": sorted(g for g in role.groups if g in self._groups),
            "name": role.name,
            "defaultGroups": sorted(g for g in role.default_groups if g in self._groups),
            "selectedByDefault": role.selected_by_default,
            "defined": True,
            "numberOfSeats": UNLIMITED_SEATS if role.seats is None else role.seats,
            "remainingSeats": UNLIMITED_SEATS if free is None else free,
            "userCount": used,
            "userCountDescription": "users",
            "hasUnlimitedSeats": role.seats is None,
            "platform": False,
        }

    def _routes(self) -> list[Route]:
        table = [
            ("/user", self._get_user, ["GET"]),
            ("/user", self._create_user, ["POST"]),
            ("/user", self._update_user, ["PUT"]),
            ("/user", self._delete_user, ["DELETE"]),
            ("/user/search", self._search_users, ["GET"]),
            ("/user/list", self._list_users, ["GET"]),
            ("/group", self._get_group, ["GET"]),
            ("/group", self._create_group, ["POST"]),
            ("/group", self._delete_group, ["DELETE"]),
            ("/group/member", self._group_members, ["GET"]),
            ("/group/user", self._add_member, ["POST"]),
            ("/group/user", self._remove_member, ["DELETE"]),
            ("/groups/picker", self._group_picker, ["GET"]),
            ("/myself", self._myself, ["GET"]),
            ("/mypermissions", self._my_permissions, ["GET"]),
            ("/serverInfo", self._server_info, ["GET"]),
            ("/applicationrole", self._list_application_roles, ["GET"]),
            ("/applicationrole/{key}", self._get_application_role, ["GET"]),
            ("/user/properties", self._list_user_properties, ["GET"]),
            ("/user/properties/{key}", self._get_user_property, ["GET"]),
            ("/user/properties/{key}", self._set_user_property, ["PUT"]),
            ("/user/properties/{key}", self._delete_user_property, ["DELETE"]),
            ("/project", self._list_projects, ["GET"]),
            ("/project/{key}", self._get_project, ["GET"]),
            ("/project/{key}", self._update_project, ["PUT"]),
            ("/project/{key}/components", self._project_components, ["GET"]),
            ("/component/{id}", self._get_component, ["GET"]),
            ("/component/{id}", self._update_component, ["PUT"]),
        ]
        by_path: dict[str, dict[str, Any]] = {}
        for path, handler, methods in table:
            for method in methods:
                by_path.setdefault(path, {})[method] = handler
        return [
            Route(
                self.context_path + prefix + path,
                self._dispatcher(handlers),
                methods=list(handlers),
            )
            for prefix in API_PREFIXES
            for path, handlers in by_path.items()
        ]

    def _dispatcher(self, handlers: dict[str, Any]) -> Any:
        async def endpoint(request: Request) -> Response:
            body: Any = None
            request.state.has_body = False
            if request.method in ("POST", "PUT"):
                raw = await request.body()
                request.state.has_body = bool(raw.strip())
                if raw:
                    try:
                        body = await request.json()
                    except ValueError:
                        return jira_error(400, "Unexpected character in the request body: not JSON")
            auth = self._authenticate(request)
            if isinstance(auth, Response):
                return auth
            try:
                with self._lock:
                    response = handlers[request.method](request, auth, body)
            except BadParameter as exc:
                response = jira_error(400, str(exc))
            if auth is not None and self.rate_limit_headers_always:
                response.headers.update(jira_rate_limit_headers(0, fill_rate=10))
                response.headers["X-RateLimit-Remaining"] = "99"
            return response

        return endpoint

    def _authenticate(self, request: Request) -> JiraUser | Response | None:
        """The calling account, None for anonymous, or the 401 to send."""
        header = request.headers.get("authorization", "")
        if not header:
            return None
        scheme, _, credential = header.partition(" ")
        with self._lock:
            user: JiraUser | None = None
            if scheme.lower() == "basic":
                try:
                    username, _, password = (
                        base64.b64decode(credential.strip()).decode("utf-8").partition(":")
                    )
                except (binascii.Error, UnicodeDecodeError):
                    username, password = "", ""
                found = self._user_by_name(username)
                if found and found.password and secrets.compare_digest(found.password, password):
                    user = found
            elif scheme.lower() == "bearer":
                key = self._tokens.get(credential.strip())
                user = self._users.get(key) if key else None
            if user is None or not user.active:
                response = jira_error(401, NOT_AUTHENTICATED)
                # Seraph, Jira's authenticator, says why on every refused request.
                response.headers["X-Seraph-LoginReason"] = "AUTHENTICATED_FAILED"
                response.headers["WWW-Authenticate"] = 'Basic realm="protected-area"'
                return response
            return user

    def _site(self, request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}{self.context_path}"

    def _base(self, request: Request) -> str:
        return self._site(request) + API_PREFIX

    def _user_bean(
        self, request: Request, user: JiraUser, *, groups: bool = False, roles: bool = False
    ) -> dict:
        self_url = f"{self._base(request)}/user?username={quote(user.name)}"
        bean: dict[str, Any] = {
            "self": self_url,
            "key": user.key,
            "name": user.name,
            "emailAddress": user.email,
            "avatarUrls": {
                "48x48": f"{self._site(request)}/secure/useravatar?ownerId={quote(user.key)}"
            },
            "displayName": user.display_name,
            "active": user.active,
            "deleted": False,
            "timeZone": "UTC",
            "locale": "en_US",
            "expand": "groups,applicationRoles",
        }
        if groups:
            names = sorted(g.name for g in self._groups.values() if user.key in g.member_keys)
            bean["groups"] = {
                "size": len(names),
                "items": [{"name": n, "self": self._group_url(request, n)} for n in names],
                "max-results": 1000,
            }
        if roles:
            held = sorted(self._roles_granted_to(user), key=lambda r: r.key)
            bean["applicationRoles"] = {
                "size": len(held),
                "items": [{"key": r.key, "name": r.name} for r in held],
                "max-results": 1000,
            }
        return bean

    def _group_url(self, request: Request, name: str) -> str:
        return f"{self._base(request)}/group?groupname={quote(name)}"

    def _group_bean(
        self, request: Request, group: JiraGroup, start: int = 0, end: int = 49
    ) -> dict:
        # Like Jira's GroupBean: active members only (JRASERVER-38898), `users[start:end]`
        # inclusive and at most 50, with hyphenated paging keys. `users` is an expandable
        # field: its items are listed only when the request asks (`expand=users` or
        # `expand=users[a:b]`), as Jira's expand filter does for any call answering a group
        # bean; otherwise only its size (Jira's documented example: "items": []).
        active = [self._users[k] for k in group.member_keys if self._users[k].active]
        shown: list[JiraUser] = []
        if "users" in (request.query_params.get("expand") or ""):
            shown = sorted(active, key=lambda u: u.name)[start : min(end + 1, start + 50)]
        else:
            start = 0
        return {
            "name": group.name,
            "self": self._group_url(request, group.name),
            "users": {
                "size": len(active),
                "items": [self._user_bean(request, u) for u in shown],
                "max-results": 50,
                "start-index": start,
                "end-index": start + max(len(shown) - 1, 0),
            },
            "expand": "users",
        }

    def _target_user(self, request: Request) -> JiraUser | Response:
        """The user a `?username=` or `?key=` call is about, or its 404/400."""
        username = request.query_params.get("username")
        key = request.query_params.get("key")
        if not username and not key:
            return jira_error(
                400, "Either the 'username' or the 'key' query parameter is required."
            )
        user = self._user_by_name(username) if username else self._users.get(key or "")
        if user is None:
            return jira_error(404, f"The user named '{username or key}' does not exist")
        return user

    # -- handlers (called under the lock) ----------------------------------------------------

    def _get_user(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if me is None:
            return jira_error(401, NOT_AUTHENTICATED)
        user = self._target_user(request)
        if isinstance(user, Response):
            return user
        expand = _expanded(request)
        return JSONResponse(
            self._user_bean(
                request, user, groups="groups" in expand, roles="applicationRoles" in expand
            )
        )

    def _create_user(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if refused := self._refuse_unless_admin(me, NOT_USER_ADMIN):
            return refused
        if not isinstance(body, dict):
            return jira_error(400, "The request body must be a JSON object describing the user.")
        name = str(body.get("name") or "").strip()
        email = str(body.get("emailAddress") or "").strip()
        display_name = str(body.get("displayName") or "").strip()
        errors: dict[str, str] = {}
        if not name:
            errors["username"] = "You must specify a username."
        elif problem := name_problem(name, username=True):
            errors["username"] = problem
        elif self._user_by_name(name) is not None:
            errors["username"] = USER_EXISTS
        if not email:
            errors["email"] = "You must specify an email address."
        elif "@" not in email:
            errors["email"] = "You must specify a valid email address."
        if not display_name:
            errors["fullname"] = "You must specify a full name."
        keys = body.get("applicationKeys")
        if keys is not None and (
            not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
        ):
            errors["applicationKeys"] = "'applicationKeys' must be a list of application keys."
        elif keys is not None and (unknown := sorted(set(keys) - set(self.application_roles))):
            errors["applicationKeys"] = f"Unknown application: {', '.join(unknown)}."
        if errors:
            return jira_error(400, errors=errors)
        password = str(body.get("password") or secrets.token_urlsafe(12))
        user = self._add_user(name, email, display_name, True, password)
        self._grant_default_access(user, keys)
        bean = self._user_bean(request, user)
        return JSONResponse(bean, status_code=201, headers={"Location": bean["self"]})

    def _update_user(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if refused := self._refuse_unless_admin(me, NOT_USER_ADMIN):
            return refused
        user = self._target_user(request)
        if isinstance(user, Response):
            return user
        if not isinstance(body, dict):
            return jira_error(400, "The request body must be a JSON object with the new values.")
        # Absent or blank fields stay as they are (reference §1.3, updateUser).
        new_name = str(body.get("name") or "").strip()
        email = str(body.get("emailAddress") or "").strip()
        display_name = str(body.get("displayName") or "").strip()
        active = _jackson_boolean(body.get("active"))
        errors: dict[str, str] = {}
        if new_name and new_name.lower() != user.name:
            if problem := name_problem(new_name, username=True):
                errors["username"] = problem
            elif self._user_by_name(new_name) is not None:
                errors["username"] = USER_EXISTS
        if email and "@" not in email:
            errors["email"] = "You must specify a valid email address."
        if active is not None and not isinstance(active, bool):
            errors["active"] = "'active' must be true or false."
        if errors:
            return jira_error(400, errors=errors)
        changes = {
            "name": new_name.lower() if new_name and new_name.lower() != user.name else None,
            "email": email if email and email != user.email else None,
            "display_name": (
                display_name if display_name and display_name != user.display_name else None
            ),
            "active": active if active is not None and active != user.active else None,
        }
        if all(value is None for value in changes.values()):
            # UNCONFIRMED whether Jira also refuses values equal to the current ones; the
            # emulator does, so clients must treat "already so" as done themselves.
            return jira_error(400, NOTHING_TO_CHANGE)
        if changes["active"] is False and (refused := self._refuse_if_lead(user, "deactivate")):
            return refused
        if changes["name"] is not None:
            del self._keys_by_name[user.name]
            user.name = changes["name"]
            self._keys_by_name[user.name] = user.key
        if changes["email"] is not None:
            user.email = changes["email"]
        if changes["display_name"] is not None:
            user.display_name = changes["display_name"]
        if changes["active"] is not None:
            user.active = changes["active"]
        return JSONResponse(self._user_bean(request, user))

    def _delete_user(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if refused := self._refuse_unless_admin(me, NOT_USER_ADMIN):
            return refused
        user = self._target_user(request)
        if isinstance(user, Response):
            return user
        if me is not None and user.key == me.key:
            return jira_error(400, "You cannot delete the currently logged in user.")
        if refused := self._refuse_if_lead(user, "delete"):
            return refused
        for group in self._groups.values():
            group.member_keys.discard(user.key)
        self._tokens = {t: k for t, k in self._tokens.items() if k != user.key}
        del self._keys_by_name[user.name]
        del self._users[user.key]
        return Response(status_code=204)

    def _search_users(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if me is None:
            return jira_error(401, NOT_AUTHENTICATED)
        params = request.query_params
        query = (params.get("username") or "").strip().lower()
        if not query:
            return jira_error(400, "The username query parameter was not provided")
        include_active = _java_boolean(params.get("includeActive"), True)
        include_inactive = _java_boolean(params.get("includeInactive"), False)
        start_at = _int_param(params, "startAt", 0)
        max_results = _int_param(params, "maxResults", 50)
        matches = sorted(
            (
                u
                for u in self._users.values()
                if (include_active if u.active else include_inactive)
                and (query == "." or _matches_prefix(u, query))
            ),
            key=lambda u: u.name,
        )
        # Jira collects only the first `search_window` matches and pages inside them.
        window = matches[: self.search_window]
        size = max(0, min(max_results, self.max_page_size))
        page = window[start_at : start_at + size]
        return JSONResponse([self._user_bean(request, u) for u in page])

    def _list_users(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if self.version_numbers < USER_LIST_SINCE:
            return jira_error(404, f"null for uri: {request.url}")
        if me is None:
            return jira_error(401, NOT_AUTHENTICATED)
        params = request.query_params
        max_results = max(
            1,
            min(_int_param(params, "maxResults", USER_LIST_DEFAULT_PAGE), self.max_list_page_size),
        )
        cursor = params.get("cursor") or ""
        try:
            after = int(cursor) if cursor else 0
        except ValueError:
            # Jira never answers 404 for a stale cursor; a garbage one starts from the top.
            after = 0
        ordered = sorted((u for u in self._users.values() if u.id > after), key=lambda u: u.id)
        page = ordered[:max_results]
        is_last = len(ordered) <= max_results
        out: dict[str, Any] = {
            "self": str(request.url),
            "maxResults": max_results,
            "isLast": is_last,
            "values": [self._user_bean(request, u) for u in page],
        }
        if not is_last:
            out["nextCursor"] = str(page[-1].id)
            out["nextPage"] = (
                f"{self._base(request)}/user/list?cursor={page[-1].id}&maxResults={max_results}"
            )
        return JSONResponse(out)

    def _get_group(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        """The legacy `GET /group?groupname=G&expand=users[0:49]` (not in the DC 10/11 spec)."""
        if refused := self._refuse_unless_admin(me, NOT_GROUP_ADMIN):
            return refused
        group = self._target_group(request)
        if isinstance(group, Response):
            return group
        expand = request.query_params.get("expand") or ""
        bounds = re.search(r"users\[(\d+):(\d+)\]", expand)
        start, end = (int(bounds[1]), int(bounds[2])) if bounds else (0, 49)
        return JSONResponse(self._group_bean(request, group, start, end))

    def _create_group(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if refused := self._refuse_unless_admin(me, NOT_GROUP_ADMIN):
            return refused
        name = str((body or {}).get("name") or "").strip() if isinstance(body, dict) else ""
        if not name:
            return jira_error(400, "Group name cannot be empty.")
        if problem := name_problem(name, username=False):
            return jira_error(400, problem)
        if name.lower() in self._groups:
            return jira_error(400, GROUP_EXISTS)
        group = self._groups[name.lower()] = JiraGroup(name.lower())
        bean = self._group_bean(request, group)
        return JSONResponse(bean, status_code=201, headers={"Location": bean["self"]})

    def _delete_group(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if refused := self._refuse_unless_admin(me, NOT_GROUP_ADMIN):
            return refused
        group = self._target_group(request)
        if isinstance(group, Response):
            return group
        del self._groups[group.name]
        for holders in self.global_permissions.values():
            holders.discard(group.name)
        return Response(status_code=200)

    def _group_members(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if refused := self._refuse_unless_admin(me, NOT_GROUP_ADMIN):
            return refused
        group = self._target_group(request)
        if isinstance(group, Response):
            return group
        params = request.query_params
        include_inactive = _java_boolean(params.get("includeInactiveUsers"), False)
        start_at = _int_param(params, "startAt", 0)
        max_results = max(1, min(_int_param(params, "maxResults", 50), self.max_page_size))
        found = sorted(
            (
                self._users[k]
                for k in group.member_keys
                if include_inactive or self._users[k].active
            ),
            key=lambda u: u.name,
        )
        page = found[start_at : start_at + max_results]
        return JSONResponse(
            {
                "self": str(request.url),
                "maxResults": max_results,
                "startAt": start_at,
                "total": len(found),
                "isLast": start_at + len(page) >= len(found),
                "values": [self._user_bean(request, u) for u in page],
            }
        )

    def _add_member(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if refused := self._refuse_unless_admin(me, NOT_GROUP_ADMIN):
            return refused
        group = self._target_group(request)
        if isinstance(group, Response):
            return group
        username = str(body.get("name") or "") if isinstance(body, dict) else ""
        user = self._user_by_name(username)
        if user is None:
            return jira_error(404, f"The user '{username}' does not exist.")
        if user.key in group.member_keys:
            # Jira answers this 400 with a bare i18n string, not its error envelope.
            return PlainTextResponse(
                f"Cannot add user. '{user.name}' is already a member of '{group.name}'",
                status_code=400,
            )
        if refused := self._refuse_past_seat_limit(user, group):
            return refused
        group.member_keys.add(user.key)
        bean = self._group_bean(request, group)
        return JSONResponse(bean, status_code=201, headers={"Location": bean["self"]})

    def _remove_member(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if refused := self._refuse_unless_admin(me, NOT_GROUP_ADMIN):
            return refused
        group = self._target_group(request)
        if isinstance(group, Response):
            return group
        username = request.query_params.get("username") or ""
        user = self._user_by_name(username)
        if user is None:
            return jira_error(404, f"The user '{username}' does not exist.")
        if user.key not in group.member_keys:
            return jira_error(
                400, f"Cannot remove user '{user.name}' from group '{group.name}': not a member."
            )
        group.member_keys.discard(user.key)
        return Response(status_code=200)

    def _group_picker(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        params = request.query_params
        query = (params.get("query") or "").lower()
        exclude = {g.lower() for g in params.getlist("exclude")}
        limit = _int_param(params, "maxResults", GROUP_PICKER_LIMIT)
        found = [n for n in sorted(self._groups) if query in n and n not in exclude]
        shown = found[:limit]
        return JSONResponse(
            {
                "header": f"Showing {len(shown)} of {len(found)} matching groups",
                "total": len(found),
                "groups": [{"name": n, "html": n, "labels": []} for n in shown],
            }
        )

    def _myself(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if me is None:
            return jira_error(401, NOT_AUTHENTICATED)
        return JSONResponse(self._user_bean(request, me, groups=True))

    def _my_permissions(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        asked = [p for p in (request.query_params.get("permissions") or "").split(",") if p]
        known = {
            "ADMINISTER": (
                "0",
                "Administer Jira",
                me is not None and self._holds(me, "ADMINISTER"),
            ),
            "SYSTEM_ADMIN": (
                "44",
                "Jira System Administrators",
                me is not None and self._holds(me, "SYSTEM_ADMIN"),
            ),
            "USER_PICKER": ("27", "Browse Users", me is not None),
        }
        out = {}
        for key in asked or list(known):
            if key not in known:
                return jira_error(400, f"Could not find permission: {key}")
            permission_id, name, have = known[key]
            out[key] = {
                "id": permission_id,
                "key": key,
                "name": name,
                "type": "GLOBAL",
                "description": name,
                "havePermission": have,
            }
        return JSONResponse({"permissions": out})

    def _server_info(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        return JSONResponse(
            {
                "baseUrl": self._site(request),
                "version": self.version,
                "versionNumbers": list(self.version_numbers[:3]),
                "deploymentType": "Server",
                "buildNumber": 900000 + sum(self.version_numbers[:2]),
                "serverTitle": "usersync Jira emulator",
            }
        )

    def _list_application_roles(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        """Every application role with its seats. Needs Administer Jira (documented for Jira
        Cloud; the DC requirement is UNCONFIRMED, the stricter reading is taken)."""
        if refused := self._refuse_unless_admin(me, NOT_USER_ADMIN):
            return refused
        roles = sorted(self.application_roles.values(), key=lambda r: r.key)
        return JSONResponse([self._role_bean(r) for r in roles])

    def _get_application_role(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if refused := self._refuse_unless_admin(me, NOT_USER_ADMIN):
            return refused
        key = request.path_params["key"]
        role = self.application_roles.get(key)
        if role is None:
            return jira_error(404, f"The application role with key '{key}' does not exist.")
        return JSONResponse(self._role_bean(role))

    def _list_user_properties(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        user = self._property_owner(request, me, writing=False)
        if isinstance(user, Response):
            return user
        base = f"{self._base(request)}/user/properties"
        return JSONResponse(
            {
                "keys": [
                    {"self": f"{base}/{quote(k, safe='')}?username={quote(user.name)}", "key": k}
                    for k in sorted(user.properties)
                ]
            }
        )

    def _get_user_property(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        user = self._property_owner(request, me, writing=False)
        if isinstance(user, Response):
            return user
        key = request.path_params["key"]
        if key not in user.properties:
            return jira_error(404, f"The property with key '{key}' does not exist.")
        return JSONResponse({"key": key, "value": user.properties[key]})

    def _set_user_property(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        user = self._property_owner(request, me, writing=True)
        if isinstance(user, Response):
            return user
        key = request.path_params["key"]
        if len(key) > MAX_PROPERTY_KEY_LENGTH:
            return jira_error(
                400,
                f"Value specified for field 'key' is too long: {len(key)} > "
                f"{MAX_PROPERTY_KEY_LENGTH}",
            )
        if not request.state.has_body:
            return jira_error(400, "The property value must not be empty.")
        length = len(json.dumps(body, ensure_ascii=False, separators=(",", ":")))
        if length > MAX_PROPERTY_VALUE_LENGTH:
            return jira_error(
                400,
                f"Value specified for field 'value' is too long: {length} > "
                f"{MAX_PROPERTY_VALUE_LENGTH}",
            )
        created = key not in user.properties
        user.properties[key] = body
        # Entity properties answer 201 when created, 200 when replaced.
        return Response(status_code=201 if created else 200)

    def _delete_user_property(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        user = self._property_owner(request, me, writing=True)
        if isinstance(user, Response):
            return user
        key = request.path_params["key"]
        if key not in user.properties:
            return jira_error(404, f"The property with key '{key}' does not exist.")
        del user.properties[key]
        return Response(status_code=204)

    def _property_owner(
        self, request: Request, me: JiraUser | None, *, writing: bool
    ) -> JiraUser | Response:
        """The account a `/user/properties` call is about (`?username=` or `?userKey=`).

        Anyone signed in reads them; setting or removing another account's needs an
        administrator (reference §1.5).
        """
        if me is None:
            return jira_error(401, NOT_AUTHENTICATED)
        username = request.query_params.get("username")
        key = request.query_params.get("userKey")
        if not username and not key:
            # e.g. `?accountId=`, which only Jira Cloud knows
            return jira_error(
                400, "Either the 'username' or the 'userKey' query parameter is required."
            )
        user = self._user_by_name(username) if username else self._users.get(key or "")
        if user is None:
            return jira_error(404, f"The user named '{username or key}' does not exist")
        if writing and user.key != me.key and not self._holds(me, "ADMINISTER"):
            return jira_error(403, NOT_USER_ADMIN)
        return user

    def _list_projects(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if me is None:
            return jira_error(401, NOT_AUTHENTICATED)
        expand = _expanded(request)
        return JSONResponse(
            [
                self._project_bean(request, p, lead="lead" in expand)
                for p in sorted(self._projects.values(), key=lambda p: p.key)
            ]
        )

    def _get_project(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if me is None:
            return jira_error(401, NOT_AUTHENTICATED)
        project = self._target_project(request)
        if isinstance(project, Response):
            return project
        return JSONResponse(self._project_bean(request, project, lead=True, full=True))

    def _update_project(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        """`PUT /project/{key}`: only non-null fields change (reference §1.6); here `lead`
        (a username) and `name`. Answered with the project: 201 up to 9.12 (its WADL declares
        201), 200 from 10 (the 10.3 and 11.3 descriptions declare 200)."""
        if refused := self._refuse_unless_admin(me, NOT_USER_ADMIN):
            return refused
        project = self._target_project(request)
        if isinstance(project, Response):
            return project
        if not isinstance(body, dict):
            return jira_error(400, "The request body must be a JSON object with the new values.")
        lead_key = project.lead_key
        if body.get("lead") is not None:
            lead = self._user_by_name(str(body["lead"]))
            if lead is None:
                return jira_error(
                    400,
                    errors={
                        "projectLead": "The user you have specified as project lead does not exist."
                    },
                )
            if not lead.active:
                # UNCONFIRMED that Jira refuses an inactive lead; the stricter reading.
                return jira_error(
                    400, errors={"projectLead": "The project lead must be an active user."}
                )
            lead_key = lead.key
        if body.get("name") is not None and not str(body["name"]).strip():
            return jira_error(400, errors={"projectName": "You must specify a project name."})
        project.lead_key = lead_key
        if body.get("name") is not None:
            project.name = str(body["name"]).strip()
        return JSONResponse(
            self._project_bean(request, project, lead=True, full=True),
            status_code=200 if self.version_numbers >= PROJECT_UPDATE_200_SINCE else 201,
        )

    def _project_components(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if me is None:
            return jira_error(401, NOT_AUTHENTICATED)
        project = self._target_project(request)
        if isinstance(project, Response):
            return project
        return JSONResponse(
            [self._component_bean(request, c) for c in self._components_of(project)]
        )

    def _get_component(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        if me is None:
            return jira_error(401, NOT_AUTHENTICATED)
        component = self._target_component(request)
        if isinstance(component, Response):
            return component
        return JSONResponse(self._component_bean(request, component))

    def _update_component(self, request: Request, me: JiraUser | None, body: Any) -> Response:
        """`PUT /component/{id}` with `leadUserName` (reference §1.6). Whether "" or null
        clears the lead is UNCONFIRMED: both do here. An `id` in the body (atlassian-python-api
        sends one) must be the component's own."""
        if refused := self._refuse_unless_admin(me, NOT_USER_ADMIN):
            return refused
        component = self._target_component(request)
        if isinstance(component, Response):
            return component
        if not isinstance(body, dict):
            return jira_error(400, "The request body must be a JSON object with the new values.")
        if "id" in body and str(body["id"]) != str(component.id):
            return jira_error(400, errors={"id": "The component id does not match the URL."})
        lead_key = component.lead_key
        if "leadUserName" in body:
            name = body["leadUserName"]
            if name is None or not str(name).strip():
                lead_key = None
            else:
                lead = self._user_by_name(str(name))
                if lead is None:
                    return jira_error(
                        400, errors={"leadUserName": f"The user '{name}' does not exist."}
                    )
                if not lead.active:
                    return jira_error(
                        400, errors={"leadUserName": f"The user '{name}' is not active."}
                    )
                lead_key = lead.key
        if body.get("name") is not None and not str(body["name"]).strip():
            return jira_error(400, errors={"name": "The component name must not be empty."})
        component.lead_key = lead_key
        if body.get("name") is not None:
            component.name = str(body["name"]).strip()
        if body.get("assigneeType") is not None:
            component.assignee_type = str(body["assigneeType"])
        return JSONResponse(self._component_bean(request, component))

    # -- shared checks -----------------------------------------------------------------------

    def _target_project(self, request: Request) -> JiraProject | Response:
        """The project of `{key}` in the path: its key (any case) or its numeric id."""
        ident = request.path_params["key"]
        project = self._projects.get(ident.upper())
        if project is None and ident.isdigit():
            project = next((p for p in self._projects.values() if p.id == int(ident)), None)
        if project is None:
            return jira_error(404, f"No project could be found with key '{ident}'.")
        return project

    def _target_component(self, request: Request) -> JiraComponent | Response:
        ident = request.path_params["id"]
        component = self._components.get(int(ident)) if ident.isdigit() else None
        if component is None:
            return jira_error(404, f"The component with id {ident} does not exist.")
        return component

    def _components_of(self, project: JiraProject) -> list[JiraComponent]:
        return sorted(
            (c for c in self._components.values() if c.project_key == project.key),
            key=lambda c: c.id,
        )

    def _refuse_if_lead(self, user: JiraUser, doing: str) -> Response | None:
        """Jira refuses to deactivate or delete a project lead (reference §1.3, §5.13) or a
        component lead (its user service checks both; the reference's "a warning only" for
        components is the weaker reading); the exact status and text are UNCONFIRMED: a 400
        in the error envelope here."""
        led = sorted(p.key for p in self._projects.values() if p.lead_key == user.key)
        if led:
            return jira_error(
                400,
                f"Cannot {doing} user '{user.name}': they are the project lead of "
                f"{', '.join(led)}. Choose another project lead first.",
            )
        components = sorted(
            f"{c.name} ({c.project_key})"
            for c in self._components.values()
            if c.lead_key == user.key
        )
        if components:
            return jira_error(
                400,
                f"Cannot {doing} user '{user.name}': they are the component lead of "
                f"{', '.join(components)}. Choose another component lead first.",
            )
        return None

    def _project_bean(
        self, request: Request, project: JiraProject, *, lead: bool, full: bool = False
    ) -> dict:
        base = self._base(request)
        bean: dict[str, Any] = {
            "expand": "description,lead,url,projectKeys",
            "self": f"{base}/project/{project.id}",
            "id": str(project.id),
            "key": project.key,
            "name": project.name,
            "avatarUrls": {"48x48": f"{self._site(request)}/secure/projectavatar?pid={project.id}"},
            "projectTypeKey": "software",
            "archived": False,
        }
        if lead:
            bean["lead"] = self._user_bean(request, self._users[project.lead_key])
        if full:
            bean["description"] = ""
            bean["components"] = [
                self._component_bean(request, c) for c in self._components_of(project)
            ]
            bean["assigneeType"] = "PROJECT_LEAD"
            bean["projectKeys"] = [project.key]
        return bean

    def _component_bean(self, request: Request, component: JiraComponent) -> dict:
        project = self._projects[component.project_key]
        project_lead = self._users[project.lead_key]
        lead = self._users.get(component.lead_key) if component.lead_key else None
        # Who an issue of the component is assigned to: its lead when the type says so and
        # there is one, else the project lead.
        real_type = (
            "COMPONENT_LEAD"
            if component.assignee_type == "COMPONENT_LEAD" and lead is not None
            else "PROJECT_LEAD"
        )
        bean: dict[str, Any] = {
            "self": f"{self._base(request)}/component/{component.id}",
            "id": str(component.id),
            "name": component.name,
            "description": "",
            "assigneeType": component.assignee_type,
            "realAssigneeType": real_type,
            "realAssignee": self._user_bean(
                request, lead if real_type == "COMPONENT_LEAD" and lead else project_lead
            ),
            "isAssigneeTypeValid": component.assignee_type != "COMPONENT_LEAD" or lead is not None,
            "project": project.key,
            "projectId": project.id,
            "archived": False,
        }
        if lead is not None:
            bean["lead"] = self._user_bean(request, lead)
            bean["leadUserName"] = lead.name
        return bean

    def _refuse_unless_admin(self, me: JiraUser | None, message: str) -> Response | None:
        if me is None:
            return jira_error(401, NOT_AUTHENTICATED)
        if not self._holds(me, "ADMINISTER"):
            return jira_error(403, message)
        return None

    def _target_group(self, request: Request) -> JiraGroup | Response:
        name = request.query_params.get("groupname") or ""
        if not name:
            return jira_error(400, "Group name cannot be empty.")
        group = self._groups.get(name.lower())
        if group is None:
            return jira_error(404, f"Specified group '{name}' does not exist.")
        return group


def _jackson_boolean(value: Any) -> Any:
    """A JSON boolean as Jira's Jackson reads it: also the strings "true" and "false"
    (atlassian-python-api's `user_deactivate` sends `"active": "false"`); "" is absent.
    Anything else is returned as it is and refused by the caller."""
    if isinstance(value, str):
        return {"true": True, "false": False, "": None}.get(value, value)
    return value


def _expanded(request: Request) -> set[str]:
    return {part.strip() for part in (request.query_params.get("expand") or "").split(",")}


async def _not_found(request: Request, exc: Exception) -> Response:
    """Jira (Jersey) answers an unknown resource with its error envelope."""
    return jira_error(404, f"null for uri: {request.url}")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    headers = getattr(exc, "headers", None) or {}
    response = jira_error(405, f"Method {request.method} is not allowed for {request.url.path}")
    response.headers.update(headers)
    return response


class _TrailingSlashTolerant:
    """Jersey matches `/user/` as `/user` (the jira package deletes users at `user/?username=`);
    Starlette would answer a redirect instead."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
            scope.pop("raw_path", None)
        await self.app(scope, receive, send)


def _matches_prefix(user: JiraUser, query: str) -> bool:
    """Jira's search: a prefix of the username, the e-mail, or a word of the display name."""
    if user.name.startswith(query) or user.email.lower().startswith(query):
        return True
    display = user.display_name.lower()
    return display.startswith(query) or any(word.startswith(query) for word in display.split())


def _int_param(params: Any, name: str, default: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadParameter(f"'{name}' must be a whole number, not {value!r}") from None
    if number < 0:
        raise BadParameter(f"'{name}' must not be negative")
    return number


__all__ = [
    "ApplicationRole",
    "JiraComponent",
    "JiraEmulator",
    "JiraGroup",
    "JiraProject",
    "JiraUser",
    "jira_rate_limit_headers",
    "parse_version",
]
