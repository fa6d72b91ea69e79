"""Keep-alive HTTP/1.1 connections on an asyncio loop, for the loader's requests.

httpx's AsyncClient spends about 0.9 ms of CPU on a request here (anyio, its pool, its
models), more than its blocking client on threads: on two busy cores the client, not the
server, would set the pace of a load. This is the lean path under `ApiClient` when it runs on
the loader's loop (`usersync.cooperative`). The request is the one httpx builds (URL, headers,
body, credentials); `ApiClient` writes the bytes of the common ones itself (`Request`), since
building one with httpx costs about 0.27 ms. Heads are written and read here directly (h11,
which httpcore uses, costs about 0.1 ms a request validating each event): HTTP/1.1 with
Content-Length, chunked or connection-delimited bodies, interim 1xx answers skipped,
keep-alive as the answer says, an idle connection the server closed not reused (httpcore's
check). The answer is an `httpx.Response`, its content decoded as httpx decodes it.

Failures are httpx's own exceptions with httpx's meaning, so the retry rules do not know which
path a request took: a connection that cannot be made is `ConnectError` or `ConnectTimeout`
(never sent), one lost after sending is `RemoteProtocolError`, `ReadError` or `ReadTimeout`
(may have been applied).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass

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
        #: whether the last answer left the connection fit for the next request
        self.reusable = False

    @property
    def stale(self) -> bool:
        """The server closed it while it was idle (httpcore's check before reusing one)."""
        return self.reader.at_eof() or self.writer.is_closing()

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
        idle = self._idle.get(origin) or []
        connection = None
        while idle and connection is None:
            connection = idle.pop()
            if connection.stale:
                connection.close()
                connection = None
        if connection is None:
            connection = await self._connect(origin)
        try:
            response = await self._exchange(connection, request)
        except BaseException:
            connection.close()
            raise
        pool = self._idle.setdefault(origin, [])
        if connection.reusable and len(pool) < MAX_IDLE:
            pool.append(connection)
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
        connection.reusable = False
        head = b"%s %s HTTP/1.1\r\n" % (request.method, request.target)
        head += b"".join(b"%s: %s\r\n" % pair for pair in request.headers) + b"\r\n"
        try:
            connection.writer.write(head + request.body)
            if connection.writer.transport.get_write_buffer_size():  # not all sent at once
                async with asyncio.timeout(self.timeout):
                    await connection.writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("timed out sending") from exc
        except OSError as exc:
            raise httpx.WriteError(str(exc)) from exc
        reader = _Reader(connection.reader, self.timeout)
        status, reason, headers, keep_alive = await reader.head(first=True)
        while 100 <= status < 200:  # interim answers (100 Continue): the real one follows
            status, reason, headers, keep_alive = await reader.head(first=False)
        fields = {name.lower(): value for name, value in headers}
        if request.method == b"HEAD" or status in (204, 304):
            body = b""
        elif b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            body = await reader.chunked()
        elif b"content-length" in fields:
            try:
                length = int(fields[b"content-length"])
            except ValueError as exc:
                raise httpx.RemoteProtocolError("malformed Content-Length") from exc
            body = await reader.exactly(length)
        else:  # delimited by the end of the connection
            body = await reader.to_end()
            keep_alive = False
        connection.reusable = keep_alive
        response = httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(body),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )
        response.read()
        return response


class _Reader:
    """An answer read off a connection, each read bounded by the timeout, errors as httpx's."""

    def __init__(self, reader: asyncio.StreamReader, timeout: float) -> None:
        self._reader = reader
        self._timeout = timeout
        self._started = False

    async def _read(self, read: Awaitable[bytes]) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                data = await read
        except TimeoutError as exc:
            raise httpx.ReadTimeout("timed out reading") from exc
        except asyncio.IncompleteReadError as exc:
            if not self._started and not exc.partial:
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response."
                ) from exc
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            ) from exc
        except asyncio.LimitOverrunError as exc:
            raise httpx.RemoteProtocolError("answer head too long") from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc)) from exc
        self._started = True
        return data

    async def head(self, *, first: bool) -> tuple[int, bytes, list[tuple[bytes, bytes]], bool]:
        """Status, reason, headers, and whether the connection stays open after the answer."""
        block = await self._read(self._reader.readuntil(b"\r\n\r\n"))
        lines = block[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        try:
            version, status = parts[0], int(parts[1])
        except (IndexError, ValueError) as exc:
            raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}") from exc
        if not version.startswith(b"HTTP/1."):
            raise httpx.RemoteProtocolError(f"not HTTP/1.x: {lines[0][:80]!r}")
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise httpx.RemoteProtocolError(f"malformed header line {line[:80]!r}")
            headers.append((name, value.strip(b" \t")))
        tokens = b",".join(v for n, v in headers if n.lower() == b"connection").lower()
        keep_alive = b"close" not in tokens and (version != b"HTTP/1.0" or b"keep-alive" in tokens)
        return status, parts[2] if len(parts) > 2 else b"", headers, keep_alive

    async def exactly(self, length: int) -> bytes:
        return await self._read(self._reader.readexactly(length)) if length else b""

    async def to_end(self) -> bytes:
        return await self._read(self._reader.read())

    async def chunked(self) -> bytes:
        body = []
        while True:
            line = await self._read(self._reader.readuntil(b"\r\n"))
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise httpx.RemoteProtocolError("malformed chunk size") from exc
            if size == 0:
                while await self._read(self._reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers, not used
                return b"".join(body)
            chunk = await self._read(self._reader.readexactly(size + 2))
            body.append(chunk[:-2])


__all__ = ["Wire"]
