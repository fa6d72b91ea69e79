"""A Prefect server for a benchmark: on PostgreSQL, as Prefect recommends for production.

Prefect's ephemeral test server (`prefect_test_harness`) keeps its database in SQLite, whose one
writer at a time makes every API write of a busy run wait for the others: with three targets
at once (logs, events, task states, the instance slots), an offboarding run's targets were seen
to go one after the other, 1-2 s apart. `prefect_server()` starts the machine's PostgreSQL 15
cluster (installed, not running: `pg_ctlcluster 15 main start`), a fresh database, and
`prefect server start` on a free loopback port, and points this process (settings) and its
children (`PREFECT_API_URL` in os.environ) at it; `database="sqlite"` (or no PostgreSQL here)
uses the test harness instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from usersync_sandbox.server import free_port

PREFECT = str(Path(sys.executable).with_name("prefect"))


def _postgres_database() -> str:
    """A new database on the local PostgreSQL 15 cluster, started if need be; its asyncpg URL."""
    subprocess.run(["pg_ctlcluster", "15", "main", "start"], capture_output=True, check=False)
    name = f"prefect_bench_{uuid.uuid4().hex[:8]}"
    for statement in (
        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='prefect_bench') THEN "
        "CREATE ROLE prefect_bench LOGIN PASSWORD 'prefect_bench'; END IF; END$$;",
        f"CREATE DATABASE {name} OWNER prefect_bench;",
    ):
        subprocess.run(
            ["su", "postgres", "-c", "psql -q -v ON_ERROR_STOP=1"],
            input=statement,
            capture_output=True,
            text=True,
            check=True,
        )
    return f"postgresql+asyncpg://prefect_bench:prefect_bench@127.0.0.1:5432/{name}"


@contextlib.contextmanager
def prefect_server(database: str = "postgresql") -> Iterator[str]:
    """Yield the API URL of a Prefect server running for the block (see the module's doc)."""
    if database != "postgresql" or shutil.which("pg_ctlcluster") is None:
        from prefect.settings import get_current_settings
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=300):
            url = str(get_current_settings().api.url)
            os.environ["PREFECT_API_URL"] = url
            yield url
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "PREFECT_HOME": home,
            "PREFECT_API_DATABASE_CONNECTION_URL": _postgres_database(),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
        }
        env.pop("PREFECT_API_URL", None)
        log = Path(home) / "server.log"
        server = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the Prefect server did not start:\n{log.read_text()[-2000:]}"
                    )
                time.sleep(0.5)
            os.environ["PREFECT_API_URL"] = url
            with temporary_settings(updates={PREFECT_API_URL: url}):
                yield url
        finally:
            server.terminate()
            server.wait(timeout=30)
