"""Contract-suite harness for Jira: `JiraEmulator` over real HTTP, clients built from config.

The emulator runs under the context path `/jira` with a page cap of 5, and the main client
looks names up one by one only for three names or fewer, so the suite's paging tests drive
`/user/search` (or `/user/list` on 10.3+) and `/group/member` across several pages. Secrets
come from an in-memory loader standing in for Prefect Secret blocks; every client's retry
policy records its waits in `TargetEnv.waits` instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from usersync_sandbox.jira import JiraEmulator
from usersync_sandbox.server import serve

from tests.targets.conftest import TargetEnv
from usersync.config import TargetConfig
from usersync.http import RetryPolicy
from usersync.targets.jira import ADMIN_GROUPS, JiraTarget

PAGE_SIZE = 5
CONTEXT_PATH = "/jira"
ADMIN = ("admin", "admin-secret")
#: a valid, active account without the ADMINISTER permission
NON_ADMIN = ("jira-user", "user-secret")
ADMIN_TOKEN = "NjQ1MzI4OTk0NjYzOkadminPAT"
#: the main client enumerates users for more than this many names (default: 30)
LOOKUP_THRESHOLD = 3


@contextmanager
def environment(**options: Any) -> Iterator[TargetEnv]:
    """Start an emulator (options go to `JiraEmulator`, e.g. `version="10.3.0"`); yield a
    `TargetEnv` whose `make_target` takes `credentials=` "admin" (default), "wrong", "user"
    (valid, not admin) or "token" (the admin's PAT as Bearer), plus `JiraTarget.from_config`
    keywords (`lookup_threshold`, `admin_groups`) and `RetryPolicy` fields such as
    `max_attempts`."""
    options.setdefault("max_page_size", PAGE_SIZE)
    options.setdefault("max_list_page_size", PAGE_SIZE)
    emulator = JiraEmulator(context_path=CONTEXT_PATH, admin=ADMIN, **options)
    emulator.seed_user(NON_ADMIN[0], "user@example.com", "Plain User", password=NON_ADMIN[1])
    emulator.add_token(ADMIN_TOKEN, ADMIN[0])
    secrets = {
        "admin": ADMIN[1],
        "wrong": "not-the-password",
        "user": NON_ADMIN[1],
        "pat": ADMIN_TOKEN,
    }
    waits: list[float] = []
    built: list[JiraTarget] = []

    with serve(emulator.app) as url:

        def make_target(
            credentials: str = "admin",
            lookup_threshold: int = LOOKUP_THRESHOLD,
            admin_groups: Iterable[str] = ADMIN_GROUPS,
            **retry: Any,
        ) -> JiraTarget:
            if credentials == "token":
                auth: dict[str, Any] = {"kind": "token", "token": {"prefect_secret": "pat"}}
            else:
                username = NON_ADMIN[0] if credentials == "user" else ADMIN[0]
                auth = {
                    "kind": "basic",
                    "username": username,
                    "password": {"prefect_secret": credentials},
                }
            config = TargetConfig.model_validate(
                {"kind": "jira", "url": url + CONTEXT_PATH, "auth": auth}
            )
            target = JiraTarget.from_config(
                "jira",
                config,
                load_prefect_secret=secrets.__getitem__,
                retry=RetryPolicy(sleep=waits.append, **retry),
                lookup_threshold=lookup_threshold,
                admin_groups=admin_groups,
            )
            built.append(target)
            return target

        env = TargetEnv(
            product="jira",
            target=make_target(),
            emulator=emulator,
            make_target=make_target,
            page_size=PAGE_SIZE,
            # Jira's REST API does not tell which groups hold the admin global permissions; the
            # client reads the stock ones, and sites set up before Jira 7 have this one.
            admin_group="jira-system-administrators",
            waits=waits,
        )
        try:
            yield env
        finally:
            for target in built:
                target.close()
