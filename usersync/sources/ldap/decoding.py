"""Search answers decoded lean: each entry as its DN and raw values, nothing more.

ldap3 builds two dicts per entry (raw and cooked values); the pager reads neither, and
building them was about 40% of a 100k-user extract (bench/README.md). `decode_entries_lean`
has one connection decode entries into an `Entry` for the searches made inside it, keyed as
the schema says (`AttributeSchema.key`); every other message, search references and the
searchResDone with its paged-results control included, is still decoded by ldap3.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ldap3 import BASE, Connection
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import to_unicode

#: An entry as the pager reads it: its DN, and raw values by attribute key.
Entry = tuple[str, dict[str, list[bytes]]]


#: The key under which `decode_entries_lean` leaves the decoded `Entry` in a response item.
LEAN_ENTRY = "usersync_entry"


@contextlib.contextmanager
def decode_entries_lean(conn: Connection, key: Callable[[str], str]) -> Iterator[None]:
    """While open, `conn` decodes each searchResEntry into an `Entry` only (see below).

    `key` turns an attribute description as the server sends it into the entry's dict key
    (`AttributeSchema.key`: the primary name in lower case, options kept).

    Relies on ldap3 2.9.1: `SyncStrategy._get_response` passes every message it receives, as
    `decode_message_fast` left it, to `self.decode_response_fast` (strategy/base.py), and the
    response items that method returns become `conn.response`. For a searchResEntry, ldap3
    builds two dicts per entry: `raw_attributes`, a CaseInsensitiveDict, and the cooked
    `attributes`, running `to_unicode` and the schema formatters on every value. This module
    reads neither (see the module's docstring for the cost).
    So the method is replaced, as an attribute of this connection's strategy object only (no
    other connection, no ldap3 global), for the searches made inside this block; every other
    message (searchResDone with its paged-results control, searchResRef, bind, extended) still
    goes through ldap3's own method. Should another ldap3 version stop calling it, the items
    come back as ldap3 builds them and `entry_of` reads those instead: slower, never wrong.
    """
    strategy = conn.strategy
    ldap3_decode: Callable[[dict[str, Any]], dict[str, Any]] = strategy.decode_response_fast
    descriptions: dict[bytes, str] = {}  # the same few attribute names come in every entry

    def decode(message: dict[str, Any]) -> dict[str, Any]:
        if message["protocolOp"] != 4:  # searchResEntry
            return ldap3_decode(message)
        # Controls attached to single entries are dropped: nothing here reads them.
        entry = lean_entry(message["payload"], descriptions, key)
        return {"type": "searchResEntry", LEAN_ENTRY: entry}

    strategy.decode_response_fast = decode
    try:
        yield
    finally:
        del strategy.decode_response_fast  # the class's method shows through again


def lean_entry(
    payload: list[tuple[Any, ...]], descriptions: dict[bytes, str], key: Callable[[str], str]
) -> Entry:
    """DN and {`key` of each attribute description: raw values} of a searchResEntry.

    `payload` is ldap3 2.9.1's fast-decoder form of SearchResultEntry: (class, constructed,
    tag, value) tuples; objectName first, then the attribute list, each attribute its type and
    its set of values, as slices of the received bytes. Descriptions keep their options
    (`member;range=0-1499`); `descriptions` caches their keys.
    """
    attributes: dict[str, list[bytes]] = {}
    for attribute in payload[1][3]:
        description, values = attribute[3]
        raw_name = description[3]
        name = descriptions.get(raw_name)
        if name is None:
            name = descriptions[raw_name] = key(server_text(raw_name))
        attributes[name] = [value[3] for value in values[3]]
    return server_text(payload[0][3]), attributes


def server_text(raw: bytes) -> str:
    # What ldap3's to_unicode(from_server=True) returns (UTF-8, then its fallback encodings for
    # servers that break RFC 4511), without its four config look-ups per call.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return to_unicode(raw, from_server=True)


def entry_of(item: dict[str, Any], key: Callable[[str], str]) -> Entry:
    """The `Entry` of a searchResEntry response item, its attributes under `key(description)`.

    Items not decoded by `decode_entries_lean` (another ldap3 version) are read from ldap3's
    `raw_attributes`.
    """
    lean = item.get(LEAN_ENTRY)
    if lean is not None:
        return lean
    raw = item["raw_attributes"]
    return item["dn"], {key(name): raw[name] or [] for name in raw}


def base_entry(
    conn: Connection, dn: str, attributes: list[str], search_filter: str = "(objectClass=*)"
) -> dict[str, list[bytes]] | None:
    """The raw attributes of the entry at `dn` (the rootDSE for ""), or None if unreadable."""
    conn.search(dn, search_filter, search_scope=BASE, attributes=attributes)
    found = [i for i in conn.response or () if i.get("type") == "searchResEntry"]
    if conn.result["result"] != 0 or not found:
        return None
    return found[0]["raw_attributes"]


def discard(conn: Connection) -> None:
    # The connection is being thrown away; after a failed TLS handshake its socket may already
    # be gone, and a failing unbind changes nothing.
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()
