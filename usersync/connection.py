"""Test Connection: for one profile, check the source and every target, and say why one fails.

Each part is checked with its own `check()`: it connects, proves the credentials are accepted
and that the account may do what the profile will do (read users and groups; administer users
in a target), and writes nothing. A part that cannot even be built (a missing secret, a bad
URL) is a failed check with that reason, not an exception, so one bad part never hides the
others. A source that can look names up in its server's schema (LDAP: `check_attributes`) also
checks the attributes the mapping tables read, so a misspelt one fails here, before a sync.
A target's line names its product version (`Target.product_version`); one usersync is not
tested with is a warning saying what may not work, never a failure on its own.
`connection_markdown` renders the results for the flow's artifact and the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from usersync.capabilities import AttributeChecker, offers
from usersync.config import SecretLoader
from usersync.errors import UsersyncError
from usersync.sources import Source, SourceCheck, open_source
from usersync.sync import LoadedProfile, open_target_for
from usersync.targets.base import STOCK_ADMIN_GROUPS, Target, TargetCheck


@dataclass(frozen=True)
class ConnectionResult:
    """The outcome of checking one part of a profile."""

    part: str  # "source" or "target <name>"
    kind: str  # ldap, scim, miniorange-push, jira, ...
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_connections(
    loaded: LoadedProfile, *, load_prefect_secret: SecretLoader | None = None
) -> list[ConnectionResult]:
    """Check the profile's source, then each target; never raises for a failing part.

    Args:
        loaded: the validated profile (`usersync.sync.prepare_profile`).
        load_prefect_secret: reads Prefect Secret blocks (the flow passes one).

    Returns:
        One result per part, the source first.
    """
    profile = loaded.profile
    results = []
    try:
        with open_source(profile.source, load_prefect_secret=load_prefect_secret) as source:
            checked = _check_source(source, loaded.tables.source_attributes())
        results.append(ConnectionResult("source", profile.source.kind, checked.ok, checked.detail))
    except UsersyncError as exc:
        results.append(ConnectionResult("source", profile.source.kind, False, str(exc)))
    for name, config in profile.targets.items():
        try:
            with open_target_for(loaded, name, load_prefect_secret=load_prefect_secret) as target:
                checked = target.check()
                if checked.ok:
                    checked = _with_privileges(target, checked, loaded)
                    checked = _with_version(target, checked)
            results.append(
                ConnectionResult(f"target {name}", config.kind, checked.ok, checked.detail)
            )
        except UsersyncError as exc:
            results.append(ConnectionResult(f"target {name}", config.kind, False, str(exc)))
    return results


def _with_privileges(target: Target, checked: TargetCheck, loaded: LoadedProfile) -> TargetCheck:
    """The target's check, with what it grants administration through (read as a plan reads
    it). Administrators that cannot be established fail the check: until they can, a sync
    adopts and relinks nobody (fail closed)."""
    privileges = target.privileges()
    allowed = {g.casefold() for g in loaded.profile.settings.groups.allow_privileged_groups}
    present = sorted(privileges.groups - STOCK_ADMIN_GROUPS)
    shown = ", ".join(present[:10]) + (
        f" and {len(present) - 10} more" if len(present) > 10 else ""
    )
    detail = (
        f"{checked.detail}; {len(privileges.administrators)} administrator(s); groups that grant "
        f"administration (no rule fills them{'' if not allowed else ' except ' + ', '.join(sorted(allowed))}): "
        f"the stock admin groups{', ' + shown if shown else ''}"
    )
    if privileges.problem:
        return TargetCheck(
            False,
            f"{detail}; administrators cannot be established: {privileges.problem}. Until they "
            "can, a sync adopts and relinks no existing account (fail closed)",
        )
    return TargetCheck(True, detail)


def _with_version(target: Target, checked: TargetCheck) -> TargetCheck:
    """The target's check with the product's version. A version usersync does not support is
    named with what may not work, as a warning: it does not fail the check."""
    try:
        version = target.product_version()
    except UsersyncError as exc:
        return TargetCheck(checked.ok, f"{checked.detail}; the version could not be read: {exc}")
    if version is None:
        return checked
    warning = "" if version.supported else "WARNING: "
    return TargetCheck(checked.ok, f"{checked.detail}; {warning}{version}")


def _check_source(source: Source, attributes: Sequence[str]) -> SourceCheck:
    """`source.check()`, then, where the source offers it, its check of the mapped attributes."""
    checked = source.check()
    if not checked.ok or not offers(source, AttributeChecker):
        return checked
    named = source.check_attributes(attributes)
    if not named.ok:
        return named
    return SourceCheck(True, f"{checked.detail}; {named.detail}")


def connection_markdown(profile: str, results: list[ConnectionResult]) -> str:
    """A Markdown table of the results, failures first in the reader's eye by their mark."""
    failed = sum(not r.ok for r in results)
    verdict = "all connections OK" if not failed else f"{failed} of {len(results)} checks FAILED"
    lines = [
        f"# Test Connection: profile `{profile}`",
        "",
        f"**{verdict}** (nothing was written)",
        "",
        "| part | kind | result | detail |",
        "| --- | --- | --- | --- |",
    ]
    for r in results:
        detail = r.detail.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r.part} | {r.kind} | {'OK' if r.ok else 'FAILED'} | {detail} |")
    return "\n".join(lines) + "\n"
