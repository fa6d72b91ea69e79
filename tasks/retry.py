"""The one retry rule of the tasks that retry: only where nothing below has retried already.

The target and SCIM/miniOrange clients (`usersync.http`) retry 429s, 5xx and dropped
connections themselves, honouring Retry-After, and verify writes whose answer was lost; a
task retry on top would multiply their attempts (3 × 5 requests, a minute of waiting) before
a dead target fails. So the plan and load tasks never retry. The LDAP source has no retry of
its own: a directory that could not be reached is the one failure a task retries, unless its
TLS certificate could not be verified, which no retry can fix.
"""

from __future__ import annotations

from typing import Any

from usersync import SourceUnreachableError, TargetError, certificate_failure


def retried_below(error: BaseException) -> bool:
    """True when a retrying client already gave up on this error (or one it wraps)."""
    while error is not None:
        if isinstance(error, TargetError):
            return True
        error = error.__cause__
    return False


def retry_unreachable_source(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: True only for an unreachable source that no client
    retried and whose TLS certificate was not the problem (no retry fixes that)."""
    try:
        state.result()
    except SourceUnreachableError as exc:
        return not retried_below(exc) and certificate_failure(exc) is None
    except Exception:
        return False
    return False
