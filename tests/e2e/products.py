"""Shared by the end-to-end tests that push into a real SCIM inbox and sync all three sandbox
products through the engine's steps: the world (inbox, products, a profile copied from the
shipped `demo-push`), one sync of every target, and readers of the products' REST APIs.

The world records every exchange the products had (the clients' and the tests' own reads) and,
when the test body ends without an error, checks each against the description of that product
and version (`tests.conformance`): a test whose exchanges do what no description declares,
apart from the named reliances, fails with the list. Injected faults are not checked.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from usersync_sandbox.faults import Exchange
from usersync_sandbox.serve import Sandbox
from usersync_sandbox.server import serve

from tests.conformance.checking import Report, check, specs_available
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
    exchanges = ExchangeLog()
    with (
        Sandbox(admin_password=PASSWORD, recorder=exchanges.keep) as sandbox,
        serve(InboxApp(store.engine)) as inbox,
    ):
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
            "exchanges": exchanges,
        }
        # Reached only when the test body passed: a failing test reports its own error.
        exchanges.assert_conform(sandbox)
    store.close()


class ExchangeLog:
    """Every exchange of every product of a `Sandbox` (its `recorder`; uvicorn answers in
    threads of its own, hence the lock)."""

    def __init__(self) -> None:
        self.by_product: dict[str, list[Exchange]] = {}
        #: False keeps the reports out of the session's conformance figures (a test that
        #: sends an undeclared request on purpose)
        self.tally = True
        self._lock = threading.Lock()

    def keep(self, product: str, exchange: Exchange) -> None:
        with self._lock:
            self.by_product.setdefault(product, []).append(exchange)

    def reports(self, sandbox: Sandbox) -> list[Report]:
        """One conformance report per product that had exchanges."""
        with self._lock:
            recorded = {p: list(e) for p, e in self.by_product.items()}
        reports = []
        for product, exchanges in sorted(recorded.items()):
            emulator = sandbox.emulators[product]
            reports.append(
                check(
                    product,
                    emulator.version,
                    emulator.context_path,
                    exchanges,
                    tally=self.tally,
                )
            )
        return reports

    def assert_conform(self, sandbox: Sandbox) -> None:
        """Fail with every exchange no description declares (nothing to check without the
        descriptions beside the repository)."""
        if not specs_available():
            return
        failing = [r for r in self.reports(sandbox) if r.violations]
        assert not failing, "\n".join(f"{r.product} {r.version}: {r.describe()}" for r in failing)


def sync_all(store: Store, products: tuple[str, ...] = PRODUCTS) -> dict[str, sync.TargetPlan]:
    """One sync of these targets through the engine's steps; the plans it carried out (every
    operation must succeed)."""
    loaded = sync.prepare_profile(PROFILE)
    snapshot = sync.extract(loaded)
    plans = {}
    for name in products:
        desired = sync.transform(loaded, snapshot, name)
        with sync.open_target_for(loaded, name) as target:
            plan = sync.plan_target_sync(loaded, name, target, desired, store)
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
