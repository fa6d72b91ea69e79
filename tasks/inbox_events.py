"""Prefect events for the SCIM inbox: `usersync.inbox.changed`, about `usersync.profile.<name>`.

The inbox (engine) calls a plain callback after each accepted change; `InboxEventEmitter` is
that callback. A miniOrange push is a burst (one request per user, group and membership), and
one sync per burst is enough, so the emitter coalesces: the first change of a quiet profile is
emitted at once, later ones within `min_interval_seconds` are counted and emitted as one
trailing event when the interval ends. A deployment trigger on the event then runs that
profile's sync; the scheduled sync reconciles anyway if an event is lost.

A change that disables or deletes a user (`change["offboarded"]`, its SCIM id:
`usersync.inbox.offboarding`) is also sent at once, uncoalesced, as `usersync.inbox.offboarded`
with `payload["users"]`: the trigger of a served deployment (`usersync serve`,
flows/served.py) runs a delta run scoped to that identity, deactivating it in seconds.

Events go to the configured Prefect API only (`PREFECT_API_URL`, from the environment or the
active Prefect profile). Without one, Prefect's `emit_event` would start a private temporary
server on the first change (seconds of delay for that answer, events no deployment trigger
ever sees, a server outliving the inbox), so `emit_to_configured_api` sends nothing then and
`inbox_event_callback` gives the inbox no callback at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from prefect.events import emit_event
from prefect.settings import PREFECT_API_URL

EVENT = "usersync.inbox.changed"
#: A push disabled or deleted users (`payload["users"]`: their SCIM ids).
OFFBOARDED_EVENT = "usersync.inbox.offboarded"
log = logging.getLogger("usersync.inbox.events")


def configured_api_url() -> str | None:
    """The Prefect API events go to (`PREFECT_API_URL` from any Prefect settings source), or None."""
    return PREFECT_API_URL.value() or None


def emit_to_configured_api(**event: Any) -> None:
    """Prefect's `emit_event` when an API is configured; nothing otherwise (never an ephemeral
    server)."""
    if configured_api_url() is None:
        log.debug("no Prefect API configured: %s not sent", event.get("event"))
        return
    emit_event(**event)


def inbox_event_callback() -> tuple[InboxEventEmitter | None, str]:
    """The inbox's `on_change` for this process's Prefect settings, and one line saying where
    events go (for the inbox to print at start)."""
    url = configured_api_url()
    if url is None:
        return None, (
            "Prefect events: off, PREFECT_API_URL is not set. Changes are stored and the "
            "scheduled sync picks them up; set PREFECT_API_URL to trigger a sync per push."
        )
    return InboxEventEmitter(), f"Prefect events: {EVENT} to {url}"


def profile_resource(profile: str) -> dict[str, str]:
    """The Prefect resource an inbox event is about (what a trigger matches)."""
    return {"prefect.resource.id": f"usersync.profile.{profile}", "prefect.resource.name": profile}


class InboxEventEmitter:
    """The inbox's `on_change` callback, emitting coalesced Prefect events per profile.

    Args:
        min_interval_seconds: at most one event per profile per interval (plus the trailing one).
        emit: the emitting function (`emit_to_configured_api`; tests pass a recorder).
        clock: monotonic clock (tests).
    """

    def __init__(
        self,
        min_interval_seconds: float = 5.0,
        *,
        emit: Callable[..., Any] = emit_to_configured_api,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_interval_seconds = min_interval_seconds
        self._emit = emit
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._pending: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, profile: str, change: dict[str, Any]) -> None:
        if change.get("offboarded"):  # a leaver: no waiting for the burst to end
            self._emit(
                event=OFFBOARDED_EVENT,
                resource=profile_resource(profile),
                payload={"users": [str(change["offboarded"])]},
            )
            log.info("inbox %s: emitted %s (%s)", profile, OFFBOARDED_EVENT, change["offboarded"])
        with self._lock:
            now = self._clock()
            if profile in self._pending:
                self._pending[profile].append(change)
                return
            last = self._last.get(profile)
            if last is None or now - last >= self.min_interval_seconds:
                self._last[profile] = now
                changes = [change]
            else:
                self._pending[profile] = [change]
                wait = self.min_interval_seconds - (now - last)
                timer = threading.Timer(wait, self.flush, args=(profile,))
                timer.daemon = True
                timer.start()
                return
        self._send(profile, changes)

    def flush(self, profile: str) -> None:
        """Emit the changes held back for `profile` now (the timer calls it)."""
        with self._lock:
            changes = self._pending.pop(profile, [])
            if changes:
                self._last[profile] = self._clock()
        if changes:
            self._send(profile, changes)

    def flush_all(self) -> None:
        """Emit every change still held back (the inbox is stopping)."""
        with self._lock:
            profiles = list(self._pending)
        for profile in profiles:
            self.flush(profile)

    def _send(self, profile: str, changes: list[dict[str, Any]]) -> None:
        self._emit(
            event=EVENT,
            resource=profile_resource(profile),
            payload={"changes": len(changes), "last": changes[-1]},
        )
        log.info("inbox %s: emitted %s (%d change(s))", profile, EVENT, len(changes))
