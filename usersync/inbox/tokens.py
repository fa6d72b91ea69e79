"""Bearer tokens of the SCIM inbox: issued, rotated and checked per profile, stored hashed.

A token is 32 random bytes (URL-safe text) shown once when issued; the store keeps only its
SHA-256, which is enough for a secret of that entropy (a slow hash protects guessable
passwords, not random tokens). Checking hashes the presented token and compares it with every
valid hash of the profile in constant time. Rotation issues a new token and gives the old ones
an expiry (the grace period), so miniOrange keeps working until the admin has pasted the new
token; after the grace period only the new one is accepted. The inbox checks through
`TokenCheck`, which remembers a valid token for a few seconds instead of asking the store on
every request of a push.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from usersync.errors import ConfigError
from usersync.store.schema import inbox_tokens

#: How long the previous token stays valid after a rotation, unless told otherwise.
DEFAULT_GRACE = timedelta(hours=24)
TOKEN_BYTES = 32


def _now() -> datetime:
    return datetime.now(UTC)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class IssuedToken:
    """A token just issued: its value (shown once) and until when the previous ones work."""

    profile: str
    token: str
    previous_valid_until: datetime | None


def issue_token(
    engine: sa.Engine,
    profile: str,
    *,
    rotate: bool = False,
    grace: timedelta = DEFAULT_GRACE,
    now: datetime | None = None,
) -> IssuedToken:
    """Create the profile's inbox token, or rotate it.

    Args:
        engine: the store's engine.
        profile: the profile the inbox serves.
        rotate: issue a new token although one exists; the existing ones stay valid for `grace`.
        grace: how long the previous token(s) remain valid after a rotation.
        now: the current time (tests).

    Raises:
        ConfigError: the profile already has a valid token and `rotate` is false.
    """
    now = now or _now()
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with engine.begin() as conn:
        valid = _valid_rows(conn, profile, now)
        if valid and not rotate:
            raise ConfigError(
                f"inbox of profile {profile} already has a token; use --rotate to issue a new "
                f"one (the current one then stays valid for {grace})"
            )
        until = None
        if valid:
            until = now + grace
            # Never extend a token that was already due to expire sooner.
            for row in valid:
                expiry = min(_aware(row.expires_at), until) if row.expires_at else until
                conn.execute(
                    inbox_tokens.update()
                    .where(inbox_tokens.c.id == row.id)
                    .values(expires_at=expiry)
                )
        conn.execute(
            inbox_tokens.insert().values(
                profile=profile, token_sha256=_digest(token), created_at=now, expires_at=None
            )
        )
    return IssuedToken(profile, token, until)


def _valid_rows(conn: sa.Connection, profile: str, now: datetime) -> list[sa.Row]:
    rows = conn.execute(
        sa.select(inbox_tokens.c.id, inbox_tokens.c.token_sha256, inbox_tokens.c.expires_at).where(
            inbox_tokens.c.profile == profile
        )
    ).all()
    return [row for row in rows if row.expires_at is None or _aware(row.expires_at) > now]


def token_is_valid(
    engine: sa.Engine, profile: str, presented: str, *, now: datetime | None = None
) -> bool:
    """True when `presented` is one of the profile's valid tokens (constant-time comparison)."""
    return _valid_token_expiry(engine, profile, presented, now or _now()) is not None


#: The expiry of a token that never expires (until it is rotated).
_NEVER = datetime.max.replace(tzinfo=UTC)


def _valid_token_expiry(
    engine: sa.Engine, profile: str, presented: str, now: datetime
) -> datetime | None:
    """Until when `presented` is valid for `profile`; None when it is not."""
    digest = _digest(presented)
    with engine.connect() as conn:
        rows = _valid_rows(conn, profile, now)
    expiry = None
    for row in rows:
        # Compare with every valid hash, without stopping early, so timing says nothing.
        if hmac.compare_digest(row.token_sha256, digest):
            expiry = _aware(row.expires_at) if row.expires_at else _NEVER
    return expiry


class TokenCheck:
    """`token_is_valid` that remembers a valid token for a few seconds.

    Every request of a push carries the same token; asking the store each time costs a query
    that waits on the store's writes. A token found valid is trusted for `ttl_seconds` (never
    past its expiry); a token found invalid is asked about again each time, so a new token
    works at once and a revoked or expired one stops within `ttl_seconds`.
    """

    def __init__(
        self,
        engine: sa.Engine,
        ttl_seconds: float = 5.0,
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.engine = engine
        self.ttl = timedelta(seconds=ttl_seconds)
        self._clock = clock
        self._valid_until: dict[tuple[str, str], datetime] = {}
        self._lock = threading.Lock()

    def remembered(self, profile: str, presented: str) -> bool:
        """Whether `presented` was found valid for `profile` lately (no query)."""
        with self._lock:
            until = self._valid_until.get((profile, _digest(presented)))
        return until is not None and self._clock() < until

    def __call__(self, profile: str, presented: str) -> bool:
        """Whether `presented` is valid for `profile`: remembered, or asked of the store."""
        if self.remembered(profile, presented):
            return True
        now = self._clock()
        key = (profile, _digest(presented))
        expiry = _valid_token_expiry(self.engine, profile, presented, now)
        with self._lock:
            if expiry is None:
                self._valid_until.pop(key, None)
                return False
            self._valid_until[key] = min(expiry, now + self.ttl)
        return True


def profiles_with_tokens(engine: sa.Engine) -> list[str]:
    """The profiles whose inbox has a token (valid or not): the inboxes that exist."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(inbox_tokens.c.profile).distinct()).scalars().all()
    return sorted(rows)
