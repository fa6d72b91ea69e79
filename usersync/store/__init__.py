"""The store: runs, the audit trail of every operation, and the ledger of what usersync manages.

`Store.open(url)` connects to any SQLAlchemy URL (a SQLite file by default, PostgreSQL in
production), creates or migrates the schema, and offers the few calls a sync needs: start and
finish a run, record a plan and each operation's outcome, read and update the ledger.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from usersync.model import LEDGER_COLUMNS, conform, empty_frame
from usersync.store.schema import ledger, migrate, operations, runs

__all__ = ["DEFAULT_STORE_URL", "LedgerEntry", "Store", "store_url"]

DEFAULT_STORE_URL = "sqlite:///var/usersync.db"


def store_url() -> str:
    """$USERSYNC_STORE_URL, else a SQLite file var/usersync.db under the working directory."""
    return os.environ.get("USERSYNC_STORE_URL", DEFAULT_STORE_URL)


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
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, future=True)
        migrate(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- runs ----------------------------------------------------------------------------

    def start_run(
        self, profile: str, target: str, *, dry_run: bool, flow_run_id: str | None = None
    ) -> int:
        with self.engine.begin() as conn:
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
        clean = plan.drop(columns=["target"]).astype(object)
        clean = clean.where(clean.notna(), None).rename(columns={"group": "group_name"})
        rows = clean.assign(run_id=run_id, status="planned").to_dict("records")
        for row in rows:
            row["seq"] = int(row["seq"])
        with self.engine.begin() as conn:
            conn.execute(operations.insert(), rows)

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
        with self.engine.begin() as conn:
            conn.execute(statement, rows)

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
            rows = conn.execute(query).mappings().all()
        if not rows:
            return empty_frame(LEDGER_COLUMNS)
        return conform(pd.DataFrame(rows), LEDGER_COLUMNS, what="ledger")

    def remember(self, profile: str, target: str, entries: Iterable[LedgerEntry]) -> None:
        """Insert or update ledger entries (keyed by kind and target key)."""
        entries = list(entries)
        if not entries:
            return
        now = _now()
        with self.engine.begin() as conn:
            for entry in entries:
                where = sa.and_(
                    ledger.c.profile == profile,
                    ledger.c.target == target,
                    ledger.c.kind == entry.kind,
                    ledger.c.target_key == entry.target_key,
                )
                updated = conn.execute(
                    ledger.update()
                    .where(where)
                    .values(name=entry.name, source_id=entry.source_id, updated_at=now)
                )
                if updated.rowcount == 0:
                    conn.execute(
                        ledger.insert().values(
                            profile=profile,
                            target=target,
                            kind=entry.kind,
                            target_key=entry.target_key,
                            name=entry.name,
                            source_id=entry.source_id,
                            origin=entry.origin,
                            created_at=now,
                            updated_at=now,
                        )
                    )
