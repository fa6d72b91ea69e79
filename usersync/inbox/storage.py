"""Where the inbox keeps what was pushed: scim2-server's in-memory storage, written through to SQL.

scim2-server handles the SCIM protocol (validation, filters, PATCH, uniqueness, ETags) over a
`ScimStorage`. `InboxStorage` is its in-memory storage for one profile, loaded from the
store's `inbox_resources` table when the inbox starts and writing every create, replace,
PATCH and delete to that table before answering, so a restart loses nothing. A write the
database refuses is undone in memory too, and the client gets an error. One inbox process
serves a store: two processes would each answer from their own memory. `read_inbox` is what
the `miniorange-push` source reads: the stored JSON of every user and group of a profile.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from scim2_models import Resource, ResourceType, ScimProvider
from scim2_server.memory import InMemoryStorage

from usersync.store.schema import inbox_resources

USER = "User"
GROUP = "Group"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class InboxContents:
    """The stored JSON of a profile's inbox, as the SCIM client last left it."""

    users: list[dict[str, Any]]
    groups: list[dict[str, Any]]


def read_inbox(engine: sa.Engine, profile: str) -> InboxContents:
    """Every user and group stored for `profile`, read in one transaction (a consistent view)."""
    query = sa.select(inbox_resources.c.resource_type, inbox_resources.c.body).where(
        inbox_resources.c.profile == profile
    )
    users: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    with engine.connect() as conn:
        for resource_type, body in conn.execute(query):
            if resource_type == USER:
                users.append(body)
            elif resource_type == GROUP:
                groups.append(body)
    return InboxContents(users, groups)


class InboxStorage(InMemoryStorage):
    """scim2-server's in-memory storage for one profile, persisted to the store.

    Args:
        engine: the store's engine (tables created by `Store.open`).
        profile: whose inbox this is.
        provider: the SCIM provider (its models rebuild stored resources).
    """

    def __init__(self, engine: sa.Engine, profile: str, provider: ScimProvider) -> None:
        super().__init__()
        self.engine = engine
        self.profile = profile
        stored = []
        query = sa.select(inbox_resources.c.resource_type, inbox_resources.c.body).where(
            inbox_resources.c.profile == profile
        )
        with engine.connect() as conn:
            for resource_type, body in conn.execute(query):
                model = provider.model_for(resource_type)
                if model is not None:
                    stored.append(model.model_validate(body))
        self.resources = stored

    def next_version(self) -> str:
        # The parent counts from 1 in each process; after a restart a counter would hand out
        # versions a client may still hold as ETags, so each version is random instead.
        return f'W/"{uuid.uuid4().hex[:16]}"'

    def create(self, resource_type: ResourceType, resource: Resource[Any]) -> Resource[Any]:
        with self.lock:
            created = super().create(resource_type, _without_password(resource))
            try:
                self._write(resource_type.name, created)
            except Exception:
                super().delete(resource_type, str(created.id))
                raise
            return created

    def update(
        self,
        resource_type: ResourceType,
        resource: Resource[Any],
        *,
        expected_version: str | None = None,
    ) -> Resource[Any]:
        with self.lock:
            before = self._stored(resource_type, resource.id)
            updated = super().update(
                resource_type, _without_password(resource), expected_version=expected_version
            )
            try:
                self._write(resource_type.name, updated)
            except Exception:
                self._restore(before)
                raise
            return updated

    def delete(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        expected_version: str | None = None,
    ) -> None:
        with self.lock:
            before = self._stored(resource_type, resource_id)
            super().delete(resource_type, resource_id, expected_version=expected_version)
            try:
                with self.engine.begin() as conn:
                    conn.execute(self._row_delete(resource_type.name, resource_id))
            except Exception:
                self._restore(before)
                raise

    def _restore(self, resource: Resource[Any]) -> None:
        # scim2-server (pinned <0.9) offers no public "put back"; _store re-indexes a resource.
        self._store(resource, self._values_of(resource))

    def _row_delete(self, resource_type: str, resource_id: str) -> sa.Delete:
        return inbox_resources.delete().where(
            inbox_resources.c.profile == self.profile,
            inbox_resources.c.resource_type == resource_type,
            inbox_resources.c.id == resource_id,
        )

    def _write(self, resource_type: str, resource: Resource[Any]) -> None:
        body = resource.model_dump(mode="json")
        with self.engine.begin() as conn:
            conn.execute(self._row_delete(resource_type, str(resource.id)))
            conn.execute(
                inbox_resources.insert().values(
                    profile=self.profile,
                    resource_type=resource_type,
                    id=str(resource.id),
                    body=body,
                    updated_at=_now(),
                )
            )


def _without_password(resource: Resource[Any]) -> Resource[Any]:
    """The resource without a password: usersync provisions no passwords and keeps none."""
    if getattr(resource, "password", None) is None:
        return resource
    return resource.model_copy(update={"password": None})
