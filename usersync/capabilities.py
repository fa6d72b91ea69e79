"""What a source or a target can do beyond its interface, declared once and checked in one place.

`Source` and `Target` (`sources/base.py`, `targets/base.py`) are what every client offers.
Some clients offer more: Bitbucket adds members in bulk, LDAP checks attribute names against
its schema, looks single users up and reads incrementally. Each such extra is a
`typing.Protocol` here, whose docstring says what it promises and which step uses it; a step
asks `offers(client, Capability)` and, when it is true, calls the protocol's methods. A client
offers a capability when it has each of the protocol's members and no method among them is
only the interface's own declaration (`Target.read_user_groups` refuses by default).

Flags that are plain settings of a client class (`Target.custom_attributes`) stay flags.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Protocol, TypeGuard, TypeVar

import pandas as pd

from usersync.sources.base import Source, SourceCheck
from usersync.targets.base import Target

if TYPE_CHECKING:
    from usersync.config import LdapSourceConfig
    from usersync.model import SourceSnapshot
    from usersync.sources.ldap.incremental import (
        ChangedEntries,
        DirectoryChanges,
        DirectoryPosition,
    )

__all__ = [
    "MEMBERS_PER_CALL",
    "AccountGroupsReader",
    "AttributeChecker",
    "BulkMembershipWriter",
    "IncrementalSource",
    "ScopedRead",
    "UserLookup",
    "members_per_call",
    "offers",
]

#: Usernames per bulk membership call unless the target says (`max_members_per_call`).
MEMBERS_PER_CALL = 100


class AccountGroupsReader(Protocol):
    """A target that lists every group of an account, mapped or not (Jira, Confluence,
    Bitbucket). `settings.groups.keep_existing_groups: false` needs it (`sync.prepare_profile` refuses
    the profile otherwise) to remove managed accounts from groups no rule maps."""

    def read_user_groups(self, usernames: Sequence[str]) -> pd.DataFrame:
        """Every group of these accounts: `username`, `group` (one row each)."""
        ...


class BulkMembershipWriter(Protocol):
    """A target that adds several members to one group in one call (Bitbucket's add-users).
    `load.execute_plan` then sends a group's new members in batches of `members_per_call`
    rather than one call per membership."""

    def add_members(self, group: str, usernames: Sequence[str]) -> None:
        """Add `usernames` to `group`; raises as `Target.add_member` for the whole batch."""
        ...


class AttributeChecker(Protocol):
    """A source that tells a misspelt attribute from an empty one (LDAP, through the server's
    schema). Test Connection (`connection.py`) runs it after `Source.check`."""

    def check_attributes(self, attributes: Sequence[str]) -> SourceCheck:
        """Whether the source defines every attribute the mapping reads; never raises."""
        ...


class UserLookup(Protocol):
    """A source that looks one user up without reading everything (LDAP). Test Sync
    (`sync_preview.py`) needs it; a source without it has no Test Sync."""

    def find_users(self, attribute: str, value: str, attributes: Sequence[str]) -> pd.DataFrame:
        """The users whose `attribute` equals `value`, as `extract` would return them."""
        ...

    def user_groups(self, locator: str) -> tuple[list[str], list[str]]:
        """The groups of the user at `locator`, and notes on how they were found."""
        ...

    def entry_attributes(self, locator: str) -> dict[str, list[str]]:
        """Every attribute of the entry at `locator`, as the source holds it."""
        ...


class ChangeMarked(Protocol):
    """A source that can say cheaply whether anything changed: a mark that moves with every
    change (the inbox's generation). A delta run finding the mark where the last run of every
    target left it reads nothing (`sync.unchanged_source`)."""

    def change_mark(self) -> str | None:
        """The mark now; None when the source cannot tell (then the source is read)."""
        ...


class ScopedRead(Protocol):
    """A source that reads a few identities by key without reading everything (the inbox). A
    delta run scoped to them (an offboarding) plans from that read alone
    (`sync.extract_scoped`), and from the whole source whenever it cannot trust it."""

    def extract_only(self, attributes: Sequence[str], ids: Collection[str]) -> SourceSnapshot:
        """The users with these source ids (absent: gone from the source) and, of each group
        holding one of them, only those members."""
        ...


class IncrementalSource(Protocol):
    """A source that reads only what changed since a watermark (LDAP: AD's uSNChanged,
    OpenLDAP's entryCSN). `sources/watermark.py` merges the changes into the snapshot of the
    last successful run when the profile sets `incremental.enabled`."""

    config: LdapSourceConfig

    def position(self) -> DirectoryPosition:
        """Where the server stands now (its identity and mark), taken before a read."""
        ...

    def read_snapshot(self, attributes: Sequence[str]) -> tuple[SourceSnapshot, pd.DataFrame]:
        """A full read, and the groups with their locators (kept with the cached snapshot)."""
        ...

    def search_changes(
        self,
        attributes: Sequence[str],
        *,
        since: int,
        expired_between: tuple[int, int] | None = None,
    ) -> ChangedEntries:
        """The users and groups changed after `since`."""
        ...

    def resolve_changes(
        self, found: ChangedEntries, *, known_users: pd.DataFrame, known_groups: pd.DataFrame
    ) -> DirectoryChanges:
        """`found` resolved against the cached entries."""
        ...


#: The members each capability needs: what `offers` checks. Kept beside the protocols.
CAPABILITY_MEMBERS: dict[type, tuple[str, ...]] = {
    AccountGroupsReader: ("read_user_groups",),
    BulkMembershipWriter: ("add_members",),
    AttributeChecker: ("check_attributes",),
    UserLookup: ("find_users", "user_groups", "entry_attributes"),
    ChangeMarked: ("change_mark",),
    ScopedRead: ("extract_only",),
    IncrementalSource: (
        "config",
        "position",
        "read_snapshot",
        "search_changes",
        "resolve_changes",
    ),
}

_Capability = TypeVar("_Capability")


def offers(client: object, capability: type[_Capability]) -> TypeGuard[_Capability]:
    """Whether `client` (an open client, a wrapper around one, or its class) offers `capability`.

    Each member the capability names must be present; a method must be callable and not be
    the interface's own declaration (`Target` or `Source`), which refuses rather than serves.

    Raises:
        KeyError: `capability` is not one of this module's protocols.
    """
    for name in CAPABILITY_MEMBERS[capability]:
        member = getattr(client, name, None)
        if member is None:
            return False
        annotations = getattr(capability, "__annotations__", {})
        if name in annotations:  # a data member: present is enough
            continue
        if not callable(member) or _declared_only(name, member):
            return False
    return True


def members_per_call(target: BulkMembershipWriter) -> int:
    """How many usernames one `add_members` call takes: the target's `max_members_per_call`,
    or `MEMBERS_PER_CALL` when it does not say."""
    return max(1, int(getattr(target, "max_members_per_call", MEMBERS_PER_CALL)))


def _declared_only(name: str, member: object) -> bool:
    """Whether `member` is the interface's own method `name`, not a client's."""
    function = getattr(member, "__func__", member)
    return any(getattr(base, name, None) is function for base in (Target, Source))
