"""The one interface every target product implements, and what is shared between them.

A target reads the users and groups a run asks about and performs the seven write operations
of a plan. What differs per product (paths, paging envelopes, what "deactivate" means, which
auth a call needs) lives in that product's module; the planner and the loader only see this
interface. Writes are idempotent where the product allows: adding a member who is already in
the group, or removing one who is not, counts as done.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

from usersync.model import (
    TARGET_GROUP_COLUMNS,
    TARGET_MEMBERSHIP_COLUMNS,
    TARGET_USER_COLUMNS,
    TargetState,
    conform,
)


@dataclass(frozen=True)
class TargetCheck:
    """The outcome of one connection check against a target (used by Test Connection)."""

    ok: bool
    detail: str


class Target(ABC):
    """A product usersync writes users and groups into."""

    #: The product's name as profiles spell it: "jira", "confluence", "bitbucket".
    product: str = ""

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

    def read_state(self, usernames: Iterable[str], groups: Iterable[str]) -> TargetState:
        """Read everything the planner needs about these users and groups."""
        users = conform(self.read_users(usernames), TARGET_USER_COLUMNS, what=f"{self.name} users")
        found_groups, members = self.read_groups(groups)
        return TargetState(
            users=users,
            groups=conform(found_groups, TARGET_GROUP_COLUMNS, what=f"{self.name} groups"),
            memberships=conform(members, TARGET_MEMBERSHIP_COLUMNS, what=f"{self.name} members"),
        )

    # -- writing -------------------------------------------------------------------------

    @abstractmethod
    def create_user(self, username: str, email: str, display_name: str) -> str:
        """Create an active account; return its target key. An existing username is an error."""

    @abstractmethod
    def update_user(self, username: str, changes: Mapping[str, str]) -> None:
        """Change attributes of the account now called `username`.

        `changes` maps attribute names of `model.USER_ATTRIBUTES` to new values; a "username"
        entry renames the account.
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

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def normalise_name(name: str) -> str:
    """The comparison key of a username or group name: Atlassian products ignore case."""
    return name.casefold()


def normalise_names(values: pd.Series) -> pd.Series:
    """Vectorised `normalise_name` over a string column."""
    return values.astype("string").str.casefold()
