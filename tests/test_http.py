"""The shared HTTP client: what it retries, how long it waits, and which error it raises.

Each test serves a tiny ASGI app over real HTTP (wrapped in the sandbox's `Instrumented`
fault layer where a fault is needed) and gives `ApiClient` a retry policy that records its
waits instead of sleeping, so nothing here really sleeps.
"""

from __future__ import annotations

import email.utils
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from usersync_sandbox.faults import Instrumented
from usersync_sandbox.server import serve
from usersync_tasks.retry import retry_transient

from usersync.config import LdapSourceConfig
from usersync.errors import (
    SourceUnreachableError,
    TargetAuthError,
    TargetConflictError,
    TargetError,
    TargetNotFoundError,
    TargetPermissionError,
    TargetRejectedError,
    TargetUnreachableError,
    TransientError,
    source_error_of,
)
from usersync.http import ApiClient, RetryPolicy, parse_retry_after
from usersync.sources.ldap.connection import LdapConnections


async def answer(request: Request) -> Response:
    """`/status/{code}` answers that status with a Jira-style error body; `/ok` answers 200."""
    code = int(request.path_params.get("code", 200))
    if code == 200:
        return JSONResponse({"ok": True})
    return JSONResponse({"errorMessages": [f"refused with {code}"], "errors": {}}, code)


#: What `/things` holds: name → id. A write that was applied shows here, answered or not.
THINGS: dict[str, int] = {}


async def create_thing(request: Request) -> Response:
    """`POST /things {"name"}`: 201 with the new id, 409 if the name exists (not idempotent)."""
    name = (await request.json())["name"]
    if name in THINGS:
        return JSONResponse({"errorMessages": [f"{name} already exists"], "errors": {}}, 409)
    THINGS[name] = len(THINGS) + 1
    return JSONResponse({"id": THINGS[name]}, 201)


async def get_thing(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in THINGS:
        return JSONResponse({"errorMessages": [f"no {name}"], "errors": {}}, 404)
    return JSONResponse({"id": THINGS[name]})


APP = Instrumented(
    Starlette(
        routes=[
            Route("/ok", answer),
            Route("/status/{code:int}", answer, methods=["GET", "POST"]),
            Route("/things", create_thing, methods=["POST"]),
            Route("/things/{name}", get_thing, methods=["GET"]),
        ]
    )
)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(APP) as url:
        yield url


@pytest.fixture
def app() -> Iterator[Instrumented]:
    APP.faults = type(APP.faults)()
    APP.rate_limit_headers = lambda seconds: {"Retry-After": str(int(seconds))}
    APP.clear_log()
    THINGS.clear()
    yield APP


def client(
    url: str, waits: list[float], *, timeout_seconds: float = 5, **policy: float
) -> ApiClient:
    retry = RetryPolicy(sleep=waits.append, **policy)  # type: ignore[arg-type]
    return ApiClient("test", url, retry=retry, timeout_seconds=timeout_seconds)


# -- Retry-After ---------------------------------------------------------------------------


def test_parse_retry_after_seconds_and_http_date() -> None:
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
    later = email.utils.format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(later, now=now) == 90.0
    assert parse_retry_after(email.utils.format_datetime(now - timedelta(hours=1)), now=now) == 0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_429_waits_the_seconds_the_server_asks(base_url: str, app: Instrumented) -> None:
    app.faults.retry_after_seconds = 6
    app.faults.script.extend(["429", "429"])
    waits: list[float] = []

    assert client(base_url, waits).get_json("/ok") == {"ok": True}
    assert waits == [6.0, 6.0]
    assert [r.status for r in app.requests] == [429, 429, 200]


def test_429_with_an_http_date_waits_until_then(base_url: str, app: Instrumented) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    app.rate_limit_headers = lambda _: {"Retry-After": email.utils.format_datetime(when, True)}
    app.faults.script.append("429")
    waits: list[float] = []

    client(base_url, waits).get_json("/ok")

    assert len(waits) == 1 and 25 <= waits[0] <= 30


def test_retry_after_is_capped(base_url: str, app: Instrumented) -> None:
    app.faults.retry_after_seconds = 3600
    app.faults.script.append("429")
    waits: list[float] = []

    client(base_url, waits, max_wait_seconds=45).get_json("/ok")

    assert waits == [45.0]


def test_503_without_retry_after_backs_off_and_succeeds(base_url: str, app: Instrumented) -> None:
    app.faults.script.extend(["503", "502"])
    waits: list[float] = []

    client(base_url, waits, backoff_seconds=1).get_json("/ok")

    assert len(waits) == 2 and 0.5 <= waits[0] <= 1 and 1 <= waits[1] <= 2


def test_server_error_storm_ends_in_transient_error(base_url: str, app: Instrumented) -> None:
    app.faults.error_every = 1
    waits: list[float] = []

    with pytest.raises(TransientError) as caught:
        client(base_url, waits, max_attempts=3).get_json("/ok")

    assert caught.value.status == 500
    assert len(app.requests) == 3 and len(waits) == 2
    assert "after 3 attempt(s)" in str(caught.value)


# -- refusals are not retried --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, TargetRejectedError),
        (401, TargetAuthError),
        (403, TargetPermissionError),
        (404, TargetNotFoundError),
        (409, TargetConflictError),
        (422, TargetRejectedError),
    ],
)
def test_refusals_are_not_retried(
    base_url: str, app: Instrumented, status: int, error: type[Exception]
) -> None:
    waits: list[float] = []

    with pytest.raises(error) as caught:
        client(base_url, waits).request("POST", f"/status/{status}", json={"name": "x"})

    assert len(app.requests) == 1 and waits == []
    assert caught.value.status == status  # type: ignore[attr-defined]
    assert caught.value.attempts == 1  # type: ignore[attr-defined]
    assert f"refused with {status}" in str(caught.value)


def test_refusal_after_a_retry_says_how_many_attempts(base_url: str, app: Instrumented) -> None:
    app.faults.script.append("503")
    with pytest.raises(TargetRejectedError) as caught:
        client(base_url, []).request("GET", "/status/400")
    assert caught.value.attempts == 2


def test_credentials_never_appear_in_messages(base_url: str, app: Instrumented) -> None:
    api = ApiClient(
        "test",
        base_url,
        headers={"Authorization": "Bearer very-secret-token"},
        retry=RetryPolicy(sleep=lambda _: None),
    )
    with pytest.raises(TargetAuthError) as caught:
        api.get_json("/status/401")
    assert "very-secret-token" not in str(caught.value)
    assert "check the credentials" in str(caught.value)


# -- transport failures --------------------------------------------------------------------


def test_dropped_connections_are_retried(base_url: str, app: Instrumented) -> None:
    app.faults.script.append("drop")
    waits: list[float] = []

    assert client(base_url, waits).get_json("/ok") == {"ok": True}
    assert len(waits) == 1


def test_dropped_connections_to_the_end_are_unreachable(base_url: str, app: Instrumented) -> None:
    app.faults.drop_every = 1
    waits: list[float] = []

    with pytest.raises(TargetUnreachableError) as caught:
        client(base_url, waits, max_attempts=4).get_json("/ok")

    assert len(app.requests) == 4 and len(waits) == 3
    assert caught.value.status is None


def test_closed_port_is_unreachable_quickly_with_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    waits: list[float] = []
    started = time.monotonic()

    with pytest.raises(TargetUnreachableError) as caught:
        client(f"http://127.0.0.1:{port}/rest/api/2", waits, max_attempts=3).get_json("/myself")

    assert time.monotonic() - started < 2
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "GET /myself" in str(caught.value)
    assert len(waits) == 2


# -- writes that must happen once ------------------------------------------------------------


class ThingCheck:
    """`write_once`'s check for `POST /things`: reads the thing back; counts how often it asked.

    `lagging` answers "not there" that many times first, like a replica that has not yet seen
    a write the server is still applying.
    """

    def __init__(self, api: ApiClient, name: str, *, lagging: int = 0) -> None:
        self.api, self.name, self.lagging, self.calls = api, name, lagging, 0

    def __call__(self) -> int | None:
        self.calls += 1
        if self.calls <= self.lagging:
            return None
        try:
            return int(self.api.get_json(f"/things/{self.name}")["id"])
        except TargetNotFoundError:
            return None


def create_thing_once(api: ApiClient, name: str, check: ThingCheck) -> int:
    return api.write_once(
        "POST",
        "/things",
        json={"name": name},
        ok=(201,),
        applied=check,
        result=lambda response: int(response.json()["id"]),
    )


def posts(app: Instrumented) -> list[tuple[int, int]]:
    """(status answered, status of the lost answer) of every POST /things, in order."""
    return [(r.status, r.applied_status) for r in app.requests if r.method == "POST"]


@pytest.mark.parametrize(
    ("fault", "error"), [("applied-500", TransientError), ("applied-drop", TargetUnreachableError)]
)
def test_a_post_that_may_have_been_applied_is_not_sent_again(
    base_url: str, app: Instrumented, fault: str, error: type[Exception]
) -> None:
    app.faults.script.append(fault)
    waits: list[float] = []

    with pytest.raises(error, match="may have been applied"):
        client(base_url, waits).request("POST", "/things", json={"name": "once"})

    assert THINGS == {"once": 1}
    assert len(posts(app)) == 1 and waits == []


def test_a_replay_safe_post_and_a_put_are_retried_after_a_5xx(
    base_url: str, app: Instrumented
) -> None:
    app.faults.script.extend(["500", "503"])
    waits: list[float] = []
    api = client(base_url, waits)

    api.request("POST", "/things", json={"name": "read-as-post"}, replay_safe=True)
    assert [r.status for r in app.requests] == [500, 503, 201]

    app.clear_log()
    app.faults.script.append("502")
    with pytest.raises(TargetRejectedError):  # /ok answers PUT with 405: sent twice
        api.request("PUT", "/ok")
    assert [r.status for r in app.requests] == [502, 405]


@pytest.mark.parametrize("fault", ["applied-500", "applied-503", "applied-drop"])
def test_write_once_whose_answer_was_lost_returns_what_the_check_found(
    base_url: str, app: Instrumented, fault: str
) -> None:
    app.faults.script.append(fault)
    api = client(base_url, [])
    check = ThingCheck(api, "lost")

    assert create_thing_once(api, "lost", check) == 1

    assert THINGS == {"lost": 1}
    assert posts(app)[0][1] == 201  # the server did create it; its answer was lost
    assert len(posts(app)) == 1 and check.calls == 1


def test_write_once_after_a_read_timeout_checks_and_is_not_sent_again(
    base_url: str, app: Instrumented
) -> None:
    app.faults.hang_seconds = 1.5
    app.faults.script.append("applied-hang")
    api = client(base_url, [], timeout_seconds=0.5)
    check = ThingCheck(api, "slow")

    assert create_thing_once(api, "slow", check) == 1
    assert THINGS == {"slow": 1} and len(posts(app)) == 1 and check.calls == 1


def test_write_once_sends_again_when_the_check_finds_nothing(
    base_url: str, app: Instrumented
) -> None:
    app.faults.script.append("500")  # refused before the server did anything
    waits: list[float] = []
    api = client(base_url, waits)
    check = ThingCheck(api, "retried")

    assert create_thing_once(api, "retried", check) == 1

    assert THINGS == {"retried": 1}
    assert [status for status, _ in posts(app)] == [500, 201]
    assert check.calls == 1 and len(waits) == 1


def test_write_once_does_not_check_what_never_reached_the_server(
    base_url: str, app: Instrumented
) -> None:
    app.faults.retry_after_seconds = 2
    app.faults.script.append("429")
    waits: list[float] = []
    api = client(base_url, waits)
    check = ThingCheck(api, "limited")

    assert create_thing_once(api, "limited", check) == 1
    assert check.calls == 0 and waits == [2.0]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = client(f"http://127.0.0.1:{port}", waits, max_attempts=3)
    nowhere = ThingCheck(closed, "nowhere")
    with pytest.raises(TargetUnreachableError) as caught:
        create_thing_once(closed, "nowhere", nowhere)
    assert nowhere.calls == 0 and caught.value.attempts == 3


def test_write_once_conflict_after_a_lost_answer_is_checked_again(
    base_url: str, app: Instrumented
) -> None:
    # The first try is applied but answered 500; the check does not see it yet, so the write
    # is sent again and answered "already exists": the second check finds our own write.
    app.faults.script.append("applied-500")
    api = client(base_url, [])
    check = ThingCheck(api, "raced", lagging=1)

    assert create_thing_once(api, "raced", check) == 1

    assert THINGS == {"raced": 1}
    assert [status for status, _ in posts(app)] == [500, 409]
    assert check.calls == 2


def test_write_once_conflict_without_a_lost_answer_is_not_checked(
    base_url: str, app: Instrumented
) -> None:
    THINGS["taken"] = 7
    api = client(base_url, [])
    check = ThingCheck(api, "taken")

    with pytest.raises(TargetConflictError):
        create_thing_once(api, "taken", check)
    assert check.calls == 0


def test_write_once_reports_failure_only_after_checking(base_url: str, app: Instrumented) -> None:
    app.faults.error_every = 1
    app.faults.only_methods = ("POST",)
    waits: list[float] = []
    api = client(base_url, waits, max_attempts=3)
    check = ThingCheck(api, "storm")

    with pytest.raises(TransientError, match=r"did not take effect \(checked\)") as caught:
        create_thing_once(api, "storm", check)

    assert caught.value.attempts == 3 and check.calls == 3 and len(waits) == 2
    assert THINGS == {}


def test_write_once_whose_check_fails_too_is_of_unknown_outcome(
    base_url: str, app: Instrumented
) -> None:
    app.faults.script.append("applied-500")
    api = client(base_url, [])

    def broken_check() -> int | None:
        raise TargetUnreachableError("test: GET /things/x: no answer")

    with pytest.raises(TransientError, match="unknown, the check failed too"):
        api.write_once(
            "POST", "/things", json={"name": "x"}, applied=broken_check, result=lambda r: 0
        )
    assert len(posts(app)) == 1


# -- TLS certificates that cannot be verified --------------------------------------------------
# A raw TLS socket server, not uvicorn: the tests count the connections it accepts.


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "usersync test server")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@contextmanager
def https_server(directory: Path) -> Iterator[tuple[str, Path, list[int]]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate that answers every request
    `200 {"ok": true}`; yields (base URL, its certificate, the connections it accepted)."""
    cert_file, key_file = self_signed_certificate(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    accepted: list[int] = []
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            raw.settimeout(5)
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        request += tls.recv(4096)
                    tls.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b'Content-Length: 12\r\nConnection: close\r\n\r\n{"ok": true}'
                    )
            except (ssl.SSLError, OSError):
                raw.close()  # the client refused the certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", cert_file, accepted
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_an_unverifiable_certificate_fails_at_once_saying_how_to_fix_it(tmp_path: Path) -> None:
    waits: list[float] = []
    with https_server(tmp_path) as (url, _, accepted):
        api = client(f"{url}/rest/api/2", waits)
        with pytest.raises(TargetUnreachableError) as caught:
            api.get_json("/myself")

    message = str(caught.value)
    assert accepted == [1] and waits == [] and caught.value.attempts == 1
    assert message.startswith(
        f"test: GET /myself: the TLS certificate of {url} could not be verified with the "
        "system's CAs (self-signed certificate): give the CA that signed it with ca_file:"
    )
    assert message.endswith("or fix the server's certificate; not retried")
    assert "\n" not in message


def test_an_unverifiable_certificate_is_not_sent_again_for_a_write(tmp_path: Path) -> None:
    waits: list[float] = []
    with https_server(tmp_path) as (url, _, accepted):
        api = client(url, waits)
        with pytest.raises(TargetUnreachableError, match="could not be verified"):
            api.write_once("POST", "/things", json={}, applied=lambda: None, result=lambda r: 0)
    assert accepted == [1] and waits == []


def test_the_ca_file_the_message_asks_for_fixes_it(tmp_path: Path) -> None:
    with https_server(tmp_path) as (url, cert_file, accepted):
        api = ApiClient("test", url, verify=cert_file, retry=RetryPolicy(sleep=lambda _: None))
        assert api.get_json("/ok") == {"ok": True}
    assert accepted == [1]


def test_an_ldap_certificate_failure_is_not_retried_by_the_task() -> None:
    """Whether trying again helps is decided where the LDAP source makes the error."""

    class Failed:
        def __init__(self, error: BaseException) -> None:
            self.error = error

        def result(self) -> None:
            raise self.error

    source = LdapConnections()
    source.config = LdapSourceConfig.model_validate(
        {
            "kind": "ldap",
            "url": "ldaps://ldap.corp:636",
            "bind_dn": "cn=sync,dc=corp",
            "bind_password": {"env": "LDAP_PASSWORD"},
            "user_base_dn": "ou=people,dc=corp",
            "group_base_dn": "ou=groups,dc=corp",
            "tls": {"mode": "ldaps"},
        }
    )
    untrusted = source._connect_error(
        "ldaps://ldap.corp:636",
        OSError(
            "socket ssl wrapping error: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
            "failed: unable to get local issuer certificate (_ssl.c:1006)"
        ),
    )
    down = source._connect_error(
        "ldaps://ldap.corp:636",
        OSError("socket connection error while opening: [Errno 111] Connection refused"),
    )

    assert "tls.ca_file" in str(untrusted)
    assert untrusted.transient is False
    assert down.transient is True
    assert retry_transient(None, None, Failed(untrusted)) is False
    assert retry_transient(None, None, Failed(down)) is True


def test_a_source_read_over_http_raises_the_source_family_and_is_not_retried_again() -> None:
    """The client retried the 503s already: the source's error says so, and no task retries."""
    answers = iter([503, 503, 503])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(answers), json={"detail": "busy"})

    api = ApiClient(
        "scim",
        "http://idp.example",
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=3, sleep=lambda _: None),
        errors=source_error_of,
    )
    with pytest.raises(SourceUnreachableError) as caught:
        api.get_json("/Users")
    assert not isinstance(caught.value, TargetError)
    assert caught.value.status == 503
    assert caught.value.transient is False
