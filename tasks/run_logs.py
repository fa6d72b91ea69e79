"""The engine's logs in the run log: what `usersync.*` says during a flow run reaches Prefect.

The engine logs with the standard library (`usersync.http` for retries and rate-limit waits,
`usersync.sync` for refused names, ...) and knows nothing of Prefect, so without this those
lines would print on the worker's console only. `engine_logs_in_run_log()` attaches Prefect's
API log handler to the `usersync` logger for the length of one flow run, at INFO unless the
logger was given a level. Lines logged from threads the engine starts itself (a load's worker
pool has no Prefect context) are filed under that flow run; lines of another flow run in the
same process are left to that run's own handler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

#: The parent of every engine logger.
ENGINE_LOGGER = "usersync"


def _flow_run_of_context() -> UUID | None:
    task_run = TaskRunContext.get()
    if task_run is not None:
        return task_run.task_run.flow_run_id
    flow_run = FlowRunContext.get()
    return flow_run.flow_run.id if flow_run is not None and flow_run.flow_run else None


class _EngineLogHandler(APILogHandler):
    """Sends the engine's records to the API as logs of one flow run.

    Args:
        flow_run_id: the run records without a Prefect context belong to.
        only_without_context: leave records that have a context to a handler already there
            (`PREFECT_LOGGING_EXTRA_LOGGERS=usersync` attaches one).
    """

    def __init__(self, flow_run_id: UUID, *, only_without_context: bool) -> None:
        super().__init__()
        self.flow_run_id = flow_run_id
        self.only_without_context = only_without_context

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "flow_run_id", None):
            if not self.only_without_context:
                super().emit(record)
            return
        run = _flow_run_of_context()
        if run is None:
            # A copy: other handlers see the record as it was logged.
            record = logging.makeLogRecord({**record.__dict__, "flow_run_id": self.flow_run_id})
        elif run != self.flow_run_id or self.only_without_context:
            return
        super().emit(record)


@contextmanager
def engine_logs_in_run_log() -> Iterator[None]:
    """Within a flow run, send what the `usersync` loggers log to that run's log.

    Outside a flow run (a test calling the engine) this does nothing.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        yield
        return
    logger = logging.getLogger(ENGINE_LOGGER)
    handler = _EngineLogHandler(
        context.flow_run.id,
        only_without_context=any(
            type(h) is APILogHandler for h in logger.handlers
        ),  # a plain one: the extra-loggers setting
    )
    _raise_level(logger)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        _restore_level(logger)


#: Flow runs of this process inside `engine_logs_in_run_log`, and the level the engine logger
#: had before the first of them: it is put back when the last one ends, not when the first
#: does (a run that ends would otherwise silence the INFO lines of one still going).
_runs_logging = 0
_level_before: int = logging.NOTSET
_level_lock = threading.Lock()


def _raise_level(logger: logging.Logger) -> None:
    global _runs_logging, _level_before
    with _level_lock:
        if _runs_logging == 0:
            _level_before = logger.level
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)
        _runs_logging += 1


def _restore_level(logger: logging.Logger) -> None:
    global _runs_logging
    with _level_lock:
        _runs_logging -= 1
        if _runs_logging == 0:
            logger.setLevel(_level_before)
