"""The source contract's miniOrange REST pull: the sandbox's emulator over HTTP, the scenario
written into its state, read with `experimental_getall` in batches of `PAGE_SIZE`. A disabled
user has `status: DISABLED`; miniOrange lists no groups, so the source must return none."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from usersync_sandbox.miniorange import MiniorangeEmulator
from usersync_sandbox.server import serve

from tests.sources.harness import PAGE_SIZE, SCENARIO, SourceEnv, read_cut_short
from usersync.config import MiniorangeSourceConfig, SecretRef
from usersync.sources.miniorange import MiniorangeSource

CUSTOMER = "contract-customer"
API_KEY = "contract-api-key"


@contextmanager
def environment(request: pytest.FixtureRequest) -> Iterator[SourceEnv]:
    emulator = MiniorangeEmulator({CUSTOMER: API_KEY})
    for user in SCENARIO.users:
        emulator.seed_user(
            CUSTOMER,
            user.login,
            email=user.email,
            firstName=user.given,
            lastName=user.family,
            status="ACTIVE" if user.active else "DISABLED",
        )
    with serve(emulator.app) as url:
        where = urlsplit(url)

        def open_source(base: str = url, **options: Any) -> MiniorangeSource:
            config = MiniorangeSourceConfig(
                kind="miniorange",
                url=base,
                customer_key=CUSTOMER,
                api_key=SecretRef(env="UNUSED"),
                experimental_getall=True,
                batch_size=PAGE_SIZE,
                **options,
            )
            return MiniorangeSource(config, API_KEY)

        env = SourceEnv(
            name="miniorange",
            fields={
                "login": "username",
                "email": "email",
                "given": "firstName",
                "family": "lastName",
            },
            open_source=open_source,
            failing_read=lambda share: read_cut_short(
                (where.hostname or "", where.port or 0),
                lambda port: open_source(f"http://127.0.0.1:{port}", max_attempts=2),
                env.attributes,
                share,
            ),
            reads_groups=False,
        )
        yield env
