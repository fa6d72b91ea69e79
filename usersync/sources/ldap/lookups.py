"""One user's reads, for Test Sync: look users up by an attribute, their groups, one entry whole.

A few searches each, never a full read: `find_users` matches one escaped value, `user_groups`
follows the groups' member attributes (and nesting, with IN_CHAIN where the server has it),
and `entry_attributes` shows every attribute of an entry as text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
from ldap3 import BASE, Connection
from ldap3.utils.conv import escape_filter_chars

from usersync.config import LdapSourceConfig
from usersync.errors import (
    ConfigError,
    SourceError,
)
from usersync.sources.ldap.active_directory import (
    IN_CHAIN_RULE,
)
from usersync.sources.ldap.decoding import (
    Entry,
)
from usersync.sources.ldap.pager import describe_result
from usersync.sources.ldap.values import (
    and_filters,
    check_attribute_name,
    display_value,
)


class UserLookups:
    """Test Sync's reads of an `LdapSource` (a mixin: searches and frames from the others)."""

    config: LdapSourceConfig
    _connection: Callable[[], Connection]
    _paged_search: Callable[..., list[Entry]]

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
            raise SourceError(
                f"{self.config.url}: reading {locator} failed: {describe_result(result)}"
            )
        raw = dict(found[0]["raw_attributes"])
        for key in [k for k in raw if ";range=" in k]:
            raw[key.partition(";")[0]] = self._read_ranges(
                conn, self.config.url, locator, key, raw.pop(key)
            )
        return {
            name: [display_value(name, value) for value in raw[name] or ()] for name in sorted(raw)
        }
