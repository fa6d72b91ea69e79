"""The SCIM 2.0 inbox as an ASGI app: one SCIM service per profile under `/scim/v2/<profile>/`.

miniOrange's "SCIM Server (Destination)" app is given the base URL
`https://<host>/scim/v2/<profile>` and the profile's bearer token (`usersync inbox token`).
`InboxApp` takes each request through these steps, in this order, so that a caller without a
token, or with too much to send, costs the inbox next to nothing (what a connection may cost
before its request head is complete is bounded earlier, by `connections.InboxProtocol`):

1. at most `InboxLimits.max_concurrent_requests` requests at once: beyond, 503 with
   Retry-After;
2. the bearer token, from the headers, before any of the body is read: 401, the same answer
   (body and headers) whether the profile has no inbox or the token is wrong, so a caller
   learns nothing of which inboxes exist. `/ServiceProviderConfig` (RFC 7643 §5) needs no
   token and is the same document under any profile name;
3. the body, up to `max_body_bytes` (`max_bulk_bytes` for /Bulk, which the
   ServiceProviderConfig publishes as maxPayloadSize): a larger Content-Length is refused
   with 413 unread, a chunked body as soon as it passes the limit; a body that takes longer
   than `body_timeout_seconds` gets 408;
4. the profile's scim2-server `ASGIApplication` over an `InboxStorage`, created on first use.
   A PATCH of a group goes to `InboxStorage.patch_group` when it names the members it
   touches (miniOrange's add and remove of one member do), so it costs what it changes.
   The answer waits until the `StoreWriter` has committed the request's changes; the event
   loop does not, so other requests are served meanwhile.

Answers given before the body is read close the connection, so an unread body is never
drained. Each accepted write (a 2xx answer to POST, PUT, PATCH or DELETE) calls
`on_change(profile, change)` after the answer is decided, so the CLI can emit a Prefect event
without the engine importing Prefect; a failing callback is logged and never turns an
accepted change into an error.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from scim2_models import (
    AuthenticationScheme,
    External,
    PatchOp,
    Reference,
    SCIMException,
    ScimProvider,
)
from scim2_models.path import CompareOperator, Comparison, LogicalExpr, LogicalOperator
from scim2_server.applications.asgi import ASGIApplication
from scim2_server.memory import AsyncInMemoryStorage, InMemoryStorage
from scim2_server.requests import ScimRequest
from scim2_server.responses import ScimResponse
from scim2_server.routing import Operation
from scim2_server.service import ScimService
from scim2_server.utils import (
    load_default_resource_types,
    load_default_schemas,
    load_default_service_provider_config,
)

from usersync.config import PROFILE_NAME_PATTERN
from usersync.inbox.offboarding import offboarded_user
from usersync.inbox.storage import GROUP, MEMBERS, InboxStorage
from usersync.inbox.tokens import TokenCheck, profiles_with_tokens
from usersync.inbox.writer import StoreWriter, pending_writes

log = logging.getLogger("usersync.inbox")

#: Where the inboxes live; a profile's SCIM base URL is PREFIX/<profile>.
PREFIX = "/scim/v2"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ROUTE = re.compile(rf"^{re.escape(PREFIX)}/({PROFILE_NAME_PATTERN[1:-1]})(/.*)?$")
MIB = 1 << 20

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


@dataclass(frozen=True)
class InboxLimits:
    """What one request, and one connection, may cost the inbox.

    Attributes:
        max_body_bytes: the largest request body, /Bulk aside (413 beyond).
        max_bulk_bytes: the largest /Bulk body, published as bulk.maxPayloadSize (413 beyond).
        max_concurrent_requests: requests served at once; more are answered 503 at once.
        retry_after_seconds: the Retry-After of that 503, and of the connections refused
            429 or 503 below.
        body_timeout_seconds: the longest a request body may take to arrive (408 beyond).
        header_timeout_seconds: the longest a request head may take to arrive (408 and the
            connection closed beyond).
        max_connections_per_client: connections open at once from one client address; one
            more is answered 429 and closed.
        max_connections: connections open at once in all; one more is answered 503 and closed.
    """

    max_body_bytes: int = MIB
    max_bulk_bytes: int = MIB
    max_concurrent_requests: int = 32
    retry_after_seconds: int = 1
    body_timeout_seconds: float = 30.0
    header_timeout_seconds: float = 10.0
    max_connections_per_client: int = 32
    max_connections: int = 256


def plain_http_warning(host: str) -> str | None:
    """What to warn about when the inbox serves plain HTTP on `host`; None on loopback only."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if loopback:
        return None
    return (
        f"the SCIM inbox listens on {host} over plain HTTP: bearer tokens and users' data "
        "cross the network unencrypted. Serve HTTPS (--tls-cert FILE --tls-key FILE), or "
        "listen on 127.0.0.1 behind a reverse proxy that terminates TLS."
    )


def inbox_provider(max_bulk_bytes: int = MIB) -> ScimProvider:
    """The SCIM description the inbox publishes: RFC 7643 User (with the enterprise extension)
    and Group, a bearer-token authentication scheme, and /Bulk up to `max_bulk_bytes`."""
    config = load_default_service_provider_config()
    config.authentication_schemes = [BEARER_TOKEN_SCHEME]
    if config.bulk is not None:
        config.bulk.max_payload_size = max_bulk_bytes
    return ScimProvider.from_discovery(
        load_default_schemas().values(), load_default_resource_types().values(), config=config
    )


class _InboxASGI(ASGIApplication):
    """scim2-server's ASGI application with the inbox's URLs; `InboxApp` authenticates."""

    @staticmethod
    def get_base_url(scope: dict[str, Any]) -> str:
        # The root path already ends in /scim/v2/<profile>: no extra /v2 as scim2-server adds.
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode()
        if not host and scope.get("server"):
            host = "{}:{}".format(*scope["server"])
        return f"{scope['scheme']}://{host}{scope.get('root_path', '')}"

    def needs_auth(self, request: ScimRequest) -> bool:
        # InboxApp checked the token from the headers before the body was read.
        return False


class ProfileInbox(_InboxASGI):
    """The SCIM service of one profile: scim2-server over `InboxStorage`."""

    def __init__(
        self,
        profile: str,
        engine: sa.Engine,
        provider: ScimProvider,
        on_change: ChangeCallback | None = None,
        writer: StoreWriter | None = None,
    ) -> None:
        self.inbox_storage = InboxStorage(engine, profile, provider, writer)
        super().__init__(AsyncInMemoryStorage(self.inbox_storage), provider, ScimService(provider))
        self.profile = profile
        self.engine = engine
        self.on_change = on_change

    async def dispatch_request(self, request: ScimRequest) -> ScimResponse:
        if request.method.upper() == "PATCH":
            response = self.patch_group(request)
            if response is not None:
                return response
        return await super().dispatch_request(request)

    def patch_group(self, request: ScimRequest) -> ScimResponse | None:
        """Serve a PATCH of a group through `InboxStorage.patch_group`, which reads and writes
        only the members the PATCH names; None when it is not such a PATCH (scim2-server's
        handler serves it then, with the whole group)."""
        service = self.service
        with service.provider:
            try:
                target = service.route(request, Operation.patch)
                resource_type = service.resource_type_at(str(target.endpoint))
            except SCIMException:
                return None
            if resource_type.name != GROUP or target.resource_id is None:
                return None
            service.authorize(request, target, resource_type)
            parameters = service.read_response_parameters(resource_type, request.query)
            patch = service.read_patch(resource_type, request.body, request.header("Content-Type"))
            values = member_values_named(patch)
            if values is None:
                return None
            conditions = service.read_conditions(request)
            patched = self.inbox_storage.patch_group(
                resource_type,
                target.resource_id,
                values,
                lambda group: service.apply_patch(group, patch, conditions),
            )
            if parameters.attributes or parameters.excluded_attributes:
                # The answer shows the group (else it is a 204): all of it, as a GET would.
                patched = self.inbox_storage.get(
                    resource_type, target.resource_id, response_parameters=parameters
                )
            return service.patch_response(request.base_url, patched, parameters)

    async def serve(self, request: ScimRequest) -> ScimResponse:
        with pending_writes() as writes:
            response = await super().serve(request)
        try:
            # Answered only once its changes are committed (by the writer, not this loop).
            await asyncio.gather(*(asyncio.wrap_future(write) for write in writes))
        except Exception as exc:
            await asyncio.to_thread(self.inbox_storage.recover)
            return self.finalize_response(request, self.handle_exception(request, exc))
        status = int(response.status)
        if request.method.upper() in WRITE_METHODS and 200 <= status < 300 and self.on_change:
            change = {"method": request.method.upper(), "path": request.path, "status": status}
            offboarded = offboarded_user(request.method, request.path, request.body)
            if offboarded is not None:  # a leaver: the caller may sync it at once
                change["offboarded"] = offboarded
            try:
                await asyncio.to_thread(self.on_change, self.profile, change)
            except Exception:
                log.exception(
                    "inbox %s: the change callback failed (the change is stored)", self.profile
                )
        return response


def member_values_named(patch: PatchOp[Any]) -> set[str] | None:
    """The member values a PATCH of a group reads or writes, when it names them all.

    Operations on other attributes name none. An `add` of members (with path `members`, or
    without a path and a value holding `members`) names the values it adds; an operation
    whose path filters members by `value eq "…"` (joined by `or`) names those values.

    Returns:
        The values, or None when an operation may touch members it does not name (a replace
        or remove of all members, a filter on anything else, a member without a value).
    """
    named: set[str] = set()
    for operation in patch.operations or []:
        if operation.path is None:
            found = _added_values(_members_in(operation.value))
            if found is None or (found and operation.op != operation.Op.add):
                return None
            named |= found
            continue
        binding = operation.path.resolve()
        if binding is None:
            return None
        if binding.field_name != MEMBERS:
            continue
        condition = operation.path.value_filter
        if condition is None:
            found = _added_values(operation.value)
            if operation.op != operation.Op.add or found is None:
                return None
            named |= found
            continue
        filtered = _values_compared(condition)
        if filtered is None or isinstance(operation.value, list):
            return None
        named |= filtered
        if isinstance(operation.value, dict) and "value" in operation.value:
            named.add(str(operation.value["value"]))
    return named


def _members_in(value: Any) -> Any:
    """The members a path-less operation's value holds (a list), [] when none."""
    if not isinstance(value, dict):
        return []
    found: Any = []
    for key, item in value.items():
        if str(key).lower().rsplit(":", 1)[-1] == MEMBERS:
            found = item
    return found


def _added_values(members: Any) -> set[str] | None:
    """The values of members to add; None when one has no value (it names nothing)."""
    listed = members if isinstance(members, list) else [members]
    values = set()
    for member in listed:
        value = member.get("value") if isinstance(member, dict) else None
        if not isinstance(value, str) or not value:
            return None
        values.add(value)
    return values


def _values_compared(condition: Any) -> set[str] | None:
    """The values of `value eq "…"` comparisons joined by `or`; None for any other filter."""
    if isinstance(condition, LogicalExpr) and condition.op == LogicalOperator.or_:
        values: set[str] = set()
        for term in condition.terms:
            found = _values_compared(term)
            if found is None:
                return None
            values |= found
        return values
    if (
        isinstance(condition, Comparison)
        and condition.op == CompareOperator.eq
        and condition.attr_path.attr.lower() == "value"
        and condition.attr_path.sub_attr is None
        and isinstance(condition.value, str)
    ):
        return {condition.value}
    return None


Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class _ClientGone(Exception):
    """The client disconnected before its body arrived."""


async def _refuse(
    send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A SCIM error answer that also closes the connection (any unread body is dropped)."""
    payload = json.dumps(scim_error(status, detail)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/scim+json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def scim_error(status: int, detail: str) -> dict[str, Any]:
    """A SCIM error body (RFC 7644 §3.12)."""
    return {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": str(status),
        "detail": detail,
    }


#: The one answer to a request without a valid token, whatever the profile.
UNAUTHORIZED_DETAIL = (
    "a valid bearer token of this inbox is required (Authorization: Bearer <token>; "
    "issued by `usersync inbox token <profile>`)"
)
_WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="usersync SCIM inbox"')


def _bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _declared_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None as soon as it passes `limit` bytes (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over the body already read, then the connection's next message."""
    delivered = False

    async def replay() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class InboxApp:
    """The ASGI app serving every profile's inbox under `/scim/v2/<profile>/`.

    Args:
        engine: the store's engine (`Store.open(url).engine`).
        on_change: called after each accepted change (see the module docstring).
        limits: what one request may cost (see `InboxLimits`).
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        on_change: ChangeCallback | None = None,
        limits: InboxLimits | None = None,
    ) -> None:
        self.engine = engine
        self.on_change = on_change
        self.limits = limits or InboxLimits()
        self.provider = inbox_provider(self.limits.max_bulk_bytes)
        self._inboxes: dict[str, ProfileInbox] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.limits.max_concurrent_requests)
        self._writer = StoreWriter(engine)
        self._token_is_valid = TokenCheck(engine)
        # Serves /ServiceProviderConfig under any profile name, and classifies requests.
        self._discovery = _InboxASGI(
            AsyncInMemoryStorage(InMemoryStorage()), self.provider, ScimService(self.provider)
        )

    def inbox(self, profile: str) -> ProfileInbox | None:
        """The profile's SCIM service, loaded from the store on first use; None without a token."""
        with self._lock:
            found = self._inboxes.get(profile)
            if found is None and profile in profiles_with_tokens(self.engine):
                found = ProfileInbox(
                    profile, self.engine, self.provider, self.on_change, self._writer
                )
                self._inboxes[profile] = found
            return found

    def authorized_inbox(self, profile: str, authorization: str | None) -> ProfileInbox | None:
        """The profile's inbox when the Authorization header carries one of its valid bearer
        tokens; None otherwise, whether the profile has an inbox or not."""
        token = _bearer_token(authorization)
        if token and self._token_is_valid(profile, token):
            return self.inbox(profile)
        self._explain_refusal(profile)
        return None

    def _remembered_inbox(self, profile: str, authorization: str | None) -> ProfileInbox | None:
        """`authorized_inbox` when the token was found valid lately and the inbox is loaded,
        without a query (so without leaving the event loop); None otherwise."""
        token = _bearer_token(authorization)
        if not token or not self._token_is_valid.remembered(profile, token):
            return None
        with self._lock:
            return self._inboxes.get(profile)

    def _explain_refusal(self, profile: str) -> None:
        # For the administrator's log only: the caller gets the same 401 either way.
        if profile in profiles_with_tokens(self.engine):
            log.info("inbox %s: refused a request without a valid token", profile)
        else:
            log.info(
                "refused a request for inbox %s: that profile has no inbox token (create one "
                "with `usersync inbox token %s`)",
                profile,
                profile,
            )

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await ASGIApplication.serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        match = _ROUTE.match(scope["path"])
        if match is None:
            await _refuse(send, 404, f"no inbox here: SCIM base URLs are {PREFIX}/<profile>")
            return
        if not self._slots.acquire(blocking=False):
            retry = str(self.limits.retry_after_seconds)
            await _refuse(
                send,
                503,
                f"the inbox is serving {self.limits.max_concurrent_requests} requests; "
                f"retry after {retry} s",
                [(b"retry-after", retry.encode())],
            )
            return
        try:
            await self._serve(match.group(1), scope, receive, send)
        finally:
            self._slots.release()

    async def _serve(
        self, profile: str, scope: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        scope = dict(scope, root_path=scope.get("root_path", "") + f"{PREFIX}/{profile}")
        request = ScimRequest(
            method=scope["method"],
            base_url=_InboxASGI.get_base_url(scope),
            path=_InboxASGI.split_path(_InboxASGI.get_path(scope)),
            headers=[
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in scope["headers"]
            ],
        )
        try:
            operation = self._discovery.service.match(request).operation
        except SCIMException:
            operation = None  # scim2-server answers it, to a caller with a token
        app: ASGIApplication | None
        if operation is Operation.service_provider_config:
            app = self._discovery
        else:
            authorization = request.header("Authorization")
            app = self._remembered_inbox(profile, authorization) or await asyncio.to_thread(
                self.authorized_inbox, profile, authorization
            )
            if app is None:
                await _refuse(send, 401, UNAUTHORIZED_DETAIL, [_WWW_AUTHENTICATE])
                return
        limits = self.limits
        limit = limits.max_bulk_bytes if operation is Operation.bulk else limits.max_body_bytes
        too_large = f"the request body is larger than the inbox accepts ({limit} bytes)"
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, 413, too_large)
            return
        try:
            body = await asyncio.wait_for(_read_body(receive, limit), limits.body_timeout_seconds)
        except TimeoutError:
            await _refuse(
                send, 408, f"the request body took longer than {limits.body_timeout_seconds} s"
            )
            return
        except _ClientGone:
            return
        if body is None:
            await _refuse(send, 413, too_large)
            return
        await app(scope, _replay(body, receive), send)
