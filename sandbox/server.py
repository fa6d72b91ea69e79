"""Serve an ASGI app over real HTTP on loopback, in a background thread.

The emulators, the SCIM inbox and the tests use it: `with serve(app) as url:` yields the base
URL of a uvicorn server bound to 127.0.0.1 on a free port and stops it on exit.
"""

from __future__ import annotations

import asyncio
import logging
import select
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn


class _HideInjectedDrops(logging.Filter):
    """Injected dropped connections are the point of a fault test, not an error to print."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionAbortedError))


_DROPS_FILTER = _HideInjectedDrops()


#: `select.select` refuses descriptors from FD_SETSIZE on (1024 on Linux).
_SELECT_LIMIT = 1024


class _PreciseEpollSelector(selectors.EpollSelector):
    """epoll for readiness, with a timeout kept to the microsecond.

    asyncio's timers (the emulators' added latency is `asyncio.sleep`) are only as precise as
    the selector's timeout, and epoll's is whole milliseconds, rounded up twice (selectors,
    then CPython through a float): `asyncio.sleep(0.01)` took 10.2-11.3 ms here and 8.5 ms
    took 10.2 ms, so a "10 ms" sandbox answered in 11-12 ms. `select()` on the epoll file
    descriptor itself waits to the microsecond and returns as soon as any event is ready;
    then epoll is asked without waiting. Past select()'s descriptor limit, plain epoll.
    """

    def select(self, timeout: float | None = None) -> list:
        if timeout is not None and timeout > 0 and self.fileno() < _SELECT_LIMIT:
            select.select([self.fileno()], [], [], timeout)
            timeout = 0
        return super().select(timeout)


def _precise_loop() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop(_PreciseEpollSelector())


class ServedApp:
    """A uvicorn server running `app` in a daemon thread."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
        )
        logging.getLogger("uvicorn.error").addFilter(_DROPS_FILTER)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._run, daemon=True, name="sandbox")
        self.host = host
        self.port = port

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=_precise_loop) as runner:
            runner.run(self._server.serve())

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_seconds: float = 10.0) -> ServedApp:
        self._thread.start()
        deadline = time.monotonic() + timeout_seconds
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"sandbox server on {self.host}:{self.port} did not start")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@contextmanager
def serve(app: Any, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` for the duration of the block; yield its base URL."""
    served = ServedApp(app, host=host, port=port).start()
    try:
        yield served.url
    finally:
        served.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's peak resident memory so far (VmHWM), in MB; this process's by default."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM line")
