"""usersync's engine: extract from an identity provider, transform through mapping tables,
plan and load into Jira, Confluence and Bitbucket Data Center. It knows nothing of Prefect.

The names below are its public API: what the outer layers (the Prefect tasks and flows, the
command line, the sandbox) may use, pinned by `tests/test_layers.py`. Everything else is
private to the engine, whatever its module's name. A name is imported on first use, so
`import usersync` stays cheap (the sandbox needs two names, not pandas).

Importing any part of the engine installs the log redaction (see `redaction`).
"""

from __future__ import annotations

import importlib
from typing import Any

from usersync.redaction import install_log_redaction

# Here, not in one module: every entry point (the CLI, the flows, an embedding script's
# `import usersync...`) must have it before anything it runs can log a URL.
install_log_redaction()

#: Public name -> (module, name there).
_EXPORTS: dict[str, tuple[str, str]] = {
    # profiles and runs
    "load_profile": ("usersync.config", "load_profile"),
    "instance_of": ("usersync.config", "instance_of"),
    "PROFILE_NAME_PATTERN": ("usersync.config", "PROFILE_NAME_PATTERN"),
    "load_class": ("usersync.plugins", "load_class"),
    "LoadedProfile": ("usersync.sync", "LoadedProfile"),
    "prepare_profile": ("usersync.sync", "prepare_profile"),
    "select_targets": ("usersync.sync", "select_targets"),
    "shared_instance_warnings": ("usersync.sync", "shared_instance_warnings"),
    "extract": ("usersync.sync", "extract"),
    "extract_scoped": ("usersync.sync", "extract_scoped"),
    "WholeSourceNeeded": ("usersync.sync", "WholeSourceNeeded"),
    "poll_source_leavers": ("usersync.sync", "poll_source_leavers"),
    "unchanged_source": ("usersync.sync", "unchanged_source"),
    "UnchangedSnapshot": ("usersync.sync", "UnchangedSnapshot"),
    "transform": ("usersync.sync", "transform"),
    "plan_target_sync": ("usersync.sync", "plan_target_sync"),
    "load_target_sync": ("usersync.sync", "load_target_sync"),
    "TargetPlan": ("usersync.sync", "TargetPlan"),
    "RUN_MODES": ("usersync.delta", "RUN_MODES"),
    "TargetOutcome": ("usersync.outcome", "TargetOutcome"),
    "profile_lease": ("usersync.lease", "profile_lease"),
    "default_lease_holder": ("usersync.lease", "default_lease_holder"),
    "advance_watermark": ("usersync.sources.watermark", "advance_watermark"),
    "open_target": ("usersync.targets", "open_target"),
    "run_test_sync": ("usersync.sync_preview", "run_test_sync"),
    "check_connections": ("usersync.connection", "check_connections"),
    "connection_markdown": ("usersync.connection", "connection_markdown"),
    # guards, outcomes and the profile's lease
    "BRAKED": ("usersync.outcome", "BRAKED"),
    "BrakedTarget": ("usersync.guards", "BrakedTarget"),
    "brake_verdict": ("usersync.guards", "brake_verdict"),
    "RunTargets": ("usersync.sync", "RunTargets"),
    "Target": ("usersync.targets.base", "Target"),
    "drift_of": ("usersync.outcome", "drift_of"),
    "record_outcome": ("usersync.outcome", "record_outcome"),
    "run_ending": ("usersync.outcome", "run_ending"),
    "queue_for_turn": ("usersync.lease", "queue_for_turn"),
    "renewed_lease": ("usersync.lease", "renewed"),
    # tables
    "SourceSnapshot": ("usersync.model", "SourceSnapshot"),
    "DesiredState": ("usersync.model", "DesiredState"),
    "LoadResult": ("usersync.load", "LoadResult"),
    "Store": ("usersync.store", "Store"),
    # reports
    "summary_text": ("usersync.report", "summary_text"),
    "summary_markdown": ("usersync.report", "summary_markdown"),
    "conflict_lines": ("usersync.report", "conflict_lines"),
    "plan_rows": ("usersync.report", "plan_rows"),
    "PLAN_ROWS_SHOWN": ("usersync.report", "PLAN_ROWS_SHOWN"),
    "seats_text": ("usersync.report", "seats_text"),
    "runs_table": ("usersync.report", "runs_table"),
    "run_operations_text": ("usersync.report", "run_operations_text"),
    "drift_markdown": ("usersync.drift", "drift_markdown"),
    "DRIFT_KINDS": ("usersync.drift", "KINDS"),
    # the SCIM inbox
    "InboxApp": ("usersync.inbox", "InboxApp"),
    "InboxLimits": ("usersync.inbox", "InboxLimits"),
    "INBOX_PREFIX": ("usersync.inbox", "PREFIX"),
    "issue_inbox_token": ("usersync.inbox", "issue_token"),
    "plain_http_warning": ("usersync.inbox", "plain_http_warning"),
    "uvicorn_options": ("usersync.inbox", "uvicorn_options"),
    "sign_miniorange_request": ("usersync.sources.miniorange", "sign"),
    # errors
    "UsersyncError": ("usersync.errors", "UsersyncError"),
    "ConfigError": ("usersync.errors", "ConfigError"),
    "GuardError": ("usersync.errors", "GuardError"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'usersync' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
