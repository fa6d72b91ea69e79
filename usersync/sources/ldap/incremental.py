"""Incremental reads: where the directory stands now, and what changed since a watermark.

`position` reads the server's identity and a counter that only grows: on Active Directory the
DC's dsServiceName, invocationId and highestCommittedUSN. `read_changes` reads the users and
groups in scope whose change counter passed a watermark (AD's uSNChanged). What is kept between
runs, when a full read is due and when the watermark advances is `usersync.sources.watermark`'s.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
from ldap3 import BASE, Connection

from usersync.config import LdapSourceConfig
from usersync.errors import (
    ConfigError,
    SourceError,
)
from usersync.sources.ldap.active_directory import (
    ACCOUNT_EXPIRES,
)
from usersync.sources.ldap.decoding import (
    Entry,
    garbage_collection_paused,
)
from usersync.sources.ldap.dn import DnIndex
from usersync.sources.ldap.membership import (
    MEMBER_OF,
    flatten,
    group_locators,
    group_parents,
    members_from_groups,
    members_from_member_of,
    memberships_frame,
)
from usersync.sources.ldap.pager import describe_result
from usersync.sources.ldap.values import (
    and_filters,
)


@dataclass(frozen=True)
class DirectoryPosition:
    """Where a domain controller stood: its identity and its highest committed USN.

    USNs are per DC (not replicated), so a watermark is meaningful only on the DC it came from.
    """

    dc: str  # dsServiceName and invocationId
    usn: int


@dataclass(frozen=True)
class DirectoryChanges:
    """What an incremental read found (see `LdapSource.read_changes`).

    `users` and `groups` (the latter with `locator`) replace the cached rows with the same ids.
    `memberships` are the complete memberships of those groups and, from memberOf, of those
    users; with `all_groups` every group was read and they replace all memberships.
    """

    users: pd.DataFrame
    groups: pd.DataFrame
    memberships: pd.DataFrame
    all_groups: bool


class IncrementalReads:
    """The incremental reads of an `LdapSource` (a mixin: searches and frames from the others)."""

    config: LdapSourceConfig
    _connection: Callable[[], Connection]
    _paged_search: Callable[..., list[Entry]]

    def position(self) -> DirectoryPosition:
        """Where the directory server stands now: its identity and `highestCommittedUSN`.

        Taken before an incremental read, so a change committed during the read is read again
        next time rather than missed.

        Raises:
            ConfigError: the server is not Active Directory (no USN in its rootDSE).
            SourceError: the rootDSE or the server's NTDS Settings entry cannot be read.
        """
        conn = self._connection()
        conn.search(
            "",
            "(objectClass=*)",
            search_scope=BASE,
            attributes=["highestCommittedUSN", "dsServiceName"],
        )
        found = [i for i in conn.response or () if i.get("type") == "searchResEntry"]
        root = found[0]["raw_attributes"] if found and conn.result["result"] == 0 else {}
        if not root.get("highestCommittedUSN") or not root.get("dsServiceName"):
            raise ConfigError(
                f"{self.config.url}: the rootDSE shows no highestCommittedUSN/dsServiceName, so "
                "this is not an Active Directory domain controller; turn incremental off"
            )
        service = root["dsServiceName"][0].decode("utf-8")
        # invocationId changes when the DC's database is restored: USNs from before the
        # restore may be reused, so it is part of the identity the watermark is tied to.
        conn.search(service, "(objectClass=*)", search_scope=BASE, attributes=["invocationId"])
        found = [i for i in conn.response or () if i.get("type") == "searchResEntry"]
        invocation = (found[0]["raw_attributes"].get("invocationId") or [b""])[0] if found else b""
        if conn.result["result"] != 0 or len(invocation) != 16:
            raise SourceError(
                f"{self.config.url}: cannot read invocationId of {service} "
                f"({describe_result(conn.result)}); the bind account needs read access to it"
            )
        dc = f"{service} invocationId={uuid.UUID(bytes_le=invocation)}"
        return DirectoryPosition(dc=dc, usn=int(root["highestCommittedUSN"][0]))

    def read_changes(
        self,
        attributes: Sequence[str],
        *,
        since_usn: int,
        known_users: pd.DataFrame,
        known_groups: pd.DataFrame,
        expired_between: tuple[int, int] | None = None,
    ) -> DirectoryChanges:
        """The users and groups in scope changed after `since_usn` (Active Directory only).

        Changed users are read whole, with their memberOf; changed groups are read whole,
        `member` in checked ranges. With nested groups resolved, every group is read (a change
        deep in a nest changes its ancestors' members without touching them) and memberships
        are recomputed entirely. Member values are resolved against the known entries merged
        with the changed ones. Deleted entries, and entries that left the scope, are not seen.

        Args:
            attributes: as for `extract`.
            since_usn: the watermark: entries with `uSNChanged` above it are read.
            known_users: the cached users (`source_id`, `locator`).
            known_groups: the cached groups (`source_group_id`, `source_group`, `locator`).
            expired_between: (from, to) as FILETIMEs: users whose accountExpires passed in that
                window are read too (expiry changes no USN).

        Raises:
            as `extract`.
        """
        with garbage_collection_paused():
            return self._read_changes(
                attributes,
                since_usn=since_usn,
                known_users=known_users,
                known_groups=known_groups,
                expired_between=expired_between,
            )

    def _read_changes(
        self,
        attributes: Sequence[str],
        *,
        since_usn: int,
        known_users: pd.DataFrame,
        known_groups: pd.DataFrame,
        expired_between: tuple[int, int] | None,
    ) -> DirectoryChanges:
        config = self.config
        wanted = self._wanted_attributes(attributes)
        changed = f"(uSNChanged>={since_usn + 1})"
        user_change = changed
        if expired_between is not None:
            low, high = expired_between
            user_change = f"(|{changed}(&({ACCOUNT_EXPIRES}>={low})({ACCOUNT_EXPIRES}<={high})))"
        user_filter = and_filters(config.user_filter, user_change)
        user_entries = self._paged_search(
            config.user_base_dn,
            user_filter,
            list(dict.fromkeys([*self._user_request(wanted), MEMBER_OF])),
            what="changed users",
        )
        users = self._users_frame(user_entries, wanted, self._inactive_ids(user_filter))

        every_group = config.nested_groups != "direct"
        group_filter = (
            and_filters(config.group_filter)
            if every_group
            else and_filters(config.group_filter, changed)
        )
        group_request = [config.id_attribute, config.group_name_attribute] + [
            self._member_request(name) for name in config.member_attributes
        ]
        group_entries = self._paged_search(
            config.group_base_dn, group_filter, group_request, what="changed groups"
        )
        groups, group_names = self._groups_frame(group_entries)
        read_groups = group_locators(groups, group_entries)

        user_index = DnIndex(
            [
                *zip(known_users["locator"], known_users["source_id"], strict=True),
                *zip((dn for dn, _ in user_entries), users["source_id"], strict=True),
            ]
        )
        unchanged = known_groups[~known_groups["source_group_id"].isin(groups["source_group_id"])]
        group_index = DnIndex(
            [
                *zip(unchanged["locator"], unchanged["source_group"], strict=True),
                *zip((dn for dn, _ in group_entries), group_names, strict=True),
            ]
        )
        from_groups = members_from_groups(
            group_entries,
            group_names,
            self._member_keys(),
            user_index,
            group_index,
            nested_resolved=every_group,
        )
        rows = from_groups.rows
        if config.nested_groups == "in_chain" and self._supports_in_chain():
            in_scope = set(known_users["source_id"]) | set(users["source_id"])
            rows = self._members_in_chain(group_entries, group_names, in_scope)
        elif every_group:
            parents = group_parents(group_entries, group_names, self._member_keys(), group_index)
            rows = flatten(rows, parents)
        else:
            rows += members_from_member_of(
                user_entries, users["source_id"], group_index, self._key(MEMBER_OF)
            ).rows
        return DirectoryChanges(
            users=users,
            groups=read_groups,
            memberships=memberships_frame(rows),
            all_groups=every_group,
        )
