"""Delta and reconcile runs of the `sync` flow (issue 26): the run form's `mode`, the CLI's
--delta, and where a run's kind shows (its log, its summary, the store's run record that
`usersync runs` lists).

The world is a real SCIM inbox and the three sandbox products (tests/e2e/products.py); the
oracles are the run kinds' rules: a delta run before anything was written reconciles and says
so; once a reconcile wrote everything, a delta run plans only what the source changed; a run
that is not asked for a delta reconciles, as before.
"""

from __future__ import annotations

import pytest
from usersync_cli.main import main as usersync
from usersync_flows.sync import sync
from usersync_sandbox.push import SampleUser, ScimPusher

from tests.e2e.products import PRODUCTS, PROFILE, products_world
from tests.e2e.test_delta_runs import account
from tests.flows.test_prefect_logs import run_logs
from usersync import ConfigError, runs_table

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]

PEOPLE = [
    SampleUser(f"user{i:02d}", f"Given{i}", f"Family{i}", f"user{i:02d}@example.org")
    for i in range(8)
]


@pytest.fixture
def world(tmp_path, monkeypatch):
    with products_world(tmp_path, monkeypatch) as world:
        with ScimPusher(world["inbox"], world["token"]) as pusher:
            for person in PEOPLE:
                pusher.push_user(person)
            pusher.push_group("engineering")
            pusher.add_members("engineering", [p.user_name for p in PEOPLE[:4]])
        yield world


def _flow_run_of(store, target: str = "jira") -> str:
    runs = store.runs(PROFILE)
    return str(runs.loc[runs["target"] == target, "flow_run_id"].iloc[0])


def test_a_delta_run_reconciles_first_then_reads_only_what_changed_and_says_so(world) -> None:
    store = world["store"]

    first = {o["target"]: o for o in sync(profile=PROFILE, mode="delta")}

    for product in PRODUCTS:
        assert first[product]["mode"] == "reconcile"
        assert "nothing was written" in first[product]["mode_reason"]
        assert first[product]["status"] == "succeeded"
    # Wait for jira's own line: the targets' lines reach the API in batches, in any order.
    wanted = "jira: reconcile run instead of delta"
    logs = [log.message for log in run_logs(_flow_run_of(store), wanted)]
    assert any("jira: reconcile run instead of delta: nothing was written" in m for m in logs)

    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.set_active("user05", False)
    second = {o["target"]: o for o in sync(profile=PROFILE, mode="delta")}

    for product in PRODUCTS:
        assert second[product]["mode"] == "delta" and second[product]["mode_reason"] is None
        assert second[product]["planned"].get("deactivate_user") == 1
        assert account(world, product, "user05")["active"] is False
    ops = store.operations(int(store.runs(PROFILE).iloc[0]["id"]))
    assert set(ops["username"]) == {"user05"}, ops
    logs = [log.message for log in run_logs(_flow_run_of(store), "summary:")]
    # the task's line, and the summary's
    assert any(m.startswith("jira: delta run") for m in logs)
    assert any("summary:" in m and "bitbucket: delta run" in m for m in logs)

    # the store's run record keeps the kind; `usersync runs` shows it
    records = store.runs(PROFILE)
    newest = records.iloc[0]["counts"]
    assert newest["mode"] == "delta" and newest["mode_reason"] is None
    oldest = records.iloc[-1]["counts"]
    assert oldest["mode"] == "reconcile" and "nothing was written" in oldest["mode_reason"]
    table = runs_table(records, limit=5)
    assert "delta" in table and "reconcile (delta asked)" in table


def test_a_run_not_asked_for_a_delta_reconciles_and_the_cli_asks_with_delta(world, capsys) -> None:
    outcomes = sync(profile=PROFILE)
    assert {o["mode"] for o in outcomes} == {"reconcile"}
    assert {o["mode_reason"] for o in outcomes} == {None}

    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.push_user(SampleUser("user02", "Given2", "Family2", "moved-02@example.org"))
    assert usersync(["sync", PROFILE, "--delta"]) == 0

    counts = world["store"].runs(PROFILE).iloc[0]["counts"]
    assert counts["mode"] == "delta" and counts["mode_reason"] is None
    assert account(world, "jira", "user02")["email"] == "moved-02@example.org"


def test_only_is_for_delta_runs(world) -> None:
    with pytest.raises(ConfigError, match="mode=delta"):
        sync(profile=PROFILE, only=["user01"])
    assert world["store"].runs(PROFILE).empty  # refused before anything was read or recorded


def test_a_delta_run_of_an_inbox_nothing_was_pushed_into_reads_nothing(world) -> None:
    store, sandbox = world["store"], world["sandbox"]
    sync(profile=PROFILE)  # a reconcile writes everything
    for product in PRODUCTS:
        sandbox.emulators[product].app.clear_log()

    quiet = {o["target"]: o for o in sync(profile=PROFILE, mode="delta")}

    for product in PRODUCTS:
        assert quiet[product]["status"] == "succeeded" and quiet[product]["mode"] == "delta"
        assert quiet[product]["planned"] == {}
        assert sandbox.emulators[product].app.requests == []  # not even a version read
    logs = [log.message for log in run_logs(_flow_run_of(store), "nothing changed")]
    assert any("nothing changed in the source since the last run" in m for m in logs)
    # The runs are on record, with what the source held when last read.
    newest = store.runs(PROFILE).iloc[0]["counts"]
    assert newest["mode"] == "delta" and newest["source"]["users"] == len(PEOPLE)

    # A push moves the inbox's count: the next delta run reads, and writes what changed.
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.set_active("user03", False)
    moved = {o["target"]: o for o in sync(profile=PROFILE, mode="delta")}
    for product in PRODUCTS:
        assert moved[product]["planned"].get("deactivate_user") == 1
        assert account(world, product, "user03")["active"] is False

    # So does an edit of the profile (the rules are part of the mark): it reads again.
    profile = world["profile_dir"] / "profile.yaml"
    text = profile.read_text(encoding="utf-8")
    profile.write_text(
        text.replace("protected_usernames: [admin]", "protected_usernames: [admin, root]"),
        encoding="utf-8",
    )
    for product in PRODUCTS:
        sandbox.emulators[product].app.clear_log()
    sync(profile=PROFILE, mode="delta")
    assert all(sandbox.emulators[p].app.requests for p in PRODUCTS)
