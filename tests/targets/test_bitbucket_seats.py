"""Bitbucket licence seats and an account's groups, against the emulator over real HTTP."""

from __future__ import annotations

import httpx
import pytest

from tests.targets.harness_bitbucket import environment
from usersync.errors import TargetError
from usersync.http import ApiClient
from usersync.targets.base import Seats
from usersync.targets.bitbucket import BitbucketTarget


def test_unlimited_licence_has_no_seat_limit() -> None:
    with environment() as env:
        assert env.target.licence_seats() == Seats(None)


def test_limited_licence_reads_free_seats_from_the_licence() -> None:
    with environment(licensed_users=5) as env:
        # The admin and the non-admin account of the harness hold a licence already.
        assert env.target.licence_seats() == Seats(3, limit=5, used=2)
        env.target.create_user("carla", "carla@example.com", "Carla")
        assert env.target.licence_seats() == Seats(2, limit=5, used=3)


def test_past_the_limit_bitbucket_refuses_the_licence_and_the_client_says_so() -> None:
    with environment(licensed_users=3) as env:
        env.target.create_user("carla", "carla@example.com", "Carla")
        assert env.target.licence_seats().free == 0
        with pytest.raises(TargetError, match="licensed user limit"):
            env.target.create_user("dave", "dave@example.com", "Dave")
        # The account is made, then its licence refused: it exists without access. (This is
        # why the seat guard holds creations back before any request.)
        assert env.emulator.effective_permission("dave") is None


def test_a_licence_the_credentials_cannot_read_is_unknown() -> None:
    with environment(licensed_users=5) as env:
        seats = env.make_target(credentials="user").licence_seats()
        assert seats.known is False and seats.free is None
        assert "licence not readable" in seats.detail


def test_every_group_of_an_account() -> None:
    with environment() as env:
        for i in range(12):  # more than a page
            env.emulator.seed_group(f"team-{i:02d}")
        env.emulator.seed_user(
            "many", "many@example.com", "Many", groups=[f"team-{i:02d}" for i in range(12)]
        )
        found = env.target.read_user_groups(["many", "nobody"])
        assert set(zip(found["username"], found["group"], strict=True)) == {
            ("many", f"team-{i:02d}") for i in range(12)
        }


def test_a_limit_of_minus_one_is_unlimited_and_an_unreadable_one_is_unknown() -> None:
    def licence(body: dict) -> Seats:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
        client = ApiClient("bitbucket 'bb'", "https://bb.example/rest/api/1.0", transport=transport)
        with BitbucketTarget("bb", client) as target:
            return target.licence_seats()

    minus_one = licence({"maximumNumberOfUsers": -1, "status": {"currentNumberOfUsers": 3}})
    assert minus_one == Seats(None)
    unknown = licence({"maximumNumberOfUsers": "?", "status": {"currentNumberOfUsers": 3}})
    assert not unknown.known and unknown.free is None
