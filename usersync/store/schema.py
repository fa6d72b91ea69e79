"""The store's tables (SQLAlchemy Core) and the migrations that bring an old database up to date.

`SCHEMA_VERSION` counts the migrations; `migrate` creates missing tables and runs each
migration step the database has not seen, recording the version in `schema_version`. A new
column or table is a new step appended to `MIGRATIONS`, never an edit of an old one.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("profile", sa.String(100), nullable=False, index=True),
    sa.Column("target", sa.String(100), nullable=False),
    sa.Column("flow_run_id", sa.String(64), nullable=True),
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column(
        "status", sa.String(20), nullable=False
    ),  # running|planned|succeeded|partial|failed|interrupted
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("counts", sa.JSON, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
)

operations = sa.Table(
    "operations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("op", sa.String(32), nullable=False),
    sa.Column("source_id", sa.String(255), nullable=True),
    sa.Column("target_key", sa.String(255), nullable=True),
    sa.Column("username", sa.String(255), nullable=True),
    sa.Column("group_name", sa.String(255), nullable=True),
    sa.Column("before", sa.Text, nullable=True),
    sa.Column("after", sa.Text, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column(
        "status", sa.String(20), nullable=False
    ),  # planned|succeeded|failed|skipped|unknown (run interrupted)
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("executed_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("run_id", "seq"),
)

ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("profile", sa.String(100), nullable=False),
    sa.Column("target", sa.String(100), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),  # user|group
    sa.Column("source_id", sa.String(255), nullable=True),
    sa.Column("target_key", sa.String(255), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("origin", sa.String(10), nullable=False),  # created|adopted
    # the target instance (normalised base URL): ownership is per instance, so one profile's
    # accounts are never taken by another profile pointed at the same Jira
    sa.Column("instance", sa.String(1024), nullable=True, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("profile", "target", "kind", "target_key"),
    sa.Index("ix_ledger_source", "profile", "target", "kind", "source_id"),
)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

Migration = Callable[[sa.Connection], None]


def _inbox_group_members_as_rows(conn: sa.Connection) -> None:
    """Version 2: each inbox group's members move from its JSON body to `inbox_members` rows.

    A member without a value (it names nothing) is dropped; a value listed twice is kept once,
    with its last content at its first position, as the inbox stores members from now on.
    """
    groups = conn.execute(
        sa.select(inbox_resources.c.profile, inbox_resources.c.id, inbox_resources.c.body).where(
            inbox_resources.c.resource_type == "Group"
        )
    ).all()
    for profile, group_id, body in groups:
        members: dict[str, dict] = {}
        for member in body.get("members") or []:
            if isinstance(member, dict) and isinstance(member.get("value"), str):
                members[member["value"]] = member
        rows = [
            {"profile": profile, "group_id": group_id, "member_id": value, "seq": seq, "body": m}
            for seq, (value, m) in enumerate(members.items(), start=1)
        ]
        if rows:
            conn.execute(inbox_members.insert(), rows)
        if "members" in body:
            conn.execute(
                inbox_resources.update()
                .where(
                    inbox_resources.c.profile == profile,
                    inbox_resources.c.resource_type == "Group",
                    inbox_resources.c.id == group_id,
                )
                .values(body={key: value for key, value in body.items() if key != "members"})
            )


def _create_missing_tables(conn: sa.Connection) -> None:
    """Version 3: the profile lease table (`profile_leases`); `migrate` creates it first."""
    metadata.create_all(conn)


def _ledger_instance(conn: sa.Connection) -> None:
    """Version 4: the ledger records the target instance of each entry (filled as runs go)."""
    if "instance" not in {c["name"] for c in sa.inspect(conn).get_columns("ledger")}:
        conn.execute(sa.text("ALTER TABLE ledger ADD COLUMN instance VARCHAR(1024)"))
        conn.execute(sa.text("CREATE INDEX ix_ledger_instance ON ledger (instance)"))


def _source_marks(conn: sa.Connection) -> None:
    """Version 7: the inbox counts its changes; an applied state keeps the source's mark."""
    _create_missing_tables(conn)
    if "source_mark" not in {c["name"] for c in sa.inspect(conn).get_columns("applied_states")}:
        conn.execute(sa.text("ALTER TABLE applied_states ADD COLUMN source_mark VARCHAR(200)"))


def _inbox_members_by_member(conn: sa.Connection) -> None:
    """Version 8: the inbox's members are found by member too (`ix_inbox_members_member`)."""
    indexes = {i["name"] for i in sa.inspect(conn).get_indexes("inbox_members")}
    if "ix_inbox_members_member" not in indexes:
        conn.execute(
            sa.text("CREATE INDEX ix_inbox_members_member ON inbox_members (profile, member_id)")
        )


#: Steps after the initial schema, in order; step i brings version i+1 to i+2.
MIGRATIONS: list[Migration] = [
    _inbox_group_members_as_rows,
    _create_missing_tables,
    _ledger_instance,
    _create_missing_tables,  # version 5: `refusals`
    _create_missing_tables,  # version 6: `applied_states`
    _source_marks,  # version 7: `inbox_generations`, `applied_states.source_mark`
    _inbox_members_by_member,  # version 8: `ix_inbox_members_member`
]

SCHEMA_VERSION = 1 + len(MIGRATIONS)


def schema_version_of(engine: sa.Engine) -> int | None:
    """The version the database records, or None for an empty database. Reads only."""
    if not sa.inspect(engine).has_table("schema_version"):
        return None
    with engine.connect() as conn:
        return conn.execute(sa.select(schema_version.c.version)).scalar()


def migrate(engine: sa.Engine) -> int:
    """Create missing tables and run pending migrations; return the schema version now.

    A database already at `SCHEMA_VERSION` is only read, never written: opening the store
    must not take SQLite's write lock (a large first sync of one profile would otherwise
    make every other profile's run and the inbox wait for it). A new table therefore comes
    with a migration step too (one that creates it), so that existing databases get it.
    """
    current = schema_version_of(engine)
    if current == SCHEMA_VERSION:
        return SCHEMA_VERSION
    with engine.begin() as conn:
        metadata.create_all(conn)
        current = conn.execute(sa.select(schema_version.c.version)).scalar()
        if current is None:
            conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
            return SCHEMA_VERSION
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"the store's schema is version {current}, newer than this usersync "
                f"({SCHEMA_VERSION}); upgrade usersync"
            )
        for step in MIGRATIONS[current - 1 :]:
            step(conn)
        conn.execute(schema_version.update().values(version=SCHEMA_VERSION))
    return SCHEMA_VERSION


#: SCIM resources miniOrange (or another IdP) pushed into the inbox, one row per resource:
#: the whole resource as JSON, so the inbox serves it back after a restart.
inbox_resources = sa.Table(
    "inbox_resources",
    metadata,
    sa.Column("profile", sa.String(100), primary_key=True),
    sa.Column("resource_type", sa.String(50), primary_key=True),  # User|Group
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

#: Bearer tokens of the inbox, by profile: only their SHA-256 is kept. During a rotation the
#: old token has an `expires_at`, so both work until then.
inbox_tokens = sa.Table(
    "inbox_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("profile", sa.String(100), nullable=False, index=True),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
)

#: The members of the inbox's groups, one row per group and member (the group's row holds the
#: rest of it): a PATCH that adds or removes one member writes one row, whatever the group's
#: size. `seq` keeps the order members were added in. `ix_inbox_members_member` finds a
#: user's groups (a run scoped to a few identities reads only theirs).
inbox_members = sa.Table(
    "inbox_members",
    metadata,
    sa.Column("profile", sa.String(100), primary_key=True),
    sa.Column("group_id", sa.String(64), primary_key=True),
    sa.Column("member_id", sa.String(255), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Index("ix_inbox_members_member", "profile", "member_id"),
)

#: Incremental extraction (Active Directory), per profile: the uSNChanged watermark of the last
#: successful run, the DC it belongs to (USNs are per DC), the fingerprint of the scope it was
#: read with, when it was taken and when the last full read was.
source_watermarks = sa.Table(
    "source_watermarks",
    metadata,
    sa.Column("profile", sa.String(100), primary_key=True),
    sa.Column("dc", sa.String(1024), nullable=False),
    sa.Column("usn", sa.BigInteger, nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("full_read_at", sa.DateTime(timezone=True), nullable=False),
)

#: The snapshot the last successful run synced, which incremental reads merge changes into:
#: one row per part (users, groups, memberships), the frame as zlib-compressed JSON, so 100k
#: users are replaced with one statement and read back with one.
source_snapshots = sa.Table(
    "source_snapshots",
    metadata,
    sa.Column("profile", sa.String(100), primary_key=True),
    sa.Column("part", sa.String(20), primary_key=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
)

#: Source users a product refused although the client predicted no refusal (a 4xx about the
#: user's data): not sent again while `fingerprint` (a hash of the values sent) stays the same,
#: so one bad user is a listed rejection, never a run that fails every hour.
refusals = sa.Table(
    "refusals",
    metadata,
    sa.Column("profile", sa.String(100), primary_key=True),
    sa.Column("target", sa.String(100), primary_key=True),
    sa.Column("source_id", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("refused_at", sa.DateTime(timezone=True), nullable=False),
)

#: One row per profile while a run of it is under way: who holds it and until when. A second
#: run of the same profile, from any entry point, waits or stops; a lease that was not renewed
#: (the holder crashed) expires, so a crash never locks a profile for good.
profile_leases = sa.Table(
    "profile_leases",
    metadata,
    sa.Column("profile", sa.String(100), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

#: What the last runs wrote to each product, per profile and target, for delta runs
#: (`usersync.delta`): a fingerprint per linked account (with its key, name and active flag) and
#: per managed group, each part a frame in the store's frame encoding; when the last reconcile
#: run (which read everything) ended, and the fingerprint of the settings it ran with.
applied_states = sa.Table(
    "applied_states",
    metadata,
    sa.Column("profile", sa.String(100), primary_key=True),
    sa.Column("target", sa.String(100), primary_key=True),
    sa.Column("users", sa.LargeBinary, nullable=False),
    sa.Column("groups", sa.LargeBinary, nullable=False),
    sa.Column("basis", sa.String(64), nullable=False),
    sa.Column("reconciled_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    # The source's change mark and the rules the record was made at, when it holds everything
    # the source said then (`sync.unchanged_source`); NULL otherwise.
    sa.Column("source_mark", sa.String(200), nullable=True),
)

#: How many changes each profile's inbox has accepted: a count every accepted write moves in
#: the transaction that writes it, so an equal count means the inbox holds what it held.
inbox_generations = sa.Table(
    "inbox_generations",
    metadata,
    sa.Column("profile", sa.String(100), primary_key=True),
    sa.Column("generation", sa.BigInteger, nullable=False),
)
