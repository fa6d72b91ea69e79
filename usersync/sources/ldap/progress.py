"""Running totals of a read, told to the caller after each page (`Source.report_progress`).

A caller (a Prefect progress artifact) hears ("users", n), ("groups", n) and, for the groups
search, ("members", n): the member values read so far. Entries read through followed
referrals count towards the same totals; the windows of AD's ranged `member` reads, fetched
after the pages, do not (progress is advisory).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from usersync.sources.ldap.decoding import Entry


class PageProgress:
    """The totals of one search, reported through `report` after each page.

    Args:
        report: `Source.report_progress` (never raises).
        what: "users" or "groups".
        member_keys: with "groups", the keys of the member attributes whose values are
            counted as "members" (ranged keys such as `member;range=0-1499` count too).
    """

    def __init__(
        self, report: Callable[[str, int], None], what: str, member_keys: Sequence[str] = ()
    ) -> None:
        self._report = report
        self._what = what
        self._member_keys = frozenset(member_keys)
        self.entries = 0
        self.members = 0

    def page(self, entries: list[Entry]) -> None:
        """Count one page's entries (and member values) and report the running totals."""
        self.entries += len(entries)
        self._report(self._what, self.entries)
        if self._member_keys:
            keys = self._member_keys
            self.members += sum(
                len(values)
                for _, attributes in entries
                for name, values in attributes.items()
                if name.partition(";")[0] in keys
            )
            self._report("members", self.members)
