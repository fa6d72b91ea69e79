"""The SCIM 2.0 inbox miniOrange pushes users and groups into, stored per profile in the store.

`InboxApp` is the ASGI app (`usersync inbox serve` runs it with uvicorn), within `InboxLimits`;
`uvicorn_options` are the uvicorn settings that bound its connections (`connections`);
`issue_token` creates or rotates a profile's bearer token; `read_inbox` returns what was
pushed, for the `miniorange-push` source.
"""

from __future__ import annotations

from usersync.inbox.app import (
    PREFIX,
    ChangeCallback,
    InboxApp,
    InboxLimits,
    inbox_provider,
    plain_http_warning,
)
from usersync.inbox.connections import uvicorn_options
from usersync.inbox.storage import InboxContents, InboxStorage, read_inbox
from usersync.inbox.tokens import DEFAULT_GRACE, IssuedToken, issue_token, token_is_valid

__all__ = [
    "DEFAULT_GRACE",
    "PREFIX",
    "ChangeCallback",
    "InboxApp",
    "InboxContents",
    "InboxLimits",
    "InboxStorage",
    "IssuedToken",
    "inbox_provider",
    "issue_token",
    "plain_http_warning",
    "read_inbox",
    "token_is_valid",
    "uvicorn_options",
]
