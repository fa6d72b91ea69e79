"""The one interface every identity source implements.

A source reads a complete snapshot (users, groups, memberships, each keyed by an immutable
id) or raises: a read that may be partial (truncated paging, a size or time limit, an error
on any page) is never returned. It reads the attributes the mapping tables ask for, so a
snapshot carries one column per attribute beside `model.SOURCE_USER_COLUMNS`.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from usersync.model import SourceSnapshot


@dataclass(frozen=True)
class SourceCheck:
    """The outcome of a connection check against a source (used by Test Connection)."""

    ok: bool
    detail: str


#: Called while a source reads: (what, how many so far), e.g. ("users", 12000).
ProgressCallback = Callable[[str, int], None]


class Source(ABC):
    """An identity provider usersync reads from."""

    kind: str = ""
    #: Set by the caller to hear how far a long read has come (a Prefect progress artifact).
    on_progress: ProgressCallback | None = None

    def report_progress(self, what: str, count: int) -> None:
        """Tell the caller `count` `what` ("users", "groups", "members") were read so far.

        Sources call this after each page; a failing callback never fails the read.
        """
        callback = self.on_progress
        if callback is None:
            return
        with contextlib.suppress(Exception):  # progress is advisory
            callback(what, count)

    @abstractmethod
    def extract(self, attributes: Sequence[str]) -> SourceSnapshot:
        """Read every user, group and membership in scope.

        Args:
            attributes: source attribute names the mapping tables read; each becomes a string
                column of the users frame (null where a user has no value; the first value
                where an attribute has several).

        Raises:
            SourceUnreachableError, SourceAuthError: connection or bind failed.
            IncompleteSourceError: the read may be partial.
        """

    @abstractmethod
    def check(self) -> SourceCheck:
        """Connect and authenticate; read nothing beyond what proves access."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
