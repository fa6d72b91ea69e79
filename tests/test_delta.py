"""Delta runs (issue 26) in the cases the lifecycle state machine found or stands guard over,
end to end: push into a real SCIM inbox, sync the three sandbox products through the engine's
steps, read them back over REST.

The oracle is the source as pushed and the lifecycle rules: deprovisioning wins over
rejection (a managed account whose source user is disabled or gone is inactive, also when that
user is rejected now), and no leaver is left active after a delta run that saw them leave.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from usersync_sandbox.push import SampleUser, ScimPusher

from tests.e2e.products import PRODUCTS, products_world, sync_all
from tests.e2e.test_delta_runs import account

PEOPLE = [
    SampleUser(f"user{i:02d}", f"Given{i}", f"Family{i}", f"user{i:02d}@example.org")
    for i in range(4)
]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with products_world(tmp_path, monkeypatch) as world:
        with ScimPusher(world["inbox"], world["token"]) as pusher:
            for person in PEOPLE:
                pusher.push_user(person)
            pusher.push_group("engineering")
            pusher.add_members("engineering", [p.user_name for p in PEOPLE])
        yield world


def test_a_rejected_user_who_leaves_is_deactivated_by_the_next_delta_run(world) -> None:
    sync_all(world["store"], mode="reconcile")
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        # no e-mail any more: rejected, and a live rejected user's account keeps what it has
        pusher.push_user(SampleUser("user02", "Given2", "Family2", ""))
    sync_all(world["store"], mode="delta")
    for product in PRODUCTS:
        assert account(world, product, "user02")["active"] is True

    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.set_active("user02", False)
    plans = sync_all(world["store"], mode="delta")

    for product in PRODUCTS:
        assert account(world, product, "user02")["active"] is False, (
            product,
            plans[product].mode,
            plans[product].counts(),
        )
        assert account(world, product, "user01")["active"] is True
