"""The sandbox's event loop: epoll for readiness, timeouts to the microsecond."""

from __future__ import annotations

import asyncio
import selectors
import socket
import time

from usersync_sandbox.server import _precise_loop, _PreciseEpollSelector


def test_the_precise_selector_reports_ready_descriptors_and_times_out_empty():
    selector = _PreciseEpollSelector()
    left, right = socket.socketpair()
    try:
        selector.register(left, selectors.EVENT_READ, data="left")
        assert selector.select(0.002) == []  # nothing ready: the timeout passes
        right.send(b"x")
        began = time.monotonic()
        ready = selector.select(5)  # ready at once, not after the timeout
        assert time.monotonic() - began < 2
        assert [(key.data, events) for key, events in ready] == [("left", selectors.EVENT_READ)]
        assert selector.select(None) and selector.select(0)  # still unread: level-triggered
    finally:
        selector.close()
        left.close()
        right.close()


def test_the_sandbox_loop_runs_timers_in_order_and_io():
    async def scenario() -> list[str]:
        seen: list[str] = []

        async def after(delay: float, name: str) -> None:
            await asyncio.sleep(delay)
            seen.append(name)

        reader, writer = await asyncio.open_connection(*await _echo_server())
        writer.write(b"ping\n")
        await asyncio.gather(after(0.003, "second"), after(0.001, "first"))
        seen.append((await reader.readline()).decode().strip())
        writer.close()
        return seen

    with asyncio.Runner(loop_factory=_precise_loop) as runner:
        assert runner.run(scenario()) == ["first", "second", "ping"]


async def _echo_server() -> tuple[str, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server.sockets[0].getsockname()[:2]
