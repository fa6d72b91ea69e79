"""The run form and what prefect.yaml ships, read as the Prefect UI and `prefect deploy` read them.

No server needed: the parameter schema is what `prefect deploy` sends, built by Prefect from
each flow's signature; prefect.yaml is read as YAML and checked against the profiles.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.utilities.callables import parameter_schema
from usersync_flows.connection_check import test_connection as connection_flow
from usersync_flows.sandbox_demo import demo
from usersync_flows.sync import sync
from usersync_flows.sync_preview import run_test_sync_flow

from usersync.config import load_profile

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))["deployments"]
SYNC_DEPLOYMENTS = [d for d in DEPLOYMENTS if d["entrypoint"].startswith("flows/profiles.py:")]


@pytest.mark.parametrize("flow", [sync, connection_flow, run_test_sync_flow, demo])
def test_every_parameter_has_a_title_and_a_description_in_the_run_form(flow):
    properties = parameter_schema(flow).model_dump_for_openapi()["properties"]

    for name, field in properties.items():
        assert field["title"] != name and field["title"][0].isupper(), (flow.name, name)
        assert len(field.get("description", "")) > 20, (flow.name, name)


def test_the_sync_form_validates_names_and_bounds_and_carries_no_store_or_secret():
    schema = parameter_schema(sync).model_dump_for_openapi()
    properties = schema["properties"]

    assert list(properties) == [
        "profile",
        "targets",
        "dry_run",
        "allow_mass_changes",
        "full",
        "wait_seconds",
        "mode",
        "only",
    ]
    assert schema["required"] == ["profile"]
    assert properties["mode"]["enum"] == ["delta", "reconcile"]
    assert properties["mode"]["default"] == "reconcile"
    assert properties["profile"]["pattern"] == "^[a-z0-9][a-z0-9-]*$"
    target_names = next(a for a in properties["targets"]["anyOf"] if a["type"] == "array")
    assert target_names["items"]["pattern"] == "^[a-z0-9][a-z0-9-]*$"
    assert (properties["wait_seconds"]["minimum"], properties["wait_seconds"]["maximum"]) == (
        0,
        86400,
    )
    assert "the deployment's description lists them" in properties["targets"]["description"]
    assert not any(word in name for name in properties for word in ("store", "password", "token"))


def test_the_demo_form_offers_its_two_sources():
    source = parameter_schema(demo).model_dump_for_openapi()["properties"]["source"]
    assert source["enum"] == ["push", "ldap"]
    assert source["default"] == "push"


@pytest.mark.parametrize("deployment", SYNC_DEPLOYMENTS, ids=lambda d: d["name"])
def test_each_sync_deployment_is_its_profiles_and_lists_the_targets_to_choose_from(
    deployment, monkeypatch
):
    monkeypatch.delenv("USERSYNC_MAPPINGS_DIR", raising=False)
    profile = load_profile(deployment["parameters"]["profile"])

    assert deployment["name"] in (
        profile.name,
        f"{profile.name}-dry-run",
        f"{profile.name}-reconcile",
    )
    assert deployment["entrypoint"] == f"flows/profiles.py:{profile.name}"
    assert f"profile:{profile.name}" in deployment["tags"]
    if deployment["name"].endswith("-dry-run"):
        assert "dry-run" in deployment["tags"] and deployment["parameters"]["dry_run"] is True
    assert f"targets: {', '.join(profile.targets)})" in deployment["description"]
    # One run at a time comes from the profile's lease, which holds through an approval pause;
    # Prefect's deployment limit would be freed by the pause, and the paused run then cancelled.
    assert "concurrency_limit" not in deployment


@pytest.mark.parametrize("deployment", SYNC_DEPLOYMENTS, ids=lambda d: d["name"])
def test_no_shipped_schedule_writes_until_someone_turns_it_on(deployment):
    for schedule in deployment.get("schedules") or []:
        assert schedule["active"] is False, (deployment["name"], schedule["slug"])
    if deployment["name"].startswith("example-"):
        assert deployment["parameters"]["dry_run"] is True  # a run from the UI is a dry run
        if not deployment["name"].endswith("-dry-run"):
            assert "dry run unless dry_run is false" in deployment["description"]
        else:
            assert "a real run is refused" in deployment["description"]


def test_every_deployment_flow_is_shipped_and_the_checks_serve_any_profile():
    by_entrypoint = {d["entrypoint"]: d for d in DEPLOYMENTS}
    assert set(by_entrypoint) == {
        "flows/profiles.py:demo-push",
        "flows/profiles.py:example-ldap",
        "flows/profiles.py:example-ad",
        "flows/connection_check.py:test_connection",
        "flows/sync_preview.py:run_test_sync_flow",
        "flows/sandbox_demo.py:demo",
    }
    for checks in (
        "flows/connection_check.py:test_connection",
        "flows/sync_preview.py:run_test_sync_flow",
    ):
        assert "profile" not in by_entrypoint[checks].get("parameters", {})


@pytest.mark.parametrize("deployment", SYNC_DEPLOYMENTS, ids=lambda d: d["name"])
def test_each_sync_entrypoint_offers_its_profiles_targets_as_the_form_s_choices(
    deployment, monkeypatch
):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.delenv("USERSYNC_MAPPINGS_DIR", raising=False)
    monkeypatch.chdir(REPO)
    profile = load_profile(deployment["parameters"]["profile"])
    flow = load_flow_from_entrypoint(deployment["entrypoint"])

    assert flow.name == "sync"
    properties = parameter_schema(flow).model_dump_for_openapi()["properties"]
    array = next(o for o in properties["targets"]["anyOf"] if o.get("type") == "array")
    assert array["items"]["enum"] == list(profile.targets)
    # The rest of the form is the sync flow's.
    assert (
        properties["dry_run"]
        == parameter_schema(sync).model_dump_for_openapi()["properties"]["dry_run"]
    )
