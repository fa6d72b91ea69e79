"""The run form: what each flow parameter is called and says in the Prefect UI.

Prefect builds a deployment's run form from the flow's signature. It titles every field by
its parameter name and keeps only the constraints of an `Annotated` type, so a parameter
declares its constraints in the type (`ProfileName`) and its title and help text with
`form_field` as its default. Parameters are shown in clear: none carries a secret.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from usersync import PROFILE_NAME_PATTERN

#: A profile (a folder under mappings/) or a target of one: lowercase, digits and dashes.
ProfileName = Annotated[str, Field(pattern=PROFILE_NAME_PATTERN, max_length=100)]
TargetName = Annotated[str, Field(pattern=PROFILE_NAME_PATTERN, max_length=100)]
#: The kinds of run (`usersync.delta`).
RunMode = Literal["delta", "reconcile"]

PROFILE_HELP = (
    "The profile: a folder under mappings/ (its profile.yaml names the source and the "
    "targets). A sync deployment is bound to its own profile and refuses any other."
)


def form_field(title: str, description: str, default: Any = ...) -> Any:
    """A parameter's default carrying its title and help text for the run form.

    Args:
        title: the label of the field.
        description: the help shown under it.
        default: the default value; `...` for a required parameter.
    """
    return Field(default, description=description, json_schema_extra={"title": title})


#: The `sync` flow's run form: each parameter's default with its title and help.
SYNC_FORM = {
    "profile": form_field("Profile", PROFILE_HELP),
    "targets": form_field(
        "Targets",
        "Which of the profile's targets to sync, by their names under `targets:` in its "
        "profile.yaml (the deployment's description lists them); empty: all of them. An "
        "unknown name stops the run before anything is read.",
        None,
    ),
    "dry_run": form_field(
        "Dry run",
        "Plan and publish the plan (artifact plan-<profile>-<target>); write nothing anywhere. "
        "The run is named sync-<profile>-dry-run and tagged dry-run.",
        False,
    ),
    "allow_mass_changes": form_field(
        "Allow mass changes",
        "Release the brake on deactivations and membership removals for this run only, "
        "after checking the plan of a dry run.",
        False,
    ),
    "full": form_field(
        "Full read",
        "Read the whole source even where an incremental read is possible (Active Directory "
        "with incremental.enabled); a full read also catches deletions.",
        False,
    ),
    "wait_seconds": form_field(
        "Wait for a run in progress (seconds)",
        "Outside a deployment (usersync sync): when another run of this profile is under way, "
        "wait this long for it, then stop without reading or writing. A deployment run always "
        "queues behind a run in progress (one waits; later ones end Skipped).",
        0,
    ),
    "mode": form_field(
        "Run kind",
        "reconcile: read every account and group from the products and repair any difference, "
        "hand-made changes included. delta: read only the accounts and groups whose source "
        "data changed since the last runs wrote them; it reconciles instead, and says why in "
        "the log and the summary, when it cannot trust what was written (no reconcile yet or "
        "too long ago: settings.reconcile_interval_hours; changed settings; an account changed "
        "by hand).",
        "reconcile",
    ),
    "only": form_field(
        "Only these users (delta)",
        "A delta run scoped to these identities (source ids or user names): it reads and plans "
        "them alone, what else changed waits for the next run. What an offboarding push "
        "triggers; empty: everyone.",
        None,
    ),
}
