"""The source contract's miniOrange push: usersync's own SCIM inbox over HTTP, the scenario
POSTed into it as miniOrange's SCIM app would, read back from the store by the
`miniorange-push` source. The inbox reads in one statement, so no read stops part-way; what it
can meet is a damaged store, a stored user without its id, which must fail the read too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from usersync_sandbox.server import serve

from tests.sources.harness import SourceEnv
from tests.sources.harness_scim import SCIM_FIELDS, post_scenario
from usersync.config import MiniorangePushSourceConfig
from usersync.inbox import InboxApp, issue_token
from usersync.sources.miniorange_push import MiniorangePushSource
from usersync.store import Store
from usersync.store.schema import inbox_resources

INBOX = "contract"


@contextmanager
def environment(request: pytest.FixtureRequest) -> Iterator[SourceEnv]:
    folder: Path = request.getfixturevalue("tmp_path_factory").mktemp("inbox")
    store_url = f"sqlite:///{folder / 'store.db'}"
    store = Store.open(store_url)
    token = issue_token(store.engine, INBOX).token
    try:
        with serve(InboxApp(store.engine)) as url:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=f"{url}/scim/v2/{INBOX}", headers=headers) as http:
                post_scenario(http)

        def open_source() -> MiniorangePushSource:
            config = MiniorangePushSourceConfig(
                kind="miniorange-push", inbox=INBOX, store_url=store_url
            )
            return MiniorangePushSource(config)

        @contextmanager
        def damaged_store(share: float) -> Iterator[MiniorangePushSource]:
            """One stored user loses its id for the duration of the block, wherever the
            read would be cut (the store is read in one statement)."""
            row = inbox_resources.c
            user = (row.profile == INBOX) & (row.resource_type == "User")
            with store.engine.begin() as conn:
                key, body = conn.execute(sa.select(row.id, row.body).where(user).limit(1)).one()
                damaged = {name: value for name, value in body.items() if name != "id"}
                conn.execute(
                    inbox_resources.update().where(user & (row.id == key)), {"body": damaged}
                )
            try:
                with open_source() as source:
                    yield source
            finally:
                with store.engine.begin() as conn:
                    conn.execute(
                        inbox_resources.update().where(user & (row.id == key)), {"body": body}
                    )

        yield SourceEnv(
            name="inbox",
            fields=SCIM_FIELDS,
            open_source=open_source,
            failing_read=damaged_store,
            page_size=None,
        )
    finally:
        store.close()
