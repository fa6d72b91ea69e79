"""Shared by the end-to-end tests that push into a real SCIM inbox and sync all three sandbox
products through the engine's steps: the world (inbox, products, a profile copied from the
shipped `demo-push`), one sync of every target, and readers of the products' REST APIs.
Every exchange of the products is checked against their descriptions (tests/e2e/conftest.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from usersync_sandbox.serve import Sandbox
from usersync_sandbox.server import serve

from usersync import sync
from usersync.inbox import InboxApp, issue_token
from usersync.store import Store

PROFILE = "push-e2e"
SHIPPED = Path(__file__).resolve().parents[2] / "mappings" / "demo-push"
PASSWORD = "sandbox-admin-pw"
PRODUCTS = ("jira", "confluence", "bitbucket")


@contextmanager
def products_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A real inbox and the three sandbox products; the profile `PROFILE` (a copy of
    demo-push: edit its files under `world["profile_dir"]`) syncs the inbox into them."""
    mappings = tmp_path / "mappings"
    shutil.copytree(SHIPPED, mappings / PROFILE)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store.open(store_url)
    token = issue_token(store.engine, PROFILE).token
    with Sandbox(admin_password=PASSWORD) as sandbox, serve(InboxApp(store.engine)) as inbox:
        monkeypatch.setenv("USERSYNC_MAPPINGS_DIR", str(mappings))
        monkeypatch.setenv("USERSYNC_STORE_URL", store_url)
        for product in PRODUCTS:
            monkeypatch.setenv(f"USERSYNC_DEMO_{product.upper()}_URL", sandbox.url(product))
            monkeypatch.setenv(f"USERSYNC_DEMO_{product.upper()}_PASSWORD", PASSWORD)
        yield {
            "store": store,
            "sandbox": sandbox,
            "inbox": f"{inbox}/scim/v2/{PROFILE}",
            "token": token,
            "profile_dir": mappings / PROFILE,
        }
    store.close()


def sync_all(
    store: Store, products: tuple[str, ...] = PRODUCTS, *, mode: str = "reconcile"
) -> dict[str, sync.TargetPlan]:
    """One sync of these targets through the engine's steps (a reconcile or a delta run); the
    plans it carried out (every operation must succeed)."""
    loaded = sync.prepare_profile(PROFILE)
    snapshot = sync.extract(loaded)
    plans = {}
    for name in products:
        desired = sync.transform(loaded, snapshot, name)
        with sync.open_target_for(loaded, name) as target:
            plan = sync.plan_target_sync(loaded, name, target, desired, store, mode=mode)
            run_id = store.start_run(PROFILE, name, dry_run=False)
            store.record_plan(run_id, plan.plan)
            result = sync.load_target_sync(loaded, target, plan, store, run_id)
        assert result.status == "succeeded", (name, result.outcomes)
        plans[name] = plan
    return plans


def rest(world: dict[str, Any], product: str, path: str, **params: Any) -> httpx.Response:
    """GET a product's REST path as its administrator."""
    roots = {"jira": "/rest/api/2", "confluence": "/rest/api", "bitbucket": "/rest/api/1.0"}
    return httpx.get(
        world["sandbox"].url(product) + roots[product] + path,
        params=params,
        auth=("admin", PASSWORD),
        timeout=10,
    )


def members(world: dict[str, Any], product: str, group: str) -> set[str]:
    """Usernames in a product's group, read over REST (empty for a missing group)."""
    if product == "jira":
        response = rest(
            world, product, "/group/member", groupname=group, includeInactiveUsers="true"
        )
        key, name = "values", "name"
    elif product == "confluence":
        response = rest(world, product, f"/group/{group}/member", limit=200)
        key, name = "results", "username"
    else:
        response = rest(world, product, "/admin/groups/more-members", context=group, limit=100)
        key, name = "values", "name"
    if response.status_code == 404:
        return set()
    return {m[name] for m in response.raise_for_status().json()[key]}
