"""The error taxonomy: what went wrong, in which layer, and whether trying again can help.

Every error usersync raises on purpose derives from `UsersyncError`, one family per layer:

- configuration: `ConfigError` (a profile or mapping table; the message names file and line);
- source: `SourceError` and its kinds (unreachable, refused credentials, incomplete read);
- guard: `GuardError` (a guard stopped writes), `ProfileBusyError` (another run holds the
  profile);
- target: `TargetError` and its kinds, one per way a product answers (`TransientError` for
  429/5xx/timeouts, auth, permission, not found, conflict, rejected, licence, deadline).

Each error knows whether trying the same thing again later may help (`transient`), decided
where it is raised, by the code that knows: the HTTP client retries what is transient itself
(honouring Retry-After, checking a lost write by a read first), so what it finally raises is
not worth a retry above it; a directory the LDAP source could not reach may answer a minute
later, unless its certificate could not be verified. A task retries an error only when
`error.transient` says so. The shared HTTP client raises the target family; a source's client
is built with `errors=source_error_of`, so a source raises only its own family.
"""

from __future__ import annotations


class UsersyncError(Exception):
    """Base of every error usersync raises on purpose.

    Attributes:
        transient: whether the same call may succeed if tried again later (a task retries
            only such errors); the class's default unless the raiser says otherwise.
    """

    transient: bool = False

    def __init__(self, *args: object, transient: bool | None = None) -> None:
        super().__init__(*args)
        if transient is not None:
            self.transient = transient


class ConfigError(UsersyncError):
    """A profile or mapping table is invalid. The message names the file (and line) and the fix."""


class SourceError(UsersyncError):
    """Reading the identity source failed.

    Attributes:
        status: the HTTP status of a source read over HTTP (SCIM, miniOrange), else None.
    """

    def __init__(
        self, *args: object, status: int | None = None, transient: bool | None = None
    ) -> None:
        super().__init__(*args, transient=transient)
        self.status = status


class SourceUnreachableError(SourceError):
    """The source could not be reached (network, TLS, timeout). Transient by default (a
    directory may answer a minute later); not when a client retried already or when the
    certificate could not be verified."""

    transient = True


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
        self,
        message: str,
        *,
        status: int | None = None,
        body: object = None,
        attempts: int = 1,
        transient: bool | None = None,
    ) -> None:
        super().__init__(message, transient=transient)
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
            message,
            status=self.status,
            body=self.body,
            attempts=self.attempts,
            transient=None if kind else self.__dict__.get("transient"),
        )


class TransientError(TargetError):
    """Worth retrying later: 429, 5xx, dropped connection, timeout."""

    transient = True


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


def source_error_of(error: TargetError) -> SourceError:
    """A failed HTTP call of a source, as the source layer's error. The HTTP client has already
    retried what was transient, so the error is final for the run (`transient` false)."""
    if isinstance(error, TransientError | TargetUnreachableError | TargetDeadlineError):
        kind: type[SourceError] = SourceUnreachableError
    elif isinstance(error, TargetAuthError | TargetPermissionError):
        kind = SourceAuthError
    else:
        kind = SourceError
    return kind(str(error), status=error.status, transient=False)
