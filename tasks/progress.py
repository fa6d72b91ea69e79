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
from collections.abc import Iterator
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


@contextmanager
def load_progress(
    key: str, what: str, counter: OperationCounter, total: int
) -> Iterator[dict[str, str]]:
    """Publish `counter.done / total` as the progress artifact `key` while the block runs.

    Yields a dict whose "outcome" entry, if the block sets it, becomes the artifact's final
    description (e.g. the counts of what the load did).
    """
    try:
        artifact_id = create_progress_artifact(
            progress=0.0, key=key, description=f"{what}: 0 of {total} call(s)"
        )
    except Exception as exc:
        get_run_logger().warning("%s: no progress artifact: %s", what, exc)
        artifact_id = None
    if artifact_id is None:
        yield {"outcome": ""}
        return
    stop = threading.Event()

    def percent() -> float:
        return round(100.0 * min(counter.done, total) / total, 1) if total else 100.0

    def publish(progress: float, description: str) -> None:
        try:
            update_progress_artifact(artifact_id, progress, description=description)
        except Exception as exc:
            get_run_logger().warning("%s: progress not updated: %s", what, exc)

    def report() -> None:
        shown = 0.0
        while not stop.wait(REPORT_EVERY_SECONDS):
            now = percent()
            if now != shown:
                publish(now, f"{what}: {counter.done} of {total} call(s)")
                shown = now

    reporter = threading.Thread(
        target=contextvars.copy_context().run, args=(report,), name=f"progress-{key}", daemon=True
    )
    reporter.start()
    final = {"outcome": ""}
    try:
        yield final
    finally:
        stop.set()
        reporter.join()
        publish(
            100.0,
            f"{what}: done, {counter.done} call(s)"
            + (f"; {final['outcome']}" if final["outcome"] else ""),
        )


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

    def describe() -> str:
        with lock:
            read = ", ".join(f"{n} {what}" for what, n in counts.items()) or "nothing yet"
        return f"source read: {read}"

    def percent() -> float:
        if not expected:
            return 0.0
        with lock:
            done = counts.get("users", 0) + counts.get("groups", 0)
        total = expected.get("users", 0) + expected.get("groups", 0)
        return round(min(99.0, 100.0 * done / total), 1) if total else 0.0

    try:
        artifact_id = create_progress_artifact(progress=0.0, key=key, description=describe())
    except Exception as exc:
        get_run_logger().warning("extract: no progress artifact: %s", exc)
        artifact_id = None
    if artifact_id is None:
        yield heard
        return

    def publish(progress: float, description: str) -> None:
        try:
            update_progress_artifact(artifact_id, progress, description=description)
        except Exception as exc:
            get_run_logger().warning("extract: progress not updated: %s", exc)

    stop = threading.Event()

    def report() -> None:
        shown = ""
        while not stop.wait(REPORT_EVERY_SECONDS):
            now = describe()
            if now != shown:
                publish(percent(), now)
                shown = now

    reporter = threading.Thread(
        target=contextvars.copy_context().run, args=(report,), name=f"progress-{key}", daemon=True
    )
    reporter.start()
    try:
        yield heard
    finally:
        stop.set()
        reporter.join()
        publish(100.0, describe().replace("source read:", "source read done:"))
