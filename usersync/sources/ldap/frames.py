"""From entries to the snapshot's frames: attribute names checked, ids read, columns built.

Every name the mapping reads is resolved through the directory's schema (`schema.py`: aliases
such as surname for sn, OIDs, case), and a mapped name the schema lacks is refused before any
read, since it would read as empty for every user. Users and groups are keyed by the id
attribute (entryUUID; AD's binary objectGUID is decoded); an entry without one, or two
entries sharing one, make the read incomplete. Each frame is built once from column lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
from ldap3 import Connection

from usersync.config import LdapSourceConfig
from usersync.errors import (
    ConfigError,
    IncompleteSourceError,
    SourceError,
)
from usersync.mapping import DEFAULT_ATTRIBUTES_CSV, MappingTables, parse_attributes
from usersync.model import SOURCE_GROUP_COLUMNS, SOURCE_USER_COLUMNS, conform
from usersync.sources.ldap.active_directory import (
    ACCOUNT_EXPIRES,
    USER_ACCOUNT_CONTROL,
    ad_inactive,
    filetime_now,
)
from usersync.sources.ldap.decoding import (
    Entry,
    base_entry,
)
from usersync.sources.ldap.membership import (
    MEMBER_OF,
)
from usersync.sources.ldap.pager import describe_result
from usersync.sources.ldap.schema import AttributeSchema
from usersync.sources.ldap.values import (
    and_filters,
    canonical_id,
    check_attribute_name,
    first_values_as_text,
    refuse_duplicate_ids,
    text_value,
)

#: Attribute names of the shipped attributes table (used where a profile has none).
SHIPPED_TABLE_NAMES = frozenset(
    MappingTables(parse_attributes(DEFAULT_ATTRIBUTES_CSV), ()).source_attributes()
)


class EntryFrames:
    """Frame building of an `LdapSource` (a mixin: searches and connections from the others)."""

    config: LdapSourceConfig
    _schema: AttributeSchema | None
    _connection: Callable[[], Connection]
    _paged_search: Callable[..., list[Entry]]

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
                f"({describe_result(conn.result)}); let the bind account read it: attribute names "
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
