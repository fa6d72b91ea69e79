"""Print the session's conformance figures (exchanges checked per product version)."""

from __future__ import annotations

from typing import Any

from tests.conformance.checking import print_totals


def pytest_terminal_summary(terminalreporter: Any) -> None:
    print_totals(terminalreporter)
