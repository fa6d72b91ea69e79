"""Benchmark (issue 26 d): offboarding latency, from the inbox accepting a `PATCH active=false`
to the account deactivated in Jira, Confluence and Bitbucket, with a served deployment.

Starts the three sandbox products (each request answered after `--latency-ms`, 10 by default,
once the estate is written), a SCIM inbox whose changes emit Prefect events
(`tasks/inbox_events.py`), and `usersync serve <profile>` in a process of its own (the served
deployment `sync/<profile>-offboarding`, polling every `--poll-seconds`). It pushes `--users`
people into the inbox (`--members` of them in one group), reconciles once, then pushes
`--pushes` disables one after the other, each once the previous run has ended, and reads the
three products over REST every 50 ms until the account is inactive in all of them. It reports
p50 and p95 of that latency, and where the time goes: push → flow run created (event and
trigger), created → running (the runner's poll and the child process), running → deactivated
everywhere (the flow: profile, extract, transform, plan, load).

The Prefect API is $PREFECT_API_URL, or a temporary server when none is set.

    .venv/bin/python bench/offboarding.py [--users 200] [--members 50] [--pushes 20]
        [--latency-ms 10] [--poll-seconds 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.settings import get_current_settings
from usersync_sandbox.push import SampleUser, ScimPusher
from usersync_sandbox.serve import Sandbox
from usersync_sandbox.server import serve

REPO = Path(__file__).resolve().parents[1]
PROFILE = "bench-offboarding"
PASSWORD = "bench-admin"
PRODUCTS = ("jira", "confluence", "bitbucket")
USERSYNC = str(Path(sys.executable).with_name("usersync"))


def inactive_everywhere(sandbox: Sandbox, name: str) -> bool:
    auth = ("admin", PASSWORD)
    jira = httpx.get(
        sandbox.url("jira") + "/rest/api/2/user", params={"username": name}, auth=auth
    ).json()
    if jira.get("active"):
        return False
    wiki = httpx.get(
        sandbox.url("confluence") + "/rest/api/user",
        params={"username": name, "expand": "status"},
        auth=auth,
    ).json()
    if wiki.get("status") == "Active":
        return False
    grants = httpx.get(
        sandbox.url("bitbucket") + "/rest/api/1.0/admin/permissions/users",
        params={"filter": name},
        auth=auth,
    ).json()["values"]
    return not any(g["user"]["name"] == name and g["permission"] == "LICENSED_USER" for g in grants)


async def _runs(deployment_id) -> list:
    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


async def _task_times(flow_run_id, since: datetime) -> str:
    """The run's tasks, each as `name start+duration` in seconds after `since`."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    spans = sorted((t.start_time, t.end_time, t.name) for t in tasks if t.start_time and t.end_time)
    return ", ".join(
        f"{name.rsplit('-', 1)[0] if name[-1].isdigit() else name} "
        f"+{(a - since).total_seconds():.2f}/{(b - a).total_seconds():.2f}"
        for a, b, name in spans
    )


async def _served(name: str):
    async with get_client() as client:
        with contextlib.suppress(Exception):
            deployment = await client.read_deployment_by_name(name)
            if await client.read_resource_related_automations(
                f"prefect.deployment.{deployment.id}"
            ):
                return deployment
    return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def bench(args: argparse.Namespace, work: Path) -> None:
    from usersync_flows.sync import sync
    from usersync_tasks.inbox_events import InboxEventEmitter

    from usersync.inbox import PREFIX, InboxApp, issue_token
    from usersync.store import Store

    shutil.copytree(REPO / "mappings" / "demo-push", work / "mappings" / PROFILE)
    store_url = f"sqlite:///{work / 'store.db'}"
    os.environ.update(
        {"USERSYNC_MAPPINGS_DIR": str(work / "mappings"), "USERSYNC_STORE_URL": store_url}
    )
    store = Store.open(store_url)
    token = issue_token(store.engine, PROFILE).token
    people = [
        SampleUser(f"p{i:06d}", f"Given{i}", f"Family{i}", f"p{i:06d}@example.org")
        for i in range(args.users)
    ]
    with (
        Sandbox(admin_password=PASSWORD) as sandbox,
        serve(InboxApp(store.engine, on_change=InboxEventEmitter())) as inbox,
    ):
        for product in PRODUCTS:
            os.environ[f"USERSYNC_DEMO_{product.upper()}_URL"] = sandbox.url(product)
            os.environ[f"USERSYNC_DEMO_{product.upper()}_PASSWORD"] = PASSWORD
        base = f"{inbox}{PREFIX}/{PROFILE}"
        started = time.monotonic()
        with ScimPusher(base, token) as pusher:
            for person in people:
                pusher.push_user(person)
            pusher.push_group("engineering")
            pusher.add_members("engineering", [p.user_name for p in people[: args.members]])
            ids = {p.user_name: pusher.user_id(p.user_name) for p in people[: args.pushes]}
        sync(profile=PROFILE)  # the reconcile that writes the estate (and its fingerprints)
        print(
            f"estate: {args.users} users written in {time.monotonic() - started:.0f} s", flush=True
        )
        for product in PRODUCTS:  # the emulator's control endpoint, above its context path
            root = sandbox.url(product).rsplit("/", 1)[0]
            httpx.put(
                f"{root}/_sandbox/faults", json={"latency_seconds": args.latency_ms / 1000}
            ).raise_for_status()

        env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
        served = subprocess.Popen(
            [USERSYNC, "serve", PROFILE, "--poll-seconds", str(args.poll_seconds)],
            cwd=REPO,
            env=env,
            stdout=(work / "serve.log").open("w") if args.tasks else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            while (deployment := asyncio.run(_served(f"sync/{PROFILE}-offboarding"))) is None:
                time.sleep(0.5)
            time.sleep(5)  # the server's trigger service loads the automation
            rows = []
            with ScimPusher(base, token) as pusher:
                for name in ids:
                    pushed_at = datetime.now(UTC)
                    t0 = time.monotonic()
                    pusher.set_active(name, False)
                    while not inactive_everywhere(sandbox, name):
                        if time.monotonic() - t0 > 120:
                            raise SystemExit(f"{name}: not deactivated within 120 s")
                        time.sleep(0.05)
                    took = time.monotonic() - t0
                    while not (
                        (runs := asyncio.run(_runs(deployment.id)))
                        and all(r.state and r.state.is_final() for r in runs)
                    ):
                        time.sleep(0.2)
                    run = max(runs, key=lambda r: r.created)
                    created = (run.created - pushed_at).total_seconds()
                    running = (
                        (run.start_time - pushed_at).total_seconds()
                        if run.start_time
                        else float("nan")
                    )
                    rows.append((took, created, running))
                    if args.tasks:
                        print("   tasks: " + asyncio.run(_task_times(run.id, pushed_at)))
                    print(
                        f"{name}: {took:5.2f} s (run created +{created:.2f} s, running +{running:.2f} s, "
                        f"{run.state_name}, only={run.parameters.get('only')})",
                        flush=True,
                    )
        finally:
            served.terminate()
            served.wait(timeout=30)
            if args.tasks:
                shutil.copy(work / "serve.log", args.tasks)
    store.close()
    took = [r[0] for r in rows]
    print(
        f"\n{len(took)} pushes, {args.users} users, {args.latency_ms:g} ms per request, poll "
        f"{args.poll_seconds:g} s: p50 {statistics.median(took):.2f} s, p95 {percentile(took, 0.95):.2f} s "
        f"(target p95 <= 5 s); median push -> run created {statistics.median(r[1] for r in rows):.2f} s, "
        f"-> running {statistics.median(r[2] for r in rows):.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--poll-seconds", type=float, default=0.5)
    parser.add_argument(
        "--tasks",
        metavar="LOG",
        help="print each run's tasks (start after the push/duration) and copy the serving "
        "process's log to LOG",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if os.environ.get("PREFECT_API_URL"):
            bench(args, Path(tmp))
            return
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=180):
            bench(args, Path(tmp))


if __name__ == "__main__":
    main()
