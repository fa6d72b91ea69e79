"""Incremental extraction from LDAP: a watermark of the server's position and the cached snapshot.

The planner deactivates managed users missing from the snapshot, so an incremental read never
hands it a partial one. The store keeps the snapshot the last successful run synced, with the
watermark it was read at, taken before the read (`LdapSource.position`): on Active Directory
the domain controller's identity (dsServiceName and invocationId; USNs are per DC) and its
`highestCommittedUSN`; on OpenLDAP the database's identity and its `contextCSN` (kept by the
syncprov overlay). An incremental read fetches the users and groups whose `uSNChanged` or
`entryCSN` passed the watermark and merges them into the cached snapshot (decoded while the
change searches wait on the server; `merge_changes`, vectorised): changed users replace their
rows, changed groups replace their row and all their memberships, changed users' memberOf
(where it is read) replaces theirs. The merged snapshot is
complete except for deletions (and entries that left the scope), which an incremental read
cannot see: a full read runs when the last one is older than `incremental.full_every_hours`,
on another server or database, when the server's mark went back (restored), after a scope
change, without a cached snapshot, or on request, and it catches them. An OpenLDAP server
without contextCSN gets a full read every run, with a note, and no watermark is kept. The
watermark and the snapshot advance only in `advance_watermark`, when every target synced
without failure and the run was not a dry run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from usersync.capabilities import IncrementalSource, offers
from usersync.config import LdapSourceConfig
from usersync.model import SOURCE_MEMBERSHIP_COLUMNS, SourceSnapshot
from usersync.sources.base import Source
from usersync.sources.ldap import (
    FILETIME_UNIX_OFFSET_SECONDS,
    DirectoryChanges,
    DirectoryPosition,
    LdapSource,
)
from usersync.sources.ldap.decoding import garbage_collection_paused
from usersync.store import SourceWatermark, Store, StoredSnapshot

#: The snapshot parts kept in the store; groups carry their DN as `locator`.
SNAPSHOT_PARTS = ("users", "groups", "memberships")
#: The cached columns decoded as categoricals for the merge (a million rows of few values).
MEMBERSHIP_CATEGORICAL = {"memberships": tuple(SOURCE_MEMBERSHIP_COLUMNS)}
#: Cached columns saved as positions in another part's column: the memberships' user ids are
#: the users' ids, so the 100k ids are stored, decoded and hashed once.
SHARED_VALUES = {"memberships.source_id": "users.source_id"}
#: The source settings that decide what a read returns: a change to any forces a full read.
SCOPE_SETTINGS = (
    "url",
    "user_base_dn",
    "user_filter",
    "group_base_dn",
    "group_filter",
    "id_attribute",
    "group_name_attribute",
    "membership",
    "member_attributes",
    "disabled_filter",
    "nested_groups",
    "inactive_accounts",
    "follow_referrals",
)


@dataclass(frozen=True)
class Checkpoint:
    """What `save_checkpoint` stores once the run has succeeded."""

    profile: str
    watermark: SourceWatermark
    parts: dict[str, pd.DataFrame]  # SNAPSHOT_PARTS
    full: bool  # whether this read was a full one


@dataclass(frozen=True)
class CheckpointedSnapshot(SourceSnapshot):
    """A snapshot read with a watermark: its checkpoint is saved only after a successful run."""

    checkpoint: Checkpoint | None = None


def incremental_enabled(source: Source) -> bool:
    """Whether `source` reads incrementally: it can (`capabilities.IncrementalSource`, LDAP)
    and its profile sets `incremental.enabled`."""
    return offers(source, IncrementalSource) and source.config.incremental.enabled


def scope_fingerprint(config: LdapSourceConfig, attributes: Sequence[str]) -> str:
    """A hash of everything that decides which entries and columns a read returns."""
    scope = {name: getattr(config, name) for name in SCOPE_SETTINGS}
    scope["attributes"] = sorted(dict.fromkeys(attributes))
    text = json.dumps(scope, sort_keys=True, default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def full_read_reason(
    stored: SourceWatermark | None,
    position: DirectoryPosition,
    fingerprint: str,
    *,
    now: datetime,
    full_every_hours: float,
    requested: bool = False,
) -> str | None:
    """Why this run must read everything, or None when an incremental read is sound."""
    if requested:
        return "a full read was requested"
    if position.usn is None:
        return (
            f"{position.dc}: no syncprov overlay, or the bind account may not read contextCSN, "
            "so changes cannot be told apart and every run reads everything"
        )
    if stored is None:
        return "no watermark or cached snapshot yet"
    if stored.dc != position.dc:
        return f"another {_server(position)}: the watermark is of {stored.dc}, now {position.dc}"
    if stored.fingerprint != fingerprint:
        return "the source settings or the mapped attributes changed since the watermark"
    if position.usn < stored.usn:
        return (
            f"the {_server(position)}'s mark went back from {position.describe(stored.usn)} "
            f"to {position.describe(position.usn)} (restored or reloaded?)"
        )
    due = stored.full_read_at + timedelta(hours=full_every_hours)
    if now >= due:
        return (
            f"the last full read ({stored.full_read_at:%Y-%m-%d %H:%M} UTC) is older than "
            f"incremental.full_every_hours={full_every_hours:g}"
        )
    return None


def merge_changes(
    users: pd.DataFrame,
    groups: pd.DataFrame,
    memberships: pd.DataFrame,
    changes: DirectoryChanges,
    *,
    reuse_users: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The cached users, groups (with `locator`) and memberships with the changes merged in.

    Changed users replace the rows with their id; changed groups replace theirs, and every
    membership of a changed group (under its old or new name), and of a changed user when
    their memberOf was read (`changes.users_memberships`), is replaced by the memberships
    read. When every group was read, the read's groups and memberships replace the cached ones.
    Cached memberships held as categoricals (as `extract_with_watermark` decodes them) are
    merged as categoricals.

    Args:
        reuse_users: `users` is the caller's to give up (decoded for this merge alone): the
            changed users' rows are written where they are instead of into a copy of every
            row, and `users` itself may be returned, changed.
    """
    changed_users = changes.users["source_id"]
    merged_users = _merged_users(users, changes.users, reuse=reuse_users)
    if changes.all_groups:
        return merged_users, changes.groups.reset_index(drop=True), changes.memberships
    changed_ids = changes.groups["source_group_id"]
    was_changed = groups["source_group_id"].isin(changed_ids)
    merged_groups = pd.concat([groups[~was_changed], changes.groups], ignore_index=True)
    # Memberships are keyed by group name: a renamed group's rows carry its old name.
    replaced_names = pd.concat(
        [groups.loc[was_changed, "source_group"], changes.groups["source_group"]]
    )
    kept = ~memberships["source_group"].isin(replaced_names)
    if changes.users_memberships:
        kept &= ~memberships["source_id"].isin(changed_users)
    # The kept rows share no (user, group) with the rows read: every row of a changed group,
    # and of a changed user whose memberOf was read, was dropped. So only the rows read (a
    # group's member values and a user's memberOf may name one membership twice) need
    # de-duplicating, not the million cached ones.
    read = changes.memberships.drop_duplicates()
    coded = [
        n for n in memberships.columns if isinstance(memberships[n].dtype, pd.CategoricalDtype)
    ]
    if not coded:
        return merged_users, merged_groups, pd.concat([memberships[kept], read], ignore_index=True)
    # Cached memberships decoded as categoricals (`MEMBERSHIP_CATEGORICAL`) stay coded: `isin`
    # above compared codes, the values read are coded against the same distinct values, and
    # the mapping step joins on codes anyway (`mapping._coded_source`), so no string per row
    # is built for the million memberships.
    kept_at = kept.to_numpy()
    merged_memberships = pd.DataFrame(
        {name: _joined(memberships[name], kept_at, read[name]) for name in memberships.columns},
        index=pd.RangeIndex(int(kept_at.sum()) + len(read)),
        copy=False,
    )
    return merged_users, merged_groups, merged_memberships


def _merged_users(users: pd.DataFrame, changed: pd.DataFrame, *, reuse: bool) -> pd.DataFrame:
    """The cached users with the changed users' rows replaced (by id) and the new ones
    appended; with `reuse`, written into `users` (its 100k rows are not copied) when both
    frames have the same columns and each changed id names at most one cached row."""
    ids = pd.Index(changed["source_id"])
    alike = list(users.columns) == list(changed.columns) and users.dtypes.equals(changed.dtypes)
    if reuse and alike and ids.is_unique:
        at = ids.get_indexer(users["source_id"])  # per cached row: its changed row, or -1
        rows = np.flatnonzero(at >= 0)
        sources = at[rows]
        if len(np.unique(sources)) == len(sources):
            for position, name in enumerate(users.columns):
                if name != "source_id":  # equal by construction (and the memberships' ids)
                    users.iloc[rows, position] = changed[name].array.take(sources)
            new = np.ones(len(changed), dtype=bool)
            new[sources] = False
            if not new.any():
                return users
            return pd.concat([users, changed[new]], ignore_index=True)
    return pd.concat([users[~users["source_id"].isin(ids)], changed], ignore_index=True)


def _joined(cached: pd.Series, kept: np.ndarray, read: pd.Series) -> pd.Categorical:
    """The `kept` cached values (a categorical) then the values read, as one categorical over
    the cached distinct values and the new ones read (a missing value's code is -1).

    The values read are coded by probing the cached categories (100k user ids) against a hash
    of the few distinct values read, not by hashing the categories; new categories, and a
    hash of them all, are made only when a value read is new.
    """
    if not isinstance(cached.dtype, pd.CategoricalDtype):  # the other column is coded: this too
        cached = cached.astype("category")
    dtype = cached.dtype
    categories = dtype.categories
    inverse, distinct = pd.factorize(read.astype(categories.dtype))
    found_at = pd.Index(distinct).get_indexer(categories)
    code_of = np.full(len(distinct), -1, dtype=np.int64)
    hit = np.flatnonzero(found_at >= 0)
    code_of[found_at[hit]] = hit
    new = np.flatnonzero(code_of < 0)
    if len(new):
        code_of[new] = len(categories) + np.arange(len(new))
        added = pd.Index(distinct[new], dtype=categories.dtype)
        dtype = pd.CategoricalDtype(categories.append(added))
    codes = np.where(inverse >= 0, code_of[inverse], -1)
    every = np.concatenate([cached.cat.codes.to_numpy()[kept], codes.astype(np.int32)])
    return pd.Categorical.from_codes(every, dtype=dtype, validate=False)


def extract_with_watermark(
    source: LdapSource,
    profile: str,
    attributes: Sequence[str],
    store: Store,
    *,
    full: bool = False,
    now: datetime | None = None,
) -> CheckpointedSnapshot:
    """Read the source fully or incrementally, as the stored watermark allows.

    Args:
        source: the profile's LDAP source (Active Directory or OpenLDAP).
        profile: the profile's name (the key of its watermark).
        attributes: the source attributes the mapping reads.
        store: where the watermark and the cached snapshot are.
        full: read everything whatever the watermark says.
        now: the time of the read (for the full-read schedule); default: now.

    Returns:
        A complete snapshot (the cache merged with the changes on an incremental read), its
        notes saying which kind of read it was, and the checkpoint to save after success (none
        when the server has no mark: an OpenLDAP server without contextCSN).

    Raises:
        as `LdapSource.extract`.
    """
    config = source.config
    now = now or datetime.now(UTC)
    fingerprint = scope_fingerprint(config, attributes)
    try:
        stored, saved = store.source_checkpoint(profile)
    except KeyError:
        stored, saved = None, StoredSnapshot({})
    if any(part not in saved.bodies for part in SNAPSHOT_PARTS):
        stored = None  # a watermark without its snapshot is worth nothing
    position = source.position()
    reason = full_read_reason(
        stored,
        position,
        fingerprint,
        now=now,
        full_every_hours=config.incremental.full_every_hours,
        requested=full,
    )
    if reason is not None or stored is None:
        snapshot, groups = source.read_snapshot(attributes)
        users, memberships = snapshot.users, snapshot.memberships
        following = (
            "the next run reads everything again"
            if position.usn is None
            else f"the next run reads changes after {position.describe(position.usn)} "
            f"on {position.dc}"
        )
        notes = (*snapshot.notes, f"full read ({reason}); {following}")
        full_read_at = now
    else:
        expiry = _expiry_window(config, stored, now)
        # The cached snapshot is decoded while the change searches wait on the server; the
        # collector is paused throughout, as for a full read (it frees nothing here and its
        # passes over the 100k-row cache cost a fifth of the incremental read).
        with (
            garbage_collection_paused(),
            ThreadPoolExecutor(1, thread_name_prefix="usersync-snapshot") as pool,
        ):
            decoding = pool.submit(saved.parts, categorical=MEMBERSHIP_CATEGORICAL)
            found = source.search_changes(attributes, since=stored.usn, expired_between=expiry)
            parts = decoding.result()
            changes = source.resolve_changes(
                found, known_users=parts["users"], known_groups=parts["groups"]
            )
            users, groups, memberships = merge_changes(
                parts["users"], parts["groups"], parts["memberships"], changes, reuse_users=True
            )
        due = stored.full_read_at + timedelta(hours=config.incremental.full_every_hours)
        notes = (
            f"incremental since {position.describe(stored.usn)} on {position.dc}: "
            f"{len(changes.users)} "
            f"changed user(s) and {len(changes.groups)} group(s) read, merged into the "
            f"snapshot of the last successful run; deletions are not seen until the next "
            f"full read (due {due:%Y-%m-%d %H:%M} UTC)",
        )
        full_read_at = stored.full_read_at
    checkpoint = None
    if position.usn is not None:
        watermark = SourceWatermark(
            dc=position.dc,
            usn=position.usn,
            fingerprint=fingerprint,
            read_at=now,
            full_read_at=full_read_at,
        )
        checkpoint = Checkpoint(
            profile=profile,
            watermark=watermark,
            parts={"users": users, "groups": groups, "memberships": memberships},
            full=reason is not None,
        )
    return CheckpointedSnapshot(
        users=users,
        groups=groups.drop(columns=["locator"]),
        memberships=memberships,
        source_kind=source.kind,
        notes=tuple(notes),
        checkpoint=checkpoint,
    )


def advance_watermark(
    store: Store, snapshot: SourceSnapshot, *, statuses: Sequence[str], dry_run: bool
) -> Checkpoint | None:
    """After a run: save the snapshot's watermark and cache if the run succeeded everywhere.

    The next incremental read starts from the saved point, so it moves only when every target
    synced without failure (`statuses` all "succeeded") and the run wrote (not a dry run);
    otherwise the next run reads from the previous watermark again.

    Args:
        store: where the watermark lives.
        snapshot: what the run's extract returned.
        statuses: each target's outcome status.
        dry_run: whether the run only planned.

    Returns:
        The checkpoint saved, or None: nothing saved (no watermark read, a failure, a dry run).
    """
    checkpoint = snapshot.checkpoint if isinstance(snapshot, CheckpointedSnapshot) else None
    succeeded = bool(statuses) and all(status == "succeeded" for status in statuses)
    if checkpoint is None or dry_run or not succeeded:
        return None
    store.save_source_watermark(
        checkpoint.profile, checkpoint.watermark, checkpoint.parts, shared=SHARED_VALUES
    )
    return checkpoint


def _expiry_window(
    config: LdapSourceConfig, stored: SourceWatermark, now: datetime
) -> tuple[int, int] | None:
    """On AD counting expired accounts as inactive: the FILETIMEs between the last read and
    now, whose expiries an incremental read must read too (an expiry changes no USN)."""
    if config.flavour == "active_directory" and config.inactive_accounts == "disabled_or_expired":
        return (_filetime(stored.read_at), _filetime(now))
    return None


def _server(position: DirectoryPosition) -> str:
    return "domain controller" if position.kind == "usn" else "server or database"


def _filetime(moment: datetime) -> int:
    """A moment as AD's FILETIME (100 ns intervals since 1601-01-01 UTC)."""
    return int((moment.timestamp() + FILETIME_UNIX_OFFSET_SECONDS) * 10_000_000)


@dataclass(frozen=True)
class Leavers:
    """What `poll_leavers` found: source ids of users the source disabled since the last run
    synced them active, or why it could not tell (`reason`, with `source_ids` empty)."""

    source_ids: tuple[str, ...] = ()
    reason: str | None = None
    changed: int = 0  # users changed since the watermark


def poll_leavers(
    source: LdapSource,
    profile: str,
    attributes: Sequence[str],
    store: Store,
    *,
    now: datetime | None = None,
) -> Leavers:
    """The users disabled in the directory since the profile's watermark: an incremental
    LDAP poll that finds a leaver, for a run scoped to them (`usersync serve`).

    Reads the server's position and searches only the entries changed after the stored
    watermark (AD `uSNChanged`, OpenLDAP `entryCSN`; on AD also the accounts that expired
    since the last read); a changed user who is inactive now and active in the snapshot the
    last successful run cached is a leaver. Nothing is saved: the watermark moves with the
    run that deactivates them, after which they are no longer news. Deleted entries and
    entries that left the scope are not seen (as with any incremental read): the next full
    read catches them.

    Without a usable watermark (none yet, another server, the scope or the mapped attributes
    changed, the mark went back, no contextCSN) nothing can be told: `reason` says why.
    """
    now = now or datetime.now(UTC)
    try:
        stored = store.source_checkpoint(profile, parts=())[0]
    except KeyError:
        return Leavers(reason="no watermark or cached snapshot yet")
    reason = full_read_reason(
        stored,
        source.position(),
        scope_fingerprint(source.config, attributes),
        # A full read being due does not spoil the mark: asked as of the last full read.
        now=stored.full_read_at,
        full_every_hours=1.0,
    )
    if reason is not None:
        return Leavers(reason=reason)
    expiry = _expiry_window(source.config, stored, now)
    changed = source.search_changes(attributes, since=stored.usn, expired_between=expiry).users
    if not len(changed):
        return Leavers()
    # Only now the cached users (a poll that finds nothing reads no snapshot).
    saved = store.source_checkpoint(profile, parts=("users",))[1]
    if "users" not in saved.bodies:
        return Leavers(reason="no watermark or cached snapshot yet")
    cached = saved.parts()["users"]
    was_active = cached.loc[cached["active"].fillna(False).astype(bool), "source_id"]
    now_inactive = ~changed["active"].fillna(False).astype(bool)
    left = changed.loc[now_inactive & changed["source_id"].isin(was_active), "source_id"]
    return Leavers(tuple(dict.fromkeys(left.astype(str))), changed=len(changed))
