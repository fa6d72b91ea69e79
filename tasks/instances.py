"""One writer per target instance, and the run form's target choices.

Several profiles (IdPs) may sync the same Jira, Confluence or Bitbucket. Their runs queue per
instance: before a sync flow plans and loads a target it takes the slot of a Prefect global
concurrency limit named after the instance (`instance_limit_name`), limit 1, created on first
use. Scheduled, UI and ad-hoc runs of different profiles therefore never interleave their
writes to one instance; the UI shows the limit and who holds it (Concurrency page). Dry runs
write nothing and take no slot.

`configure_deployments` (`usersync deployments configure`, optional) creates the instances'
limits so the UI lists them before the first run, and turns the free-text `targets` field of
a sync deployment whose entrypoint is the generic `flows/sync.py:sync` into a choice among its
profile's targets (the shipped deployments' entrypoints, `flows/profiles.py:<profile>`, give
`prefect deploy` that choice already).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from typing import Any
from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate, GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from usersync import ConfigError, instance_of, load_profile

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


#: How long a held slot lasts unless renewed (a crashed run frees its instance after this).
LEASE_SECONDS = 300.0
#: How often a held slot's lease is renewed.
RENEW_EVERY_SECONDS = 60.0
#: The longest pause between two tries for a busy slot (the server's Retry-After is shorter).
POLL_SECONDS = 5.0


@contextmanager
def instance_slot(url: str, target: str, *, write: bool) -> Iterator[None]:
    """Hold the instance's slot while the block plans and loads `target` (writes only).

    The slot is a lease on the limit, renewed while the block runs and released after it;
    a run that dies frees it when the lease expires. (Held through the client's lease calls
    rather than `prefect.concurrency.sync.concurrency`, which was seen to hold up the other
    targets' slots of the same run until the first one was released.)
    """
    if not write:
        yield
        return
    name = instance_limit_name(url)
    ensure_instance_limit(name)
    logger = get_run_logger()
    lease_id = _acquire(name, target, logger)
    stop = threading.Event()

    def renew() -> None:
        with get_client(sync_client=True) as client:
            while not stop.wait(RENEW_EVERY_SECONDS):
                try:
                    client.renew_concurrency_lease(lease_id, LEASE_SECONDS)
                except Exception as exc:  # the next renewal may work; expiry frees the slot
                    logger.warning("%s: renewing the slot of %s failed: %s", target, name, exc)

    renewer = threading.Thread(target=renew, name=f"slot-{target}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)
        with get_client(sync_client=True) as client:
            try:
                client.release_concurrency_slots_with_lease(lease_id)
            except Exception as exc:
                logger.warning(
                    "%s: releasing the slot of %s failed (it expires): %s", target, name, exc
                )


def _acquire(name: str, target: str, logger: Any) -> UUID:
    """Take one slot of `name`, waiting while another run holds it; return the lease id."""
    waited_since: float | None = None
    with get_client(sync_client=True) as client:
        while True:
            try:
                response = client.increment_concurrency_slots_with_lease(
                    names=[name], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS
                )
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:
                    raise
                if waited_since is None:
                    waited_since = time.monotonic()
                    logger.info(
                        "%s: another run is writing to this instance; waiting for %s", target, name
                    )
                pause = float(exc.response.headers.get("Retry-After") or POLL_SECONDS)
                time.sleep(min(max(pause, 0.1), POLL_SECONDS))
                continue
            lease_id = UUID(str(response.json()["lease_id"]))
            waited = (
                "" if waited_since is None else f" after {time.monotonic() - waited_since:.0f} s"
            )
            logger.info("%s: holding %s%s (one writer per instance)", target, name, waited)
            return lease_id


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


def configure_deployments() -> tuple[list[str], int]:
    """Give every sync deployment bound to a profile its targets as choices, and create the
    global concurrency limit of each instance those targets write to.

    A deployment whose profile does not load here (another mappings folder than the workers',
    a profile removed since) is left as it is and reported; the others are still configured.

    Returns:
        One line per deployment changed or skipped and per limit, for the administrator, and
        how many deployments were skipped.
    """
    changed: list[str] = []
    skipped = 0
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
                skipped += 1
                changed.append(f"deployment {flow.name}/{deployment.name}: skipped: {exc}")
                continue
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
    return changed, skipped
