"""Every exchange of an end-to-end test is checked against the products' descriptions.

tests/e2e/conftest.py records what each sandbox product was asked and answered during a test
and checks each exchange against the description of that product and version: a sync of the
three products conforms, and one request no description declares is found, naming the
parameter.
"""

from __future__ import annotations

import pytest
from usersync_sandbox.push import push_sample

from tests.conformance.checking import SKIP_REASON, specs_available
from tests.e2e.products import PRODUCTS, products_world, rest, sync_all

pytestmark = pytest.mark.skipif(not specs_available(), reason=SKIP_REASON)


def test_a_sync_of_every_product_is_checked_exchange_by_exchange(
    tmp_path, monkeypatch, exchange_recordings
) -> None:
    with products_world(tmp_path, monkeypatch) as world:
        push_sample(world["inbox"], world["token"])
        first = sync_all(world["store"])
        second = sync_all(world["store"])
    assert all(first[p].counts().get("create_user") for p in PRODUCTS)
    assert all(second[p].counts() == {} for p in PRODUCTS)
    reports = exchange_recordings.reports(tally=False)  # the teardown tallies them once
    assert sorted(r.product for r in reports) == sorted(PRODUCTS)
    for report in reports:
        assert report.checked > 20, report
        assert not report.violations, report.describe()


def test_a_request_no_description_declares_is_found(
    tmp_path, monkeypatch, exchange_recordings
) -> None:
    with products_world(tmp_path, monkeypatch) as world:
        asked = rest(world, "jira", "/user", username="admin", nickname="boss")
    assert asked.status_code == 200  # the emulator answers; the description has no `nickname`
    (jira,) = [r for r in exchange_recordings.reports(tally=False) if r.product == "jira"]
    assert [v.name for v in jira.violations] == ["nickname"], jira.describe()
    exchange_recordings.forget()  # on purpose: not a finding of the session
