"""prefect.yaml for real: `prefect deploy --all`, then each shipped deployment run by a worker.

This is what an admin does: create the work pool, deploy everything, run a deployment from the
UI or `prefect deployment run`, and a process worker picks the run up. It runs against the
session's Prefect test server. The sandbox products answer with the password the README
gives (admin), the demo-push inbox holds the sample, pushed as miniOrange would, and a slapd
holds the sample directory for Test Sync (profile demo). The examples are not run: their hosts
do not exist; what they ship (paused, dry runs) is checked.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import get_current_settings
from usersync_sandbox.push import push_sample
from usersync_sandbox.serve import Sandbox
from usersync_sandbox.server import serve
from usersync_sandbox.slapd import SlapdServer

from usersync.inbox import PREFIX, InboxApp, issue_token
from usersync.store import Store

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
#: The sandbox's admin password, as `usersync sandbox` prints it and the README says.
SANDBOX_PASSWORD = "admin"
SHIPPED = {
    ("demo", "sandbox"),
    ("sync", "demo-push"),
    ("sync", "demo-push-reconcile"),
    ("sync", "example-ldap-reconcile"),
    ("sync", "example-ad-reconcile"),
    ("sync", "example-ldap"),
    ("sync", "example-ldap-dry-run"),
    ("sync", "example-ad"),
    ("sync", "example-ad-dry-run"),
    ("test-connection", "on-demand"),
    ("test-sync", "on-demand"),
}


def prefect_cli(*args: str, env: dict[str, str], timeout: float = 240, cwd: Path = REPO) -> str:
    done = subprocess.run(
        [PREFECT, "--no-prompt", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@dataclass
class Deployed:
    env: dict[str, str]
    sandbox: Sandbox
    #: (flow name, deployment name) → deployment
    deployments: dict

    def run(
        self,
        flow: str,
        name: str,
        *parameters: str,
        worker_env: dict[str, str] | None = None,
        worker_cwd: Path = REPO,
    ) -> FlowRun:
        """Run a deployment as `prefect deployment run` does, through a process worker."""
        options = [arg for p in parameters for arg in ("-p", p)]
        prefect_cli("deployment", "run", f"{flow}/{name}", *options, env=self.env)
        prefect_cli(
            "worker",
            "start",
            "--pool",
            "usersync",
            "--run-once",
            env=worker_env or self.env,
            cwd=worker_cwd,
            timeout=400,
        )
        deployment = self.deployments[(flow, name)]

        async def newest() -> FlowRun:
            async with get_client() as client:
                runs = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                    sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                    limit=1,
                )
            return runs[0]

        return asyncio.run(newest())


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Deployed:
    store_url = f"sqlite:///{tmp_path_factory.mktemp('deploy') / 'store.db'}"
    with Sandbox(admin_password=SANDBOX_PASSWORD) as sandbox, SlapdServer.for_demo() as ldap:
        env = {
            **os.environ,
            "PREFECT_API_URL": str(get_current_settings().api.url),
            "USERSYNC_HOME": str(REPO),
            "USERSYNC_STORE_URL": store_url,
            "USERSYNC_DEMO_LDAP_URL": ldap.url,
            "USERSYNC_DEMO_LDAP_PASSWORD": ldap.admin_password,
        }
        env.pop("USERSYNC_MAPPINGS_DIR", None)
        for product in ("jira", "confluence", "bitbucket"):
            env[f"USERSYNC_DEMO_{product.upper()}_URL"] = sandbox.url(product)
            env[f"USERSYNC_DEMO_{product.upper()}_PASSWORD"] = SANDBOX_PASSWORD
        # What miniOrange would have pushed into the demo-push inbox.
        store = Store.open(store_url)
        token = issue_token(store.engine, "demo-push").token
        with serve(InboxApp(store.engine)) as inbox:
            push_sample(f"{inbox}{PREFIX}/demo-push", token)
        store.close()

        prefect_cli("work-pool", "create", "usersync", "--type", "process", env=env)
        prefect_cli("deploy", "--all", env=env)

        async def read():
            async with get_client() as client:
                flows = {f.id: f.name for f in await client.read_flows()}
                return {(flows[d.flow_id], d.name): d for d in await client.read_deployments()}

        yield Deployed(env, sandbox, asyncio.run(read()))


def test_deploy_all_ships_every_flow_and_nothing_that_writes_on_a_schedule(deployed):
    deployments = deployed.deployments
    assert set(deployments) >= SHIPPED
    # Only what prefect.yaml ships (other tests of this session may have made deployments).
    for (flow, name), deployment in deployments.items():
        if (flow, name) not in SHIPPED:
            continue
        assert deployment.enforce_parameter_schema, name
        if flow != "sync":
            continue
        profile = deployment.parameters["profile"]
        assert name in (profile, f"{profile}-dry-run", f"{profile}-reconcile")  # its profile's
        assert f"profile:{profile}" in deployment.tags
        # Nothing of the deployer's machine: the code and settings are found at run time.
        assert deployment.pull_steps == [
            {"usersync_tasks.deployment_steps.use_usersync_settings": {}}
        ]
        assert deployment.global_concurrency_limit is None  # the profile's lease instead
        assert all(not s.active for s in deployment.schedules), name
        properties = deployment.parameter_openapi_schema["properties"]
        assert "store_url" not in properties
        assert properties["dry_run"]["title"] == "Dry run"
        assert properties["mode"]["enum"] == ["delta", "reconcile"]  # a run's kind, in the form
        # A profile's own deployment makes delta runs; <profile>-reconcile reconciles.
        if name == profile or name.endswith("-reconcile"):
            assert deployment.parameters["mode"] == ("delta" if name == profile else "reconcile")
        if name.endswith("-reconcile"):
            assert [s.schedule.cron for s in deployment.schedules] == ["5 2 * * *"], name
    for example in ("example-ldap", "example-ad"):
        deployment = deployments[("sync", example)]
        assert deployment.parameters["dry_run"] is True  # a UI run is a dry run
        assert {s.schedule.cron: s.parameters for s in deployment.schedules} == {
            "15 * * * *": {"dry_run": False},
        }
        dry = deployments[("sync", f"{example}-dry-run")]
        assert "dry-run" in dry.tags
        assert [s.schedule.cron for s in dry.schedules] == ["30 6 * * *"]
    # `prefect deploy` alone gives the complete form: the targets to choose from.
    for (flow, name), deployment in deployments.items():
        if flow == "sync" and (flow, name) in SHIPPED:
            targets = deployment.parameter_openapi_schema["properties"]["targets"]
            array = next(o for o in targets["anyOf"] if o.get("type") == "array")
            assert array["items"]["enum"] == (
                ["jira", "confluence", "bitbucket"] if name.startswith("demo-push") else ["jira"]
            ), name

    async def triggers():
        async with get_client() as client:
            return await client.read_resource_related_automations(
                f"prefect.deployment.{deployments[('sync', 'demo-push')].id}"
            )

    (push,) = asyncio.run(triggers())
    assert push.trigger.expect == {"usersync.inbox.changed"}


def test_the_demo_deployment_runs_the_whole_demo_with_nothing_set_up(deployed):
    run = deployed.run("demo", "sandbox")

    assert run.name == "demo-from-push"
    assert run.state.is_completed(), run.state

    async def logs():
        async with get_client() as client:
            return await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
            )

    messages = [log.message for log in asyncio.run(logs())]
    assert "demo: OK" in messages
    assert not any("MISMATCH" in m for m in messages)


def test_the_demo_push_deployment_syncs_the_inbox_into_the_sandbox(deployed):
    jira = deployed.sandbox.emulators["jira"]

    run = deployed.run("sync", "demo-push")

    assert run.name == "sync-demo-push"
    assert run.state.is_completed(), run.state
    assert run.parameters == {"profile": "demo-push", "mode": "delta"}
    created = [r for r in jira.app.writes() if r.method == "POST" and r.path.endswith("/user")]
    assert any(r.body.get("name") == "asmith" for r in created)


def test_a_sync_deployment_refuses_a_run_of_another_profile(deployed):
    emulators = deployed.sandbox.emulators.values()
    requests_before = [len(e.app.requests) for e in emulators]

    run = deployed.run("sync", "demo-push", "profile=demo", "dry_run=true")

    assert run.state.is_failed(), run.state
    assert run.name == "sync-demo-push-refused"  # listed with the deployment's own runs
    assert "deployment 'demo-push' syncs profile 'demo-push' only" in run.state.message
    assert "asked for profile 'demo'" in run.state.message
    assert [len(e.app.requests) for e in emulators] == requests_before


def test_test_connection_and_test_sync_run_from_their_deployments(deployed):
    checked = deployed.run("test-connection", "on-demand", "profile=demo-push")
    previewed = deployed.run("test-sync", "on-demand", "profile=demo", "login=asmith")

    assert checked.name == "test-connection-demo-push"
    assert checked.state.is_completed(), checked.state
    assert previewed.state.is_completed(), previewed.state

    async def artifacts():
        async with get_client() as client:
            return {a.key: a for a in await client.read_latest_artifacts()}

    latest = asyncio.run(artifacts())
    assert "target jira" in latest["test-connection-demo-push"].data
    assert "| display_name | Alice Smith |" in latest["test-sync-demo"].data


def test_configure_offers_each_profiles_targets_and_creates_the_instance_limits(deployed):
    done = subprocess.run(
        [str(Path(sys.executable).with_name("usersync")), "deployments", "configure"],
        cwd=REPO,
        env=deployed.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "deployment sync/demo-push: targets offered as choices" in done.stdout, done.stderr
    # Deployments of profiles this checkout does not have (other tests' own) are only reported.
    assert done.returncode == (1 if ": skipped: " in done.stdout else 0), done.stdout

    async def read():
        async with get_client() as client:
            deployment = await client.read_deployment(
                deployed.deployments[("sync", "demo-push")].id
            )
            limits = await client.read_global_concurrency_limits(limit=200)
        return deployment, {limit.name: limit.limit for limit in limits}

    deployment, limits = asyncio.run(read())
    targets = deployment.parameter_openapi_schema["properties"]["targets"]
    array = next(option for option in targets["anyOf"] if option.get("type") == "array")
    assert array["items"]["enum"] == ["jira", "confluence", "bitbucket"]
    port = deployed.sandbox.url("jira").split("/")[2].split(":")[1]
    assert deployed.sandbox.url("jira") == f"http://127.0.0.1:{port}/jira"
    assert limits[f"usersync-instance-http-127-0-0-1-{port}-jira"] == 1

    # The form refuses a target the profile does not have, before any worker sees the run.
    refused = subprocess.run(
        [PREFECT, "--no-prompt", "deployment", "run", "sync/demo-push", "-p", 'targets=["nope"]'],
        cwd=REPO,
        env=deployed.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert "nope" in refused.stdout + refused.stderr


def test_a_run_carries_its_profile_and_dry_run_tags_from_the_moment_it_is_created(deployed):
    async def create_and_read():
        async with get_client() as client:
            created = await client.create_flow_run_from_deployment(
                deployed.deployments[("sync", "example-ldap-dry-run")].id
            )
            try:
                return (await client.read_flow_run(created.id)).tags
            finally:  # never started: no worker of this session may pick it up
                await client.delete_flow_run(created.id)

    tags = asyncio.run(create_and_read())
    assert {"dry-run", "profile:example-ldap"} <= set(tags)


def test_a_dry_run_deployment_refuses_a_real_run(deployed):
    emulators = deployed.sandbox.emulators.values()
    requests_before = [len(e.app.requests) for e in emulators]

    run = deployed.run("sync", "example-ldap-dry-run", "dry_run=false")

    assert run.state.is_failed(), run.state
    assert "makes dry runs only" in run.state.message
    assert [len(e.app.requests) for e in emulators] == requests_before


def test_a_worker_elsewhere_finds_the_code_and_settings_at_run_time(deployed, tmp_path):
    """A second worker, started in another directory without USERSYNC_HOME or the store in
    its environment: the pull step reads them from Prefect variables when the run starts."""
    worker_env = {
        k: v
        for k, v in deployed.env.items()
        if k not in ("USERSYNC_HOME", "USERSYNC_STORE_URL", "USERSYNC_MAPPINGS_DIR")
    }
    prefect_cli("variable", "set", "usersync_home", str(REPO), "--overwrite", env=deployed.env)
    prefect_cli(
        "variable",
        "set",
        "usersync_store_url",
        deployed.env["USERSYNC_STORE_URL"],
        "--overwrite",
        env=deployed.env,
    )
    try:
        run = deployed.run(
            "sync",
            "demo-push",
            "dry_run=true",
            worker_env=worker_env,
            worker_cwd=tmp_path,
        )
    finally:
        for name in ("usersync_home", "usersync_store_url"):
            prefect_cli("variable", "unset", name, env=deployed.env)

    assert run.state.is_completed(), run.state
    assert run.name == "sync-demo-push-dry-run"
    # The run used the variables' store (where the demo-push inbox holds the sample).
    store = Store.open(deployed.env["USERSYNC_STORE_URL"])
    assert any(r == str(run.id) for r in store.runs("demo-push")["flow_run_id"])
    store.close()
