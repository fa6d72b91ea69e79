"""The Jira Data Center target: users and groups over REST v2 (`<jira>/rest/api/2`).

`JiraTarget` implements `usersync.targets.base.Target` for Jira DC/Server 8.3+ with basic auth
or a personal access token. Paths and page sizes are constants here (`PAGED`), each list call
with the Jira envelope `usersync.paging` follows (offset pages, bare arrays inside a search
window, cursors). Reading users is the hard part on a large site: `/user/list` (cursor, 10.3+)
when the server has it, else `/user/search`, which only ever returns the first 1000 matches
(100 on Jira 10) — so the search is run per prefix of the requested names and a prefix whose
answer hits that window is split further. Small requests use one `GET /user` per name.
Accounts are also read by their immutable key (`GET /user?key=`, or `/user/list` for many),
so an account renamed by hand is found under its new name. Jira's quirks are absorbed here,
not in the planner: "already exists" comes as a 400 (mapped to `TargetConflictError`), adding
a member twice is a 400 (counted as done), a PUT that changes nothing is a 400 (checked
against the account, then counted as done), usernames are stored in lower case
(`stored_form`) and may not hold `<`, `>` or `&` (`refused_name`). Creating a user or a group
is a POST, which is never sent twice blindly: when its answer is lost the account (same name
and e-mail) or group is looked for before anything else is done. Jira's REST API cannot say
who holds a global permission, so the administrators usersync must not take over are read as
the members of the groups that hold them on a stock site (`ADMIN_GROUPS`, configurable).
Custom attributes are user properties (entity properties), which Jira reads only one account
and key at a time, so they are read concurrently. Jira refuses to deactivate a project lead:
project and component leads are read (`read_leads`) so the plan can hand them over first
(`reassign_lead`), and Test Connection checks the accounts configured to take them over.
Licence headroom is read from the application roles (`licence_seats`): Jira does not refuse
to create an account past the seat limit but creates it without application access, and
refuses adding it to a group that grants the full application (`TargetLicenceError`).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import pandas as pd

from usersync.config import (
    BasicAuth,
    Secret,
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
    TargetLicenceError,
    TargetNotFoundError,
    TargetPermissionError,
    TargetRejectedError,
    TargetUnreachableError,
    TransientError,
)
from usersync.http import ApiClient, RetryPolicy
from usersync.model import (
    CUSTOM_PREFIX,
    LEAD_COLUMNS,
    TARGET_GROUP_COLUMNS,
    TARGET_MEMBERSHIP_COLUMNS,
    TARGET_USER_COLUMNS,
    conform,
    empty_frame,
)
from usersync.paging import JIRA_CURSOR, JIRA_OFFSET, JIRA_WINDOW, PagedEndpoint, Pager
from usersync.targets.base import (
    STOCK_ADMIN_GROUPS,
    Privileges,
    Seats,
    Target,
    TargetCheck,
    normalise_name,
)
from usersync.targets.licence import read_count, read_limit, read_number

log = logging.getLogger("usersync.targets.jira")

API_ROOT = "/rest/api/2"

# -- endpoints (data) -------------------------------------------------------------------------

USER = "/user"
GROUP = "/group"
GROUP_USER = "/group/user"
MYSELF = "/myself"
MY_PERMISSIONS = "/mypermissions"
SERVER_INFO = "/serverInfo"
#: Entity properties of a user (reference §1.5); `{key}` is percent-encoded.
USER_PROPERTY = "/user/properties/{key}"
#: Projects (with `?expand=lead`), one project, its components, one component (§1.6).
PROJECTS = "/project"
PROJECT = "/project/{key}"
PROJECT_COMPONENTS = "/project/{key}/components"
COMPONENT = "/component/{id}"
#: Application roles with their licence seats (Jira 7+; DC 11.3 spec, jira.js `ApplicationRole`).
APPLICATION_ROLES = "/applicationrole"

#: Entity property keys are at most 255 characters (Jira Cloud docs, reference §1.5).
MAX_PROPERTY_KEY_LENGTH = 255
#: The largest user property value usersync writes, in UTF-8 bytes of its JSON text. Jira DC's
#: limit is UNCONFIRMED (reference §1.5); 32768 is Jira Cloud's documented entity-property
#: limit (in characters: counting bytes is the stricter reading).
MAX_PROPERTY_VALUE_BYTES = 32768
#: Reads in flight at once where Jira has no bulk call (user properties, project components).
READ_WORKERS = 4

#: The list calls and their envelopes (`usersync.paging`).
PAGED: dict[str, PagedEndpoint] = {
    # DC's maximum page of /group/member is undocumented; 50 is Cloud's and what Jira answers.
    "group_members": PagedEndpoint("/group/member", JIRA_OFFSET, 50),
    # A bare array, truncated by the server at the search window (`search_window`).
    "user_search": PagedEndpoint("/user/search", JIRA_WINDOW, 1000),
    "user_list": PagedEndpoint("/user/list", JIRA_CURSOR, 2000),
}

#: /user/search returns only the first N matches (JRASERVER-65089; JRASERVER-78520 on 10.x).
SEARCH_WINDOW_BEFORE_10 = 1000
SEARCH_WINDOW_FROM_10 = 100
#: /user/list exists on 10.3 LTS and 11.x.
USER_LIST_SINCE = (10, 3)
#: Up to this many requested names, one GET /user each is cheaper than any enumeration:
#: a search or list page costs about as much as a lookup, and enumerating costs at least
#: one request per distinct first letter plus the splits of crowded prefixes.
LOOKUP_THRESHOLD = 30

#: Groups whose members hold the Jira Administrators or Jira System Administrators global
#: permission on a stock site: jira-administrators holds both since Jira 7, and sites set up
#: before 7 keep jira-system-administrators. Jira grants global permissions to groups only, and
#: its REST API lists no holders of one (`/permissions` lists the permission keys, `/mypermissions`
#: answers for the caller, `/user/permission/search` covers project permissions only; the DC 11.3
#: spec has nothing else), so these memberships are the best reading there is. UNCONFIRMED for a
#: given site: one that grants the permissions to other groups must name them (`admin_groups`).
ADMIN_GROUPS: tuple[str, ...] = ("jira-administrators", "jira-system-administrators")

#: The groups Jira's own application roles grant on a stock site (Jira Software, Core, Service
#: Management, and the pre-7 jira-users): what counts as an access group when the roles
#: cannot be read.
STOCK_ACCESS_GROUPS: tuple[str, ...] = (
    "jira-software-users",
    "jira-core-users",
    "jira-servicedesk-users",
    "jira-users",
)

#: Attribute names of `model.USER_ATTRIBUTES` → Jira's user JSON fields.
USER_FIELDS = {"username": "name", "email": "emailAddress", "display_name": "displayName"}


#: Characters Jira refuses in usernames (reference §1.8, a community answer: UNCONFIRMED by
#: Atlassian's docs; the emulator refuses them too, the stricter reading).
FORBIDDEN_USERNAME_CHARACTERS = "<>&"


def _already_exists(error: TargetError) -> bool:
    return "already exists" in str(error.body).casefold()


def _about_the_licence(error: TargetError) -> bool:
    # Jira's text for a group add past the seat limit is UNCONFIRMED; both spellings are taken.
    text = str(error.body).casefold()
    return "license" in text or "licence" in text


def _nothing_to_change(error: TargetError) -> bool:
    text = str(error.body).casefold()
    return "no.value.found.to.be.changed" in text or "no value found to be changed" in text


class JiraTarget(Target):
    """A Jira Data Center instance.

    Args:
        name: the target's name in the profile.
        url: the site's base URL including any context path, e.g. https://jira.corp/jira.
        username: with `password`, for basic auth.
        password: the password of `username`.
        token: a personal access token (sent as Bearer) instead of username/password.
        retry: how transient failures are retried.
        timeout_seconds: connect/read timeout of every call.
        verify: TLS verification: True, False, or a CA bundle file.
        lookup_threshold: up to this many requested names, `read_users` looks each one up.
        search_window: the `/user/search` result window; by default from the server version.
        admin_groups: the groups whose members are administrators (see `ADMIN_GROUPS`).
        default_project_lead: the account given the projects of an account being deactivated
            (Test Connection checks it exists and is active).
        default_component_lead: likewise for components.
        read_workers: reads in flight at once where Jira has no bulk call.
        transport: an httpx transport (tests of fault shapes no server produces).
    """

    product = "jira"
    #: user properties (entity properties, reference §1.5) hold the custom attributes
    custom_attributes = True

    def __init__(
        self,
        name: str,
        url: str,
        *,
        username: str | None = None,
        password: Secret | None = None,
        token: Secret | None = None,
        retry: RetryPolicy | None = None,
        timeout_seconds: float = 30.0,
        verify: bool | Path = True,
        lookup_threshold: int = LOOKUP_THRESHOLD,
        search_window: int | None = None,
        admin_groups: Iterable[str] = ADMIN_GROUPS,
        default_project_lead: str | None = None,
        default_component_lead: str | None = None,
        read_workers: int = READ_WORKERS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(name)
        if (token is None) == (username is None or password is None):
            raise ValueError(
                f"jira '{name}': give either username and password, or a token (not both)"
            )
        self.url = url.rstrip("/")
        self.lookup_threshold = lookup_threshold
        self.admin_groups = tuple(dict.fromkeys(g.strip() for g in admin_groups if g.strip()))
        self._search_window = search_window
        self.default_project_lead = (default_project_lead or "").strip() or None
        self.default_component_lead = (default_component_lead or "").strip() or None
        self.read_workers = max(1, read_workers)
        self._version: tuple[int, ...] | None = None
        self._pager = Pager(
            f"jira '{name}'", malformed=TargetRejectedError, incomplete=TargetRejectedError
        )
        self._api = ApiClient(
            f"jira '{name}'",
            self.url + API_ROOT,
            auth=httpx.BasicAuth(username, reveal(password)) if token is None else None,  # type: ignore[arg-type]
            headers={"Authorization": f"Bearer {reveal(token)}"} if token is not None else None,
            timeout_seconds=timeout_seconds,
            retry=retry,
            verify=verify,
            transport=transport,
        )

    @classmethod
    def from_config(
        cls,
        name: str,
        config: TargetConfig,
        *,
        load_prefect_secret: SecretLoader | None = None,
        retry: RetryPolicy | None = None,
        lookup_threshold: int = LOOKUP_THRESHOLD,
        admin_groups: Iterable[str] = ADMIN_GROUPS,
    ) -> JiraTarget:
        """Build the client of profile target `name`, resolving its secret.

        Args:
            name: the target's name in the profile.
            config: its settings from profile.yaml.
            load_prefect_secret: reads a Prefect Secret block by name.
            retry: replaces the retry policy the config describes (tests record waits).
            lookup_threshold: see `JiraTarget`.
            admin_groups: see `JiraTarget`.

        Raises:
            ConfigError: the config is not a Jira target, or its secret cannot be resolved.
        """
        if config.kind != "jira":
            raise ConfigError(f"target '{name}' is kind '{config.kind}', not 'jira'")
        retry = retry or RetryPolicy(
            max_attempts=config.max_attempts, max_wait_seconds=config.max_retry_wait_seconds
        )
        verify: bool | Path = config.ca_file if config.ca_file else config.verify_tls
        common: dict[str, Any] = {
            "retry": retry,
            "timeout_seconds": config.timeout_seconds,
            "verify": verify,
            "lookup_threshold": lookup_threshold,
            "admin_groups": (*admin_groups, *config.admin_groups),
            "default_project_lead": config.default_project_lead,
            "default_component_lead": config.default_component_lead,
        }
        auth = config.auth
        if isinstance(auth, BasicAuth):
            password = resolve_secret(auth.password, load_prefect_secret=load_prefect_secret)
            return cls(name, config.url, username=auth.username, password=password, **common)
        assert isinstance(auth, TokenAuth)
        token = resolve_secret(auth.token, load_prefect_secret=load_prefect_secret)
        return cls(name, config.url, token=token, **common)

    def close(self) -> None:
        self._api.close()

    # -- server facts ------------------------------------------------------------------------

    def server_version(self) -> tuple[int, ...]:
        """The Jira version as numbers, e.g. (9, 12, 0); asked once per client."""
        if self._version is None:
            info = self._api.get_json(SERVER_INFO)
            self._version = tuple(int(n) for n in info.get("versionNumbers") or [])
        return self._version

    @property
    def search_window(self) -> int:
        """How many matches `/user/search` returns at most, whatever the paging asks."""
        if self._search_window is not None:
            return self._search_window
        if self.server_version() >= (10,):
            return SEARCH_WINDOW_FROM_10
        return SEARCH_WINDOW_BEFORE_10

    # -- the pager ---------------------------------------------------------------------------

    def _pages(self, endpoint: PagedEndpoint, params: Mapping[str, Any]) -> Iterator[list[dict]]:
        """Yield the pages of a list call (`PAGED`), in order, until the last one.

        A windowed call stops at the search window; the caller compares the count with
        `search_window` to tell a complete answer from a truncated one.
        """
        return self._pager.pages(
            endpoint,
            lambda page: self._api.get_json(endpoint.path, params={**params, **page}),
            at_most=self.search_window if endpoint.envelope is JIRA_WINDOW else None,
        )

    # -- reading -----------------------------------------------------------------------------

    def read_users(self, usernames: Iterable[str]) -> pd.DataFrame:
        """The accounts among `usernames` (any case), active or not, with their Jira keys."""
        # Jira lower-cases names (Java's toLowerCase); queries use that form, comparisons the
        # case-folded one, so "Straße" is asked for as "straße" and still matches "STRASSE".
        lowered = {n.strip().lower() for n in usernames if n and n.strip()}
        wanted = {normalise_name(n) for n in lowered}
        if not wanted:
            return empty_frame(TARGET_USER_COLUMNS)
        if len(lowered) <= self.lookup_threshold:
            beans = self._look_up_users(lowered)
        elif self.server_version() >= USER_LIST_SINCE:
            beans = [
                bean
                for page in self._pages(PAGED["user_list"], {})
                for bean in page
                if normalise_name(bean.get("name", "")) in wanted
            ]
        else:
            beans = self._search_users(lowered)
        return self._user_frame(
            bean for bean in beans if normalise_name(bean.get("name", "")) in wanted
        )

    def read_users_by_key(self, keys: Iterable[str]) -> pd.DataFrame:
        """The accounts with these user keys, under their names as they are now."""
        wanted = [key for key in dict.fromkeys(str(k).strip() for k in keys) if key]
        if not wanted:
            return empty_frame(TARGET_USER_COLUMNS)
        if len(wanted) > self.lookup_threshold and self.server_version() >= USER_LIST_SINCE:
            keyset = set(wanted)
            beans = [
                bean
                for page in self._pages(PAGED["user_list"], {})
                for bean in page
                if bean.get("key") in keyset
            ]
        else:
            # /user/search matches names, e-mails and display names, never keys: before 10.3
            # a key can only be looked up one by one.
            beans = [bean for key in wanted if (bean := self._get_user(key, by="key"))]
        return self._user_frame(beans)

    def _user_frame(self, beans: Iterable[dict]) -> pd.DataFrame:
        """Jira user beans as a `TARGET_USER_COLUMNS` frame, one row per key."""
        by_key = {bean["key"]: bean for bean in beans}
        rows = [
            {
                "target_key": bean["key"],
                "username": bean.get("name", ""),
                "email": bean.get("emailAddress", ""),
                "display_name": bean.get("displayName", ""),
                "active": bool(bean.get("active", True)),
            }
            for bean in by_key.values()
        ]
        if not rows:
            return empty_frame(TARGET_USER_COLUMNS)
        return conform(pd.DataFrame(rows), TARGET_USER_COLUMNS, what=f"jira '{self.name}' users")

    def _look_up_users(self, names: Iterable[str]) -> list[dict]:
        beans = []
        for name in sorted(names):
            bean = self._get_user(name)
            if bean is not None:
                beans.append(bean)
        return beans

    def _get_user(
        self, name_or_key: str, *, by: Literal["username", "key"] = "username", groups: bool = False
    ) -> dict | None:
        params = {by: name_or_key}
        if groups:
            params["expand"] = "groups"
        try:
            return self._api.get_json(USER, params=params)
        except TargetNotFoundError:
            return None

    def administrators(self) -> set[str]:
        """Members of the administrator groups (`admin_groups`), active or not.

        `/group/member` also lists the members of nested groups. A group the site does not
        have is skipped; when it has none of them, administrators cannot be told apart at all,
        and a warning says so.
        """
        privileges = self.privileges()
        if privileges.problem:
            log.warning(
                "jira '%s': no account is known to be an administrator: %s",
                self.name,
                privileges.problem,
            )
        return set(privileges.administrators)

    def privileges(self) -> Privileges:
        """The members of the administrator groups, and those groups (with the stock names).

        Jira grants its global permissions to groups only and lists no holders over REST (see
        `ADMIN_GROUPS`), so the configured groups are the privileged ones. When none of them
        exists, no administrator can be told apart: usersync then adopts nobody.
        """
        admins: set[str] = set()
        found = []
        for group in self.admin_groups:
            members = self._group_members(group)
            if members is not None:
                found.append(group)
                admins.update(normalise_name(name) for name in members)
        problem = None
        if not found:
            problem = (
                f"none of the administrator groups ({', '.join(self.admin_groups) or 'none'}) "
                "exists; name the groups that hold the Jira Administrators and Jira System "
                "Administrators global permissions in the target's admin_groups"
            )
        groups = STOCK_ADMIN_GROUPS | {normalise_name(g) for g in self.admin_groups}
        return Privileges(frozenset(admins), frozenset(groups), problem)

    def access_groups(self) -> set[str]:
        """The groups of every application role and their default groups (`GET
        /applicationrole`); the stock role groups when the roles cannot be read."""
        roles = self._roles
        if roles is None:
            return set(STOCK_ACCESS_GROUPS)
        return {
            normalise_name(str(g))
            for role in roles
            for g in (*(role.get("groups") or ()), *(role.get("defaultGroups") or ()))
        }

    def groups_of_new_accounts(self) -> set[str]:
        """The default groups of the roles selected by default: Jira puts a new account there
        (user creation without applicationKeys). None known when the roles cannot be read."""
        roles = self._roles or []
        return {
            normalise_name(str(g))
            for role in roles
            if role.get("selectedByDefault")
            for g in role.get("defaultGroups") or ()
        }

    @functools.cached_property
    def _roles(self) -> list[dict] | None:
        """`GET /applicationrole` once per client (a plan asks for the access groups and the
        groups of new accounts), or None when the account may not read it or Jira lacks it."""
        try:
            roles = self._api.get_json(APPLICATION_ROLES)
        except (TargetPermissionError, TargetNotFoundError):
            return None
        return [r for r in roles if isinstance(r, dict)] if isinstance(roles, list) else None

    def current_account(self) -> str | None:
        """The username of the account the credentials (password or token) belong to."""
        name = self._api.get_json(MYSELF).get("name")
        return str(name) if name else None

    # -- names and values as Jira stores them ---------------------------------------------------

    def refused_name(self, kind: str, name: str) -> str | None:
        """The common rules, and no `<`, `>` or `&` in usernames (reference §1.8)."""
        why = super().refused_name(kind, name)
        if why is None and kind == "user":
            bad = sorted(set(name) & set(FORBIDDEN_USERNAME_CHARACTERS))
            if bad:
                why = f"Jira usernames may not contain {' '.join(bad)}"
        return why

    def stored_form(self, users: pd.DataFrame) -> pd.DataFrame:
        """Trimmed values, and usernames in lower case as Jira stores them."""
        out = super().stored_form(users)
        if "username" in out.columns:
            out["username"] = out["username"].str.lower()
        return out

    def _search_users(self, wanted: set[str]) -> list[dict]:
        """Find `wanted` (lower-case names) with per-prefix searches, splitting truncated ones.

        A truncated answer still holds real accounts: names found in it are done, and only
        the names still missing are searched again with a one-character longer prefix. A name
        equal to a truncated prefix cannot be narrowed further and is looked up directly.
        """
        window = self.search_window
        missing = set(wanted)
        found: list[dict] = []
        prefixes = sorted({name[:1] for name in missing})
        exact: set[str] = set()
        while prefixes:
            prefix = prefixes.pop()
            params = {"username": prefix, "includeActive": "true", "includeInactive": "true"}
            beans = [bean for page in self._pages(PAGED["user_search"], params) for bean in page]
            found.extend(beans)
            missing -= {str(bean.get("name", "")).lower() for bean in beans}
            if len(beans) < window:
                continue
            narrower = set()
            for name in missing:
                if not name.startswith(prefix):
                    continue
                if name == prefix:
                    exact.add(name)
                else:
                    narrower.add(name[: len(prefix) + 1])
            prefixes.extend(sorted(narrower))
        found.extend(self._look_up_users(exact & missing))
        return found

    def read_groups(self, groups: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Which of `groups` exist, and all their members, active and inactive."""
        requested: dict[str, str] = {}
        for group in groups:
            if group and group.strip():
                requested.setdefault(normalise_name(group), group)
        existing: list[str] = []
        member_rows: list[tuple[str, str]] = []
        for group in requested.values():
            members = self._group_members(group)
            if members is None:
                continue
            existing.append(group)
            member_rows.extend((name, group) for name in members)
        found = pd.DataFrame({"group": existing}, columns=list(TARGET_GROUP_COLUMNS))
        memberships = pd.DataFrame(member_rows, columns=["username", "group"])
        return (
            conform(found, TARGET_GROUP_COLUMNS, what=f"jira '{self.name}' groups"),
            conform(memberships, TARGET_MEMBERSHIP_COLUMNS, what=f"jira '{self.name}' members"),
        )

    def _group_members(self, group: str) -> list[str] | None:
        """Usernames in `group` (incl. inactive and subgroup members), or None if no such group."""
        params = {"groupname": group, "includeInactiveUsers": "true"}
        names: list[str] = []
        pages = self._pages(PAGED["group_members"], params)
        try:
            first = next(pages, [])
        except TargetNotFoundError:
            return None
        names.extend(bean["name"] for bean in first)
        for page in pages:
            names.extend(bean["name"] for bean in page)
        return names

    # -- custom attributes (user properties) and leads ------------------------------------------

    def read_custom_attributes(self, accounts: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
        """The user properties `names` of these accounts, as text.

        Jira has no bulk read of entity properties: this costs one
        `GET /user/properties/<name>?username=` per account and attribute (10,000 accounts and
        two attributes are 20,000 requests), sent `read_workers` at a time. A property the
        account does not have (404) is absent. A JSON string reads as itself; another JSON
        value (written by someone else) as its JSON text.
        """
        asks = [
            (str(key), str(username), name)
            for key, username in zip(accounts["target_key"], accounts["username"], strict=True)
            if pd.notna(key) and pd.notna(username)
            for name in dict.fromkeys(names)
        ]
        with ThreadPoolExecutor(
            max_workers=self.read_workers, thread_name_prefix=f"jira-{self.name}-properties"
        ) as pool:
            values = list(pool.map(lambda ask: self._read_property(ask[1], ask[2]), asks))
        rows = [
            {"target_key": key, "name": name, "value": value}
            for (key, _, name), value in zip(asks, values, strict=True)
            if value is not None
        ]
        return pd.DataFrame(rows, columns=["target_key", "name", "value"]).astype("string")

    def read_user_groups(self, usernames: Sequence[str]) -> pd.DataFrame:
        """Every group of these accounts: one `GET /user?username=&expand=groups` each,
        `read_workers` at a time (Jira DC has no listing of all groups to read instead)."""
        names = [str(n) for n in dict.fromkeys(usernames) if n]

        def groups_of(username: str) -> list[tuple[str, str]]:
            try:
                bean = self._api.get_json(USER, params={"username": username, "expand": "groups"})
            except TargetNotFoundError:
                return []  # deleted meanwhile: nothing to remove
            items = (bean.get("groups") or {}).get("items") or []
            return [(bean.get("name") or username, str(g["name"])) for g in items if g.get("name")]

        with ThreadPoolExecutor(
            max_workers=self.read_workers, thread_name_prefix=f"jira-{self.name}-groups"
        ) as pool:
            rows = [row for found in pool.map(groups_of, names) for row in found]
        return pd.DataFrame(rows, columns=["username", "group"], dtype="string")

    def _read_property(self, username: str, name: str) -> str | None:
        try:
            bean = self._api.get_json(
                USER_PROPERTY.format(key=quote(name, safe="")), params={"username": username}
            )
        except TargetNotFoundError:
            return None
        value = bean.get("value") if isinstance(bean, dict) else None
        if value is None:
            return None
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    def refused_custom_value(self, name: str, value: str) -> str | None:
        """A property key over 255 characters, or a value over `MAX_PROPERTY_VALUE_BYTES`
        bytes of JSON (as written: a JSON string)."""
        if not name or len(name) > MAX_PROPERTY_KEY_LENGTH:
            return (
                f"the property key must be 1 to {MAX_PROPERTY_KEY_LENGTH} characters, "
                f"not {len(name)}"
            )
        size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
        if size > MAX_PROPERTY_VALUE_BYTES:
            return (
                f"the value is {size} bytes as JSON; Jira stores at most "
                f"{MAX_PROPERTY_VALUE_BYTES} in a user property"
            )
        return None

    def read_leads(self) -> pd.DataFrame:
        """Project leads (`GET /project?expand=lead`) and component leads
        (`GET /project/<key>/components`, one per project, `read_workers` at a time).

        A project listed without its lead (a server that ignores the expand) is asked for by
        itself; a component's lead is read from `lead.name` or `leadUserName`, whichever the
        server sends (reference §1.6).
        """
        projects = list(self._api.get_json(PROJECTS, params={"expand": "lead"}) or [])
        with ThreadPoolExecutor(
            max_workers=self.read_workers, thread_name_prefix=f"jira-{self.name}-leads"
        ) as pool:
            leads = list(pool.map(self._project_lead, projects))
            components = list(pool.map(lambda p: self._components(str(p["key"])), projects))
        rows = []
        for project, lead, found in zip(projects, leads, components, strict=True):
            key = str(project["key"])
            if lead:
                rows.append(
                    {
                        "username": lead,
                        "kind": "project",
                        "id": key,
                        "name": project.get("name") or key,
                        "project": key,
                    }
                )
            for component in found:
                name = _lead_name(component)
                if name:
                    rows.append(
                        {
                            "username": name,
                            "kind": "component",
                            "id": str(component["id"]),
                            "name": component.get("name") or str(component["id"]),
                            "project": key,
                        }
                    )
        if not rows:
            return empty_frame(LEAD_COLUMNS)
        return conform(pd.DataFrame(rows), LEAD_COLUMNS, what=f"jira '{self.name}' leads")

    def _project_lead(self, project: Mapping[str, Any]) -> str | None:
        name = _lead_name(project)
        if name is None:
            path = PROJECT.format(key=quote(str(project["key"]), safe=""))
            name = _lead_name(self._api.get_json(path))
        return name

    def _components(self, project_key: str) -> list[dict]:
        path = PROJECT_COMPONENTS.format(key=quote(project_key, safe=""))
        return list(self._api.get_json(path) or [])

    def reassign_lead(self, kind: str, ident: str, username: str) -> None:
        """`PUT /project/<key>` `{"lead": username}` or `PUT /component/<id>`
        `{"leadUserName": username}` (reference §1.6), then read back.

        Jira DC documents 201 for a project update; 200 and 204 are taken too. The read-back
        turns a server that accepts the call but ignores the field (UNCONFIRMED for some
        versions) into a refusal instead of a silent success.

        Raises:
            TargetRejectedError: Jira refused the new lead (unknown or inactive account), or
                the lead read back is not `username`.
            TargetNotFoundError: no such project or component.
        """
        if kind == "project":
            path = PROJECT.format(key=quote(ident, safe=""))
            body: dict[str, Any] = {"lead": username}
        elif kind == "component":
            path = COMPONENT.format(id=quote(ident, safe=""))
            body = {"leadUserName": username}
        else:
            raise ValueError(f"jira '{self.name}': unknown lead kind {kind!r} (project, component)")
        try:
            self._api.request("PUT", path, json=body, ok=(200, 201, 204))
        except TargetRejectedError as exc:
            raise exc.restated(
                f"jira '{self.name}': cannot make '{username}' the lead of {kind} '{ident}': "
                f"{_server_words(exc)}",
                TargetRejectedError,
            ) from exc
        now = _lead_name(self._api.get_json(path))
        if now is None or normalise_name(now) != normalise_name(username):
            raise TargetRejectedError(
                f"jira '{self.name}': Jira accepted '{username}' as the lead of {kind} "
                f"'{ident}' but its lead is still '{now}'"
            )

    # -- writing -----------------------------------------------------------------------------

    def create_user(self, username: str, email: str, display_name: str) -> str:
        """POST /user without a password (Jira sets a random one) and without notification.

        If the answer is lost, the account is looked for before the POST is sent again: an
        account with this username and e-mail (any case) is the one this call made.
        """
        self.refuse_name("user", username, f"create user '{username}'")
        body = {
            "name": username,
            "emailAddress": email,
            "displayName": display_name,
            # A string in UserWriteBean (every description declares it so), not a JSON boolean.
            "notification": "false",
        }

        def made_by_us() -> str | None:
            bean = self._get_user(username.strip().lower())
            held = str((bean or {}).get("emailAddress", "")).strip().casefold()
            return str(bean["key"]) if bean and held == email.strip().casefold() else None

        try:
            return self._api.write_once(
                "POST",
                USER,
                json=body,
                ok=(201,),
                applied=made_by_us,
                result=lambda response: str(response.json()["key"]),
            )
        except TargetRejectedError as exc:
            if not _already_exists(exc):
                raise
            raise exc.restated(
                f"jira '{self.name}': cannot create user '{username}': a user with that "
                "username already exists (adopt it or rename one of them)",
                TargetConflictError,
            ) from exc

    def update_user(
        self, username: str, changes: Mapping[str, str], desired: Mapping[str, str] | None = None
    ) -> None:
        """PUT /user with the changed fields; a "username" change renames (the key stays).

        `custom:<name>` changes are written as user properties, one
        `PUT /user/properties/<name>` each (body: the value as a JSON string), after the
        account's own fields (so a rename comes first); with only custom changes no PUT /user
        is sent. Every value is checked (`refused_custom_value`) before any request. Jira
        leaves fields a PUT does not carry as they are, so `desired` is not needed.
        """
        custom = {
            attr.removeprefix(CUSTOM_PREFIX): value
            for attr, value in changes.items()
            if attr.startswith(CUSTOM_PREFIX)
        }
        changes = {
            attr: value for attr, value in changes.items() if not attr.startswith(CUSTOM_PREFIX)
        }
        unknown = sorted(set(changes) - set(USER_FIELDS))
        if unknown:
            raise ValueError(
                f"jira '{self.name}': cannot change {', '.join(unknown)} of '{username}' "
                f"(known attributes: {', '.join(USER_FIELDS)}, custom:<name>)"
            )
        for name, value in custom.items():
            if why := self.refused_custom_value(name, value):
                raise TargetRejectedError(
                    f"jira '{self.name}': cannot set custom attribute '{name}' of '{username}': "
                    f"{why} (nothing was sent)"
                )
        blank = sorted(attr for attr, value in changes.items() if not str(value).strip())
        if blank:
            # Jira ignores blank fields, so a blank value would be reported done but not made.
            raise TargetRejectedError(
                f"jira '{self.name}': cannot set {', '.join(blank)} of '{username}' to an empty "
                "value (Jira keeps the old one); fix the mapping for this user"
            )
        if "username" in changes:
            self.refuse_name("user", changes["username"], f"rename '{username}'")
        body = {USER_FIELDS[attr]: value for attr, value in changes.items()}
        if body:
            self._put_user(username, body)
        current = changes.get("username", username)
        for name, value in custom.items():
            self._api.request(
                "PUT",
                USER_PROPERTY.format(key=quote(name, safe="")),
                params={"username": current},
                json=value,
                ok=(200, 201, 204),
            )

    def deactivate_user(self, username: str) -> None:
        """PUT /user `{"active": false}` (Jira 8.3+); already inactive counts as done."""
        self._put_user(username, {"active": False})

    def reactivate_user(self, username: str) -> None:
        """PUT /user `{"active": true}`; already active counts as done."""
        self._put_user(username, {"active": True})

    def _put_user(self, username: str, body: dict[str, Any]) -> None:
        try:
            self._api.request("PUT", USER, params={"username": username}, json=body, ok=(200,))
        except TargetNotFoundError as exc:
            # A retried rename whose first try was applied: the old name is gone, the new is there.
            new_name = body.get("name")
            if exc.attempts > 1 and new_name and self._has_values(new_name, body):
                return
            raise
        except TargetRejectedError as exc:
            if _already_exists(exc):
                raise exc.restated(
                    f"jira '{self.name}': cannot rename '{username}' to '{body.get('name')}': "
                    "that username is taken",
                    TargetConflictError,
                ) from exc
            if not _nothing_to_change(exc):
                raise
            # Jira refuses a PUT that changes nothing; if the account already holds the
            # values that is done. Otherwise the field is not accepted at all (before 8.3,
            # Jira refused "active" this way).
            if self._has_values(body.get("name") or username, body):
                return
            raise exc.restated(
                f"jira '{self.name}': Jira ignored {', '.join(body)} for '{username}' "
                f"({_server_words(exc)}); deactivation over REST needs Jira 8.3 or later",
                TargetRejectedError,
            ) from exc

    def _has_values(self, username: str, body: Mapping[str, Any]) -> bool:
        bean = self._get_user(username)
        if bean is None:
            return False
        for field, value in body.items():
            held = bean.get(field)
            if field == "name":
                if normalise_name(str(held)) != normalise_name(str(value)):
                    return False
            elif held != value:
                return False
        return True

    def create_group(self, group: str) -> None:
        """POST /group; an existing group is a `TargetConflictError`.

        If the answer is lost, the group is looked for before the POST is sent again.
        """
        self.refuse_name("group", group, f"create group '{group}'")
        try:
            self._api.write_once(
                "POST",
                GROUP,
                json={"name": group},
                ok=(201,),
                applied=lambda: True if self._group_exists(group) else None,
                result=lambda _response: True,
            )
        except TargetRejectedError as exc:
            if not _already_exists(exc):
                raise
            raise exc.restated(
                f"jira '{self.name}': cannot create group '{group}': it already exists",
                TargetConflictError,
            ) from exc

    def _group_exists(self, group: str) -> bool:
        try:
            self._api.get_json(
                PAGED["group_members"].path, params={"groupname": group, "maxResults": 1}
            )
        except TargetNotFoundError:
            return False
        return True

    def add_member(self, group: str, username: str) -> None:
        """POST /group/user; Jira's 400 for an existing member counts as done."""
        try:
            self._api.request(
                "POST",
                GROUP_USER,
                params={"groupname": group},
                json={"name": username},
                ok=(201,),
                # Sent again after its answer was lost, it meets the "already a member" 400,
                # which is checked and counted as done below.
                replay_safe=True,
            )
        except TargetRejectedError as exc:
            # Jira's "already a member" 400 is a bare localised string: ask instead of parsing.
            if self._is_member(group, username):
                return
            if _about_the_licence(exc):
                raise exc.restated(
                    f"jira '{self.name}': cannot add '{username}' to group '{group}': "
                    f"{_server_words(exc)} — the group grants an application whose Jira "
                    "licence is full: free seats (deactivate unused accounts) or raise the "
                    "licence, then run again",
                    TargetLicenceError,
                ) from exc
            raise

    def remove_member(self, group: str, username: str) -> None:
        """DELETE /group/user; not a member counts as done."""
        try:
            self._api.request(
                "DELETE",
                GROUP_USER,
                params={"groupname": group, "username": username},
                ok=(200, 204),
            )
        except TargetRejectedError:
            if self._is_member(group, username) is False:
                return
            raise

    def _is_member(self, group: str, username: str) -> bool | None:
        """Whether `username` is in `group`; None when the user does not exist."""
        bean = self._get_user(username, groups=True)
        if bean is None:
            return None
        items = (bean.get("groups") or {}).get("items") or []
        return normalise_name(group) in {normalise_name(g.get("name", "")) for g in items}

    # -- licence -----------------------------------------------------------------------------

    def licence_seats(self) -> Seats:
        """The seats free in the application roles a new account gets, from one
        `GET /applicationrole`.

        A new account gets the roles selected by default (it joins their default groups), so
        the free seats are the fewest `remainingSeats` among those roles; roles with unlimited
        seats do not limit. When no role is selected by default, new accounts get no access
        until they are put in a role's group, which then takes the seat: every role is
        considered. A site over its limit has 0 free, not a negative number.

        Returns:
            `Seats`; `known` False when the credentials may not read the roles (403) or the
            site has no such resource (404: Jira before 7), with the reason in `detail`.

        Raises:
            TargetError: Jira could not be reached or answered otherwise.
        """
        where = f"jira '{self.name}'"
        try:
            roles = self._api.get_json(APPLICATION_ROLES)
        except (TargetPermissionError, TargetNotFoundError) as exc:
            reason = (
                "the account may not read them (reading needs the Jira Administrators global "
                "permission)"
                if isinstance(exc, TargetPermissionError)
                else "this Jira has no application roles resource (it arrived in Jira 7)"
            )
            return Seats(
                None,
                known=False,
                detail=f"{where}: licence seats unknown: {APPLICATION_ROLES} was refused: "
                f"{reason} (HTTP {exc.status})",
            )
        if not isinstance(roles, list):
            return Seats(
                None,
                known=False,
                detail=f"{where}: licence seats unknown: {APPLICATION_ROLES} answered "
                f"something other than a list of roles: {str(roles)[:200]}",
            )
        defined = [r for r in roles if isinstance(r, dict) and r.get("defined", True)]
        chosen = [r for r in defined if r.get("selectedByDefault")] or defined
        unread = [
            r
            for r in chosen
            if r.get("numberOfSeats") is not None and not read_limit(r["numberOfSeats"]).understood
        ]
        if unread:
            return Seats(
                None,
                known=False,
                detail=f"{where}: licence seats unknown: {APPLICATION_ROLES} gives a seat limit "
                f"usersync cannot read: {unread[0].get('key')}: "
                f"numberOfSeats={unread[0].get('numberOfSeats')!r}",
            )
        limited: list[tuple[int, dict]] = []
        for role in chosen:
            left = _free_seats(role)
            if left is not None:
                limited.append((left, role))
        if not limited:
            names = ", ".join(str(r.get("key")) for r in chosen) or "none defined"
            return Seats(None, detail=f"{where}: unlimited seats ({names})")
        free, tightest = min(limited, key=lambda pair: pair[0])
        described = "; ".join(
            f"{r.get('key')}: {_int(r.get('userCount'))} of {_int(r.get('numberOfSeats'))} "
            f"seats used, {max(0, left)} free"
            for left, r in limited
        )
        return Seats(
            max(0, free),
            limit=_int(tightest.get("numberOfSeats")),
            used=_int(tightest.get("userCount")),
            detail=f"{where}: {described}",
        )

    # -- housekeeping ------------------------------------------------------------------------

    def check(self) -> TargetCheck:
        """Sign in (GET /myself) and confirm the ADMINISTER global permission; write nothing."""
        where = f"jira '{self.name}' at {self.url}"
        try:
            me = self._api.get_json(MYSELF)
            # Every permission: Jira DC declares no `permissions` filter (Jira Cloud's), only a
            # project or issue context.
            granted = self._api.get_json(MY_PERMISSIONS)
            version = ".".join(str(n) for n in self.server_version())
        except TargetUnreachableError as exc:
            return TargetCheck(False, f"{where} is unreachable: {exc}")
        except TargetAuthError:
            return TargetCheck(
                False,
                f"{where} refused the credentials (HTTP 401): check the username/password or "
                "token configured for this target, and that the account is active",
            )
        except TargetNotFoundError:
            return TargetCheck(
                False,
                f"{where} has no Jira REST API at {self.url}{API_ROOT} (HTTP 404): check the "
                "URL and its context path",
            )
        except TransientError as exc:
            return TargetCheck(False, f"{where} is not answering normally: {exc}")
        except TargetError as exc:
            return TargetCheck(False, f"{where}: {exc}")
        account = me.get("name", "?")
        permission = (granted.get("permissions") or {}).get("ADMINISTER") or {}
        if not permission.get("havePermission"):
            return TargetCheck(
                False,
                f"{where}: account '{account}' is not a Jira administrator (it needs the "
                "'Jira Administrators' global permission to manage users and groups)",
            )
        detail = f"{where}: Jira {version}, signed in as administrator '{account}'"
        for setting, lead in (
            ("default_project_lead", self.default_project_lead),
            ("default_component_lead", self.default_component_lead),
        ):
            if lead is None:
                continue
            try:
                bean = self._get_user(lead)
            except TargetError as exc:
                return TargetCheck(False, f"{where}: cannot check {setting} '{lead}': {exc}")
            if bean is None:
                return TargetCheck(
                    False,
                    f"{where}: {setting} '{lead}' does not exist in Jira; set {setting} of "
                    "this target to the username of an active account",
                )
            if not bean.get("active", True):
                return TargetCheck(
                    False,
                    f"{where}: {setting} '{lead}' is deactivated in Jira, which would refuse "
                    f"it as a lead; reactivate it or set {setting} to an active account",
                )
            detail += f"; {setting} '{lead}' is active"
        return TargetCheck(True, detail)


def _lead_name(bean: Mapping[str, Any]) -> str | None:
    """The lead's username in a project or component bean (`lead.name`, or `leadUserName`)."""
    lead = bean.get("lead")
    name = lead.get("name") if isinstance(lead, dict) else None
    name = name or bean.get("leadUserName")
    return str(name) if name else None


def _int(value: Any) -> int | None:
    """A number from a JSON field, or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _free_seats(role: Mapping[str, Any]) -> int | None:
    """The seats left in an application role (negative when over); None when unlimited.

    Unlimited: no `numberOfSeats`, a negative one (-1 is Jira's "unlimited users") or
    MAX_VALUE (`usersync.targets.licence`), and numbers written as strings are read. A
    role that gives a limit is taken as limited even if `hasUnlimitedSeats` says otherwise:
    a published Jira DC example shows both, and the cautious reading holds creations back.
    `remainingSeats` where given, else the limit less `userCount`.
    """
    seats = read_limit(role.get("numberOfSeats"))
    if seats.value is None:  # absent, -1 or MAX_VALUE: unlimited (see usersync.targets.licence)
        return None
    remaining = read_number(role.get("remainingSeats"))
    if remaining is not None:
        return remaining
    return seats.value - (read_count(role.get("userCount")) or 0)


def _server_words(error: TargetError) -> str:
    """The server's words in a refusal, for messages."""
    body = error.body
    if isinstance(body, dict):
        messages = [str(m) for m in body.get("errorMessages") or []]
        messages += [f"{k}: {v}" for k, v in (body.get("errors") or {}).items()]
        return "; ".join(messages) or str(error)
    return str(body or error)


__all__ = ["ADMIN_GROUPS", "PAGED", "JiraTarget", "PagedEndpoint"]
