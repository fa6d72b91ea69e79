"""`usersync inbox serve` as an administrator runs it: HTTPS with a certificate, a loud warning
for plain HTTP off loopback, and Prefect events to the configured API only (without one, no
temporary Prefect server is started and answers stay fast)."""

from __future__ import annotations

import os
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from usersync_cli.main import main
from usersync_sandbox.slapd import make_test_certificates

from tests.inbox.harness import child_pids, inbox_process
from usersync.inbox import issue_token
from usersync.store import Store

USER = {
    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
    "userName": "kim",
    "name": {"givenName": "Kim", "familyName": "Doe"},
}


def _store_with_token(tmp_path: Path, profile: str = "acme") -> tuple[str, str]:
    url = f"sqlite:///{tmp_path}/store.db"
    store = Store.open(url)
    token = issue_token(store.engine, profile).token
    store.close()
    return url, token


def test_tls_is_served_with_the_given_certificate(tmp_path: Path) -> None:
    certificates = make_test_certificates(tmp_path / "tls")
    url, token = _store_with_token(tmp_path)
    tls = ["--tls-cert", str(certificates.cert_file), "--tls-key", str(certificates.key_file)]
    ca = ssl.create_default_context(cafile=str(certificates.ca_file))
    with inbox_process(url, *tls, scheme="https", verify=ca) as inbox:
        created = httpx.post(
            f"{inbox.url}/scim/v2/acme/Users",
            json=USER,
            headers={"Authorization": f"Bearer {token}"},
            verify=ca,
        )
        assert created.status_code == 201
        assert created.json()["meta"]["location"].startswith("https://")
        with pytest.raises(httpx.TransportError):  # plain HTTP is not answered
            httpx.get(inbox.url.replace("https://", "http://") + "/scim/v2/acme/Users")
    assert "https://127.0.0.1" in "".join(inbox.stdout)
    assert "WARNING" not in "".join(inbox.stderr)


def test_the_served_inbox_closes_a_connection_whose_headers_never_end(tmp_path: Path) -> None:
    import socket

    url, token = _store_with_token(tmp_path)
    with inbox_process(url, "--header-timeout-seconds", "1") as inbox:
        host, port = inbox.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"POST /scim/v2/acme/Users HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            answer = slow.recv(1024)
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert waited < 8
        created = httpx.post(
            f"{inbox.url}/scim/v2/acme/Users",
            json=USER,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201


def test_tls_options_go_together(tmp_path: Path, capsys) -> None:
    assert main(["inbox", "serve", "--tls-cert", str(tmp_path / "c.pem")]) == 2
    assert "--tls-key" in capsys.readouterr().err
    missing = ["--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")]
    assert main(["inbox", "serve", *missing]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.fixture
def no_server(monkeypatch) -> list[dict]:
    """`uvicorn.run` records its arguments instead of serving."""
    runs: list[dict] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: runs.append(options))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return runs


@pytest.mark.parametrize(
    ("host", "warned"),
    [
        ("0.0.0.0", True),
        ("192.0.2.10", True),
        ("inbox.example.org", True),
        ("::", True),
        ("127.0.0.1", False),
        ("localhost", False),
        ("::1", False),
    ],
)
def test_plain_http_off_loopback_is_warned_about_loudly(
    tmp_path: Path, host: str, warned: bool, no_server, capsys, caplog
) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    assert main(["inbox", "serve", "--host", host, "--store-url", store]) == 0
    assert no_server[0]["host"] == host and no_server[0]["ssl_certfile"] is None
    err = capsys.readouterr().err
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if warned:
        assert f"WARNING: the SCIM inbox listens on {host} over plain HTTP" in err
        assert any("plain HTTP" in message for message in logged)
    else:
        assert "WARNING" not in err
        assert not any("plain HTTP" in message for message in logged)


def test_tls_off_loopback_is_not_warned_about(tmp_path: Path, no_server, capsys) -> None:
    certificates = make_test_certificates(tmp_path / "tls")
    tls = ["--tls-cert", str(certificates.cert_file), "--tls-key", str(certificates.key_file)]
    store = f"sqlite:///{tmp_path}/store.db"
    assert main(["inbox", "serve", "--host", "0.0.0.0", *tls, "--store-url", store]) == 0
    assert no_server[0]["ssl_certfile"] == str(certificates.cert_file)
    assert no_server[0]["ssl_keyfile"] == str(certificates.key_file)
    assert "WARNING" not in capsys.readouterr().err


def test_without_a_prefect_api_no_server_is_started_and_answers_stay_fast(
    tmp_path: Path,
) -> None:
    url, token = _store_with_token(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    # What Prefect's stock "ephemeral" profile sets: emit_event would start a server.
    env |= {"PREFECT_SERVER_EPHEMERAL_ENABLED": "true", "PREFECT_HOME": str(tmp_path / "p")}
    with inbox_process(url, env=env) as inbox:
        headers = {"Authorization": f"Bearer {token}"}
        started = time.monotonic()
        created = httpx.post(
            f"{inbox.url}/scim/v2/acme/Users", json=USER, headers=headers, timeout=60
        )
        elapsed = time.monotonic() - started
        assert created.status_code == 201
        assert elapsed < 2, f"the first write took {elapsed:.1f} s"
        renamed = httpx.put(
            f"{inbox.url}/scim/v2/acme/Users/{created.json()['id']}",
            json={**USER, "displayName": "Kim D."},
            headers=headers,
        )
        assert renamed.status_code == 200
        time.sleep(1.5)
        assert child_pids(inbox.pid) == []
    assert any("Prefect events: off, PREFECT_API_URL is not set" in line for line in inbox.stdout)


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    """A Prefect API: the session's test harness when one runs, else one for this module."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    if PREFECT_API_URL.value():
        yield str(PREFECT_API_URL.value())
        return
    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())


@pytest.mark.prefect
def test_with_a_prefect_api_the_change_event_arrives(tmp_path: Path, prefect_api: str) -> None:
    profile = f"acme-{uuid.uuid4().hex[:8]}"
    url, token = _store_with_token(tmp_path, profile)
    env = dict(os.environ) | {"PREFECT_API_URL": prefect_api}
    with inbox_process(url, env=env) as inbox:
        created = httpx.post(
            f"{inbox.url}/scim/v2/{profile}/Users",
            json=USER,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201
        query = {
            "filter": {
                "event": {"name": ["usersync.inbox.changed"]},
                "resource": {"id": [f"usersync.profile.{profile}"]},
            },
            "limit": 10,
        }
        events: list[dict] = []
        deadline = time.monotonic() + 60
        while not events and time.monotonic() < deadline:
            time.sleep(0.5)
            events = httpx.post(f"{prefect_api}/events/filter", json=query).json()["events"]
    assert any(
        f"Prefect events: usersync.inbox.changed to {prefect_api}" in line for line in inbox.stdout
    )
    assert len(events) == 1
    assert events[0]["payload"]["last"] == {"method": "POST", "path": "/Users", "status": 201}
