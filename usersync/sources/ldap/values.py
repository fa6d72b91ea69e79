"""Attribute values and names as the directory holds them, turned into what usersync stores.

Ids become canonical text (AD's binary objectGUID decoded, textual UUIDs normalised); mapped
values must be text (a binary attribute is refused, naming an entry that holds one); names
and filters a profile gives are checked or combined here, before they reach a search.
"""

from __future__ import annotations

import re
import uuid

from usersync.errors import ConfigError, IncompleteSourceError
from usersync.sources.ldap.decoding import Entry

#: Id attributes stored as 16 raw bytes in Microsoft's little-endian GUID layout.
BINARY_GUID_ATTRIBUTES = frozenset({"objectguid", "ms-ds-consistencyguid", "msds-consistencyguid"})
#: RFC 4512 attribute description: a name or an OID, then options (`;lang-en`, `;binary`).
ATTRIBUTE_DESCRIPTION = re.compile(
    r"^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)(?:;[A-Za-z0-9-]+)*$"
)
#: How many unresolved member DNs a note quotes.
NOTE_EXAMPLES = 3
#: A UUID written as `str(uuid.UUID(...))` writes it.
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_id(attribute: str, raw: bytes, dn: str) -> str:
    """The id attribute's value as text: a lower-case UUID where it is one.

    AD's objectGUID (16 raw bytes, little-endian fields) becomes the textual GUID; a textual
    UUID (entryUUID, `{...}`-wrapped GUIDs) is canonicalised; any other text is kept as is
    (some directories use non-UUID ids such as 389-ds nsUniqueId).

    Raises:
        IncompleteSourceError: a binary GUID attribute does not hold 16 bytes, or the value is
            not text.
    """
    if attribute.lower() in BINARY_GUID_ATTRIBUTES:
        if len(raw) != 16:
            raise IncompleteSourceError(
                f"{dn}: {attribute} holds {len(raw)} bytes, not a 16-byte GUID"
            )
        return str(uuid.UUID(bytes_le=raw))
    text = text_value(raw, attribute, dn).strip()
    if CANONICAL_UUID.fullmatch(text):
        return text  # already what str(uuid.UUID(text)) gives (entryUUID mostly is)
    try:
        return str(uuid.UUID(text.strip("{}")))
    except ValueError:
        return text


def first_values_as_text(entries: list[Entry], attribute: str, key: str) -> list[str | None]:
    """Each entry's first value of `attribute` (stored under `key`) as text (None if none).

    Raises:
        ConfigError: a value is not UTF-8 text (naming the first such entry).
    """
    firsts = [attrs.get(key) for _, attrs in entries]
    try:
        return [values[0].decode("utf-8") if values else None for values in firsts]
    except UnicodeDecodeError:
        for (dn, _), values in zip(entries, firsts, strict=True):
            if values:
                text_value(values[0], attribute, dn)  # raises, naming the entry
        raise


def text_value(raw: bytes, attribute: str, dn: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{dn}: attribute {attribute} is binary, not text; the mapping can read text "
            "attributes only (remove it from attributes.csv)"
        ) from exc


def check_attribute_name(name: str, *, where: str) -> None:
    if not ATTRIBUTE_DESCRIPTION.match(name):
        raise ConfigError(
            f"{where}: '{name}' is not an LDAP attribute name (letters, digits and '-', "
            "starting with a letter, or a dotted OID; options after ';')"
        )


def and_filters(*filters: str) -> str:
    """AND filters together; a filter written without its outer parentheses gets them."""
    parts = [f if f.startswith("(") else f"({f})" for f in (f.strip() for f in filters)]
    return parts[0] if len(parts) == 1 else "(&" + "".join(parts) + ")"


def refuse_duplicate_ids(ids: list[str], dns: list[str], *, what: str) -> None:
    if len(set(ids)) == len(ids):
        return
    seen: dict[str, str] = {}
    for source_id, dn in zip(ids, dns, strict=True):
        other = seen.setdefault(source_id, dn)
        if other != dn:
            raise IncompleteSourceError(
                f"two {what} share the id {source_id}: {other} and {dn}; the id attribute must "
                "be unique (check id_attribute)"
            )


def examples(values: list[str]) -> str:
    shown = ", ".join(values[:NOTE_EXAMPLES])
    return shown + (", ..." if len(values) > NOTE_EXAMPLES else "")


def display_value(attribute: str, raw: bytes) -> str:
    """A value as a person reads it: text, a GUID, or hex for other binary values."""
    if attribute.lower() in BINARY_GUID_ATTRIBUTES and len(raw) == 16:
        return str(uuid.UUID(bytes_le=raw))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(raw)} bytes> {raw.hex()}"
