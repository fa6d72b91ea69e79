"""prefect.yaml for real: deploy every profile's deployment, then run one ad hoc through a worker.

This is what an admin does: `prefect deploy --all`, `prefect deployment run ... -p ...`, and a
process worker picks the run up. It runs against the session's Prefect test server.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import get_current_settings

from usersync.sandbox.serve import Sandbox
from usersync.sandbox.slapd import SlapdServer

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def prefect_cli(*args: str, env: dict[str, str], timeout: float = 240) -> str:
    done = subprocess.run(
        [PREFECT, "--no-prompt", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_deploy_all_and_run_the_demo_deployment_ad_hoc(tmp_path):
    settings = get_current_settings()
    password = "deploy-test"
    with SlapdServer.for_demo() as directory, Sandbox(admin_password=password) as sandbox:
        env = {
            **os.environ,
            "PREFECT_API_URL": str(settings.api.url),
            "USERSYNC_HOME": str(REPO),
            "USERSYNC_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}",
            "USERSYNC_DEMO_LDAP_URL": directory.url,
            "USERSYNC_DEMO_LDAP_PASSWORD": directory.admin_password,
        }
        for product in ("jira", "confluence", "bitbucket"):
            env[f"USERSYNC_DEMO_{product.upper()}_URL"] = sandbox.url(product)
            env[f"USERSYNC_DEMO_{product.upper()}_PASSWORD"] = password
        env.pop("USERSYNC_MAPPINGS_DIR", None)

        prefect_cli("work-pool", "create", "usersync", "--type", "process", env=env)
        prefect_cli("deploy", "--all", env=env)

        async def deployments():
            async with get_client() as client:
                return {d.name: d for d in await client.read_deployments()}

        deployed = asyncio.run(deployments())
        assert {"demo", "example-ldap"} <= set(deployed)
        for deployment in deployed.values():
            assert deployment.global_concurrency_limit is not None, deployment.name
            assert deployment.global_concurrency_limit.limit == 1
            assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
            assert deployment.entrypoint == "flows/sync.py:sync"
        assert [s.schedule.cron for s in deployed["example-ldap"].schedules] == ["15 * * * *"]

        prefect_cli("deployment", "run", "sync/demo", "-p", "dry_run=true", env=env)
        prefect_cli("worker", "start", "--pool", "usersync", "--run-once", env=env, timeout=300)

        async def demo_runs():
            async with get_client() as client:
                runs = await client.read_flow_runs()
                return [r for r in runs if r.deployment_id == deployed["demo"].id]

        (run,) = asyncio.run(demo_runs())
        assert run.name == "sync-demo-dry-run"
        assert run.state.is_completed(), run.state
        assert run.parameters == {"profile": "demo", "dry_run": True}
        assert sandbox.emulators["jira"].app.writes() == []  # a dry run, through a worker
        assert (
            any(r.path.endswith("/rest/api/2/user") for r in sandbox.emulators["jira"].app.requests)
            or sandbox.emulators["jira"].app.requests
        )
