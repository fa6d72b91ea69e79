"""The checker finds what a description does not declare, and tolerates only the named defects.

Each case is an exchange as a recorder would hand it over; the violations the issue's reviewer
found are among them (so the conformance tests could fail on each), next to the generator
defects SOURCES.md says to tolerate and the reliances allowed by name.
"""

from __future__ import annotations

import pytest
from usersync_sandbox.faults import Exchange

from tests.conformance.checking import SKIP_REASON, check, specs_available
from tests.conformance.descriptions import description
from tests.conformance.reliances import RELIANCES

pytestmark = pytest.mark.skipif(not specs_available(), reason=SKIP_REASON)

JIRA = ("9.12.0", "10.3.24", "11.3.8")
CONFLUENCE = ("9.3.1", "10.0.3", "10.2.14")
BITBUCKET = ("9.4.0", "10.4.0")
USER = {"name": "ann", "key": "JIRAUSER10100", "emailAddress": "ann@example.com", "active": True}


def problems(product: str, version: str, exchange: Exchange) -> list[str]:
    """What `check` reports for one exchange (reliances applied), as text."""
    return [str(v) for v in check(product, version, "", [exchange], tally=False).violations]


def exchange(
    method: str,
    path: str,
    query: dict[str, str] | None = None,
    body: object = None,
    status: int = 200,
    answer: object = None,
) -> Exchange:
    return Exchange(method, path, list((query or {}).items()), body, status, answer)


@pytest.mark.parametrize("version", JIRA)
def test_jira_notification_as_a_json_boolean_is_a_violation_as_a_string_it_is_not(
    version: str,
) -> None:
    body = {"name": "ann", "emailAddress": "ann@example.com", "displayName": "Ann"}
    sent = exchange("POST", "/rest/api/2/user", body={**body, "notification": False}, status=201)
    assert any("[notification]" in p for p in problems("jira", version, sent))
    sent = exchange("POST", "/rest/api/2/user", body={**body, "notification": "false"}, status=201)
    assert problems("jira", version, sent) == []


@pytest.mark.parametrize("version", JIRA)
def test_request_bodies_are_checked_strictly(version: str) -> None:
    sent = exchange("POST", "/rest/api/2/user", body={"name": "ann", "nickname": "A"}, status=201)
    assert any("[nickname]" in p for p in problems("jira", version, sent))


@pytest.mark.parametrize("version", JIRA)
def test_jira_mypermissions_filter_is_not_declared(version: str) -> None:
    asked = exchange("GET", "/rest/api/2/mypermissions", {"permissions": "ADMINISTER"})
    assert any("[permissions]" in p for p in problems("jira", version, asked))
    assert problems("jira", version, exchange("GET", "/rest/api/2/mypermissions")) == []


@pytest.mark.parametrize("version", JIRA)
def test_jira_expand_on_get_user_is_allowed_by_name_only(version: str) -> None:
    asked = exchange("GET", "/rest/api/latest/user", {"username": "ann", "expand": "groups"})
    raw = description("jira", version).check(asked, "/api/2/user")
    assert [v.name for v in raw] == ["expand"]  # undeclared: a reliance, not a declaration
    report = check("jira", version, "", [asked], tally=False)
    assert report.violations == [] and report.relied_on == {"jira-user-expand-groups": 1}
    other = exchange("GET", "/rest/api/2/user", {"username": "ann", "fields": "x"})
    assert any("[fields]" in p for p in problems("jira", version, other))


@pytest.mark.parametrize(("version", "declared"), [("9.12.0", 201), ("10.3.24", 200)])
def test_jira_project_update_status_is_the_versions_own(version: str, declared: int) -> None:
    body = {"lead": "ann"}
    for status in (200, 201):
        answered = exchange("PUT", "/rest/api/2/project/APP", body=body, status=status)
        assert (problems("jira", version, answered) == []) == (status == declared), status


def test_jira_9_12_has_no_user_list_and_types_its_query_parameters() -> None:
    assert any(
        "no such path" in p
        for p in problems("jira", "9.12.0", exchange("GET", "/rest/api/2/user/list"))
    )
    wrong = exchange("GET", "/rest/api/2/user/search", {"username": "a", "maxResults": "many"})
    assert any("not an integer" in p for p in problems("jira", "9.12.0", wrong))
    right = exchange(
        "GET", "/rest/api/2/user/search", {"username": "a", "maxResults": "50"}, answer=[USER]
    )
    assert problems("jira", "9.12.0", right) == []


@pytest.mark.parametrize("version", ("10.3.24", "11.3.8"))
def test_a_collection_answered_where_the_item_schema_is_declared_is_checked_per_item(
    version: str,
) -> None:
    asked = {"username": "a", "includeInactive": "true"}
    fine = exchange("GET", "/rest/api/2/user/search", asked, answer=[USER, USER])
    assert problems("jira", version, fine) == []
    broken = exchange("GET", "/rest/api/2/user/search", asked, answer=[{**USER, "active": "yes"}])
    assert any("[active]" in p for p in problems("jira", version, broken))


def test_a_query_parameter_declared_in_path_is_taken_as_a_query_parameter() -> None:
    # Jira 10.3 declares group/member's `groupname` `in: path` though its path has no slot.
    asked = exchange("GET", "/rest/api/2/group/member", {"groupname": "devs", "startAt": "0"})
    assert problems("jira", "10.3.24", asked) == []


def test_required_query_parameters_must_be_sent() -> None:
    asked = exchange("GET", "/rest/api/2/group/member", {"startAt": "0"})
    assert any("required, not sent" in p for p in problems("jira", "11.3.8", asked))


@pytest.mark.parametrize("version", CONFLUENCE)
def test_confluence_group_created_is_200_not_201(version: str) -> None:
    body = {"type": "group", "name": "devs"}
    created = exchange("POST", "/rest/api/admin/group", body=body, status=201)
    assert any("sandbox status: 201" in p for p in problems("confluence", version, created))
    assert (
        problems("confluence", version, exchange("POST", "/rest/api/admin/group", body=body)) == []
    )


@pytest.mark.parametrize("version", CONFLUENCE)
def test_confluence_members_of_a_missing_group_are_not_a_404(version: str) -> None:
    missing = exchange("GET", "/rest/api/group/nope/member", {"limit": "200"}, status=404)
    assert any("sandbox status: 404" in p for p in problems("confluence", version, missing))


def test_confluence_group_member_query_form_exists_from_10_2_with_group_name_only() -> None:
    asked = exchange("GET", "/rest/api/group/member", {"groupName": "a/b", "name": "a/b"})
    assert [p for p in problems("confluence", "10.2.14", asked) if "[name]" in p]
    fine = exchange("GET", "/rest/api/group/member", {"groupName": "a/b"})
    assert problems("confluence", "10.2.14", fine) == []
    for version in ("9.3.1", "10.0.3"):
        # There, the path is `group/{groupName}` for a group called "member".
        assert description("confluence", version).find("GET", "/rest/api/group/member")[
            0
        ].template == ("/rest/api/group/{groupName}")
        assert any(
            "[groupName]: declared in path" in p for p in problems("confluence", version, fine)
        )


def test_confluence_204_declared_with_a_schema_needs_no_body() -> None:
    updated = exchange(
        "PUT",
        "/rest/api/admin/user/ann",
        body={"email": "a@example.com", "fullName": "Ann"},
        status=204,
    )
    assert problems("confluence", "10.2.14", updated) == []


def test_confluence_json_rpc_is_checked_against_the_wsdl() -> None:
    rpc = "/rpc/json-rpc/confluenceservice-v2"
    assert problems("confluence", "10.2.14", exchange("POST", f"{rpc}/getUser", body=["ann"])) == []
    assert problems("confluence", "10.2.14", exchange("POST", f"{rpc}/getUser", body=[])) != []
    assert problems("confluence", "10.2.14", exchange("POST", f"{rpc}/getPeople", body=[])) != []
    envelope = {"jsonrpc": "2.0", "method": "addUserToGroup", "params": ["ann", "devs"], "id": 1}
    assert problems("confluence", "10.2.14", exchange("POST", rpc, body=envelope)) == []


def test_undescribed_endpoints_are_counted_not_checked() -> None:
    report = check(
        "confluence",
        "10.2.14",
        "/confluence",
        [
            exchange("GET", "/confluence/rest/license/1.0/license/maxUsers", answer={"count": 5}),
            exchange("GET", "/confluence/rest/applinks/1.0/manifest", answer={"version": "x"}),
        ],
        tally=False,
    )
    assert report.checked == 0 and sum(report.undescribed.values()) == 2


@pytest.mark.parametrize("version", BITBUCKET)
def test_bitbucket_null_timestamps_are_a_violation(version: str) -> None:
    user = {"name": "ann", "emailAddress": "a@example.com", "id": 1, "slug": "ann"}
    page = {"size": 1, "limit": 25, "isLastPage": True, "start": 0, "values": [user]}
    fine = exchange("GET", "/rest/api/1.0/admin/users", {"filter": "ann"}, answer=page)
    assert problems("bitbucket", version, fine) == []
    nulled = {**page, "values": [{**user, "lastAuthenticationTimestamp": None}]}
    broken = exchange("GET", "/rest/api/1.0/admin/users", {"filter": "ann"}, answer=nulled)
    assert any("lastAuthenticationTimestamp" in p for p in problems("bitbucket", version, broken))


def test_injected_faults_are_not_the_products_answers() -> None:
    fault = Exchange("GET", "/rest/api/2/myself", [], None, 503, {"message": "x"}, injected=True)
    report = check("jira", "11.3.8", "", [fault], tally=False)
    assert report.checked == 0 and report.injected == 1 and report.violations == []


def test_every_reliance_names_its_source() -> None:
    assert RELIANCES
    for reliance in RELIANCES:
        assert reliance.name and len(reliance.source) > 80, reliance.name
