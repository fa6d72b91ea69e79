"""What a request may cost the inbox, over real HTTP: the token is checked from the headers
before any body is read, bodies over the limit are refused unread, and requests beyond the
concurrency bound are turned away at once. Raw sockets send headers without their body, so
an answer that arrives proves the inbox did not wait for it."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from usersync_sandbox.server import ServedApp, peak_rss_mb

from tests.inbox.harness import (
    exchange,
    inbox_process,
    post_and_ignore_the_answer,
    request_head,
    status_of,
)
from usersync.inbox import InboxApp, InboxLimits, issue_token
from usersync.store import Store

USER = {
    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
    "userName": "kim",
    "name": {"givenName": "Kim", "familyName": "Doe"},
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path}/store.db")
    yield store
    store.close()


@pytest.fixture
def token(store: Store) -> str:
    return issue_token(store.engine, "acme").token


def _served(store: Store, **limits: float) -> ServedApp:
    return ServedApp(InboxApp(store.engine, limits=InboxLimits(**limits))).start()  # type: ignore[arg-type]


def _body(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_no_valid_token_is_answered_401_before_the_body_is_read(store: Store, token: str) -> None:
    served = _served(store)
    try:
        for authorization in ({}, {"Authorization": "Bearer wrong"}):
            head = request_head(
                "POST",
                "/scim/v2/acme/Users",
                {"Content-Length": str(50 << 20), "Content-Type": "application/scim+json"}
                | authorization,
                port=served.port,
            )
            # Only the head is sent: the 50 MB the request announces never come.
            answer = exchange(served.port, head, timeout=5)
            assert status_of(answer) == 401, answer[:200]
            assert b"connection: close" in answer.lower()
    finally:
        served.stop()


def test_a_declared_body_over_the_limit_is_refused_413_unread(store: Store, token: str) -> None:
    served = _served(store)
    try:
        head = request_head(
            "POST",
            "/scim/v2/acme/Users",
            {
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/scim+json",
                "Content-Length": str((1 << 20) + 1),
            },
            port=served.port,
        )
        answer = exchange(served.port, head, timeout=5)
        assert status_of(answer) == 413, answer[:200]
        assert "1048576 bytes" in _body(answer)["detail"]
        # a body within the limit is served as before
        created = httpx.post(
            f"{served.url}/scim/v2/acme/Users",
            json=USER,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201
    finally:
        served.stop()


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(store: Store, token: str) -> None:
    served = _served(store, max_body_bytes=64 * 1024)
    try:
        head = request_head(
            "POST",
            "/scim/v2/acme/Users",
            {
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/scim+json",
                "Transfer-Encoding": "chunked",
            },
            port=served.port,
        )
        piece = b"x" * 8192
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(12))  # 96 KiB
        # The body never ends (no last chunk): only a limit counted while reading answers.
        answer = exchange(served.port, head, chunks, timeout=5)
        assert status_of(answer) == 413, answer[:200]
        assert "65536 bytes" in _body(answer)["detail"]
    finally:
        served.stop()


def test_bulk_has_its_own_limit_published_as_max_payload_size(store: Store, token: str) -> None:
    served = _served(store, max_body_bytes=8 * 1024, max_bulk_bytes=256 * 1024)
    try:
        config = httpx.get(f"{served.url}/scim/v2/acme/ServiceProviderConfig").json()
        assert config["bulk"]["maxPayloadSize"] == 256 * 1024
        operations = [
            {
                "method": "POST",
                "path": "/Users",
                "bulkId": f"u{i}",
                "data": {**USER, "userName": f"user{i}", "title": "t" * 300},
            }
            for i in range(40)
        ]
        bulk = {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
            "Operations": operations,
        }
        assert len(json.dumps(bulk)) > 8 * 1024  # over the limit of other requests
        answer = httpx.post(
            f"{served.url}/scim/v2/acme/Bulk",
            json=bulk,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 200, answer.text
        statuses = {op["status"] for op in answer.json()["Operations"]}
        assert statuses == {"201"}
        too_big = request_head(
            "POST",
            "/scim/v2/acme/Bulk",
            {"Authorization": f"Bearer {token}", "Content-Length": str(256 * 1024 + 1)},
            port=served.port,
        )
        assert status_of(exchange(served.port, too_big, timeout=5)) == 413
    finally:
        served.stop()


def test_requests_beyond_the_bound_get_503_with_retry_after(store: Store, token: str) -> None:
    served = _served(store, max_concurrent_requests=2, body_timeout_seconds=30)
    head = request_head(
        "POST",
        "/scim/v2/acme/Users",
        {"Authorization": f"Bearer {token}", "Content-Length": "100"},
        port=served.port,
    )
    # Two requests whose bodies are slow to come hold both places.
    held = [socket.create_connection(("127.0.0.1", served.port), timeout=5) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(head)
        answer = b""
        for _ in range(20):  # the held requests reach the app a moment after they are sent
            answer = exchange(served.port, head, timeout=5)
            if status_of(answer) == 503:
                break
        assert status_of(answer) == 503, answer[:200]
        assert b"retry-after: 1" in answer.lower()
        for sock in held:
            sock.close()
        served_again = None
        for _ in range(50):  # once they are gone, requests are served again
            served_again = httpx.post(
                f"{served.url}/scim/v2/acme/Users",
                json=USER,
                headers={"Authorization": f"Bearer {token}"},
            )
            if served_again.status_code != 503:
                break
            time.sleep(0.1)
        assert served_again is not None and served_again.status_code == 201
    finally:
        for sock in held:
            sock.close()
        served.stop()


def test_a_body_that_does_not_arrive_in_time_is_answered_408(store: Store, token: str) -> None:
    served = _served(store, body_timeout_seconds=0.5)
    try:
        head = request_head(
            "POST",
            "/scim/v2/acme/Users",
            {"Authorization": f"Bearer {token}", "Content-Length": "100"},
            port=served.port,
        )
        answer = exchange(served.port, head, b'{"sche', timeout=5)
        assert status_of(answer) == 408, answer[:200]
    finally:
        served.stop()


def test_large_unauthenticated_posts_leave_the_inbox_memory_near_its_baseline(
    tmp_path: Path,
) -> None:
    """8 unauthenticated 50 MB posts at once: the serving process's peak RSS barely moves."""
    url = f"sqlite:///{tmp_path}/store.db"
    store = Store.open(url)
    issue_token(store.engine, "acme")
    store.close()
    with inbox_process(url) as inbox:
        port = int(inbox.url.rsplit(":", 1)[1])
        before = peak_rss_mb(inbox.pid)
        posts = [
            threading.Thread(
                target=post_and_ignore_the_answer,
                args=(port, "/scim/v2/acme/Users", 50 << 20, {"Authorization": "Bearer no"}),
            )
            for _ in range(8)
        ]
        for post in posts:
            post.start()
        for post in posts:
            post.join(timeout=240)
        after = peak_rss_mb(inbox.pid)
        # the inbox still serves
        assert httpx.get(f"{inbox.url}/scim/v2/acme/ServiceProviderConfig").status_code == 200
    assert after - before < 25, f"peak RSS {before:.0f} MB before, {after:.0f} MB after"
