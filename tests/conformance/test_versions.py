"""Each supported version as its description declares it, and each violation found gone.

The sandbox products are driven over real HTTP at every supported version: what differs per
version (Jira's `user/search` window and `user/list`, Confluence's query form of the member
list, Bitbucket's `createdTimestamp`) is what the user sees, and every exchange of each test
is checked against that version's description. One test per violation the issue's reviewer
found proves it gone: what the client sends (Jira's `notification`, `/mypermissions`,
Confluence's member-list query) and what the sandbox answers (Confluence's group creation,
Jira's project update, Confluence's members of a missing group).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.conformance.checking import SKIP_REASON, Recording, specs_available
from tests.targets import harness_bitbucket, harness_confluence, harness_jira
from tests.targets.conftest import SUPPORTED_VERSIONS, TargetEnv
from usersync.errors import TargetRejectedError

pytestmark = pytest.mark.skipif(not specs_available(), reason=SKIP_REASON)

HARNESSES = {"jira": harness_jira, "confluence": harness_confluence, "bitbucket": harness_bitbucket}
ROOTS = {"jira": "/rest/api/2", "confluence": "/rest/api"}


@contextmanager
def conforming(product: str, version: str, **options: Any) -> Iterator[TargetEnv]:
    """A harness environment whose every exchange must conform to the description."""
    with HARNESSES[product].environment(version=version, **options) as env:
        recording = Recording(env.emulator, product)
        yield env
    report = recording.report()
    assert report.checked and not report.violations, report.describe()


def rest(env: TargetEnv, method: str, path: str, **kwargs: Any) -> httpx.Response:
    admin = {"jira": harness_jira.ADMIN, "confluence": harness_confluence.ADMIN}.get(
        env.product, harness_bitbucket.ADMIN
    )
    if env.product == "bitbucket":  # its client keeps the REST root as its base URL
        url = str(env.target.client.base_url).rstrip("/") + path
    else:
        url = env.target.url + ROOTS[env.product] + path
    return httpx.request(method, url, auth=admin, timeout=10, **kwargs)


def sent(env: TargetEnv, method: str, suffix: str) -> list[Any]:
    return [r for r in env.emulator.app.requests if r.method == method and r.path.endswith(suffix)]


# -- the client sends what the descriptions declare ----------------------------------------


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS["jira"])
def test_jira_user_creation_sends_notification_as_a_string(version: str) -> None:
    with conforming("jira", version) as env:
        env.target.create_user("ann", "ann@example.com", "Ann")

        [create] = sent(env, "POST", "/user")
        assert create.body["notification"] == "false"
        assert env.emulator.user("ann") is not None


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS["jira"])
def test_jira_test_connection_asks_mypermissions_without_a_filter(version: str) -> None:
    with conforming("jira", version) as env:
        assert env.target.check().ok

        [asked] = sent(env, "GET", "/mypermissions")
        assert asked.query == {}


def test_confluence_reads_a_slash_group_by_group_name_alone_on_10_2() -> None:
    with conforming("confluence", "10.2.14") as env:
        env.emulator.seed_user("ana", "ana@example.com", "Ana")
        env.emulator.seed_group("team/a", members=["ana"])

        _groups, members = env.target.read_groups(["team/a"])

        assert list(members["username"]) == ["ana"]
        [asked] = sent(env, "GET", "/rest/api/group/member")
        assert asked.query["groupName"] == "team/a" and "name" not in asked.query


@pytest.mark.parametrize("version", ["9.3.1", "10.0.3"])
def test_confluence_before_10_2_sends_no_member_query_and_names_why(version: str) -> None:
    with conforming("confluence", version) as env:
        env.emulator.seed_group("team/a")

        with pytest.raises(TargetRejectedError, match=r"no query-parameter form.*10\.2"):
            env.target.read_groups(["team/a"])

        assert sent(env, "GET", "/rest/api/group/member") == []


# -- the sandbox answers what the descriptions declare -------------------------------------


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS["confluence"])
def test_confluence_answers_a_created_group_with_200(version: str) -> None:
    with conforming("confluence", version) as env:
        answer = rest(env, "POST", "/admin/group", json={"type": "group", "name": "devs"})
        assert answer.status_code == 200 and answer.json()["name"] == "devs"


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS["confluence"])
def test_confluence_members_of_a_missing_group_are_an_empty_page(version: str) -> None:
    with conforming("confluence", version) as env:
        answer = rest(env, "GET", "/group/no-such-group/member")
        assert answer.status_code == 200 and answer.json()["results"] == []
        # The client tells a missing group from an empty one by the group list.
        groups, _ = env.target.read_groups(["no-such-group"])
        assert groups.empty


@pytest.mark.parametrize(
    ("version", "status"), [("9.12.0", 201), ("10.3.24", 200), ("11.3.8", 200)]
)
def test_jira_project_update_answers_the_versions_declared_status(
    version: str, status: int
) -> None:
    with conforming("jira", version) as env:
        env.emulator.seed_user("heir", "heir@example.com", "Heir")
        env.emulator.seed_project("APP", "Application", "admin")

        answer = rest(env, "PUT", "/project/APP", json={"lead": "heir"})

        assert answer.status_code == status
        assert env.emulator.project_lead("APP") == "heir"


# -- what differs per version --------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "window"), [("9.12.0", 1000), ("10.3.24", 1000), ("11.3.8", 100)]
)
def test_jira_user_search_window(version: str, window: int) -> None:
    with conforming("jira", version, max_page_size=1000) as env:
        for i in range(150):
            env.emulator.seed_user(f"user{i:03d}", f"u{i}@example.com", f"User {i}")

        def found(start: int, size: int) -> int:
            query = {"username": "user", "startAt": start, "maxResults": size}
            return len(rest(env, "GET", "/user/search", params=query).json())

        assert found(0, 150) == min(150, window)
        # 11.3: startAt + maxResults is capped at 100 (98 + 20 → 2 users).
        assert found(98, 20) == (2 if window == 100 else 20)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS["jira"])
def test_jira_user_list_exists_from_10_3(version: str) -> None:
    with HARNESSES["jira"].environment(version=version) as env:
        answer = rest(env, "GET", "/user/list", params={"maxResults": 5})
        assert answer.status_code == (404 if version.startswith("9.") else 200)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS["bitbucket"])
def test_bitbucket_users_carry_created_timestamp_from_9_6(version: str) -> None:
    with conforming("bitbucket", version) as env:
        env.emulator.seed_user("ann", "ann@example.com", "Ann")
        [user] = rest(env, "GET", "/admin/users", params={"filter": "ann"}).json()["values"]
        assert ("createdTimestamp" in user) == (not version.startswith("9.4"))
