"""Search requests sent through ldap3, their answers read from the socket and decoded here.

ldap3 2.9.1 decodes every message with a generic recursive BER decoder (one call per element:
2.1M calls for 100k users) and builds two dicts per entry; on a 100k-user read that was most
of the time (bench/README.md). A search answer has a fixed shape, so `search` sends the
request with ldap3 (its filter parser and encoder), then reads the answer itself: messages cut
from the socket's byte stream, each SearchResultEntry decoded flat and iteratively into an
`Entry` (its DN and the raw values under `key(attribute description)`), references and the
SearchResultDone (result code, matched DN, message, referral URLs, controls) decoded as
RFC 4511 lays them out. Only the definite length form is accepted (RFC 4511 5.1); any byte
that does not fit the grammar is a `MalformedAnswerError`, never skipped. Used only with
ldap3's SYNC strategy on a simple bind (no SASL security layer between BER and the socket).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ldap3 import BASE, DEREF_ALWAYS, DEREF_BASE, DEREF_NEVER, DEREF_SEARCH, Connection
from ldap3.core.exceptions import (
    LDAPCommunicationError,
    LDAPException,
    LDAPSessionTerminatedByServerError,
    LDAPSocketReceiveError,
)
from ldap3.core.results import RESULT_CODES
from ldap3.operation.search import search_operation
from ldap3.protocol.rfc2696 import paged_search_control
from ldap3.utils.conv import to_unicode
from ldap3.utils.dn import safe_dn

from usersync.errors import IncompleteSourceError, SourceUnreachableError

#: An entry as the pager reads it: its DN, and raw values by attribute key.
Entry = tuple[str, dict[str, list[bytes]]]

#: RFC 2696 Simple Paged Results control.
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
#: The profile's `deref_aliases` as ldap3 names RFC 4511's derefAliases.
DEREF_ALIASES = {
    "never": DEREF_NEVER,
    "searching": DEREF_SEARCH,
    "finding": DEREF_BASE,
    "always": DEREF_ALWAYS,
}
#: Bytes asked of the socket at a time (a page of 1000 users is about 250 kB).
RECEIVE_CHUNK = 1 << 18
#: BER tags (RFC 4511 appendix B): the protocolOps a search answer is made of, and the rest.
_SEQUENCE, _SET, _OCTETS, _INTEGER, _ENUMERATED, _BOOLEAN = 0x30, 0x31, 0x04, 0x02, 0x0A, 0x01
_SEARCH_ENTRY, _SEARCH_DONE, _SEARCH_REFERENCE = 0x64, 0x65, 0x73
_EXTENDED_RESPONSE, _INTERMEDIATE_RESPONSE = 0x78, 0x79
_REFERRAL, _CONTROLS = 0xA3, 0xA0
_NOTICE_OF_DISCONNECTION = "1.3.6.1.4.1.1466.20036"


class MalformedAnswerError(IncompleteSourceError):
    """The server's answer does not follow RFC 4511; the connection's stream is unusable."""


@dataclass
class SearchAnswer:
    """Everything one search request returned.

    Attributes:
        entries: the SearchResultEntries, in order.
        references: the URLs of each SearchResultReference (alternatives for one subtree).
        result: the SearchResultDone as ldap3 words it: `result` (code), `description`,
            `message`, `dn` (matched DN), `referrals` (URLs of a referral result, or None).
        controls: the response controls by OID, each its raw controlValue (None if absent).
    """

    entries: list[Entry] = field(default_factory=list)
    references: list[list[str]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    controls: dict[str, bytes | None] = field(default_factory=dict)

    def paged_cookie(self) -> bytes | None:
        """The cookie of the paged-results control (b"" on the last page), None if absent.

        Raises:
            MalformedAnswerError: the control's value is not RFC 2696's realSearchControlValue.
        """
        if PAGED_RESULTS_OID not in self.controls:
            return None
        value = self.controls[PAGED_RESULTS_OID] or b""
        try:
            start, end = _element(value, 0, _SEQUENCE, len(value))
            _, size_end = _element(value, start, _INTEGER, end)
            cookie_start, cookie_end = _element(value, size_end, _OCTETS, end)
            if cookie_end != end or end != len(value):
                raise _malformed(cookie_end, "bytes after the cookie")
        except (IndexError, MalformedAnswerError) as exc:
            raise MalformedAnswerError(
                f"the paged-results control's value {value.hex()} is not RFC 2696's "
                f"(size, cookie): {exc}"
            ) from None
        return value[cookie_start:cookie_end]


def search(
    conn: Connection,
    base: str,
    search_filter: str,
    *,
    scope: str,
    attributes: Sequence[str],
    key: Callable[[str], str],
    page_size: int | None = None,
    cookie: bytes | None = None,
    deref_aliases: str = "always",
) -> SearchAnswer:
    """Send one search request on `conn` and read its whole answer.

    With `page_size`, the request carries a critical paged-results control (a server that
    cannot page must refuse) with `cookie`. Attribute descriptions become keys through `key`
    (`AttributeSchema.key`). The search is ldap3's `Connection.search` as LdapSource called it
    (no size or time limit, names checked as ldap3 does); `deref_aliases` is RFC 4511's
    derefAliases by name ("never", "searching", "finding", "always").

    Raises:
        LDAPInvalidFilterError: the filter is not valid LDAP (from ldap3).
        LDAPCommunicationError: sending or receiving failed, or the server ended the session.
        MalformedAnswerError: the answer does not parse; the connection must be discarded.
    """
    controls = [paged_search_control(True, page_size, cookie)] if page_size else None
    if conn.check_names and base:
        base = safe_dn(base)  # as ldap3's own search does
    with conn.connection_lock:
        request = search_operation(
            base,
            search_filter,
            scope,
            DEREF_ALIASES[deref_aliases],
            list(attributes) or ["1.1"],
            0,
            0,
            False,
            conn.auto_escape,
            conn.auto_encode,
            None,
            validator=conn.server.custom_validator,
            check_names=conn.check_names,
        )
        message_id = conn.strategy.send("searchRequest", request, controls)
        try:
            if conn.socket is None:
                raise LDAPSocketReceiveError("the connection is closed")
            return read_answer(conn.socket, message_id, key)
        finally:
            # ldap3 keeps each request sent until its answer is read; this one is read here.
            outstanding = conn.strategy._outstanding
            if outstanding:
                outstanding.pop(message_id, None)


def read_answer(sock: Any, message_id: int, key: Callable[[str], str]) -> SearchAnswer:
    """The answer to search request `message_id`, read from `sock` up to its SearchResultDone.

    `sock` is the connection's socket (anything with `recv`); nothing is read past the
    answer, since a SYNC connection has one request outstanding at a time.

    Raises:
        LDAPSocketReceiveError, LDAPSessionTerminatedByServerError: the socket failed or closed,
            or the server gave notice of disconnection.
        MalformedAnswerError: the bytes do not parse as RFC 4511 says, a message belongs to
            another request, or bytes follow the SearchResultDone.
    """
    answer = SearchAnswer()
    entries = answer.entries
    descriptions: dict[bytes, str] = {}  # the same few attribute names come in every entry
    data = b""
    pos = 0
    while True:
        # Cut one message (SEQUENCE, definite length) from the stream, receiving as needed.
        end = _message_end(data, pos)
        while end < 0 or end > len(data):
            data = _receive(sock, data[pos:], -end if end < 0 else end - pos)
            pos = 0
            end = _message_end(data, pos)
        try:
            body, _ = _element(data, pos, _SEQUENCE, end)
            id_start, op_start = _element(data, body, _INTEGER, end)
            tag = data[op_start]
            op, op_end = _element(data, op_start, tag, end)
            if data[id_start] != message_id or op_start - id_start != 1:  # ids under 128: 1 byte
                got = int.from_bytes(data[id_start:op_start], "big", signed=True)
                if got != message_id:
                    _refuse_foreign_message(data, got, message_id, tag, op, op_end)
            if tag == _SEARCH_ENTRY:
                entries.append(_entry(data, op, op_end, descriptions, key))
            elif tag == _SEARCH_REFERENCE:
                answer.references.append(_strings(data, op, op_end))
            elif tag == _SEARCH_DONE:
                answer.result = _result(data, op, op_end)
                answer.controls = _controls(data, op_end, end)
            elif tag != _INTERMEDIATE_RESPONSE:
                raise _malformed(op_start, f"unexpected protocolOp tag 0x{tag:02x}")
        except IndexError:  # a length pointing past the buffer: the bounds checks' only gap
            raise _malformed(pos, "an element runs past the end of its message") from None
        if tag == _SEARCH_DONE:
            if len(data) > end:
                raise MalformedAnswerError(
                    f"{len(data) - end} byte(s) followed the end of the search answer"
                )
            return answer
        # Controls on entries and references are not read; the message ends where it says.
        pos = end


def _receive(sock: Any, pending: bytes, needed: int) -> bytes:
    """`pending` plus what the socket sends next, at least `needed` bytes in all."""
    pieces = [pending]
    have = len(pending)
    while True:
        try:
            chunk = sock.recv(max(RECEIVE_CHUNK, needed - have))
        except OSError as exc:
            raise LDAPSocketReceiveError(f"error receiving data: {exc}") from exc
        if not chunk:
            raise LDAPSessionTerminatedByServerError("the server closed the connection")
        pieces.append(chunk)
        have += len(chunk)
        if have >= needed:
            return b"".join(pieces)


def _message_end(data: bytes, pos: int) -> int:
    """Where the message starting at `pos` ends; -(bytes needed) while its header is incomplete."""
    available = len(data) - pos
    if available < 2:
        return -2
    first = data[pos + 1]
    if first < 0x80:
        return pos + 2 + first
    count = first & 0x7F
    if available < 2 + count:
        return -(2 + count)
    if count == 0 or count > 4:
        raise _malformed(pos, f"length octet 0x{first:02x} (indefinite or over 4 GB)")
    return pos + 2 + count + int.from_bytes(data[pos + 2 : pos + 2 + count], "big")


def _element(data: bytes, pos: int, tag: int, limit: int) -> tuple[int, int]:
    """(content start, content end) of the element at `pos`, which must have `tag` and end by
    `limit`."""
    if data[pos] != tag:
        raise _malformed(pos, f"expected tag 0x{tag:02x}, found 0x{data[pos]:02x}")
    length = data[pos + 1]
    if length < 0x80:
        start = pos + 2
    else:
        count = length - 0x80
        if count == 0 or count > 4:
            raise _malformed(pos, "indefinite or oversized length")
        start = pos + 2 + count
        length = int.from_bytes(data[pos + 2 : start], "big")
    end = start + length
    if end > limit:
        raise _malformed(pos, "an element runs past its enclosing one")
    return start, end


def _entry(
    data: bytes,
    pos: int,
    end: int,
    descriptions: dict[bytes, str],
    key: Callable[[str], str],
) -> Entry:
    """The DN and attributes of a SearchResultEntry whose content is `data[pos:end]`.

    SearchResultEntry ::= [APPLICATION 4] SEQUENCE { objectName LDAPDN,
    attributes SEQUENCE OF SEQUENCE { type AttributeDescription, vals SET OF value } }.
    Written out flat, with a fast path for the common shape of an attribute (every length
    under 128 bytes: one byte each) and a single value; anything else goes the general way
    (`_attribute`). This loop runs once per attribute of every entry (900k times for 100k
    users), so it avoids calls.
    """
    name_start, name_end = _element(data, pos, _OCTETS, end)
    raw_dn = data[name_start:name_end]
    try:
        dn = raw_dn.decode("utf-8")
    except UnicodeDecodeError:
        dn = server_text(raw_dn)
    i, list_end = _element(data, name_end, _SEQUENCE, end)
    if list_end != end:
        raise _malformed(name_end, "the entry's attributes do not end with it")
    attributes: dict[str, list[bytes]] = {}
    while i < list_end:
        # PartialAttribute: 30 L, type 04 L <name>, vals 31 L, then 04 L <value> per value.
        length = data[i + 1]
        name_length = data[i + 3]
        if data[i] == _SEQUENCE and length < 0x80 and data[i + 2] == _OCTETS and name_length < 0x80:
            attribute_end = i + 2 + length
            j = i + 4 + name_length
            raw_name = data[i + 4 : j]
            set_length = data[j + 1]
            if data[j] != _SET or j + 2 + set_length != attribute_end or attribute_end > list_end:
                raise _malformed(j, "an attribute's values do not end with it")
            if set_length and data[j + 2] == _OCTETS and set_length == data[j + 3] + 2:
                values = [data[j + 4 : attribute_end]]  # one value
            else:
                values = _values(data, j + 2, attribute_end)
            i = attribute_end
        else:
            i, raw_name, values = _attribute(data, i, list_end)
        name = descriptions.get(raw_name)
        if name is None:
            name = descriptions[raw_name] = key(server_text(raw_name))
        attributes[name] = values
    return dn, attributes


def _attribute(data: bytes, pos: int, end: int) -> tuple[int, bytes, list[bytes]]:
    """(end, raw type, values) of the PartialAttribute at `pos`, in any length form."""
    start, attribute_end = _element(data, pos, _SEQUENCE, end)
    name_start, name_end = _element(data, start, _OCTETS, attribute_end)
    values_start, values_end = _element(data, name_end, _SET, attribute_end)
    if values_end != attribute_end:
        raise _malformed(name_end, "an attribute's values do not end with it")
    return attribute_end, data[name_start:name_end], _values(data, values_start, values_end)


def _values(data: bytes, pos: int, end: int) -> list[bytes]:
    """The OCTET STRING values from `pos` to `end` (a group's member values: 1M in a read)."""
    values = []
    append = values.append
    i = pos
    while i < end:
        length = data[i + 1]
        if data[i] != _OCTETS or length >= 0x80:
            start, value_end = _element(data, i, _OCTETS, end)  # long form, or malformed
            append(data[start:value_end])
            i = value_end
        else:
            i += 2 + length
            append(data[i - length : i])
    if i != end:
        raise _malformed(end, "a value runs past the end of its attribute")
    return values


def _result(data: bytes, pos: int, end: int) -> dict[str, Any]:
    """LDAPResult ::= resultCode ENUMERATED, matchedDN, diagnosticMessage, referral [3] OPTIONAL."""
    code_start, code_end = _element(data, pos, _ENUMERATED, end)
    code = int.from_bytes(data[code_start:code_end], "big", signed=True)
    matched_start, matched_end = _element(data, code_end, _OCTETS, end)
    message_start, message_end = _element(data, matched_end, _OCTETS, end)
    referrals = None
    if message_end < end:
        referral_start, referral_end = _element(data, message_end, _REFERRAL, end)
        referrals = _strings(data, referral_start, referral_end)
        if referral_end != end:
            raise _malformed(referral_end, "bytes after the referral")
    return {
        "result": code,
        "description": RESULT_CODES.get(code, "unknown"),
        "message": server_text(data[message_start:message_end]),
        "dn": server_text(data[matched_start:matched_end]),
        "referrals": referrals,
        "type": "searchResDone",
    }


def _controls(data: bytes, pos: int, end: int) -> dict[str, bytes | None]:
    """Controls ::= [0] SEQUENCE OF Control { controlType, criticality?, controlValue? }."""
    controls: dict[str, bytes | None] = {}
    if pos == end:
        return controls
    i, controls_end = _element(data, pos, _CONTROLS, end)
    if controls_end != end:
        raise _malformed(controls_end, "bytes after the controls")
    while i < controls_end:
        start, control_end = _element(data, i, _SEQUENCE, controls_end)
        type_start, i = _element(data, start, _OCTETS, control_end)
        oid = data[type_start:i].decode("ascii", errors="replace")
        if i < control_end and data[i] == _BOOLEAN:
            _, i = _element(data, i, _BOOLEAN, control_end)
        value = None
        if i < control_end:
            value_start, i = _element(data, i, _OCTETS, control_end)
            value = data[value_start:i]
        if i != control_end:
            raise _malformed(i, "bytes after a control's value")
        controls[oid] = value
    return controls


def _strings(data: bytes, pos: int, end: int) -> list[str]:
    """The OCTET STRINGs from `pos` to `end`, as text (URLs of references/referrals)."""
    return [server_text(value) for value in _values(data, pos, end)]


def _refuse_foreign_message(
    data: bytes, got: int, expected: int, tag: int, pos: int, end: int
) -> None:
    """Raise for a message that is not part of the answer awaited (RFC 4511 4.4 for id 0)."""
    if (
        got == 0
        and tag == _EXTENDED_RESPONSE
        and _NOTICE_OF_DISCONNECTION.encode() in data[pos:end]
    ):
        raise LDAPSessionTerminatedByServerError(
            "the server sent a notice of disconnection (RFC 4511 4.4.1)"
        )
    raise MalformedAnswerError(
        f"a message with id {got} (protocolOp 0x{tag:02x}) came while the answer to request "
        f"{expected} was read"
    )


def _malformed(pos: int, detail: str) -> MalformedAnswerError:
    return MalformedAnswerError(
        f"the server's answer does not follow RFC 4511 (byte {pos} of what was received: {detail})"
    )


def server_text(raw: bytes) -> str:
    # What ldap3's to_unicode(from_server=True) returns (UTF-8, then its fallback encodings for
    # servers that break RFC 4511), without its four config look-ups per call.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return to_unicode(raw, from_server=True)


def base_entry(
    conn: Connection, dn: str, attributes: list[str], search_filter: str = "(objectClass=*)"
) -> dict[str, list[bytes]] | None:
    """The raw attributes of the entry at `dn` (the rootDSE for ""), or None if unreadable.

    Raises:
        SourceUnreachableError: the connection failed on the way (nothing was read).
    """
    try:
        conn.search(dn, search_filter, search_scope=BASE, attributes=attributes)
    except LDAPCommunicationError as exc:
        discard(conn)  # the next use opens a new one
        raise SourceUnreachableError(
            f"{conn.server.host}:{conn.server.port}: the connection failed while reading "
            f"{dn or 'the rootDSE'} ({exc}); nothing was used"
        ) from exc
    found = [i for i in conn.response or () if i.get("type") == "searchResEntry"]
    if conn.result["result"] != 0 or not found:
        return None
    return found[0]["raw_attributes"]


@contextlib.contextmanager
def garbage_collection_paused() -> Iterator[None]:
    """Turn Python's cyclic garbage collector off while the block runs (then back on, if it was).

    A full read builds millions of containers (a dict per entry, a list per attribute, the
    membership columns) and none of them in a cycle, so the collector frees nothing here; but
    each 700 allocations start a collection and the oldest generation's passes walk every
    object alive, which cost a quarter of a 100k-user extract (bench/README.md). Reference
    counting still frees everything. The switch is process-wide: other threads' cycles wait
    for the end of the read.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def discard(conn: Connection) -> None:
    # The connection is being thrown away; after a failed TLS handshake its socket may already
    # be gone, and a failing unbind changes nothing.
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()
