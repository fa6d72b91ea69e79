"""Helpers for inbox tests: `usersync inbox serve` in a subprocess, the inbox app served in a
thread with its connection bounds, raw HTTP/1.1 over a socket, and the memory a process has
used at its peak.

Raw sockets let a test send headers without the body they announce, or a body cut short, and
see whether the inbox answers before reading it, which no HTTP client library lets one do.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from usersync_sandbox.server import free_port

from usersync.inbox import InboxApp, uvicorn_options

REPO = Path(__file__).resolve().parents[2]


def child_pids(pid: int) -> list[int]:
    """Every process descended from `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (2nd field) is in parentheses and may hold spaces.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


@dataclass
class InboxProcess:
    """A running `usersync inbox serve` and what it printed so far."""

    process: subprocess.Popen[str]
    url: str
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid


def _collect(stream: object, lines: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.append(line)


@contextmanager
def inbox_process(
    store_url: str,
    *args: str,
    env: dict[str, str] | None = None,
    scheme: str = "http",
    verify: ssl.SSLContext | bool = False,
    pythonpath: str | None = None,
) -> Iterator[InboxProcess]:
    """Run `usersync inbox serve` on a free loopback port until the block ends (SIGTERM).

    Args:
        store_url: the store it serves.
        args: more `inbox serve` options.
        env: the environment (default: this one without PREFECT_API_URL).
        scheme/verify: how to reach it while waiting for it to answer.
        pythonpath: a tree to import usersync from instead of this one (measuring old code).
    """
    port = free_port()
    environment = dict(env if env is not None else os.environ)
    if env is None:
        environment.pop("PREFECT_API_URL", None)
    if pythonpath:
        environment["PYTHONPATH"] = pythonpath
    command = [sys.executable, "-m", "usersync_cli.main", "inbox", "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--store-url", store_url, *args],
        cwd=pythonpath or REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    served = InboxProcess(process, f"{scheme}://127.0.0.1:{port}")
    for stream, lines in ((process.stdout, served.stdout), (process.stderr, served.stderr)):
        threading.Thread(target=_collect, args=(stream, lines), daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the inbox exited: {''.join(served.stderr)}")
            try:
                httpx.get(f"{served.url}/scim/v2/acme/ServiceProviderConfig", verify=verify)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError("the inbox did not answer within 60 s") from None
                time.sleep(0.1)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def served_inbox(app: InboxApp) -> Iterator[int]:
    """Serve `app` with uvicorn and `uvicorn_options(app.limits)`, as `usersync inbox serve`
    does, on a free loopback port in a thread until the block ends; yield the port."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        access_log=False,
        lifespan="off",
        **uvicorn_options(app.limits),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="inbox")
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("the inbox did not start within 10 s")
            time.sleep(0.02)
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def exchange(port: int, head: bytes, body: bytes = b"", *, timeout: float = 5.0) -> bytes:
    """Send a request's head (and `body`, maybe less than it announces) and return the answer:
    everything the server sends until it closes the connection, or until `timeout`.

    The connection stays open for writing, so a server waiting for the rest of a body keeps
    waiting: an answer within `timeout` was given from what was sent.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return received


def status_of(answer: bytes) -> int | None:
    """The status code of a raw HTTP answer, None when there was none."""
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer.split(b" ", 2)[1])


def request_head(
    method: str, path: str, headers: dict[str, str], *, port: int | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port or 80}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post_and_ignore_the_answer(port: int, path: str, size: int, headers: dict[str, str]) -> None:
    """POST a body of `size` bytes in 1 MiB pieces, as fast as the server takes them; a server
    that answers and closes early cuts the upload short, which is fine."""
    head = request_head("POST", path, {"Content-Length": str(size), **headers}, port=port)
    piece = b"x" * (1 << 20)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
            sock.sendall(head)
            sent = 0
            while sent < size:
                chunk = piece[: size - sent]
                sock.sendall(chunk)
                sent += len(chunk)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
    except OSError:
        pass
