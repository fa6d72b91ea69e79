"""Jira user properties (custom attributes), project and component leads, and the checks of the
default leads, against `JiraEmulator` over real HTTP.

Each test checks what an administrator would see in Jira (a property's value over REST, who
leads a project) or in the emulator's request log (nothing was sent).
"""

from __future__ import annotations

from typing import Any

import httpx
import pandas as pd
import pytest

from tests.targets.harness_jira import ADMIN, NON_ADMIN, environment
from usersync.config import TargetConfig
from usersync.errors import TargetRejectedError
from usersync.targets import open_target
from usersync.targets.jira import MAX_PROPERTY_VALUE_BYTES, JiraTarget


def api(env: Any) -> str:
    return env.target.url + "/rest/api/2"


def property_writes(env: Any) -> list[str]:
    return [r.path for r in env.emulator.app.writes() if "/user/properties/" in r.path]


# -- user properties -------------------------------------------------------------------------


def test_custom_attributes_are_user_properties_read_back_as_written() -> None:
    values = {
        "department": "Sales",
        # strings that look like other JSON stay strings, both ways
        "cost_centre": "4711",
        "badge": '{"level": 2}',
        "nickname": "Zoë ✓",
    }
    with environment() as env:
        env.target.create_user("ann", "ann@example.com", "Ann")
        env.emulator.app.clear_log()

        env.target.update_user("ann", {f"custom:{k}": v for k, v in values.items()})

        # Only property PUTs: an update of custom attributes alone never sends PUT /user.
        assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in env.emulator.app.writes()] == [
            ("PUT", k) for k in values
        ]
        assert env.emulator.user_properties("ann") == values
        answer = httpx.get(
            f"{api(env)}/user/properties/department", params={"username": "ann"}, auth=ADMIN
        )
        assert answer.json() == {"key": "department", "value": "Sales"}
        keys = httpx.get(f"{api(env)}/user/properties", params={"username": "ann"}, auth=ADMIN)
        assert sorted(k["key"] for k in keys.json()["keys"]) == sorted(values)

        fresh = env.make_target()
        state = fresh.read_state(["ann"], [], custom=[*values, "unset"])
        row = state.users.set_index("username").loc["ann"]
        for name, value in values.items():
            # equal to what was written, so a planner comparing them plans no write
            assert row[f"custom:{name}"] == value
        assert pd.isna(row["custom:unset"])


def test_custom_attributes_and_a_rename_in_one_update() -> None:
    with environment() as env:
        key = env.target.create_user("old.name", "p@example.com", "Person")

        env.target.update_user(
            "old.name", {"username": "new.name", "display_name": "P", "custom:team": "blue"}
        )

        user = env.emulator.user_by_key(key)
        assert (user.name, user.display_name) == ("new.name", "P")
        assert env.emulator.user_properties("new.name") == {"team": "blue"}


def test_reading_properties_costs_one_get_per_account_and_attribute() -> None:
    with environment() as env:
        for i in range(6):
            env.emulator.seed_user(f"u{i}", f"u{i}@example.com", f"U {i}")
        env.target.update_user("u2", {"custom:a": "x"})
        accounts = env.target.read_users([f"u{i}" for i in range(6)])
        env.emulator.app.clear_log()

        values = env.target.read_custom_attributes(accounts[["target_key", "username"]], ["a", "b"])

        assert list(zip(values["name"], values["value"], strict=True)) == [("a", "x")]
        assert (
            values["target_key"].tolist()
            == accounts.set_index("username").loc[["u2"]]["target_key"].tolist()
        )
        reads = [r for r in env.emulator.app.requests if "/user/properties/" in r.path]
        assert len(reads) == len(env.emulator.app.requests) == 12


def test_an_oversized_value_is_refused_before_any_request() -> None:
    with environment() as env:
        env.emulator.seed_user("ann", "ann@example.com", "Ann")
        # A JSON string is its characters plus two quotes.
        at_limit = "a" * (MAX_PROPERTY_VALUE_BYTES - 2)
        assert env.target.refused_custom_value("note", at_limit) is None
        env.emulator.app.clear_log()

        for too_big in (at_limit + "a", "é" * (MAX_PROPERTY_VALUE_BYTES // 2)):
            assert "bytes" in env.target.refused_custom_value("note", too_big)
            with pytest.raises(TargetRejectedError, match="nothing was sent"):
                env.target.update_user(
                    "ann", {"display_name": "Ann B", "custom:ok": "x", "custom:note": too_big}
                )
        assert env.emulator.app.requests == []
        assert "255" in env.target.refused_custom_value("k" * 256, "x")

        env.target.update_user("ann", {"custom:note": at_limit})
        assert env.emulator.user_properties("ann") == {"note": at_limit}


def test_the_emulator_refuses_an_oversized_value_itself() -> None:
    with environment() as env:
        env.emulator.seed_user("ann", "ann@example.com", "Ann")
        too_big = "a" * 40_000
        answer = httpx.put(
            f"{api(env)}/user/properties/note", params={"username": "ann"}, json=too_big, auth=ADMIN
        )
        assert answer.status_code in (400, 413)
        assert "too long" in answer.json()["errorMessages"][0]
        assert env.emulator.user_properties("ann") == {}


def test_user_property_resource_answers_like_jira() -> None:
    with environment() as env:
        key = env.emulator.seed_user("ann", "ann@example.com", "Ann")
        url = f"{api(env)}/user/properties/colour"
        created = httpx.put(url, params={"userKey": key}, json={"rgb": [1, 2, 3]}, auth=ADMIN)
        replaced = httpx.put(url, params={"username": "ANN"}, json="red", auth=ADMIN)
        assert (created.status_code, replaced.status_code) == (201, 200)
        assert httpx.get(url, params={"userKey": key}, auth=ADMIN).json()["value"] == "red"
        assert env.target.read_custom_attributes(
            pd.DataFrame({"target_key": [key], "username": ["ann"]}), ["colour"]
        )["value"].tolist() == ["red"]

        missing = httpx.get(
            f"{api(env)}/user/properties/none", params={"username": "ann"}, auth=ADMIN
        )
        nobody = httpx.get(url, params={"username": "ghost"}, auth=ADMIN)
        for answer in (missing, nobody):
            assert answer.status_code == 404
            assert answer.json()["errorMessages"] and answer.json()["errors"] == {}
        # Another account's properties are an administrator's to change; one's own are not.
        assert (
            httpx.put(url, params={"username": "ann"}, json="x", auth=NON_ADMIN).status_code == 403
        )
        own = f"{api(env)}/user/properties/theme?username={NON_ADMIN[0]}"
        assert httpx.put(own, json="dark", auth=NON_ADMIN).status_code == 201
        assert httpx.delete(url, params={"username": "ann"}, auth=ADMIN).status_code == 204
        assert httpx.delete(url, params={"username": "ann"}, auth=ADMIN).status_code == 404


def test_a_non_string_property_written_by_someone_else_reads_as_its_json() -> None:
    with environment() as env:
        key = env.emulator.seed_user("ann", "ann@example.com", "Ann")
        httpx.put(
            f"{api(env)}/user/properties/level", params={"username": "ann"}, json=3, auth=ADMIN
        )
        values = env.target.read_custom_attributes(
            pd.DataFrame({"target_key": [key], "username": ["ann"]}), ["level"]
        )
        assert values["value"].tolist() == ["3"]


# -- project and component leads -------------------------------------------------------------


def seed_leads(env: Any) -> dict[str, str]:
    """Two projects led by lead1 and lead2; components led by lead1, comp, and nobody."""
    for name in ("lead1", "lead2", "comp", "heir"):
        env.emulator.seed_user(name, f"{name}@example.com", name.title())
    env.emulator.seed_project("APP", "Application", "lead1")
    env.emulator.seed_project("ops", "Operations", "lead2")
    return {
        "api": env.emulator.seed_component("APP", "Backend", "lead1"),
        "ui": env.emulator.seed_component("APP", "Frontend", "comp"),
        "docs": env.emulator.seed_component("OPS", "Docs"),
    }


def test_leads_are_read_reassigned_and_read_back() -> None:
    with environment() as env:
        ids = seed_leads(env)

        leads = env.target.read_leads()

        assert sorted(leads.itertuples(index=False, name=None)) == sorted(
            [
                ("lead1", "project", "APP", "Application", "APP"),
                ("lead2", "project", "OPS", "Operations", "OPS"),
                ("lead1", "component", ids["api"], "Backend", "APP"),
                ("comp", "component", ids["ui"], "Frontend", "APP"),
            ]
        )
        # read_state leaves leads out: the sync reads them only when it deactivates someone.
        assert env.target.read_state([], []).leads.empty

        env.target.reassign_lead("project", "APP", "heir")
        env.target.reassign_lead("component", ids["api"], "heir")

        assert env.emulator.project_lead("APP") == "heir"
        again = env.make_target().read_leads()
        assert set(again.loc[again["username"] == "heir", "id"]) == {"APP", ids["api"]}
        assert "lead1" not in set(again["username"])
        assert [r.body for r in env.emulator.app.writes()] == [
            {"lead": "heir"},
            {"leadUserName": "heir"},
        ]


def test_a_lead_jira_refuses_is_a_refusal_naming_it() -> None:
    with environment() as env:
        ids = seed_leads(env)
        env.emulator.seed_user("gone", "gone@example.com", "Gone", active=False)
        for kind, ident, who in (
            ("project", "APP", "ghost"),
            ("project", "APP", "gone"),
            ("component", ids["ui"], "ghost"),
        ):
            with pytest.raises(TargetRejectedError, match=who):
                env.target.reassign_lead(kind, ident, who)
        assert env.emulator.project_lead("APP") == "lead1"
        assert env.emulator.component_lead(ids["ui"]) == "comp"


def test_jira_refuses_to_deactivate_or_delete_a_project_lead_until_it_is_handed_over() -> None:
    with environment() as env:
        ids = seed_leads(env)

        with pytest.raises(TargetRejectedError, match="APP"):
            env.target.deactivate_user("lead1")
        deleted = httpx.delete(f"{api(env)}/user", params={"username": "lead1"}, auth=ADMIN)
        assert deleted.status_code == 400 and "APP" in deleted.json()["errorMessages"][0]
        assert env.emulator.user("lead1").active

        env.target.reassign_lead("project", "APP", "heir")
        # Jira refuses to deactivate a component lead too: its components go first.
        for component in ("api", "ui"):
            if env.emulator.component_lead(ids[component]) == "lead1":
                env.target.reassign_lead("component", ids[component], "heir")
        env.target.deactivate_user("lead1")
        assert not env.emulator.user("lead1").active

        if env.emulator.component_lead(ids["ui"]) == "comp":
            with pytest.raises(TargetRejectedError, match="component"):
                env.target.deactivate_user("comp")
            env.target.reassign_lead("component", ids["ui"], "heir")
        env.target.deactivate_user("comp")
        assert env.emulator.component_lead(ids["ui"]) == "heir"


# -- Test Connection and the default leads ---------------------------------------------------


def checked(env: Any, **leads: str) -> Any:
    config = TargetConfig.model_validate(
        {
            "kind": "jira",
            "url": env.target.url,
            "auth": {"kind": "basic", "username": ADMIN[0], "password": {"prefect_secret": "pw"}},
            **leads,
        }
    )
    # As Test Connection builds it (usersync.connection → sync.open_target_for).
    with open_target("jira", config, load_prefect_secret={"pw": ADMIN[1]}.__getitem__) as target:
        assert isinstance(target, JiraTarget)
        return target.check()


def test_test_connection_checks_the_default_leads() -> None:
    with environment() as env:
        env.emulator.seed_user("heir", "heir@example.com", "Heir")
        env.emulator.seed_user("retired", "r@example.com", "Retired", active=False)

        missing = checked(env, default_project_lead="ghost")
        inactive = checked(env, default_project_lead="heir", default_component_lead="retired")
        fine = checked(env, default_project_lead="heir", default_component_lead="heir")

        assert not missing.ok
        assert "default_project_lead 'ghost' does not exist" in missing.detail
        assert not inactive.ok
        assert "default_component_lead 'retired' is deactivated" in inactive.detail
        assert fine.ok and "default_project_lead 'heir' is active" in fine.detail
        assert env.emulator.app.writes() == []


# -- paths ----------------------------------------------------------------------------------


def test_every_path_is_served_under_latest_and_unknown_paths_answer_jira_errors() -> None:
    with environment() as env:
        seed_leads(env)
        latest = env.target.url + "/rest/api/latest"
        assert httpx.get(f"{latest}/project/APP", auth=ADMIN).json()["lead"]["name"] == "lead1"
        assert httpx.get(f"{latest}/myself", auth=ADMIN).json()["name"] == ADMIN[0]
        # Jersey ignores a trailing slash (the jira package deletes users at `user/?username=`).
        assert httpx.get(f"{latest}/user/", params={"username": "heir"}, auth=ADMIN).is_success
        listed = httpx.get(f"{latest}/project", auth=ADMIN).json()
        assert [p["key"] for p in listed] == ["APP", "OPS"] and "lead" not in listed[0]
        for url in (f"{latest}/nothing", f"{api(env)}/project/NOPE", env.target.url + "/x"):
            answer = httpx.get(url, auth=ADMIN)
            assert answer.status_code == 404
            assert answer.json()["errorMessages"] and answer.json()["errors"] == {}
