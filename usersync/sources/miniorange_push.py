"""Read what miniOrange pushed into usersync's SCIM inbox, as a source snapshot.

miniOrange's "SCIM Server (Destination)" app creates, updates and deletes users and groups in
the inbox (`usersync inbox serve`); the inbox keeps the current state of every resource in the
store. This source reads that state for one inbox in one transaction and turns it into the
canonical tables with the same rules as the SCIM pull source (`sources.scim`). An inbox that
nothing was pushed into yet is an empty snapshot, which the sync's source guard then stops.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import sqlalchemy as sa

from usersync.config import MiniorangePushSourceConfig, SecretLoader
from usersync.errors import SourceUnreachableError
from usersync.inbox.storage import read_inbox, read_inbox_users
from usersync.inbox.tokens import profiles_with_tokens
from usersync.model import SourceSnapshot
from usersync.sources.base import Source, SourceCheck
from usersync.sources.scim import snapshot_from_scim
from usersync.store import Store


class MiniorangePushSource(Source):
    """The inbox of one profile in the store.

    Args:
        config: the profile's `source` section.
    """

    kind = "miniorange-push"

    def __init__(self, config: MiniorangePushSourceConfig) -> None:
        self.config = config
        self._store: Store | None = None

    @classmethod
    def from_config(
        cls,
        config: MiniorangePushSourceConfig,
        *,
        load_prefect_secret: SecretLoader | None = None,
    ) -> MiniorangePushSource:
        """A source over the inbox; it needs no secret (the store URL carries its own)."""
        return cls(config)

    def _engine(self) -> sa.Engine:
        return self._store_of().engine

    def _store_of(self) -> Store:
        if self._store is None:
            try:
                self._store = Store.open(self.config.store_url)
            except sa.exc.SQLAlchemyError as exc:
                raise SourceUnreachableError(
                    f"inbox {self.config.inbox}: cannot open the store: {exc}"
                ) from exc
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def change_mark(self) -> str | None:
        """The inbox's generation (`capabilities.ChangeMarked`): it moves with every change
        the inbox accepts; None before the first (or in a store older than the count).

        Raises:
            SourceUnreachableError: the store cannot be read.
        """
        try:
            generation = self._store_of().inbox_generation(self.config.inbox)
        except sa.exc.SQLAlchemyError as exc:
            raise SourceUnreachableError(
                f"inbox {self.config.inbox}: reading the store failed: {exc}"
            ) from exc
        return None if generation is None else f"inbox {self.config.inbox} change {generation}"

    def extract(self, attributes: Sequence[str]) -> SourceSnapshot:
        """Every user, group and membership in the inbox now.

        Raises:
            SourceUnreachableError: the store cannot be read.
            IncompleteSourceError: stored resources lack ids (a damaged store).
        """
        try:
            contents = read_inbox(self._engine(), self.config.inbox, member_bodies=False)
        except sa.exc.SQLAlchemyError as exc:
            raise SourceUnreachableError(
                f"inbox {self.config.inbox}: reading the store failed: {exc}"
            ) from exc
        # One read of the store: the counts arrive at once.
        self.report_progress("users", len(contents.users))
        self.report_progress("groups", len(contents.groups))
        return snapshot_from_scim(
            contents.users,
            contents.groups,
            attributes,
            source_kind=self.kind,
            where=f"inbox {self.config.inbox}",
        )

    def extract_only(self, attributes: Sequence[str], ids: Collection[str]) -> SourceSnapshot:
        """The users with these SCIM ids, and their groups holding only them
        (`capabilities.ScopedRead`): what a run scoped to them (an offboarding) needs, read
        by key. An id the inbox no longer holds (a deleted user) is absent.

        Raises:
            SourceUnreachableError: the store cannot be read.
            IncompleteSourceError: stored resources lack ids (a damaged store).
        """
        try:
            contents = read_inbox_users(self._engine(), self.config.inbox, ids)
        except sa.exc.SQLAlchemyError as exc:
            raise SourceUnreachableError(
                f"inbox {self.config.inbox}: reading the store failed: {exc}"
            ) from exc
        return snapshot_from_scim(
            contents.users,
            contents.groups,
            attributes,
            source_kind=self.kind,
            where=f"inbox {self.config.inbox}",
        )

    def check(self) -> SourceCheck:
        """The store opens, the inbox has a token, and how much was pushed so far."""
        name = self.config.inbox
        try:
            engine = self._engine()
            has_token = name in profiles_with_tokens(engine)
            contents = read_inbox(engine, name)
        except (SourceUnreachableError, sa.exc.SQLAlchemyError) as exc:
            return SourceCheck(False, str(exc))
        if not has_token:
            return SourceCheck(
                False,
                f"inbox {name} has no token yet, so miniOrange cannot push: run "
                f"`usersync inbox token {name}` and paste the token into miniOrange",
            )
        return SourceCheck(
            True,
            f"inbox {name}: {len(contents.users)} user(s) and {len(contents.groups)} group(s) "
            "pushed so far",
        )
