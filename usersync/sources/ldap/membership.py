"""Memberships: which users belong to which groups, from member values, memberOf or nesting.

Member values are DNs, resolved against the users and groups read (`DnIndex`); a value that
is no user in scope is left out and reported in a note, never guessed. Nesting is resolved
here (`flatten`, cycles tolerated) where the server cannot (IN_CHAIN is Active Directory's).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from usersync.model import SOURCE_MEMBERSHIP_COLUMNS, conform
from usersync.sources.ldap.decoding import Entry
from usersync.sources.ldap.dn import DnIndex


@dataclass(frozen=True)
class ResolvedMembers:
    """Memberships found, and the member values that were no user (or group) in scope."""

    rows: list[tuple[str, str]]
    unresolved: list[str]


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
    keys = member_keys
    rows: list[tuple[str, str]] = []
    unresolved: list[str] = []
    for (_dn, attrs), group in zip(group_entries, group_names, strict=True):
        for key in keys:
            members = [raw.decode("utf-8", errors="replace") for raw in attrs.get(key, ())]
            source_ids = index.get_many(members)
            rows += [(source_id, group) for source_id in source_ids if source_id is not None]
            if None in source_ids:
                unresolved += [
                    member
                    for member, source_id in zip(members, source_ids, strict=True)
                    if source_id is None
                    and not (nested_resolved and group_index.get(member) is not None)
                ]
    return ResolvedMembers(rows, unresolved)


def members_from_member_of(
    user_entries: list[Entry], source_ids: Iterable[str], group_index: DnIndex, key: str
) -> ResolvedMembers:
    """Memberships from the users' memberOf values (under `key`), resolved by group DN."""
    index = group_index
    rows: list[tuple[str, str]] = []
    unresolved: list[str] = []
    for (_dn, attrs), source_id in zip(user_entries, source_ids, strict=True):
        for raw in attrs.get(key, ()):
            group_dn = raw.decode("utf-8", errors="replace")
            group = index.get(group_dn)
            if group is None:
                unresolved.append(group_dn)
            else:
                rows.append((source_id, group))
    return ResolvedMembers(rows, unresolved)


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
    frame = pd.DataFrame(rows, columns=list(SOURCE_MEMBERSHIP_COLUMNS), dtype="string")
    return conform(frame.drop_duplicates(), SOURCE_MEMBERSHIP_COLUMNS, what="ldap memberships")


def group_locators(groups: pd.DataFrame, entries: list[Entry]) -> pd.DataFrame:
    """The groups frame with each group's DN as `locator`."""
    return groups.assign(locator=pd.Series([dn for dn, _ in entries], dtype="string"))
