"""The one retry rule of every task: retry what usersync.errors calls transient, nothing else."""

from __future__ import annotations

from typing import Any

from usersync.errors import is_transient


def retry_only_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: True only for rate limits, 5xx, resets and timeouts."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False
