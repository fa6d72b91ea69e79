"""Where the inbox keeps what was pushed: scim2-server's in-memory storage, written through to SQL.

scim2-server handles the SCIM protocol (validation, filters, PATCH, uniqueness, ETags) over a
`ScimStorage`. `InboxStorage` is its in-memory storage for one profile, loaded from the store
when the inbox starts. Every create, replace, PATCH and delete changes the memory and hands
its SQL to the `StoreWriter`; the request is answered once that is committed (the writer
commits several requests' changes at once), so a restart loses nothing answered. A change
the database refuses fails its request, and the memory is rebuilt from the store (`recover`).
One inbox process serves a store: two processes would each answer from their own memory.
`read_inbox` is what the `miniorange-push` source reads: the stored JSON of every user and
group of a profile.

A group's members are kept apart from the group, as one `inbox_members` row per member (and
one dict entry in memory), because miniOrange adds and removes members one PATCH at a time:
`patch_group` applies such a PATCH to the group holding only the members it names, and writes
the member rows that changed and the group's own small row, so its cost does not grow with
the group. A read of a group assembles it from its members.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from scim2_models import (
    InvalidValueException,
    Resource,
    ResourceType,
    ResponseParameters,
    ScimProvider,
    SearchRequest,
)
from scim2_server.memory import InMemoryStorage
from scim2_server.storage import SearchPage

from usersync.inbox.writer import Statements, StoreWriter
from usersync.store.schema import inbox_generations, inbox_members, inbox_resources

USER = "User"
GROUP = "Group"
MEMBERS = "members"

# The statements of the writes, built once: each change only binds its values.
_RESOURCE = sa.and_(
    inbox_resources.c.profile == sa.bindparam("b_profile"),
    inbox_resources.c.resource_type == sa.bindparam("b_type"),
    inbox_resources.c.id == sa.bindparam("b_id"),
)
_INSERT_RESOURCE = inbox_resources.insert().values(
    profile=sa.bindparam("b_profile"),
    resource_type=sa.bindparam("b_type"),
    id=sa.bindparam("b_id"),
    body=sa.bindparam("b_body", type_=inbox_resources.c.body.type),
    updated_at=sa.bindparam("b_at", type_=inbox_resources.c.updated_at.type),
)
_UPDATE_RESOURCE = (
    inbox_resources.update()
    .where(_RESOURCE)
    .values(
        body=sa.bindparam("b_body", type_=inbox_resources.c.body.type),
        updated_at=sa.bindparam("b_at", type_=inbox_resources.c.updated_at.type),
    )
)
_DELETE_RESOURCE = inbox_resources.delete().where(_RESOURCE)
_BUMP_GENERATION = (
    inbox_generations.update()
    .where(inbox_generations.c.profile == sa.bindparam("b_profile"))
    .values(generation=inbox_generations.c.generation + 1)
)
_FIRST_GENERATION = inbox_generations.insert().values(
    profile=sa.bindparam("b_profile"), generation=1
)
_GROUP_MEMBERS = sa.and_(
    inbox_members.c.profile == sa.bindparam("b_profile"),
    inbox_members.c.group_id == sa.bindparam("b_id"),
)
_DELETE_MEMBERS = inbox_members.delete().where(_GROUP_MEMBERS)
_ONE_MEMBER = sa.and_(_GROUP_MEMBERS, inbox_members.c.member_id == sa.bindparam("b_value"))
_DELETE_MEMBER = inbox_members.delete().where(_ONE_MEMBER)
_UPDATE_MEMBER = (
    inbox_members.update()
    .where(_ONE_MEMBER)
    .values(body=sa.bindparam("b_body", type_=inbox_members.c.body.type))
)

#: A member as stored: its JSON (value, type, display, $ref), by value.
Members = dict[str, dict[str, Any]]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class InboxContents:
    """The stored JSON of a profile's inbox, as the SCIM client last left it."""

    users: list[dict[str, Any]]
    groups: list[dict[str, Any]]


def read_inbox(engine: sa.Engine, profile: str, *, member_bodies: bool = True) -> InboxContents:
    """Every user and group stored for `profile`, groups with their members.

    Resources and members are read by one statement, so the view is consistent even while the
    inbox is being written to. `member_bodies=False` gives each member as `{"value": id}` only
    (what a snapshot reads of it), from its key column: no JSON to decode per membership (half
    the read's time at 1.1M memberships).
    """
    resources = sa.select(
        sa.literal(0).label("part"),
        inbox_resources.c.resource_type.label("kind"),
        inbox_resources.c.id.label("owner"),
        sa.literal(0).label("seq"),
        inbox_resources.c.body,
        sa.null().label("member"),
    ).where(inbox_resources.c.profile == profile)
    members = sa.select(
        sa.literal(1).label("part"),
        sa.literal(MEMBERS).label("kind"),
        inbox_members.c.group_id.label("owner"),
        inbox_members.c.seq,
        inbox_members.c.body if member_bodies else sa.null().label("body"),
        inbox_members.c.member_id.label("member"),
    ).where(inbox_members.c.profile == profile)
    query = sa.union_all(resources, members).order_by("part", "seq")
    users: list[dict[str, Any]] = []
    groups: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for _, kind, owner, _, body, member in conn.execute(query):
            if kind == USER:
                users.append(body)
            elif kind == GROUP:
                groups[owner] = body
            elif kind == MEMBERS and owner in groups:
                listed = body if member_bodies else {"value": member}
                groups[owner].setdefault(MEMBERS, []).append(listed)
    return InboxContents(users, list(groups.values()))


def read_inbox_users(engine: sa.Engine, profile: str, ids: Iterable[str]) -> InboxContents:
    """The users of `profile` with these SCIM ids, and every group holding one of them with
    those members only (`{"value": id}`): what a run scoped to these identities reads of the
    inbox, in one statement. An id the inbox does not hold (a user deleted) is left out."""
    wanted = sorted({str(i) for i in ids})
    if not wanted:
        return InboxContents([], [])
    users = sa.select(
        sa.literal(0).label("part"),
        inbox_resources.c.resource_type.label("kind"),
        inbox_resources.c.id.label("owner"),
        sa.null().label("member"),
        inbox_resources.c.body,
    ).where(
        inbox_resources.c.profile == profile,
        inbox_resources.c.resource_type == USER,
        inbox_resources.c.id.in_(wanted),
    )
    memberships = (
        sa.select(inbox_members.c.group_id, inbox_members.c.member_id)
        .where(inbox_members.c.profile == profile, inbox_members.c.member_id.in_(wanted))
        .subquery()
    )
    groups = sa.select(
        sa.literal(1).label("part"),
        inbox_resources.c.resource_type.label("kind"),
        inbox_resources.c.id.label("owner"),
        memberships.c.member_id.label("member"),
        inbox_resources.c.body,
    ).join_from(
        inbox_resources,
        memberships,
        sa.and_(
            inbox_resources.c.profile == profile,
            inbox_resources.c.resource_type == GROUP,
            inbox_resources.c.id == memberships.c.group_id,
        ),
    )
    query = sa.union_all(users, groups).order_by("part", "owner", "member")
    found_users: list[dict[str, Any]] = []
    found_groups: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for _, kind, owner, member, body in conn.execute(query):
            if kind == USER:
                found_users.append(body)
            elif kind == GROUP:
                group = found_groups.setdefault(owner, {**body, MEMBERS: []})
                group[MEMBERS].append({"value": member})
    return InboxContents(found_users, list(found_groups.values()))


class InboxStorage(InMemoryStorage):
    """scim2-server's in-memory storage for one profile, persisted to the store.

    Groups are held without their members; `_members` holds those, by group id and value.

    Args:
        engine: the store's engine (tables created by `Store.open`).
        profile: whose inbox this is.
        provider: the SCIM provider (its models rebuild stored resources).
        writer: writes the changes (one per inbox process; by default one of its own).
    """

    def __init__(
        self,
        engine: sa.Engine,
        profile: str,
        provider: ScimProvider,
        writer: StoreWriter | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.profile = profile
        self.provider = provider
        self.writer = writer or StoreWriter(engine)
        self._members: dict[str, Members] = {}
        self._seq = itertools.count(1)
        self._load()

    def _load(self) -> None:
        """Read the profile's resources and members from the store into memory."""
        stored = []
        members: dict[str, Members] = {}
        last_seq = 0
        with self.engine.connect() as conn:
            for resource_type, body in conn.execute(
                sa.select(inbox_resources.c.resource_type, inbox_resources.c.body).where(
                    inbox_resources.c.profile == self.profile
                )
            ):
                model = self.provider.model_for(resource_type)
                if model is not None:
                    stored.append(model.model_validate(body))
            for group_id, value, seq, body in conn.execute(
                sa.select(
                    inbox_members.c.group_id,
                    inbox_members.c.member_id,
                    inbox_members.c.seq,
                    inbox_members.c.body,
                )
                .where(inbox_members.c.profile == self.profile)
                .order_by(inbox_members.c.seq)
            ):
                members.setdefault(group_id, {})[value] = body
                last_seq = max(last_seq, seq)
        with self.lock:
            self.resources = stored
            self._members = members
            self._seq = itertools.count(last_seq + 1)

    def recover(self) -> None:
        """Rebuild the memory from the store once every change submitted so far is written
        (after the store refused one: the memory holds it, the store does not)."""
        with self.lock:
            self.writer.flush()
            self._load()

    def next_version(self) -> str:
        # The parent counts from 1 in each process; after a restart a counter would hand out
        # versions a client may still hold as ETags, so each version is random instead.
        return f'W/"{uuid.uuid4().hex[:16]}"'

    # -- reads ---------------------------------------------------------------------------

    def get(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        response_parameters: ResponseParameters[Any] | None = None,
    ) -> Resource[Any]:
        with self.lock:
            found = super().get(resource_type, resource_id, response_parameters=response_parameters)
            if resource_type.name != GROUP or not _wants_members(response_parameters):
                return found
            return _assembled(found, self._members.get(resource_id, {}).values())

    def search(
        self,
        resource_types: list[ResourceType],
        search_request: SearchRequest[Any],
        *,
        position: Any = None,
    ) -> SearchPage:
        with self.lock:
            if all(resource_type.name != GROUP for resource_type in resource_types):
                return super().search(resource_types, search_request, position=position)
            if _mentions_members(search_request):
                # A filter or sort on members needs every group whole: search a copy.
                whole = InMemoryStorage()
                whole.resources = [self._whole(resource) for resource in self.resources]
                return whole.search(resource_types, search_request, position=position)
            page = super().search(resource_types, search_request, position=position)
            if _wants_members(search_request):
                page.resources = [self._whole(resource) for resource in page.resources]
            return page

    def _whole(self, resource: Resource[Any]) -> Resource[Any]:
        """A stored resource as the client sees it: a group with its members."""
        if resource.meta is None or resource.meta.resource_type != GROUP:
            return resource
        return _assembled(resource, self._members.get(str(resource.id), {}).values())

    # -- writes --------------------------------------------------------------------------

    def create(self, resource_type: ResourceType, resource: Resource[Any]) -> Resource[Any]:
        with self.lock:
            members = _members_of(resource) if resource_type.name == GROUP else {}
            created = super().create(resource_type, _bare(resource))
            self._write(resource_type.name, created, created=True, added=members)
            if resource_type.name != GROUP:
                return created
            self._members[str(created.id)] = members
            return _assembled(created, members.values())

    def update(
        self,
        resource_type: ResourceType,
        resource: Resource[Any],
        *,
        expected_version: str | None = None,
    ) -> Resource[Any]:
        with self.lock:
            if resource_type.name == GROUP:
                before = self._members.get(str(resource.id), {})
                updated = self._update_group(
                    resource_type, resource, before, expected_version=expected_version
                )
                return _assembled(updated, self._members.get(str(updated.id), {}).values())
            updated = super().update(
                resource_type, _bare(resource), expected_version=expected_version
            )
            self._write(resource_type.name, updated)
            return updated

    def patch_group(
        self,
        resource_type: ResourceType,
        group_id: str,
        member_values: Iterable[str],
        apply: Callable[[Resource[Any]], Resource[Any] | None],
    ) -> Resource[Any]:
        """Apply a PATCH to a group that holds only the members in `member_values`.

        `apply` patches the group it is given and returns it, or None when nothing changed
        (scim2-server's `ScimService.apply_patch`). Members it does not name are neither
        read nor written, so the PATCH costs what it names, not the group's size.

        Returns:
            The group as patched, without its members (`get` gives them all).

        Raises:
            NotFoundException: no such group.
            SCIMException: what `apply` raises (the group is left as it was).
        """
        with self.lock:
            stored = self._stored(resource_type, group_id)
            members = self._members.get(group_id, {})
            before = {value: members[value] for value in member_values if value in members}
            partial = _assembled(super().get(resource_type, group_id), before.values())
            assert stored.meta is not None
            patched = apply(partial)
            if patched is None:
                return _bare(partial)
            return self._update_group(
                resource_type, patched, before, expected_version=stored.meta.version
            )

    def _update_group(
        self,
        resource_type: ResourceType,
        group: Resource[Any],
        before: Members,
        *,
        expected_version: str | None,
    ) -> Resource[Any]:
        """Store `group`, whose members replace `before` (all its members, or those a PATCH named)."""
        after = _members_of(group)
        removed = [value for value in before if value not in after]
        added = {value: body for value, body in after.items() if value not in before}
        changed = {
            value: body
            for value, body in after.items()
            if value in before and before[value] != body
        }
        stored = self._stored(resource_type, group.id)
        if _content(stored) != _content(group):
            updated = super().update(resource_type, _bare(group), expected_version=expected_version)
        elif removed or added or changed:
            # Only members changed: the group's indexed values stand, its version moves on.
            self._check_version(stored, expected_version)
            assert stored.meta is not None
            stored.meta = stored.meta.model_copy(
                update={"last_modified": self.clock(), "version": self.next_version()}
            )
            updated = stored.model_copy(deep=True)
        else:
            # scim2-server saw a change the store does not keep (a member listed twice).
            self._check_version(stored, expected_version)
            return stored.model_copy(deep=True)
        members = self._members.setdefault(str(updated.id), {})
        for value in removed:
            members.pop(value, None)
        members.update(changed)
        members.update(added)
        self._write(GROUP, updated, added=added, removed=removed, changed=changed)
        return updated

    def delete(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        expected_version: str | None = None,
    ) -> None:
        with self.lock:
            super().delete(resource_type, resource_id, expected_version=expected_version)
            self._members.pop(resource_id, None)
            key = {"b_profile": self.profile, "b_type": resource_type.name, "b_id": resource_id}

            def statements(conn: sa.Connection) -> None:
                conn.execute(_DELETE_RESOURCE, key)
                if key["b_type"] == GROUP:
                    conn.execute(_DELETE_MEMBERS, key)

            self._submit(statements)

    def _write(
        self,
        resource_type: str,
        resource: Resource[Any],
        *,
        created: bool = False,
        added: Members | None = None,
        removed: list[str] | None = None,
        changed: Members | None = None,
    ) -> None:
        """Submit a resource's row and, for a group, the member rows that changed: one change.

        Everything the statements write is taken now, so later changes in memory do not leak
        into them.
        """
        body = resource.model_dump(mode="json")
        body.pop(MEMBERS, None)
        key = {"b_profile": self.profile, "b_type": resource_type, "b_id": str(resource.id)}
        row = key | {"b_body": body, "b_at": _now()}
        gone = [key | {"b_value": value} for value in removed or []]
        changed_rows = [key | {"b_value": v, "b_body": b} for v, b in (changed or {}).items()]
        new_rows = [
            {
                "profile": self.profile,
                "group_id": key["b_id"],
                "member_id": value,
                "seq": next(self._seq),
                "body": member_body,
            }
            for value, member_body in (added or {}).items()
        ]

        def statements(conn: sa.Connection) -> None:
            if created or conn.execute(_UPDATE_RESOURCE, row).rowcount == 0:
                conn.execute(_INSERT_RESOURCE, row)
            if gone:
                conn.execute(_DELETE_MEMBER, gone)
            if changed_rows:
                conn.execute(_UPDATE_MEMBER, changed_rows)
            if new_rows:
                conn.execute(inbox_members.insert(), new_rows)

        self._submit(statements)

    def _submit(self, statements: Statements) -> None:
        """Hand a change to the writer. A request collecting its writes (`pending_writes`) waits
        for them itself; any other caller waits here, and the memory is rebuilt if it failed.

        Each change also moves the inbox's generation, in its own transaction: a delta run that
        finds the generation where the last run left it knows the inbox holds what it held."""
        profile = {"b_profile": self.profile}

        def counted(conn: sa.Connection) -> None:
            statements(conn)
            if conn.execute(_BUMP_GENERATION, profile).rowcount == 0:
                conn.execute(_FIRST_GENERATION, profile)

        future = self.writer.submit(counted)
        if self.writer.collecting():
            return
        try:
            future.result()
        except Exception:
            self.recover()
            raise


def _bare(resource: Resource[Any]) -> Resource[Any]:
    """What the in-memory storage holds: no password (usersync provisions none and keeps none),
    and a group without its members (kept apart, by value)."""
    update: dict[str, Any] = {}
    if getattr(resource, "password", None) is not None:
        update["password"] = None
    if getattr(resource, MEMBERS, None) is not None:
        update[MEMBERS] = None
    return resource.model_copy(update=update) if update else resource


def _members_of(group: Resource[Any]) -> Members:
    """A group's members as stored JSON, by value. A value listed twice is one member, at its
    first place, with the sub-attributes of both (the later one's where both have one): so
    adding a member already there changes at most its display, and never lists it twice.

    Raises:
        InvalidValueException: a member without a value (it would name nothing).
    """
    members: Members = {}
    for member in getattr(group, MEMBERS, None) or []:
        body = member.model_dump(mode="json")
        value = body.get("value")
        if not isinstance(value, str) or not value:
            raise InvalidValueException(detail="each member needs a value: the id it names")
        members[value] = members.get(value, {}) | body
    return members


def _content(resource: Resource[Any]) -> dict[str, Any]:
    """What a resource holds, its meta and members aside."""
    body = resource.model_dump(mode="json")
    body.pop("meta", None)
    body.pop(MEMBERS, None)
    return body


def _assembled(group: Resource[Any], members: Iterable[dict[str, Any]]) -> Resource[Any]:
    """A copy of a bare group holding `members`."""
    body = group.model_dump(mode="json")
    listed = list(members)
    if listed:
        body[MEMBERS] = listed
    return type(group).model_validate(body)


def _names_members(paths: Iterable[Any] | None) -> bool:
    return any(str(path).lower().rsplit(":", 1)[-1].startswith(MEMBERS) for path in paths or [])


def _wants_members(parameters: ResponseParameters[Any] | SearchRequest[Any] | None) -> bool:
    """Whether an answer shows groups' members (`attributes`/`excludedAttributes` aside)."""
    if parameters is None:
        return True
    if parameters.attributes:
        return _names_members(parameters.attributes)
    excluded = parameters.excluded_attributes or []
    return not any(str(path).lower().rsplit(":", 1)[-1] == MEMBERS for path in excluded)


def _mentions_members(search_request: SearchRequest[Any]) -> bool:
    """Whether a search filters or sorts on members (then it needs whole groups)."""
    return MEMBERS in str(search_request.filter or "").lower() or _names_members(
        [search_request.sort_by] if search_request.sort_by else []
    )
