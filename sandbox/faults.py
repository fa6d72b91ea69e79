"""What every emulator shares: a request log, a set latency and injected faults.

`Instrumented` wraps a product emulator's ASGI app. It records every request (method, path,
query, JSON body, status) so tests can prove what a run wrote, and it can delay answers or
replace them with faults: 429 with the product's rate-limit headers, a 5xx, or a dropped
connection (the response starts and the connection closes mid-body). Those faults are answered
before the product sees the request; an "applied-" fault lets the product do the work first
and then loses its answer (a 5xx instead, a dropped connection, or an answer too late for the
client's timeout), which is how a client is proven to write exactly once. Faults are
configured in Python (`emulator.faults`) or over HTTP at `/_sandbox/faults`; the log is at
`/_sandbox/requests`, and its counts (requests and writes by status and by method and path,
cheap to fetch after 100k requests) at `/_sandbox/requests/summary`. A `recorder` set on the
wrapper receives every exchange whole (the answer's body too, which the log leaves out), so a
test can check each one against the product's API description.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CONTROL_PREFIX = "/_sandbox"
#: A scripted fault with this prefix happens after the product has handled the request.
APPLIED = "applied-"


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int = 0
    auth: str = ""  # "basic", "bearer" or "" (never the credential itself)
    #: for an "applied-" fault, the status of the product's own answer, which was lost
    applied_status: int = 0

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS


@dataclass
class Exchange:
    """One request and the answer it got, whole, for a `recorder`."""

    method: str
    #: as received, context path included
    path: str
    #: every query parameter in order, repeated names kept
    query: list[tuple[str, str]]
    #: the decoded JSON body (text if not JSON; None if empty)
    request_body: Any
    status: int
    response_body: Any
    #: the answer is an injected fault (429, 5xx, dropped), not the product's own
    injected: bool = False


Recorder = Callable[[Exchange], None]


@dataclass
class Faults:
    """Fault and latency settings. Counters apply to requests outside /_sandbox.

    `script` is a queue of faults for the next requests, one per request, each "429", "500",
    "503" (any status), "drop" or "hang"; after it is empty the periodic settings apply
    (every Nth request). These are answered before the product sees the request, except
    "hang", which waits `hang_seconds` and then lets the product answer (late). Prefixed
    with "applied-" ("applied-500", "applied-drop", "applied-hang"), the product handles the
    request first and its answer is then replaced (or, for "hang", held back): the write
    happened, the client does not know.
    """

    #: an answer leaves no sooner than this after its request arrived; the product's own work
    #: counts toward it, as in a server's response time (injected faults wait it out first)
    latency_seconds: float = 0.0
    hang_seconds: float = 5.0
    rate_limit_every: int = 0
    retry_after_seconds: float = 1.0
    error_every: int = 0
    error_status: int = 500
    drop_every: int = 0
    only_methods: tuple[str, ...] = ()
    script: deque[str] = field(default_factory=deque)
    seen: int = 0

    def next_fault(self, method: str) -> str | None:
        if self.only_methods and method not in self.only_methods:
            return None
        self.seen += 1
        if self.script:
            return self.script.popleft()
        for every, fault in (
            (self.drop_every, "drop"),
            (self.rate_limit_every, "429"),
            (self.error_every, str(self.error_status)),
        ):
            if every and self.seen % every == 0:
                return fault
        return None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["script"] = list(self.script)
        return out


RateLimitHeaders = Callable[[float], dict[str, str]]


def retry_after_only(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(int(seconds) if float(seconds).is_integer() else seconds)}


class Instrumented:
    """ASGI middleware: request log, latency, faults, and the /_sandbox control endpoints.

    Args:
        app: the product emulator's ASGI app.
        rate_limit_headers: the headers a 429 of this product carries, given the wait.
        error_body: the JSON body of an injected error, in the product's error shape.
    """

    def __init__(
        self,
        app: Any,
        *,
        rate_limit_headers: RateLimitHeaders = retry_after_only,
        error_body: Callable[[int, str], Any] = lambda status, message: {"message": message},
    ) -> None:
        self.app = app
        self.faults = Faults()
        self.requests: list[RecordedRequest] = []
        self.rate_limit_headers = rate_limit_headers
        self.error_body = error_body
        #: called with every exchange outside /_sandbox once answered (or lost); None: off
        self.recorder: Recorder | None = None
        self._lock = threading.Lock()

    # -- Python API for tests ------------------------------------------------------------

    def writes(self) -> list[RecordedRequest]:
        """Requests with a write method (POST, PUT, PATCH, DELETE), in order."""
        with self._lock:
            return [r for r in self.requests if r.is_write]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def summary(self) -> dict[str, Any]:
        """Counts of the log: requests and writes, by status and by "METHOD path"."""
        with self._lock:
            log = list(self.requests)
        out: dict[str, Any] = {
            "requests": len(log),
            "writes": sum(r.is_write for r in log),
            "by_status": {},
            "by_call": {},
            "writes_by_call": {},
        }
        for r in log:
            call = f"{r.method} {r.path}"
            out["by_status"][str(r.status)] = out["by_status"].get(str(r.status), 0) + 1
            out["by_call"][call] = out["by_call"].get(call, 0) + 1
            if r.is_write:
                out["writes_by_call"][call] = out["writes_by_call"].get(call, 0) + 1
        return out

    # -- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith(CONTROL_PREFIX):
            await self._control(scope, receive, send)
            return
        arrived = asyncio.get_running_loop().time()
        body = await _read_body(receive)
        pairs = parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True)
        record = RecordedRequest(
            method=scope["method"],
            path=path,
            query=dict(pairs),
            body=_decode(body),
            auth=_auth_kind(scope),
        )
        recorder = self.recorder
        answer = _Answer() if recorder is not None else None
        try:
            await self._handle(scope, receive, body, record, send, arrived, answer)
        finally:
            if recorder is not None and answer is not None:
                recorder(
                    Exchange(
                        method=record.method,
                        path=path,
                        query=pairs,
                        request_body=record.body,
                        status=answer.status,
                        response_body=_decode(bytes(answer.body)),
                        injected=answer.injected,
                    )
                )

    async def _handle(
        self,
        scope: dict,
        receive: Callable,
        body: bytes,
        record: RecordedRequest,
        send: Callable,
        arrived: float,
        answer: _Answer | None,
    ) -> None:
        """Answer as the faults say; the product's own answer (or else the injected one) is
        kept in `answer` when one is given."""
        with self._lock:
            self.requests.append(record)
            fault = self.faults.next_fault(record.method)
            latency = self.faults.latency_seconds
            retry_after = self.faults.retry_after_seconds
            hang = self.faults.hang_seconds
        if fault is None:
            # The latency is the answer's: the product's own work counts toward it, as in a
            # server's response time (work first, then the answer waits out the rest).
            until = arrived + latency if latency else 0.0
            await self._apply(scope, receive, body, record, send, until=until, answer=answer)
            return
        if latency:
            await asyncio.sleep(latency)
        if fault.startswith(APPLIED):
            fault = fault.removeprefix(APPLIED)
            if fault == "hang":
                until = asyncio.get_running_loop().time() + hang
                await self._apply(scope, receive, body, record, send, until=until, answer=answer)
                return
            record.applied_status = await self._apply(
                scope, receive, body, record, None, answer=answer
            )
        elif fault == "hang":
            await asyncio.sleep(hang)
            fault = None
        if answer is not None and fault is not None and not answer.status:
            answer.injected = True
            answer.status = -1 if fault == "drop" else int(fault)
        if fault == "drop":
            record.status = -1
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-length", b"1000"),
                        (b"content-type", b"application/json"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b'{"partial":', "more_body": True})
            raise ConnectionAbortedError("sandbox: injected dropped connection")
        if fault is not None:
            status = int(fault)
            headers = self.rate_limit_headers(retry_after) if status == 429 else {}
            message = "Rate limit exceeded" if status == 429 else "Injected server error"
            # Recorded before sending: a client may read the log as soon as it has the answer.
            record.status = status
            await _send_json(send, status, self.error_body(status, message), headers)
            return
        # "hang": the product answers late
        await self._apply(scope, receive, body, record, send, answer=answer)

    async def _apply(
        self,
        scope: dict,
        receive: Callable,
        body: bytes,
        record: RecordedRequest,
        send: Callable | None,
        *,
        until: float = 0.0,
        answer: _Answer | None = None,
    ) -> int:
        """Let the product handle the request; send its answer (not before the loop time
        `until`), or drop it when `send` is None; copy it into `answer` if given. Returns the
        product's status."""
        status = 0
        held: list[dict] = []
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def capture(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if send is not None:
                    record.status = status
            if answer is not None:
                answer.keep(message)
            if send is None:
                return
            if until:
                held.append(message)
            else:
                await send(message)

        await self.app(scope, replay, capture)
        if until:
            wait = until - asyncio.get_running_loop().time()
            if wait > 0:
                await asyncio.sleep(wait)
            for message in held:
                await send(message)
        return status

    async def _control(self, scope: dict, receive: Callable, send: Callable) -> None:
        path, method = scope["path"], scope["method"]
        body = _decode(await _read_body(receive))
        if path == f"{CONTROL_PREFIX}/requests/summary" and method == "GET":
            await _send_json(send, 200, self.summary())
        elif path == f"{CONTROL_PREFIX}/requests" and method == "GET":
            with self._lock:
                data = [asdict(r) for r in self.requests]
            await _send_json(send, 200, data)
        elif path == f"{CONTROL_PREFIX}/requests" and method == "DELETE":
            self.clear_log()
            await _send_json(send, 204, None)
        elif path == f"{CONTROL_PREFIX}/faults" and method == "GET":
            await _send_json(send, 200, self.faults.as_dict())
        elif path == f"{CONTROL_PREFIX}/faults" and method == "PUT" and isinstance(body, dict):
            settings = {k: v for k, v in body.items() if k != "seen"}
            settings["script"] = deque(settings.get("script", []))
            if "only_methods" in settings:
                settings["only_methods"] = tuple(settings["only_methods"])
            try:
                new = Faults(**settings)
            except TypeError as exc:
                await _send_json(send, 400, {"message": str(exc)})
                return
            with self._lock:
                self.faults = new
            await _send_json(send, 200, new.as_dict())
        else:
            await _send_json(send, 404, {"message": f"no sandbox control {method} {path}"})


@dataclass
class _Answer:
    """The status and body of one answer, as a recorder gets them."""

    status: int = 0
    body: bytearray = field(default_factory=bytearray)
    injected: bool = False

    def keep(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")


async def _read_body(receive: Callable) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _decode(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def _auth_kind(scope: dict) -> str:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return value.split(b" ", 1)[0].decode().lower()
    return ""


async def _send_json(send: Callable, status: int, data: Any, headers: dict | None = None) -> None:
    payload = b"" if data is None or status == 204 else json.dumps(data).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw_headers += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
