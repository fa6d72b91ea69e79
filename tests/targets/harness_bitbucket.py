"""Contract-suite harness for Bitbucket: `BitbucketEmulator` over real HTTP, clients built from config.

The emulator runs under the context path `/bitbucket` with a small page cap, so paging is
exercised with a handful of users. Secrets come from an in-memory loader standing in for
Prefect Secret blocks; every client's retry policy records its waits in `TargetEnv.waits`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from usersync_sandbox.bitbucket import BitbucketEmulator
from usersync_sandbox.server import serve

from tests.targets.conftest import TargetEnv
from usersync.config import TargetConfig
from usersync.http import RetryPolicy
from usersync.targets.bitbucket import BitbucketTarget

PAGE_SIZE = 5
CONTEXT_PATH = "/bitbucket"
ADMIN = ("admin", "admin-secret")
#: a valid, licensed account without ADMIN
NON_ADMIN = ("bb-nonadmin", "nonadmin-secret")


@contextmanager
def environment(**options: Any) -> Iterator[TargetEnv]:
    """Start an emulator; yield a `TargetEnv` whose `make_target` takes `credentials=`
    "admin" (default), "wrong", "user" (valid, not admin), "token" (a PAT of the admin as
    Bearer) or "token-as-password" (the same PAT as a basic-auth password)."""
    emulator = BitbucketEmulator(
        context_path=CONTEXT_PATH, admin=ADMIN, max_page_size=PAGE_SIZE, **options
    )
    emulator.seed_user(NON_ADMIN[0], "nonadmin@example.com", "Not Admin", password=NON_ADMIN[1])
    token = emulator.add_token(ADMIN[0])
    secrets = {"admin": ADMIN[1], "wrong": "not-the-password", "user": NON_ADMIN[1], "pat": token}
    waits: list[float] = []
    built: list[BitbucketTarget] = []

    with serve(emulator.app) as url:

        def make_target(credentials: str = "admin", **retry: Any) -> BitbucketTarget:
            if credentials in ("token",):
                auth: dict[str, Any] = {"kind": "token", "token": {"prefect_secret": "pat"}}
            else:
                username, secret = {
                    "admin": (ADMIN[0], "admin"),
                    "wrong": (ADMIN[0], "wrong"),
                    "user": (NON_ADMIN[0], "user"),
                    "token-as-password": (ADMIN[0], "pat"),
                }[credentials]
                auth = {
                    "kind": "basic",
                    "username": username,
                    "password": {"prefect_secret": secret},
                }
            config = TargetConfig.model_validate(
                {"kind": "bitbucket", "url": url + CONTEXT_PATH, "auth": auth}
            )
            target = BitbucketTarget.from_config(
                "bb",
                config,
                load_prefect_secret=secrets.__getitem__,
                retry=RetryPolicy(sleep=waits.append, **retry),
            )
            built.append(target)
            return target

        env = TargetEnv(
            product="bitbucket",
            target=make_target(),
            emulator=emulator,
            make_target=make_target,
            page_size=PAGE_SIZE,
            waits=waits,
        )
        try:
            yield env
        finally:
            for target in built:
                target.close()
