"""The LDAP leaver poll of `usersync serve`: users disabled in the directory reach the products in
seconds, as an inbox push's leavers do.

Every `every_seconds`, for each served profile whose source reads incrementally (LDAP or Active
Directory with `incremental.enabled`), the poll asks the directory for the entries changed
since the profile's watermark (`usersync.poll_source_leavers`: one position read and the change
searches, nothing saved) and emits `usersync.source.offboarded` about
`usersync.profile.<name>` with `payload.users` (their source ids) when some are now disabled
that the last successful run synced active. The served offboarding deployment
(flows/served.py) triggers on it, as on the inbox's `usersync.inbox.offboarded`. The run it
starts moves the watermark, so a leaver is emitted until a run has deactivated them (a failed
run is tried again at the next poll, not forgotten). Deleted entries are not seen by a poll:
the next full read (`incremental.full_every_hours`) deactivates them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from usersync_tasks.inbox_events import emit_to_configured_api, profile_resource
from usersync_tasks.secrets import load_prefect_secret_if_configured

from usersync import Store, UsersyncError, poll_source_leavers, prepare_profile

#: A poll found users disabled in the directory (`payload["users"]`: their source ids).
SOURCE_OFFBOARDED_EVENT = "usersync.source.offboarded"
#: Seconds between polls, unless told otherwise.
POLL_EVERY_SECONDS = 15.0
log = logging.getLogger("usersync.serve.poll")


def pollable(profiles: Sequence[str]) -> list[str]:
    """The profiles among `profiles` whose source an incremental poll can read (LDAP with
    `incremental.enabled`); the others are said once and left to their pushes and schedules."""
    chosen = []
    for name in profiles:
        source = prepare_profile(name).profile.source
        incremental = getattr(source, "incremental", None)
        if incremental is not None and incremental.enabled:
            chosen.append(name)
        else:
            log.info("%s: its source is not polled for leavers (not LDAP with incremental)", name)
    return chosen


def poll_once(profile: str, emit: Callable[..., None] = emit_to_configured_api) -> tuple[str, ...]:
    """Poll one profile's source; emit and return the leavers found (none: nothing emitted)."""
    loaded = prepare_profile(profile)
    store = Store.open()
    try:
        leavers = poll_source_leavers(
            loaded, store, load_prefect_secret=load_prefect_secret_if_configured
        )
    finally:
        store.close()
    if leavers is None or leavers.reason is not None:
        why = "not incremental" if leavers is None else leavers.reason
        log.debug("%s: no leaver poll: %s", profile, why)
        return ()
    if leavers.source_ids:
        emit(
            event=SOURCE_OFFBOARDED_EVENT,
            resource=profile_resource(profile),
            payload={"users": list(leavers.source_ids)},
        )
        log.info(
            "%s: %d user(s) disabled in the directory since the last run: emitted %s",
            profile,
            len(leavers.source_ids),
            SOURCE_OFFBOARDED_EVENT,
        )
    return leavers.source_ids


class LeaverPoller(threading.Thread):
    """Polls `profiles` every `every_seconds` until `stop()`; a failing poll is logged (once per
    distinct error) and tried again at the next tick, never ends the thread."""

    def __init__(
        self,
        profiles: Sequence[str],
        every_seconds: float = POLL_EVERY_SECONDS,
        emit: Callable[..., Any] = emit_to_configured_api,
    ) -> None:
        super().__init__(name="usersync-leaver-poll", daemon=True)
        self.profiles = list(profiles)
        self.every_seconds = every_seconds
        self._emit = emit
        self._stopped = threading.Event()
        self._last_error: dict[str, str] = {}

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.is_set():
            for profile in self.profiles:
                try:
                    poll_once(profile, self._emit)
                    self._last_error.pop(profile, None)
                except (UsersyncError, OSError) as exc:
                    text = f"{type(exc).__name__}: {exc}"
                    if self._last_error.get(profile) != text:
                        log.error("%s: leaver poll failed (tried again): %s", profile, text)
                    self._last_error[profile] = text
            self._stopped.wait(self.every_seconds)
