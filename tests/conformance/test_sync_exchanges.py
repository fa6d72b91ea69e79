"""Four syncs of all three products, every exchange checked against Atlassian's descriptions.

For each supported version of each product (three combinations cover them all: the oldest of
each, the middle ones, the newest), the sample people are pushed into a real SCIM inbox as
miniOrange would, Test Connection runs on each target, and the engine syncs the three sandbox
products four times: the first provisions, the second plans nothing, the third carries a new
person, a deactivation and a membership removal, the fourth plans nothing. Every request the
clients sent and every answer the sandbox gave is recorded and checked against the
description of that product and version (`descriptions`): 0 violations, apart from the named
`reliances`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from usersync_sandbox.faults import Exchange
from usersync_sandbox.push import SampleUser, ScimPusher, push_sample
from usersync_sandbox.serve import Sandbox
from usersync_sandbox.server import serve

from tests.conformance.checking import SKIP_REASON, check, specs_available
from tests.e2e.products import PASSWORD, PRODUCTS, PROFILE, SHIPPED, sync_all
from tests.targets.conftest import SUPPORTED_VERSIONS
from usersync import sync
from usersync.inbox import InboxApp, issue_token
from usersync.store import Store

pytestmark = pytest.mark.skipif(not specs_available(), reason=SKIP_REASON)

#: Each supported version in at least one combination: the i-th oldest of every product (its
#: newest when it has fewer).
COMBINATIONS = [
    {p: SUPPORTED_VERSIONS[p][min(i, len(SUPPORTED_VERSIONS[p]) - 1)] for p in PRODUCTS}
    for i in range(max(len(v) for v in SUPPORTED_VERSIONS.values()))
]
NEWCOMER = SampleUser("nina.newcomer", "Nina", "Newcomer", "nina.newcomer@example.com")


@pytest.fixture(params=COMBINATIONS, ids=lambda c: "-".join(f"{p}{v}" for p, v in c.items()))
def world(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    versions: dict[str, str] = request.param
    mappings = tmp_path / "mappings"
    shutil.copytree(SHIPPED, mappings / PROFILE)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store.open(store_url)
    token = issue_token(store.engine, PROFILE).token
    exchanges: dict[str, list[Exchange]] = {p: [] for p in PRODUCTS}

    def keep(product: str, exchange: Exchange) -> None:
        exchanges[product].append(exchange)

    with (
        Sandbox(admin_password=PASSWORD, versions=versions, recorder=keep) as sandbox,
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
            "versions": versions,
            "exchanges": exchanges,
        }
    store.close()


def test_four_syncs_send_and_answer_only_what_the_descriptions_declare(world) -> None:
    sandbox = world["sandbox"]
    sample = push_sample(world["inbox"], world["token"])
    # A hand-made account the IdP also has (adopted), and one it does not (left alone).
    someone = sorted(sample)[0]
    sandbox.emulators["jira"].seed_user(someone, f"{someone}@example.com", "Hand Made")
    sandbox.emulators["jira"].seed_user("contractor", "contractor@example.com", "Contractor")
    loaded = sync.prepare_profile(PROFILE)
    for product in PRODUCTS:
        with sync.open_target_for(loaded, product) as target:
            assert target.check().ok, product

    first = sync_all(world["store"])
    second = sync_all(world["store"])
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.push_user(NEWCOMER)
        leaver = sorted(sample)[-1]
        pusher.set_active(leaver, False)
    third = sync_all(world["store"])
    fourth = sync_all(world["store"])

    for product in PRODUCTS:
        assert first[product].counts().get("create_user"), product
        assert second[product].counts() == {}, product
        assert third[product].counts().get("create_user") == 1, product
        assert fourth[product].counts() == {}, product
    for product, version in world["versions"].items():
        emulator = sandbox.emulators[product]
        assert emulator.version == version
        report = check(product, version, emulator.context_path, world["exchanges"][product])
        assert report.checked > 20, (product, report)
        assert not report.violations, report.describe()
