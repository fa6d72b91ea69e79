"""No log line shows a credential or a huge value, whoever logs it and however logging is set up.

The end-to-end test turns every logger of the process up to DEBUG, has the Bitbucket client
create an account in the sandbox emulator (its password travels in the query string, which
httpx logs), and reads every record the process made, from whatever logger, formatted. The
others pin the rules: which URL forms are redacted, what is cut and how, and that the rules
hold for records of any logger and any entry point.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.targets.harness_bitbucket import environment
from usersync.redaction import (
    VALUE_CHARS,
    cut,
    install_log_redaction,
    is_sensitive_parameter,
    redact,
)

ROOT = Path(__file__).resolve().parents[1]
FORMAT = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")


@pytest.fixture
def every_record() -> Iterator[list[logging.LogRecord]]:
    """Every record any logger of the process makes, all loggers at DEBUG, root handler on."""
    made: list[logging.LogRecord] = []
    inner = logging.getLogRecordFactory()

    def recording(*args: object, **kwargs: object) -> logging.LogRecord:
        record = inner(*args, **kwargs)
        made.append(record)
        return record

    root = logging.getLogger()
    level = root.level
    handler = logging.NullHandler()
    logging.setLogRecordFactory(recording)
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield made
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        logging.setLogRecordFactory(inner)


def shown(records: list[logging.LogRecord]) -> list[str]:
    return [FORMAT.format(record) for record in records]


def test_a_bitbucket_password_is_in_no_log_record(every_record: list[logging.LogRecord]) -> None:
    with environment() as env:
        env.target.create_user("newbie", "newbie@example.com", "New Bie")
        password = env.emulator.users["newbie"].password
        sent = [r for r in env.emulator.app.requests if r.path.endswith("/admin/users")]

    lines = shown(every_record)
    assert sent and sent[0].query["password"] == password  # it did travel in the URL
    assert [line for line in lines if password in line or "admin-secret" in line] == []
    assert set(re.findall(r"password=([^&\s\"]*)", "\n".join(lines))) == {"***"}
    # httpx did log the call (so the test can fail), with the other parameters intact
    assert any(
        " httpx INFO HTTP Request: POST http" in line
        and "/admin/users?name=newbie&" in line
        and "&password=***&" in line
        for line in lines
    )


@pytest.mark.parametrize("logger", ["httpx", "httpcore.http11", "usersync.x", "prefect.flows"])
def test_records_of_any_logger_are_redacted_whatever_its_handlers(
    logger: str, every_record: list[logging.LogRecord]
) -> None:
    own: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: own.append(handler.format(record))  # type: ignore[method-assign]
    log = logging.getLogger(logger)
    log.addHandler(handler)
    log.propagate = False
    url = "https://h/x?access_token=hunter2"
    try:
        log.info("%s %s", "POST", httpx.URL("https://h/x?name=a&password=hunter2"))
        log.info("%(url)s took %(ms)d ms", {"url": "https://u:hunter2@h/x", "ms": 5})
        log.warning("GET " + url + " answered %s in %d ms", "ok", 5)
        try:
            raise RuntimeError("lost https://h/x?api_key=hunter2")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
        log.propagate = True

    texts = own + shown(every_record)
    assert len(own) == 4 and [t for t in texts if "hunter2" in t] == []
    assert own[:3] == [
        "POST https://h/x?name=a&password=***",
        "https://u:***@h/x took 5 ms",
        "GET https://h/x?access_token=*** answered ok in 5 ms",
    ]
    assert "RuntimeError: lost https://h/x?api_key=***" in own[3]


def test_arguments_that_hide_nothing_keep_their_types(
    every_record: list[logging.LogRecord],
) -> None:
    logging.getLogger("usersync.x").info("%s: %d %r", "GET /a?key=JIRAUSER1", 3, "b")

    (record,) = every_record
    assert record.args == ("GET /a?key=JIRAUSER1", 3, "b")
    assert record.getMessage() == "GET /a?key=JIRAUSER1: 3 'b'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'POST http://h/rest/api/1.0/admin/users?name=bob&password=Ab_c-9&notify=false "204"',
            'POST http://h/rest/api/1.0/admin/users?name=bob&password=***&notify=false "204"',
        ),
        # repeated parameters, and several sensitive names in one query
        (
            "/x?password=one&password=two&token=t&client_secret=s&APIKEY=k&X-Api-Key=k",
            "/x?password=***&password=***&token=***&client_secret=***&APIKEY=***&X-Api-Key=***",
        ),
        # percent-encoded values (an encoded & does not end the value) and names
        ("/x?password=p%40ss%26w0rd&b=1", "/x?password=***&b=1"),
        ("/x?pass%77ord=secret", "/x?pass%77ord=***"),
        # a URL carried percent-encoded inside another
        (
            "/login?next=https%3A%2F%2Fh%2Fx%3Fa%3D1%26access_token%3Dsecret%26b%3D2",
            "/login?next=https%3A%2F%2Fh%2Fx%3Fa%3D1%26access_token%3D***%26b%3D2",
        ),
        # userinfo, with an @ in the password
        ("https://admin:s3cr@t@jira.corp:8443/rest", "https://admin:***@jira.corp:8443/rest"),
        ("ldaps://cn=x:pw@ldap.corp/dc=corp", "ldaps://cn=x:***@ldap.corp/dc=corp"),
        # matrix parameters, fragments, form bodies, headers
        ("/app;jsessionid=ABC123", "/app;jsessionid=***"),
        (
            "grant_type=client_credentials&client_secret=xyz",
            "grant_type=client_credentials&client_secret=***",
        ),
        ("{'Authorization': 'Bearer abc.def'}", "{'Authorization': 'Bearer ***'}"),
        ("Authorization: Basic YWRtaW46eA==", "Authorization: Basic ***"),
        # what is not a credential stays
        (
            "http://h:8080/x?key=JIRAUSER10100&spaceKey=DS&email=a@b.com&code=500",
            "http://h:8080/x?key=JIRAUSER10100&spaceKey=DS&email=a@b.com&code=500",
        ),
        ("Basic authentication is refused", "Basic authentication is refused"),
    ],
)
def test_url_forms(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected


@pytest.mark.parametrize(
    ("name", "sensitive"),
    [
        ("password", True),
        ("Password", True),
        ("newPassword", True),
        ("passwd", True),
        ("pwd", True),
        ("access_token", True),
        ("refresh-token", True),
        ("api_key", True),
        ("apiKey", True),
        ("client.secret", True),
        ("X-Amz-Signature", True),
        ("sig", True),
        ("key", False),
        ("userKey", False),
        ("name", False),
        ("max_tokens", False),
        ("password_policy", False),
    ],
)
def test_which_parameters_are_sensitive(name: str, sensitive: bool) -> None:
    assert is_sensitive_parameter(name) is sensitive


def test_a_long_value_is_cut_with_a_marker(every_record: list[logging.LogRecord]) -> None:
    name = "n" * 5000
    logging.getLogger("usersync.x").warning("jira: not provisioned: %s: refused", name)

    (line,) = [record.getMessage() for record in every_record]
    assert len(line) <= VALUE_CHARS + 40
    assert line.startswith("jira: not provisioned: nnnn") and line.endswith(" chars]: refused")
    assert re.search(r"n…\[\+4\d{3} chars\]", line)


def test_only_long_lines_of_a_value_are_cut_and_an_errors_text_keeps_its_end(
    every_record: list[logging.LogRecord],
) -> None:
    summary = "\n".join(f"jira: {n} user(s) created" for n in range(50))
    error = RuntimeError("x" * 500 + " give the CA with ca_file:")
    log = logging.getLogger("usersync.x")
    log.info("summary:\n%s", summary)
    log.error("%s: %s", "jira", error)

    assert [record.getMessage() for record in every_record] == [
        f"summary:\n{summary}",
        f"jira: {error}",
    ]


def test_cut_says_what_it_hid_and_is_idempotent() -> None:
    once = cut("a" * 5000, 200)
    assert len(once) == 200 and once.endswith("a…[+4814 chars]")
    assert cut(once, 200) == once
    assert cut("short\n" + "b" * 300, 100).split("\n")[0] == "short"


def test_installing_twice_wraps_once() -> None:
    before = logging.getLogRecordFactory()
    install_log_redaction()
    assert logging.getLogRecordFactory() is before


@pytest.mark.parametrize("entry_point", ["usersync_cli.main", "usersync.config", "usersync.http"])
def test_an_embedding_script_s_info_logging_shows_no_password(entry_point: str) -> None:
    script = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        f"import {entry_point}, httpx\n"
        "logging.getLogger('httpx').info('HTTP Request: %s %s', 'POST',"
        " httpx.URL('http://h/rest/api/1.0/admin/users?name=a&password=hunter2'))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "admin/users?name=a&password=***" in run.stderr and "hunter2" not in run.stderr
