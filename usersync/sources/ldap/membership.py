"""Memberships: which users belong to which groups, from member values, memberOf or nesting.

Member values are DNs, resolved against the users and groups read (`DnIndex`); a value that
is no user in scope is left out and reported in a note, never guessed. Nesting is resolved
here (`flatten`, cycles tolerated) where the server cannot (IN_CHAIN is Active Directory's).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import repeat

import pandas as pd

from usersync.model import SOURCE_MEMBERSHIP_COLUMNS, conform
from usersync.sources.ldap.decoding import Entry
from usersync.sources.ldap.dn import DnIndex

#: The back-link attribute naming the groups an entry belongs to (AD; OpenLDAP's memberof overlay).
MEMBER_OF = "memberOf"


@dataclass(frozen=True)
class ResolvedMembers:
    """Memberships found, each (user id, group name) pair once, as two columns, and the member
    values that were no user (or group) in scope."""

    user_ids: list[str]
    groups: list[str]
    unresolved: list[str]

    @property
    def rows(self) -> list[tuple[str, str]]:
        """The memberships as (user id, group name) pairs."""
        return list(zip(self.user_ids, self.groups, strict=True))

    def frame(self) -> pd.DataFrame:
        """The memberships frame (`SOURCE_MEMBERSHIP_COLUMNS`)."""
        return _columns_frame(self.user_ids, self.groups)


def members_from_groups(
    group_entries: list[Entry],
    group_names: list[str],
    member_keys: list[str],
    index: DnIndex,
    group_index: DnIndex,
    *,
    nested_resolved: bool,
) -> ResolvedMembers:
    """Memberships from the groups' member values (under `member_keys`), resolved by DN.

    With `nested_resolved`, a member value that is a group in scope is not unresolved (its
    members count through nesting); otherwise it is left out and noted like any other.
    """
    # Deduplicated per group name (two spellings of one DN, member and uniqueMember, two
    # groups named alike): small dicts of strings whose hashes are cached, where one dict of
    # 1M (user, group) pairs cost more than the lookups (bench/README.md).
    members: dict[str, dict[str | None, None]] = {}
    unresolved: list[str] = []
    for (_dn, attrs), group in zip(group_entries, group_names, strict=True):
        found = members.get(group)
        if found is None:
            found = members[group] = {}
        for key in member_keys:
            source_ids, missing = index.get_many_raw(attrs.get(key, ()))
            found.update(dict.fromkeys(source_ids))
            unresolved += [
                member
                for member in missing
                if not (nested_resolved and group_index.get(member) is not None)
            ]
    user_ids: list[str] = []
    groups: list[str] = []
    for group, found in members.items():
        found.pop(None, None)
        user_ids += found  # None was popped: only user ids are left
        groups += repeat(group, len(found))
    return ResolvedMembers(user_ids, groups, unresolved)


def members_from_member_of(
    user_entries: list[Entry], source_ids: Iterable[str], group_index: DnIndex, key: str
) -> ResolvedMembers:
    """Memberships from the users' memberOf values (under `key`), resolved by group DN."""
    index = group_index
    user_ids: list[str] = []
    groups: list[str] = []
    unresolved: list[str] = []
    for (_dn, attrs), source_id in zip(user_entries, source_ids, strict=True):
        names, missing = index.get_many_raw(attrs.get(key, ()))
        unresolved += missing
        unique = [name for name in dict.fromkeys(names) if name is not None]
        groups += unique
        user_ids += repeat(source_id, len(unique))
    return ResolvedMembers(user_ids, groups, unresolved)


def group_parents(
    group_entries: list[Entry], group_names: list[str], member_keys: list[str], group_index: DnIndex
) -> dict[str, set[str]]:
    """Group name -> names of the groups that list it as a member (under `member_keys`)."""
    keys = member_keys
    parents: dict[str, set[str]] = {}
    for (_dn, attrs), group in zip(group_entries, group_names, strict=True):
        for key in keys:
            members = [raw.decode("utf-8", errors="replace") for raw in attrs.get(key) or ()]
            for child in group_index.get_many(members):
                if child is not None and child != group:
                    parents.setdefault(child, set()).add(group)
    return parents


def flatten(rows: list[tuple[str, str]], parents: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Add, for each (user, group), the user's membership in every group containing that group.

    Cycles (a group nested in itself through others) are tolerated: each group's ancestors
    are collected with a visited set.
    """
    ancestors: dict[str, set[str]] = {}

    def collect(group: str) -> set[str]:
        found = ancestors.get(group)
        if found is None:
            found = set()
            pending = list(parents.get(group, ()))
            while pending:
                parent = pending.pop()
                if parent not in found:
                    found.add(parent)
                    pending.extend(parents.get(parent, ()))
            found.discard(group)
            ancestors[group] = found
        return found

    flat = list(rows)
    for source_id, group in rows:
        flat += [(source_id, parent) for parent in collect(group)]
    return flat


def memberships_frame(rows: list[tuple[str, str]]) -> pd.DataFrame:
    """The memberships frame of `rows` (user id, group name), each pair once, in first order."""
    unique = list(dict.fromkeys(rows))
    return _columns_frame([user for user, _ in unique], [group for _, group in unique])


def _columns_frame(user_ids: list[str], groups: list[str]) -> pd.DataFrame:
    user_column, group_column = SOURCE_MEMBERSHIP_COLUMNS
    frame = pd.DataFrame(
        {
            user_column: pd.array(user_ids, dtype="string"),
            group_column: pd.array(groups, dtype="string"),
        }
    )
    return conform(frame, SOURCE_MEMBERSHIP_COLUMNS, what="ldap memberships")


def group_locators(groups: pd.DataFrame, entries: list[Entry]) -> pd.DataFrame:
    """The groups frame with each group's DN as `locator`."""
    return groups.assign(locator=pd.Series([dn for dn, _ in entries], dtype="string"))
