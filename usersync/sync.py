"""The steps of one sync, callable without Prefect: extract, transform, plan, load.

The Prefect tasks in `tasks/` are thin wrappers around these functions; tests and the CLI can
call them directly. Each step takes plain values (profile, tables, frames) and returns plain
values, so a step can be re-run or inspected alone. The guards (`guards`) run before any
write: an empty or too small source stops `extract`, a mass deactivation stops
`plan_target_sync`, seats the licence does not have hold creations back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Collection, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from usersync.capabilities import AccountGroupsReader, ChangeMarked, ScopedRead, offers
from usersync.config import (
    Profile,
    SecretLoader,
    TargetConfig,
    instance_of,
    load_profile,
    mappings_dir,
    profile_dir,
)
from usersync.delta import (
    DELTA,
    RECONCILE,
    Scope,
    actual_of,
    basis_of,
    group_fingerprints,
    inconsistency,
    next_record,
    reconcile_due,
    reconcile_reason,
    scope_of,
    strays,
    user_fingerprints,
)
from usersync.errors import ConfigError, UsersyncError
from usersync.guards import check_brake, check_source, seat_guard
from usersync.load import LoadResult, Outcome, execute_plan
from usersync.mapping import MappingTables, desired_state, load_tables
from usersync.model import (
    CONFLICT_COLUMNS,
    CUSTOM_PREFIX,
    LEAD_COLUMNS,
    PLAN_COLUMNS,
    REJECTED_USER_COLUMNS,
    SOURCE_GROUP_COLUMNS,
    SOURCE_MEMBERSHIP_COLUMNS,
    SOURCE_USER_COLUMNS,
    TARGET_GROUP_COLUMNS,
    TARGET_MEMBERSHIP_COLUMNS,
    TARGET_USER_COLUMNS,
    DesiredState,
    SourceSnapshot,
    TargetState,
    conform,
    empty_frame,
)
from usersync.names import lookalike_rejections, skeleton_probes
from usersync.plan import PlanInput, plan_changes
from usersync.plugins import load_class
from usersync.sources import open_source
from usersync.sources.base import ProgressCallback
from usersync.sources.watermark import (
    Leavers,
    extract_with_watermark,
    incremental_enabled,
    poll_leavers,
)
from usersync.store import AppliedRecord, LedgerEntry, Store
from usersync.targets import TARGET_CLASSES, open_target
from usersync.targets.base import Target

log = logging.getLogger("usersync.sync")


@dataclass(frozen=True)
class LoadedProfile:
    """A validated profile and its validated tables, with what a run needs of the profiles
    beside it: each one's `settings.precedence` (None where unset or invalid), read once when
    the profile is loaded, not mid-run."""

    profile: Profile
    tables: MappingTables
    precedences: Mapping[str, int | None] = field(default_factory=dict)


def prepare_profile(profile_name: str) -> LoadedProfile:
    """Read and validate `mappings/<profile_name>/` entirely (profile.yaml and both tables),
    and the precedence of every other profile under the same mappings folder.

    Raises:
        ConfigError: anything invalid, with file and line.
    """
    profile = load_profile(profile_name)
    folder = profile_dir(profile_name)
    tables = load_tables(folder, target_names=profile.targets)
    _check_products_take_the_settings(profile, tables, folder)
    return LoadedProfile(profile, tables, _precedences(folder.parent, besides=profile_name))


def _precedences(root: Path, *, besides: str) -> dict[str, int | None]:
    """Each other profile's `settings.precedence`; None for one that is unset or does not
    load (an unknown rank decides nothing: an account stays with whoever has it)."""
    ranks: dict[str, int | None] = {}
    for path in sorted(root.glob("*/profile.yaml")):
        name = path.parent.name
        if name == besides:
            continue
        try:
            ranks[name] = load_profile(name, root).settings.precedence
        except ConfigError:
            ranks[name] = None
    return ranks


def _check_products_take_the_settings(
    profile: Profile, tables: MappingTables, folder: Path
) -> None:
    """Refuse settings a target's product has no place for, naming the file and line.

    Raises:
        ConfigError: a custom attribute row for a product without custom attributes (limit
            it with the targets column), or keep_existing_groups: false for a product whose
            client cannot list an account's groups.
    """
    for name, config in profile.targets.items():
        cls = load_class(TARGET_CLASSES, config.kind, what=f"target '{name}'")
        for rule in tables.attributes:
            custom = rule.target.startswith(CUSTOM_PREFIX) and rule.applies_to(name)
            if custom and not cls.custom_attributes:
                raise ConfigError(
                    f"{folder / 'attributes.csv'} line {rule.line}: {config.kind} (target "
                    f"{name}) has no place for custom attributes; limit the row to the "
                    "targets that have (targets column, e.g. jira)"
                )
        if not profile.settings.groups.keep_existing_groups and not offers(
            cls, AccountGroupsReader
        ):
            raise ConfigError(
                f"{folder / 'profile.yaml'}: settings.groups.keep_existing_groups: false needs "
                f"every group of an account, which the {config.kind} client (target {name}) "
                "cannot read yet"
            )


def shared_instance_warnings(profile: Profile) -> list[str]:
    """Other profiles under the same mappings folder that sync an instance this one syncs,
    where the two declare no precedence between them (settings.precedence in both, different):
    an account both sources have then stays with whichever profile took it first, and the
    other reports it as a conflict on every run."""
    mine = {instance_of(t.url): name for name, t in profile.targets.items()}
    root = mappings_dir()
    out = []
    folders = (
        sorted(p for p in root.iterdir() if (p / "profile.yaml").is_file()) if root.is_dir() else []
    )
    for folder in folders:
        if folder.name == profile.name:
            continue
        try:
            other = load_profile(folder.name)
        except ConfigError:
            continue  # its own validate says what is wrong with it
        ours, theirs = profile.settings.precedence, other.settings.precedence
        if ours is not None and theirs is not None and ours != theirs:
            continue
        for name, target in other.targets.items():
            instance = instance_of(target.url)
            if instance in mine:
                out.append(
                    f"profile {other.name} also syncs {instance} (its target {name}, this "
                    f"profile's {mine[instance]}) and no precedence orders the two: an account "
                    "both sources have stays with the profile that took it first and the other "
                    "reports it as a conflict; set settings.precedence in both (lower wins)"
                )
    return out


def select_targets(profile: Profile, wanted: list[str] | None) -> list[str]:
    """The profile's targets to sync: all, or the named ones (unknown names are an error)."""
    from usersync.errors import ConfigError

    if not wanted:
        return list(profile.targets)
    unknown = [name for name in wanted if name not in profile.targets]
    if unknown:
        raise ConfigError(
            f"profile {profile.name} has no target(s) {', '.join(unknown)} "
            f"(it has: {', '.join(profile.targets)})"
        )
    return list(dict.fromkeys(wanted))


def extract(
    loaded: LoadedProfile,
    *,
    load_prefect_secret: SecretLoader | None = None,
    store: Store | None = None,
    full: bool = False,
    on_progress: ProgressCallback | None = None,
) -> SourceSnapshot:
    """Read the complete source snapshot and apply the source guards.

    `on_progress` hears the running counts as the source reads page after page.

    With a store and an incremental source (AD, `incremental.enabled`), only the changes since
    the last successful run are read and merged into its snapshot, unless a full read is due
    or `full` asks for one; `sources.watermark.save_checkpoint` advances it after success.

    Raises:
        SourceError: unreachable, refused credentials, or a possibly incomplete read.
        GuardError: fewer users than `settings.min_source_users` (an empty source never
            deprovisions anyone).
    """
    with open_source(loaded.profile.source, load_prefect_secret=load_prefect_secret) as source:
        source.on_progress = on_progress
        attributes = loaded.tables.source_attributes()
        # Taken before the read: a change made during it moves the mark past this one.
        mark = source.change_mark() if offers(source, ChangeMarked) else None
        if store is not None and incremental_enabled(source):
            snapshot = extract_with_watermark(
                source, loaded.profile.name, attributes, store, full=full
            )
        else:
            snapshot = source.extract(attributes)
    check_source(snapshot, loaded.profile.settings)
    return replace(snapshot, change_mark=mark)


@dataclass(frozen=True)
class ScopedSnapshot(SourceSnapshot):
    """A read of a few identities by key (`capabilities.ScopedRead`), not of the whole
    source: the users with these ids and, of their groups, only them. It says nothing of the
    source's size (no counts) and vouches for nothing beyond those identities: a plan made from
    it that would need more raises `WholeSourceNeeded` (`plan_target_sync`)."""

    scoped_to: frozenset[str] = frozenset()

    @property
    def counts(self) -> dict[str, int]:
        return {}


class WholeSourceNeeded(UsersyncError):
    """A plan from a `ScopedSnapshot` cannot be trusted (the delta run would reconcile, plan
    beyond the named identities, or an identity was named other than by its source id):
    the caller plans again from the whole source."""


def extract_scoped(
    loaded: LoadedProfile,
    ids: Collection[str],
    *,
    load_prefect_secret: SecretLoader | None = None,
) -> ScopedSnapshot | None:
    """The users with these source ids and their groups, read by key, when the source can
    (`capabilities.ScopedRead`: the inbox); None when it cannot (then read the whole source).
    No source guard applies: the read is of named identities, not of the directory, and an id
    it does not find is one the source no longer has.

    Raises:
        SourceError: unreachable, or a damaged read.
    """
    wanted = frozenset(str(i) for i in ids)
    with open_source(loaded.profile.source, load_prefect_secret=load_prefect_secret) as source:
        if not offers(source, ScopedRead):
            return None
        snapshot = source.extract_only(loaded.tables.source_attributes(), wanted)
    found = len(snapshot.users)
    return ScopedSnapshot(
        snapshot.users,
        snapshot.groups,
        snapshot.memberships,
        source_kind=snapshot.source_kind,
        notes=(
            *snapshot.notes,
            f"scoped read: {found} of the {len(wanted)} identity(ies) asked for found by id",
        ),
        scoped_to=wanted,
    )


def poll_source_leavers(
    loaded: LoadedProfile, store: Store, *, load_prefect_secret: SecretLoader | None = None
) -> Leavers | None:
    """The users the profile's LDAP source disabled since its last successful run (an
    incremental poll: `sources.watermark.poll_leavers`), or None when the source does not
    read incrementally (not LDAP, or `incremental.enabled` off). Writes nothing."""
    with open_source(loaded.profile.source, load_prefect_secret=load_prefect_secret) as source:
        if not incremental_enabled(source):
            return None
        return poll_leavers(source, loaded.profile.name, loaded.tables.source_attributes(), store)


def transform(loaded: LoadedProfile, snapshot: SourceSnapshot, target: str) -> DesiredState:
    """Apply the mapping tables for one target."""
    desired = desired_state(
        snapshot, loaded.tables, target, groups_settings=loaded.profile.settings.groups
    )
    scoped_to = snapshot.scoped_to if isinstance(snapshot, ScopedSnapshot) else None
    return replace(desired, source_mark=snapshot.change_mark, scoped_to=scoped_to)


def unchanged_source(
    loaded: LoadedProfile,
    targets: Collection[str],
    store: Store,
    *,
    load_prefect_secret: SecretLoader | None = None,
) -> str | None:
    """Why a delta run of `targets` has nothing to read, plan or write, or None.

    That is so when the source's change mark (`capabilities.ChangeMarked`: the inbox's count
    of accepted changes) and the profile's rules are what every target's record says it
    holds everything of (`source_mark`: recorded only by a run that planned from the whole
    source and ended without a failure), and no target's reconcile is due. Reads the mark and
    one row per target; None when the source cannot tell, and the run reads as usual.
    """
    marks = store.applied_marks(loaded.profile.name)
    settings = loaded.profile.settings
    now = datetime.now(UTC)
    for name in targets:
        mark, reconciled_at = marks.get(name, (None, None))
        if mark is None or reconcile_due(reconciled_at, now, settings.reconcile_interval_hours):
            return None
    try:
        with open_source(loaded.profile.source, load_prefect_secret=load_prefect_secret) as src:
            now_mark = src.change_mark() if offers(src, ChangeMarked) else None
    except UsersyncError:
        return None  # the run's extract meets it again, and reports it for every target
    if now_mark is None:
        return None
    current = source_mark_of(loaded, now_mark)
    if any(marks[name][0] != current for name in targets):
        return None
    return (
        f"delta run: nothing changed in the source since the last run of every target "
        f"({now_mark}, same rules): nothing read, planned or written"
    )


@dataclass(frozen=True)
class UnchangedSnapshot(SourceSnapshot):
    """Stands for a source a delta run did not read, since nothing changed in it
    (`unchanged_source`): no rows, and the counts of the profile's last run that read it."""

    known_counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, why: str, counts: dict[str, int] | None) -> UnchangedSnapshot:
        return cls(
            empty_frame(SOURCE_USER_COLUMNS),
            empty_frame(SOURCE_GROUP_COLUMNS),
            empty_frame(SOURCE_MEMBERSHIP_COLUMNS),
            notes=(why,),
            known_counts=dict(counts or {}),
        )

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.known_counts)


def source_mark_of(loaded: LoadedProfile, change_mark: str) -> str:
    """The mark a record keeps: the source's change mark and a hash of everything that makes
    the desired state of it (the profile and its mapping tables)."""
    rules = loaded.profile.model_dump_json() + repr(loaded.tables)
    return f"{change_mark} rules {hashlib.sha256(rules.encode()).hexdigest()[:16]}"


def protected_usernames(
    profile: Profile, target_name: str, target: Target | None = None
) -> tuple[str, ...]:
    """Accounts never touched in a target: the configured list and the account usersync signs
    in as (the basic-auth username, and whoever the target says the credentials belong to,
    so a token's account is protected too). The product's administrators are not among them:
    they are shielded from adoption (`privileges_for_plan`), but an administrator usersync
    manages is deprovisioned like anyone when its identity leaves."""
    names = list(profile.settings.protected_usernames)
    auth = profile.targets[target_name].auth
    if auth.kind == "basic":
        names.append(auth.username)
    if target is not None:
        me = target.current_account()
        if me:
            names.append(me)
    return tuple(dict.fromkeys(names))


def privileges_for_plan(profile: Profile, target: Target) -> dict[str, Any]:
    """What the planner needs to know of the product's administration (PlanInput fields):
    the administrators it may not adopt or relink (less `manage_admin_accounts`), why they
    cannot all be established (said loudly, once), and the groups no rule may fill (less
    `settings.groups.allow_privileged_groups`)."""
    privileges = target.privileges()
    allowed = {n.casefold() for n in profile.settings.manage_admin_accounts}
    allowed_groups = {g.casefold() for g in profile.settings.groups.allow_privileged_groups}
    if privileges.problem:
        log.error(
            "%s: administrators cannot be established: %s. No unmanaged account is adopted or "
            "relinked until they can (fail closed).",
            target.name,
            privileges.problem,
        )
    return {
        "administrators": frozenset(a for a in privileges.administrators if a not in allowed),
        "admin_problem": privileges.problem,
        "privileged_groups": frozenset(privileges.groups - allowed_groups),
        "access_groups": frozenset(target.access_groups()),
        "new_account_groups": frozenset(target.groups_of_new_accounts()),
    }


@dataclass
class TargetPlan:
    """The plan for one target with what it was computed from."""

    target: str
    plan: pd.DataFrame
    desired: DesiredState
    actual: TargetState
    ledger: pd.DataFrame
    #: source users no operation was planned for (two identities claim one account, a rename
    #: onto a taken name), with `model.CONFLICT_COLUMNS`
    conflicts: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: attribute → managed accounts whose value the target would not reveal (not compared)
    unverifiable: dict[str, int] = field(default_factory=dict)
    #: keys the ledger links that the target no longer has (accounts deleted by hand)
    deleted_keys: tuple[str, ...] = ()
    #: usernames never touched and the product's administrators, and names of accounts other
    #: profiles manage (for the drift)
    protected: tuple[str, ...] = ()
    foreign_names: frozenset[str] = frozenset()
    #: the target instance (normalised base URL)
    instance: str = ""
    #: licence seats: needed, free, limit, used, held_back, known, detail ({} if none needed)
    seats: dict[str, Any] = field(default_factory=dict)
    #: lines a person must read (privileged groups refused, leavers held back, administrators
    #: that cannot be established): logged as errors, in the summary, and an event
    alerts: tuple[str, ...] = ()
    #: groups (case-folded) no rule may land on: never recorded as managed
    refused_groups: frozenset[str] = frozenset()
    #: groups (case-folded) that grant administration or access to the product: removals
    #: from them run first, with the deactivations (`load.execute_plan`)
    revoking_groups: frozenset[str] = frozenset()
    #: "reconcile" (everything read) or "delta" (only what changed read: `usersync.delta`)
    mode: str = RECONCILE
    #: why a run asked for as a delta run reconciled instead (None: it ran as asked)
    mode_reason: str | None = None
    #: a delta run's scope; what was written before; the fingerprints and basis to record
    scope: Scope | None = None
    applied: AppliedRecord | None = None
    fingerprints: tuple[pd.Series, pd.Series] | None = None
    basis: str = ""
    #: what the record may keep as its source mark once loaded without failure (None: not
    #: the whole source was planned from, or it has no mark)
    source_mark: str | None = None

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.plan["op"].value_counts().items()}


def _as_target_stores(desired: DesiredState, target: Target) -> tuple[DesiredState, pd.DataFrame]:
    """The desired state in the form the product stores values, minus names it refuses.

    Users whose username the product refuses join the rejected users (reported, never sent);
    groups it refuses are dropped with their memberships, each a conflict row (returned with
    the desired state) with the reason and the number of memberships it takes along.
    """
    users = target.stored_form(desired.users)
    for column in [c for c in users.columns if c.startswith(CUSTOM_PREFIX)]:
        name = column.removeprefix(CUSTOM_PREFIX)
        why = users[column].map(
            lambda v, n=name: None if pd.isna(v) else target.refused_custom_value(n, str(v))
        )
        too_big = why.notna()
        for username, reason in zip(users.loc[too_big, "username"], why[too_big], strict=True):
            log.warning(
                "%s: custom attribute %s of %s not written: %s", target.name, name, username, reason
            )
        users[column] = users[column].mask(too_big)
    refused = users["username"].map(
        lambda n: target.refused_name("user", str(n)) or target.unsendable_name("user", str(n))
    )
    refused = refused.astype("string")
    # Values the product would refuse are known now too: the user is rejected here, never
    # sent (a refusal on every run would turn every run red and hide real failures).
    for attribute in ("display_name", "email"):
        if attribute in users.columns:
            why = users[attribute].map(
                lambda v, a=attribute: None if pd.isna(v) else target.refused_value(a, str(v))
            )
            refused = refused.fillna(why.astype("string"))
    bad_users = users.loc[refused.notna()]
    groups = desired.groups
    group_refusal = groups["group"].map(
        lambda n: target.refused_name("group", str(n)) or target.unsendable_name("group", str(n))
    )
    group_refusal = group_refusal.astype("string")
    bad_groups = set(groups.loc[group_refusal.notna(), "group"])
    memberships = desired.memberships
    if len(bad_users) or bad_groups:
        memberships = memberships.loc[
            ~memberships["source_id"].isin(bad_users["source_id"])
            & ~memberships["group"].isin(bad_groups)
        ]
    rejected = desired.rejected
    if len(bad_users):
        extra = pd.DataFrame(
            {
                "source_id": bad_users["source_id"],
                "locator": bad_users["username"],
                "reason": f"{target.product} refuses this user: "
                + refused[refused.notna()]
                + "; fix it in the IdP or the mapping (attributes.csv), nothing was sent",
                "active": bad_users["active"],
            }
        )
        rejected = pd.concat([rejected, extra], ignore_index=True)
    group_rows = empty_frame(CONFLICT_COLUMNS)
    if bad_groups:
        refused_memberships = desired.memberships.loc[desired.memberships["group"].isin(bad_groups)]
        counts = refused_memberships["group"].value_counts()
        group_rows = pd.DataFrame(
            {
                "source_id": "",
                "username": "",
                "target_key": "",
                "reason": [
                    f"group '{g}' is not provisioned: {target.product} refuses it: {r} "
                    f"({int(counts.get(g, 0))} membership(s) skipped); rename it in the IdP or "
                    "the mapping"
                    for g, r in zip(groups["group"], group_refusal, strict=True)
                    if not pd.isna(r)
                ],
            },
            dtype="string",
        )
        log.warning(
            "%s: %d group(s) refused by the product, %d membership(s) not provisioned: %s",
            target.name,
            len(bad_groups),
            len(refused_memberships),
            "; ".join(
                f"{g}: {r}"
                for g, r in zip(groups["group"], group_refusal, strict=True)
                if not pd.isna(r)
            ),
        )
    kept = replace(
        desired,
        users=users.loc[refused.isna()].reset_index(drop=True),
        groups=groups.loc[group_refusal.isna()].reset_index(drop=True),
        memberships=memberships.reset_index(drop=True),
        rejected=conform(rejected, REJECTED_USER_COLUMNS, what="rejected users"),
    )
    return kept, group_rows


def user_fingerprint(values: dict[str, Any]) -> str:
    """A hash of what is sent for a user (username, e-mail, display name, as the product stores
    them): a refused user is sent again only once this changes."""
    picked = {
        k: "" if values.get(k) is None or pd.isna(values.get(k)) else str(values[k])
        for k in ("username", "email", "display_name")
    }
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode("utf-8")).hexdigest()


def _without_refused(
    desired: DesiredState, store: Store, profile: str, target: str
) -> DesiredState:
    """`desired` less the users the product refused before with the same data: they join the
    rejected users (listed, never sent again, kept as they are while active, deprovisioned when
    they leave). A refused user whose data changed since is forgotten and sent again."""
    refused = store.refused(profile, target)
    if not len(refused):
        return desired
    users = desired.users
    prints = pd.Series(
        [
            user_fingerprint(r)
            for r in users[["username", "email", "display_name"]].to_dict("records")
        ],
        index=users.index,
        dtype="string",
    )
    known = users["source_id"].map(
        dict(zip(refused["source_id"], refused["fingerprint"], strict=True))
    )
    same = known.notna() & (known.astype("string") == prints)
    changed = users.loc[known.notna() & ~same, "source_id"]
    if len(changed):
        store.forget_refusals(profile, target, changed)
    if not same.any():
        return desired
    why = users.loc[same, "source_id"].map(
        dict(zip(refused["source_id"], refused["reason"], strict=True))
    )
    extra = pd.DataFrame(
        {
            "source_id": users.loc[same, "source_id"],
            "locator": users.loc[same, "username"],
            "reason": "refused by the product on an earlier run, not sent again until this "
            "user's data or the mapping changes: " + why.astype("string"),
            "active": users.loc[same, "active"],
        }
    )
    gone = set(users.loc[same, "source_id"])
    return replace(
        desired,
        users=users.loc[~same].reset_index(drop=True),
        groups=desired.groups,
        memberships=desired.memberships.loc[
            ~desired.memberships["source_id"].isin(gone)
        ].reset_index(drop=True),
        rejected=conform(
            pd.concat([desired.rejected, extra], ignore_index=True),
            REJECTED_USER_COLUMNS,
            what="rejected users",
        ),
    )


def _remember_refusals(
    store: Store, profile: str, target: str, plan: pd.DataFrame, result: LoadResult
) -> None:
    """Record the users whose data the product refused in this load (see `_without_refused`)."""
    rejected = {o.seq: o.error or "" for o in result.outcomes if o.status == "rejected"}
    if not rejected:
        return
    rows = plan.loc[plan["seq"].isin(rejected) & (plan["source_id"] != "")]
    refused = []
    for row in rows.to_dict("records"):
        sent = json.loads(row["desired"] or row["after"] or "{}")
        refused.append((row["source_id"], user_fingerprint(sent), rejected[int(row["seq"])]))
    store.remember_refusals(profile, target, refused)
    log.error(
        "%s: the product refused %d user(s)' data (%s): listed as rejected and not sent again "
        "until their data or the mapping changes",
        target,
        len(refused),
        ", ".join(str(r["username"]) for r in rows.to_dict("records")[:5]),
    )


def _without_lookalikes(
    desired: DesiredState,
    target: Target,
    actual: TargetState,
    only: frozenset[str] | None = None,
) -> DesiredState:
    """`desired` less the users whose name would pass for another account's (`usersync.names`):
    they join the rejected users with the reason (never sent; an active one keeps what it has).

    The product is asked for the plain-looking spelling of every name outside ASCII
    (`аdmin` → `admin`), so an account the run would not otherwise read is still seen; in a
    delta run, of the names that changed (`only`: their source ids) alone.
    """
    names = desired.users
    if only is not None:
        names = names.loc[names["source_id"].astype(str).isin(only)]
    probes = skeleton_probes(names["username"].dropna())
    if not probes:  # every name is plain ASCII: none is refused as a look-alike
        return desired
    imitated = target.read_users(probes)["username"]
    why = lookalike_rejections(
        desired.users, pd.concat([actual.users["username"], imitated], ignore_index=True)
    )
    bad = why.notna().to_numpy()
    if not bad.any():
        return desired
    refused = desired.users.loc[bad]
    extra = pd.DataFrame(
        {
            "source_id": refused["source_id"],
            "locator": refused["username"],
            "reason": f"{target.product}: " + why[bad].astype("string"),
            "active": refused["active"],
        }
    )
    memberships = desired.memberships
    return replace(
        desired,
        users=desired.users.loc[~bad].reset_index(drop=True),
        groups=desired.groups,
        memberships=memberships.loc[
            ~memberships["source_id"].isin(refused["source_id"])
        ].reset_index(drop=True),
        rejected=conform(
            pd.concat([desired.rejected, extra], ignore_index=True),
            REJECTED_USER_COLUMNS,
            what="rejected users",
        ),
    )


def plan_target_sync(
    loaded: LoadedProfile,
    target_name: str,
    target: Target,
    desired: DesiredState,
    store: Store,
    *,
    allow_mass_changes: bool = False,
    mode: str = RECONCILE,
    only: Collection[str] | None = None,
) -> TargetPlan:
    """Read the target's current state for the users and groups concerned, then plan.

    A reconcile run (`mode="reconcile"`) reads every account the ledger links (by key, so
    renames made by hand are followed) and every desired one (by name), every mapped group and
    every group the ledger remembers. A delta run reads only the accounts and groups whose
    fingerprint moved since the last runs wrote them (`usersync.delta`), and reconciles
    instead, saying why, when it cannot trust what was written. `only` (source ids or user
    names) scopes a delta run to those identities: it plans them alone (`delta.scope_of`).

    Raises:
        TargetError: reading the target failed.
        GuardError: the plan exceeds the brake (and `allow_mass_changes` is not given).
    """
    if (version := target.product_version()) is not None:
        level = logging.INFO if version.supported else logging.WARNING
        log.log(level, "%s '%s': %s", target.product, target_name, version)
    profile = loaded.profile
    scoped_to = desired.scoped_to  # made from a read of these identities alone (or None)
    # Only a plan from the whole source may vouch for the source's mark (not one scoped).
    mark = None
    if desired.source_mark is not None and only is None:
        mark = source_mark_of(loaded, desired.source_mark)
    desired, refused_groups = _as_target_stores(desired, target)
    desired = _without_refused(desired, store, profile.name, target_name)
    instance = instance_of(profile.targets[target_name].url)
    if scoped_to is not None and (mode != DELTA or only is None):
        raise WholeSourceNeeded("only a delta run scoped to identities plans from a scoped read")
    for group in store.recover_created_groups(profile.name, target_name, instance=instance):
        log.warning(
            "%s: group '%s' was created by a run that ended before recording it: "
            "managed as created by usersync from now on",
            target_name,
            group,
        )
    ledger = store.ledger(profile.name, target_name)
    fingerprints = (
        user_fingerprints(desired.users, desired.rejected),
        group_fingerprints(desired),
    )
    basis = basis_of(profile, target_name, desired)
    record = store.applied_state(profile.name, target_name)
    reason = None
    if mode == DELTA:
        reason = reconcile_reason(
            record, basis, datetime.now(UTC), profile.settings.reconcile_interval_hours
        )
    if scoped_to is not None:
        _trust_scoped_read(scoped_to, _source_ids(only, desired, ledger), reason)
    if mode == DELTA and reason is None and record is not None:
        scope = scope_of(desired, *fingerprints, ledger, record, _source_ids(only, desired, ledger))
        if scope.empty:
            log.info(
                "%s: delta run: nothing changed since the last run wrote; nothing read", target_name
            )
            return TargetPlan(
                target_name,
                conform(empty_frame(PLAN_COLUMNS), PLAN_COLUMNS, what="plan"),
                desired,
                _empty_state(),
                ledger,
                conflicts=empty_frame(CONFLICT_COLUMNS),
                instance=instance_of(profile.targets[target_name].url),
                mode=DELTA,
                scope=scope,
                applied=record,
                fingerprints=fingerprints,
                basis=basis,
                source_mark=mark,
            )
        plan = _plan_changes(
            loaded, target_name, target, desired, store, ledger, refused_groups, scope, record
        )
        if isinstance(plan, TargetPlan):
            return _braked_unless(
                replace(plan, fingerprints=fingerprints, basis=basis, source_mark=mark),
                loaded,
                allow_mass_changes,
            )
        reason = plan
    if scoped_to is not None:
        raise WholeSourceNeeded(f"the delta run cannot be trusted: {reason}")
    if reason is not None:
        log.warning("%s: a reconcile run instead of a delta run: %s", target_name, reason)
    plan = _plan_changes(
        loaded, target_name, target, desired, store, ledger, refused_groups, None, record
    )
    assert isinstance(plan, TargetPlan)
    return _braked_unless(
        replace(plan, mode_reason=reason, fingerprints=fingerprints, basis=basis, source_mark=mark),
        loaded,
        allow_mass_changes,
    )


def _trust_scoped_read(
    read: frozenset[str], named: frozenset[str] | None, reason: str | None
) -> None:
    """Raise `WholeSourceNeeded` unless a plan from a read of the source ids `read` may stand:
    the run would not reconcile, and every identity it is scoped to (`named`, resolved from
    `only` by id or user name) was read by its id; one named by user name was not, and reads
    as gone."""
    if reason is not None:
        raise WholeSourceNeeded(f"the delta run would reconcile: {reason}")
    if named is None or not named <= read:
        raise WholeSourceNeeded("an identity was named other than by its source id")


def _source_ids(
    only: Collection[str] | None, desired: DesiredState, ledger: pd.DataFrame
) -> frozenset[str] | None:
    """The source ids `only` names, by id or by user name (desired, or last written)."""
    if only is None:
        return None
    wanted = {str(o).casefold() for o in only}
    linked = ledger.loc[ledger["kind"] == "user"].dropna(subset=["source_id"])
    ids = pd.concat([desired.users["source_id"], linked["source_id"]]).astype(str)
    names = pd.concat([desired.users["username"], linked["name"]]).astype("string").str.casefold()
    hit = ids.str.casefold().isin(wanted).to_numpy() | names.isin(wanted).fillna(False).to_numpy()
    return frozenset(ids[hit])


def _empty_state() -> TargetState:
    return TargetState(
        users=empty_frame(TARGET_USER_COLUMNS),
        groups=empty_frame(TARGET_GROUP_COLUMNS),
        memberships=empty_frame(TARGET_MEMBERSHIP_COLUMNS),
    )


def _braked_unless(plan: TargetPlan, loaded: LoadedProfile, allow_mass_changes: bool) -> TargetPlan:
    """The plan, unless it exceeds the brake (GuardError)."""
    if not allow_mass_changes:
        check_brake(plan.plan, plan.ledger, plan.actual, loaded.profile.settings, plan.target)
    return plan


def _plan_changes(
    loaded: LoadedProfile,
    target_name: str,
    target: Target,
    desired: DesiredState,
    store: Store,
    ledger: pd.DataFrame,
    refused_groups: pd.DataFrame,
    scope: Scope | None,
    record: AppliedRecord | None,
) -> TargetPlan | str:
    """Read and plan: everything (`scope` None), or a delta run's scope. A delta run returns
    why it cannot be trusted instead of a plan when what it read is not what was written, or
    when its plan would touch anything outside the scope."""
    profile = loaded.profile
    users = ledger["kind"] == "user"
    custom = [c.removeprefix(CUSTOM_PREFIX) for c in desired.users if c.startswith(CUSTOM_PREFIX)]
    if scope is None:
        # Managed accounts are asked for by their last known names too (found by name,
        # cheaply); only those renamed by hand or deleted are then looked up by key.
        usernames = pd.concat(
            [desired.users["username"], ledger.loc[users, "name"]], ignore_index=True
        )
        usernames = list(dict.fromkeys(usernames.dropna().str.casefold()))
        keys = list(dict.fromkeys(ledger.loc[users, "target_key"].dropna()))
        groups = list(
            dict.fromkeys(
                pd.concat(
                    [desired.groups["group"], ledger.loc[~users, "name"]], ignore_index=True
                ).dropna()
            )
        )
        actual = target.read_state(usernames, groups, keys, custom=custom)
    else:
        assert record is not None
        keys = list(scope.keys)
        read = target.read_state(scope.usernames, scope.group_names, keys, custom=custom)
        problem = inconsistency(read, scope, record)
        if problem is not None:
            return problem
        actual = actual_of(desired, ledger, read, scope)
    desired = _without_lookalikes(
        desired, target, actual, only=None if scope is None else scope.users
    )
    if not profile.settings.groups.keep_existing_groups:
        actual = _with_every_group(
            target, actual, ledger, None if scope is None else set(scope.keys)
        )
    instance = instance_of(profile.targets[target_name].url)
    claims = store.claims(instance, besides=profile.name)
    ranks = {p: loaded.precedences.get(p) for p in set(claims["profile"])}
    mine = profile.settings.precedence
    foreign = dict(zip(claims["target_key"], claims["profile"], strict=True))
    plan_input = PlanInput(
        target=target_name,
        desired=desired,
        actual=actual,
        ledger=ledger,
        settings=profile.settings,
        protected=protected_usernames(profile, target_name, target),
        foreign=foreign,
        takeover={k: p for k, p in foreign.items() if _ranks_before(mine, ranks[p])},
        deferred=frozenset(k for k, p in foreign.items() if _ranks_before(ranks[p], mine)),
        foreign_names=frozenset(claims["name"].dropna().str.casefold()),
        can_rename=target.can_rename,
        **privileges_for_plan(profile, target),
    )
    changes = plan_changes(plan_input)
    taken = changes.operations.loc[
        changes.operations["op"].isin(["adopt_user", "relink_user"]), "target_key"
    ]
    if not profile.settings.groups.keep_existing_groups and len(taken):
        # Accounts adopted (or relinked) in this run are managed from now: their groups are
        # read too, so the first run already leaves them as the rules say.
        actual = _with_every_group(target, actual, ledger, set(taken))
        plan_input = replace(plan_input, actual=actual)
        changes = plan_changes(plan_input)
    if (changes.operations["op"] == "deactivate_user").any():
        # Only now are lead roles worth reading (a request per project on Jira): an account
        # that leads a project must hand it over before it can be deactivated.
        leads = conform(target.read_leads(), LEAD_COLUMNS, what=f"{target_name} leads")
        if len(leads):
            actual = replace(actual, leads=leads)
            plan_input = replace(
                plan_input,
                actual=actual,
                **_default_leads(profile.targets[target_name], target, actual),
            )
            changes = plan_changes(plan_input)
    if scope is not None:
        stray = strays(changes.operations, scope, ledger)
        if len(stray):
            first = ", ".join(
                f"{op} {user or group}"
                for op, user, group in zip(
                    stray["op"].head(3),
                    stray["username"].head(3),
                    stray["group"].head(3),
                    strict=True,
                )
            )
            return (
                f"the delta plan would make {len(stray)} change(s) outside what changed since "
                f"the last run (first: {first}): what was written is not what the product holds"
            )
    for line in changes.alerts:
        log.error("%s", line)
    conflicts = changes.conflicts
    if len(refused_groups):
        conflicts = pd.concat([conflicts, refused_groups], ignore_index=True)
    operations, conflicts, seats = seat_guard(
        changes.operations, conflicts, target, profile.settings.seats, desired
    )
    return TargetPlan(
        target_name,
        operations,
        desired,
        actual,
        ledger,
        conflicts=conflicts,
        seats=seats,
        unverifiable=changes.unverifiable,
        deleted_keys=tuple(sorted(set(keys) - set(actual.users["target_key"].dropna()))),
        # For the drift report: the product's administrators are its own, not strays.
        protected=(*plan_input.protected, *sorted(plan_input.administrators)),
        foreign_names=plan_input.foreign_names,
        instance=instance,
        alerts=changes.alerts,
        revoking_groups=plan_input.privileged_groups
        | plan_input.access_groups
        | {g.casefold() for g in profile.settings.groups.allow_privileged_groups},
        refused_groups=changes.refused_groups,
        mode=RECONCILE if scope is None else DELTA,
        scope=scope,
        applied=record,
    )


def _default_leads(config: TargetConfig, target: Target, actual: TargetState) -> dict[str, Any]:
    """The target's default leads and, when some lead role must be handed over, whether they
    can take it: they must exist and be active (read now, before any write)."""
    leads = {
        kind: name
        for kind, name in (
            ("project", config.default_project_lead),
            ("component", config.default_component_lead),
        )
        if name
    }
    if not leads or not len(actual.leads):
        return {"default_leads": leads}
    found = target.read_users(list(leads.values()))
    state = {
        str(u).casefold(): bool(a) for u, a in zip(found["username"], found["active"], strict=True)
    }
    for kind, name in leads.items():
        setting = f"default_{kind}_lead"
        if name.casefold() not in state:
            return {"default_leads": leads, "lead_problem": f"{setting} '{name}' does not exist"}
        if not state[name.casefold()]:
            return {"default_leads": leads, "lead_problem": f"{setting} '{name}' is deactivated"}
    return {"default_leads": leads}


def _ranks_before(mine: int | None, theirs: int | None) -> bool:
    """Whether a profile of precedence `mine` comes before one of `theirs` (both declared)."""
    return mine is not None and theirs is not None and mine < theirs


def _with_every_group(
    target: Target, actual: TargetState, ledger: pd.DataFrame, keys: set[str] | None = None
) -> TargetState:
    """`actual` with every group membership of the managed accounts it read (or of the
    accounts with these `keys`), for `keep_existing_groups: false` (which removes memberships
    in groups no rule maps)."""
    managed = (
        keys
        if keys is not None
        else set(ledger.loc[ledger["kind"] == "user", "target_key"].dropna())
    )
    names = actual.users.loc[actual.users["target_key"].isin(managed), "username"]
    extra = target.read_user_groups(list(names.dropna()))
    memberships = pd.concat([actual.memberships, extra], ignore_index=True)
    memberships = memberships.loc[
        ~memberships[["username", "group"]].apply(lambda c: c.str.casefold()).duplicated()
    ]
    return replace(actual, memberships=memberships.reset_index(drop=True))


def load_target_sync(
    loaded: LoadedProfile,
    target: Target,
    target_plan: TargetPlan,
    store: Store,
    run_id: int,
    *,
    max_workers: int = 4,
    lease_holder: str | None = None,
) -> LoadResult:
    """Execute a plan, recording each outcome and the ledger changes as each phase finishes.

    With `lease_holder`, the profile's lease is renewed as each phase finishes.

    Every mapped group that exists once the load is done joins the ledger of managed groups
    (whether usersync created it or found it), so that memberships in it are still decided
    by the source when a rule or a source group goes away.
    """
    profile = loaded.profile.name
    instance = instance_of(loaded.profile.targets[target_plan.target].url)

    def record(outcomes: list[Outcome]) -> None:
        store.record_outcomes(run_id, [(o.seq, o.status, o.error) for o in outcomes])
        if lease_holder:
            store.renew_lease(profile, lease_holder)
        store.remember(
            profile,
            target_plan.target,
            [o.ledger for o in outcomes if o.ledger is not None],
            instance=instance,
        )

    budget = loaded.profile.targets[target_plan.target].load_budget_seconds
    target.set_deadline(time.monotonic() + budget)
    result = execute_plan(
        target,
        target_plan.plan,
        max_workers=max_workers,
        on_outcomes=record,
        revoking_groups=target_plan.revoking_groups,
    )
    plan = target_plan.plan
    _remember_refusals(store, loaded.profile.name, target_plan.target, plan, result)
    failed_groups = {
        str(plan.loc[plan["seq"] == o.seq, "group"].iloc[0]).casefold()
        for o in result.outcomes
        if o.op == "create_group" and o.status != "succeeded"
    }
    # Groups whose membership usersync decides and that exist now: not those only joined at
    # creation, nor missing ones it may not create (or failed to).
    groups = target_plan.desired.groups
    present = set(target_plan.actual.groups["group"].str.casefold()) | {
        str(g).casefold() for g in plan.loc[plan["op"] == "create_group", "group"]
    }
    enforced = groups["enforce"].astype(bool) if "enforce" in groups else True
    # A group usersync created was recorded as such when it was made; any other mapped group
    # is one a rule linked (an on-the-fly rule may later land only on the ones it created).
    mapped = [
        LedgerEntry("group", group.casefold(), group, origin="linked")
        for group in groups.loc[enforced, "group"].dropna()
        if group.casefold() not in failed_groups
        and group.casefold() in present
        and group.casefold() not in target_plan.refused_groups
    ]
    # Accounts taken over from a profile that yields to this one are this profile's alone now.
    succeeded = {o.seq for o in result.outcomes if o.status == "succeeded"}
    taken = plan.loc[
        (plan["op"] == "adopt_user")
        & plan["reason"].str.contains("settings.precedence", regex=False)
        & plan["seq"].isin(succeeded),
        "target_key",
    ].tolist()
    if taken:
        store.release_claims(instance, taken, besides=profile)
    if not result.quarantined:
        store.remember(profile, target_plan.target, mapped, instance=instance)
        # An account deleted by hand is gone for good: its link would only be looked up again
        # on every run.
        store.forget(profile, target_plan.target, "user", target_plan.deleted_keys)
        _record_applied(store, profile, target_plan, result)
    return result


def _record_applied(
    store: Store, profile: str, target_plan: TargetPlan, result: LoadResult
) -> None:
    """What the store knows was written to the target now (`usersync.delta`): the next delta
    run reads only what moves from here. A reconcile run that ended without a failure counts
    as the product's last reconcile."""
    if target_plan.fingerprints is None:
        return
    clean = result.status == "succeeded"
    if target_plan.scope is not None and target_plan.scope.empty:
        # Nothing moved, nothing was written: the record stands; it holds the source as of
        # this mark too (a change the mapping does not read moved the mark, not the record).
        previous = target_plan.applied
        if target_plan.source_mark and previous and previous.source_mark != target_plan.source_mark:
            store.mark_applied_state(profile, target_plan.target, target_plan.source_mark)
        return
    failed = {o.seq for o in result.outcomes if o.status != "succeeded"}
    record = next_record(
        previous=target_plan.applied,
        scope=target_plan.scope,
        desired=target_plan.desired,
        users_fp=target_plan.fingerprints[0],
        groups_fp=target_plan.fingerprints[1],
        ledger=store.ledger(profile, target_plan.target),
        plan=target_plan.plan,
        failed_seqs=failed,
        basis=target_plan.basis,
        now=datetime.now(UTC),
        reconciled=target_plan.mode == RECONCILE and clean,
        conflicts=target_plan.conflicts,
    )
    # A failure leaves something the record does not hold: the mark then vouches for nothing.
    mark = target_plan.source_mark if clean and not failed else None
    store.save_applied_state(profile, target_plan.target, replace(record, source_mark=mark))


def open_target_for(
    loaded: LoadedProfile, target_name: str, *, load_prefect_secret: SecretLoader | None = None
) -> Target:
    """The client of one of the profile's targets, with its secret resolved."""
    return open_target(
        target_name,
        loaded.profile.targets[target_name],
        load_prefect_secret=load_prefect_secret,
    )


class RunTargets:
    """The clients of a run's targets: each opened, its secret resolved, once per run, on
    first use (a target that cannot be opened fails alone), and all closed when the run ends.

    Plan and load, and a plan made again after an approval, use the same client.
    """

    def __init__(
        self, loaded: LoadedProfile, *, load_prefect_secret: SecretLoader | None = None
    ) -> None:
        self._loaded = loaded
        self._load_prefect_secret = load_prefect_secret
        self._open: dict[str, Target] = {}
        self._lock = threading.Lock()
        self._closing = ExitStack()

    def __getitem__(self, name: str) -> Target:
        with self._lock:
            if name not in self._open:
                client = open_target_for(
                    self._loaded, name, load_prefect_secret=self._load_prefect_secret
                )
                self._open[name] = self._closing.enter_context(client)
            return self._open[name]

    def __enter__(self) -> RunTargets:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._open.clear()
            self._closing.close()
