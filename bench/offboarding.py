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
trigger), created → running (the serving process's poll; the run then starts in a thread of
that process, flows/warm.py), running → deactivated everywhere (the flow: profile, extract,
transform, plan, load). `--tasks LOG` prints each run's tasks and keeps the serving log.

The Prefect API is $PREFECT_API_URL, or a temporary server when none is set
(bench/prefect_server.py: on PostgreSQL by default, as in production; `--prefect-database
sqlite`: Prefect's test harness, whose one SQLite writer serialises a busy run's API writes).

    .venv/bin/python bench/offboarding.py [--users 200] [--members 50] [--pushes 20]
        [--latency-ms 10] [--poll-seconds 0.5] [--tasks LOG] [--prefect-database postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.settings import get_current_settings
from usersync_sandbox.push import SampleUser, ScimPusher
from usersync_sandbox.serve import Sandbox
from usersync_sandbox.server import free_port

REPO = Path(__file__).resolve().parents[1]
PROFILE = "bench-offboarding"
PASSWORD = "bench-admin"
PRODUCTS = ("jira", "confluence", "bitbucket")
USERSYNC = str(Path(sys.executable).with_name("usersync"))


def inactive_everywhere(urls: dict[str, str], password: str, name: str) -> bool:
    """Whether `name` is inactive in each product at `urls`, read over REST as an admin would
    (Jira `active`, Confluence `status`, Bitbucket: no LICENSED_USER grant)."""
    auth = ("admin", password)
    if "jira" in urls:
        jira = httpx.get(
            urls["jira"] + "/rest/api/2/user", params={"username": name}, auth=auth, timeout=60
        ).json()
        if jira.get("active"):
            return False
    if "confluence" in urls:
        wiki = httpx.get(
            urls["confluence"] + "/rest/api/user",
            params={"username": name, "expand": "status"},
            auth=auth,
            timeout=60,
        ).json()
        if wiki.get("status") == "Active":
            return False
    if "bitbucket" in urls:
        grants = httpx.get(
            urls["bitbucket"] + "/rest/api/1.0/admin/permissions/users",
            params={"filter": name},
            auth=auth,
            timeout=60,
        ).json()["values"]
        if any(g["user"]["name"] == name and g["permission"] == "LICENSED_USER" for g in grants):
            return False
    return True


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


@contextlib.contextmanager
def inbox_process(log: Path | None = None) -> Iterator[str]:
    """`usersync inbox serve` on a free loopback port, in a process of its own as an admin runs
    it (the store of $USERSYNC_STORE_URL, events to the Prefect API of this process); its URL."""
    port = free_port()
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    inbox = subprocess.Popen(
        [USERSYNC, "inbox", "serve", "--port", str(port)],
        env=env,
        stdout=log.open("w") if log else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if inbox.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"usersync inbox serve did not start ({inbox.returncode})")
            time.sleep(0.2)
        yield url
    finally:
        inbox.terminate()
        inbox.wait(timeout=30)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def bench(args: argparse.Namespace, work: Path) -> None:
    from usersync_flows.sync import sync

    from usersync.inbox import PREFIX, issue_token
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
        inbox_process() as inbox,
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

        rows = time_offboarding(
            PROFILE,
            {p: sandbox.url(p) for p in PRODUCTS},
            PASSWORD,
            base,
            token,
            ids,
            poll_seconds=args.poll_seconds,
            log=args.tasks and Path(args.tasks),
        )
    store.close()
    print(
        f"\n{args.users} users, {args.latency_ms:g} ms per request, poll {args.poll_seconds:g} s: "
        + latency_line(rows)
    )


def latency_line(rows: list[tuple[float, float, float]]) -> str:
    took = [r[0] for r in rows]
    return (
        f"{len(took)} pushes: p50 {statistics.median(took):.2f} s, p95 "
        f"{percentile(took, 0.95):.2f} s (target p95 <= 5 s); median push -> run created "
        f"{statistics.median(r[1] for r in rows):.2f} s, -> running "
        f"{statistics.median(r[2] for r in rows):.2f} s"
    )


def time_offboarding(
    profile: str,
    urls: dict[str, str],
    password: str,
    inbox: str,
    token: str,
    leavers: dict[str, str],
    *,
    poll_seconds: float,
    log: Path | None = None,
) -> list[tuple[float, float, float]]:
    """Start `usersync serve profile`, then disable each of `leavers` (user name -> inbox id)
    in the inbox at `inbox` one after the other, each once the previous run has ended; per
    push: seconds until inactive in every product at `urls`, until the run was created, until
    it was running. `log`: the serving process's log goes there and each run's tasks are
    printed."""
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    served = subprocess.Popen(
        [USERSYNC, "serve", profile, "--poll-seconds", str(poll_seconds)],
        cwd=REPO,
        env=env,
        stdout=log.open("w") if log else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    rows = []
    try:
        while (deployment := asyncio.run(_served(f"sync/{profile}-offboarding"))) is None:
            if served.poll() is not None:
                raise SystemExit(f"usersync serve {profile} ended ({served.returncode})")
            time.sleep(0.5)
        time.sleep(5)  # the server's trigger service loads the automation
        # The inbox loads a profile's resources on its first request: a long-running inbox
        # has done so long before a leaver's push, so that load is timed apart, not counted.
        began = time.monotonic()
        httpx.get(
            f"{inbox}/Users/{next(iter(leavers.values()))}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=1800,
        ).raise_for_status()
        print(f"inbox: first request (loads the profile) {time.monotonic() - began:.1f} s")
        with ScimPusher(inbox, token, timeout_seconds=120) as pusher:
            for name, inbox_id in leavers.items():
                pushed_at = datetime.now(UTC)
                t0 = time.monotonic()
                pusher.set_active_by_id(inbox_id, False)
                while True:
                    asked = time.monotonic()
                    if inactive_everywhere(urls, password, name):
                        break
                    if time.monotonic() - t0 > 600:
                        raise SystemExit(f"{name}: not deactivated within 600 s")
                    # Every 50 ms, but no more than a third of the products' time: a check
                    # that costs the emulator 0.5 s (Bitbucket's `filter` scans 100k accounts)
                    # would otherwise keep it busy while the run waits for it.
                    time.sleep(max(0.05, 2 * (time.monotonic() - asked)))
                took = time.monotonic() - t0
                while not (
                    (runs := asyncio.run(_runs(deployment.id)))
                    and all(r.state and r.state.is_final() for r in runs)
                ):
                    time.sleep(0.2)
                run = max(runs, key=lambda r: r.created)
                created = (run.created - pushed_at).total_seconds()
                running = (
                    (run.start_time - pushed_at).total_seconds() if run.start_time else float("nan")
                )
                rows.append((took, created, running))
                if log:
                    print("   tasks: " + asyncio.run(_task_times(run.id, pushed_at)))
                print(
                    f"{name}: {took:5.2f} s (run created +{created:.2f} s, running "
                    f"+{running:.2f} s, {run.state_name}, only={run.parameters.get('only')})",
                    flush=True,
                )
    finally:
        served.terminate()
        served.wait(timeout=60)
    return rows


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
    parser.add_argument(
        "--prefect-database",
        choices=("postgresql", "sqlite"),
        default="postgresql",
        help="the temporary Prefect server's database (bench/prefect_server.py; default "
        "postgresql, as in production)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if os.environ.get("PREFECT_API_URL"):
            bench(args, Path(tmp))
            return
        from prefect_server import prefect_server

        with prefect_server(args.prefect_database):
            bench(args, Path(tmp))


if __name__ == "__main__":
    main()
