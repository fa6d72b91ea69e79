"""The inbox's writes to the store, from one thread, several requests' changes per transaction.

A commit costs a disk flush (about 4 ms for SQLite on this kind of disk, whatever it holds),
and miniOrange pushes one request per user and per membership, several at a time. So the
inbox changes its memory at once, hands the SQL of the change to `StoreWriter` and answers
only when the writer has committed it: the writer takes every change waiting, writes them in
one transaction and commits once. The event loop never waits on the disk, so other requests
(other profiles' too) are served meanwhile.

If that transaction fails, each change is written again in a transaction of its own, so one
bad change fails alone; its future raises, and the storage rebuilds its memory from the store.
`pending_writes()` collects the futures of the changes made while it is open, so the request
that made them can wait for them (`InboxStorage` waits itself when none is open).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import sqlalchemy as sa

log = logging.getLogger("usersync.inbox")

#: The statements of one change, run on the writer's connection inside its transaction.
Statements = Callable[[sa.Connection], None]

#: Changes per transaction at most (a burst larger than this takes several commits).
MAX_BATCH = 500
#: The writer thread ends after this long without work (and starts again on the next change).
IDLE_SECONDS = 5.0

_collected: ContextVar[list[Future[None]] | None] = ContextVar("inbox_writes", default=None)


@contextmanager
def pending_writes() -> Iterator[list[Future[None]]]:
    """Collect the futures of the changes submitted while the block runs (in this context)."""
    collected: list[Future[None]] = []
    token = _collected.set(collected)
    try:
        yield collected
    finally:
        _collected.reset(token)


@dataclass
class _Change:
    statements: Statements
    future: Future[None] = field(default_factory=Future)


class StoreWriter:
    """Writes changes to the store in submission order, batching those that wait.

    Args:
        engine: the store's engine.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._queue: queue.SimpleQueue[_Change] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @staticmethod
    def collecting() -> bool:
        """Whether a `pending_writes()` block is open in this context."""
        return _collected.get() is not None

    def submit(self, statements: Statements) -> Future[None]:
        """Queue a change; its future is done once committed (or raises why it was not).

        The future is also added to the `pending_writes()` list open in this context, if any.
        """
        change = _Change(statements)
        collected = _collected.get()
        if collected is not None:
            collected.append(change.future)
        with self._lock:
            self._queue.put(change)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="inbox-store-writer", daemon=True
                )
                self._thread.start()
        return change.future

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every change submitted so far is committed or failed.

        Raises:
            TimeoutError: not within `timeout` seconds.
        """
        self.submit(lambda conn: None).result(timeout)

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(batch)

    def _write(self, batch: list[_Change]) -> None:
        try:
            with self.engine.begin() as conn:
                for change in batch:
                    change.statements(conn)
        except Exception as exc:
            if len(batch) == 1:
                log.warning("inbox: the store refused a change: %s", exc)
                _settle(batch[0].future, exc)
                return
            # One change may be the cause: write each alone, so only the bad one fails.
            for change in batch:
                self._write([change])
            return
        for change in batch:
            _settle(change.future)


def _settle(future: Future[None], exception: Exception | None = None) -> None:
    """Give a change's outcome to whoever waits for it. A request that stopped waiting (its
    task was cancelled) cancelled the future; the change was written all the same."""
    try:
        if exception is None:
            future.set_result(None)
        else:
            future.set_exception(exception)
    except InvalidStateError:
        pass
