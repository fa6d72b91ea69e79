"""The loader's HTTP path (`usersync.wire` under `ApiClient` on the cooperative loop): it sends
what httpx's blocking client sends, and reads every answer shape HTTP/1.1 allows as httpx would.

A raw TCP server in a thread answers with scripted bytes, so shapes uvicorn never produces
(chunked bodies, interim answers, bodies ended by closing, idle connections closed) are
covered; the requests it received are compared byte for byte where the two paths must agree.
"""

from __future__ import annotations

import gzip
import json
import socketserver
import threading
from collections.abc import Callable, Iterator

import pytest

from usersync import cooperative
from usersync.errors import TargetUnreachableError
from usersync.http import ApiClient, InstanceLimiter, RetryPolicy

#: (request number on its connection, the raw request) -> (answer bytes, close afterwards)
Script = Callable[[int, bytes], tuple[bytes, bool]]


class RawServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, script: Script) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.received: list[bytes] = []
        self.connections = 0


class _Handler(socketserver.StreamRequestHandler):
    server: RawServer

    def handle(self) -> None:
        self.server.connections += 1
        number = 0
        while True:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = self.rfile.readline()
                if not line:
                    return
                head += line
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            raw = head + self.rfile.read(length)
            self.server.received.append(raw)
            number += 1
            answer, close = self.server.script(number, raw)
            self.wfile.write(answer)
            self.wfile.flush()
            if close:
                return


@pytest.fixture
def serve() -> Iterator[Callable[[Script], RawServer]]:
    servers: list[RawServer] = []

    def start(script: Script) -> RawServer:
        server = RawServer(script)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def client(server: RawServer, **retry: object) -> ApiClient:
    host, port = server.server_address
    return ApiClient(
        "test",
        f"http://{host}:{port}/jira/rest/api/2",
        headers={"X-Atlassian-Token": "no-check"},
        timeout_seconds=5,
        retry=RetryPolicy(sleep=lambda _s: None, **retry),  # type: ignore[arg-type]
        limiter=InstanceLimiter("test"),
    )


def answer(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", *extra]
    if not any(h.lower().startswith("transfer-encoding") for h in extra):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_the_loop_sends_the_bytes_the_blocking_client_sends(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(lambda _n, _raw: (answer(b"{}", status="201 Created"), False))
    api = client(server)
    calls = [
        ("POST", "/group/user", {"groupname": "Dev Ops/ä"}, {"name": "Zoë+1"}),
        ("PUT", "/user", {"username": "a@b"}, {"active": False}),
        ("DELETE", "/group/user", {"groupname": "g", "username": "u"}, None),
        ("POST", "/admin/groups/add-users", None, None),
    ]

    def send_all() -> None:
        for method, path, params, body in calls:
            api.request(method, path, params=params, json=body, ok=(201,))

    send_all()
    blocking = list(server.received)
    server.received.clear()
    cooperative.run(send_all)

    assert server.received == blocking
    assert blocking[0].startswith(
        b"POST /jira/rest/api/2/group/user?groupname=Dev+Ops%2F%C3%A4 HTTP/1.1\r\n"
    )


def test_every_body_framing_is_read(serve) -> None:  # type: ignore[no-untyped-def]
    payload = json.dumps({"values": list(range(50))}).encode()
    chunked = b"HTTP/1.1 100 Continue\r\n\r\n" + answer(
        b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:7], payload[7:]))
        + b"0\r\nX-Trailer: 1\r\n\r\n",
        "Transfer-Encoding: chunked",
    )
    shapes = {
        1: (chunked, False),
        2: (answer(gzip.compress(payload), "Content-Encoding: gzip"), False),
        3: (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + payload, True),
    }
    server = serve(lambda number, _raw: shapes[number])
    api = client(server)

    got = cooperative.run(lambda: [api.get_json("/values") for _ in shapes])

    assert got == [{"values": list(range(50))}] * 3
    # One connection kept alive for all three, the last answer ending it.
    assert server.connections == 1


def test_an_idle_connection_the_server_closed_is_not_reused(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(lambda _n, _raw: (answer(b'{"ok": true}'), True))
    api = client(server, max_attempts=1)

    def twice() -> list[object]:
        first = api.get_json("/ok")
        cooperative.sleep(0.2)  # the server's close arrives while the connection is idle
        return [first, api.request("POST", "/ok", json={}).json()]

    assert cooperative.run(twice) == [{"ok": True}, {"ok": True}]
    assert server.connections == 2


def test_a_connection_lost_before_the_answer_is_no_answer(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(lambda _n, _raw: (b"", True))
    api = client(server, max_attempts=2)

    with pytest.raises(TargetUnreachableError, match=r"after 2 attempt.*RemoteProtocolError"):
        cooperative.run(lambda: api.get_json("/ok"))
    assert len(server.received) == 2
