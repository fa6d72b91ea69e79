"""How far a run has got, as Prefect progress artifacts updated while it runs.

`extract_progress` follows the source read: sources report their running counts after each
page (`Source.report_progress`); the percentage is estimated from what the last run of the
profile read (the description carries the exact counts), and ends at 100 % when the read ends.

A load of 100k operations takes a while; the run page should say how far it is. The engine
calls back only once per phase (all creations, then all memberships, ...), so the count comes
from the target client itself: `OperationCounter` wraps it and counts each call that carries
out one planned operation. A reporter thread publishes the percentage every
`REPORT_EVERY_SECONDS` (the load's own threads never wait on the Prefect API), and the
artifact ends at 100 % with what the load did. Progress is a courtesy: when the API cannot
take an update, that is logged and the load goes on.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

#: Target methods that carry out one planned operation each (usersync.targets.base.Target).
OPERATION_CALLS = frozenset(
    {
        "create_group",
        "create_user",
        "update_user",
        "reactivate_user",
        "deactivate_user",
        "add_member",
        "remove_member",
    }
)
#: Planned operations that write nothing to the target (the ledger only).
LEDGER_ONLY_OPERATIONS = frozenset({"adopt_user", "relink_user"})
#: How often the artifact is updated while a load runs.
REPORT_EVERY_SECONDS = 1.0


class OperationCounter:
    """A target client that counts the operations it carries out; all else passes through.

    Args:
        target: the open target client (`usersync.targets.base.Target`).
    """

    def __init__(self, target: Any) -> None:
        self._target = target
        self._lock = threading.Lock()
        self.done = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if name not in OPERATION_CALLS:
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return attribute(*args, **kwargs)
            finally:  # a failed call is done too: it will not be tried again in this run
                with self._lock:
                    self.done += 1

        return counted


def calls_planned(plan: pd.DataFrame) -> int:
    """How many calls to the target executing `plan` takes (at most: skipped ones are not made)."""
    return int((~plan["op"].isin(LEDGER_ONLY_OPERATIONS)).sum())


State = Callable[[], tuple[float, str]]


@contextmanager
def _published(key: str, what: str, state: State, final: State) -> Iterator[None]:
    """The progress artifact `key`: created from `state()`, updated from it every
    `REPORT_EVERY_SECONDS` while the block runs (by a thread of its own, so the work never
    waits on the Prefect API), and set to `final()` once the block is done. An API that will
    not take the artifact or an update is logged; the work goes on."""
    progress, description = state()
    try:
        artifact_id = create_progress_artifact(progress=progress, key=key, description=description)
    except Exception as exc:
        get_run_logger().warning("%s: no progress artifact: %s", what, exc)
        artifact_id = None
    if artifact_id is None:
        yield
        return

    def publish(progress: float, description: str) -> None:
        try:
            update_progress_artifact(artifact_id, progress, description=description)
        except Exception as exc:
            get_run_logger().warning("%s: progress not updated: %s", what, exc)

    stop = threading.Event()

    def report() -> None:
        shown = (progress, description)
        while not stop.wait(REPORT_EVERY_SECONDS):
            now = state()
            if now != shown:
                publish(*now)
                shown = now

    reporter = threading.Thread(
        target=contextvars.copy_context().run, args=(report,), name=f"progress-{key}", daemon=True
    )
    reporter.start()
    try:
        yield
    finally:
        stop.set()
        reporter.join()
        publish(*final())


@contextmanager
def load_progress(
    key: str, what: str, counter: OperationCounter, total: int
) -> Iterator[dict[str, str]]:
    """Publish `counter.done / total` as the progress artifact `key` while the block runs.

    Yields a dict whose "outcome" entry, if the block sets it, becomes the artifact's final
    description (e.g. the counts of what the load did).
    """
    outcome = {"outcome": ""}

    def state() -> tuple[float, str]:
        done = counter.done
        percent = round(100.0 * min(done, total) / total, 1) if total else 100.0
        return percent, f"{what}: {done} of {total} call(s)"

    def final() -> tuple[float, str]:
        done = f"{what}: done, {counter.done} call(s)"
        return 100.0, done + (f"; {outcome['outcome']}" if outcome["outcome"] else "")

    with _published(key, what, state, final):
        yield outcome


@contextmanager
def extract_progress(key: str, expected: dict[str, int] | None) -> Iterator[Any]:
    """Publish a source read's progress as the progress artifact `key` while the block runs.

    Yields the callback to give the source (`Source.on_progress`). `expected` holds the counts
    the previous run read ("users", "groups", "memberships"); without it the percentage stays
    at 0 until the end, and the description still says how many entries came in.
    """
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def heard(what: str, count: int) -> None:
        with lock:
            counts[what] = count

    def read() -> str:
        with lock:
            return ", ".join(f"{n} {what}" for what, n in counts.items()) or "nothing yet"

    def state() -> tuple[float, str]:
        total = sum((expected or {}).get(k, 0) for k in ("users", "groups"))
        with lock:
            done = counts.get("users", 0) + counts.get("groups", 0)
        percent = round(min(99.0, 100.0 * done / total), 1) if total else 0.0
        return percent, f"source read: {read()}"

    with _published(key, "extract", state, lambda: (100.0, f"source read done: {read()}")):
        yield heard
