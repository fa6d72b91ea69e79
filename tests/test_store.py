"""The store on SQLite and on PostgreSQL: schema creation, runs, the audit trail, the ledger."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pandas as pd
import pytest
import sqlalchemy as sa

from tests.store_reading import saved_watermark
from usersync.model import PLAN_COLUMNS, conform
from usersync.store import LedgerEntry, Store
from usersync.store.schema import SCHEMA_VERSION


def _postgres_url() -> str | None:
    """Start the machine's PostgreSQL 15 cluster if it is installed; a fresh database URL."""
    if shutil.which("pg_ctlcluster") is None:
        return None
    subprocess.run(["pg_ctlcluster", "15", "main", "start"], capture_output=True, check=False)
    name = f"usersync_test_{uuid.uuid4().hex[:8]}"
    sql = (
        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='usersync') THEN "
        "CREATE ROLE usersync LOGIN PASSWORD 'usersync'; END IF; END$$;"
    )
    for statement in (sql, f"CREATE DATABASE {name} OWNER usersync;"):
        done = subprocess.run(
            ["su", "postgres", "-c", "psql -q -v ON_ERROR_STOP=1"],
            input=statement,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.fail(f"could not prepare PostgreSQL: {done.stderr}")
    return f"postgresql+psycopg://usersync:usersync@127.0.0.1:5432/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, tmp_path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sub' / 'store.db'}"
    else:
        url = _postgres_url()
        if url is None:
            pytest.skip("PostgreSQL 15 is not installed on this machine")
    opened = Store.open(url)
    yield opened
    opened.close()


def a_plan(n: int) -> pd.DataFrame:
    rows = [
        [
            i + 1,
            "jira",
            "create_user",
            f"s{i}",
            "",
            f"user{i}",
            "",
            "",
            '{"username": "x"}',
            "new",
            "",
        ]
        for i in range(n)
    ]
    return conform(pd.DataFrame(rows, columns=list(PLAN_COLUMNS)), PLAN_COLUMNS, what="plan")


def test_a_run_records_every_operation_and_its_outcome(store):
    run = store.start_run("corp", "jira", dry_run=False, flow_run_id="abc")
    store.record_plan(run, a_plan(3))
    store.record_outcomes(run, [(1, "succeeded", None), (2, "failed", "HTTP 400: bad e-mail")])
    store.finish_run(run, "partial", {"planned": {"create_user": 3}})

    ops = store.operations(run)
    assert list(ops["status"]) == ["succeeded", "failed", "planned"]
    assert ops.loc[1, "error"] == "HTTP 400: bad e-mail"
    assert ops.loc[0, "after"] == '{"username": "x"}'
    (recorded,) = store.runs("corp").to_dict("records")
    assert recorded["status"] == "partial"
    assert recorded["counts"] == {"planned": {"create_user": 3}}


def group_plan(*groups: str) -> pd.DataFrame:
    blank = dict.fromkeys(PLAN_COLUMNS, "")
    rows = [
        blank | {"seq": i + 1, "target": "jira", "op": "create_group", "group": g}
        for i, g in enumerate(groups)
    ]
    return conform(pd.DataFrame(rows), PLAN_COLUMNS, what="plan")


def test_a_group_a_dead_run_created_joins_the_ledger_and_no_other(store):
    # A run created 'Sales' and died before the ledger learnt of it; 'ops' never got an
    # outcome (the process died first: made by hand since, for all usersync knows).
    dead = store.start_run("corp", "jira", dry_run=False)
    store.record_plan(dead, group_plan("Sales", "ops"))
    store.record_outcomes(dead, [(1, "succeeded", None)])
    # A run that ended normally (its ledger written with its outcomes), and a dry run.
    done = store.start_run("corp", "jira", dry_run=False)  # closes `dead` as interrupted
    store.record_plan(done, group_plan("finished"))
    store.record_outcomes(done, [(1, "succeeded", None)])
    store.finish_run(done, "succeeded", {})
    dry = store.start_run("corp", "jira", dry_run=True)
    store.record_plan(dry, group_plan("dreamt"))
    store.finish_run(dry, "planned", {})
    store.start_run("corp", "jira", dry_run=False)

    assert store.recover_created_groups("corp", "jira") == ["Sales"]
    ledger = store.ledger("corp", "jira")
    assert ledger[["kind", "target_key", "name", "origin"]].to_dict("records") == [
        {"kind": "group", "target_key": "sales", "name": "Sales", "origin": "created"}
    ]
    assert store.recover_created_groups("corp", "jira") == []  # once
    assert store.recover_created_groups("corp", "confluence") == []


def test_ledger_is_per_profile_and_target_and_follows_renames(store):
    store.remember("corp", "jira", [LedgerEntry("user", "K1", "alice", "s1")])
    store.remember("corp", "jira", [LedgerEntry("user", "K1", "alice.smith", "s1")])
    store.remember("other", "jira", [LedgerEntry("group", "dev", "dev")])
    ledger = store.ledger("corp", "jira")
    assert ledger.to_dict("records") == [
        {
            "kind": "user",
            "source_id": "s1",
            "target_key": "K1",
            "name": "alice.smith",
            "origin": "created",
        }
    ]
    assert store.ledger("corp", "confluence").empty


def test_a_recreated_account_replaces_the_old_link(store):
    store.remember("corp", "jira", [LedgerEntry("user", "K1", "alice", "s1")])
    store.remember("corp", "jira", [LedgerEntry("user", "K7", "alice", "s1")])
    ledger = store.ledger("corp", "jira")
    assert list(ledger["target_key"]) == ["K7"]


def test_reopening_keeps_data_and_records_the_schema_version(store):
    store.remember("corp", "jira", [LedgerEntry("user", "K1", "alice", "s1")])
    again = Store(store.engine)
    from usersync.store.schema import migrate

    assert migrate(store.engine) == SCHEMA_VERSION
    assert len(again.ledger("corp", "jira")) == 1
    with store.engine.connect() as conn:
        assert (
            conn.execute(sa.text("select version from schema_version")).scalar() == SCHEMA_VERSION
        )


def test_a_large_plan_is_recorded_in_one_go(store):
    run = store.start_run("corp", "jira", dry_run=True)
    store.record_plan(run, a_plan(5000))
    assert len(store.operations(run)) == 5000


def test_a_run_left_running_is_closed_as_interrupted_by_the_next(store: Store) -> None:
    killed = store.start_run("prof", "jira", dry_run=False)
    store.record_plan(killed, a_plan(3))
    store.record_outcomes(killed, [(1, "succeeded", None)])
    other_target = store.start_run("prof", "confluence", dry_run=False)

    store.start_run("prof", "jira", dry_run=False)

    runs = store.runs("prof").set_index("id")
    assert runs.loc[killed, "status"] == "interrupted"
    assert runs.loc[other_target, "status"] == "running"  # another target's run is its own
    statuses = store.operations(killed).set_index("seq")["status"].to_dict()
    assert statuses == {1: "succeeded", 2: "unknown", 3: "unknown"}


def test_a_profile_lease_is_held_by_one_holder_until_released_or_expired(store: Store) -> None:
    assert store.acquire_lease("prof", "run-a", seconds=60) is None
    busy = store.acquire_lease("prof", "run-b", seconds=60)
    assert busy is not None and busy["holder"] == "run-a"
    assert store.acquire_lease("other-prof", "run-b", seconds=60) is None  # per profile
    assert store.renew_lease("prof", "run-a", seconds=60)
    assert not store.renew_lease("prof", "run-b")
    store.release_lease("prof", "run-a")
    assert store.acquire_lease("prof", "run-b", seconds=0.01) is None
    import time

    time.sleep(0.05)
    # run-b crashed and never renewed: its lease has expired, run-c takes over
    assert store.acquire_lease("prof", "run-c", seconds=60) is None
    assert not store.renew_lease("prof", "run-b")


def test_the_sqlite_store_is_readable_by_its_owner_only(tmp_path) -> None:
    import stat

    path = tmp_path / "new" / "folder" / "store.db"
    Store.open(f"sqlite:///{path}").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    loose = tmp_path / "loose.db"
    loose.touch(mode=0o644)
    loose.chmod(0o644)
    Store.open(f"sqlite:///{loose}").close()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600


def test_opening_an_up_to_date_store_never_waits_for_a_writer(tmp_path) -> None:
    import sqlite3
    import time

    url = f"sqlite:///{tmp_path / 'store.db'}"
    Store.open(url).close()
    writer = sqlite3.connect(tmp_path / "store.db")
    writer.execute("BEGIN IMMEDIATE")  # another process in the middle of a long write
    try:
        started = time.monotonic()
        store = Store.open(url)  # only reads the schema version
        store.ledger("prof", "jira")  # and readers go on beside the writer (WAL)
        assert time.monotonic() - started < 2
        store.close()
    finally:
        writer.rollback()
        writer.close()


def test_a_second_writer_waits_its_turn_instead_of_failing(tmp_path) -> None:
    import sqlite3
    import threading

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store.open(url)
    writer = sqlite3.connect(tmp_path / "store.db", check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    threading.Timer(2.0, writer.commit).start()
    # 20k ledger entries written while the other writer holds the lock for 2 s
    store.remember(
        "prof", "jira", [LedgerEntry("user", f"K{i}", f"u{i}", f"s{i}") for i in range(20_000)]
    )
    assert (store.ledger("prof", "jira")["kind"] == "user").sum() == 20_000
    writer.close()
    store.close()


def test_the_default_store_lives_under_usersync_home(tmp_path, monkeypatch) -> None:
    from usersync.store import store_url

    monkeypatch.delenv("USERSYNC_STORE_URL", raising=False)
    monkeypatch.setenv("USERSYNC_HOME", str(tmp_path))
    monkeypatch.chdir("/")
    assert store_url() == f"sqlite:///{tmp_path / 'var' / 'usersync.db'}"


def test_a_source_snapshot_round_trips_through_the_store(store: Store) -> None:
    """The incremental reads' cache, through SQLite's blob and PostgreSQL's bytea alike."""
    from datetime import UTC, datetime

    from usersync.store import SourceWatermark

    users = pd.DataFrame(
        {
            "source_id": pd.Series([f"id{i}" for i in range(300)], dtype="str"),
            "mail": pd.Series([f"u{i}@example.org" if i % 7 else None for i in range(300)]),
            "active": [i % 3 != 0 for i in range(300)],
        }
    )
    memberships = pd.DataFrame(
        {
            "source_id": pd.Series([f"id{i % 300}" for i in range(2000)], dtype="str"),
            "source_group": pd.Series([f"Grüppe {i % 150}" for i in range(2000)], dtype="str"),
        }
    )
    moment = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    mark = SourceWatermark(
        dc="ldap://x", usn=42, fingerprint="f", read_at=moment, full_read_at=moment
    )
    store.save_source_watermark("p", mark, {"users": users, "memberships": memberships})
    read, parts = saved_watermark(store, "p")
    assert read == mark
    pd.testing.assert_frame_equal(parts["users"], users)
    pd.testing.assert_frame_equal(parts["memberships"], memberships)


@pytest.mark.parametrize(
    "case",
    [
        "shared",
        "shared, saved as categoricals",
        "a null id",
        "an id no user has",
        "users repeat an id",
        "no users part",
    ],
)
def test_a_column_saved_as_positions_in_another_part_reads_back_the_same(
    store: Store, case: str
) -> None:
    """Memberships' user ids saved as positions in the users' ids (when those are distinct and
    hold every one of them) read back as the same values, as strings or categoricals; anything
    else is saved as values."""
    from datetime import UTC, datetime

    from usersync.store import SourceWatermark

    ids = [f"id{i}" for i in range(50)]
    member_ids: list[str | None] = [ids[(i * 7) % 50] for i in range(400)]
    if case == "a null id":
        member_ids[3] = None
    if case == "an id no user has":
        member_ids[5] = "stranger"
    if case == "users repeat an id":
        ids[1] = ids[0]
    users = pd.DataFrame({"source_id": pd.Series(ids, dtype="string")})
    memberships = pd.DataFrame(
        {
            "source_id": pd.Series(member_ids, dtype="string"),
            "source_group": pd.Series([f"g{i % 9}" for i in range(400)], dtype="string"),
        }
    )
    parts = {"users": users, "memberships": memberships}
    if case == "shared, saved as categoricals":  # as an incremental read's merge leaves them
        parts["memberships"] = memberships.astype("category")
    if case == "no users part":
        del parts["users"]
    moment = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    mark = SourceWatermark("ldap://x", 42, "f", moment, moment)
    store.save_source_watermark(
        "p", mark, parts, shared={"memberships.source_id": "users.source_id"}
    )
    _, saved = store.source_checkpoint("p")
    positions = b'"values_of": "users.source_id"' in saved.bodies["memberships"]
    assert positions == (case in ("shared", "shared, saved as categoricals", "a null id"))
    read = saved.parts()
    pd.testing.assert_frame_equal(read["memberships"], memberships)
    coded = saved.parts(categorical={"memberships": ["source_id"]})["memberships"]
    assert isinstance(coded["source_id"].dtype, pd.CategoricalDtype)
    pd.testing.assert_series_equal(coded["source_id"].astype("string"), memberships["source_id"])
    if positions:  # the users part is needed to read them
        with pytest.raises(ValueError, match="part 'users' is missing"):
            type(saved)({"memberships": saved.bodies["memberships"]}).parts()


def test_stored_frames_round_trip_and_old_ones_still_read():
    import base64
    import json
    import zlib

    import numpy as np

    from usersync.store import _decode_frame, _encode_frame

    frame = pd.DataFrame(
        {
            "source_id": pd.Series(["a", "b", None, "a"], dtype="string"),
            "active": pd.Series([True, None, False, True], dtype="boolean"),
            "n": pd.Series([1, None, 3, 1], dtype="Int64"),
        }
    )
    pd.testing.assert_frame_equal(_decode_frame(_encode_frame(frame)), frame)
    empty = frame.iloc[0:0].reset_index(drop=True)
    pd.testing.assert_frame_equal(_decode_frame(_encode_frame(empty)), empty)
    # What usersync wrote before the column form: one list per row.
    old = {
        "columns": ["source_id", "active"],
        "dtypes": {"source_id": "string", "active": "boolean"},
        "rows": [["a", True], [None, None]],
    }
    read = _decode_frame(zlib.compress(json.dumps(old).encode()))
    assert read["source_id"].tolist() == ["a", pd.NA]
    assert read["active"].tolist() == [True, pd.NA]
    # What the release before the binary form wrote: JSON columns with base64 int32 codes.
    codes = base64.b64encode(np.array([1, -1, 0], dtype="<i4").tobytes()).decode()
    version_2 = {
        "version": 2,
        "rows": 3,
        "columns": [{"name": "source_id", "dtype": "str", "values": ["a", "b"], "codes": codes}],
    }
    read = _decode_frame(zlib.compress(json.dumps(version_2).encode()))
    assert read["source_id"].isna().tolist() == [False, True, False]
    assert read["source_id"].iloc[[0, 2]].tolist() == ["b", "a"]


def test_stored_frames_pick_the_narrowest_code_width():
    import json

    import numpy as np

    from usersync.store import FRAME_MAGIC, _decode_frame, _encode_frame

    def narrowest(distinct: int) -> str:
        """The smallest signed integer holding every code (0 .. distinct-1) and -1 (null)."""
        for kind in (np.int8, np.int16, np.int32):
            if np.iinfo(kind).max >= distinct - 1:
                return np.dtype(kind).newbyteorder("<").str
        raise AssertionError(distinct)

    for distinct in (1, 127, 128, 129, 255, 32_767, 32_768, 32_769):
        frame = pd.DataFrame(
            {
                "g": pd.Series(
                    [f"v{i % distinct}" for i in range(distinct * 2)] + [None], dtype="str"
                )
            }
        )
        body = _encode_frame(frame)
        size = int.from_bytes(body[len(FRAME_MAGIC) : len(FRAME_MAGIC) + 4], "little")
        header = json.loads(body[len(FRAME_MAGIC) + 4 : len(FRAME_MAGIC) + 4 + size])
        (column,) = header["columns"]
        assert np.dtype(column["width"]) == np.dtype(narrowest(distinct)), distinct
        pd.testing.assert_frame_equal(_decode_frame(body), frame)


def test_stored_frames_decode_chosen_columns_as_categoricals():
    import json
    import zlib

    import numpy as np

    from usersync.store import StoredSnapshot, _decode_frame, _encode_frame

    frame = pd.DataFrame(
        {
            "source_id": pd.Series(["b", "a", None, "b", "ä"], dtype="string"),
            "source_group": pd.Series(["g", "g", "h", None, "g"], dtype="string"),
        }
    )
    old = {  # the row form of earlier releases
        "columns": ["source_id", "source_group"],
        "dtypes": {"source_id": "string", "source_group": "string"},
        "rows": frame.astype(object).where(frame.notna(), None).to_numpy().tolist(),
    }
    for body in (_encode_frame(frame), zlib.compress(json.dumps(old).encode())):
        read = StoredSnapshot({"m": body}).parts(categorical={"m": ["source_id"]})["m"]
        assert isinstance(read["source_id"].dtype, pd.CategoricalDtype)
        assert read["source_id"].isna().tolist() == [False, False, True, False, False]
        assert read["source_id"].astype("string").equals(frame["source_id"])
        assert read["source_id"].isin(["b"]).tolist() == [True, False, False, True, False]
        pd.testing.assert_series_equal(read["source_group"], frame["source_group"])
    # A null among the stored distinct values (code 1 here) decodes as missing, like code -1.
    from usersync.store import FRAME_MAGIC

    values = zlib.compress(json.dumps(["g", None, "h"]).encode())
    codes = np.array([0, 1, 2, -1, 0], dtype="<i1").tobytes()
    column = {"name": "source_group", "dtype": "string", "width": "<i1"}
    column |= {"values": [0, len(values)], "codes": [len(values), len(codes)]}
    header = json.dumps({"rows": 5, "columns": [column]}).encode()
    body = FRAME_MAGIC + len(header).to_bytes(4, "little") + header + values + codes
    read = _decode_frame(body, categorical=("source_group",))["source_group"]
    assert read.astype(object).where(read.notna(), None).tolist() == ["g", None, "h", None, "g"]
    assert list(read.cat.categories) == ["g", "h"]


def test_a_categorical_column_is_stored_as_its_values():
    """An incremental read's merged memberships are categoricals (with categories no row uses
    any more): saved, they read back as the strings they stand for, in either decoding."""
    from usersync.store import _decode_frame, _encode_frame

    strings = pd.Series(["g", "h", None, "g", "ß"], dtype="string")
    frame = pd.DataFrame(
        {
            "source_group": pd.Categorical(
                strings, categories=pd.Index(["x", "ß", "h", "g"], dtype="string")
            )
        }
    )
    body = _encode_frame(frame)
    pd.testing.assert_series_equal(_decode_frame(body)["source_group"], strings, check_names=False)
    coded = _decode_frame(body, categorical=("source_group",))["source_group"]
    assert list(coded.cat.categories) == ["g", "h", "ß"]  # the unused one is not kept
    assert coded.astype("string").equals(strings)


def test_stored_strings_round_trip_whatever_characters_they_hold():
    """Distinct strings are joined by a separator none of them contains; with every candidate
    taken, the values go as a JSON list. Either way they read back as written."""
    from usersync.store import _SEPARATORS, _decode_frame, _encode_frame

    cases = {
        "plain": ["a", "", "Grüppe", None, "a"],
        "nul inside": ["x\x00y", "z", None],
        "all separators": ["".join(_SEPARATORS), "w", ""],
        "empty": [],
    }
    for name, values in cases.items():
        frame = pd.DataFrame({"v": pd.Series(values, dtype="string")})
        pd.testing.assert_frame_equal(_decode_frame(_encode_frame(frame)), frame, obj=name)
