"""The SCIM 2.0 inbox as an ASGI app: one SCIM service per profile under `/scim/v2/<profile>/`.

miniOrange's "SCIM Server (Destination)" app is given the base URL
`https://<host>/scim/v2/<profile>` and the profile's bearer token (`usersync inbox token`).
`InboxApp` routes each request to that profile's scim2-server `ASGIApplication` over an
`InboxStorage`, created on first use for any profile that has a token. Every request except
`/ServiceProviderConfig` (RFC 7643 §5) must carry a valid bearer token of its profile. Each
accepted write (a 2xx answer to POST, PUT, PATCH or DELETE) calls `on_change(profile, change)`
after the answer is decided, so the CLI can emit a Prefect event without the engine importing
Prefect; a failing callback is logged and never turns an accepted change into an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from scim2_models import (
    AuthenticationScheme,
    External,
    Reference,
    ScimProvider,
    UnauthorizedException,
)
from scim2_server.applications.asgi import ASGIApplication
from scim2_server.memory import AsyncInMemoryStorage
from scim2_server.requests import ScimRequest
from scim2_server.responses import ScimResponse
from scim2_server.service import ScimService
from scim2_server.utils import (
    load_default_resource_types,
    load_default_schemas,
    load_default_service_provider_config,
)

from usersync.config import PROFILE_NAME_PATTERN
from usersync.inbox.storage import InboxStorage
from usersync.inbox.tokens import profiles_with_tokens, token_is_valid

log = logging.getLogger("usersync.inbox")

#: Where the inboxes live; a profile's SCIM base URL is PREFIX/<profile>.
PREFIX = "/scim/v2"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ROUTE = re.compile(rf"^{re.escape(PREFIX)}/({PROFILE_NAME_PATTERN[1:-1]})(/.*)?$")

#: Called after each accepted change: (profile, {"method", "path", "status"}).
ChangeCallback = Callable[[str, dict[str, Any]], None]

BEARER_TOKEN_SCHEME = AuthenticationScheme(
    type=AuthenticationScheme.Type.oauthbearertoken,
    name="Bearer token",
    description="The profile's inbox token (usersync inbox token <profile>), sent as "
    "Authorization: Bearer <token>",
    spec_uri=Reference[External]("https://datatracker.ietf.org/doc/html/rfc6750"),
    primary=True,
)


def inbox_provider() -> ScimProvider:
    """The SCIM description the inbox publishes: RFC 7643 User (with the enterprise extension)
    and Group, and a bearer-token authentication scheme."""
    config = load_default_service_provider_config()
    config.authentication_schemes = [BEARER_TOKEN_SCHEME]
    return ScimProvider.from_discovery(
        load_default_schemas().values(), load_default_resource_types().values(), config=config
    )


class ProfileInbox(ASGIApplication):
    """The SCIM service of one profile: scim2-server over `InboxStorage`, with token checks."""

    def __init__(
        self,
        profile: str,
        engine: sa.Engine,
        provider: ScimProvider,
        on_change: ChangeCallback | None = None,
    ) -> None:
        storage = InboxStorage(engine, profile, provider)
        super().__init__(AsyncInMemoryStorage(storage), provider, ScimService(provider))
        self.profile = profile
        self.engine = engine
        self.on_change = on_change

    @staticmethod
    def get_base_url(scope: dict[str, Any]) -> str:
        # The root path already ends in /scim/v2/<profile>: no extra /v2 as scim2-server adds.
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode()
        if not host and scope.get("server"):
            host = "{}:{}".format(*scope["server"])
        return f"{scope['scheme']}://{host}{scope.get('root_path', '')}"

    def check_auth(self, request: ScimRequest) -> None:
        scheme, _, token = (request.header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedException(detail="a bearer token is required")
        if not token_is_valid(self.engine, self.profile, token.strip()):
            raise UnauthorizedException(detail=f"the token is not valid for inbox {self.profile}")

    async def serve(self, request: ScimRequest) -> ScimResponse:
        response = await super().serve(request)
        status = int(response.status)
        if request.method.upper() in WRITE_METHODS and 200 <= status < 300 and self.on_change:
            change = {"method": request.method.upper(), "path": request.path, "status": status}
            try:
                await asyncio.to_thread(self.on_change, self.profile, change)
            except Exception:
                log.exception(
                    "inbox %s: the change callback failed (the change is stored)", self.profile
                )
        return response


Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/scim+json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _scim_error(status: int, detail: str) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": str(status),
        "detail": detail,
    }


class InboxApp:
    """The ASGI app serving every profile's inbox under `/scim/v2/<profile>/`.

    Args:
        engine: the store's engine (`Store.open(url).engine`).
        on_change: called after each accepted change (see the module docstring).
    """

    def __init__(self, engine: sa.Engine, *, on_change: ChangeCallback | None = None) -> None:
        self.engine = engine
        self.on_change = on_change
        self.provider = inbox_provider()
        self._inboxes: dict[str, ProfileInbox] = {}
        self._lock = threading.Lock()

    def inbox(self, profile: str) -> ProfileInbox | None:
        """The profile's SCIM service, loaded from the store on first use; None without a token."""
        with self._lock:
            found = self._inboxes.get(profile)
            if found is None and profile in profiles_with_tokens(self.engine):
                found = ProfileInbox(profile, self.engine, self.provider, self.on_change)
                self._inboxes[profile] = found
            return found

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] == "lifespan":
            await ASGIApplication.serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        match = _ROUTE.match(scope["path"])
        if match is None:
            await _send_json(
                send, 404, _scim_error(404, f"no inbox here: SCIM base URLs are {PREFIX}/<profile>")
            )
            return
        profile = match.group(1)
        inbox = await asyncio.to_thread(self.inbox, profile)
        if inbox is None:
            await _send_json(
                send,
                404,
                _scim_error(
                    404,
                    f"no inbox for profile {profile}: create its token with "
                    f"`usersync inbox token {profile}`",
                ),
            )
            return
        root = scope.get("root_path", "") + f"{PREFIX}/{profile}"
        await inbox(dict(scope, root_path=root), receive, send)
