"""The run form: what each flow parameter is called and says in the Prefect UI.

Prefect builds a deployment's run form from the flow's signature. It titles every field by
its parameter name and keeps only the constraints of an `Annotated` type, so a parameter
declares its constraints in the type (`ProfileName`) and its title and help text with
`form_field` as its default. Parameters are shown in clear: none carries a secret.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from usersync import PROFILE_NAME_PATTERN

#: A profile (a folder under mappings/) or a target of one: lowercase, digits and dashes.
ProfileName = Annotated[str, Field(pattern=PROFILE_NAME_PATTERN, max_length=100)]
TargetName = Annotated[str, Field(pattern=PROFILE_NAME_PATTERN, max_length=100)]

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
