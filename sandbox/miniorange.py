"""An emulator of miniOrange's admin REST API (`/moas/api/admin/users/...`) for tests and demos.

It checks every request as the reference says miniOrange does: `Customer-Key` must be a known
customer, `Timestamp` (ms) within `max_skew_seconds` of the emulator's clock (the real skew
allowed is UNCONFIRMED), and `Authorization` the lower-case hex SHA-512 of customerKey +
timestamp + apiKey; a refusal is HTTP 401 with `{"status": "ERROR", "message": ...}`. Users
answer `users/search` (USER_FOUND / USER_NOT_FOUND / USER_FOUND_UNDER_DIFFERENT_CUSTOMER),
`users/get`, `users/create`, and the UNCONFIRMED `users/getall` in `batchSize`/`batchNo`
batches (1-based) with a `users` list, the shape `sources.miniorange` assumes.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from usersync import sign_miniorange_request as sign

PREFIX = "/moas/api/admin/users"


class MiniorangeEmulator:
    """miniOrange's user API for one or more customers, in memory.

    Args:
        customers: customer key → API key.
        max_skew_seconds: how far `Timestamp` may be from the emulator's clock.
        clock: seconds since the epoch.
    """

    def __init__(
        self,
        customers: dict[str, str],
        *,
        max_skew_seconds: float = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.customers = dict(customers)
        self.max_skew_seconds = max_skew_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._users: dict[str, dict[str, dict[str, Any]]] = {key: {} for key in customers}
        self._next_id = 1000
        self.app = Starlette(
            routes=[
                Route(f"{PREFIX}/{name}", handler, methods=["POST"])
                for name, handler in (
                    ("search", self._search),
                    ("get", self._get),
                    ("create", self._create),
                    ("getall", self._getall),
                )
            ]
        )

    def seed_user(self, customer_key: str, username: str, **fields: Any) -> dict[str, Any]:
        """Add a user to a customer directly (no HTTP); return it."""
        with self._lock:
            self._next_id += 1
            user = {"id": str(self._next_id), "username": username, **fields}
            self._users[customer_key][username.lower()] = user
            return user

    # -- request checks --------------------------------------------------------------------

    def _refuse(self, message: str) -> JSONResponse:
        return JSONResponse({"status": "ERROR", "message": message}, status_code=401)

    async def _authenticated(self, request: Request) -> tuple[str, dict[str, Any]] | JSONResponse:
        customer = request.headers.get("Customer-Key", "")
        timestamp = request.headers.get("Timestamp", "")
        signature = request.headers.get("Authorization", "")
        api_key = self.customers.get(customer)
        if api_key is None:
            return self._refuse("Invalid customer key")
        if not timestamp.isdigit():
            return self._refuse("Missing or invalid Timestamp")
        if abs(self.clock() - int(timestamp) / 1000) > self.max_skew_seconds:
            return self._refuse("Request timestamp outside the allowed window")
        if not hmac.compare_digest(signature, sign(customer, timestamp, api_key)):
            return self._refuse("Invalid request signature")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"status": "ERROR", "message": "Invalid JSON body"}, 400)
        if str(body.get("customerKey")) != customer:
            return JSONResponse(
                {"status": "ERROR", "message": "customerKey does not match Customer-Key"}, 400
            )
        return customer, body

    # -- endpoints ---------------------------------------------------------------------------

    async def _search(self, request: Request) -> JSONResponse:
        checked = await self._authenticated(request)
        if isinstance(checked, JSONResponse):
            return checked
        customer, body = checked
        name = str(body.get("username", "")).lower()
        with self._lock:
            if name in self._users[customer]:
                return JSONResponse({"status": "USER_FOUND", "message": "User found"})
            if any(name in users for users in self._users.values()):
                return JSONResponse({"status": "USER_FOUND_UNDER_DIFFERENT_CUSTOMER"})
        return JSONResponse({"status": "USER_NOT_FOUND", "message": "User not found"})

    async def _get(self, request: Request) -> JSONResponse:
        checked = await self._authenticated(request)
        if isinstance(checked, JSONResponse):
            return checked
        customer, body = checked
        with self._lock:
            user = self._users[customer].get(str(body.get("username", "")).lower())
        if user is None:
            return JSONResponse({"status": "ERROR", "message": "User not found"})
        return JSONResponse({"status": "SUCCESS", **user})

    async def _create(self, request: Request) -> JSONResponse:
        checked = await self._authenticated(request)
        if isinstance(checked, JSONResponse):
            return checked
        customer, body = checked
        fields = {k: v for k, v in body.items() if k not in ("customerKey", "username", "password")}
        user = self.seed_user(customer, str(body.get("username", "")), **fields)
        return JSONResponse({"status": "SUCCESS", "message": "User created", "id": user["id"]})

    async def _getall(self, request: Request) -> JSONResponse:
        checked = await self._authenticated(request)
        if isinstance(checked, JSONResponse):
            return checked
        customer, body = checked
        size, number = int(body.get("batchSize", 500)), int(body.get("batchNo", 1))
        with self._lock:
            users = sorted(self._users[customer].values(), key=lambda u: u["id"])
        start = (max(number, 1) - 1) * size
        return JSONResponse({"status": "SUCCESS", "users": users[start : start + size]})
