"""The one retry rule of the tasks that retry: an error retries only when it says it is transient.

Whether trying again can help is decided where an error is raised (`UsersyncError.transient`,
see usersync/errors.py), by the code that knows: the target and SCIM/miniOrange clients retry
429s, 5xx and dropped connections themselves, honouring Retry-After, so what they finally raise
is not transient (a task retry on top would multiply their attempts before a dead target
fails); the LDAP source has no retry of its own, so a directory it could not reach is transient,
unless its TLS certificate could not be verified, which no retry fixes. The plan and load tasks
never retry; the extract task retries what the source says is transient.
"""

from __future__ import annotations

from typing import Any

from usersync import UsersyncError


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: True only for an error that says trying again may help."""
    try:
        state.result()
    except UsersyncError as exc:
        return exc.transient
    except Exception:
        return False
    return False
