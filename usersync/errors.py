"""The error taxonomy: what went wrong, where, and whether trying again can help.

Every error usersync raises on purpose derives from `UsersyncError`. Transient failures (rate
limits, 5xx, dropped connections, timeouts) are `TransientError`; everything else is final for
the run. The HTTP client is the one layer that retries them (honouring Retry-After, checking a
lost write by a read first).
"""

from __future__ import annotations


class UsersyncError(Exception):
    """Base of every error usersync raises on purpose."""


class ConfigError(UsersyncError):
    """A profile or mapping table is invalid. The message names the file (and line) and the fix."""


class SourceError(UsersyncError):
    """Reading the identity source failed."""


class SourceUnreachableError(SourceError):
    """The source could not be reached (network, TLS, timeout)."""


class SourceAuthError(SourceError):
    """The source refused the configured credentials."""


class IncompleteSourceError(SourceError):
    """The source returned a snapshot that may be incomplete; it must not be used."""


class GuardError(UsersyncError):
    """A safety guard stopped the run before any write (empty source, mass deactivation)."""


class TargetError(UsersyncError):
    """A call to a target product failed.

    Attributes:
        status: the HTTP status, or None when no response arrived.
    """

    def __init__(
        self, message: str, *, status: int | None = None, body: object = None, attempts: int = 1
    ) -> None:
        super().__init__(message)
        self.status = status
        #: how many times the call was sent; above 1 an earlier try may have been applied
        #: before its answer was lost (a retried create that now answers "already exists")
        self.attempts = attempts
        #: the parsed JSON body of the error response (or its text), for product modules
        #: that tell cases apart by message (Jira's 400 "already exists").
        self.body = body

    def restated(self, message: str, kind: type[TargetError] | None = None) -> TargetError:
        """The same failure in other words (or as another `kind`): status, body and attempts
        kept, so what reads them (a retried create, a licence check) still can."""
        return (kind or type(self))(
            message, status=self.status, body=self.body, attempts=self.attempts
        )


class TransientError(TargetError):
    """Worth retrying later: 429, 5xx, dropped connection, timeout."""


class TargetUnreachableError(TargetError):
    """The target did not answer at all after the configured retries."""


class TargetAuthError(TargetError):
    """401: the target refused the credentials."""


class TargetPermissionError(TargetError):
    """403: the credentials are valid but lack the permission the call needs."""


class TargetNotFoundError(TargetError):
    """404: the user or group does not exist."""


class TargetConflictError(TargetError):
    """The object already exists (Jira answers 400, Confluence and Bitbucket 409)."""


class TargetRejectedError(TargetError):
    """Another 4xx: the target refused the request as invalid."""


class TargetLicenceError(TargetRejectedError):
    """The product's licence has no seat left for another user (Confluence answers 402)."""


class ProfileBusyError(UsersyncError):
    """Another run of the same profile holds its lease."""


class TargetDeadlineError(TargetError):
    """The run's time budget for this target ran out; what is left is not sent."""
