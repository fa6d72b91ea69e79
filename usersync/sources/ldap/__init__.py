"""Read users, groups and memberships from an LDAP directory (OpenLDAP, 389-ds, AD) with ldap3.

`LdapSource` binds once (simple bind, over LDAPS or StartTLS with certificate validation
unless turned off; cleartext only when the profile allows it), then reads with its own RFC
2696 pager, which checks the result code and the paged-results control of every page itself:
ldap3 raises for none of sizeLimitExceeded, timeLimitExceeded or a page without the control,
so a partial read would otherwise look complete. Any such page raises `IncompleteSourceError`.
So does a referral (a searchResRef beside the entries, or result 10): the entries it stands
for are read where it points only with `follow_referrals` (same bind and TLS settings; see
`referrals.py`), except a naming context the same server holds, read on the same connection.
Attribute names are resolved through the server's schema (`schema.py`: aliases such as
surname for sn, OIDs, case), and a mapped name the schema lacks is refused before any read.
Users are keyed by the id attribute (entryUUID; AD's binary objectGUID is decoded), membership
comes from the groups' member attributes or the users' memberOf, resolved by normalised DN.
Active Directory (`flavour: active_directory`): users are inactive when disabled (UAC 0x2) or
expired (accountExpires), as `inactive_accounts` says; `member` is read in ranges
(`member;range=0-1499`, ...) by `_read_ranges`, which checks every window (ldap3's auto_range
stops silently on a failed one); nested groups are resolved on request with IN_CHAIN (one
search per group) or flattened here from the groups' member values. For incremental runs
(`sources.watermark`), `position` reads the server's identity and mark (AD: the DC's
highestCommittedUSN; OpenLDAP: the naming context's contextCSN, kept by the syncprov overlay)
and `read_changes` the entries whose uSNChanged or entryCSN passed a watermark.
Performance: ldap3 only builds and sends the search requests; their answers are read from the
socket and decoded by `decoding.search` (flat and iterative, into DN and raw values), the
groups are read on a second connection while the users are read on the first, the cyclic
garbage collector is paused during a read (millions of containers, no cycles), each frame is
built once from column lists, and member DNs are resolved by an exact match on the raw bytes,
then lower case, parsed (RFC 4514) only on a miss. Searches dereference aliases as
`deref_aliases` says (always by default; never costs OpenLDAP far less). After each page the
running totals go to `Source.report_progress` ("users", "groups", "members"; `progress.py`).
bench/README.md has the figures.

`LdapSource` is the Source interface; its parts live in the package's modules, each
named for its job: `connection` (TLS, bind, errors), `pager` (paged searches, result codes,
referrals followed or refused) and `decoding` (search answers read from the socket),
`frames` (attribute names through the schema, ids, the users and groups frames), `dn` (DN
comparison), `values` (ids, text, names, filters), `membership` (member values, memberOf,
nesting), `active_directory` (account state, ranged values, IN_CHAIN), `incremental`
(position and changes since a watermark) and `context_csn` (OpenLDAP's CSNs), `lookups` (Test Sync's one-user reads),
`referrals`, `schema` and `progress`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
from ldap3 import BASE, Connection
from ldap3.core.exceptions import LDAPException

from usersync.config import LdapSourceConfig, Secret, SecretLoader, resolve_secret
from usersync.errors import ConfigError, SourceError
from usersync.model import SourceSnapshot
from usersync.sources.base import Source, SourceCheck
from usersync.sources.ldap.active_directory import (
    FILETIME_UNIX_OFFSET_SECONDS,
    ActiveDirectoryReads,
)
from usersync.sources.ldap.connection import LdapConnections
from usersync.sources.ldap.decoding import discard, garbage_collection_paused
from usersync.sources.ldap.dn import DnIndex, normalise_dn
from usersync.sources.ldap.frames import EntryFrames
from usersync.sources.ldap.incremental import (
    DirectoryChanges,
    DirectoryPosition,
    IncrementalReads,
)
from usersync.sources.ldap.lookups import UserLookups
from usersync.sources.ldap.membership import (
    MEMBER_OF,
    flatten,
    group_locators,
    group_parents,
    members_from_groups,
    members_from_member_of,
    memberships_frame,
)
from usersync.sources.ldap.pager import RESULT_NO_SUCH_OBJECT, PagedSearch, describe_result
from usersync.sources.ldap.progress import PageProgress
from usersync.sources.ldap.schema import AttributeSchema
from usersync.sources.ldap.values import and_filters, canonical_id, examples

__all__ = [
    "FILETIME_UNIX_OFFSET_SECONDS",
    "DirectoryChanges",
    "DirectoryPosition",
    "DnIndex",
    "LdapSource",
    "canonical_id",
    "normalise_dn",
]


class LdapSource(
    IncrementalReads,
    UserLookups,
    ActiveDirectoryReads,
    EntryFrames,
    PagedSearch,
    LdapConnections,
    Source,
):
    """An LDAP directory read over one connection (opened on first use, closed by `close`).

    Args:
        config: the profile's `source` section.
        password: the bind password (resolve it with `from_config`).
    """

    kind = "ldap"

    def __init__(self, config: LdapSourceConfig, password: Secret) -> None:
        self.config = config
        self._password = password
        self._conn: Connection | None = None
        #: a second connection to the same server, for the groups search run concurrently
        self._conn2: Connection | None = None
        self._opening = threading.Lock()
        #: connections to the servers referrals led to, by `ldap[s]://host:port` (lower case)
        self._referred: dict[str, Connection] = {}
        #: normalised naming contexts each server holds (its rootDSE), by server URL
        self._naming_contexts: dict[str, set[Any]] = {}
        self._schema: AttributeSchema | None = None

    @classmethod
    def from_config(
        cls, config: LdapSourceConfig, *, load_prefect_secret: SecretLoader | None = None
    ) -> LdapSource:
        """An `LdapSource` with its bind password resolved from `config.bind_password`.

        Raises:
            ConfigError: the secret is not available.
        """
        return cls(
            config, resolve_secret(config.bind_password, load_prefect_secret=load_prefect_secret)
        )

    # -- Source interface ----------------------------------------------------------------

    def extract(self, attributes: Sequence[str]) -> SourceSnapshot:
        """Read every user, group and membership in scope (`read_snapshot` without the group DNs).

        Args:
            attributes: LDAP attributes the mapping reads; each becomes a string column named
                as given here (matched case-insensitively against the directory's names).

        Raises:
            ConfigError: the profile is unusable (cleartext bind not allowed, bad attribute
                name, bad filter, binary attribute requested).
            SourceUnreachableError, SourceAuthError: connection, TLS or bind failed.
            IncompleteSourceError: any page of any search did not end cleanly, a user or group
                lacks its id, or two entries share one.
        """
        return self.read_snapshot(attributes)[0]

    def read_snapshot(self, attributes: Sequence[str]) -> tuple[SourceSnapshot, pd.DataFrame]:
        """`extract`, and the groups frame with each group's DN as `locator`.

        Incremental reads resolve the memberOf values of changed users against the DNs of
        groups read earlier, so those are kept with the cached snapshot.

        Raises:
            as `extract`.
        """
        with garbage_collection_paused():
            return self._read_snapshot(attributes)

    def _read_snapshot(self, attributes: Sequence[str]) -> tuple[SourceSnapshot, pd.DataFrame]:
        config = self.config
        wanted = self._wanted_attributes(attributes)
        notes: list[str] = []

        group_request = [config.id_attribute, config.group_name_attribute]
        if config.membership == "group_member" or config.nested_groups != "direct":
            group_request += [self._member_request(name) for name in config.member_attributes]
        # The groups are read on a second connection while the users are read on the first:
        # the server prepares one search's pages while this process decodes the other's.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ldap-groups") as pool:
            group_read = pool.submit(
                self._paged_search,
                config.group_base_dn,
                and_filters(config.group_filter),
                group_request,
                what="groups",
                progress=PageProgress(self.report_progress, "groups", self._member_keys()),
                conn=self._second_connection(),
            )
            user_entries = self._paged_search(
                config.user_base_dn,
                and_filters(config.user_filter),
                self._user_request(wanted),
                what="users",
                progress=PageProgress(self.report_progress, "users"),
            )
            users = self._users_frame(user_entries, wanted, self._inactive_ids(config.user_filter))
            group_entries = group_read.result()
        groups, group_names = self._groups_frame(group_entries)
        group_index = DnIndex(zip((dn for dn, _ in group_entries), group_names, strict=True))

        if config.membership == "group_member":
            user_index = DnIndex(
                zip((dn for dn, _ in user_entries), users["source_id"], strict=True)
            )
            resolved = members_from_groups(
                group_entries,
                group_names,
                self._member_keys(),
                user_index,
                group_index,
                nested_resolved=config.nested_groups != "direct",
            )
            if resolved.unresolved:
                notes.append(
                    f"{len(resolved.unresolved)} member value(s) of groups in "
                    f"{config.group_base_dn} are not users in scope (nested groups, entries "
                    f"outside {config.user_base_dn} or not matching the user filter) and were "
                    f"left out, e.g. {examples(resolved.unresolved)}"
                )
        else:
            resolved = members_from_member_of(
                user_entries, users["source_id"], group_index, self._key(MEMBER_OF)
            )
            if resolved.unresolved:
                notes.append(
                    f"{len(resolved.unresolved)} memberOf value(s) of users are not groups in "
                    f"scope (outside {config.group_base_dn} or not matching the group filter) "
                    f"and were left out, e.g. {examples(resolved.unresolved)}"
                )
        nesting = config.nested_groups
        if nesting == "in_chain" and not self._supports_in_chain():
            nesting = "flatten"
            notes.append(
                f"{config.url} does not announce LDAP_MATCHING_RULE_IN_CHAIN (not Active "
                "Directory); nested groups were flattened by usersync instead"
            )
        if nesting == "in_chain":
            memberships = memberships_frame(
                self._members_in_chain(group_entries, group_names, set(users["source_id"]))
            )
        elif nesting == "flatten":
            parents = group_parents(group_entries, group_names, self._member_keys(), group_index)
            memberships = memberships_frame(flatten(resolved.rows, parents))
        else:
            memberships = resolved.frame()
        snapshot = SourceSnapshot(
            users=users,
            groups=groups,
            memberships=memberships,
            source_kind=self.kind,
            notes=tuple(notes),
        )
        return snapshot, group_locators(groups, group_entries)

    def check(self) -> SourceCheck:
        """Bind and read the user base entry; never raises for an unreachable or refusing source."""
        config = self.config
        try:
            conn = self._connection()
            conn.search(
                config.user_base_dn, "(objectClass=*)", search_scope=BASE, attributes=["1.1"]
            )
        except (SourceError, ConfigError) as exc:
            return SourceCheck(False, str(exc))
        except LDAPException as exc:
            return SourceCheck(False, f"{config.url}: reading {config.user_base_dn} failed: {exc}")
        result = conn.result
        if result["result"] == RESULT_NO_SUCH_OBJECT:
            return SourceCheck(
                False,
                f"{config.url}: bound as {config.bind_dn}, but user_base_dn "
                f"{config.user_base_dn} does not exist (or this account may not see it)",
            )
        if result["result"] != 0:
            return SourceCheck(
                False,
                f"{config.url}: bound as {config.bind_dn}, but reading {config.user_base_dn} "
                f"failed: {describe_result(result)}",
            )
        return SourceCheck(
            True, f"{config.url}: bound as {config.bind_dn} and read {config.user_base_dn}"
        )

    def check_attributes(self, attributes: Sequence[str]) -> SourceCheck:
        """Whether the directory's schema defines every attribute the mapping reads.

        Test Connection runs it after `check`, so a misspelt attribute in attributes.csv is
        found before a sync, not by one. Never raises for a failing check.
        """
        try:
            wanted = self._wanted_attributes(attributes)
        except (SourceError, ConfigError) as exc:
            return SourceCheck(False, str(exc))
        except LDAPException as exc:
            return SourceCheck(False, f"{self.config.url}: reading the schema failed: {exc}")
        return SourceCheck(
            True, f"the directory's schema defines the {len(wanted)} attribute(s) the mapping reads"
        )

    def close(self) -> None:
        """Unbind and close the connection, if one is open."""
        for conn in (self._conn, self._conn2):
            if conn is not None:
                discard(conn)
        self._conn = self._conn2 = None
        for conn in self._referred.values():
            discard(conn)
        self._referred.clear()
