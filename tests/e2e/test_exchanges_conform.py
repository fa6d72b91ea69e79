"""Every exchange of an end-to-end world is checked against the products' descriptions.

`products_world` records what each sandbox product was asked and answered and, when the test
body passes, checks each exchange against the description of that product and version: a sync
of the three products conforms, and one request no description declares fails the test that
made it, naming the parameter.
"""

from __future__ import annotations

import pytest
from usersync_sandbox.push import push_sample

from tests.conformance.checking import SKIP_REASON, specs_available
from tests.e2e.products import PRODUCTS, products_world, rest, sync_all

pytestmark = pytest.mark.skipif(not specs_available(), reason=SKIP_REASON)


def test_a_sync_of_every_product_is_checked_exchange_by_exchange(tmp_path, monkeypatch) -> None:
    with products_world(tmp_path, monkeypatch) as world:
        push_sample(world["inbox"], world["token"])
        first = sync_all(world["store"])
        second = sync_all(world["store"])
        reports = world["exchanges"].reports(world["sandbox"])
    assert all(first[p].counts().get("create_user") for p in PRODUCTS)
    assert all(second[p].counts() == {} for p in PRODUCTS)
    assert sorted(r.product for r in reports) == sorted(PRODUCTS)
    for report in reports:
        assert report.checked > 20, report
        assert not report.violations, report.describe()


def test_a_request_no_description_declares_fails_the_test_that_sent_it(
    tmp_path, monkeypatch
) -> None:
    undeclared = r"jira .*GET /api/2/user.*\[nickname\]"
    with (
        pytest.raises(AssertionError, match=undeclared),
        products_world(tmp_path, monkeypatch) as world,
    ):
        world["exchanges"].tally = False  # on purpose: not a finding of the session
        asked = rest(world, "jira", "/user", username="admin", nickname="boss")
        # the emulator answers (a wrong answer would fail the match above); the description
        # does not declare the parameter
        assert asked.status_code == 200
