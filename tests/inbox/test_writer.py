"""The inbox's store writer: changes that wait are committed together, a bad one fails alone,
and a request whose change the store refuses gets an error while the inbox's memory goes back
to what the store holds (over real HTTP)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from usersync_sandbox.server import serve

from usersync.inbox import InboxApp, issue_token, read_inbox
from usersync.inbox.writer import StoreWriter
from usersync.store import Store

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    store = Store.open(f"sqlite:///{tmp_path}/store.db")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    yield store.engine
    store.close()


def _note(text: str | None):
    return lambda conn: conn.exec_driver_sql("INSERT INTO notes (text) VALUES (?)", (text,))


def _notes(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.exec_driver_sql("SELECT text FROM notes ORDER BY id")]


def test_waiting_changes_share_a_commit_and_a_bad_one_fails_alone(engine: sa.Engine) -> None:
    writer = StoreWriter(engine)
    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda conn: commits.append(1))
    release = threading.Event()
    # The first change holds the writer, so the next ones wait and are written together.
    blocker = writer.submit(lambda conn: release.wait(10))
    futures = [writer.submit(_note(text)) for text in ("a", None, "c")]  # None: NOT NULL fails
    release.set()
    blocker.result(timeout=10)
    assert futures[0].result(timeout=10) is None
    with pytest.raises(sa.exc.IntegrityError):
        futures[1].result(timeout=10)
    assert futures[2].result(timeout=10) is None
    assert _notes(engine) == ["a", "c"]
    before = len(commits)
    writer.flush(timeout=10)
    many = [writer.submit(_note(str(i))) for i in range(50)]
    for future in many:
        future.result(timeout=10)
    assert len(commits) - before < 50  # fewer commits than changes


def test_a_change_is_written_though_its_waiter_gave_up(engine: sa.Engine) -> None:
    writer = StoreWriter(engine)
    release = threading.Event()
    writer.submit(lambda conn: release.wait(10))
    abandoned = writer.submit(_note("kept"))
    assert abandoned.cancel()
    release.set()
    writer.flush(timeout=10)
    assert _notes(engine) == ["kept"]
    writer.submit(_note("next")).result(timeout=10)  # the writer still works
    assert _notes(engine) == ["kept", "next"]


def test_a_refused_write_fails_its_request_and_the_memory_follows_the_store(
    tmp_path: Path,
) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/store.db")
    token = issue_token(store.engine, "acme").token

    def refuse_mallory(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.startswith("INSERT INTO inbox_resources") and "mallory" in str(parameters):
            raise sa.exc.OperationalError(statement, parameters, Exception("disk full"))

    sa.event.listen(store.engine, "before_cursor_execute", refuse_mallory)
    headers = {"Authorization": f"Bearer {token}"}
    with (
        serve(InboxApp(store.engine)) as url,
        httpx.Client(base_url=f"{url}/scim/v2/acme", headers=headers) as http,
    ):
        kept = http.post("/Users", json={"schemas": [USER_SCHEMA], "userName": "kim"})
        refused = http.post("/Users", json={"schemas": [USER_SCHEMA], "userName": "mallory"})
        assert (kept.status_code, refused.status_code) == (201, 500)
        listed = http.get("/Users").json()
        assert [user["userName"] for user in listed["Resources"]] == ["kim"]
        # the name is free again: the refused user is not in memory
        sa.event.remove(store.engine, "before_cursor_execute", refuse_mallory)
        again = http.post("/Users", json={"schemas": [USER_SCHEMA], "userName": "mallory"})
        assert again.status_code == 201
    names = sorted(user["userName"] for user in read_inbox(store.engine, "acme").users)
    assert names == ["kim", "mallory"]
    store.close()
