"""Apply a profile's mapping tables: source snapshot → desired users, groups and memberships per target.

Two CSV tables, edited by admins, drive the transform:

- `attributes.csv`, one row per target attribute (`username`, `email`, `display_name`):
  `source` lists source attributes as fallbacks (`userPrincipalName|uid`: the first non-empty
  wins); `transform` is a space-separated chain of `lower`, `upper`, `strip`, `regex` (uses the
  `regex` and `replacement` columns) and `template` (uses the `template` column, e.g.
  `{givenName} {sn}`; `{value}` is the value so far); `default` fills what is still empty.
- `groups.csv`, one row per rule: `mode` `manual` (source group → target group),
  `on-the-fly` (a source group, or `*` for all, keeps its name in the target) or `default`
  (every active user joins `target_group`); `targets` limits a row to some of the profile's
  targets (`jira;confluence`, blank for all). Columns are left for later settings.

Tables are validated as a whole before anything runs; every problem names the file and line.
The transform itself is vectorised: each rule is one pandas operation over the whole column.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import regex as bounded_re

from usersync.config import GroupSyncSettings, read_text_file
from usersync.errors import ConfigError
from usersync.model import (
    CUSTOM_PREFIX,
    DESIRED_GROUP_COLUMNS,
    DESIRED_GROUP_FLAGS,
    DESIRED_MEMBERSHIP_COLUMNS,
    DESIRED_USER_COLUMNS,
    MEMBERSHIP_ONCE,
    REJECTED_USER_COLUMNS,
    USER_ATTRIBUTES,
    DesiredState,
    SourceSnapshot,
    conform,
    empty_frame,
)

log = logging.getLogger(__name__)

ATTRIBUTES_FILE = "attributes.csv"
GROUPS_FILE = "groups.csv"

TRANSFORMS = ("lower", "upper", "strip", "regex", "template")
ATTRIBUTE_COLUMNS = (
    "target",
    "source",
    "transform",
    "regex",
    "replacement",
    "template",
    "default",
    "targets",
)
#: A custom attribute's target: `custom:<name>` (Jira writes it as the user property <name>).
CUSTOM_ATTRIBUTE = re.compile(r"^custom:([A-Za-z0-9][A-Za-z0-9._-]{0,254})$")
REQUIRED_ATTRIBUTE_COLUMNS = ("target", "source")
GROUP_MODES = ("manual", "on-the-fly", "default", "default-new")
GROUP_COLUMNS = (
    "source_group",
    "target_group",
    "mode",
    "targets",
    "create",
    "keep_existing_users",
)
#: How the yes/no columns of groups.csv may be written (blank: the column's default).
YES = ("yes", "y", "true", "1")
NO = ("no", "n", "false", "0")
REQUIRED_GROUP_COLUMNS = ("source_group", "target_group")
ALL_GROUPS = "*"
#: Attribute names usable in `source` and in template fields (LDAP descriptions, SCIM paths).
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.:;-]*$")
#: In `source` an LDAP attribute may also be named by its OID (`2.5.4.4` is sn).
SOURCE_ATTRIBUTE_NAME = re.compile(r"^(?:[A-Za-z][A-Za-z0-9_.:;-]*|\d+(?:\.\d+)+)$")

#: The shipped attribute table, as in the miniOrange app: username ← userName /
#: userPrincipalName, email ← email / mail, display name ← the full name.
DEFAULT_ATTRIBUTES_CSV = """target,source,transform,regex,replacement,template,default
username,userName|userPrincipalName|uid|sAMAccountName,strip lower,,,,
email,email|mail,strip lower,,,,
display_name,displayName|cn,strip,,,,
"""


@dataclass(frozen=True)
class AttributeRule:
    """One validated row of attributes.csv."""

    line: int
    target: str
    sources: tuple[str, ...]
    transforms: tuple[str, ...]
    regex: bounded_re.Pattern[str] | None
    replacement: str
    template: str
    template_fields: tuple[str, ...]
    default: str
    #: custom attributes only: the targets the row is for (empty: every target)
    targets: tuple[str, ...] = ()

    def applies_to(self, target: str) -> bool:
        return not self.targets or target in self.targets


@dataclass(frozen=True)
class GroupRule:
    """One validated row of groups.csv."""

    line: int
    mode: str
    source_group: str
    target_group: str
    targets: tuple[str, ...]  # empty: every target
    #: manual: create the target group when missing (import) or only map onto an existing one
    create: bool = True
    #: manual: leave members the source does not list alone (True) or remove them
    keep_existing_users: bool = True

    def applies_to(self, target: str) -> bool:
        return not self.targets or target in self.targets


@dataclass(frozen=True)
class MappingTables:
    """A profile's validated tables."""

    attributes: tuple[AttributeRule, ...]
    groups: tuple[GroupRule, ...]
    #: things that are valid but probably not what the admin meant, with file and line
    warnings: tuple[str, ...] = ()

    def source_attributes(self) -> list[str]:
        """Every source attribute the attribute rules read, in first-use order."""
        seen: dict[str, None] = {}
        for rule in self.attributes:
            for name in (*rule.sources, *rule.template_fields):
                if name != "value":
                    seen.setdefault(name, None)
        return list(seen)


# -- reading and validating ----------------------------------------------------------------


def _read_csv_rows(text: str, where: str, known: Sequence[str], required: Sequence[str]):
    """Rows of a CSV as (line number, {column: stripped value}); checks the header."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise ConfigError(f"{where}: empty file; expected a header with {', '.join(required)}")
    unknown = [h for h in header if h not in known]
    if unknown:
        raise ConfigError(
            f"{where} line 1: unknown column(s) {', '.join(repr(u) for u in unknown)} "
            f"(known: {', '.join(known)})"
        )
    missing = [c for c in required if c not in header]
    if missing:
        raise ConfigError(f"{where} line 1: missing column(s) {', '.join(missing)}")
    if len(set(header)) != len(header):
        raise ConfigError(f"{where} line 1: a column is named twice")
    reader.fieldnames = header
    rows = []
    for record in reader:
        line = reader.line_num
        if None in record:
            raise ConfigError(f"{where} line {line}: more cells than columns in the header")
        values = {k: (v or "").strip() for k, v in record.items()}
        if not any(values.values()):
            continue  # blank line
        if _is_comment(values[header[0]], [v for k, v in values.items() if k != header[0]]):
            continue
        rows.append((line, values))
    return rows


def _is_comment(first: str, others: list[str]) -> bool:
    """A comment row: '#' alone or '# ' first, or '#' first with every other cell empty.

    A row like `#eng,jira-eng,manual` is data: a source group may start with '#'.
    """
    if not first.startswith("#"):
        return False
    return first == "#" or first[1:2].isspace() or not any(others)


def parse_attributes(
    text: str, where: str = ATTRIBUTES_FILE, target_names: Iterable[str] = ()
) -> tuple[AttributeRule, ...]:
    """Validate attributes.csv.

    Raises:
        ConfigError: unknown column or transform, bad regex or template, unknown or duplicate
            target attribute, no username rule, a `targets` value the profile lacks. The
            message names the file and line.
    """
    known_targets = set(target_names)
    rules: list[AttributeRule] = []
    seen: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
    for line, row in _read_csv_rows(text, where, ATTRIBUTE_COLUMNS, REQUIRED_ATTRIBUTE_COLUMNS):
        at = f"{where} line {line}"
        target = row["target"]
        custom = CUSTOM_ATTRIBUTE.match(target)
        if target not in USER_ATTRIBUTES and not custom:
            raise ConfigError(
                f"{at}: unknown target attribute '{target}' (known: "
                f"{', '.join(USER_ATTRIBUTES)}, or custom:<name> for a custom attribute, "
                "<name> of letters, digits, '.', '_' and '-')"
            )
        limited = tuple(t.strip() for t in row.get("targets", "").split(";") if t.strip())
        if limited and not custom:
            raise ConfigError(
                f"{at}: the targets column applies to custom attributes only; {target} is "
                "mapped alike for every target"
            )
        unknown = [t for t in limited if known_targets and t not in known_targets]
        if unknown:
            raise ConfigError(
                f"{at}: unknown target(s) {', '.join(unknown)} "
                f"(this profile has: {', '.join(sorted(known_targets))})"
            )
        for first, others in seen.get(target, []):
            if not limited or not others or set(limited) & set(others):
                raise ConfigError(f"{at}: '{target}' is mapped again (first on line {first})")
        seen.setdefault(target, []).append((line, limited))
        transforms = tuple(row.get("transform", "").replace(";", " ").split())
        for name in transforms:
            if name not in TRANSFORMS:
                raise ConfigError(
                    f"{at}: unknown transform '{name}' (known: {', '.join(TRANSFORMS)})"
                )
        sources = tuple(s.strip() for s in row["source"].split("|") if s.strip())
        for name in sources:
            if not SOURCE_ATTRIBUTE_NAME.match(name):
                raise ConfigError(f"{at}: '{name}' is not a valid source attribute name")
        regex = None
        if "regex" in transforms:
            if not row.get("regex"):
                raise ConfigError(f"{at}: transform 'regex' needs a pattern in the regex column")
            try:
                regex = bounded_re.compile(row["regex"])
            except bounded_re.error as exc:
                raise ConfigError(f"{at}: invalid regex {row['regex']!r}: {exc}") from exc
            try:
                regex.sub(row.get("replacement", ""), "")
            except (bounded_re.error, IndexError) as exc:
                raise ConfigError(
                    f"{at}: invalid replacement {row.get('replacement', '')!r}: {exc}"
                ) from exc
        elif row.get("regex"):
            raise ConfigError(f"{at}: a regex is given but the transform column has no 'regex'")
        template = row.get("template", "")
        fields: tuple[str, ...] = ()
        if "template" in transforms:
            if not template:
                raise ConfigError(f"{at}: transform 'template' needs the template column")
            fields = _template_fields(template, at)
        elif template:
            raise ConfigError(f"{at}: a template is given but the transform column lacks it")
        if not sources and "template" not in transforms and not row.get("default"):
            raise ConfigError(f"{at}: give a source attribute, a template or a default")
        rules.append(
            AttributeRule(
                line=line,
                target=target,
                sources=sources,
                transforms=transforms,
                regex=regex,
                replacement=row.get("replacement", ""),
                template=template,
                template_fields=fields,
                default=row.get("default", ""),
                targets=limited,
            )
        )
    if "username" not in seen:
        raise ConfigError(f"{where}: no 'username' row; every account needs a username")
    return tuple(rules)


def _template_fields(template: str, at: str) -> tuple[str, ...]:
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{at}: invalid template {template!r}: {exc}") from exc
    fields = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name or not ATTRIBUTE_NAME.match(name) or spec or conversion:
            raise ConfigError(
                f"{at}: template field {{{name}}} must be a plain attribute name like {{givenName}}"
            )
        fields.append(name)
    return tuple(fields)


def parse_groups(
    text: str, where: str = GROUPS_FILE, target_names: Iterable[str] = ()
) -> tuple[GroupRule, ...]:
    """Validate groups.csv.

    Raises:
        ConfigError: unknown column or mode, missing names, a target the profile lacks.
    """
    known_targets = set(target_names)
    rules = []
    for line, row in _read_csv_rows(text, where, GROUP_COLUMNS, REQUIRED_GROUP_COLUMNS):
        at = f"{where} line {line}"
        mode = row.get("mode") or "manual"
        if mode not in GROUP_MODES:
            raise ConfigError(f"{at}: unknown mode '{mode}' (known: {', '.join(GROUP_MODES)})")
        source, target = row["source_group"], row["target_group"]
        if mode == "manual" and not (source and target):
            raise ConfigError(f"{at}: a manual rule needs source_group and target_group")
        if mode == "manual" and source == ALL_GROUPS:
            raise ConfigError(f"{at}: '*' is for on-the-fly rules; name one source group")
        if mode == "on-the-fly" and (not source or target):
            raise ConfigError(
                f"{at}: an on-the-fly rule names a source_group (or *) and leaves target_group "
                "empty: the group keeps its name"
            )
        if mode in ("default", "default-new") and (source or not target):
            raise ConfigError(f"{at}: a {mode} rule names only target_group")
        flags = {}
        for column in ("create", "keep_existing_users"):
            value = row.get(column, "").strip().lower()
            if value and mode != "manual":
                raise ConfigError(
                    f"{at}: {column} applies to manual rules only (on-the-fly groups follow "
                    "settings.groups.create_missing; default groups are always created)"
                )
            if value and value not in YES + NO:
                raise ConfigError(f"{at}: {column} must be yes or no, not {value!r}")
            flags[column] = value not in NO
        targets = tuple(t.strip() for t in row.get("targets", "").split(";") if t.strip())
        unknown = [t for t in targets if known_targets and t not in known_targets]
        if unknown:
            raise ConfigError(
                f"{at}: unknown target(s) {', '.join(unknown)} "
                f"(this profile has: {', '.join(sorted(known_targets))})"
            )
        rules.append(GroupRule(line, mode, source, target, targets, **flags))
    return tuple(rules)


def load_tables(folder: Path, target_names: Iterable[str] = ()) -> MappingTables:
    """Read and validate a profile's tables; a missing attributes.csv means the shipped defaults.

    Raises:
        ConfigError: see `parse_attributes` and `parse_groups`; a missing groups.csv.
    """
    target_names = tuple(target_names)
    attributes_path = folder / ATTRIBUTES_FILE
    attributes = (
        parse_attributes(read_text_file(attributes_path), str(attributes_path), target_names)
        if attributes_path.is_file()
        else parse_attributes(DEFAULT_ATTRIBUTES_CSV, "shipped default attributes.csv")
    )
    groups_path = folder / GROUPS_FILE
    if not groups_path.is_file():
        raise ConfigError(
            f"{groups_path}: missing; write at least the header "
            f"'{','.join(GROUP_COLUMNS)}' (no rows = no groups are managed)"
        )
    groups = parse_groups(read_text_file(groups_path), str(groups_path), target_names)
    return MappingTables(
        attributes,
        groups,
        table_warnings(attributes, groups, str(attributes_path), str(groups_path)),
    )


#: Characters that make a group name look like a pattern; rules match names literally.
_PATTERN_LOOK = re.compile(r"\.\*|\.\+|[\^$\[\]()|\\]")


def table_warnings(
    attributes: Sequence[AttributeRule],
    groups: Sequence[GroupRule],
    attributes_where: str = ATTRIBUTES_FILE,
    groups_where: str = GROUPS_FILE,
) -> tuple[str, ...]:
    """Valid rows that are probably not what the admin meant: patterns at risk of
    catastrophic backtracking, and source groups that look like patterns but match literally."""
    out = [
        f"{attributes_where} line {rule.line}: the regex {rule.regex.pattern!r} has nested "
        "repetition, which can take exponential time on some values; each value gets "
        f"{REGEX_SECONDS_PER_VALUE * 1000:.0f} ms and a user whose value runs out is not "
        "provisioned — prefer a pattern without a repeated group that itself repeats"
        for rule in attributes
        if rule.regex is not None and risky_pattern(rule.regex.pattern)
    ]
    out += [
        f"{groups_where} line {rule.line}: source_group {rule.source_group!r} looks like a "
        "regular expression, but rules match group names literally (case-insensitively); "
        "only a group with exactly this name matches"
        for rule in groups
        if rule.source_group != ALL_GROUPS and _PATTERN_LOOK.search(rule.source_group)
    ]
    return tuple(out)


# -- applying -------------------------------------------------------------------------------


def _column(users: pd.DataFrame, name: str, lookup: dict[str, str]) -> pd.Series:
    """A source attribute as a string column; blank values are missing; absent attribute → all NA."""
    actual = lookup.get(name.casefold())
    if actual is None:
        return pd.Series(pd.NA, index=users.index, dtype="string")
    values = users[actual].astype("string").str.strip()
    return values.mask(values == "")


def _render_template(
    template: str, users: pd.DataFrame, lookup: dict[str, str], value: pd.Series
) -> pd.Series:
    out = pd.Series("", index=users.index, dtype="string")
    any_field = pd.Series(False, index=users.index)
    for literal, name, _, _ in string.Formatter().parse(template):
        out = out + literal
        if name is None:
            continue
        part = value if name == "value" else _column(users, name, lookup)
        any_field = any_field | part.notna()
        out = out + part.fillna("")
    return out.where(any_field & (out.str.strip() != ""))


#: How long one regex substitution may run on one value (IdP values are not ours to trust).
REGEX_SECONDS_PER_VALUE = 0.05
#: A quantified group that itself holds a quantifier: the shape of catastrophic backtracking.
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)(?:[+*]|\{\d+,)")


def risky_pattern(pattern: str) -> bool:
    """Whether a pattern has the shape that backtracks catastrophically, e.g. `(a+)+$`."""
    return bool(_NESTED_QUANTIFIER.search(pattern))


def _budget() -> str:
    return f"{REGEX_SECONDS_PER_VALUE * 1000:.0f} ms"


def _bounded_replace(values: pd.Series, rule: AttributeRule) -> tuple[pd.Series, pd.Series]:
    """`rule.regex` substituted in each distinct value, each given `REGEX_SECONDS_PER_VALUE`.

    A value is the IdP's, so a pattern may backtrack on it for longer than any run can wait.
    Such a value becomes missing and is flagged, so its user is rejected with the reason (not
    provisioned with a half-computed or default value); the other users map as usual, however
    many values run out. Values are tried once each, however many users share them.

    Returns:
        The substituted values, and which of them ran out of time (booleans).
    """
    assert rule.regex is not None
    done: dict[str, str] = {}
    ran_out: set[str] = set()
    for value in values.dropna().unique():
        try:
            done[value] = rule.regex.sub(rule.replacement, value, timeout=REGEX_SECONDS_PER_VALUE)
        except TimeoutError:
            ran_out.add(value)
    out = values.map(done).astype("string")
    return out, values.isin(ran_out).fillna(False).astype(bool)


def map_attributes(users: pd.DataFrame, rules: Sequence[AttributeRule]) -> pd.DataFrame:
    """Apply attribute rules to source users; one column per target attribute (NA = no value).

    A value a rule's regex ran out of time on is NA (`desired_state` says why it rejects the
    user: see `_apply_attribute_rules`).
    """
    return _apply_attribute_rules(users, rules)[0]


def _apply_attribute_rules(
    users: pd.DataFrame, rules: Sequence[AttributeRule]
) -> tuple[pd.DataFrame, pd.Series]:
    """`map_attributes`, and per user why a rule could not be applied to it (NA: all were).

    A rule that could not be applied (its regex ran out of time on the user's value) leaves
    the attribute missing: neither the `default` nor, for the display name, the username fills
    it, since the user is rejected.
    """
    lookup = {str(c).casefold(): str(c) for c in users.columns}
    out = pd.DataFrame(index=users.index)
    unmappable = pd.Series(pd.NA, index=users.index, dtype="string")
    for rule in rules:
        value = pd.Series(pd.NA, index=users.index, dtype="string")
        ran_out = pd.Series(False, index=users.index)
        for name in rule.sources:
            value = value.fillna(_column(users, name, lookup))
        for name in rule.transforms:
            if name == "lower":
                value = value.str.lower()
            elif name == "upper":
                value = value.str.upper()
            elif name == "strip":
                value = value.str.strip()
            elif name == "regex" and rule.regex is not None:
                value, timed_out = _bounded_replace(value, rule)
                ran_out = ran_out | timed_out
            elif name == "template":
                value = _render_template(rule.template, users, lookup, value)
        value = value.mask(value.str.strip() == "")
        if rule.default:
            value = value.fillna(rule.default)
        out[rule.target] = value.mask(ran_out)
        if ran_out.any():
            assert rule.regex is not None
            why = (
                f"attributes.csv line {rule.line} ({rule.target}): the regex "
                f"{rule.regex.pattern!r} ran out of its time budget ({_budget()}) on this "
                "user's value; the user is not provisioned until the value or the pattern changes"
            )
            earlier = unmappable[ran_out]
            unmappable[ran_out] = earlier.where(earlier.isna(), earlier + "; " + why).fillna(why)
    for name in USER_ATTRIBUTES:
        if name not in out.columns:
            out[name] = pd.Series(pd.NA, index=users.index, dtype="string")
    return out, unmappable


def desired_state(
    snapshot: SourceSnapshot,
    tables: MappingTables,
    target: str,
    *,
    email_required: bool = True,
    groups_settings: GroupSyncSettings | None = None,
) -> DesiredState:
    """The users, groups and memberships target `target` should hold.

    Users whose mapping yields no username (or no e-mail, when the product needs one), whose
    value a rule's regex ran out of time on, or whose username collides with another user's
    (case-insensitively) are rejected with a reason: reported, never written, and never
    deprovisioned because of it (a rejected user the source says is disabled still is).
    """
    users = snapshot.users
    mapped, unmappable = _apply_attribute_rules(
        users, [r for r in tables.attributes if r.applies_to(target)]
    )
    custom = [c for c in mapped.columns if c.startswith(CUSTOM_PREFIX)]
    mapped["source_id"] = users["source_id"].astype("string")
    mapped["locator"] = users["locator"].astype("string")
    mapped["active"] = users["active"].astype("boolean")

    reason = unmappable
    reason = reason.mask(
        reason.isna() & mapped["username"].isna(), "no username: every source attribute is empty"
    )
    if email_required:
        reason = reason.fillna(
            pd.Series(pd.NA, index=mapped.index, dtype="string").mask(
                mapped["email"].isna(), "no e-mail address (the target requires one)"
            )
        )
    # A username two source users share is nobody's: both are rejected. Only active users
    # compete for a name: a disabled entry left behind beside its re-created successor must
    # not lock the successor out (it is rejected itself, and its account goes to the successor).
    key = mapped["username"].str.casefold()
    is_active = mapped["active"].fillna(False).astype(bool)
    active_key = key.where(is_active)
    clash = active_key.notna() & active_key.duplicated(keep=False)
    shadowed = ~is_active & key.notna() & key.isin(set(active_key.dropna()))
    reason = reason.mask(
        reason.isna() & shadowed,
        "disabled, and its username belongs to an active source user",
    )
    if clash.any():
        first_locator = (
            mapped.loc[clash]
            .groupby(key[clash])["locator"]
            .transform(lambda s: "; ".join(s.astype(str)))
        )
        reason = reason.fillna(
            ("duplicate username '" + mapped.loc[clash, "username"] + "' (" + first_locator + ")")
            .reindex(mapped.index)
            .astype("string")
        )
    mapped["display_name"] = mapped["display_name"].fillna(mapped["username"])
    rejected = mapped.loc[reason.notna(), ["source_id", "locator", "active"]].assign(
        reason=reason[reason.notna()]
    )
    good = mapped.loc[reason.isna()]
    desired_users = conform(
        good[[*DESIRED_USER_COLUMNS, *custom]], DESIRED_USER_COLUMNS, what="desired users"
    )

    group_settings = groups_settings or GroupSyncSettings()
    memberships = _desired_memberships(snapshot, tables, target, good, group_settings)
    groups = _desired_groups(tables, target, memberships, group_settings)
    return DesiredState(
        users=desired_users.sort_values("username", ignore_index=True),
        groups=groups,
        memberships=memberships,
        rejected=conform(rejected, REJECTED_USER_COLUMNS, what="rejected users"),
    )


def _ran_out(setting: str, pattern: str, names: Iterable[str]) -> None:
    """Report the group names a settings pattern ran out of time on (their groups are left out)."""
    names = list(names)
    if names:
        log.warning(
            "settings.groups.%s: the regex %r ran out of its time budget (%s) on %d source "
            "group name(s); those groups are left out of this run (their memberships are not "
            "provisioned, and those usersync gave are revoked like any group's that leaves the "
            "mapping): %s",
            setting,
            pattern,
            _budget(),
            len(names),
            "; ".join(repr(n) for n in names),
        )


def _matching(
    names: pd.Series, patterns: Sequence[str], setting: str
) -> tuple[pd.Series, pd.Series]:
    """Which names one of `patterns` finds (searched, case-insensitively), and which names a
    pattern ran out of time on (reported; the caller leaves them out)."""
    found = pd.Series(False, index=names.index)
    ran_out = pd.Series(False, index=names.index)
    for text in patterns:
        pattern = bounded_re.compile(text, bounded_re.IGNORECASE)
        hits: list[bool] = []
        slow: list[bool] = []
        for name in names.tolist():
            try:
                hits.append(bool(pattern.search(name, timeout=REGEX_SECONDS_PER_VALUE)))
                slow.append(False)
            except TimeoutError:
                hits.append(False)
                slow.append(True)
        slow_here = pd.Series(slow, index=names.index, dtype=bool)
        _ran_out(setting, text, names[slow_here])
        found = found | pd.Series(hits, index=names.index, dtype=bool)
        ran_out = ran_out | slow_here
    return found, ran_out


def _passing(names: pd.Series, settings: GroupSyncSettings) -> pd.Series:
    """Which group names pass `settings.include` and `settings.exclude`.

    A name a filter ran out of time on does not pass: whether it was meant to is unknown, and
    a group left out loses only its own memberships; stopping the run would hold back every
    other user's changes, deprovisioning included.
    """
    keep = pd.Series(True, index=names.index)
    if settings.include:
        keep, ran_out = _matching(names, settings.include, "include")
        keep = keep & ~ran_out
    if settings.exclude:
        excluded, ran_out = _matching(names, settings.exclude, "exclude")
        keep = keep & ~excluded & ~ran_out
    return keep


def _renamed(names: pd.Series, settings: GroupSyncSettings) -> pd.Series:
    """On-the-fly group names after `settings.rename_pattern` (the matched part replaced).

    A name the pattern runs out of time on becomes missing, so its group is left out (and
    reported), as with the name filters.
    """
    if not settings.rename_pattern:
        return names
    pattern = bounded_re.compile(settings.rename_pattern)
    renamed: dict[str, str] = {}
    ran_out: list[str] = []
    for name in names.dropna().unique():
        try:
            renamed[name] = pattern.sub(
                settings.rename_to, name, count=1, timeout=REGEX_SECONDS_PER_VALUE
            ).strip()
        except TimeoutError:
            ran_out.append(name)
    _ran_out("rename_pattern", settings.rename_pattern, ran_out)
    return names.map(renamed).astype("string")


def _desired_memberships(
    snapshot: SourceSnapshot,
    tables: MappingTables,
    target: str,
    users: pd.DataFrame,
    settings: GroupSyncSettings,
) -> pd.DataFrame:
    """Memberships the rules give active users; column `once` marks default-new ones.

    Precedence: a source group a manual rule names is mapped by that rule and not also by
    the on-the-fly `*` (an on-the-fly row naming it explicitly still applies). Name filters
    (`settings.include` / `exclude`) apply before every rule; default groups do not depend on
    source groups and are not filtered. When two rules give a user the same group (names
    compared case-insensitively), the first rule's spelling is kept, and a membership an
    enforced rule gives wins over the same one given only at creation (`default-new`).

    The source can hold a million memberships over a few thousand groups, so rules are applied
    to the distinct group names, and the memberships carry integer codes (the user's code, the
    target group's row in a table of names) until the result is built.
    """
    rules = [r for r in tables.groups if r.applies_to(target)]
    active = users.loc[users["active"].fillna(False).astype(bool), ["source_id", "username"]]
    active = active.reset_index(drop=True)
    user_codes, user_ids = pd.factorize(active["source_id"].astype("string"), use_na_sentinel=False)
    member, group, names, seen = _coded_source(snapshot.memberships, user_ids, settings)
    source_keys = names.str.casefold()

    # One table of target group names; each part is (user codes, rows in `targets`, once).
    targets: list[pd.Series] = []
    parts: list[tuple[np.ndarray, np.ndarray, bool]] = []

    def target_rows(values: pd.Series) -> int:
        targets.append(pd.Series(values, dtype="string").reset_index(drop=True))
        return sum(len(t) for t in targets[:-1])

    manual_rules = [r for r in rules if r.mode == "manual"]
    manual_keys = {r.source_group.casefold() for r in manual_rules}
    if manual_rules:
        start = target_rows(pd.Series([r.target_group for r in manual_rules]))
        by_source = pd.DataFrame({"group": np.arange(len(names)), "key": source_keys}).merge(
            pd.DataFrame(
                {
                    "key": [r.source_group.casefold() for r in manual_rules],
                    "target": start + np.arange(len(manual_rules)),
                },
            ).astype({"key": "string"}),
            on="key",
        )
        joined = pd.DataFrame({"group": group}).reset_index().merge(by_source, on="group")
        parts.append((member[joined["index"].to_numpy()], joined["target"].to_numpy(), False))
    fly = [r.source_group.casefold() for r in rules if r.mode == "on-the-fly"]
    if fly:
        chosen = source_keys.isin(fly)
        if ALL_GROUPS in fly:
            chosen = chosen | ~source_keys.isin(manual_keys)
        chosen = chosen.to_numpy() & seen
        renamed = names.copy()
        renamed[chosen] = _renamed(names[chosen], settings)
        start = target_rows(renamed)
        picked = chosen[group]
        parts.append((member[picked], start + group[picked], False))
    del member, group
    for mode, once in (("default", False), ("default-new", True)):
        defaults = [r.target_group for r in rules if r.mode == mode]
        if defaults:
            start = target_rows(pd.Series(defaults))
            parts.append(
                (
                    np.repeat(user_codes, len(defaults)),
                    np.tile(start + np.arange(len(defaults)), len(user_codes)),
                    once,
                )
            )
    if not parts:
        return empty_frame(DESIRED_MEMBERSHIP_COLUMNS).assign(
            **{MEMBERSHIP_ONCE: pd.Series(dtype="boolean")}
        )
    return _memberships_frame(active, user_codes, pd.concat(targets, ignore_index=True), parts)


def _coded_source(
    memberships: pd.DataFrame, user_ids: pd.Index, settings: GroupSyncSettings
) -> tuple[np.ndarray, np.ndarray, pd.Series, np.ndarray]:
    """The source memberships of the users `user_ids` lists, as codes in source order.

    Returns:
        The user codes (positions in `user_ids`) and group codes of the memberships whose
        group the name filters let through; the distinct group names (first listed first);
        and which of those names the filters let through.
    """
    # Columns that are categoricals (an incremental LDAP read keeps its memberships coded)
    # are factorised and looked up by their codes; a string column, value by value.
    group_codes, group_names = pd.factorize(_coded_or_string(memberships["source_group"]))
    member = user_ids.get_indexer(_coded_or_string(memberships["source_id"]))
    listed = (group_codes >= 0) & memberships["source_id"].notna().to_numpy()
    present = np.zeros(len(group_names), dtype=bool)
    present[group_codes[listed]] = True
    names = pd.Series(np.asarray(group_names, dtype=object), dtype="string")
    seen = present.copy()
    if settings.include or settings.exclude:
        seen[present] = _passing(names[present], settings).to_numpy()
    rows = np.flatnonzero(listed & (member >= 0))
    rows = rows[seen[group_codes[rows]]]
    return member[rows].astype(np.int32), group_codes[rows].astype(np.int32), names, seen


def _coded_or_string(column: pd.Series) -> pd.Series:
    """A categorical column over strings as it is, any other column as strings."""
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype) and isinstance(
        dtype.categories.dtype, pd.StringDtype
    ):
        return column
    return column.astype("string")


def _memberships_frame(
    active: pd.DataFrame,
    user_codes: np.ndarray,
    table: pd.Series,
    parts: list[tuple[np.ndarray, np.ndarray, bool]],
) -> pd.DataFrame:
    """The desired memberships from the rules' (user codes, rows of `table`, once) parts.

    Groups with a blank name are left out; a user's memberships in one group (case-folded)
    are one, the first an enforced rule gives (the sorts are stable, so rule order decides
    ties); rows are ordered by case-folded group, then username.
    """
    named = (table.notna() & (table.str.strip() != "")).fillna(False).to_numpy()
    key_codes, keys = pd.factorize(table.str.casefold())
    target = np.concatenate([p[1] for p in parts])
    kept = named[target]
    target = target[kept]
    # A source id listed twice among the active users is the first of them: its memberships
    # would be joined to each row and all but the first dropped as duplicates.
    first_row = np.unique(user_codes, return_index=True)[1]
    row = first_row[np.concatenate([p[0] for p in parts])[kept]]
    once = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])[kept]
    parts.clear()
    key = key_codes[target]
    key_rank = np.argsort(np.argsort(keys.to_numpy(dtype=object), kind="stable"))
    name_rank = np.argsort(np.argsort(active["username"].to_numpy(dtype=object), kind="stable"))
    order = np.lexsort((once, name_rank[row], key_rank[key]))
    row, key, target, once = row[order], key[order], target[order], once[order]
    first = np.ones(len(row), dtype=bool)
    first[1:] = (row[1:] != row[:-1]) | (key[1:] != key[:-1])
    row, target, once = row[first], target[first], once[first]
    out = pd.DataFrame(
        {
            "source_id": active["source_id"].array.take(row),
            "username": active["username"].array.take(row),
            "group": table.array.take(target),
            MEMBERSHIP_ONCE: pd.array(once, dtype="boolean"),
        }
    )
    return conform(out, DESIRED_MEMBERSHIP_COLUMNS, what="memberships")


def _desired_groups(
    tables: MappingTables, target: str, memberships: pd.DataFrame, settings: GroupSyncSettings
) -> pd.DataFrame:
    """Every group a rule names or a membership needs, with its `DESIRED_GROUP_FLAGS`."""
    rows = []
    for rule in tables.groups:
        if not rule.applies_to(target) or rule.mode == "on-the-fly":
            continue
        rows.append(
            {
                "group": rule.target_group,
                "create": rule.create,
                "enforce": rule.mode != "default-new",
                "keep_users": rule.keep_existing_users,
                "named": True,
            }
        )
    named = pd.DataFrame(rows, columns=["group", *DESIRED_GROUP_FLAGS])
    named_keys = set(named["group"].str.casefold()) if len(named) else set()
    members = memberships["group"].astype("string").dropna().drop_duplicates()
    fly = members[~members.str.casefold().isin(named_keys)]
    fly_rows = pd.DataFrame(
        {
            "group": fly,
            "create": settings.create_missing,
            "enforce": True,
            "keep_users": True,
            "named": False,
        }
    )
    frame = pd.concat([named, fly_rows], ignore_index=True)
    frame["group"] = frame["group"].astype("string")
    frame["key"] = frame["group"].str.casefold()
    flags = frame.groupby("key", sort=True).agg(
        group=("group", "first"),
        create=("create", "any"),
        enforce=("enforce", "any"),
        # Members are removed only when every rule naming the group says so.
        keep_users=("keep_users", "any"),
        named=("named", "any"),
    )
    out = conform(
        flags.reset_index(drop=True)[["group", *DESIRED_GROUP_FLAGS]],
        DESIRED_GROUP_COLUMNS,
        what="desired groups",
    )
    for name in DESIRED_GROUP_FLAGS:
        out[name] = out[name].astype(bool)
    return out
