"""One slapd and one HTTP server per product for the whole module; a clean world per example.

Starting slapd and three uvicorn servers costs seconds, an example must cost milliseconds: the
servers start once, and `World.reset` empties the directory's OUs, puts fresh emulators behind
the servers (`SwappableApp`) and opens a fresh store. The profile `lifecycle` points at all
of it, with retries that wait hundredths of a second so injected faults cost nothing (and no
TLS context, which costs a tenth of a second per client and serves no purpose over http://).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from usersync_sandbox.server import serve
from usersync_sandbox.slapd import SlapdServer

from tests.lifecycle.directory import (
    DISABLED_FILTER,
    GROUPS,
    PEOPLE,
    Directory,
    initial_ldif,
)
from tests.lifecycle.driver import TargetRun, run_sync
from tests.lifecycle.oracle import ATTRIBUTES_CSV, GROUPS_CSV, PROTECTED
from tests.lifecycle.products import PRODUCTS, Product, SwappableApp
from usersync.config import SyncSettings
from usersync.store import Store

PROFILE = "lifecycle"
TARGET_PASSWORD = "lifecycle-admin-secret"
#: tries per call; a storm of more 429s than this fails the call (and the next sync mends it)
MAX_ATTEMPTS = 3
#: the brake's limits when a test does not mean to trip it
OPEN_BRAKE = 1000


def brake_settings(limit: int) -> dict[str, float]:
    """Every brake setting the engine knows, set to `limit` (counts) or `limit` as a share.

    Read from the settings model, so brake settings the engine adds are covered without
    editing this test (unknown keys are refused by the profile schema).
    """
    out: dict[str, float] = {}
    for name, info in SyncSettings.model_fields.items():
        if not name.startswith("max_"):
            continue
        if info.annotation is int:
            out[name] = limit
        elif info.annotation is float:
            out[name] = 1.0 if limit else 0.0
    return out


class World:
    """The servers, the current emulators, the directory, the store and the profile."""

    def __init__(
        self, slapd: SlapdServer, apps: dict[str, SwappableApp], urls: dict[str, str], tmp: Path
    ) -> None:
        self.slapd = slapd
        self.apps = apps
        self.urls = urls
        self.tmp = tmp
        self.directory = Directory(slapd)
        self.products: dict[str, Product] = {}
        self.store: Store | None = None
        self._examples = 0

    def reset(self) -> None:
        """A fresh world: empty directory, new emulators, new store, the usual profile."""
        self.products = {cls.name: cls(TARGET_PASSWORD) for cls in PRODUCTS}
        for name, product in self.products.items():
            self.apps[name].current = product.app
        self.directory.reset()
        self.close_store()
        self._examples += 1
        self.store = Store.open(f"sqlite:///{self.tmp / f'store-{self._examples}.db'}")
        self.write_profile()

    def close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def sync(self, **options: object) -> dict[str, TargetRun]:
        assert self.store is not None
        return run_sync(PROFILE, self.store, **options)  # type: ignore[arg-type]

    def write_profile(self, brake: int = OPEN_BRAKE) -> None:
        folder = self.tmp / "mappings" / PROFILE
        folder.mkdir(parents=True, exist_ok=True)
        targets = "".join(
            f"""  {name}:
    kind: {name}
    url: {self.urls[name]}
    auth: {{kind: basic, username: admin, password: {{env: LIFECYCLE_TARGET_PASSWORD}}}}
    max_attempts: {MAX_ATTEMPTS}
    max_retry_wait_seconds: 0.01
    timeout_seconds: 5
    verify_tls: false
"""
            for name in self.products or [cls.name for cls in PRODUCTS]
        )
        settings = "".join(f"  {k}: {v}\n" for k, v in brake_settings(brake).items())
        (folder / "profile.yaml").write_text(
            f"""source:
  kind: ldap
  url: {self.slapd.url}
  bind_dn: {self.slapd.admin_dn}
  bind_password: {{env: LIFECYCLE_LDAP_PASSWORD}}
  allow_cleartext_bind: true
  user_base_dn: {PEOPLE}
  group_base_dn: {GROUPS}
  disabled_filter: "{DISABLED_FILTER}"
  page_size: 5
targets:
{targets}settings:
  protected_usernames: [{", ".join(sorted(PROTECTED))}]
{settings}""",
            encoding="utf-8",
        )
        (folder / "attributes.csv").write_text(ATTRIBUTES_CSV, encoding="utf-8")
        (folder / "groups.csv").write_text(GROUPS_CSV, encoding="utf-8")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("lifecycle")
    with ExitStack() as stack, pytest.MonkeyPatch.context() as env:
        slapd = stack.enter_context(SlapdServer(initial_ldif()))
        apps = {cls.name: SwappableApp() for cls in PRODUCTS}
        urls = {
            cls.name: stack.enter_context(serve(apps[cls.name])) + cls.context_path
            for cls in PRODUCTS
        }
        env.setenv("USERSYNC_MAPPINGS_DIR", str(tmp / "mappings"))
        env.setenv("LIFECYCLE_LDAP_PASSWORD", slapd.admin_password)
        env.setenv("LIFECYCLE_TARGET_PASSWORD", TARGET_PASSWORD)
        world = World(slapd, apps, urls, tmp)
        try:
            yield world
        finally:
            world.close_store()
            world.directory.close()
