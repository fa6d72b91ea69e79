"""What a connection may cost the inbox before it has sent a whole request head.

`InboxApp` sees a request only once its headers are complete, so its limits cannot stop a
client that opens connections, sends half a request head (or nothing) and waits; nor does
uvicorn: it closes idle connections only between requests (`timeout_keep_alive`), has no
deadline for a request head (uvicorn issue #157), and its `limit_concurrency` counts such
connections, so it would turn real requests away in their place. `InboxProtocol` is uvicorn's
h11 protocol (the one it picks here anyway) with three bounds from `InboxLimits`, counted by a
`ConnectionGuard` that one server's connections share:

1. a request head must be complete within `header_timeout_seconds`, counted from the
   connection's opening, or on a kept-alive connection from the first byte of the next
   request; else 408 and the connection is closed;
2. at most `max_connections_per_client` open connections per client address: one more is
   answered 429 and closed as soon as it is made;
3. at most `max_connections` in all: one more is answered 503 and closed.

Why a protocol subclass: only the protocol sees a connection both when it is made and when its
head is complete (a guard around the transport would parse HTTP again; an ASGI middleware runs
too late). The per-client bound keeps one address from taking every place, the bound in all
keeps many from exhausting file descriptors, and the deadline frees any place within seconds.
A refusal is written as the connection is made, before its request is read, so a client that
had sent its request may see a reset instead. Behind a reverse proxy every connection comes
from the proxy's address, so the per-client bound applies to the proxy (which should bound its
own clients). Over TLS a connection is counted, and its deadline starts, once the handshake is
done (asyncio gives a handshake 60 s). `uvicorn_options` are the settings that serve the inbox
so.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import Counter
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from usersync.inbox.app import InboxLimits, scim_error

log = logging.getLogger("usersync.inbox")


def _answer(status: int, reason: str, detail: str, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 answer with a SCIM error body that announces the connection's close."""
    payload = json.dumps(scim_error(status, detail)).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/scim+json",
        f"content-length: {len(payload)}",
        "cache-control: no-store",
        "connection: close",
    ]
    if retry_after is not None:
        lines.append(f"retry-after: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


class ConnectionGuard:
    """One server's open connections, in all and per client address, against `limits`."""

    def __init__(self, limits: InboxLimits) -> None:
        self.limits = limits
        self.open_per_client: Counter[str] = Counter()
        self.open = 0
        # Who was warned of (a client address; None: the bound in all), until under it again.
        self._refusing: set[str | None] = set()
        retry = limits.retry_after_seconds
        self.too_many_from_client = _answer(
            429,
            "Too Many Requests",
            f"this address has {limits.max_connections_per_client} connections open to the "
            f"inbox, the most one client may; retry after {retry} s",
            retry,
        )
        self.too_many = _answer(
            503,
            "Service Unavailable",
            f"the inbox has {limits.max_connections} connections open; retry after {retry} s",
            retry,
        )
        self.head_too_slow = _answer(
            408,
            "Request Timeout",
            f"the request head took longer than {limits.header_timeout_seconds} s",
        )

    def admit(self, client: str) -> bytes | None:
        """Count a new connection from `client` when it is within the limits.

        Returns:
            None when it was admitted (call `release` when it closes), else the answer that
            refuses it.
        """
        if self.open_per_client[client] >= self.limits.max_connections_per_client:
            self._tell_once(
                client,
                "inbox: refusing connections from %s, which has %d open (the most per client)",
                client,
                self.limits.max_connections_per_client,
            )
            return self.too_many_from_client
        if self.open >= self.limits.max_connections:
            self._tell_once(
                None,
                "inbox: refusing connections, %d are open (the most)",
                self.limits.max_connections,
            )
            return self.too_many
        self.open_per_client[client] += 1
        self.open += 1
        return None

    def release(self, client: str) -> None:
        """Uncount a connection `admit` admitted, now closed."""
        self.open -= 1
        self.open_per_client[client] -= 1
        if self.open_per_client[client] < self.limits.max_connections_per_client:
            self._refusing.discard(client)
        if not self.open_per_client[client]:
            del self.open_per_client[client]
        if self.open < self.limits.max_connections:
            self._refusing.discard(None)

    def _tell_once(self, key: str | None, message: str, *args: object) -> None:
        # Once per episode: an attack must not turn into one log line per connection.
        if key not in self._refusing:
            self._refusing.add(key)
            log.warning(message, *args)


class InboxProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol within the connection bounds of a `ConnectionGuard`."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.admitted_client: str | None = None
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        client = self.client[0] if self.client else ""
        refusal = self.guard.admit(client)
        if refusal is not None:
            transport.write(refusal)
            transport.close()
            return
        self.admitted_client = client
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting_for_head()
        if self.admitted_client is not None:
            self.guard.release(self.admitted_client)
            self.admitted_client = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # h11 says the client is IDLE until its request head is complete.
        if self.head_deadline is None and self.conn.their_state is h11.IDLE:
            self._await_head()  # the first byte of a request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._stop_waiting_for_head()

    def _await_head(self) -> None:
        self.head_deadline = self.loop.call_later(
            self.guard.limits.header_timeout_seconds, self._head_timed_out
        )

    def _stop_waiting_for_head(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _head_timed_out(self) -> None:
        self.head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.write(self.guard.head_too_slow)
            self.transport.close()


def uvicorn_options(limits: InboxLimits) -> dict[str, Any]:
    """The uvicorn settings (for `uvicorn.run` or `uvicorn.Config`) that serve the inbox within
    the connection bounds of `limits`, counted per server: call it once per server.

    WebSocket upgrades are off: an upgraded connection would leave `InboxProtocol`, and its
    count with it."""
    return {
        "http": functools.partial(InboxProtocol, guard=ConnectionGuard(limits)),
        "ws": "none",
    }
