"""Every exchange of every sandbox product an end-to-end test starts is checked.

While a test under tests/e2e runs, each Jira, Confluence and Bitbucket emulator it creates (in
a `Sandbox`, as `products_world` does, or on its own) gets a `Recording`; when the test is
over, every exchange is checked against the description of that product and version
(`tests.conformance`): exchanges no description declares, apart from the named reliances,
make the test error at teardown with the list. Injected faults are not checked. The figures
of the session are printed at its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from usersync_sandbox.bitbucket import BitbucketEmulator
from usersync_sandbox.confluence import ConfluenceEmulator
from usersync_sandbox.jira import JiraEmulator

from tests.conformance.checking import Recording, Report, check, print_totals, specs_available

EMULATORS = {"jira": JiraEmulator, "confluence": ConfluenceEmulator, "bitbucket": BitbucketEmulator}


class EmulatorRecordings:
    """The recordings of the emulators created during one test."""

    def __init__(self) -> None:
        self.recordings: list[Recording] = []

    def reports(self, *, tally: bool = True) -> list[Report]:
        """One report per emulator that had exchanges; `tally` False keeps them out of the
        session's figures (a test that sends an undeclared request on purpose)."""
        reports = []
        for recording in self.recordings:
            if recording.exchanges:
                emulator = recording.emulator
                reports.append(
                    check(
                        recording.product,
                        emulator.version,
                        emulator.context_path,
                        list(recording.exchanges),
                        tally=tally,
                    )
                )
        return reports

    def forget(self) -> None:
        """Drop what was recorded so far (the test checked it itself)."""
        for recording in self.recordings:
            recording.exchanges.clear()


@pytest.fixture(autouse=True)
def exchange_recordings(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorRecordings]:
    recordings = EmulatorRecordings()
    for product, cls in EMULATORS.items():
        monkeypatch.setattr(cls, "__init__", _recorded(cls.__init__, product, recordings))
    yield recordings
    for recording in recordings.recordings:
        recording.stop()
    if not specs_available():
        return
    failing = [r for r in recordings.reports() if r.violations]
    assert not failing, "\n".join(f"{r.product} {r.version}: {r.describe()}" for r in failing)


def _recorded(init: Any, product: str, recordings: EmulatorRecordings) -> Any:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        recordings.recordings.append(Recording(self, product))

    return __init__


def pytest_terminal_summary(terminalreporter: Any) -> None:
    print_totals(terminalreporter)
