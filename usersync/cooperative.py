"""Plain (blocking) code run cooperatively on one asyncio loop, one greenlet per call.

The loader runs many target calls at once. On threads, every answer wakes a thread that must
win the interpreter lock back; on a machine whose cores are busy that hand-over, not the
network, sets the pace. Here every call runs in a greenlet on the loop of one thread: the
target modules stay plain functions, and where they wait (an HTTP answer, a pause the server
asked for, a free request slot) `wait` hands the awaitable to the loop and switches to the
next call that can go on. SQLAlchemy's asyncio layer uses the same bridge.

Outside `run` (a task's reads, a test calling a target directly) nothing changes: `active()` is
false, `sleep` is `time.sleep`, and `ApiClient` sends with its blocking httpx client.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from greenlet import getcurrent, greenlet

T = TypeVar("T")


class _Call(greenlet):  # type: ignore[misc]
    """A greenlet running one plain call; its parent is the loop's greenlet, which awaits for it."""

    def __init__(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(fn, getcurrent())
        self.loop = loop
        self.gr_context = contextvars.copy_context()


def active() -> bool:
    """Whether the caller runs inside `run`, on the loop (waits must go through `wait`)."""
    return isinstance(getcurrent(), _Call)


def loop() -> asyncio.AbstractEventLoop:
    """The loop the calling greenlet runs on (only inside `run`)."""
    current = getcurrent()
    assert isinstance(current, _Call), "cooperative.loop() outside cooperative.run()"
    return current.loop


def wait(awaitable: Awaitable[T]) -> T:
    """Wait for `awaitable` on the loop, letting the other calls go on meanwhile."""
    current = getcurrent()
    if not isinstance(current, _Call):
        raise RuntimeError("cooperative.wait() outside cooperative.run()")
    return current.parent.switch(awaitable)  # type: ignore[no-any-return]


def sleep(seconds: float) -> None:
    """Sleep: on the loop inside `run`, else `time.sleep`."""
    if active():
        wait(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


async def _drive(fn: Callable[[], T]) -> T:
    """Run `fn` in a greenlet, awaiting on its behalf whatever it hands over with `wait`."""
    call = _Call(fn, asyncio.get_running_loop())
    handed = call.switch()
    while not call.dead:
        try:
            value = await handed
        except BaseException:  # the waiting call gets it, where it waited
            handed = call.throw(*sys.exc_info())
        else:
            handed = call.switch(value)
    return handed  # type: ignore[no-any-return]


#: Resources of the running `run` (keyed by their owner), closed when it ends: connections
#: belong to the loop that opened them.
_RESOURCES: contextvars.ContextVar[dict[object, Any] | None] = contextvars.ContextVar(
    "usersync_cooperative_resources", default=None
)


def resource(owner: object, make: Callable[[], T]) -> T:
    """The running `run`'s resource of `owner` (made on first use, its `aclose()` awaited when
    `run` ends)."""
    resources = _RESOURCES.get()
    if resources is None:
        raise RuntimeError("cooperative.resource() outside cooperative.run()")
    found = resources.get(owner)
    if found is None:
        found = resources[owner] = make()
    return found  # type: ignore[no-any-return]


def run(fn: Callable[[], T]) -> T:
    """Run `fn` on a new asyncio loop, in a greenlet; `gather` inside it runs calls at once.

    On a thread that already runs a loop, the new loop gets a thread of its own.
    """

    async def main() -> T:
        resources: dict[object, Any] = {}
        _RESOURCES.set(resources)
        try:
            return await _drive(fn)
        finally:
            for item in resources.values():
                await item.aclose()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    outcome: list[Any] = []
    context = contextvars.copy_context()

    def in_thread() -> None:
        try:
            outcome.append(context.run(asyncio.run, main()))
        except BaseException as exc:  # handed to the caller below
            outcome.append(exc)

    thread = threading.Thread(target=in_thread, name="usersync-cooperative")
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]  # type: ignore[no-any-return]


def gather(calls: Sequence[Callable[[], T]], *, limit: int) -> list[T]:
    """Run `calls` at once, at most `limit` at a time; their results in order (inside `run`).

    A call that raises makes `gather` raise once the others are done.
    """
    gate = asyncio.Semaphore(max(1, limit))

    async def one(fn: Callable[[], T]) -> T:
        async with gate:
            return await _drive(fn)

    async def every() -> list[T]:
        results = await asyncio.gather(*(one(fn) for fn in calls), return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed
        return results  # type: ignore[return-value]

    return wait(every())


class Waker:
    """Wakes one call waiting on the loop, from any thread (a condition's notify)."""

    def __init__(self) -> None:
        self._loop = loop()
        self._thread = threading.get_ident()
        self._future: asyncio.Future[None] = self._loop.create_future()

    def wake(self) -> None:
        if threading.get_ident() == self._thread:
            self._set()
        else:
            self._loop.call_soon_threadsafe(self._set)

    def _set(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    def wait(self, timeout: float | None) -> None:
        """Wait until woken or `timeout` seconds have passed."""

        async def woken() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._future), timeout)

        wait(woken())


__all__ = ["Waker", "active", "gather", "resource", "run", "sleep", "wait"]
