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
(`sources.watermark`), `position` reads the DC's identity and highestCommittedUSN and
`read_changes` the entries whose uSNChanged passed a watermark.
Performance: ldap3 only builds and sends the search requests; their answers are read from the
socket and decoded by `decoding.search` (flat and iterative, into DN and raw values), the
groups are read on a second connection while the users are read on the first, the cyclic
garbage collector is paused during a read (millions of containers, no cycles), each frame is
built once from column lists, and member DNs are resolved by an exact match on the raw bytes,
then lower case, parsed (RFC 4514) only on a miss. Searches dereference aliases as
`deref_aliases` says (always by default; never costs OpenLDAP far less). After each page the
running totals go to `Source.report_progress` ("users", "groups", "members"; `progress.py`).
bench/README.md has the figures.

The package's other modules: `decoding` (search answers), `dn` (DN comparison), `values`
(ids, text, names, filters), `membership` (member values, memberOf, nesting),
`active_directory` (account state, range bounds, IN_CHAIN), `referrals` and `schema`. The
connection, the pager and incremental reads are still methods of `LdapSource`, here.
"""

from __future__ import annotations

import math
import ssl
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd
from ldap3 import BASE, NONE, SIMPLE, SUBTREE, SYNC, Connection, Server, Tls
from ldap3.core.exceptions import (
    LDAPCertificateError,
    LDAPCommunicationError,
    LDAPException,
    LDAPInvalidFilterError,
    LDAPSSLConfigurationError,
    LDAPStartTLSError,
)
from ldap3.utils.conv import escape_filter_chars

from usersync.config import LdapSourceConfig, SecretLoader, resolve_secret
from usersync.errors import (
    ConfigError,
    IncompleteSourceError,
    SourceAuthError,
    SourceError,
    SourceUnreachableError,
)
from usersync.mapping import DEFAULT_ATTRIBUTES_CSV, MappingTables, parse_attributes
from usersync.model import (
    SOURCE_GROUP_COLUMNS,
    SOURCE_USER_COLUMNS,
    SourceSnapshot,
    conform,
)
from usersync.sources.base import Source, SourceCheck
from usersync.sources.ldap.active_directory import (
    ACCOUNT_EXPIRES,
    AD_CAPABILITIES,
    FILETIME_UNIX_OFFSET_SECONDS,
    IN_CHAIN_RULE,
    USER_ACCOUNT_CONTROL,
    ad_inactive,
    filetime_now,
    range_bounds,
)
from usersync.sources.ldap.decoding import (
    Entry,
    MalformedAnswerError,
    base_entry,
    discard,
    garbage_collection_paused,
    search,
)
from usersync.sources.ldap.dn import DnIndex, normalise_dn
from usersync.sources.ldap.membership import (
    flatten,
    group_locators,
    group_parents,
    members_from_groups,
    members_from_member_of,
    memberships_frame,
)
from usersync.sources.ldap.progress import PageProgress
from usersync.sources.ldap.referrals import (
    MAX_REFERRAL_HOPS,
    RESULT_REFERRAL,
    Reference,
    parse_reference,
    references_refused,
)
from usersync.sources.ldap.schema import AttributeSchema
from usersync.sources.ldap.values import (
    and_filters,
    canonical_id,
    check_attribute_name,
    display_value,
    examples,
    first_values_as_text,
    refuse_duplicate_ids,
    text_value,
)

__all__ = [
    "FILETIME_UNIX_OFFSET_SECONDS",
    "DirectoryChanges",
    "DirectoryPosition",
    "DnIndex",
    "LdapSource",
    "canonical_id",
    "normalise_dn",
]

MEMBER_OF = "memberOf"
#: Attribute names of the shipped attributes table (used where a profile has none).
SHIPPED_TABLE_NAMES = frozenset(
    MappingTables(parse_attributes(DEFAULT_ATTRIBUTES_CSV), ()).source_attributes()
)
RESULT_INVALID_CREDENTIALS = 49
RESULT_NO_SUCH_OBJECT = 32


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


class LdapSource(Source):
    """An LDAP directory read over one connection (opened on first use, closed by `close`).

    Args:
        config: the profile's `source` section.
        password: the bind password (resolve it with `from_config`).
    """

    kind = "ldap"

    def __init__(self, config: LdapSourceConfig, password: str) -> None:
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
                f"({_describe(conn.result)}); the bind account needs read access to it"
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

    def find_users(self, attribute: str, value: str, attributes: Sequence[str]) -> pd.DataFrame:
        """The users in scope whose `attribute` equals `value` (same columns as `extract`).

        The value is escaped per RFC 4515, so `*`, `(`, `)`, `\\` and NUL match only
        themselves; the match rule is the attribute's own (usually case-insensitive).

        Raises:
            ConfigError: `attribute` is not a valid LDAP attribute description.
            SourceUnreachableError, SourceAuthError, IncompleteSourceError: as for `extract`.
        """
        check_attribute_name(attribute, where="find_users")
        wanted = self._wanted_attributes(attributes)
        if self._attribute_schema().canonical(attribute) is None:
            raise ConfigError(
                f"{self.config.url}: the directory's schema does not define the attribute "
                f"'{attribute}' to look users up by; name one it does (e.g. uid, mail, "
                "sAMAccountName)"
            )
        if "\0" in value:
            # No directory string holds NUL, and Samba compares escaped values as C strings:
            # `alice\00` would find alice. Such a value matches nobody.
            return self._users_frame([], wanted, set())
        match = f"({attribute}={escape_filter_chars(value)})"
        scope_filter = and_filters(self.config.user_filter, match)
        entries = self._paged_search(
            self.config.user_base_dn, scope_filter, self._user_request(wanted), what="users"
        )
        return self._users_frame(entries, wanted, self._inactive_ids(scope_filter))

    def user_groups(self, locator: str) -> tuple[list[str], list[str]]:
        """Names of the groups in scope the user at DN `locator` belongs to, and notes.

        Direct groups come from the groups' member attributes; with `nested_groups` other
        than `direct`, groups reached through nesting count too (IN_CHAIN on AD, otherwise
        followed group by group here). For Test Sync: one user, a few searches.

        Raises:
            SourceError: a search failed or may be partial.
        """
        config = self.config
        notes: list[str] = []
        escaped = escape_filter_chars(locator)
        direct = "(|" + "".join(f"({a}={escaped})" for a in config.member_attributes) + ")"
        request = [config.id_attribute, config.group_name_attribute]
        nesting = config.nested_groups
        if nesting != "direct" and self._supports_in_chain():
            chain = (
                "(|"
                + "".join(f"({a}:{IN_CHAIN_RULE}:={escaped})" for a in config.member_attributes)
                + ")"
            )
            entries = self._paged_search(
                config.group_base_dn,
                and_filters(config.group_filter, chain),
                request,
                what="groups",
            )
            return self._groups_frame(entries)[1], notes
        found: dict[str, str] = {}  # group DN (lower case) -> name
        frontier = [direct]
        while frontier:
            query = "(|" + "".join(frontier) + ")" if len(frontier) > 1 else frontier[0]
            entries = self._paged_search(
                config.group_base_dn,
                and_filters(config.group_filter, query),
                request,
                what="groups",
            )
            new = [
                (dn, name)
                for (dn, _), name in zip(entries, self._groups_frame(entries)[1], strict=True)
                if dn.lower() not in found
            ]
            found.update((dn.lower(), name) for dn, name in new)
            if nesting == "direct":
                break
            # Next round: groups that contain the groups just found.
            frontier = [
                f"({a}={escape_filter_chars(dn)})"
                for dn, _ in new
                for a in config.member_attributes
            ]
        if nesting != "direct":
            notes.append(f"{config.url}: nested groups followed here (no IN_CHAIN)")
        return list(dict.fromkeys(found.values())), notes

    def entry_attributes(self, locator: str) -> dict[str, list[str]]:
        """Every attribute the directory returns for the entry at DN `locator`, as text.

        Binary values are shown as the GUID they encode (objectGUID) or as hex, so a Test
        Sync page can show them; this is for display, never for matching.

        Raises:
            SourceError: the entry cannot be read.
        """
        conn = self._connection()
        conn.search(locator, "(objectClass=*)", search_scope=BASE, attributes=["*"])
        result = conn.result
        found = [i for i in conn.response or () if i.get("type") == "searchResEntry"]
        if result["result"] != 0 or not found:
            raise SourceError(f"{self.config.url}: reading {locator} failed: {_describe(result)}")
        raw = dict(found[0]["raw_attributes"])
        for key in [k for k in raw if ";range=" in k]:
            raw[key.partition(";")[0]] = self._read_ranges(
                conn, self.config.url, locator, key, raw.pop(key)
            )
        return {
            name: [display_value(name, value) for value in raw[name] or ()] for name in sorted(raw)
        }

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
                f"failed: {_describe(result)}",
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

    # -- connection ----------------------------------------------------------------------

    def _connection(self) -> Connection:
        with self._opening:
            if self._conn is None or self._conn.closed:
                self._conn = self._open(self.config.url)
            return self._conn

    def _second_connection(self) -> Connection:
        """Another connection to the profile's server, for a search run beside the first's."""
        with self._opening:
            if self._conn2 is None or self._conn2.closed:
                self._conn2 = self._open(self.config.url)
            return self._conn2

    def _referred_connection(self, server_url: str) -> Connection:
        """A bound connection to a server a referral names, opened like the profile's own."""
        key = server_url.lower()
        with self._opening:  # two searches may follow referrals to one server at once
            conn = self._referred.get(key)
            if conn is None or conn.closed:
                conn = self._referred[key] = self._open(server_url)
            return conn

    def _open(self, url: str) -> Connection:
        """Connect to `url` and bind with the profile's DN, password and TLS settings.

        `url` is the profile's own, or one a referral named: an ldaps:// URL is LDAPS; an
        ldap:// one is upgraded with StartTLS whenever the profile uses TLS at all, so a
        referral never lowers the protection of the password.
        """
        config = self.config
        mode = config.tls.mode
        if url.lower().startswith("ldaps://"):
            mode = "ldaps"
        elif mode == "ldaps":
            mode = "starttls"
        if mode == "none" and not config.allow_cleartext_bind:
            raise ConfigError(
                f"{url}: refusing to send the password of {config.bind_dn} over an "
                "unencrypted connection; use tls.mode ldaps (ldaps:// URL) or starttls, or set "
                "allow_cleartext_bind: true (lab directories only)"
            )
        if not self._password:
            # RFC 4513 5.1.2: a DN with an empty password is an unauthenticated bind, which
            # many servers accept as anonymous: refuse rather than read as nobody.
            raise ConfigError(
                f"{url}: the bind password for {config.bind_dn} "
                f"({config.bind_password.describe()}) is empty"
            )
        server = Server(
            url,
            use_ssl=mode == "ldaps",
            tls=self._tls() if mode != "none" else None,
            get_info=NONE,  # no schema read: one round trip less, and raw values stay raw
            connect_timeout=config.connect_timeout_seconds,
        )
        conn = Connection(
            server,
            user=config.bind_dn,
            password=self._password,
            authentication=SIMPLE,
            client_strategy=SYNC,
            read_only=True,
            raise_exceptions=False,
            # ldap3 packs this into SO_RCVTIMEO as whole seconds: a float breaks struct.pack.
            receive_timeout=math.ceil(config.receive_timeout_seconds),
            # ldap3's auto_range stops silently when a ranged read fails, and with it off it
            # crashes on ranged keys unless empty attributes are off: `_read_ranges` does it.
            auto_range=False,
            return_empty_attributes=False,
            # ldap3 would follow a referral result on a connection of its own, with TLS
            # settings of its own (StartTLS without certificate validation); the pager
            # follows or refuses referrals itself (`_follow_references`).
            auto_referrals=False,
        )
        try:
            conn.open()
            if mode == "starttls":
                conn.start_tls()
            bound = conn.bind()
        except (LDAPCertificateError, LDAPStartTLSError, LDAPCommunicationError) as exc:
            discard(conn)
            raise self._connect_error(url, exc) from exc
        if not bound:
            result = conn.result
            discard(conn)
            if result["result"] == RESULT_INVALID_CREDENTIALS:
                raise SourceAuthError(
                    f"{url}: the directory refused the bind as {config.bind_dn} (invalid "
                    f"credentials); check bind_dn and the password in "
                    f"{config.bind_password.describe()}"
                )
            raise SourceAuthError(
                f"{url}: the bind as {config.bind_dn} failed: {_describe(result)}"
                + (
                    "; the server may require an encrypted connection (tls.mode ldaps/starttls)"
                    if mode == "none"
                    else ""
                )
            )
        return conn

    def _tls(self) -> Tls:
        tls = self.config.tls
        try:
            return Tls(
                validate=ssl.CERT_REQUIRED if tls.validate_certificate else ssl.CERT_NONE,
                ca_certs_file=str(tls.ca_file) if tls.ca_file else None,
            )
        except LDAPSSLConfigurationError as exc:
            raise ConfigError(
                f"{self.config.url}: tls.ca_file {tls.ca_file} cannot be used ({exc}); give the "
                "path of a PEM file holding the CA that signed the directory's certificate"
            ) from exc

    def _connect_error(self, url: str, exc: Exception) -> SourceUnreachableError:
        config = self.config
        text = str(exc)
        lowered = text.lower()
        if "wrong_version_number" in lowered or "wrong version number" in lowered:
            return SourceUnreachableError(
                f"{url}: the TLS handshake failed ({text}): the port does not speak TLS "
                "right now; check that tls.mode matches the port (ldaps: 636, starttls: 389)"
            )
        if isinstance(exc, LDAPCertificateError) or "certificate" in lowered or "ssl" in lowered:
            ca = config.tls.ca_file or "the system CA store"
            return SourceUnreachableError(
                f"{url}: the server's TLS certificate could not be validated with CA file "
                f"{ca} ({text}); set tls.ca_file to the CA that signed the directory's "
                "certificate (and check the certificate names this host)"
            )
        return SourceUnreachableError(
            f"{url}: cannot connect ({text}); check the host and port, that the "
            f"directory is running, and connect_timeout_seconds ({config.connect_timeout_seconds:g})"
        )

    # -- searching -----------------------------------------------------------------------

    def _paged_search(
        self,
        base: str,
        search_filter: str,
        attributes: Sequence[str],
        *,
        what: str,
        progress: PageProgress | None = None,
        conn: Connection | None = None,
    ) -> list[Entry]:
        """Every entry of a subtree search, read page by page; raises rather than stop early.

        Entries the server refers elsewhere are read where it points (`_follow_references`)
        or the search fails as incomplete. `progress` hears each page; `conn` is the profile's
        connection unless another one to the same server is given.
        """
        return self._search(
            conn or self._connection(),
            self.config.url,
            base,
            search_filter,
            attributes,
            what=what,
            progress=progress,
        )

    def _search(
        self,
        conn: Connection,
        url: str,
        base: str,
        search_filter: str,
        attributes: Sequence[str],
        *,
        what: str,
        scope: str = SUBTREE,
        followed: tuple[tuple[str, Any], ...] = (),
        progress: PageProgress | None = None,
    ) -> list[Entry]:
        """`_search_pages` on `conn` (the server at `url`), ranges completed, references followed."""
        entries, references = self._search_pages(
            conn, url, base, search_filter, attributes, what=what, scope=scope, progress=progress
        )
        entries = self._complete_ranges(conn, url, entries)
        if references:
            where = f"{url}: {what} search under {base} with {search_filter}"
            trail = (*followed, (url.lower(), normalise_dn(base)))
            entries += self._follow_references(
                references,
                conn,
                url,
                search_filter,
                attributes,
                what=what,
                where=where,
                found=len(entries),
                followed=trail,
                progress=progress,
            )
        return entries

    def _search_pages(
        self,
        conn: Connection,
        url: str,
        base: str,
        search_filter: str,
        attributes: Sequence[str],
        *,
        what: str,
        scope: str,
        progress: PageProgress | None = None,
    ) -> tuple[list[Entry], list[list[str]]]:
        """The entries of one search read page by page, and the references the server made.

        Each reference is the list of its URLs (alternatives for one subtree).

        Every page must end with success and carry the paged-results control; its cookie
        says whether another page follows. A referral result (the base lies in a subtree held
        elsewhere) ends the search with its URLs and no entries.

        Raises:
            IncompleteSourceError: a page ended otherwise; the message says what to do.
            SourceUnreachableError: the connection failed in between.
            ConfigError: the filter is not valid LDAP.
        """
        entries: list[Entry] = []
        references: list[list[str]] = []
        cookie: bytes | None = None
        page = 0
        key = self._attribute_schema().key
        where = f"{url}: {what} search under {base} with {search_filter}"
        while True:
            page += 1
            try:
                answer = search(
                    conn,
                    base,
                    search_filter,
                    scope=scope,
                    attributes=attributes,
                    key=key,
                    page_size=self.config.page_size,
                    cookie=cookie,
                    deref_aliases=self.config.deref_aliases,
                )
            except LDAPInvalidFilterError as exc:
                raise ConfigError(f"{where}: the filter is not valid LDAP ({exc})") from exc
            except LDAPCommunicationError as exc:
                discard(conn)  # the next use opens a new one
                raise SourceUnreachableError(
                    f"{where}: the connection failed on page {page} after {len(entries)} entries "
                    f"({exc}); nothing was used"
                ) from exc
            except MalformedAnswerError as exc:
                discard(conn)  # the rest of its stream cannot be told apart from garbage
                raise IncompleteSourceError(
                    f"{where}: page {page} could not be decoded after {len(entries)} entries "
                    f"({exc}), so nothing was used"
                ) from exc
            result = answer.result
            if result["result"] == RESULT_REFERRAL and result.get("referrals"):
                return entries, [result["referrals"]]
            if result["result"] != 0:
                raise IncompleteSourceError(
                    f"{where}: page {page} ended with {_describe(result)} after {len(entries)} "
                    f"entries, so the read may be partial and nothing was used; "
                    f"{_advice(result['result'], what)}"
                )
            entries += answer.entries
            # Entries in scope held by another server (or naming context): each reference is
            # followed or refused once the search is done, never dropped.
            references += answer.references
            if progress is not None:
                progress.page(answer.entries)
            try:
                cookie = answer.paged_cookie()
            except MalformedAnswerError as exc:
                raise IncompleteSourceError(
                    f"{where}: page {page} ended after {len(entries)} entries with {exc}, so "
                    "the read may be partial and nothing was used"
                ) from exc
            if cookie is None:
                raise IncompleteSourceError(
                    f"{where}: page {page} came back without the paged-results control after "
                    f"{len(entries)} entries, so the read may be partial and nothing was used; "
                    "check that the server supports RFC 2696 paging"
                )
            if not cookie:
                return entries, references

    def _follow_references(
        self,
        references: list[list[str]],
        conn: Connection,
        url: str,
        search_filter: str,
        attributes: Sequence[str],
        *,
        what: str,
        where: str,
        found: int,
        followed: tuple[tuple[str, Any], ...],
        progress: PageProgress | None = None,
    ) -> list[Entry]:
        """The entries behind the references a search met, or an incomplete-read error.

        Each reference is a list of URLs, alternatives for one subtree (RFC 4511 4.5.3): one
        is read. A naming context the same server holds (AD's CN=Configuration under a
        forest's root domain, its DNS zones) is searched on the same connection: nothing
        leaves it, and reading it keeps the snapshot complete. Otherwise, with
        `follow_referrals`, the alternatives are tried in turn on their servers, binding as
        the profile does; without it the reference is refused.

        Raises:
            IncompleteSourceError: a reference is refused, unusable, loops, or no alternative
                could be read (the last failure is chained).
        """
        plans: list[tuple[list[Reference], bool]] = []
        refused: list[str] = []
        for alternatives in references:
            usable, unusable = [], []
            for text in alternatives:
                try:
                    usable.append(parse_reference(text))
                except IncompleteSourceError as exc:
                    unusable.append(exc)
            if not usable:
                raise unusable[0]
            held = [ref for ref in usable if self._holds_naming_context(conn, url, ref.dn)]
            if not held and not self.config.follow_referrals:
                refused += alternatives
            plans.append((held[:1], True) if held else (usable, False))
        if refused:
            raise references_refused(where, refused, entries=found)
        entries: list[Entry] = []
        for candidates, same_server in plans:
            failure: SourceError | ConfigError | None = None
            for ref in candidates:
                target_url = url if same_server else ref.server_url
                if (target_url.lower(), normalise_dn(ref.dn)) in followed:
                    raise IncompleteSourceError(
                        f"{where}: the reference {ref.url} leads back to a search already made "
                        "(a referral loop), so the read is incomplete and nothing was used; fix "
                        "the referral entries (their ref values) in the directory"
                    )
                if len(followed) > MAX_REFERRAL_HOPS:
                    raise IncompleteSourceError(
                        f"{where}: the reference {ref.url} is more than {MAX_REFERRAL_HOPS} "
                        "referrals deep, so the read is incomplete and nothing was used; set "
                        "the base DN nearer to the servers holding the entries"
                    )
                try:
                    target = conn if same_server else self._referred_connection(ref.server_url)
                    entries += self._search(
                        target,
                        target_url,
                        ref.dn,
                        search_filter,
                        attributes,
                        what=what,
                        scope=ref.scope or SUBTREE,
                        followed=followed,
                        progress=progress,
                    )
                    failure = None
                    break
                except (SourceError, ConfigError) as exc:
                    failure = exc
            if failure is not None:
                tried = ", ".join(ref.url for ref in candidates)
                raise IncompleteSourceError(
                    f"{where}: the directory referred to {tried} for entries in scope, and "
                    f"reading them there failed, so nothing was used: {failure}"
                ) from failure
        return entries

    def _holds_naming_context(self, conn: Connection, url: str, dn: str) -> bool:
        """Whether `dn` is a naming context the server at `url` lists in its rootDSE."""
        held = self._naming_contexts.get(url.lower())
        if held is None:
            conn.search("", "(objectClass=*)", search_scope=BASE, attributes=["namingContexts"])
            found = [i for i in conn.response or () if i.get("type") == "searchResEntry"]
            values = found[0]["raw_attributes"].get("namingContexts") or [] if found else []
            held = {normalise_dn(v.decode("utf-8", errors="replace")) for v in values}
            self._naming_contexts[url.lower()] = held
        key = normalise_dn(dn)
        return key is not None and key in held

    def _member_request(self, name: str) -> str:
        """AD: ask for `member;range=0-N` so a big group arrives in windows we control."""
        if self.config.flavour != "active_directory":
            return name
        return f"{name};range=0-{self.config.member_range_size - 1}"

    def _complete_ranges(self, conn: Connection, url: str, entries: list[Entry]) -> list[Entry]:
        """Replace each `attr;range=L-H` value list by the whole attribute (AD range retrieval).

        The windows are read from the server the entries came from (`conn` at `url`).
        """
        for dn, attrs in entries:
            for key in [k for k in attrs if ";range=" in k]:
                name = key.partition(";")[0]
                attrs[name] = list(attrs.get(name) or ()) + self._read_ranges(
                    conn, url, dn, key, attrs.pop(key)
                )
        return entries

    def _read_ranges(
        self, conn: Connection, url: str, dn: str, key: str, first: list[bytes] | None
    ) -> list[bytes]:
        """All values of a ranged attribute, reading window after window until `-*`.

        Raises:
            IncompleteSourceError: a window failed, came back without the attribute, skipped
                values or made no progress; a partial member list is never returned.
        """
        name = key.partition(";")[0]
        values = list(first or ())
        low, high = range_bounds(key, dn)
        where = f"{url}: ranged read of {name} of {dn}"
        key = self._attribute_schema().key
        while high is not None:
            start = high + 1
            request = f"{name};range={start}-{start + self.config.member_range_size - 1}"
            try:
                answer = search(
                    conn,
                    dn,
                    "(objectClass=*)",
                    scope=BASE,
                    attributes=[request],
                    key=key,
                    deref_aliases=self.config.deref_aliases,
                )
            except LDAPCommunicationError as exc:
                discard(conn)
                raise SourceUnreachableError(
                    f"{where}: the connection failed on the window from value {start} ({exc})"
                ) from exc
            result = answer.result
            if result["result"] != 0:
                raise IncompleteSourceError(
                    f"{where}: the window from value {start} ended with {_describe(result)} "
                    f"after {len(values)} values, so the read may be partial and nothing was used"
                )
            window = answer.entries[0][1] if answer.entries else {}
            ranged = [k for k in window if ";range=" in k]
            if not ranged:
                raise IncompleteSourceError(
                    f"{where}: the window from value {start} came back without {name};range=, "
                    f"after {len(values)} values (entry changed while read?); nothing was used"
                )
            batch = window[ranged[0]] or []
            low, next_high = range_bounds(ranged[0], dn)
            if low != start or (not batch and next_high is not None):
                raise IncompleteSourceError(
                    f"{where}: asked for values from {start}, got {ranged[0]} with {len(batch)} "
                    "values; the read may be partial and nothing was used"
                )
            values += batch
            high = next_high
        return values

    def _supports_in_chain(self) -> bool:
        """Whether the server announces AD DS or AD LDS, which implement IN_CHAIN."""
        conn = self._connection()
        conn.search("", "(objectClass=*)", search_scope=BASE, attributes=["supportedCapabilities"])
        found = [i for i in conn.response or () if i.get("type") == "searchResEntry"]
        if conn.result["result"] != 0 or not found:
            return False
        capabilities = {
            v.decode() for v in found[0]["raw_attributes"].get("supportedCapabilities") or ()
        }
        return bool(capabilities & AD_CAPABILITIES)

    def _members_in_chain(
        self, group_entries: list[Entry], group_names: list[str], in_scope: set[str]
    ) -> list[tuple[str, str]]:
        """Direct and indirect members of each group (among `in_scope` users), one IN_CHAIN search per group."""
        rows: list[tuple[str, str]] = []
        for (dn, _attrs), group in zip(group_entries, group_names, strict=True):
            # The DN is a filter value here: escaped per RFC 4515 (its own `\,` included).
            chain = f"(memberOf:{IN_CHAIN_RULE}:={escape_filter_chars(dn)})"
            members = self._paged_search(
                self.config.user_base_dn,
                and_filters(self.config.user_filter, chain),
                [self.config.id_attribute],
                what=f"members of {group} (in chain)",
            )
            for member_dn, attrs in members:
                source_id = self._source_id(attrs, member_dn)
                if source_id in in_scope:
                    rows.append((source_id, group))
        return rows

    def _inactive_ids(self, user_filter: str) -> set[str]:
        """Source ids of the users matching `user_filter` and `disabled_filter`."""
        if not self.config.disabled_filter:
            return set()
        entries = self._paged_search(
            self.config.user_base_dn,
            and_filters(user_filter, self.config.disabled_filter),
            [self.config.id_attribute],
            what="disabled users",
        )
        return {self._source_id(attrs, dn) for dn, attrs in entries}

    # -- building the frames -------------------------------------------------------------

    def _wanted_attributes(self, attributes: Sequence[str]) -> list[str]:
        """The mapping's attribute names, once each, checked against the directory's schema.

        A name the schema lacks would read as empty for every user (and empty values would
        then be written to the targets), so it is refused; only the names of the shipped
        attributes table pass regardless, since it lists each kind of IdP's spelling as
        alternatives (SCIM's userName beside LDAP's uid) and most are absent from any one.

        Raises:
            ConfigError: a name is no attribute description, collides with a users column,
                or names an attribute type the schema does not define.
            SourceError: the schema cannot be read.
        """
        wanted = list(dict.fromkeys(attributes))
        for name in wanted:
            check_attribute_name(name, where="the mapping's source attributes")
            if name in SOURCE_USER_COLUMNS:
                raise ConfigError(
                    f"source attribute '{name}' collides with the users table's own column "
                    f"'{name}'; map another attribute"
                )
        schema = self._attribute_schema()
        unknown = [name for name in schema.unknown(wanted) if name not in SHIPPED_TABLE_NAMES]
        if unknown:
            hints = [
                f"{name!r}: did you mean {' or '.join(schema.suggestions(name))}?"
                for name in unknown
                if schema.suggestions(name)
            ]
            raise ConfigError(
                f"{self.config.url}: the profile's attributes.csv reads source attribute(s) "
                f"{', '.join(repr(name) for name in unknown)}, which the directory's schema "
                f"({schema.source}) does not define as a name, alias or OID"
                + (f" ({'; '.join(hints)})" if hints else "")
                + "; correct attributes.csv, or extend the directory's schema"
            )
        return wanted

    def _attribute_schema(self) -> AttributeSchema:
        """The directory's attribute types, read once, through which every name is resolved.

        Raises:
            SourceError: the rootDSE names no subschema subentry, or it cannot be read.
        """
        if self._schema is not None:
            return self._schema
        conn = self._connection()
        url = self.config.url
        root = base_entry(conn, "", ["subschemaSubentry"]) or {}
        names = root.get("subschemaSubentry") or []
        if not names:
            raise SourceError(
                f"{url}: the rootDSE shows no subschemaSubentry, so attribute names (aliases "
                "such as surname for sn, OIDs) cannot be resolved; let the bind account read "
                "the rootDSE and the schema"
            )
        subentry = names[0].decode("utf-8", errors="replace")
        schema_entry = base_entry(conn, subentry, ["attributeTypes"], "(objectClass=subschema)")
        definitions = (schema_entry or {}).get("attributeTypes") or []
        if not definitions:
            raise SourceError(
                f"{url}: cannot read attributeTypes of the schema at {subentry} "
                f"({_describe(conn.result)}); let the bind account read it: attribute names "
                "(aliases, OIDs) are resolved through it"
            )
        self._schema = AttributeSchema.parse(
            (d.decode("utf-8", errors="replace") for d in definitions), source=subentry
        )
        return self._schema

    def _member_keys(self) -> list[str]:
        """Where entries hold the values of the profile's member attributes."""
        return [self._key(name) for name in self.config.member_attributes]

    def _key(self, name: str) -> str:
        """Where an entry holds the values of attribute `name` (alias, OID, any case)."""
        return self._attribute_schema().key(name)

    def _user_request(self, wanted: Sequence[str]) -> list[str]:
        request = [self.config.id_attribute, *wanted]
        if self.config.membership == "member_of":
            request.append(MEMBER_OF)
        if self.config.flavour == "active_directory":
            request += [USER_ACCOUNT_CONTROL, ACCOUNT_EXPIRES]
        return list(dict.fromkeys(request))

    def _source_id(self, attrs: dict[str, list[bytes]], dn: str) -> str:
        return self._source_ids([(dn, attrs)])[0]

    def _source_ids(self, entries: list[Entry]) -> list[str]:
        """The canonical id of each entry (the id attribute resolved once for all)."""
        name = self.config.id_attribute
        key = self._key(name)
        ids = []
        for dn, attrs in entries:
            values = attrs.get(key)
            if not values:
                raise IncompleteSourceError(
                    f"{self.config.url}: {dn} has no {name}; every user and group needs its "
                    f"immutable id (check id_attribute, and that the bind account may read it)"
                )
            ids.append(canonical_id(name, values[0], dn))
        return ids

    def _users_frame(
        self, entries: list[Entry], wanted: Sequence[str], inactive: set[str]
    ) -> pd.DataFrame:
        ids = self._source_ids(entries)
        dns = [dn for dn, _ in entries]
        account_state = (
            self.config.inactive_accounts if self.config.flavour == "active_directory" else "none"
        )
        if account_state != "none":
            now = filetime_now()
            inactive = inactive | {
                source_id
                for source_id, (dn, attrs) in zip(ids, entries, strict=True)
                if ad_inactive(attrs, account_state, now, dn)
            }
        refuse_duplicate_ids(ids, dns, what="users")
        frame = pd.DataFrame(
            {
                "source_id": pd.Series(ids, dtype="string"),
                "locator": pd.Series(dns, dtype="string"),
                "active": pd.Series([sid not in inactive for sid in ids], dtype="boolean"),
                **{
                    name: pd.Series(
                        first_values_as_text(entries, name, self._key(name)), dtype="string"
                    )
                    for name in wanted
                },
            }
        )
        return conform(frame, SOURCE_USER_COLUMNS, what="ldap users")

    def _groups_frame(self, entries: list[Entry]) -> tuple[pd.DataFrame, list[str]]:
        ids: list[str] = []
        dns: list[str] = []
        names: list[str] = []
        name_attribute = self.config.group_name_attribute
        for dn, attrs in entries:
            ids.append(self._source_id(attrs, dn))
            dns.append(dn)
            values = attrs.get(self._key(name_attribute))
            if not values:
                raise IncompleteSourceError(
                    f"{self.config.url}: group {dn} has no {name_attribute} "
                    "(group_name_attribute); fix the entry or the group filter"
                )
            names.append(text_value(values[0], name_attribute, dn))
        refuse_duplicate_ids(ids, dns, what="groups")
        frame = pd.DataFrame({"source_group_id": ids, "source_group": names}, dtype="string")
        return conform(frame, SOURCE_GROUP_COLUMNS, what="ldap groups"), names


def _describe(result: dict[str, Any]) -> str:
    message = (result.get("message") or "").strip()
    text = f"result {result.get('result')} {result.get('description')}"
    return f"{text} ({message})" if message else text


def _advice(code: int, what: str) -> str:
    if code in (3, 4, 11):  # timeLimitExceeded, sizeLimitExceeded, adminLimitExceeded
        return (
            "raise the size/time limits of the bind account on the server (OpenLDAP `limits`, "
            "AD MaxPageSize/MaxResultSetSize) or lower page_size"
        )
    if code == RESULT_NO_SUCH_OBJECT:
        return f"check the base DN of the {what} (it does not exist or is not visible)"
    if code == 12:  # unavailableCriticalExtension
        return "the server refused RFC 2696 paging; enable it for this account"
    return "check the server's log for this search"
