"""What is particular to Active Directory: account state, ranged values, IN_CHAIN, FILETIMEs.

AD marks a disabled account in userAccountControl (bit 0x2) and an expiring one in
accountExpires (a FILETIME, 0 or the largest value meaning never); it hands out big
multi-valued attributes in windows (`member;range=0-1499`), which `ActiveDirectoryReads`
reads window by window, checking each (ldap3's auto_range stops silently on a failed one);
and it evaluates nesting itself with LDAP_MATCHING_RULE_IN_CHAIN (one search per group),
which servers that announce AD DS or AD LDS capabilities implement.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ldap3 import BASE, Connection
from ldap3.core.exceptions import LDAPCommunicationError
from ldap3.utils.conv import escape_filter_chars

from usersync.config import LdapSourceConfig
from usersync.errors import IncompleteSourceError, SourceUnreachableError
from usersync.sources.ldap.decoding import Entry, discard, search
from usersync.sources.ldap.pager import describe_result
from usersync.sources.ldap.schema import AttributeSchema
from usersync.sources.ldap.values import and_filters

#: LDAP_MATCHING_RULE_IN_CHAIN: transitive evaluation of a DN-valued attribute (AD only).
IN_CHAIN_RULE = "1.2.840.113556.1.4.1941"
#: rootDSE supportedCapabilities of AD DS and AD LDS, the servers that implement IN_CHAIN.
AD_CAPABILITIES = frozenset({"1.2.840.113556.1.4.800", "1.2.840.113556.1.4.1851"})
USER_ACCOUNT_CONTROL = "userAccountControl"
ACCOUNT_EXPIRES = "accountExpires"
#: userAccountControl ACCOUNTDISABLE.
UAC_ACCOUNT_DISABLE = 0x2
#: accountExpires values meaning "never": 0 and the largest FILETIME.
NEVER_EXPIRES = frozenset({0, 0x7FFFFFFFFFFFFFFF})
#: FILETIME counts 100 ns intervals since 1601-01-01; Unix time starts 11644473600 s later.
FILETIME_UNIX_OFFSET_SECONDS = 11_644_473_600


def range_bounds(key: str, dn: str) -> tuple[int, int | None]:
    """(low, high) of `attr;range=low-high`; high is None for `*` (the last window)."""
    window = key.partition(";range=")[2].partition(";")[0]
    low, _, high = window.partition("-")
    try:
        return int(low), None if high == "*" else int(high)
    except ValueError as exc:
        raise IncompleteSourceError(f"{dn}: unreadable range option in {key}") from exc


def filetime_now() -> int:
    return int((time.time() + FILETIME_UNIX_OFFSET_SECONDS) * 10_000_000)


def ad_inactive(attrs: dict[str, list[bytes]], which: str, now: int, dn: str) -> bool:
    """Whether an AD user is inactive: disabled (UAC 0x2), or past its accountExpires."""
    try:
        uac = int((attrs.get(USER_ACCOUNT_CONTROL.lower()) or [b"0"])[0])
        expires = int((attrs.get(ACCOUNT_EXPIRES.lower()) or [b"0"])[0])
    except ValueError as exc:
        raise IncompleteSourceError(
            f"{dn}: userAccountControl or accountExpires is not a number"
        ) from exc
    if uac & UAC_ACCOUNT_DISABLE:
        return True
    return which == "disabled_or_expired" and expires not in NEVER_EXPIRES and expires <= now


class ActiveDirectoryReads:
    """Ranged values and IN_CHAIN of an `LdapSource` (a mixin: searches from `PagedSearch`)."""

    config: LdapSourceConfig
    _connection: Callable[[], Connection]
    _paged_search: Callable[..., list[Entry]]
    _attribute_schema: Callable[[], AttributeSchema]
    _source_id: Callable[[dict[str, list[bytes]], str], str]

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
                    f"{where}: the window from value {start} ended with {describe_result(result)} "
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
