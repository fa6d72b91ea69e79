"""One run of a profile at a time: the profile's lease in the store.

Every entry point takes it (scheduled, UI, CLI and ad-hoc runs), so two runs of a profile never
interleave their writes. A lease expires unless renewed, so a crashed run does not lock its
profile for good; a run renews it all along (`renewed`), through an approval pause too.

Outside a deployment a busy profile stops the run at once or after a wait (`profile_lease`).
A deployment run queues instead (`queue_for_turn`): the first run to find the profile busy
waits for its turn however long the holder takes; any other run finding one already queued
stops without reading (the queued run reads the source when it starts, so it syncs whatever
the skipped one would have).
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from usersync.errors import ProfileBusyError
from usersync.store import LEASE_SECONDS, Store

log = logging.getLogger("usersync.lease")

#: How often a run renews the profile's lease it holds (a paused run too), and how often a
#: queued run looks whether its turn came (seconds).
RENEW_EVERY_SECONDS = 60.0
QUEUE_POLL_SECONDS = 3.0
#: How long the place of the run queued behind the holder lasts unless renewed.
QUEUE_PLACE_SECONDS = 120.0


def default_lease_holder() -> str:
    """Who runs this sync, for a lease: the process and the host."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


@contextmanager
def profile_lease(
    store: Store,
    profile: str,
    holder: str,
    *,
    wait_seconds: float = 0.0,
    poll_seconds: float = 2.0,
    seconds: float = LEASE_SECONDS,
) -> Iterator[None]:
    """Hold the profile's lease for the duration: one run of a profile at a time.

    Scheduled, UI, CLI and ad-hoc runs all take it, so two runs of one profile never interleave
    their writes. The lease expires unless renewed (`Store.renew_lease`), so a crashed run
    does not lock the profile for good.

    Raises:
        ProfileBusyError: another run still holds it after `wait_seconds`; nothing was read or
            written.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        current = store.acquire_lease(profile, holder, seconds=seconds)
        if current is None:
            break
        if time.monotonic() >= deadline:
            raise ProfileBusyError(
                f"profile {profile} is being synced by {current['holder']} since "
                f"{current['acquired_at']:%Y-%m-%d %H:%M:%S} UTC (its lease runs until "
                f"{current['expires_at']:%H:%M:%S} UTC unless renewed); this run stops before "
                "reading or writing anything. Wait for that run to finish, or give a wait "
                "(usersync sync --wait SECONDS)."
            )
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))
    try:
        yield
    finally:
        store.release_lease(profile, holder)


def queue_for_turn(store: Store, profile: str, holder: str) -> str | None:
    """Take the profile's lease, waiting behind its holder if this run is the first to wait.

    Returns:
        None with the lease taken (the caller releases it), or why this run stops without
        reading or writing anything (another run already waits).
    """
    current = store.acquire_lease(profile, holder)
    if current is None:
        return None
    place = f"{profile} (next)"
    queued = store.acquire_lease(place, holder, seconds=QUEUE_PLACE_SECONDS)
    if queued is not None:
        return (
            f"profile {profile} is being synced by {current['holder']}, and "
            f"{queued['holder']} is queued behind it; that run reads the source when it starts, "
            "so this one stops here without reading or writing anything"
        )
    log.info(
        "profile %s is being synced by %s (since %s UTC); this run waits for its turn",
        profile,
        current["holder"],
        f"{current['acquired_at']:%Y-%m-%d %H:%M:%S}",
    )
    started = time.monotonic()
    try:
        while store.acquire_lease(profile, holder) is not None:
            time.sleep(QUEUE_POLL_SECONDS)
            store.renew_lease(place, holder, seconds=QUEUE_PLACE_SECONDS)
    finally:
        store.release_lease(place, holder)
    log.info("profile %s: its turn came after %.0f s", profile, time.monotonic() - started)
    return None


@contextmanager
def renewed(store: Store, profile: str, holder: str) -> Iterator[None]:
    """Renew the profile's lease every `RENEW_EVERY_SECONDS` while the block runs (a pause
    waiting for an approval may last longer than a lease). The renewing thread runs in a copy
    of the caller's context (a flow run's logger stays its own)."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(RENEW_EVERY_SECONDS):
            try:
                store.renew_lease(profile, holder)
            except Exception as exc:  # the next try may work; the lease outlives a few misses
                log.warning("renewing the lease of profile %s failed: %s", profile, exc)

    renewer = threading.Thread(
        target=contextvars.copy_context().run, args=(renew,), name="profile-lease", daemon=True
    )
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)
