"""Served runs in the serving process itself: an offboarding run starts warm, not in a new interpreter.

Prefect's runner (`prefect.serve`) starts every flow run in a new process made with
multiprocessing "spawn", which imports Prefect, pandas and usersync again before the flow's
first line: about 4 s on two busy cores (bench/offboarding.py), most of a leaver's wait.
`WarmRunner` registers the same deployments (`RunnerDeployment.apply`: name, parameters,
triggers), asks the Prefect API for their runs due every `poll_seconds` (which also keeps the
deployments Ready in the UI), claims each (the Pending state, as Prefect's runner does, so
no other process takes it) and runs it with Prefect's engine (`run_flow`) in a thread of this
process, where the flow's code, pandas and the HTTP clients are already loaded. The run is the
deployment's own: its parameters, logs, artifacts, states and history are Prefect's as for
any run; its `infrastructure_pid` is this process.

What it gives up against a spawned process: a run cannot be killed. Cancelling one from the UI
marks it Cancelling; the run ends as it would have (an offboarding run takes seconds), and a
stopped server (SIGTERM, Ctrl-C) waits for the runs it started before it exits.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import Abort
from prefect.flow_engine import run_flow
from prefect.flows import Flow
from prefect.states import Pending
from prefect.utilities.engine import propose_state_sync

log = logging.getLogger("usersync.serve")


class WarmRunner:
    """Take the given deployments' runs and run each in a thread of this process."""

    def __init__(
        self,
        deployments: Sequence[RunnerDeployment],
        flow: Flow,
        *,
        limit: int,
        poll_seconds: float,
    ) -> None:
        self._deployments = list(deployments)
        self._flow = flow
        self._limit = max(1, limit)
        self._poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._running: set[UUID] = set()
        self._lock = threading.Lock()

    def stop(self) -> None:
        """End the polling; the runs already started finish first."""
        self._stop.set()

    def serve(self) -> None:
        """Register the deployments, then run what is due until `stop` (or SIGTERM, SIGINT)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        ids = [UUID(str(d.apply())) for d in self._deployments]
        for deployment in self._deployments:
            log.info("serving deployment '%s/%s' in this process", self._flow.name, deployment.name)
        failing = False
        with (
            get_client(sync_client=True) as client,
            ThreadPoolExecutor(self._limit, thread_name_prefix="served-run") as pool,
        ):
            while not self._stop.is_set():
                try:
                    due = client.get_scheduled_flow_runs_for_deployments(
                        deployment_ids=ids,
                        scheduled_before=datetime.now(UTC) + timedelta(seconds=1),
                    )
                    failing = False
                except Exception as exc:  # the API away for a moment: said once, tried again
                    if not failing:
                        log.error("cannot read the runs due from the Prefect API: %s", exc)
                    failing, due = True, []
                for run in sorted(due, key=lambda r: r.expected_start_time or r.created):
                    if self._free() and self._claim(client, run):
                        pool.submit(self._execute, run)
                self._stop.wait(self._poll_seconds)

    def _free(self) -> bool:
        with self._lock:
            return len(self._running) < self._limit

    def _claim(self, client, run: FlowRun) -> bool:
        """Pending and this process's pid on the run, or False when another took it (or the
        API did not answer: the run stays Scheduled, for the next poll)."""
        try:
            state = propose_state_sync(client, Pending(), flow_run_id=run.id)
        except Abort:
            return False
        except Exception as exc:
            log.error("run '%s' (%s): cannot claim it: %s", run.name, run.id, exc)
            return False
        if not state.is_pending():
            return False
        try:  # where the run runs, for whoever looks at it; the run goes ahead without it
            client.update_flow_run(run.id, infrastructure_pid=str(os.getpid()))
        except Exception as exc:
            log.warning(
                "run '%s' (%s): cannot record this process on it: %s", run.name, run.id, exc
            )
        with self._lock:
            self._running.add(run.id)
        return True

    def _execute(self, run: FlowRun) -> None:
        log.info("run '%s' (%s) starts in this process", run.name, run.id)
        try:
            run_flow(self._flow, flow_run=run, return_type="state", error_logger=log)
        except BaseException:  # the engine records the run's end; this process goes on
            log.exception("run '%s' (%s) ended with an error", run.name, run.id)
        finally:
            with self._lock:
                self._running.discard(run.id)
