"""One writer per target instance, and the run form's target choices.

Several profiles (IdPs) may sync the same Jira, Confluence or Bitbucket. Their runs queue per
instance: before a sync flow plans and loads a target it takes the slot of a Prefect global
concurrency limit named after the instance (`instance_limit_name`), limit 1, created on first
use. Scheduled, UI and ad-hoc runs of different profiles therefore never interleave their
writes to one instance; the UI shows the limit and who holds it (Concurrency page). Dry runs
write nothing and take no slot.

`configure_deployments` (`usersync deployments configure`, run after `prefect deploy`) turns
each sync deployment's free-text `targets` field into a choice among its profile's targets
(prefect.yaml cannot express that: Prefect builds the form from the flow's signature, which is
the same for every profile), and creates the instances' limits so the UI lists them at once.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from typing import Any

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate, GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from usersync.config import instance_of, load_profile
from usersync.errors import ConfigError

#: Prefix of the per-instance limits' names.
LIMIT_PREFIX = "usersync-instance-"
#: Flows whose deployments carry a profile and a `targets` parameter.
FLOWS_WITH_TARGETS = ("sync",)


def instance_limit_name(url: str) -> str:
    """The global concurrency limit of the instance at `url`, e.g.
    usersync-instance-https-jira-corp-8443 (the normalised URL in lower case and dashes)."""
    slug = re.sub(r"[^a-z0-9]+", "-", instance_of(url).lower()).strip("-")
    return LIMIT_PREFIX + slug[: 200 - len(LIMIT_PREFIX)]


def ensure_instance_limit(name: str) -> None:
    """Create the limit (1 slot) unless it exists; an administrator may raise it in the UI."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        with contextlib.suppress(ObjectAlreadyExists):  # another run created it meanwhile
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextmanager
def instance_slot(url: str, target: str, *, write: bool) -> Iterator[None]:
    """Hold the instance's slot while the block plans and loads `target` (writes only)."""
    if not write:
        yield
        return
    name = instance_limit_name(url)
    ensure_instance_limit(name)
    logger = get_run_logger()
    logger.info("%s: taking the slot of %s (one writer per instance)", target, name)
    with concurrency(name, occupy=1, strict=True):
        logger.info("%s: holding %s", target, name)
        yield


def targets_schema(schema: dict[str, Any], choices: list[str]) -> dict[str, Any]:
    """A flow's parameter schema with `targets` offered as a choice among `choices`."""
    out = deepcopy(schema)
    field = out.get("properties", {}).get("targets")
    if not field:
        return out
    for option in field.get("anyOf", [field]):
        if option.get("type") == "array":
            option["items"] = {"type": "string", "enum": list(choices)}
            option["uniqueItems"] = True
    field["description"] = (
        f"Which of the profile's targets to sync ({', '.join(choices)}); empty: all of them."
    )
    return out


def configure_deployments() -> list[str]:
    """Give every sync deployment bound to a profile its targets as choices, and create the
    global concurrency limit of each instance those targets write to.

    Returns:
        One line per deployment changed and per limit, for the administrator.

    Raises:
        ConfigError: a deployment names a profile that does not load here (the mappings
            folder this command reads must be the one the workers use).
    """
    changed: list[str] = []
    limits: set[str] = set()
    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            flow = client.read_flow(deployment.flow_id)
            profile = (deployment.parameters or {}).get("profile")
            if flow.name not in FLOWS_WITH_TARGETS or not profile:
                continue
            try:
                targets = load_profile(profile).targets
            except ConfigError as exc:
                raise ConfigError(f"deployment {flow.name}/{deployment.name}: {exc}") from exc
            schema = targets_schema(deployment.parameter_openapi_schema or {}, list(targets))
            client.update_deployment(
                deployment.id, DeploymentUpdate(parameter_openapi_schema=schema)
            )
            changed.append(
                f"deployment {flow.name}/{deployment.name}: targets offered as choices "
                f"({', '.join(targets)})"
            )
            limits.update(instance_limit_name(t.url) for t in targets.values())
    for name in sorted(limits):
        ensure_instance_limit(name)
        changed.append(f"global concurrency limit {name}: 1 writer at a time")
    return changed
