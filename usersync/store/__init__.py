"""The store: runs, the audit trail of every operation, and the ledger of what usersync manages.

`Store.open(url)` connects to any SQLAlchemy URL (a SQLite file by default, PostgreSQL in
production), creates or migrates the schema, and offers the few calls a sync needs: start and
finish a run, record a plan and each operation's outcome, read and update the ledger, and keep
an incremental source's watermark with the snapshot it belongs to.
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from usersync.config import usersync_home
from usersync.model import LEDGER_COLUMNS, conform, empty_frame
from usersync.store.schema import (
    applied_states,
    inbox_generations,
    ledger,
    migrate,
    operations,
    profile_leases,
    refusals,
    runs,
    source_snapshots,
    source_watermarks,
)

__all__ = [
    "DEFAULT_STORE_PATH",
    "LEASE_SECONDS",
    "AppliedRecord",
    "LedgerEntry",
    "SourceWatermark",
    "Store",
    "store_url",
]


@dataclass(frozen=True)
class AppliedRecord:
    """What the last runs wrote to one product for one profile (see `usersync.delta`)."""

    #: one row per linked account: source_id, fingerprint (int64), target_key, name, active
    users: pd.DataFrame
    #: one row per managed group: group (case-folded), fingerprint (int64)
    groups: pd.DataFrame
    #: the fingerprint of the profile settings and columns the fingerprints were made with
    basis: str
    #: when the last reconcile run of this product ended without a failure (None: never)
    reconciled_at: datetime | None
    applied_at: datetime
    #: the source's change mark and rules this record holds everything of (None: unknown)
    source_mark: str | None = None


#: How long a profile's lease lasts unless renewed (a run renews it as it goes).
LEASE_SECONDS = 900.0

#: The default store: a SQLite file under `usersync_home()`.
DEFAULT_STORE_PATH = Path("var") / "usersync.db"
#: Rows written per transaction when recording a plan, outcomes or ledger entries: a first
#: sync of 100k users never holds SQLite's write lock for long at a stretch.
WRITE_BATCH = 2000
#: How long a SQLite connection waits for another writer before "database is locked".
SQLITE_BUSY_SECONDS = 60


def store_url() -> str:
    """$USERSYNC_STORE_URL, else the SQLite file var/usersync.db under `usersync_home()`."""
    url = os.environ.get("USERSYNC_STORE_URL")
    return url or f"sqlite:///{usersync_home() / DEFAULT_STORE_PATH}"


def _batches(rows: list, size: int = WRITE_BATCH) -> Iterable[list]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class LedgerEntry:
    """One account or group usersync manages in a target."""

    kind: str  # "user" or "group"
    target_key: str
    name: str
    source_id: str | None = None
    origin: str = "created"


@dataclass(frozen=True)
class SourceWatermark:
    """Where the last successful incremental-capable read of a profile's source stood."""

    dc: str  # the domain controller's identity: USNs mean nothing on another DC
    usn: int  # its highestCommittedUSN, taken before the read
    fingerprint: str  # of the scope read (base DNs, filters, attributes)
    read_at: datetime
    full_read_at: datetime  # the last full read, which is what catches deletions


@dataclass(frozen=True)
class StoredSnapshot:
    """The parts of a saved source snapshot as stored; decoding them is the dear part, so it
    happens on demand (an incremental read decodes them while its searches run)."""

    bodies: Mapping[str, bytes]

    def parts(
        self, *, categorical: Mapping[str, Iterable[str]] | None = None
    ) -> dict[str, pd.DataFrame]:
        """Every part as a frame; `categorical` names, per part, columns to decode as pandas
        categoricals over their stored distinct values (no string per row is built).

        A column saved as positions in another part's column (`Store.save_source_watermark`,
        `shared`) takes that column's decoded values: the part it names is decoded first.

        Raises:
            ValueError: a column names a part or column not stored, or parts name each other.
        """
        categorical = categorical or {}
        frames: dict[str, pd.DataFrame] = {}
        decoding: set[str] = set()

        def decoded(part: str) -> pd.DataFrame:
            if part not in frames:
                if part in decoding or part not in self.bodies:
                    raise ValueError(f"stored snapshot: part {part!r} is missing or circular")
                decoding.add(part)
                frames[part] = _decode_frame(
                    self.bodies[part],
                    categorical=tuple(categorical.get(part, ())),
                    shared=shared_column,
                )
            return frames[part]

        def shared_column(name: str) -> pd.api.extensions.ExtensionArray:
            part, _, column = name.partition(".")
            frame = decoded(part)
            if column not in frame:
                raise ValueError(f"stored snapshot: no column {name!r} to take values from")
            return frame[column].array

        return {part: decoded(part) for part in self.bodies}


class Store:
    """Runs, operations and the ledger in one SQL database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str | None = None) -> Store:
        """Connect and bring the schema up to date.

        A relative SQLite path is created with its folder; PostgreSQL URLs need the `psycopg`
        driver (`postgresql+psycopg://user:pw@host/db`).
        """
        url = url or store_url()
        parsed = sa.engine.make_url(url)
        if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
            _private_file(Path(parsed.database))
        sqlite = parsed.drivername.startswith("sqlite")
        engine = sa.create_engine(
            url, future=True, connect_args={"timeout": SQLITE_BUSY_SECONDS} if sqlite else {}
        )
        if sqlite:
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        migrate(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- runs ----------------------------------------------------------------------------

    def start_run(
        self, profile: str, target: str, *, dry_run: bool, flow_run_id: str | None = None
    ) -> int:
        """Open a run; earlier runs of this profile and target still "running" are closed.

        A run still marked running when the next one starts was killed (a crash, a cancelled
        flow run, a lost worker): it is closed as `interrupted`, and its operations that never
        got an outcome as `unknown` — the new run plans from what the target really holds.
        """
        with self.engine.begin() as conn:
            stale = [
                row.id
                for row in conn.execute(
                    sa.select(runs.c.id).where(
                        runs.c.profile == profile,
                        runs.c.target == target,
                        runs.c.status == "running",
                    )
                )
            ]
            if stale:
                conn.execute(
                    runs.update()
                    .where(runs.c.id.in_(stale))
                    .values(
                        status="interrupted",
                        finished_at=_now(),
                        error="interrupted: the run ended without recording its outcome "
                        "(closed by the next run)",
                    )
                )
                conn.execute(
                    operations.update()
                    .where(operations.c.run_id.in_(stale), operations.c.status == "planned")
                    .values(status="unknown", error="the run was interrupted before its outcome")
                )
            result = conn.execute(
                runs.insert().values(
                    profile=profile,
                    target=target,
                    flow_run_id=flow_run_id,
                    dry_run=dry_run,
                    status="running",
                    started_at=_now(),
                )
            )
            return int(result.inserted_primary_key[0])

    def finish_run(
        self,
        run_id: int,
        status: str,
        counts: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(status=status, finished_at=_now(), counts=dict(counts or {}), error=error)
            )

    def latest_runs(self, profile: str | None = None) -> list[dict[str, Any]]:
        """The latest finished run (not interrupted) of each profile and target, as dicts."""
        done = sa.and_(runs.c.finished_at.is_not(None), runs.c.status != "interrupted")
        if profile:
            done = sa.and_(done, runs.c.profile == profile)
        latest = (
            sa.select(sa.func.max(runs.c.id)).where(done).group_by(runs.c.profile, runs.c.target)
        )
        query = sa.select(runs).where(runs.c.id.in_(latest)).order_by(runs.c.id.desc())
        with self.engine.connect() as conn:
            return [dict(run) for run in conn.execute(query).mappings()]

    def latest_conflicts(self, profile: str | None = None) -> pd.DataFrame:
        """The conflicts of each profile's and target's latest finished run: profile, target,
        run, finished_at, username, target_key, reason (empty when that run had none)."""
        rows = [
            {
                "profile": run["profile"],
                "target": run["target"],
                "run": run["id"],
                "finished_at": run["finished_at"],
                "username": conflict.get("username", ""),
                "target_key": conflict.get("target_key", ""),
                "reason": conflict.get("reason", ""),
            }
            for run in self.latest_runs(profile)
            for conflict in (run["counts"] or {}).get("conflicts", [])
        ]
        columns = ["profile", "target", "run", "finished_at", "username", "target_key", "reason"]
        return pd.DataFrame(rows, columns=columns)

    def last_source_counts(self, profile: str) -> dict[str, int] | None:
        """What the profile's last finished run read from its source (users, groups,
        memberships), to estimate how far a read has come; None if no run recorded it."""
        query = (
            sa.select(runs.c.counts)
            .where(runs.c.profile == profile, runs.c.finished_at.is_not(None))
            .order_by(runs.c.id.desc())
            .limit(20)
        )
        with self.engine.connect() as conn:
            for (counts,) in conn.execute(query):
                source = (counts or {}).get("source")
                if isinstance(source, dict) and source:
                    return {str(k): int(v) for k, v in source.items()}
        return None

    def runs(self, profile: str | None = None, limit: int = 50) -> pd.DataFrame:
        query = sa.select(runs).order_by(runs.c.id.desc()).limit(limit)
        if profile:
            query = query.where(runs.c.profile == profile)
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(query).mappings().all())

    # -- operations ----------------------------------------------------------------------

    def record_plan(self, run_id: int, plan: pd.DataFrame) -> None:
        """Store every planned operation with status `planned`, in one statement."""
        if not len(plan):
            return
        # The full desired values of update rows are for the load only; before/after hold the
        # change itself.
        clean = plan.drop(columns=["target", "desired"], errors="ignore").astype(object)
        clean = clean.where(clean.notna(), None).rename(columns={"group": "group_name"})
        rows = clean.assign(run_id=run_id, status="planned").to_dict("records")
        for row in rows:
            row["seq"] = int(row["seq"])
        for batch in _batches(rows):
            with self.engine.begin() as conn:
                conn.execute(operations.insert(), batch)

    def record_outcomes(self, run_id: int, outcomes: Iterable[tuple[int, str, str | None]]) -> None:
        """Set (seq, status, error) of executed operations: succeeded, failed or skipped."""
        rows = [
            {"b_run": run_id, "b_seq": seq, "status": status, "error": error, "at": _now()}
            for seq, status, error in outcomes
        ]
        if not rows:
            return
        statement = (
            operations.update()
            .where(operations.c.run_id == sa.bindparam("b_run"))
            .where(operations.c.seq == sa.bindparam("b_seq"))
            .values(
                status=sa.bindparam("status"),
                error=sa.bindparam("error"),
                executed_at=sa.bindparam("at"),
            )
        )
        for batch in _batches(rows):
            with self.engine.begin() as conn:
                conn.execute(statement, batch)

    def operations(self, run_id: int) -> pd.DataFrame:
        query = (
            sa.select(operations).where(operations.c.run_id == run_id).order_by(operations.c.seq)
        )
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(query).mappings().all())

    # -- ledger --------------------------------------------------------------------------

    def ledger(self, profile: str, target: str) -> pd.DataFrame:
        """What usersync manages in this target for this profile (`model.LEDGER_COLUMNS`)."""
        query = sa.select(
            ledger.c.kind, ledger.c.source_id, ledger.c.target_key, ledger.c.name, ledger.c.origin
        ).where(ledger.c.profile == profile, ledger.c.target == target)
        with self.engine.connect() as conn:
            result = conn.execute(query)
            names, rows = list(result.keys()), result.all()
        if not rows:
            return empty_frame(LEDGER_COLUMNS)
        # Tuples, as `refused` reads: a frame from 100k row mappings takes ten times as long.
        frame = pd.DataFrame([tuple(r) for r in rows], columns=names)
        return conform(frame, LEDGER_COLUMNS, what="ledger")

    def recover_created_groups(
        self, profile: str, target: str, *, instance: str | None = None
    ) -> list[str]:
        """Groups an interrupted run of this profile created in `target` (its `create_group`
        recorded as succeeded) that the ledger never learnt of: the process died between the
        two records. They join the ledger as created (they are usersync's: an on-the-fly rule
        fills them), and their names are returned. Operations of runs that ended as they
        should, or whose outcome is unknown, are left alone: a group made by hand is never
        taken for one usersync made."""
        query = (
            sa.select(operations.c.group_name)
            .join(runs, runs.c.id == operations.c.run_id)
            .where(
                runs.c.profile == profile,
                runs.c.target == target,
                runs.c.status.in_(("interrupted", "running")),
                runs.c.dry_run.is_(False),
                operations.c.op == "create_group",
                operations.c.status == "succeeded",
            )
            .distinct()
        )
        known = sa.select(ledger.c.target_key).where(
            ledger.c.profile == profile, ledger.c.target == target, ledger.c.kind == "group"
        )
        with self.engine.connect() as conn:
            made = [name for (name,) in conn.execute(query) if name]
            held = {key for (key,) in conn.execute(known)}
        lost = list(dict.fromkeys(n for n in made if n.casefold() not in held))
        self.remember(
            profile,
            target,
            [LedgerEntry("group", n.casefold(), n, origin="created") for n in lost],
            instance=instance,
        )
        return lost

    def remember(
        self,
        profile: str,
        target: str,
        entries: Iterable[LedgerEntry],
        *,
        instance: str | None = None,
    ) -> None:
        """Insert or update ledger entries (keyed by kind and target key).

        `instance` (the target's normalised base URL) is recorded with them, so that other
        profiles pointed at the same instance see these claims (`claims`).
        """
        entries = list(entries)
        if not entries:
            return
        now = _now()
        for batch in _batches(entries):
            self._remember(profile, target, batch, now, instance)

    def _remember(
        self,
        profile: str,
        target: str,
        entries: list[LedgerEntry],
        now: datetime,
        instance: str | None,
    ) -> None:
        """One batch of `remember`, in one transaction and a handful of statements."""
        # The last word on a key wins, as if the entries were applied one by one.
        by_key = {(e.kind, e.target_key): e for e in entries}
        scope = (ledger.c.profile == profile, ledger.c.target == target)
        with self.engine.begin() as conn:
            # One account per source user: a link to an account that was deleted by hand and
            # re-created is replaced, not kept beside the new one.
            linked = [e for e in by_key.values() if e.kind == "user" and e.source_id]
            if linked:
                conn.execute(
                    ledger.delete().where(
                        *scope,
                        ledger.c.kind == "user",
                        ledger.c.source_id.in_([e.source_id for e in linked]),
                        ledger.c.target_key.not_in([e.target_key for e in linked]),
                    )
                )
            existing: set[tuple[str, str]] = set()
            for kind in {kind for kind, _ in by_key}:
                keys = [key for k, key in by_key if k == kind]
                existing |= {
                    (kind, row.target_key)
                    for row in conn.execute(
                        sa.select(ledger.c.target_key).where(
                            *scope, ledger.c.kind == kind, ledger.c.target_key.in_(keys)
                        )
                    )
                }
            updates = [
                {"b_kind": e.kind, "b_key": e.target_key, "name": e.name, "source_id": e.source_id}
                for key, e in by_key.items()
                if key in existing
            ]
            if updates:
                conn.execute(
                    ledger.update()
                    .where(
                        *scope,
                        ledger.c.kind == sa.bindparam("b_kind"),
                        ledger.c.target_key == sa.bindparam("b_key"),
                    )
                    .values(
                        name=sa.bindparam("name"),
                        source_id=sa.bindparam("source_id"),
                        updated_at=now,
                        instance=instance,
                    ),
                    updates,
                )
            inserts = [
                {
                    "profile": profile,
                    "target": target,
                    "kind": e.kind,
                    "target_key": e.target_key,
                    "name": e.name,
                    "source_id": e.source_id,
                    "origin": e.origin,
                    "instance": instance,
                    "created_at": now,
                    "updated_at": now,
                }
                for key, e in by_key.items()
                if key not in existing
            ]
            if inserts:
                conn.execute(ledger.insert(), inserts)

    def claims(self, instance: str, *, besides: str) -> pd.DataFrame:
        """Accounts other profiles manage on this target instance: profile, target_key, name.

        A profile never adopts, updates, deactivates or regroups an account another profile
        on the same instance manages.
        """
        query = sa.select(ledger.c.profile, ledger.c.target_key, ledger.c.name).where(
            ledger.c.instance == instance, ledger.c.kind == "user", ledger.c.profile != besides
        )
        with self.engine.connect() as conn:
            result = conn.execute(query)
            names, rows = list(result.keys()), result.all()
        return pd.DataFrame([tuple(r) for r in rows], columns=names, dtype="string")

    def claimed_twice(self, instance: str) -> pd.DataFrame:
        """Accounts on this instance that more than one profile's ledger links: target_key,
        name, profiles (comma-separated). usersync never makes these; a restored backup or a
        hand-edited store can, and the drift report lists them. Found by the database (a
        sync asks once per target; the instance may hold 100k links)."""
        users = sa.and_(ledger.c.instance == instance, ledger.c.kind == "user")
        shared = (
            sa.select(ledger.c.target_key)
            .where(users)
            .group_by(ledger.c.target_key)
            .having(sa.func.count(sa.distinct(ledger.c.profile)) > 1)
        )
        query = sa.select(ledger.c.target_key, ledger.c.name, ledger.c.profile).where(
            users, ledger.c.target_key.in_(shared)
        )
        with self.engine.connect() as conn:
            rows = pd.DataFrame(
                conn.execute(query).mappings().all(), columns=["target_key", "name", "profile"]
            )
        if rows.empty:
            return pd.DataFrame(columns=["target_key", "name", "profiles"], dtype="string")
        grouped = rows.groupby("target_key").agg(
            name=("name", "first"), profiles=("profile", lambda p: ", ".join(sorted(set(p))))
        )
        return grouped.reset_index().astype("string")

    def release_claims(self, instance: str, target_keys: Iterable[str], *, besides: str) -> None:
        """Drop other profiles' links to these accounts: `besides` took them over (by the
        profiles' precedence) and manages them alone from now."""
        self._drop_links(
            target_keys,
            ledger.c.instance == instance,
            ledger.c.kind == "user",
            ledger.c.profile != besides,
        )

    def forget(self, profile: str, target: str, kind: str, target_keys: Iterable[str]) -> None:
        """Drop ledger entries (accounts or groups that no longer exist in the target)."""
        self._drop_links(
            target_keys,
            ledger.c.profile == profile,
            ledger.c.target == target,
            ledger.c.kind == kind,
        )

    # -- what a product refused -------------------------------------------------------------

    def refused(self, profile: str, target: str) -> pd.DataFrame:
        """The source users this target refused: source_id, fingerprint, reason, refused_at."""
        query = sa.select(
            refusals.c.source_id, refusals.c.fingerprint, refusals.c.reason, refusals.c.refused_at
        ).where(refusals.c.profile == profile, refusals.c.target == target)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return pd.DataFrame(
            [tuple(r) for r in rows], columns=["source_id", "fingerprint", "reason", "refused_at"]
        )

    def remember_refusals(
        self, profile: str, target: str, refused: Iterable[tuple[str, str, str]]
    ) -> None:
        """Record (source_id, fingerprint, reason) refusals, replacing older ones of the user."""
        rows = [
            {
                "profile": profile,
                "target": target,
                "source_id": sid,
                "fingerprint": print_,
                "reason": reason[:2000],
                "refused_at": _now(),
            }
            for sid, print_, reason in refused
        ]
        if not rows:
            return
        self.forget_refusals(profile, target, [r["source_id"] for r in rows])
        with self.engine.begin() as conn:
            conn.execute(refusals.insert(), rows)

    def applied_state(self, profile: str, target: str) -> AppliedRecord | None:
        """What the last runs wrote to `target` for `profile`; None before the first."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(applied_states).where(
                        applied_states.c.profile == profile, applied_states.c.target == target
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        return AppliedRecord(
            users=_decode_frame(row["users"]),
            groups=_decode_frame(row["groups"]),
            basis=row["basis"],
            reconciled_at=_aware(row["reconciled_at"]) if row["reconciled_at"] else None,
            applied_at=_aware(row["applied_at"]),
            source_mark=row["source_mark"],
        )

    def applied_marks(self, profile: str) -> dict[str, tuple[str | None, datetime | None]]:
        """Per target: the source mark of what was written, and when the last reconcile
        ended, without reading the records themselves (`sync.unchanged_source`)."""
        query = sa.select(
            applied_states.c.target, applied_states.c.source_mark, applied_states.c.reconciled_at
        ).where(applied_states.c.profile == profile)
        with self.engine.connect() as conn:
            return {
                target: (mark, _aware(at) if at else None)
                for target, mark, at in conn.execute(query)
            }

    def mark_applied_state(self, profile: str, target: str, source_mark: str | None) -> None:
        """Set the source mark of what was written (a delta run that found nothing moved)."""
        with self.engine.begin() as conn:
            conn.execute(
                applied_states.update()
                .where(applied_states.c.profile == profile, applied_states.c.target == target)
                .values(source_mark=source_mark)
            )

    def inbox_generation(self, profile: str) -> int | None:
        """How many changes the profile's inbox has accepted; None if it counted none."""
        query = sa.select(inbox_generations.c.generation).where(
            inbox_generations.c.profile == profile
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def save_applied_state(self, profile: str, target: str, record: AppliedRecord) -> None:
        """Replace what the store knows was written to `target` for `profile`."""
        with self.engine.begin() as conn:
            conn.execute(
                applied_states.delete().where(
                    applied_states.c.profile == profile, applied_states.c.target == target
                )
            )
            conn.execute(
                applied_states.insert().values(
                    profile=profile,
                    target=target,
                    users=_encode_frame(record.users),
                    groups=_encode_frame(record.groups),
                    basis=record.basis,
                    reconciled_at=record.reconciled_at,
                    applied_at=record.applied_at,
                    source_mark=record.source_mark,
                )
            )

    def forget_applied_state(self, profile: str, target: str) -> None:
        """Forget what was written (the next delta run of the target reconciles instead)."""
        with self.engine.begin() as conn:
            conn.execute(
                applied_states.delete().where(
                    applied_states.c.profile == profile, applied_states.c.target == target
                )
            )

    def forget_refusals(self, profile: str, target: str, source_ids: Iterable[str]) -> None:
        """Drop the refusals of users whose data changed (they are sent again)."""
        ids = list(source_ids)
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                refusals.delete().where(
                    refusals.c.profile == profile,
                    refusals.c.target == target,
                    refusals.c.source_id.in_(ids),
                )
            )

    def _drop_links(self, target_keys: Iterable[str], *where: Any) -> None:
        keys = list(target_keys)
        if not keys:
            return
        with self.engine.begin() as conn:
            conn.execute(ledger.delete().where(*where, ledger.c.target_key.in_(keys)))

    # -- one run per profile ---------------------------------------------------------------

    def acquire_lease(
        self, profile: str, holder: str, *, seconds: float = LEASE_SECONDS
    ) -> dict[str, Any] | None:
        """Take the profile's lease for `seconds`; None when taken, else who holds it.

        Returns:
            None if `holder` now holds the lease; otherwise the current lease as a dict
            (holder, acquired_at, expires_at) so the caller can say who is running.
        """
        now = _now()
        until = now + timedelta(seconds=seconds)
        with self.engine.begin() as conn:
            taken = conn.execute(
                profile_leases.update()
                .where(
                    profile_leases.c.profile == profile,
                    sa.or_(profile_leases.c.expires_at < now, profile_leases.c.holder == holder),
                )
                .values(holder=holder, acquired_at=now, expires_at=until)
            )
            if taken.rowcount == 1:
                return None
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    profile_leases.insert().values(
                        profile=profile, holder=holder, acquired_at=now, expires_at=until
                    )
                )
            return None
        except sa.exc.IntegrityError:
            pass  # someone else holds it (or took it a moment ago)
        with self.engine.connect() as conn:
            row = (
                conn.execute(sa.select(profile_leases).where(profile_leases.c.profile == profile))
                .mappings()
                .first()
            )
        if row is None:  # released meanwhile: try once more
            return self.acquire_lease(profile, holder, seconds=seconds)
        return {
            "holder": row["holder"],
            "acquired_at": _aware(row["acquired_at"]),
            "expires_at": _aware(row["expires_at"]),
        }

    def renew_lease(self, profile: str, holder: str, *, seconds: float = LEASE_SECONDS) -> bool:
        """Extend the holder's lease; False if it is no longer the holder's."""
        with self.engine.begin() as conn:
            renewed = conn.execute(
                profile_leases.update()
                .where(profile_leases.c.profile == profile, profile_leases.c.holder == holder)
                .values(expires_at=_now() + timedelta(seconds=seconds))
            )
        return renewed.rowcount == 1

    def release_lease(self, profile: str, holder: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                profile_leases.delete().where(
                    profile_leases.c.profile == profile, profile_leases.c.holder == holder
                )
            )

    # -- incremental sources -------------------------------------------------------------

    def source_checkpoint(
        self, profile: str, parts: Collection[str] | None = None
    ) -> tuple[SourceWatermark, StoredSnapshot]:
        """The profile's watermark and the snapshot saved with it (only `parts` of it, when
        named), read in one transaction and not yet decoded.

        Raises:
            KeyError: none saved yet (a first run, or incremental reads never succeeded).
        """
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(source_watermarks).where(source_watermarks.c.profile == profile)
                )
                .mappings()
                .first()
            )
            query = sa.select(source_snapshots.c.part, source_snapshots.c.body).where(
                source_snapshots.c.profile == profile
            )
            if parts is not None:
                query = query.where(source_snapshots.c.part.in_(list(parts)))
            bodies = conn.execute(query).all() if parts is None or parts else []
        if row is None:
            raise KeyError(profile)
        watermark = SourceWatermark(
            dc=row["dc"],
            usn=int(row["usn"]),
            fingerprint=row["fingerprint"],
            read_at=_aware(row["read_at"]),
            full_read_at=_aware(row["full_read_at"]),
        )
        return watermark, StoredSnapshot({part: bytes(body) for part, body in bodies})

    def save_source_watermark(
        self,
        profile: str,
        watermark: SourceWatermark,
        parts: Mapping[str, pd.DataFrame],
        *,
        shared: Mapping[str, str] | None = None,
    ) -> None:
        """Replace the profile's watermark and snapshot parts, in one transaction.

        Args:
            shared: "part.column" -> "other_part.column" whose values it takes: such a column
                is saved as positions in the other one (when that one's values are distinct
                and hold all of its own), so its strings are neither stored nor decoded twice
                (memberships' source ids are the users' ones).
        """
        now = _now()
        sources: dict[str, dict[str, tuple[str, pd.Series]]] = {}
        for name, origin in (shared or {}).items():
            part, _, column = name.partition(".")
            origin_part, _, origin_column = origin.partition(".")
            if origin_part != part and origin_part in parts:
                values = parts[origin_part].get(origin_column)
                if values is not None:
                    sources.setdefault(part, {})[column] = (origin, values)
        with self.engine.begin() as conn:
            conn.execute(source_watermarks.delete().where(source_watermarks.c.profile == profile))
            conn.execute(source_snapshots.delete().where(source_snapshots.c.profile == profile))
            conn.execute(
                source_watermarks.insert().values(
                    profile=profile,
                    dc=watermark.dc,
                    usn=watermark.usn,
                    fingerprint=watermark.fingerprint,
                    read_at=watermark.read_at,
                    full_read_at=watermark.full_read_at,
                )
            )
            conn.execute(
                source_snapshots.insert(),
                [
                    {
                        "profile": profile,
                        "part": part,
                        "body": _encode_frame(frame, shared=sources.get(part)),
                        "saved_at": now,
                    }
                    for part, frame in parts.items()
                ],
            )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers (the inbox, `usersync runs`) go on while a sync writes, and the busy
    timeout makes a second writer wait its turn instead of failing at once."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
    cursor.close()


def _private_file(path: Path) -> None:
    """Create the SQLite file readable by its owner only (0600, its new folders 0700).

    The store holds personal data and token hashes. SQLite gives its journal and WAL files
    the database file's permissions, so they are private too. An existing file with looser
    permissions is tightened.
    """
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


#: The first bytes of a stored frame in the binary form (before it: zlib-compressed JSON).
FRAME_MAGIC = b"usersync-frame-3\n"


def _encode_frame(
    frame: pd.DataFrame, *, shared: Mapping[str, tuple[str, pd.Series]] | None = None
) -> bytes:
    """A frame column by column: each column's distinct values (zlib-compressed: strings
    joined by a character none contains, else a JSON list) and, per row, the code of its value
    (-1: null) as little-endian integers of the narrowest width.

    A snapshot's million memberships repeat few distinct values, so this is small, and it
    decodes without building a Python object per cell or decompressing the codes: an
    incremental read loads the last snapshot on every run (0.26 s for 100k users and 1M
    memberships in the JSON form before it, base64 codes and all compressed; 0.15 s in this
    form with JSON lists of values; splitting joined strings takes about a fifth less time
    than parsing them as JSON). Layout: `FRAME_MAGIC`, a little-endian uint32 header length, the JSON header
    (rows; per column its name, dtype, code width, the offsets of its two sections, the size
    of its values inflated and, for joined strings, the separator and their count), the
    sections. A column named in `shared` (-> the name and values of another part's column)
    is stored as codes only, positions in those values ("values_of" names them), when they
    are distinct and hold each of its values.
    """
    columns: list[dict[str, Any]] = []
    sections: list[bytes] = []
    offset = 0
    for name in frame.columns:
        dtype = frame[name].dtype
        if isinstance(dtype, pd.CategoricalDtype):  # stored as its values' dtype
            dtype = dtype.categories.dtype
        origin, values = (shared or {}).get(name, ("", None))
        positions = None if values is None else _positions_in(frame[name], values)
        if positions is not None:
            width = next(w for w, top in _CODE_WIDTHS if len(values) - 1 <= top)
            raw = positions.astype(width).tobytes()
            columns.append(
                {
                    "name": str(name),
                    "dtype": str(dtype),
                    "width": width,
                    "codes": [offset, len(raw)],
                    "values_of": origin,
                }
            )
            sections.append(raw)
            offset += len(raw)
            continue
        codes, uniques = pd.factorize(frame[name], use_na_sentinel=True)
        values = pd.Series(uniques, dtype=object)
        distinct = values.where(values.notna(), None).tolist()
        separator = _separator(distinct)
        if separator is None:
            text = json.dumps(distinct, ensure_ascii=False)
        else:
            text = separator.join(distinct)
        encoded = text.encode("utf-8")
        packed = zlib.compress(encoded, 1)
        width = next(w for w, top in _CODE_WIDTHS if len(uniques) - 1 <= top)
        raw = codes.astype(width).tobytes()
        column = {
            "name": str(name),
            "dtype": str(dtype),
            "width": width,
            "values": [offset, len(packed)],
            "codes": [offset + len(packed), len(raw)],
            "inflated": len(encoded),
        }
        if separator is not None:
            column |= {"separator": separator, "distinct": len(distinct)}
        columns.append(column)
        sections += [packed, raw]
        offset += len(packed) + len(raw)
    header = json.dumps({"rows": len(frame), "columns": columns}).encode("utf-8")
    return b"".join([FRAME_MAGIC, len(header).to_bytes(4, "little"), header, *sections])


def _positions_in(column: pd.Series, values: pd.Series) -> np.ndarray | None:
    """Each row's position in `values` (-1: null), or None when `values` repeat a value, hold
    a null, or lack one of the column's."""
    index = pd.Index(values)
    if index.hasnans or not index.is_unique:
        return None
    positions = index.get_indexer(column)
    if ((positions < 0) & column.notna().to_numpy()).any():
        return None
    return positions


#: Characters that may join a column's distinct strings, the first that none contains
#: (splitting a joined text is a little faster than parsing a JSON list of it: 8 ms against
#: 10 ms for 100k DNs here).
_SEPARATORS = ("\x00", "\x1f", "\x1e", "\x1d", "\x1c")


def _separator(distinct: list[Any]) -> str | None:
    """A character no value of `distinct` contains, if they are all strings; else None (the
    values are stored as a JSON list)."""
    if not all(isinstance(value, str) for value in distinct):
        return None
    joined = "".join(distinct)
    return next((c for c in _SEPARATORS if c not in joined), None)


#: Code widths by how many distinct values a column has (a code may also be -1).
#: Code widths and the largest code each holds (codes run from 0, and -1 stands for null).
_CODE_WIDTHS = (("<i1", 127), ("<i2", 32_767), ("<i4", 2**31 - 1))


def _decode_frame(
    body: bytes,
    *,
    categorical: tuple[str, ...] = (),
    shared: Callable[[str], pd.api.extensions.ExtensionArray] | None = None,
) -> pd.DataFrame:
    """A stored frame; the columns named in `categorical` as categoricals over their distinct
    values (nulls as missing codes), the others in their stored dtype. A column stored as
    positions in another part's column takes its values from `shared` (by that column's
    "part.column" name).

    Raises:
        ValueError: a column takes another's values and `shared` does not give them.
    """
    if bytes(body[: len(FRAME_MAGIC)]) != FRAME_MAGIC:
        frame = _decode_json_frame(body)
        return frame.astype({name: "category" for name in categorical if name in frame})
    view = memoryview(body)
    at = len(FRAME_MAGIC)
    size = int.from_bytes(view[at : at + 4], "little")
    header = json.loads(bytes(view[at + 4 : at + 4 + size]))
    base = at + 4 + size
    data = {}
    for column in header["columns"]:
        if "values_of" in column:
            data[column["name"]] = _shared_column(view, base, column, categorical, shared)
            continue
        start, length = column["values"]
        # Inflating into a buffer of the known size takes half the time of growing one.
        inflated = max(1, column.get("inflated", zlib.DEF_BUF_SIZE))
        packed = view[base + start : base + start + length]
        text = zlib.decompress(packed, bufsize=inflated).decode("utf-8")
        if "separator" in column:  # "".split gives [""]: an empty column has no values
            distinct = text.split(column["separator"]) if column["distinct"] else []
        else:
            distinct = json.loads(text)
        start, length = column["codes"]
        codes = np.frombuffer(view[base + start : base + start + length], dtype=column["width"])
        if column["name"] in categorical:
            # Joined strings hold no null; a JSON list may (only written by hand: the encoder
            # factorises nulls out).
            present = distinct if "separator" in column else [v for v in distinct if v is not None]
            categories = pd.Index(present, dtype=column["dtype"])
            if len(categories) < len(distinct):  # a null among the values: its code is -1
                remap = np.array([*categories.get_indexer(distinct), -1], dtype=codes.dtype)
                codes = remap[codes]
            data[column["name"]] = pd.Categorical.from_codes(codes, categories, validate=False)
            continue
        if len(distinct) == header["rows"] and np.array_equal(codes, np.arange(len(codes))):
            # Every value distinct and in order (ids, DNs, e-mails): no take needed.
            data[column["name"]] = pd.array(distinct, dtype=column["dtype"])
            continue
        values = np.array([*distinct, None], dtype=object)  # the last one: null
        data[column["name"]] = pd.Series(values[codes], dtype=object).astype(column["dtype"])
    return pd.DataFrame(data, index=pd.RangeIndex(header["rows"]), copy=False)


def _shared_column(
    view: memoryview,
    base: int,
    column: dict[str, Any],
    categorical: tuple[str, ...],
    shared: Callable[[str], pd.api.extensions.ExtensionArray] | None,
) -> pd.api.extensions.ExtensionArray:
    """A column stored as positions in another part's column (`values_of`)."""
    if shared is None:
        raise ValueError(
            f"stored column {column['name']!r} takes the values of "
            f"{column['values_of']!r}, which were not given"
        )
    values = shared(column["values_of"])
    if str(values.dtype) != column["dtype"]:
        values = values.astype(column["dtype"])
    start, length = column["codes"]
    codes = np.frombuffer(view[base + start : base + start + length], dtype=column["width"])
    if column["name"] in categorical:
        # The other column's strings are the categories: none is built or hashed twice.
        return pd.Categorical.from_codes(codes, pd.Index(values, copy=False), validate=False)
    return values.take(codes, allow_fill=True)


def _decode_json_frame(body: bytes) -> pd.DataFrame:
    """A frame as an older usersync stored it: zlib-compressed JSON, column by column with
    base64 codes (version 2) or one list per row (before)."""
    document = json.loads(zlib.decompress(body).decode("utf-8"))
    if document.get("version") != 2:
        frame = pd.DataFrame(document["rows"], columns=document["columns"], dtype=object)
        return frame.astype(document["dtypes"])
    data = {}
    for column in document["columns"]:
        codes = np.frombuffer(base64.b64decode(column["codes"]), dtype="<i4")
        values = pd.array(column["values"] + [None], dtype=object)  # the last one: null
        data[column["name"]] = pd.Series(values.take(codes), dtype=object).astype(column["dtype"])
    return pd.DataFrame(data, index=pd.RangeIndex(document["rows"]))
