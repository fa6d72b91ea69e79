"""Contract-suite harness for Confluence: the emulator over real HTTP and a client pointed at it.

`environment(**options)` follows the protocol of `tests/targets/conftest.py`. The emulator
runs under a context path (`/confluence`), as most Data Center sites do, and with a small page
cap so that paging is exercised. `make_target(credentials=...)` builds clients for the admin
("admin"), a seeded non-admin user ("user"), wrong credentials ("wrong") or the admin's
personal access token ("token"); `api=` picks `confluence_api`.

The emulator's Remote API (JSON-RPC) is switched on here, unlike the emulator's default: the
contract suite reads e-mails back, and Confluence tells them only through JSON-RPC unless its
REST user objects carry them (`rest_email=True`). Tests of the other cases pass
`remote_api_enabled=False`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from usersync_sandbox.confluence import DEFAULT_VERSION, ConfluenceEmulator
from usersync_sandbox.server import serve

from tests.targets.conftest import TargetEnv
from usersync.http import RetryPolicy
from usersync.targets.confluence import ConfluenceTarget

ADMIN = ("admin", "admin-secret")
USER = ("plain.user", "user-secret")
ADMIN_TOKEN = "pat-of-the-admin"
PAGE_SIZE = 25
CONTEXT_PATH = "/confluence"


@contextmanager
def environment(
    *,
    # The newest supported; every supported version (9.3 and later) lists global permissions
    # over REST, which the contract suite needs to see administrators granted directly.
    version: str = DEFAULT_VERSION,
    context_path: str = CONTEXT_PATH,
    page_size: int = PAGE_SIZE,
    license_limit: int | None = None,
    api: str = "auto",
    remote_api_enabled: bool = True,
    **emulator_options: Any,
) -> Iterator[TargetEnv]:
    """An emulator served on loopback and a ConfluenceTarget for its administrator."""
    emulator = ConfluenceEmulator(
        remote_api_enabled=remote_api_enabled,
        version=version,
        context_path=context_path,
        admin=ADMIN,
        max_page_size=page_size,
        license_limit=license_limit,
        **emulator_options,
    )
    emulator.seed_user(USER[0], f"{USER[0]}@example.com", "Plain User", password=USER[1])
    emulator.add_token(ADMIN_TOKEN, ADMIN[0])
    # The harness's own accounts are not part of what tests seed and count.
    waits: list[float] = []

    with serve(emulator.app) as base:
        url = base + context_path

        def make_target(*, credentials: str = "admin", api: str = api) -> ConfluenceTarget:
            retry = RetryPolicy(max_attempts=4, sleep=waits.append)
            if credentials == "token":
                return ConfluenceTarget("wiki", url, token=ADMIN_TOKEN, api=api, retry=retry)
            username, password = {
                "admin": ADMIN,
                "user": USER,
                "wrong": (ADMIN[0], "not-the-password"),
            }[credentials]
            auth = httpx.BasicAuth(username, password)
            return ConfluenceTarget("wiki", url, auth=auth, api=api, retry=retry)

        target = make_target()
        if api == "auto":
            # Detect the version up front (one anonymous GET) so that fault tests scripting
            # "the next request" hit the call they mean, not the version probe.
            _ = target.version
        try:
            yield TargetEnv(
                product="confluence",
                target=target,
                emulator=emulator,
                make_target=make_target,
                page_size=page_size,
                waits=waits,
            )
        finally:
            target.close()
