"""The canonical tables that pass between the stages of a sync, with their column names and dtypes.

Every stage speaks pandas DataFrames whose columns are fixed here: a source produces a
`SourceSnapshot` (users, groups, memberships keyed by immutable source ids), the mapping step
turns it into a `DesiredState` per target, a target reports its `TargetState`, and the planner
emits an operations table (`PLAN_COLUMNS`). `empty_frame` and `conform` build and check frames
so that a stage never has to guess what another stage meant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

STRING = "string"
BOOLEAN = "boolean"
INT = "Int64"

#: Source users: one row per user. Besides these columns a snapshot carries one string column
#: per source attribute the mapping tables read (named as the profile spells them).
SOURCE_USER_COLUMNS: dict[str, str] = {
    "source_id": STRING,  # immutable id: entryUUID, objectGUID, SCIM id
    "locator": STRING,  # where the user lives in the source (DN, SCIM location); for messages
    "active": BOOLEAN,  # False when the source says the account is disabled
}

#: Source groups: one row per group.
SOURCE_GROUP_COLUMNS: dict[str, str] = {
    "source_group_id": STRING,  # immutable id of the group (entryUUID, objectGUID, SCIM id)
    "source_group": STRING,  # the group's name in the source (cn, displayName)
}

#: Source memberships: user (by source id) is a direct or resolved member of group (by name).
#: The columns may also be categoricals over strings: an incremental LDAP read keeps the
#: million memberships of its cached snapshot coded (`sources.watermark.merge_changes`).
SOURCE_MEMBERSHIP_COLUMNS: dict[str, str] = {
    "source_id": STRING,
    "source_group": STRING,
}

#: The attributes a target account is described by, after mapping.
USER_ATTRIBUTES: tuple[str, ...] = ("username", "email", "display_name")

#: Desired users for one target: what the IdP says each account should look like.
DESIRED_USER_COLUMNS: dict[str, str] = {
    "source_id": STRING,
    "username": STRING,
    "email": STRING,
    "display_name": STRING,
    "active": BOOLEAN,
}

#: Desired memberships for one target (target group names).
DESIRED_MEMBERSHIP_COLUMNS: dict[str, str] = {
    "source_id": STRING,
    "username": STRING,
    "group": STRING,
}

#: Desired groups for one target.
DESIRED_GROUP_COLUMNS: dict[str, str] = {"group": STRING}
#: Optional boolean columns of desired groups, and their value where a frame lacks them:
#: `create`: usersync may create the group when the target lacks it (else its memberships are
#: reported and skipped); `enforce`: usersync decides managed users' membership (not for groups
#: only joined at creation); `keep_users`: members the source does not list are left alone
#: (False: removed, unmanaged accounts included, except protected and other profiles' ones);
#: `named`: a rule of the profile names the target group (manual, default); False for groups
#: only an on-the-fly rule yields, which may not take over an existing group usersync did not
#: create.
DESIRED_GROUP_FLAGS: dict[str, bool] = {
    "create": True,
    "enforce": True,
    "keep_users": True,
    "named": True,
}
#: Optional boolean column of desired memberships: joined once, when the account is created.
MEMBERSHIP_ONCE = "once"

#: Source users the mapping could not turn into an account (no username, duplicate username,
#: ...). They are reported, never provisioned, and never deprovisioned because of it.
REJECTED_USER_COLUMNS: dict[str, str] = {
    "source_id": STRING,
    "locator": STRING,
    "reason": STRING,
    # whether the source says the user is active: a rejected user who is disabled still loses
    # the account usersync manages for it (deprovisioning wins over rejection)
    "active": BOOLEAN,
}

#: Users as a target holds them now.
TARGET_USER_COLUMNS: dict[str, str] = {
    "target_key": STRING,  # the product's immutable key (Jira key, Confluence userKey, Bitbucket id)
    "username": STRING,
    # NA means *unknown* (the product would not say with this auth), never "empty": an unknown
    # value is never compared, so it is never "changed".
    "email": STRING,
    "display_name": STRING,
    "active": BOOLEAN,
}

#: Groups a target holds now (only those the run asked about).
TARGET_GROUP_COLUMNS: dict[str, str] = {"group": STRING}

#: Memberships a target holds now (only for the groups the run asked about).
TARGET_MEMBERSHIP_COLUMNS: dict[str, str] = {"username": STRING, "group": STRING}

#: Custom attributes: a column `custom:<name>` of desired and target users (NA: no value).
CUSTOM_PREFIX = "custom:"

#: What accounts lead in the product (Jira projects and components): one row per lead role.
LEAD_COLUMNS: dict[str, str] = {
    "username": STRING,  # the lead's username as the product spells it
    "kind": STRING,  # "project" or "component"
    "id": STRING,  # project key, or component id
    "name": STRING,  # project or component name, for messages
    "project": STRING,  # the project key (a component's project; the project itself)
}

#: What usersync manages in a target (from the store's ledger).
LEDGER_COLUMNS: dict[str, str] = {
    "kind": STRING,  # "user" or "group"
    "source_id": STRING,  # users: the source's immutable id; groups: empty
    "target_key": STRING,  # users: the product key; groups: the group name
    "name": STRING,  # username or group name when last written
    "origin": STRING,  # "created" or "adopted"
}

#: The plan: one row per operation, in execution order.
PLAN_COLUMNS: dict[str, str] = {
    "seq": INT,
    "target": STRING,
    "op": STRING,  # one of OPERATIONS
    "source_id": STRING,
    "target_key": STRING,
    "username": STRING,
    "group": STRING,
    "before": STRING,  # JSON of the changed fields before, "" when not applicable
    "after": STRING,  # JSON of the changed fields after
    "reason": STRING,  # why the planner chose this operation
    # create/update: JSON of every attribute the source wants (products whose update call
    # needs all fields send the unchanged ones from here); "" otherwise
    "desired": STRING,
}

#: Source users two live identities claim, and renames onto a name another account holds:
#: no operation is planned for them; the summary and the plan artifact list them.
CONFLICT_COLUMNS: dict[str, str] = {
    "source_id": STRING,
    "username": STRING,
    "target_key": STRING,
    "reason": STRING,
}

#: Operation kinds, in the order a plan executes them. Groups exist before members are added;
#: renames run before creations (a rename may free the name a new account takes); accounts
#: are (re)activated before they join groups; removals and deactivations come last.
OPERATIONS: tuple[str, ...] = (
    "create_group",
    "adopt_user",  # an existing account matched by username joins the ledger; no target write
    "relink_user",  # a re-created source identity takes over its predecessor's account; no write
    "update_user",
    "create_user",
    "reactivate_user",
    "add_membership",
    "remove_membership",
    "reassign_lead",  # a project/component led by an account about to be deactivated
    "deactivate_user",
)


def empty_frame(columns: dict[str, str]) -> pd.DataFrame:
    """An empty DataFrame with exactly these columns and dtypes."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})


def conform(frame: pd.DataFrame, columns: dict[str, str], *, what: str) -> pd.DataFrame:
    """Return `frame` with the documented columns cast to their dtypes, in documented order first.

    Extra columns are kept after the documented ones (source snapshots carry attributes).

    Raises:
        ValueError: a documented column is missing; the message names the table and the column.
    """
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}")
    extra = [name for name in frame.columns if name not in columns]
    out = frame[list(columns) + extra].copy()
    for name, dtype in columns.items():
        out[name] = out[name].astype(dtype)
    return out.reset_index(drop=True)


@dataclass(frozen=True)
class SourceSnapshot:
    """A complete read of a source. Sources raise instead of returning a partial snapshot."""

    users: pd.DataFrame
    groups: pd.DataFrame
    memberships: pd.DataFrame
    source_kind: str = ""
    notes: tuple[str, ...] = field(default=())
    #: the source's change mark, taken before the read (`capabilities.ChangeMarked`); None
    #: when the source cannot tell
    change_mark: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        return {
            "users": len(self.users),
            "groups": len(self.groups),
            "memberships": len(self.memberships),
        }


@dataclass(frozen=True)
class DesiredState:
    """What one target should hold according to the source and the mapping tables."""

    users: pd.DataFrame
    groups: pd.DataFrame
    memberships: pd.DataFrame
    rejected: pd.DataFrame
    #: the change mark of the snapshot it was made from (`SourceSnapshot.change_mark`)
    source_mark: str | None = None
    #: made from a read of these source ids alone (`sync.ScopedSnapshot`); None: the whole
    #: source
    scoped_to: frozenset[str] | None = None


@dataclass(frozen=True)
class TargetState:
    """What one target holds now, for the users and groups the run asked about."""

    users: pd.DataFrame
    groups: pd.DataFrame
    memberships: pd.DataFrame
    #: projects and components the read users lead (`LEAD_COLUMNS`); empty where the product
    #: has no such thing
    leads: pd.DataFrame = field(default_factory=lambda: empty_frame(LEAD_COLUMNS))
