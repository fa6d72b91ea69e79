"""Keep-alive HTTP/1.1 connections on an asyncio loop, for the loader's requests.

httpx's AsyncClient spends about 0.9 ms of CPU on a request here (anyio, its pool, its
models), more than its blocking client on threads: on two busy cores the client, not the
server, would set the pace of a load. This is the lean path under `ApiClient` when it runs on
the loader's loop (`usersync.cooperative`): the request is still built by httpx (the same
bytes as the blocking client sends: URL, headers, body, credentials), h11 writes and parses
HTTP/1.1 as httpcore does, and the answer is an `httpx.Response` (content decoded as httpx
decodes it). Building a request with httpx alone costs about 0.27 ms (its URL model parses
the URL three times), so `ApiClient` builds the bytes of the common ones itself (`Request`). Failures are httpx's own exceptions with httpx's meaning, so the retry rules do
not know which path a request took: a connection that cannot be made is `ConnectError` or
`ConnectTimeout` (never sent), one lost after sending is `RemoteProtocolError`, `ReadError` or
`ReadTimeout` (may have been applied).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import h11
import httpx

#: Idle connections kept per origin (the limiter bounds those in use).
MAX_IDLE = 32


@dataclass(frozen=True)
class Request:
    """One request as it goes on the wire: the origin, and the bytes of its head and body."""

    #: (scheme, host, port)
    origin: tuple[str, str, int]
    method: bytes
    #: the path and query, encoded
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @classmethod
    def of(cls, request: httpx.Request) -> Request:
        """The wire form of a request httpx built."""
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        return cls(
            (url.scheme, url.host, port),
            request.method.encode("ascii"),
            url.raw_path,
            list(request.headers.raw),
            request.content,
        )


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.writer.close()


class Wire:
    """Connections to the origins of one client, on the running loop.

    Args:
        timeout_seconds: connect timeout, and the longest wait for each read and write.
        ssl_context: for https origins (None: the default context, verifying).
    """

    def __init__(self, *, timeout_seconds: float, ssl_context: ssl.SSLContext | None) -> None:
        self.timeout = timeout_seconds
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}

    async def send(self, request: Request) -> httpx.Response:
        """Send `request` as built (headers, body); its answer, read whole.

        Raises:
            httpx.TransportError: the subclass httpcore would raise for the same failure.
        """
        origin = request.origin
        idle = self._idle.get(origin)
        connection = idle.pop() if idle else await self._connect(origin)
        try:
            response = await self._exchange(connection, request)
        except BaseException:
            connection.close()
            raise
        if connection.h11.our_state is h11.DONE and connection.h11.their_state is h11.DONE:
            connection.h11.start_next_cycle()
            pool = self._idle.setdefault(origin, [])
            if len(pool) < MAX_IDLE:
                pool.append(connection)
            else:
                connection.close()
        else:
            connection.close()
        return response

    async def aclose(self) -> None:
        for pool in self._idle.values():
            for connection in pool:
                connection.close()
        self._idle.clear()

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            tls = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout("timed out connecting") from exc
        except OSError as exc:  # refused, unreachable, name unknown, TLS (ssl.SSLError)
            raise httpx.ConnectError(str(exc)) from exc
        return _Connection(reader, writer)

    async def _exchange(self, connection: _Connection, request: Request) -> httpx.Response:
        protocol = connection.h11
        head = h11.Request(method=request.method, target=request.target, headers=request.headers)
        data = protocol.send(head) or b""
        if request.body:
            data += protocol.send(h11.Data(data=request.body)) or b""
        data += protocol.send(h11.EndOfMessage()) or b""
        try:
            connection.writer.write(data)
            async with asyncio.timeout(self.timeout):
                await connection.writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("timed out sending") from exc
        except OSError as exc:
            raise httpx.WriteError(str(exc)) from exc
        answer: h11.Response | None = None
        body: list[bytes] = []
        while True:
            try:
                event = protocol.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from exc
            if event is h11.NEED_DATA:
                try:
                    async with asyncio.timeout(self.timeout):
                        chunk = await connection.reader.read(65536)
                except TimeoutError as exc:
                    raise httpx.ReadTimeout("timed out reading") from exc
                except OSError as exc:
                    raise httpx.ReadError(str(exc)) from exc
                if not chunk and answer is None:
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    )
                protocol.receive_data(chunk)
            elif isinstance(event, h11.Response):
                answer = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        assert answer is not None
        response = httpx.Response(
            answer.status_code,
            headers=answer.headers.raw_items(),
            stream=httpx.ByteStream(b"".join(body)),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason},
        )
        response.read()
        return response


__all__ = ["Wire"]
