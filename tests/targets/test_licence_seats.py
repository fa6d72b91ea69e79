"""Licence seats, per product, against the emulators over real HTTP.

What a client reads as the licence's headroom (`Target.licence_seats`: limited, unlimited, or
unknown when the product will not say), what each emulator refuses past the limit as the
product does, and that the client surfaces a refusal as a `TargetLicenceError` naming the
licence. Jira: seats are per application role, taken by the active members of the groups
granting it; a new account past the limit is created without access, and adding it to a
role's group is refused. Confluence: one user limit, read from `/rest/license/1.0/license`,
and a create past it answers 402.
"""

from __future__ import annotations

import httpx
import pytest
from usersync_sandbox.jira import DEFAULT_ROLE, DEFAULT_ROLE_GROUP

from tests.targets import harness_confluence, harness_jira
from usersync.errors import TargetLicenceError
from usersync.targets.base import Seats
from usersync.targets.confluence import ConfluenceTarget
from usersync.targets.jira import JiraTarget

# -- Jira ------------------------------------------------------------------------------------


def seed_jira_holders(env, *names: str, active: bool = True) -> None:
    """Accounts in jira-software-users (seeded directly: no seat check)."""
    for name in names:
        env.emulator.seed_user(name, f"{name}@example.com", name.title(), active=active)
    env.emulator.seed_group(DEFAULT_ROLE_GROUP, members=names)


def jira_roles_of(env, username: str) -> list[str]:
    """The application roles Jira shows for an account (`expand=applicationRoles`)."""
    answer = httpx.get(
        f"{env.target.url}/rest/api/2/user",
        params={"username": username, "expand": "applicationRoles"},
        auth=harness_jira.ADMIN,
    )
    answer.raise_for_status()
    return [r["key"] for r in answer.json()["applicationRoles"]["items"]]


def test_jira_seats_are_the_roles_limit_less_its_active_users() -> None:
    with harness_jira.environment(seats=5) as env:
        seed_jira_holders(env, "ann", "bob")
        seed_jira_holders(env, "gone", active=False)  # deactivated: takes no seat
        env.emulator.app.clear_log()

        seats = env.target.licence_seats()

        assert (seats.free, seats.limit, seats.used, seats.known) == (3, 5, 2, True)
        assert "jira-software" in seats.detail
        assert [(r.method, r.path) for r in env.emulator.app.requests] == [
            ("GET", "/jira/rest/api/2/applicationrole")
        ]


@pytest.mark.parametrize(
    ("role", "free"),
    [
        # the Jira DC example of wiki.resolution.de's licence monitoring page: a limit is given,
        # so it is taken whatever hasUnlimitedSeats says (the cautious reading)
        ({"numberOfSeats": 500, "remainingSeats": 210, "hasUnlimitedSeats": True}, 210),
        ({"numberOfSeats": -1, "remainingSeats": -1, "hasUnlimitedSeats": True}, None),
        ({"numberOfSeats": 10, "userCount": 4}, 6),  # no remainingSeats: the limit less the users
        ({"numberOfSeats": 10, "remainingSeats": -3, "userCount": 13}, 0),
    ],
)
def test_jira_seat_figures_as_sites_spell_them(role: dict, free: int | None) -> None:
    answer = [{"key": "jira-core", "defined": True, "selectedByDefault": True, **role}]
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    with JiraTarget("jira", "https://jira.example", token="t", transport=transport) as target:
        assert target.licence_seats().free == free


def test_jira_unlimited_role_has_no_seat_limit() -> None:
    with harness_jira.environment() as env:
        seats = env.target.licence_seats()

        assert seats.free is None and seats.known


def test_jira_seats_are_unknown_to_an_account_that_may_not_read_the_roles() -> None:
    with harness_jira.environment(seats=5) as env:
        seats = env.make_target(credentials="user").licence_seats()

        assert seats == Seats(None, known=False, detail=seats.detail)
        assert "403" in seats.detail and "Jira Administrators" in seats.detail


def test_jira_site_over_its_limit_has_no_free_seat_not_a_negative_number() -> None:
    with harness_jira.environment(seats=1) as env:
        seed_jira_holders(env, "ann", "bob")

        seats = env.target.licence_seats()

        assert (seats.free, seats.limit, seats.used) == (0, 1, 2)


def test_jira_free_seats_are_the_fewest_of_the_roles_a_new_account_gets() -> None:
    with harness_jira.environment(seats=10) as env:
        env.emulator.add_application_role(
            "jira-servicedesk", "Jira Service Management", ["jsm-agents"], selected_by_default=True
        )
        env.emulator.set_seats("jira-servicedesk", 2)
        # not given to new accounts: its empty seats do not limit creations
        env.emulator.add_application_role(
            "jira-product-discovery", "Jira Product Discovery", ["jpd-creators"], seats=0
        )

        seats = env.target.licence_seats()

        assert (seats.free, seats.limit, seats.used) == (2, 2, 0)
        assert "jira-servicedesk" in seats.detail and "jira-software" in seats.detail


def test_jira_new_account_takes_a_seat_while_one_is_free() -> None:
    with harness_jira.environment(seats=2) as env:
        seed_jira_holders(env, "ann")

        env.target.create_user("newcomer", "new@example.com", "New Comer")

        assert env.emulator.group_members(DEFAULT_ROLE_GROUP) == {"ann", "newcomer"}
        assert jira_roles_of(env, "newcomer") == [DEFAULT_ROLE]
        assert env.target.licence_seats().free == 0


def test_jira_full_role_creates_the_account_without_access_and_refuses_the_group() -> None:
    with harness_jira.environment(seats=1) as env:
        seed_jira_holders(env, "ann")

        env.target.create_user("newcomer", "new@example.com", "New Comer")

        # Jira creates the account, but it gets no application access and takes no seat.
        assert env.emulator.user("newcomer") is not None
        assert jira_roles_of(env, "newcomer") == []
        assert env.emulator.group_members(DEFAULT_ROLE_GROUP) == {"ann"}

        with pytest.raises(TargetLicenceError) as caught:
            env.target.add_member(DEFAULT_ROLE_GROUP, "newcomer")

        message = str(caught.value)
        assert "licence is full" in message
        assert "newcomer" in message and DEFAULT_ROLE_GROUP in message
        assert caught.value.status == 400
        assert env.emulator.group_members(DEFAULT_ROLE_GROUP) == {"ann"}


def test_jira_group_that_grants_no_role_takes_no_seat() -> None:
    with harness_jira.environment(seats=0) as env:
        env.target.create_user("newcomer", "new@example.com", "New Comer")
        env.emulator.seed_group("wiki-readers")

        env.target.add_member("wiki-readers", "newcomer")

        assert env.emulator.group_members("wiki-readers") == {"newcomer"}


def test_jira_account_holding_the_role_already_joins_another_of_its_groups() -> None:
    with harness_jira.environment() as env:
        env.emulator.add_application_role(
            "jira-servicedesk", "Jira Service Management", ["jsm-agents", "jsm-leads"], seats=1
        )
        env.emulator.seed_user("ann", "ann@example.com", "Ann")
        env.emulator.seed_group("jsm-agents", members=["ann"])

        env.target.add_member("jsm-leads", "ann")  # counted once: no second seat

        assert env.emulator.group_members("jsm-leads") == {"ann"}
        assert env.emulator.role_users("jira-servicedesk") == {"ann"}


def test_jira_deactivation_frees_the_seat_it_held() -> None:
    with harness_jira.environment(seats=1) as env:
        seed_jira_holders(env, "leaver")
        env.target.create_user("newcomer", "new@example.com", "New Comer")
        assert env.target.licence_seats().free == 0

        env.target.deactivate_user("leaver")

        assert env.target.licence_seats().free == 1
        env.target.add_member(DEFAULT_ROLE_GROUP, "newcomer")
        assert env.emulator.role_users(DEFAULT_ROLE) == {"newcomer"}


def test_jira_without_a_seat_limit_puts_new_accounts_in_the_default_role_group() -> None:
    # As Jira does for a user created without applicationKeys: the default groups of the
    # roles selected by default; usersync plans that membership as present.
    with harness_jira.environment() as env:
        env.target.create_user("newcomer", "new@example.com", "New Comer")

        assert DEFAULT_ROLE_GROUP in env.emulator.group_names
        assert jira_roles_of(env, "newcomer") == [DEFAULT_ROLE]
        assert env.target.groups_of_new_accounts() == {DEFAULT_ROLE_GROUP}


# -- Confluence ------------------------------------------------------------------------------

#: the harness seeds the admin and a plain user: both active, both counted
CONFLUENCE_SEEDED = 2


def test_confluence_seats_are_the_limit_less_the_active_users() -> None:
    with harness_confluence.environment(license_limit=5) as env:
        env.emulator.seed_user("gone", "gone@example.com", "Gone", active=False)
        env.emulator.app.clear_log()

        seats = env.target.licence_seats()

        assert (seats.free, seats.limit, seats.used, seats.known) == (3, 5, CONFLUENCE_SEEDED, True)
        assert [r.path for r in env.emulator.app.requests] == [
            "/confluence/rest/license/1.0/license/maxUsers",
            "/confluence/rest/license/1.0/license/userCount",
        ]
        assert env.emulator.app.writes() == []


def test_confluence_unlimited_licence_is_read_in_one_request() -> None:
    with harness_confluence.environment() as env:
        env.emulator.app.clear_log()

        seats = env.target.licence_seats()

        assert seats.free is None and seats.known
        assert len(env.emulator.app.requests) == 1


@pytest.mark.parametrize(
    ("options", "credentials", "status"),
    [({"license_resource": False}, "admin", "404"), ({}, "user", "403")],
    ids=["resource-absent", "not-an-administrator"],
)
def test_confluence_seats_are_unknown_where_the_licence_resource_will_not_answer(
    options: dict, credentials: str, status: str
) -> None:
    with harness_confluence.environment(license_limit=5, **options) as env:
        seats = env.make_target(credentials=credentials).licence_seats()

        assert seats.free is None and not seats.known
        assert status in seats.detail and "maxUsers" in seats.detail


def test_confluence_site_over_its_limit_has_no_free_seat() -> None:
    with harness_confluence.environment(license_limit=3) as env:
        for name in ("ann", "bob"):
            env.emulator.seed_user(name, f"{name}@example.com", name.title())

        seats = env.target.licence_seats()

        assert (seats.free, seats.limit, seats.used) == (0, 3, 4)


def test_confluence_refuses_the_create_past_the_limit_as_a_licence_error() -> None:
    with harness_confluence.environment(license_limit=CONFLUENCE_SEEDED + 1) as env:
        env.target.create_user("first", "first@example.com", "First")
        assert env.target.licence_seats().free == 0

        with pytest.raises(TargetLicenceError) as caught:
            env.target.create_user("second", "second@example.com", "Second")

        assert caught.value.status == 402
        assert "licence is full" in str(caught.value)
        assert "second" not in env.emulator.users


def test_confluence_disabled_account_frees_its_seat() -> None:
    with harness_confluence.environment(license_limit=CONFLUENCE_SEEDED + 1) as env:
        env.target.create_user("leaver", "leaver@example.com", "Leaver")

        env.target.deactivate_user("leaver")

        assert env.target.licence_seats().free == 1
        env.target.create_user("newcomer", "new@example.com", "New Comer")
        assert env.emulator.users["newcomer"].active


def test_confluence_json_rpc_create_past_the_limit_is_a_licence_error() -> None:
    # Sites before 8.4 create users through JSON-RPC, which reports the refusal in HTTP 200.
    with harness_confluence.environment(version="8.1.0", license_limit=CONFLUENCE_SEEDED) as env:
        with pytest.raises(TargetLicenceError) as caught:
            env.target.create_user("newcomer", "new@example.com", "New Comer")

        assert "licence is full" in str(caught.value)
        assert "newcomer" not in env.emulator.users


# -- every plausible reading of a licence figure (issue 22) -----------------------------------


@pytest.mark.parametrize("max_users", [2**31 - 1, -1], ids=["MAX_VALUE", "minus-one"])
def test_confluence_unlimited_licence_is_read_whichever_marker_it_uses(max_users: int) -> None:
    with harness_confluence.environment(unlimited_max_users=max_users) as env:
        seats = env.target.licence_seats()

        assert seats.known and seats.free is None


@pytest.mark.parametrize(
    ("answers", "known", "free"),
    [
        ({"maxUsers": {"count": "25"}, "userCount": {"count": 5}}, True, 20),
        ({"maxUsers": {"count": 2**63 - 1}}, True, None),
        ({"maxUsers": {"unlimited": True}}, True, None),
        ({"maxUsers": {"count": "lots"}}, False, None),
        ({"maxUsers": {"count": None}}, False, None),
        ({"maxUsers": {"count": 10}, "userCount": {"count": True}}, False, None),
    ],
    ids=["string-number", "long-max", "flag", "text", "null", "boolean-count"],
)
def test_confluence_licence_figures_never_become_zero_by_guess(
    answers: dict, known: bool, free: int | None
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        figure = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, json=answers.get(figure, {}))

    transport = httpx.MockTransport(answer)
    with ConfluenceTarget("wiki", "https://wiki.example", token="t", transport=transport) as target:
        seats = target.licence_seats()

    assert (seats.known, seats.free) == (known, free)
    if not known:
        assert "cannot read" in seats.detail or "no count" in seats.detail


@pytest.mark.parametrize(
    ("role", "known", "free"),
    [
        ({"numberOfSeats": 2**31 - 1, "userCount": 4}, True, None),
        ({"numberOfSeats": "10", "userCount": "4"}, True, 6),
        ({"numberOfSeats": "many"}, False, None),
    ],
    ids=["max-value", "strings", "text"],
)
def test_jira_seat_figures_in_every_plausible_form(role: dict, known: bool, free) -> None:
    answer = [{"key": "jira-core", "defined": True, "selectedByDefault": True, **role}]
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    with JiraTarget("jira", "https://jira.example", token="t", transport=transport) as target:
        seats = target.licence_seats()
    assert (seats.known, seats.free) == (known, free)
