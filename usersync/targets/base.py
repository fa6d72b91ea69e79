"""The one interface every target product implements, and what is shared between them.

A target reads the users and groups a run asks about and performs the seven write operations
of a plan. What differs per product (paths, paging envelopes, what "deactivate" means, which
auth a call needs) lives in that product's module; the planner and the loader only see this
interface. Writes are idempotent where the product allows: adding a member who is already in
the group, or removing one who is not, counts as done.
"""

from __future__ import annotations

import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from usersync.errors import (
    TargetAuthError,
    TargetError,
    TargetPermissionError,
    TargetRejectedError,
    TargetUnreachableError,
    TransientError,
)
from usersync.http import ApiClient
from usersync.model import (
    CUSTOM_PREFIX,
    LEAD_COLUMNS,
    TARGET_GROUP_COLUMNS,
    TARGET_MEMBERSHIP_COLUMNS,
    TARGET_USER_COLUMNS,
    TargetState,
    conform,
    empty_frame,
)
from usersync.targets.versions import ProductVersion, describe_version

#: The longest user or group name any of the products stores (their name columns).
MAX_NAME_LENGTH = 255
#: Bidirectional embedding/override (U+202A-U+202E) and isolate (U+2066-U+2069) controls.
BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))


@dataclass(frozen=True)
class Seats:
    """A product's licence headroom for new accounts.

    `free` None means unlimited (or a licence that does not count users); `known` False means
    the product would not say (the guard then says so and does not hold creations back).
    """

    free: int | None
    limit: int | None = None
    used: int | None = None
    known: bool = True
    detail: str = ""


#: The stock names of the groups that grant administration in Jira (jira-administrators,
#: jira-system-administrators) and Confluence (confluence-administrators, and the
#: administrators / system-administrators of older sites). Privileged in every product: a rule
#: never creates or fills a group of one of these names, even where the product lacks it.
STOCK_ADMIN_GROUPS = frozenset(
    {
        "jira-administrators",
        "jira-system-administrators",
        "confluence-administrators",
        "administrators",
        "system-administrators",
    }
)


@dataclass(frozen=True)
class Privileges:
    """Who holds administrative rights in a product, and which groups grant them.

    `administrators`: case-folded usernames with administrator or system-administrator rights,
    directly or through a group. `groups`: case-folded names of the groups that grant them
    (with `STOCK_ADMIN_GROUPS` always among them). `problem`: why the administrators cannot
    all be established (a permission list the product will not show); None when they can.
    When it is set, usersync fails closed: no unmanaged account is adopted or relinked.
    """

    administrators: frozenset[str] = frozenset()
    groups: frozenset[str] = STOCK_ADMIN_GROUPS
    problem: str | None = None

    @property
    def known(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class TargetCheck:
    """The outcome of one connection check against a target (used by Test Connection)."""

    ok: bool
    detail: str


class Target(ABC):
    """A product usersync writes users and groups into."""

    #: The product's name as profiles spell it: "jira", "confluence", "bitbucket".
    product: str = ""
    #: Whether the product can rename an account over its API (Confluence cannot): the planner
    #: reports a source rename it cannot make as a conflict instead of failing it every run.
    can_rename: bool = True
    #: what `product_version` found, once read
    _product_version: ProductVersion | None = None

    def __init__(self, name: str) -> None:
        #: The target's name in the profile (a profile may have two Jira instances).
        self.name = name

    # -- reading -------------------------------------------------------------------------

    @abstractmethod
    def read_users(self, usernames: Iterable[str]) -> pd.DataFrame:
        """The target's accounts among `usernames` (case-insensitive), active or not.

        Returns:
            A frame with `model.TARGET_USER_COLUMNS`; names not found are simply absent.
        """

    @abstractmethod
    def read_groups(self, groups: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Which of `groups` exist, and their members (active and inactive).

        Returns:
            (groups frame with `TARGET_GROUP_COLUMNS`, memberships with `TARGET_MEMBERSHIP_COLUMNS`).
        """

    @abstractmethod
    def read_users_by_key(self, keys: Iterable[str]) -> pd.DataFrame:
        """The target's accounts with these immutable keys, with their names as they are now.

        This is how an account renamed by hand in the product is still found: the ledger
        links source ids to keys, and names are resolved from keys on every run.

        Returns:
            A frame with `model.TARGET_USER_COLUMNS`; keys not found (deleted) are absent.
        """

    def read_state(
        self,
        usernames: Iterable[str],
        groups: Iterable[str],
        keys: Iterable[str] = (),
        custom: Sequence[str] = (),
    ) -> TargetState:
        """Read everything the planner needs about these users (by name or key) and groups,
        and the custom attributes `custom` of those users (columns `custom:<name>`). Lead
        roles are read apart (`read_leads`), only when a plan deactivates someone."""
        # Names first: a managed account is almost always still called what the source calls
        # it. Only the keys not found that way (renamed by hand, deleted) are looked up by key,
        # which on a large site is the difference between a few requests and 100k.
        by_name = conform(
            self.read_users(usernames), TARGET_USER_COLUMNS, what=f"{self.name} users"
        )
        found = set(by_name["target_key"].dropna())
        keys = [k for k in dict.fromkeys(keys) if k and k not in found]
        if keys:
            by_key = conform(
                self.read_users_by_key(keys), TARGET_USER_COLUMNS, what=f"{self.name} users"
            )
            by_name = pd.concat([by_name, by_key], ignore_index=True)
        users = by_name.drop_duplicates("target_key", ignore_index=True)
        if custom and self.custom_attributes:
            users = self._with_custom(users, list(custom))
        found_groups, members = self.read_groups(groups)
        return TargetState(
            users=users,
            groups=conform(found_groups, TARGET_GROUP_COLUMNS, what=f"{self.name} groups"),
            memberships=conform(members, TARGET_MEMBERSHIP_COLUMNS, what=f"{self.name} members"),
        )

    def _with_custom(self, users: pd.DataFrame, names: list[str]) -> pd.DataFrame:
        """`users` with one `custom:<name>` column per custom attribute (NA: not set)."""
        values = self.read_custom_attributes(users[["target_key", "username"]], names)
        out = users.copy()
        for name in names:
            part = values.loc[values["name"] == name] if len(values) else values
            lookup = dict(zip(part["target_key"], part["value"], strict=False)) if len(part) else {}
            out[CUSTOM_PREFIX + name] = out["target_key"].map(lookup).astype("string")
        return out

    # -- custom attributes and leads (products that have them override these) -----------

    #: whether the product stores custom attributes of accounts (Jira: user properties);
    #: attributes.csv rows for `custom:<name>` are refused at validate time for the others
    custom_attributes: bool = False

    def read_custom_attributes(self, accounts: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
        """The values of custom attributes `names` of these accounts.

        Args:
            accounts: rows with `target_key` and `username` (as the product spells it now).
            names: attribute names, without the `custom:` prefix.

        Returns:
            A frame `target_key`, `name`, `value` (string); an attribute the account does not
            have is absent or NA.
        """
        raise NotImplementedError(f"{self.product} has no custom attributes")

    def unsendable_name(self, kind: str, name: str) -> str | None:
        """Why this client cannot carry a name the product would accept (a capability of the
        site or of the credentials it lacks); None when it can. Checked at plan time like
        `refused_name`. The default can carry every name."""
        return None

    def refused_value(self, attribute: str, value: str) -> str | None:
        """Why the product would refuse this `display_name` or `email`; None if it takes it.

        Checked at plan time: a user with such a value is a rejected row (with the reason and
        the fix), nothing is sent for it, and the run stays green. The default refuses what
        no product stores: control characters, and more than 255 characters.
        """
        if len(value) > MAX_NAME_LENGTH:
            return f"its {attribute} is longer than {MAX_NAME_LENGTH} characters"
        bad = next((ch for ch in value if unicodedata.category(ch) == "Cc"), None)
        if bad is not None:
            return f"its {attribute} contains the control character U+{ord(bad):04X}"
        return None

    def refused_custom_value(self, name: str, value: str) -> str | None:
        """Why the product would refuse this custom attribute value (too long, say); None if
        it takes it. Checked before any request; the value is then not written."""
        return None

    def read_user_groups(self, usernames: Sequence[str]) -> pd.DataFrame:
        """Every group these accounts are members of: `username`, `group` (one row each).

        Needed only by `settings.groups.keep_existing_groups: false`, which removes managed
        accounts from groups no rule maps; it costs a request per account (or per page).
        """
        raise NotImplementedError(
            f"{self.product}: reading every group of an account is not implemented, so "
            "settings.groups.keep_existing_groups: false cannot be used with it"
        )

    def licence_seats(self) -> Seats:
        """How many more accounts the licence lets this product grant access to.

        Read once per run before loading; creations beyond it are held back (see the seat
        guard in usersync.sync). The default does not know.
        """
        return Seats(None, known=False, detail=f"{self.product}: licence seats not read")

    def read_leads(self) -> pd.DataFrame:
        """Every project and component lead role in the product (`model.LEAD_COLUMNS`).

        A product whose deactivation is refused for a lead (Jira, for project leads) reads
        them so the plan can hand them over first; the default has none.
        """
        return empty_frame(LEAD_COLUMNS)

    def reassign_lead(self, kind: str, ident: str, username: str) -> None:
        """Make `username` the lead of project (key) or component (id) `ident`."""
        raise NotImplementedError(f"{self.product} has no project or component leads")

    def current_account(self) -> str | None:
        """The username this client authenticates as (asked of the target, whatever the auth).

        usersync never adopts, updates or deactivates that account: doing so could lock
        usersync itself out. None when the product cannot say.
        """
        return None

    def administrators(self) -> set[str]:
        """Usernames (case-folded) of the accounts with administrative rights in the product.

        Directly or through a group: Jira administrators and system administrators, Confluence
        administrators and system administrators, Bitbucket ADMIN and SYS_ADMIN. usersync never
        adopts, updates or deactivates these unless the profile lists them explicitly
        (`settings.manage_admin_accounts`): adopting one by name would hand an administrator
        account to whoever controls that name in the IdP. The default knows none; each
        product overrides it.
        """
        return set()

    def privileges(self) -> Privileges:
        """The administrators and the groups that grant administration (see `Privileges`).

        Read at plan time and at Test Connection. No mapping rule adds anyone to one of the
        groups, or creates one, unless `settings.groups.allow_privileged_groups` names it.
        The default knows only `administrators()` and the stock group names; each product
        overrides it with what its API tells.
        """
        return Privileges(frozenset(normalise_name(a) for a in self.administrators()))

    def access_groups(self) -> set[str]:
        """Case-folded names of the groups that grant access to the product (a licence, an
        application role, "Can use"). `keep_existing_groups: false` never removes anyone from
        them unless a rule names them. The default knows none; each product overrides it."""
        return set()

    def groups_of_new_accounts(self) -> set[str]:
        """Case-folded names of the groups the product puts an account this client creates in
        by itself (Jira: the default groups of the application roles selected by default). The
        plan counts a new account as a member of them: asking again is a write the product
        refuses (Jira answers 400). The default knows none."""
        return set()

    def stored_form(self, users: pd.DataFrame) -> pd.DataFrame:
        """Desired users' attributes as the product would store them (for comparing).

        A value the product normalises on write (surrounding blanks trimmed, say) must compare
        equal to what it stores, or the same update would be sent on every run. The default
        trims surrounding white space of the three attributes; a product that changes values
        further overrides this.
        """
        out = users.copy()
        for name in ("username", "email", "display_name"):
            if name in out.columns:
                out[name] = out[name].astype("string").str.strip()
        return out

    def refused_name(self, kind: str, name: str) -> str | None:
        """Why the product would refuse `name` for a "user" or a "group"; None if it accepts it.

        Names the product refuses are reported (and the user not provisioned) before any
        request is made. The default refuses what no Atlassian product should be given:
        empty names, names longer than 255 characters (the products' name columns), control
        characters (C0, DEL, C1: NUL included), and names that can pass for another name:
        any Unicode format character (category Cf: the bidirectional overrides and isolates,
        U+202A-U+202E and U+2066-U+2069, but also zero-width spaces and joiners, the word
        joiner, the soft hyphen), which the products store but do not display, and any name
        that NFKC normalisation changes (fullwidth letters, ligatures like U+FB01, a letter
        and its accent as two characters), which displays like its plain form. Group names
        follow the same rules: a group that looks like `jira-administrators` is as
        misleading as an account that looks like `admin`. A product adds its own rules by
        overriding this and calling it first.
        """
        if not name or not name.strip():
            return f"empty {kind} name"
        if len(name) > MAX_NAME_LENGTH:
            return f"{kind} name longer than {MAX_NAME_LENGTH} characters"
        for ch in name:
            category = unicodedata.category(ch)
            if category == "Cc":
                return f"{kind} name contains the control character U+{ord(ch):04X}"
            if ch in BIDI_CONTROLS:
                return (
                    f"{kind} name contains the bidirectional control U+{ord(ch):04X}, which "
                    "makes it display as another name"
                )
            if category == "Cf":
                return (
                    f"{kind} name contains the invisible format character {_described(ch)}, "
                    "which makes it display as another name"
                )
        if not unicodedata.is_normalized("NFKC", name):
            return f"{kind} name {_nfkc_change(name)}"
        return None

    def refuse_name(self, kind: str, name: str, doing: str) -> None:
        """Raise before any request if the product would refuse `name` for a "user" or a
        "group" (`refused_name`), saying what could not be done and the fix."""
        why = self.refused_name(kind, name)
        if why:
            raise TargetRejectedError(
                f"{self.product} '{self.name}': cannot {doing}: {why}; change the {kind} name "
                "mapping (nothing was sent)"
            )

    # -- writing -------------------------------------------------------------------------

    @abstractmethod
    def create_user(self, username: str, email: str, display_name: str) -> str:
        """Create an active account; return its target key. An existing username is an error."""

    @abstractmethod
    def update_user(
        self, username: str, changes: Mapping[str, str], desired: Mapping[str, str] | None = None
    ) -> None:
        """Change attributes of the account now called `username`.

        `changes` maps attribute names of `model.USER_ATTRIBUTES` to new values; a "username"
        entry renames the account. `desired`, when given, maps every attribute to the value
        the source wants, unchanged ones included: a product whose update call must carry all
        fields sends those instead of reading the account first (or leaving one out).
        """

    @abstractmethod
    def deactivate_user(self, username: str) -> None:
        """Take the account out of use without deleting it (idempotent)."""

    @abstractmethod
    def reactivate_user(self, username: str) -> None:
        """Put a deactivated account back in use (idempotent)."""

    @abstractmethod
    def create_group(self, group: str) -> None:
        """Create a group. An existing group is an error (the planner only creates missing ones)."""

    @abstractmethod
    def add_member(self, group: str, username: str) -> None:
        """Add a user to a group; already a member counts as done."""

    @abstractmethod
    def remove_member(self, group: str, username: str) -> None:
        """Remove a user from a group; not a member counts as done."""

    # -- housekeeping --------------------------------------------------------------------

    @abstractmethod
    def check(self) -> TargetCheck:
        """Reach the target, prove the credentials and the admin permission; write nothing."""

    def server_version(self) -> tuple[int, ...] | None:
        """The product's version as numbers, as the server reports it; None when this client
        cannot ask. Each product overrides it."""
        return None

    def product_version(self) -> ProductVersion | None:
        """The product and version this client talks to, whether usersync supports it and,
        if not, what may not work (`usersync.targets.versions`); read once per client.

        None when the client cannot ask. A version the server will not tell (a missing or
        refused resource) is an unknown version, not an error.

        Raises:
            TransientError, TargetUnreachableError, TargetAuthError, TargetPermissionError: the
                target cannot be reached or refuses the credentials (as any read would).
        """
        if self._product_version is None:
            try:
                numbers = self.server_version()
            except (TransientError, TargetUnreachableError, TargetAuthError, TargetPermissionError):
                raise
            except TargetError as exc:
                self._product_version = describe_version(self.product, None, why=str(exc))
            else:
                if numbers is None:
                    return None
                self._product_version = describe_version(self.product, numbers)
        return self._product_version

    def set_deadline(self, at: float | None) -> None:
        """Stop sending requests after `at` (a `time.monotonic()` value), retries included.

        Applies to every HTTP client the target holds; a call that would start, or a retry
        wait that would end, past it raises `TargetDeadlineError`.
        """
        for value in vars(self).values():
            if isinstance(value, ApiClient):
                value.deadline = at

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def normalise_name(name: str) -> str:
    """The comparison key of a username or group name: Atlassian products ignore case."""
    return name.casefold()


def _described(ch: str) -> str:
    """`U+FF41 FULLWIDTH LATIN SMALL LETTER A`: a character as a reason names it."""
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X} {name}" if name else f"U+{ord(ch):04X}"


def _nfkc_change(name: str) -> str:
    """What in `name` NFKC normalisation changes, and what to use instead (for a reason)."""
    for ch in name:
        plain = unicodedata.normalize("NFKC", ch)
        if plain != ch:
            return (
                f"contains {_described(ch)}, which changes under NFKC normalisation (to "
                f"{plain!r}) and displays like it; use the plain form"
            )
    # Every character is stable alone: a sequence composes (a letter and a combining accent).
    return (
        f"changes under NFKC normalisation (to {unicodedata.normalize('NFKC', name)!r}): a "
        "letter and its accent are written as two characters; use the composed form"
    )
