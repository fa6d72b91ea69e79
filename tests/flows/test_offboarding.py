"""Offboarding in seconds (issue 26 point 2): a push that disables a user triggers, through the
inbox's `usersync.inbox.offboarded` event and a served deployment (`usersync serve`), a delta
run scoped to that identity, which deactivates the account in the three products.

The world is a real SCIM inbox and the three sandbox products (tests/e2e/products.py), the
session's Prefect server, and `usersync serve` in a process of its own, as an admin runs it.
The oracles: the disabled person's account is inactive in every product; the run that did it
planned that person alone (what else changed waits for the next run).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import DeploymentStatus
from prefect.settings import get_current_settings
from usersync_flows.sync import sync
from usersync_sandbox.push import SampleUser, ScimPusher
from usersync_sandbox.server import serve
from usersync_tasks.inbox_events import InboxEventEmitter

from tests.e2e.products import PRODUCTS, PROFILE, products_world
from tests.e2e.test_delta_runs import account
from usersync.inbox import PREFIX, InboxApp

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]

REPO = Path(__file__).resolve().parents[2]
USERSYNC = str(Path(sys.executable).with_name("usersync"))
PEOPLE = [
    SampleUser(f"user{i:02d}", f"Given{i}", f"Family{i}", f"user{i:02d}@example.org")
    for i in range(8)
]


@pytest.fixture
def world(tmp_path, monkeypatch):
    with products_world(tmp_path, monkeypatch) as world:
        with ScimPusher(world["inbox"], world["token"]) as pusher:
            for person in PEOPLE:
                pusher.push_user(person)
            pusher.push_group("engineering")
            pusher.add_members("engineering", [p.user_name for p in PEOPLE[:4]])
        yield world


def _operations_of(store, flow_run_id: str) -> dict[str, set[str]]:
    """Per target, the user names the plans of that flow run's store runs name."""
    runs = store.runs(PROFILE)
    runs = runs.loc[runs["flow_run_id"] == flow_run_id]
    return {row.target: set(store.operations(int(row.id))["username"]) for row in runs.itertuples()}


def test_a_scoped_delta_run_plans_only_the_identities_it_is_for(world) -> None:
    sync(profile=PROFILE)  # a reconcile wrote everything
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.push_user(SampleUser("user02", "Given2", "Family2", "moved-02@example.org"))
        pusher.set_active("user05", False)
        leaver = pusher.user_id("user05")

    scoped = {o["target"]: o for o in sync(profile=PROFILE, mode="delta", only=[leaver])}

    for product in PRODUCTS:
        assert scoped[product]["mode"] == "delta", scoped[product]["mode_reason"]
        assert scoped[product]["planned"] == {"deactivate_user": 1}
        assert account(world, product, "user05")["active"] is False
    # the other change waits for the next run
    assert account(world, "jira", "user02")["email"] == "user02@example.org"
    again = {o["target"]: o for o in sync(profile=PROFILE, mode="delta")}
    assert again["jira"]["planned"] == {"update_user": 1}
    assert account(world, "jira", "user02")["email"] == "moved-02@example.org"


@pytest.fixture
def whole_reads(monkeypatch) -> list[str]:
    """Each time a run reads the whole inbox (the source's `extract`), its inbox's name."""
    from usersync.sources.miniorange_push import MiniorangePushSource

    calls: list[str] = []
    whole = MiniorangePushSource.extract

    def counted(self, attributes):
        calls.append(self.config.inbox)
        return whole(self, attributes)

    monkeypatch.setattr(MiniorangePushSource, "extract", counted)
    return calls


def test_an_offboarding_run_reads_only_the_leaver_and_the_one_deleted(world, whole_reads) -> None:
    sync(profile=PROFILE)  # a reconcile wrote everything
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.set_active("user01", False)  # in engineering
        pusher.push_user(SampleUser("user02", "Given2", "Family2", "moved-02@example.org"))
        leaver = pusher.user_id("user01")
        deleted = pusher.user_id("user06")
        pusher.delete_user("user06")
    whole_reads.clear()

    scoped = {o["target"]: o for o in sync(profile=PROFILE, mode="delta", only=[leaver, deleted])}

    assert whole_reads == [], "the scoped run read the whole inbox"
    for product in PRODUCTS:
        assert scoped[product]["status"] == "succeeded", scoped[product]
        assert scoped[product]["mode"] == "delta", scoped[product]["mode_reason"]
        assert account(world, product, "user01")["active"] is False
        assert account(world, product, "user06")["active"] is False
        assert account(world, product, "user03")["active"] is True
    assert account(world, "jira", "user02")["email"] == "user02@example.org"  # waits
    # What the scoped run recorded stands: the next delta run plans the rest alone.
    again = {o["target"]: o for o in sync(profile=PROFILE, mode="delta")}
    assert again["jira"]["planned"] == {"update_user": 1}
    assert again["jira"]["mode"] == "delta", again["jira"]["mode_reason"]


@pytest.mark.parametrize(
    "named", ["user03", "USER03", "no-such-id", "by id"], ids=["name", "upper", "unknown", "id"]
)
def test_an_identity_named_otherwise_than_by_its_id_is_never_taken_as_gone(
    world, whole_reads, named
) -> None:
    """`only` takes user names too, but the inbox is read by id: an active person named by
    user name is not found by that read, and must not read as deleted (deactivated)."""
    sync(profile=PROFILE)
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        if named == "by id":
            named = pusher.user_id("user03")
    whole_reads.clear()

    scoped = {o["target"]: o for o in sync(profile=PROFILE, mode="delta", only=[named])}

    for product in PRODUCTS:
        assert scoped[product]["status"] == "succeeded", scoped[product]
        assert scoped[product]["planned"] == {}, scoped[product]
        assert account(world, product, "user03")["active"] is True
    # Named by user name, the identity is planned from the whole inbox (read once, not per
    # product); an id, known or not, needs no more than the scoped read.
    assert len(whole_reads) == (1 if named in ("user03", "USER03") else 0)


def _deployment_runs(deployment_id) -> list:
    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )

    return asyncio.run(read())


def _deployment_status(deployment_id):
    async def read():
        async with get_client() as client:
            return (await client.read_deployment(deployment_id)).status

    return asyncio.run(read())


def _served_deployment(name: str, timeout: float = 120):
    """The deployment `usersync serve` registers, once it and its trigger exist."""

    async def read():
        async with get_client() as client:
            try:
                deployment = await client.read_deployment_by_name(name)
            except Exception:
                return None
            automations = await client.read_resource_related_automations(
                f"prefect.deployment.{deployment.id}"
            )
            return deployment if automations else None

    deadline = time.monotonic() + timeout
    while (found := asyncio.run(read())) is None:
        assert time.monotonic() < deadline, f"{name} was not served within {timeout} s"
        time.sleep(0.5)
    return found


def test_a_push_disabling_a_user_deactivates_it_everywhere_through_the_served_deployment(
    world, tmp_path
) -> None:
    sync(profile=PROFILE)  # a reconcile wrote everything
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    served_log = tmp_path / "serve.log"  # a file: a full pipe would stop the serving process
    server = subprocess.Popen(
        [USERSYNC, "serve", PROFILE, "--poll-seconds", "0.5"],
        cwd=REPO,
        env=env,
        stdout=served_log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deployment = _served_deployment(f"sync/{PROFILE}-offboarding")
        time.sleep(5)  # the server's trigger service loads the new automation
        # The serving process polls for its runs: the UI shows the deployment Ready.
        assert _deployment_status(deployment.id) == DeploymentStatus.READY
        emitter = InboxEventEmitter()
        with serve(InboxApp(world["store"].engine, on_change=emitter)) as inbox:
            with ScimPusher(f"{inbox}{PREFIX}/{PROFILE}", world["token"]) as pusher:
                pusher.push_user(SampleUser("user02", "Given2", "Family2", "moved-02@example.org"))
                leaver = pusher.user_id("user06")
                pushed = time.monotonic()
                pusher.set_active("user06", False)

            deadline = pushed + 120
            while any(account(world, p, "user06")["active"] for p in PRODUCTS):
                assert time.monotonic() < deadline, "user06 was not deactivated within 120 s"
                assert server.poll() is None, served_log.read_text()[-3000:]
                time.sleep(0.2)
        took = time.monotonic() - pushed

        runs = _deployment_runs(deployment.id)
        while not all(r.state and r.state.is_final() for r in runs):
            time.sleep(0.5)
            runs = _deployment_runs(deployment.id)
        (run,) = runs  # one run, for the one offboarding push
        assert run.parameters["only"] == [leaver]
        assert run.parameters["mode"] == "delta"
        assert run.state.is_completed(), run.state
        # Run by the serving process itself (flows/warm.py), not by an interpreter it spawned.
        assert run.infrastructure_pid == str(server.pid)
        assert _operations_of(world["store"], str(run.id)) == {p: {"user06"} for p in PRODUCTS}
        assert account(world, "jira", "user02")["email"] == "user02@example.org"
        print(f"offboarding took {took:.1f} s from the push to the last product")
    finally:
        server.terminate()
        server.wait(timeout=30)
