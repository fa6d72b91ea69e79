"""Scale-out for real: two profiles on two workers, one Prefect server and one store on PostgreSQL.

What README "Add a second worker" describes, end to end: a real `prefect server start` on a
PostgreSQL database, a process work pool, two `sync` deployments (the shipped `demo-push`
profile and a second push profile, `scale-push`, with its own inbox and its own people, both
into the one sandbox Jira), and two `prefect worker start` processes that share the pool, each
taking at most one run at a time. `usersync inbox serve` runs against the PostgreSQL store; the
sample is pushed into both inboxes before the runs start (a push sync refuses an empty inbox)
and pushed again, over and over, while both runs are in flight, so the inbox writes the store
while both runs read and write it. Both runs must complete, nothing anywhere may report a lock
error, the store must hold succeeded runs of both profiles, and the sandbox Jira both
profiles' accounts.

The inbox is started without PREFECT_API_URL, so it emits no events and the pushes start no
runs of their own (the temp prefect.yaml drops demo-push's trigger for the same reason): the
two runs the test starts are the only ones.

The two profiles share no target group on purpose: scale-push's default group is its own
(scale-users), not demo-push's jira-software-users. When both profiles create one missing
group at the same moment, the second create_group fails ("it already exists") and that run
ends Failed (jira: partial); that race is a finding of its own, not what this test checks.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from usersync_sandbox.push import Sample, SampleUser, load_sample, push_sample
from usersync_sandbox.serve import Sandbox
from usersync_sandbox.server import free_port

from tests.test_store import _postgres_url
from usersync.inbox import issue_token
from usersync.store import Store

pytestmark = [pytest.mark.postgres, pytest.mark.prefect]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
USERSYNC = str(BIN / "usersync")
SANDBOX_PASSWORD = "admin"
POOL = "usersync"
PROFILES = ("demo-push", "scale-push")
#: The second profile's people, pushed into its own inbox: none of them is in the demo sample.
SCALE_SAMPLE = Sample(
    users=(
        SampleUser("kgreen", "Kim", "Green", "kgreen@example.net"),
        SampleUser("lwhite", "Lee", "White", "lwhite@example.net"),
        SampleUser("mblack", "Max", "Black", "mblack@example.net"),
    ),
    groups={"operations": ("kgreen", "lwhite", "mblack")},
)
SCALE_PROFILE = """\
description: A second SCIM inbox into the sandbox Jira (the scale-out test)
source:
  kind: miniorange-push
targets:
  jira:
    kind: jira
    url: ${USERSYNC_DEMO_JIRA_URL}
    auth:
      kind: basic
      username: admin
      password: {env: USERSYNC_DEMO_JIRA_PASSWORD}
settings:
  protected_usernames: [admin]
"""
SCALE_GROUPS = """\
source_group,target_group,mode,targets
*,,on-the-fly,
,scale-users,default,jira
"""
LOCK_ERROR = re.compile(
    r"database is locked|deadlock|could not obtain lock|LockNotAvailable|lock timeout"
    r"|lock error|locknotavailable",
    re.IGNORECASE,
)
RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUN_TIMEOUT = 180


def _drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    subprocess.run(
        ["su", "postgres", "-c", "psql -q"],
        input=f"DROP DATABASE IF EXISTS {name} WITH (FORCE);",
        capture_output=True,
        text=True,
        check=False,
    )


def _start(stack: ExitStack, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a process in its own session, its output in `log`; stopped (group) on exit."""
    out = log.open("w")
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        out.close()

    stack.callback(stop)
    return proc


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: the process exited ({proc.returncode}):\n{log.read_text()}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def _cli(*args: str, env: dict[str, str], timeout: float = 180) -> str:
    done = subprocess.run(
        args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _write_mappings(root: Path) -> None:
    shutil.copytree(REPO / "mappings" / "demo-push", root / "demo-push")
    scale = root / "scale-push"
    scale.mkdir(parents=True)
    (scale / "profile.yaml").write_text(SCALE_PROFILE)
    (scale / "groups.csv").write_text(SCALE_GROUPS)
    shutil.copy(REPO / "mappings" / "demo-push" / "attributes.csv", scale / "attributes.csv")


def _write_prefect_yaml(path: Path) -> None:
    """The shipped prefect.yaml with the demo-push deployment and a copy bound to scale-push."""
    shipped = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (demo,) = [d for d in shipped["deployments"] if d["name"] == "demo-push"]
    demo = {k: v for k, v in demo.items() if k != "triggers"}
    scale = {
        **{k: v for k, v in demo.items() if k != "schedules"},
        "name": "scale-push",
        "description": "Profile scale-push (targets: jira): the scale-out test's second inbox.",
        "parameters": {"profile": "scale-push"},
        "tags": ["usersync", "scim", "scale-out"],
    }
    config = {k: v for k, v in shipped.items() if k != "definitions"}
    config["deployments"] = [demo, scale]
    path.write_text(yaml.safe_dump(config, sort_keys=False))


class Api:
    """The few Prefect REST calls the test needs."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)

    def start_run(self, deployment: str) -> str:
        found = self.http.get(f"/deployments/name/{deployment}")
        found.raise_for_status()
        created = self.http.post(f"/deployments/{found.json()['id']}/create_flow_run", json={})
        created.raise_for_status()
        return created.json()["id"]

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.http.get(f"/flow_runs/{run_id}")
        response.raise_for_status()
        return response.json()

    def state(self, run_id: str) -> str:
        return self.run(run_id)["state_type"]

    def logs(self, run_ids: list[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = self.http.post(
                "/logs/filter",
                json={
                    "logs": {"flow_run_id": {"any_": run_ids}},
                    "limit": 200,
                    "offset": len(found),
                },
            )
            page.raise_for_status()
            found += page.json()
            if len(page.json()) < 200:
                return found


@pytest.fixture
def postgres() -> Iterator[tuple[str, str]]:
    """Two fresh databases on the local PostgreSQL 15: (Prefect's asyncpg URL, the store's)."""
    store_url = _postgres_url()
    if store_url is None:
        pytest.skip("PostgreSQL 15 is not installed on this machine")
    prefect_url = _postgres_url()
    assert prefect_url is not None
    yield prefect_url.replace("postgresql+psycopg://", "postgresql+asyncpg://"), store_url
    _drop_database(store_url)
    _drop_database(prefect_url)


def test_two_profiles_on_two_workers_share_one_postgres_server_and_store(
    postgres: tuple[str, str], tmp_path: Path
) -> None:
    prefect_db, store_url = postgres
    mappings = tmp_path / "mappings"
    _write_mappings(mappings)
    prefect_yaml = tmp_path / "prefect.yaml"
    _write_prefect_yaml(prefect_yaml)
    logs = tmp_path / "logs"
    logs.mkdir()

    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "USERSYNC_"))}
    base |= {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}/api"

    with ExitStack() as stack:
        # The Prefect server, on PostgreSQL.
        server_log = logs / "server.log"
        server_env = base | {
            "PREFECT_API_DATABASE_CONNECTION_URL": prefect_db,
            "PREFECT_UI_ENABLED": "false",
        }
        server = _start(
            stack,
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(api_port)],
            server_env,
            server_log,
        )
        _wait_http(f"{api_url}/health", server, server_log, timeout=120)

        # The store, its two inboxes and `usersync inbox serve` (no PREFECT_API_URL: no events).
        store = Store.open(store_url)
        stack.callback(store.close)
        tokens = {p: issue_token(store.engine, p).token for p in PROFILES}
        sandbox = stack.enter_context(Sandbox(admin_password=SANDBOX_PASSWORD))
        usersync_env = base | {
            "USERSYNC_HOME": str(REPO),
            "USERSYNC_STORE_URL": store_url,
            "USERSYNC_MAPPINGS_DIR": str(mappings),
        }
        for product in ("jira", "confluence", "bitbucket"):
            usersync_env[f"USERSYNC_DEMO_{product.upper()}_URL"] = sandbox.url(product)
            usersync_env[f"USERSYNC_DEMO_{product.upper()}_PASSWORD"] = SANDBOX_PASSWORD
        inbox_port = free_port()
        inbox_log = logs / "inbox.log"
        inbox = _start(
            stack,
            [USERSYNC, "inbox", "serve", "--port", str(inbox_port), "--store-url", store_url],
            usersync_env,
            inbox_log,
        )
        inbox_url = f"http://127.0.0.1:{inbox_port}/scim/v2"
        _wait_http(f"{inbox_url}/demo-push/ServiceProviderConfig", inbox, inbox_log, timeout=60)
        samples = {"demo-push": load_sample(), "scale-push": SCALE_SAMPLE}

        def push_all() -> None:
            for profile in PROFILES:
                push_sample(f"{inbox_url}/{profile}", tokens[profile], samples[profile])

        push_all()  # a push sync refuses an empty inbox: each inbox holds its people first

        # The pool, both deployments, two workers.
        worker_env = usersync_env | {
            "PREFECT_API_URL": api_url,
            "PREFECT_WORKER_QUERY_SECONDS": "2",
        }
        _cli(
            PREFECT, "--no-prompt", "work-pool", "create", POOL, "--type", "process", env=worker_env
        )
        _cli(
            PREFECT,
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            str(prefect_yaml),
            env=worker_env,
        )
        workers = {}
        for name in ("worker-a", "worker-b"):
            log = logs / f"{name}.log"
            args = [PREFECT, "worker", "start", "--pool", POOL, "--name", name, "--limit", "1"]
            workers[name] = (_start(stack, args, worker_env, log), log)

        # Both runs at once, and the inboxes pushed again and again while they are in flight.
        api = Api(api_url)
        stack.callback(api.http.close)
        runs = {p: api.start_run(f"sync/{p}") for p in PROFILES}
        stop_pushing = threading.Event()
        pushes_during_runs: list[dict[str, str]] = []
        push_errors: list[BaseException] = []

        def keep_pushing() -> None:
            while not stop_pushing.is_set():
                try:
                    push_all()
                    states = {p: api.state(r) for p, r in runs.items()}
                except Exception as exc:
                    push_errors.append(exc)
                    return
                if "RUNNING" in states.values():
                    pushes_during_runs.append(states)
                time.sleep(0.2)

        pusher = threading.Thread(target=keep_pushing, daemon=True)
        pusher.start()
        stack.callback(pusher.join, 30)
        stack.callback(stop_pushing.set)

        deadline = time.monotonic() + RUN_TIMEOUT
        states = {p: api.state(r) for p, r in runs.items()}
        while not set(states.values()) <= FINAL and time.monotonic() < deadline:
            for name, (proc, log) in workers.items():
                assert proc.poll() is None, f"{name} exited:\n{log.read_text()[-3000:]}"
            time.sleep(1)
            states = {p: api.state(r) for p, r in runs.items()}
        stop_pushing.set()
        pusher.join(30)

        worker_output = {name: log.read_text() for name, (_, log) in workers.items()}
        for name, text in worker_output.items():
            print(f"--- {name} ---\n{text}")
        assert set(states.values()) <= FINAL, f"runs not final after {RUN_TIMEOUT} s: {states}"
        assert not push_errors, push_errors
        assert pushes_during_runs, "no push was answered while a run was RUNNING"
        print(f"{len(pushes_during_runs)} pushes of both samples answered while a run was RUNNING")
        for profile, run_id in runs.items():
            run = api.run(run_id)
            assert run["state_type"] == "COMPLETED", (profile, run["state"])
            assert run["name"] == f"sync-{profile}"

        # Each worker took one of the two runs.
        taken = {
            name: set(RUN_ID.findall(text)) & set(runs.values())
            for name, text in worker_output.items()
        }
        assert all(taken.values()), taken
        assert set().union(*taken.values()) == set(runs.values()), taken

        # No lock error in either run's log, any worker's, the server's or the inbox's.
        run_logs = api.logs(list(runs.values()))
        assert run_logs, "the runs logged nothing"
        locked = [m["message"] for m in run_logs if LOCK_ERROR.search(m["message"])]
        for name, text in {
            **worker_output,
            "server": server_log.read_text(),
            "inbox": inbox_log.read_text(),
        }.items():
            locked += [f"{name}: {line}" for line in text.splitlines() if LOCK_ERROR.search(line)]
        assert not locked, locked

        # The store: succeeded runs of both profiles, one per target.
        for profile, targets in (
            ("demo-push", {"jira", "confluence", "bitbucket"}),
            ("scale-push", {"jira"}),
        ):
            recorded = store.runs(profile)
            assert set(recorded["target"]) == targets, recorded
            assert set(recorded["status"]) == {"succeeded"}, recorded

        # The sandbox Jira: both profiles' accounts, read back over its REST API.
        with httpx.Client(
            base_url=f"{sandbox.url('jira')}/rest/api/2",
            auth=("admin", SANDBOX_PASSWORD),
            timeout=10,
        ) as jira:

            def user(name: str) -> dict[str, Any] | None:
                response = jira.get("/user", params={"username": name})
                return response.json() if response.status_code == 200 else None

            def members(group: str) -> set[str]:
                response = jira.get(
                    "/group/member", params={"groupname": group, "includeInactiveUsers": "true"}
                )
                assert response.status_code == 200, response.text
                return {m["name"] for m in response.json()["values"]}

            for sample in samples.values():
                for person in sample.users:
                    account = user(person.user_name)
                    if not person.active:
                        assert account is None, person  # disabled in the IdP: not provisioned
                        continue
                    assert account is not None, person
                    assert (account["emailAddress"], account["active"]) == (person.email, True)
            assert members("developers") == {"asmith", "bjohnson", "cwilliams"}
            assert members("project-leads") == {"dbrown"}
            assert members("operations") == {"kgreen", "lwhite", "mblack"}
            # Jira puts every account it creates in its default role's group by itself, so
            # the other profile's users are there too; demo-push's default rule adds nobody.
            assert members("jira-software-users") >= {
                "asmith",
                "bjohnson",
                "cwilliams",
                "dbrown",
                "ejones",
            }
            assert members("scale-users") == {"kgreen", "lwhite", "mblack"}
