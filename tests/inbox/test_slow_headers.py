"""What a connection may cost the inbox before its request head is complete, over real HTTP on
loopback: a slow-loris client that opens many connections and sends half a request head cannot
stop a push, its connections beyond the per-client bound are refused at once and the rest are
closed at the header deadline; the bound in all frees up as connections close; and the
deadline runs per request head, never while a kept-alive connection waits between requests;
a WebSocket upgrade request stays HTTP, so its place is freed when it closes.

The attackers connect from other loopback addresses (127.0.0.2, …) than the push (127.0.0.1),
as an attacker and miniOrange would from theirs."""

from __future__ import annotations

import json
import selectors
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import httpx
import pytest

from tests.inbox.harness import request_head, served_inbox, status_of
from usersync.inbox import InboxApp, InboxLimits, issue_token
from usersync.store import Store

USER = {
    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
    "userName": "kim",
    "name": {"givenName": "Kim", "familyName": "Doe"},
}
HALF_HEAD = b"POST /scim/v2/acme/Users HTTP/1.1\r\nHost: x\r\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path}/store.db")
    yield store
    store.close()


@pytest.fixture
def token(store: Store) -> str:
    return issue_token(store.engine, "acme").token


def _connect(port: int, source: str, cleanup: ExitStack, sent: bytes = HALF_HEAD) -> socket.socket:
    """A connection from `source` that sends `sent` and then nothing; closed by `cleanup`."""
    sock = cleanup.enter_context(socket.socket())
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    with suppress(ConnectionResetError):  # already refused: what the test looks for next
        sock.sendall(sent)
    return sock


def _closed_within(socks: list[socket.socket], seconds: float) -> dict[socket.socket, bytes]:
    """The sockets the server closes within `seconds`, each with what it sent before closing
    (b"" when nothing, or when the close was a reset); those still open are left out."""
    received = {sock: b"" for sock in socks}
    closed: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while len(closed) < len(socks) and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                sock = key.fileobj
                try:
                    chunk = sock.recv(65536)  # type: ignore[union-attr]
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[sock] += chunk  # type: ignore[index]
                else:
                    selector.unregister(sock)
                    closed[sock] = received[sock]  # type: ignore[index]
    return closed


def _push(port: int, token: str, user: dict = USER) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{port}/scim/v2/acme/Users",
        json=user,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def _push_status(port: int, token: str) -> int | None:
    """The status of a push; None when the connection was closed before an answer was read."""
    try:
        return _push(port, token).status_code
    except httpx.TransportError:
        return None


def test_300_half_sent_heads_from_one_client_do_not_stop_a_push(store: Store, token: str) -> None:
    header_timeout = 2.0
    limits = InboxLimits(header_timeout_seconds=header_timeout, max_connections_per_client=20)
    with served_inbox(InboxApp(store.engine, limits=limits)) as port, ExitStack() as cleanup:
        opened = time.monotonic()
        attack = [_connect(port, "127.0.0.2", cleanup) for _ in range(300)]
        started = time.monotonic()
        pushed = _push(port, token)
        push_seconds = time.monotonic() - started
        refused = _closed_within(attack, 0.2)
        # All of that before any head's deadline: the push was served while 20 were held.
        assert time.monotonic() - opened < header_timeout
        assert pushed.status_code == 201, pushed.text
        assert push_seconds < 1.5, f"the push took {push_seconds:.2f} s"
        assert len(refused) == 280
        assert {status_of(answer) for answer in refused.values()} <= {429, None}
        held = [sock for sock in attack if sock not in refused]
        timed_out = _closed_within(held, header_timeout + 1.5)
        assert time.monotonic() - opened >= header_timeout
        assert len(timed_out) == 20
        assert {status_of(answer) for answer in timed_out.values()} == {408}
        # its places are free again
        assert _push(port, token, {**USER, "userName": "lee"}).status_code == 201


def test_connections_beyond_the_bounds_are_told_why_and_places_free_up(
    store: Store, token: str
) -> None:
    limits = InboxLimits(max_connections_per_client=2, max_connections=4)
    with served_inbox(InboxApp(store.engine, limits=limits)) as port, ExitStack() as cleanup:
        first = [_connect(port, "127.0.0.2", cleanup) for _ in range(2)]
        # Nothing sent: the refusal is read whole (a sent request could turn it into a reset).
        refused = _closed_within([_connect(port, "127.0.0.2", cleanup, b"")], 2)
        [answer] = refused.values()
        assert status_of(answer) == 429, answer[:200]
        assert b"retry-after: 1" in answer.lower()
        detail = json.loads(answer.split(b"\r\n\r\n", 1)[1])["detail"]
        assert "2 connections open" in detail
        # Other addresses are admitted up to the bound in all, then refused 503.
        [_connect(port, "127.0.0.3", cleanup) for _ in range(2)]
        [answer] = _closed_within([_connect(port, "127.0.0.4", cleanup, b"")], 2).values()
        assert status_of(answer) == 503, answer[:200]
        assert _push_status(port, token) in {503, None}  # None: reset before it was read
        for sock in first:
            sock.close()
        pushed = None
        for _ in range(50):  # the server sees the closes a moment later
            pushed = _push_status(port, token)
            if pushed not in {503, None}:
                break
            time.sleep(0.05)
        assert pushed == 201


def _read_chunked_answer(sock: socket.socket) -> bytes:
    """One whole chunked answer (as scim2-server's are) from a kept-alive connection."""
    answer = b""
    while not answer.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the connection closed after {answer[:200]!r}")
        answer += chunk
    return answer


def test_the_head_deadline_runs_per_request_not_between_requests(store: Store) -> None:
    limits = InboxLimits(header_timeout_seconds=0.5)
    with served_inbox(InboxApp(store.engine, limits=limits)) as port, ExitStack() as cleanup:
        config = request_head("GET", "/scim/v2/acme/ServiceProviderConfig", {}, port=port)
        sock = _connect(port, "127.0.0.2", cleanup, config)
        assert status_of(_read_chunked_answer(sock)) == 200
        time.sleep(1.0)  # idle between requests, longer than a head may take
        sock.sendall(config)
        assert status_of(_read_chunked_answer(sock)) == 200
        sock.sendall(HALF_HEAD)
        sent = time.monotonic()
        [answer] = _closed_within([sock], 3).values()
        waited = time.monotonic() - sent
        assert status_of(answer) == 408, answer[:200]
        assert 0.4 < waited < 2, f"closed {waited:.2f} s after the half head"


def test_a_websocket_upgrade_request_leaves_no_place_taken(store: Store) -> None:
    limits = InboxLimits(max_connections_per_client=1)
    with served_inbox(InboxApp(store.engine, limits=limits)) as port:
        upgrade = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        head = request_head("GET", "/scim/v2/acme/ServiceProviderConfig", upgrade, port=port)
        for attempt in range(3):  # one place: each must be free again after the last
            answer = b""
            for _ in range(50):  # the server sees the last close a moment later
                with ExitStack() as cleanup:
                    sock = _connect(port, "127.0.0.2", cleanup, head)
                    sock.settimeout(2)
                    answer = sock.recv(65536)
                if status_of(answer) != 429:
                    break
                time.sleep(0.05)
            assert status_of(answer) not in {429, None}, (attempt, answer[:200])
