"""The contract-suite harness: one `target_env` fixture per product, each over real HTTP.

Every product provides `tests/targets/harness_<product>.py` with a context manager
`environment(**options)` that starts the product's emulator with `usersync.sandbox.server.serve`
and yields a `TargetEnv`. The contract suite (`test_contract.py`) runs unchanged against each;
a fourth product only adds its client, its emulator and its harness module.

Each emulator offers the same seeding methods, so the suite needs no product knowledge:
`seed_user(username, email, display_name, active=True) -> None`,
`seed_group(name, members=()) -> None`, `grant_admin(username)` (administrative rights the most
direct way the product grants them), `seed_admin_group(name, members=())` (a group the product
grants administrative rights to), and `app` (the `Instrumented` wrapper with `faults`,
`requests` and `writes()`).

Every client a harness builds (`target` and those from `make_target`) gets a `RetryPolicy`
whose `sleep` appends the wait to `TargetEnv.waits` instead of sleeping, so the suite can
check what a client waited (e.g. exactly the Retry-After a 429 asked for) and never sleeps.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from usersync.targets.base import Target

PRODUCTS = ("jira", "confluence", "bitbucket")


@dataclass
class TargetEnv:
    product: str
    #: the client under test, pointed at the emulator; retries sleep for no time
    target: Target
    #: the product emulator: seed_user / seed_group / app (faults, request log)
    emulator: Any
    #: builds another client for the same emulator; keyword options per harness
    #: (at least `credentials="wrong"` for bad credentials and `credentials="user"`
    #: for a valid non-admin account)
    make_target: Callable[..., Target]
    #: the emulator's page size, so paging tests seed more than one page
    page_size: int
    #: a group name tests may pass to `emulator.seed_admin_group` and the client recognises as
    #: an administrators' group (for Jira, one of the groups its client reads by default)
    admin_group: str = "site-admins"
    #: every wait the clients' retry policies asked for, in seconds, in order (never slept)
    waits: list[float] = field(default_factory=list)


@pytest.fixture(params=PRODUCTS)
def target_env(request: pytest.FixtureRequest) -> Iterator[TargetEnv]:
    harness = importlib.import_module(f"tests.targets.harness_{request.param}")
    with harness.environment() as env:
        yield env
