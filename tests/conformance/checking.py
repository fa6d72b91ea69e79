"""Record a sandbox product's exchanges and check each against that product version's description.

`Recording(emulator, product)` attaches a recorder to an emulator (`Instrumented.recorder`)
and keeps every exchange; `check(product, version, context_path, exchanges)` returns a
`Report`: how many exchanges were checked, how many were injected faults (a test's own
instrument, not the product's answer: not checked), how many went to endpoints no description
covers (`descriptions.UNDESCRIBED`; counted), and the violations the reliances of
`reliances.RELIANCES` do not allow. The contract-suite harness (`tests/targets/conftest.py`)
and the end-to-end conformance test use it; `TOTALS` adds up every report of the session per
product version, and `print_totals` shows them at the end of a pytest run.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from usersync_sandbox.faults import Exchange

from tests.conformance.descriptions import (
    JSONRPC_PATH,
    SPECS_DIR,
    UNDESCRIBED,
    Violation,
    description,
    rpc_methods,
)
from tests.conformance.reliances import allowed_by


def specs_available() -> bool:
    return SPECS_DIR.is_dir()


SKIP_REASON = (
    f"Atlassian's API descriptions are not beside the repository ({SPECS_DIR}); the "
    "conformance checks need ../shared/reference/specs/"
)


@dataclass
class Report:
    product: str
    version: str
    checked: int = 0
    injected: int = 0
    undescribed: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    #: violations a named reliance allows, with that reliance's name
    relied_on: Counter[str] = field(default_factory=Counter)

    def add(self, other: Report) -> None:
        self.checked += other.checked
        self.injected += other.injected
        self.undescribed.update(other.undescribed)
        self.violations += other.violations
        self.relied_on.update(other.relied_on)

    def describe(self) -> str:
        lines = [str(v) for v in dict.fromkeys(self.violations)]
        return f"{len(self.violations)} exchange(s) do what no description declares:\n" + "\n".join(
            lines
        )


class Recording:
    """Every exchange of one emulator while attached (thread-safe: uvicorn answers in its own
    thread)."""

    def __init__(self, emulator: Any, product: str) -> None:
        self.emulator = emulator
        self.product = product
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        emulator.app.recorder = self._keep

    def _keep(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def stop(self) -> None:
        self.emulator.app.recorder = None

    def report(self) -> Report:
        with self._lock:
            exchanges = list(self.exchanges)
        return check(self.product, self.emulator.version, self.emulator.context_path, exchanges)


def spec_path(product: str, path: str) -> str:
    """The path as the product's description spells it (Jira and Bitbucket: under /rest, with
    Jira's `latest` as `2` and Bitbucket's `1.0` as `latest`)."""
    if product == "jira":
        return re.sub(r"^/rest/api/(?:2|latest)(?=/|$)", "/api/2", path).removeprefix("/rest")
    if product == "bitbucket":
        return re.sub(r"^/rest/api/(?:1\.0|latest)(?=/|$)", "/api/latest", path).removeprefix(
            "/rest"
        )
    return path


def check(
    product: str,
    version: str,
    context_path: str,
    exchanges: list[Exchange],
    *,
    tally: bool = True,
) -> Report:
    """Check `exchanges` of one product version; see the module docstring. `tally` False
    keeps the report out of `TOTALS` (the checker's own tests feed it made-up exchanges)."""
    report = Report(product, version)
    spec = description(product, version)
    for exchange in exchanges:
        if exchange.injected:
            report.injected += 1
            continue
        path = exchange.path.removeprefix(context_path) if context_path else exchange.path
        undescribed = _undescribed(product, path)
        if undescribed:
            report.undescribed[f"{exchange.method} {undescribed}"] += 1
            continue
        report.checked += 1
        if product == "confluence" and path.startswith(JSONRPC_PATH):
            found = _check_rpc(version, exchange, path)
        else:
            found = spec.check(exchange, spec_path(product, path))
        for violation in found:
            reliance = allowed_by(violation, exchange)
            if reliance:
                report.relied_on[reliance] += 1
            else:
                report.violations.append(violation)
    if tally:
        TOTALS.setdefault((product, version), Report(product, version)).add(report)
    return report


def _undescribed(product: str, path: str) -> str:
    for (owner, pattern), _reading in UNDESCRIBED.items():
        if owner == product and re.fullmatch(pattern, path):
            return pattern.replace("\\", "")
    return ""


def _check_rpc(version: str, exchange: Exchange, path: str) -> list[Violation]:
    """JSON-RPC against the remote API's WSDL: the method exists and takes that many arguments
    (the session token of SOAP is the HTTP session's here, so one fewer)."""
    body = exchange.request_body
    method = path.removeprefix(JSONRPC_PATH).strip("/")
    params = body
    if not method and isinstance(body, dict):
        method, params = str(body.get("method", "")), body.get("params") or []
    arities = rpc_methods().get(method)
    template = f"{JSONRPC_PATH} {method}"
    if arities is None:
        detail = "no such remote API method in the WSDL"
    elif not isinstance(params, list) or len(params) not in arities:
        count = len(params) if isinstance(params, list) else "?"
        detail = f"{count} argument(s), the WSDL declares {sorted(arities)}"
    else:
        return []
    return [Violation("confluence", version, exchange.method, template, "client", "rpc", detail)]


#: Every report of this test session, added up per (product, version).
TOTALS: dict[tuple[str, str], Report] = {}
_shown: list[bool] = []


def print_totals(terminalreporter: Any) -> None:
    """The session's conformance figures, once (both conftests that check exchanges call it)."""
    if _shown or not TOTALS:
        return
    _shown.append(True)
    write = terminalreporter.write_line
    terminalreporter.section("exchanges checked against Atlassian's API descriptions")
    for (product, version), report in sorted(TOTALS.items()):
        relied = ", ".join(f"{name} {n}" for name, n in sorted(report.relied_on.items()))
        write(
            f"{product} {version}: {report.checked} checked, {len(report.violations)} "
            f"violations, {sum(report.undescribed.values())} on undescribed endpoints, "
            f"{report.injected} injected faults" + (f"; relied on: {relied}" if relied else "")
        )
