"""The contract-suite harness: one `target_env` fixture, over real HTTP, parametrized by
product and version.

Every product provides `tests/targets/harness_<product>.py` with a context manager
`environment(version=..., **options)` that starts the product's emulator with
`usersync_sandbox.server.serve` and yields a `TargetEnv`. The contract suite
(`test_contract.py`) runs unchanged against each; a fourth product adds its client, its
emulator, its harness module, and its name in `PRODUCTS` and `SUPPORTED_VERSIONS` below.

Each emulator offers the same seeding methods, so the suite needs no product knowledge:
`seed_user(username, email, display_name, active=True) -> None`,
`seed_group(name, members=()) -> None`, `grant_admin(username)` (administrative rights the most
direct way the product grants them), `seed_admin_group(name, members=())` (a group the product
grants administrative rights to), and `app` (the `Instrumented` wrapper with `faults`,
`requests` and `writes()`).

Every client a harness builds (`target` and those from `make_target`) gets a `RetryPolicy`
whose `sleep` appends the wait to `TargetEnv.waits` instead of sleeping, so the suite can
check what a client waited (e.g. exactly the Retry-After a 429 asked for) and never sleeps.

`target_env` runs each test against every supported version of each product (each harness's
`environment(version=...)`; the versions are the emulators' `SUPPORTED_VERSIONS`), except the
tests a suite lists in `VERSION_INDEPENDENT` (what no version changes: injected faults, names
refused before any request), which run against each product's newest version only. It records
every exchange of the test and, at its end, checks each against that product version's API
description (`tests/conformance`): a request or answer no description declares fails the test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from usersync_sandbox import bitbucket, confluence, jira

from tests.conformance.checking import Recording, print_totals, specs_available
from usersync.targets.base import Target

PRODUCTS = ("jira", "confluence", "bitbucket")
#: product → the versions usersync supports, oldest first (what each emulator emulates)
SUPPORTED_VERSIONS: dict[str, tuple[str, ...]] = {
    "jira": jira.SUPPORTED_VERSIONS,
    "confluence": confluence.SUPPORTED_VERSIONS,
    "bitbucket": bitbucket.SUPPORTED_VERSIONS,
}
PRODUCT_VERSIONS = [(p, v) for p in PRODUCTS for v in SUPPORTED_VERSIONS[p]]
NEWEST_VERSIONS = [(p, SUPPORTED_VERSIONS[p][-1]) for p in PRODUCTS]


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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every supported version of each product for `target_env`, or each product's newest
    for a test the suite lists in `VERSION_INDEPENDENT`."""
    if "target_env" not in metafunc.fixturenames:
        return
    independent = metafunc.function.__name__ in getattr(metafunc.module, "VERSION_INDEPENDENT", ())
    versions = NEWEST_VERSIONS if independent else PRODUCT_VERSIONS
    metafunc.parametrize(
        "target_env", [pytest.param(pv, id="-".join(pv)) for pv in versions], indirect=True
    )


@pytest.fixture
def target_env(request: pytest.FixtureRequest) -> Iterator[TargetEnv]:
    product, version = request.param
    harness = importlib.import_module(f"tests.targets.harness_{product}")
    with harness.environment(version=version) as env:
        recording = Recording(env.emulator, product) if specs_available() else None
        yield env
    if recording is not None:
        report = recording.report()
        if report.violations:
            pytest.fail(report.describe(), pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    print_totals(terminalreporter)
