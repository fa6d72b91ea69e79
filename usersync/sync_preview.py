"""Test Sync: for one user of a profile's source, what the directory holds and what usersync would write.

Given a profile and a login value (`sAMAccountName` on Active Directory, `uid` elsewhere, or
any attribute), it finds the user with the value escaped into the filter (so `*`, `)(`, `\\`
and NUL match only themselves), reads every attribute the directory returns for that entry,
the groups the user belongs to in scope, and runs the profile's mapping tables on that one
user for each target: the account attributes and the groups usersync would write, or why the
user would be rejected. It reads the source only; no target is contacted, nothing is written.
The Prefect flow `flows/sync_preview.py` and `usersync test-sync` present its `markdown()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from usersync.capabilities import UserLookup, offers
from usersync.config import SecretLoader
from usersync.errors import ConfigError
from usersync.mapping import desired_state
from usersync.model import (
    CUSTOM_PREFIX,
    SOURCE_GROUP_COLUMNS,
    SOURCE_MEMBERSHIP_COLUMNS,
    SourceSnapshot,
    conform,
)
from usersync.sources import open_source
from usersync.sync import LoadedProfile

#: The login attribute Test Sync looks users up by, per LDAP flavour.
DEFAULT_LOGIN_ATTRIBUTES = {"active_directory": "sAMAccountName", "openldap": "uid"}
#: How many characters of one attribute value the report shows.
MAX_VALUE_CHARS = 200


@dataclass
class TargetPreview:
    """What one target would get for the user."""

    target: str
    kind: str
    account: dict[str, object] | None  # username, email, display_name, active
    groups: list[str]
    rejected: str | None = None


@dataclass
class TestSyncReport:
    """The outcome of a Test Sync for one login value."""

    __test__ = False  # not a pytest test class despite the name

    profile: str
    attribute: str
    login: str
    matches: int
    locator: str | None = None
    source_id: str | None = None
    active: bool | None = None
    directory_attributes: dict[str, list[str]] = field(default_factory=dict)
    source_groups: list[str] = field(default_factory=list)
    targets: list[TargetPreview] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """The report as markdown (a Prefect artifact, or printed by the CLI)."""
        lines = [f"# Test Sync: {self.profile}, {self.attribute} = `{self.login}`", ""]
        if self.matches != 1:
            lines.append(
                f"**{self.matches} users match** in the profile's scope"
                + ("; nothing to show." if self.matches == 0 else "; make the login unique.")
            )
            return "\n".join(lines) + "\n"
        lines += [
            f"- entry: `{self.locator}`",
            f"- source id: `{self.source_id}`",
            f"- active in the source: {'yes' if self.active else 'no'}",
            f"- groups in scope: {', '.join(self.source_groups) or 'none'}",
            "",
            "## What the directory returns",
            "",
            "| attribute | value(s) |",
            "| --- | --- |",
        ]
        for name, values in self.directory_attributes.items():
            shown = "; ".join(_cell(v) for v in values)
            lines.append(f"| {name} | {shown} |")
        for preview in self.targets:
            lines += ["", f"## {preview.target} ({preview.kind}): what usersync would write", ""]
            if preview.rejected:
                lines.append(f"Not provisioned: {preview.rejected}")
                continue
            lines += ["| attribute | value |", "| --- | --- |"]
            for name, value in (preview.account or {}).items():
                lines.append(f"| {name} | {_cell(str(value))} |")
            lines += ["", f"Groups: {', '.join(preview.groups) or 'none'}"]
        if self.notes:
            lines += ["", "## Notes", "", *[f"- {note}" for note in self.notes]]
        return "\n".join(lines) + "\n"


def run_test_sync(
    loaded: LoadedProfile,
    login: str,
    *,
    attribute: str | None = None,
    load_prefect_secret: SecretLoader | None = None,
) -> TestSyncReport:
    """Find the user whose `attribute` equals `login` and preview what each target would get.

    Args:
        loaded: the validated profile and tables.
        login: the value to look up, taken literally (escaped into the filter).
        attribute: the attribute to match; default sAMAccountName on AD, uid elsewhere.
        load_prefect_secret: reads Prefect Secret blocks (the engine has no Prefect).

    Returns:
        The report; `matches` says how many users matched (0 or several: no preview).

    Raises:
        ConfigError: the source kind cannot look users up.
        SourceError: the source is unreachable or refused the search.
    """
    source_config = loaded.profile.source
    attribute = attribute or DEFAULT_LOGIN_ATTRIBUTES.get(
        getattr(source_config, "flavour", ""), "uid"
    )
    wanted = list(dict.fromkeys([attribute, *loaded.tables.source_attributes()]))
    report = TestSyncReport(loaded.profile.name, attribute, login, matches=0)
    with open_source(source_config, load_prefect_secret=load_prefect_secret) as source:
        if not offers(source, UserLookup):
            raise ConfigError(
                f"profile {loaded.profile.name}: Test Sync is not available for source kind "
                f"'{source_config.kind}'"
            )
        users = source.find_users(attribute, login, wanted)
        report.matches = len(users)
        if len(users) != 1:
            return report
        user = users.iloc[0]
        report.locator = str(user["locator"])
        report.source_id = str(user["source_id"])
        report.active = bool(user["active"])
        report.directory_attributes = source.entry_attributes(report.locator)
        groups, notes = source.user_groups(report.locator)
    report.source_groups = groups
    report.notes += notes
    snapshot = SourceSnapshot(
        users=users,
        groups=conform(
            pd.DataFrame({"source_group_id": groups, "source_group": groups}, dtype="string"),
            SOURCE_GROUP_COLUMNS,
            what="test sync groups",
        ),
        memberships=conform(
            pd.DataFrame(
                {"source_id": [report.source_id] * len(groups), "source_group": groups},
                dtype="string",
            ),
            SOURCE_MEMBERSHIP_COLUMNS,
            what="test sync memberships",
        ),
    )
    for name, target in loaded.profile.targets.items():
        desired = desired_state(
            snapshot, loaded.tables, name, groups_settings=loaded.profile.settings.groups
        )
        preview = TargetPreview(name, target.kind, None, [])
        if len(desired.rejected):
            preview.rejected = str(desired.rejected.iloc[0]["reason"])
        elif len(desired.users):
            row = desired.users.iloc[0]
            custom = [c for c in desired.users.columns if c.startswith(CUSTOM_PREFIX)]
            preview.account = {
                column: _plain(row[column])
                for column in ("username", "email", "display_name", "active", *custom)
            }
            preview.groups = sorted(desired.memberships["group"].dropna().unique().tolist())
        report.targets.append(preview)
    return report


def _plain(value: object) -> object:
    """A frame cell as a plain Python value (None for missing), fit for JSON and comparison."""
    if pd.isna(value):  # type: ignore[arg-type]
        return None
    return value.item() if hasattr(value, "item") else value


def _cell(value: str) -> str:
    """A value fit for a markdown table cell: pipes escaped, newlines flattened, shortened."""
    text = value.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "…"
