"""The pager's own search decoder, against answers slapd never sends: cut, malformed, unpaged.

`read_answer` is fed byte streams written here (BER by hand, RFC 4511), some one byte per
`recv`; the pager is run through `LdapSource.extract` against a scripted LDAP server on
loopback (`ScriptedDirectory`), which answers the bind and the schema reads as a directory
does and each paged search with the bytes a test scripts. What must hold: every entry comes
back with its raw values, and an answer that is cut, malformed, or lacks its paged-results
control fails the read; nothing partial is returned.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ldap3.core.exceptions import LDAPSessionTerminatedByServerError, LDAPSocketReceiveError

from usersync.config import LdapSourceConfig, SecretRef
from usersync.errors import IncompleteSourceError, SourceUnreachableError
from usersync.sources.ldap import LdapSource
from usersync.sources.ldap.decoding import (
    PAGED_RESULTS_OID,
    MalformedAnswerError,
    read_answer,
)

PEOPLE = "ou=people,dc=example,dc=org"
GROUPS = "ou=groups,dc=example,dc=org"
PASSWORD = "pw"


# -- BER, written out ---------------------------------------------------------------------


def tlv(tag: int, *parts: bytes, long_form: bool = False) -> bytes:
    content = b"".join(parts)
    size = len(content)
    if size < 0x80 and not long_form:
        return bytes([tag, size]) + content
    octets = size.to_bytes(max(1, (size.bit_length() + 7) // 8), "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def octets(value: bytes | str, *, long_form: bool = False) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return tlv(0x04, raw, long_form=long_form)


def integer(number: int, tag: int = 0x02) -> bytes:
    return tlv(tag, number.to_bytes(max(1, (number.bit_length() + 8) // 8), "big", signed=True))


def message(message_id: int, op: bytes, controls: bytes = b"") -> bytes:
    return tlv(0x30, integer(message_id), op, controls)


def entry(dn: str, attributes: dict[str, list[bytes]], *, long_form: bool = False) -> bytes:
    return tlv(
        0x64,
        octets(dn),
        tlv(
            0x30,
            *(
                tlv(
                    0x30,
                    octets(name, long_form=long_form),
                    tlv(0x31, *(octets(v, long_form=long_form) for v in values)),
                    long_form=long_form,
                )
                for name, values in attributes.items()
            ),
        ),
    )


def done(code: int = 0, text: str = "", referrals: list[str] | None = None) -> bytes:
    parts = [integer(code, 0x0A), octets(""), octets(text)]
    if referrals:
        parts.append(tlv(0xA3, *(octets(url) for url in referrals)))
    return tlv(0x65, *parts)


def paged(cookie: bytes) -> bytes:
    value = tlv(0x30, integer(0), octets(cookie))
    return tlv(0xA0, tlv(0x30, octets(PAGED_RESULTS_OID), octets(value)))


def user(number: int) -> bytes:
    uid = f"u{number:03d}"
    return entry(
        f"uid={uid},{PEOPLE}",
        {"entryUUID": [f"00000000-0000-4000-8000-{number:012d}".encode()], "uid": [uid.encode()]},
    )


class Trickle:
    """A socket that hands out a byte stream `size` bytes per recv, then end of stream."""

    def __init__(self, data: bytes, size: int = 1) -> None:
        self.data = data
        self.size = size

    def recv(self, _limit: int) -> bytes:
        chunk, self.data = self.data[: self.size], self.data[self.size :]
        return chunk


# -- read_answer on byte streams -------------------------------------------------------------


def test_an_answer_read_one_byte_at_a_time_keeps_every_value() -> None:
    big = b"x" * 300  # a long-form length inside a value
    stream = (
        message(
            7,
            entry(
                f"cn=Zoë,{PEOPLE}",
                {"cn": ["Zoë".encode()], "member": [b"a", big, b""], "mail": []},
            ),
        )
        + message(7, entry(f"cn=long,{PEOPLE}", {"cn": [b"long"]}, long_form=True))
        + message(7, tlv(0x73, octets("ldap://other/ou=x,dc=example,dc=org")))
        + message(7, done(), paged(b"next"))
    )
    answer = read_answer(Trickle(stream), 7, str.lower)
    assert answer.entries == [
        (f"cn=Zoë,{PEOPLE}", {"cn": ["Zoë".encode()], "member": [b"a", big, b""], "mail": []}),
        (f"cn=long,{PEOPLE}", {"cn": [b"long"]}),
    ]
    assert answer.references == [["ldap://other/ou=x,dc=example,dc=org"]]
    assert answer.result["result"] == 0
    assert answer.paged_cookie() == b"next"


def test_a_referral_result_and_its_urls_are_read() -> None:
    stream = message(3, done(10, "elsewhere", ["ldap://b/dc=x", "ldap://c/dc=x"]))
    answer = read_answer(Trickle(stream, 5), 3, str.lower)
    assert answer.result["result"] == 10
    assert answer.result["description"] == "referral"
    assert answer.result["referrals"] == ["ldap://b/dc=x", "ldap://c/dc=x"]
    assert answer.paged_cookie() is None  # no control at all


@pytest.mark.parametrize(
    "stream",
    [
        # A value tagged INTEGER where attribute values are OCTET STRINGs.
        message(1, tlv(0x64, octets("cn=a"), tlv(0x30, tlv(0x30, octets("cn"), tlv(0x31, integer(5)))))),
        # A value whose length runs past its attribute.
        message(1, tlv(0x64, octets("cn=a"), tlv(0x30, tlv(0x30, octets("cn"), tlv(0x31, b"\x04\x09abc"))))),
        # Indefinite length (BER allows it, LDAP does not).
        b"\x30\x80" + integer(1) + done() + b"\x00\x00",
        # The answer to another request.
        message(2, done()),
        # An operation a search is never answered with (a bind response).
        message(1, tlv(0x61, integer(0, 0x0A), octets(""), octets(""))),
        # Bytes after the SearchResultDone.
        message(1, done(), paged(b"")) + b"\x30",
    ],
    ids=["wrong-tag", "overrun", "indefinite", "foreign-id", "wrong-op", "trailing"],
)  # fmt: skip
def test_malformed_answers_are_refused(stream: bytes) -> None:
    with pytest.raises(MalformedAnswerError, match=r"RFC 4511|id 2|followed the end"):
        read_answer(Trickle(stream, 1000), 1, str.lower)


def test_a_stream_that_ends_mid_answer_is_a_connection_failure() -> None:
    stream = message(1, user(1)) + message(1, user(2))[:-5]
    with pytest.raises(LDAPSessionTerminatedByServerError):
        read_answer(Trickle(stream, 7), 1, str.lower)


def test_a_notice_of_disconnection_ends_the_read() -> None:
    notice = tlv(
        0x78, integer(2, 0x0A), octets(""), octets(""), tlv(0x8A, b"1.3.6.1.4.1.1466.20036")
    )
    stream = message(1, user(1)) + message(0, notice)
    with pytest.raises(LDAPSessionTerminatedByServerError, match="notice of disconnection"):
        read_answer(Trickle(stream, 1000), 1, str.lower)


def test_a_socket_error_is_a_receive_error() -> None:
    class Failing:
        def recv(self, _limit: int) -> bytes:
            raise TimeoutError("timed out")

    with pytest.raises(LDAPSocketReceiveError, match="timed out"):
        read_answer(Failing(), 1, str.lower)


# -- the pager against a scripted server -----------------------------------------------------

#: (base DN of the search, page number on this connection from 1) -> the protocolOps to send
#: (each may carry its controls after it), each sent as a message with the request's id; None
#: closes the connection instead.
Script = Callable[[str, int], list[bytes] | None]

SCHEMA = [
    b"( 1.3.6.1.1.16.4 NAME 'entryUUID' )",
    b"( 0.9.2342.19200300.100.1.1 NAME ( 'uid' 'userid' ) )",
    b"( 2.5.4.3 NAME 'cn' )",
    b"( 2.5.4.31 NAME 'member' )",
    b"( 2.5.4.50 NAME 'uniqueMember' )",
]


class ScriptedDirectory:
    """An LDAP server on loopback: binds succeed, the rootDSE and schema read as slapd's do,
    and each subtree search is answered as `script` says (see `Script`)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        pages: dict[str, int] = {}
        buffer = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 2 and len(buffer) >= _size(buffer):
                    request, buffer = buffer[: _size(buffer)], buffer[_size(buffer) :]
                    message_id, op, base = _parse(request)
                    if op == 0x60:  # bind
                        reply = [tlv(0x61, integer(0, 0x0A), octets(""), octets(""))]
                    elif op == 0x42:  # unbind
                        return
                    elif base == "":
                        reply = [entry("", {"subschemaSubentry": [b"cn=Subschema"]}), done()]
                    elif base == "cn=Subschema":
                        reply = [entry(base, {"attributeTypes": SCHEMA}), done()]
                    else:
                        pages[base] = pages.get(base, 0) + 1
                        scripted = self.script(base, pages[base])
                        if scripted is None:
                            return
                        reply = scripted
                    conn.sendall(b"".join(message(message_id, part) for part in reply))

    def close(self) -> None:
        self.listener.close()


def _size(buffer: bytes) -> int:
    first = buffer[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    return 2 + count + int.from_bytes(buffer[2 : 2 + count], "big")


def _parse(request: bytes) -> tuple[int, int, str]:
    """(message id, protocolOp tag, base DN of a search) of a request."""
    position = 2 if request[1] < 0x80 else 2 + (request[1] & 0x7F)
    id_length = request[position + 1]
    message_id = int.from_bytes(request[position + 2 : position + 2 + id_length], "big")
    op = position + 2 + id_length
    tag = request[op]
    content = op + (2 if request[op + 1] < 0x80 else 2 + (request[op + 1] & 0x7F))
    base = ""
    if tag == 0x63:
        base = request[content + 2 : content + 2 + request[content + 1]].decode()
    return message_id, tag, base


def done_paged(cookie: bytes, code: int = 0) -> bytes:
    """A SearchResultDone with the paged-results control, as one protocolOp plus controls."""
    return done(code) + paged(cookie)


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], LdapSourceConfig]]:
    servers: list[ScriptedDirectory] = []

    def start(script: Script) -> LdapSourceConfig:
        server = ScriptedDirectory(script)
        servers.append(server)
        return LdapSourceConfig(
            kind="ldap",
            url=f"ldap://127.0.0.1:{server.port}",
            bind_dn="cn=admin,dc=example,dc=org",
            bind_password=SecretRef(env="UNUSED"),
            allow_cleartext_bind=True,
            user_base_dn=PEOPLE,
            group_base_dn=GROUPS,
            page_size=2,
            connect_timeout_seconds=5,
            receive_timeout_seconds=5,
        )

    yield start
    for server in servers:
        server.close()


def users_in_pages(pages: list[list[int]], last: Callable[[int], bytes] | None = None) -> Script:
    """Users `pages[n]` on page n+1 (cookie b"p<n>"), no groups; `last(n)` ends the last page."""

    def script(base: str, page: int) -> list[bytes] | None:
        if base == GROUPS:
            return [done_paged(b"")]
        numbers = pages[page - 1]
        ending = done_paged(b"" if page == len(pages) else f"p{page}".encode())
        if page == len(pages) and last is not None:
            ending = last(page)
        return [*(user(n) for n in numbers), ending]

    return script


def _extract(config: LdapSourceConfig) -> Any:
    with LdapSource(config, PASSWORD) as source:
        return source.extract(["uid"])


def test_the_pager_follows_cookies_to_the_last_page(scripted: Callable[..., Any]) -> None:
    snapshot = _extract(scripted(users_in_pages([[1, 2], [3, 4], [5]])))
    assert sorted(snapshot.users["uid"]) == ["u001", "u002", "u003", "u004", "u005"]


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        (lambda page: done(0), "without the paged-results control"),
        (lambda page: done_paged(b"", code=4), "result 4 sizeLimitExceeded"),
        (lambda page: done_paged(b"", code=3), "result 3 timeLimitExceeded"),
        (lambda page: done(0) + tlv(0xA0, tlv(0x30, octets(PAGED_RESULTS_OID), octets(b"\x30\x05\x02\x01\x00"))), "paged-results"),
    ],
    ids=["no-control", "size-limit", "time-limit", "bad-control"],
)  # fmt: skip
def test_a_last_page_that_does_not_end_cleanly_fails_the_read(
    scripted: Callable[..., Any], last: Callable[[int], bytes], expected: str
) -> None:
    config = scripted(users_in_pages([[1, 2], [3, 4], [5]], last))
    with pytest.raises(IncompleteSourceError, match=expected) as caught:
        _extract(config)
    assert "page 3" in str(caught.value) and "nothing was used" in str(caught.value)


def test_a_connection_closed_mid_read_fails_it(scripted: Callable[..., Any]) -> None:
    def script(base: str, page: int) -> list[bytes] | None:
        if base == GROUPS:
            return [done_paged(b"")]
        return [user(1), user(2), done_paged(b"more")] if page == 1 else None

    with pytest.raises(SourceUnreachableError, match="page 2 after 2 entries"):
        _extract(scripted(script))


def test_a_malformed_page_fails_the_read(scripted: Callable[..., Any]) -> None:
    broken = tlv(0x64, octets(f"uid=x,{PEOPLE}"), tlv(0x30, tlv(0x30, octets("uid"), integer(1))))

    def script(base: str, page: int) -> list[bytes] | None:
        if base == GROUPS:
            return [done_paged(b"")]
        return [user(1), broken, done_paged(b"")]

    with pytest.raises(IncompleteSourceError, match="could not be decoded"):
        _extract(scripted(script))


def test_a_failing_groups_search_fails_the_read_while_users_succeed(
    scripted: Callable[..., Any],
) -> None:
    def script(base: str, page: int) -> list[bytes] | None:
        if base == GROUPS:
            return [done_paged(b"", code=11)]  # adminLimitExceeded
        return [user(1), done_paged(b"")]

    with pytest.raises(IncompleteSourceError, match=r"groups search .* result 11"):
        _extract(scripted(script))
