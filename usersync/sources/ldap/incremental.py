"""Incremental reads: where the directory stands now, and what changed since a watermark.

`position` reads the server's identity and a mark that only grows. Active Directory: the DC's
dsServiceName, invocationId and highestCommittedUSN; entries changed later have a higher
uSNChanged. OpenLDAP: the URL, the naming context(s) holding the base DNs, the suffix entry's
entryUUID and the server ids of its `contextCSN` (kept by the syncprov overlay), and the time of
the oldest contextCSN value; entries changed later have a higher entryCSN (`context_csn.py`).
A server without contextCSN (no syncprov overlay, or an account that may not read it) has no
mark: each run is a full read, with a note saying so, and no watermark is kept.
`read_changes` reads the users and groups in scope changed after a mark. What is kept between
runs, when a full read is due and when the watermark advances is `usersync.sources.watermark`'s.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

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
from usersync.sources.ldap.context_csn import (
    csn_micros,
    csn_server_id,
    describe_csn_mark,
    lowest_csn_at,
)
from usersync.sources.ldap.decoding import Entry, base_entry, garbage_collection_paused
from usersync.sources.ldap.dn import DnIndex, normalise_dn
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
    """Where a directory server stood: its identity and a mark that grows with every change.

    The mark is meaningful only on the server (and database) it came from: AD's USNs are per
    DC, and an OpenLDAP database reloaded or replaced has other CSNs.

    Attributes:
        dc: the identity (AD: dsServiceName and invocationId; OpenLDAP: URL, naming contexts,
            their entryUUIDs and contextCSN server ids).
        usn: AD: highestCommittedUSN; OpenLDAP: the oldest contextCSN value, in microseconds
            since the Unix epoch; None when the server keeps no contextCSN.
        kind: "usn" (Active Directory) or "csn" (OpenLDAP).
    """

    dc: str
    usn: int | None
    kind: Literal["usn", "csn"] = "usn"

    def describe(self, mark: int) -> str:
        """A mark of this kind of server as people read it (`USN 120`, `contextCSN ...`)."""
        return describe_csn_mark(mark) if self.kind == "csn" else f"USN {mark}"


@dataclass(frozen=True)
class DirectoryChanges:
    """What an incremental read found (see `LdapSource.read_changes`).

    `users` and `groups` (the latter with `locator`) replace the cached rows with the same ids.
    `memberships` are the complete memberships of those groups and, when `users_memberships`
    (memberOf was read for the changed users), of those users too; with `all_groups` every
    group was read and they replace all memberships.
    """

    users: pd.DataFrame
    groups: pd.DataFrame
    memberships: pd.DataFrame
    all_groups: bool
    users_memberships: bool = True


@dataclass(frozen=True)
class ChangedEntries:
    """What the change searches of `read_changes` returned, member values not yet resolved.

    `groups` carry their `locator`; `group_names` are the entries' group names in order.
    """

    user_entries: list[Entry]
    users: pd.DataFrame
    group_entries: list[Entry]
    groups: pd.DataFrame
    group_names: list[str]
    all_groups: bool
    users_memberships: bool


class IncrementalReads:
    """The incremental reads of an `LdapSource` (a mixin: searches and frames from the others)."""

    config: LdapSourceConfig
    _connection: Callable[[], Connection]
    _paged_search: Callable[..., list[Entry]]

    def position(self) -> DirectoryPosition:
        """Where the directory server stands now: its identity and mark (see the module).

        Taken before an incremental read, so a change committed during the read is read again
        next time rather than missed.

        Raises:
            ConfigError: `flavour: active_directory` but no USN in the rootDSE.
            SourceError: the rootDSE, the DC's NTDS Settings entry or the naming context's
                entry cannot be read, or a contextCSN is no CSN.
        """
        if self.config.flavour == "active_directory":
            return self._usn_position()
        return self._csn_position()

    def change_mark(self) -> str | None:
        """Active Directory with `incremental.enabled`: the DC and its highestCommittedUSN,
        which moves with every change (`capabilities.ChangeMarked`). None elsewhere: an
        OpenLDAP contextCSN read to the microsecond may not move between two quick changes,
        and with `inactive_accounts: disabled_or_expired` an account expiring changes no USN.
        """
        config = self.config
        if not config.incremental.enabled or config.flavour != "active_directory":
            return None
        if config.inactive_accounts == "disabled_or_expired":
            return None
        position = self._usn_position()
        return f"{position.dc} at {position.describe(position.usn or 0)}"

    def _csn_position(self) -> DirectoryPosition:
        """OpenLDAP: the contextCSN of the naming context(s) holding the user and group bases."""
        conn = self._connection()
        url = self.config.url
        root = base_entry(conn, "", ["namingContexts"]) or {}
        contexts = [v.decode("utf-8", errors="replace") for v in root.get("namingContexts") or []]
        bases = (self.config.user_base_dn, self.config.group_base_dn)
        holding = [c for c in contexts if any(_within(base, c) for base in bases)]
        if not holding:
            raise SourceError(
                f"{url}: no naming context in the rootDSE ({', '.join(contexts) or 'none'}) "
                f"holds {' or '.join(bases)}; check the base DNs"
            )
        identity = [url.lower()]
        marks: list[int] = []
        missing: list[str] = []
        for context in sorted(holding, key=str.lower):
            entry = base_entry(conn, context, ["contextCSN", "entryUUID"])
            if entry is None:
                raise SourceError(
                    f"{url}: cannot read the naming context entry {context} "
                    f"({describe_result(conn.result)}); the bind account needs read access to it"
                )
            csns = [v.decode("ascii", errors="replace") for v in entry.get("contextCSN") or []]
            if not csns:
                missing.append(context)
                continue
            where = f"{url}: contextCSN of {context}"
            marks.append(min(csn_micros(csn, where=where) for csn in csns))
            # A reloaded database has a new suffix entryUUID; another provider another sid.
            suffix_id = (entry.get("entryUUID") or [b"?"])[0].decode("ascii", errors="replace")
            sids = ",".join(sorted({csn_server_id(csn) for csn in csns}))
            identity.append(f"{context} entryUUID={suffix_id} sid={sids}")
        if missing:
            return DirectoryPosition(
                dc=f"{url}: {', '.join(missing)} show(s) no contextCSN", usn=None, kind="csn"
            )
        return DirectoryPosition(dc=" ".join(identity), usn=min(marks), kind="csn")

    def _usn_position(self) -> DirectoryPosition:
        """Active Directory: the DC's identity and its `highestCommittedUSN`."""
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
        return DirectoryPosition(dc=dc, usn=int(root["highestCommittedUSN"][0]), kind="usn")

    def read_changes(
        self,
        attributes: Sequence[str],
        *,
        since: int,
        known_users: pd.DataFrame,
        known_groups: pd.DataFrame,
        expired_between: tuple[int, int] | None = None,
    ) -> DirectoryChanges:
        """The users and groups in scope changed after the mark `since` (from `position`).

        Changed users are read whole; changed groups are read whole, `member` in checked
        ranges on AD. A group whose member list changed is a changed group. The changed users'
        memberOf is read (and replaces their memberships) on AD, where it is always kept, and
        with `membership: member_of`; otherwise their memberships stay as cached except those
        of changed groups. With nested groups resolved, every group is read (a change deep in
        a nest changes its ancestors' members without touching them) and memberships are
        recomputed entirely. Member values are resolved against the known entries merged with
        the changed ones. Deleted entries, and entries that left the scope, are not seen.

        The two halves are `search_changes` (the searches, which need nothing cached) and
        `resolve_changes` (member values against the cached entries); a caller may load the
        cache while the first runs.

        Args:
            attributes: as for `extract`.
            since: the watermark: AD entries with `uSNChanged` above it, OpenLDAP entries with
                `entryCSN` at or after its microsecond are read.
            known_users: the cached users (`source_id`, `locator`).
            known_groups: the cached groups (`source_group_id`, `source_group`, `locator`).
            expired_between: (from, to) as FILETIMEs: users whose accountExpires passed in that
                window are read too (expiry changes no USN).

        Raises:
            as `extract`.
        """
        found = self.search_changes(attributes, since=since, expired_between=expired_between)
        return self.resolve_changes(found, known_users=known_users, known_groups=known_groups)

    def search_changes(
        self,
        attributes: Sequence[str],
        *,
        since: int,
        expired_between: tuple[int, int] | None = None,
    ) -> ChangedEntries:
        """The searches of `read_changes`: the changed users and groups as read."""
        with garbage_collection_paused():
            return self._search_changes(attributes, since=since, expired_between=expired_between)

    def resolve_changes(
        self, found: ChangedEntries, *, known_users: pd.DataFrame, known_groups: pd.DataFrame
    ) -> DirectoryChanges:
        """The rest of `read_changes`: the member values of `found` resolved against the
        cached entries merged with the changed ones."""
        with garbage_collection_paused():
            return self._resolve_changes(found, known_users=known_users, known_groups=known_groups)

    def _search_changes(
        self,
        attributes: Sequence[str],
        *,
        since: int,
        expired_between: tuple[int, int] | None,
    ) -> ChangedEntries:
        config = self.config
        wanted = self._wanted_attributes(attributes)
        if config.flavour == "active_directory":
            changed = f"(uSNChanged>={since + 1})"
        else:
            changed = f"(entryCSN>={lowest_csn_at(since)})"
        # AD keeps memberOf on every user; OpenLDAP only with the memberof overlay, which
        # changes no entryCSN of the users: a group's own entryCSN is what shows its change.
        users_memberships = config.flavour == "active_directory" or config.membership == "member_of"
        request = self._user_request(wanted)
        user_change = changed
        if expired_between is not None:
            low, high = expired_between
            user_change = f"(|{changed}(&({ACCOUNT_EXPIRES}>={low})({ACCOUNT_EXPIRES}<={high})))"
        user_filter = and_filters(config.user_filter, user_change)

        every_group = config.nested_groups != "direct"
        group_filter = (
            and_filters(config.group_filter)
            if every_group
            else and_filters(config.group_filter, changed)
        )
        group_request = [config.id_attribute, config.group_name_attribute] + [
            self._member_request(name) for name in config.member_attributes
        ]
        # As in a full read, the groups are searched on a second connection while the users
        # are on the first: the server's time for one search overlaps the other's.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ldap-groups") as pool:
            group_read = pool.submit(
                self._paged_search,
                config.group_base_dn,
                group_filter,
                group_request,
                what="changed groups",
                conn=self._second_connection(),
            )
            user_entries = self._paged_search(
                config.user_base_dn,
                user_filter,
                list(dict.fromkeys([*request, MEMBER_OF])) if users_memberships else request,
                what="changed users",
            )
            users = self._users_frame(user_entries, wanted, self._inactive_ids(user_filter))
            group_entries = group_read.result()
        groups, group_names = self._groups_frame(group_entries)
        return ChangedEntries(
            user_entries=user_entries,
            users=users,
            group_entries=group_entries,
            groups=group_locators(groups, group_entries),
            group_names=group_names,
            all_groups=every_group,
            users_memberships=users_memberships,
        )

    def _resolve_changes(
        self, found: ChangedEntries, *, known_users: pd.DataFrame, known_groups: pd.DataFrame
    ) -> DirectoryChanges:
        config = self.config
        user_entries, users = found.user_entries, found.users
        group_entries, group_names = found.group_entries, found.group_names
        # Columns as lists: iterating a pandas string column yields its 100k values one call
        # at a time, which was half of an incremental read's own time.
        changed = list(
            zip((dn for dn, _ in user_entries), users["source_id"].tolist(), strict=True)
        )

        def every_user() -> DnIndex:
            return DnIndex(
                [
                    *zip(
                        known_users["locator"].tolist(),
                        known_users["source_id"].tolist(),
                        strict=True,
                    ),
                    *changed,
                ]
            )

        if found.all_groups:
            user_index = every_user()
        else:
            # A few thousand member values against 100k cached users: only the cached users
            # whose DN a value spells byte for byte are indexed (and the changed users after
            # them, as in the whole index); a value spelled otherwise is looked up among all.
            keys = self._member_keys()
            spelled = {
                raw.decode("utf-8", errors="replace")
                for _dn, attrs in group_entries
                for key in keys
                for raw in attrs.get(key, ())
            }
            near = known_users[known_users["locator"].isin(spelled)]
            user_index = DnIndex(
                [
                    *zip(near["locator"].tolist(), near["source_id"].tolist(), strict=True),
                    *changed,
                ],
                whole=every_user,
            )
        unchanged = known_groups[
            ~known_groups["source_group_id"].isin(found.groups["source_group_id"])
        ]
        group_index = DnIndex(
            [
                *zip(
                    unchanged["locator"].tolist(), unchanged["source_group"].tolist(), strict=True
                ),
                *zip((dn for dn, _ in group_entries), group_names, strict=True),
            ]
        )
        from_groups = members_from_groups(
            group_entries,
            group_names,
            self._member_keys(),
            user_index,
            group_index,
            nested_resolved=found.all_groups,
        )
        rows = from_groups.rows
        if config.nested_groups == "in_chain" and self._supports_in_chain():
            in_scope = set(known_users["source_id"].tolist()) | set(users["source_id"].tolist())
            rows = self._members_in_chain(group_entries, group_names, in_scope)
        elif found.all_groups:
            parents = group_parents(group_entries, group_names, self._member_keys(), group_index)
            rows = flatten(rows, parents)
        elif found.users_memberships:
            rows += members_from_member_of(
                user_entries, users["source_id"], group_index, self._key(MEMBER_OF)
            ).rows
        return DirectoryChanges(
            users=users,
            groups=found.groups,
            memberships=memberships_frame(rows),
            all_groups=found.all_groups,
            users_memberships=found.users_memberships,
        )


def _within(dn: str, context: str) -> bool:
    """Whether `dn` is `context` or an entry below it (DNs compared as LDAP does)."""
    entry, suffix = normalise_dn(dn), normalise_dn(context)
    if entry is None or suffix is None:
        return False
    return len(entry) >= len(suffix) and entry[len(entry) - len(suffix) :] == suffix
