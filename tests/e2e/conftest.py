"""Print the conformance figures of the end-to-end tests' exchanges (see `products`)."""

from __future__ import annotations

from typing import Any

from tests.conformance.checking import print_totals


def pytest_terminal_summary(terminalreporter: Any) -> None:
    print_totals(terminalreporter)
