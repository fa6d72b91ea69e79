"""What a log line may show: credentials in URLs hidden, long values cut, whoever logs them.

Bitbucket takes a new account's password as a query parameter, and httpx logs every request
URL at INFO (httpcore more at DEBUG), so any embedding script's `logging.basicConfig(level=
logging.INFO)` or Prefect logging setting would print it. Handlers and levels are the
embedder's to choose, so the rule is enforced where every record is made: a log record
factory (`install_log_redaction`, installed when `usersync` is imported) rewrites each record
of every logger of the process before any filter, handler or formatter sees it. In a URL or a
`name=value` list, the value of a parameter `is_sensitive_parameter` names is replaced by
`***` (also one URL level down, percent-encoded), as is the password of `user:password@`
userinfo and the credential of an `Authorization` header. Each line of a value interpolated
into a message is cut to `VALUE_CHARS` characters (a refused 5,000-character name stays
readable in the log), each line of the message itself and of other values (an error's text,
whose end often says what to do) to `LINE_CHARS`; the cut says how much it hid.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote_plus

MASK = "***"

#: A string argument of a log call (a name, a URL, a reason) is cut beyond this, per line.
VALUE_CHARS = 200
#: Any other line: of the message itself, of an error's or object's text, of a traceback.
LINE_CHARS = 2000

#: Parameter names (lowercased, without `-`, `_`, `.`) whose values are credentials.
_SENSITIVE_NAMES = frozenset({"pass", "pwd", "sig", "sessionid", "jsessionid"})
#: ... and the endings that make a name one (`new_password`, `client_secret`, `x-api-key`).
#: Not a bare `key`: Jira's user keys and Confluence's space keys are identifiers a reader of
#: the log needs.
_SENSITIVE_ENDINGS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "secretkey",
    "privatekey",
    "signature",
    "credential",
    "credentials",
)

#: `name=value` in a query string, a form body or prose: the value ends where the parameter
#: does (`&`, `;`, `#`), at white space or at a quote. Percent-encoded characters stay inside.
_PARAMETER = re.compile(r"(?<![\w.~+%-])(?P<name>[\w.~+%-]+)=(?P<value>[^&;#\s\"'<>]+)")
#: The same one level down, in a URL carried percent-encoded by another (`?next=https%3A%2F%2F
#: host%2Fx%3Fpassword%3Dsecret%26a%3D1`): `%3D` for `=`, ending at `%26` (`&`) or `%23` (`#`).
_ENCODED_PARAMETER = re.compile(
    r"(?:(?<=%3[Ff])|(?<=%26)|(?<![\w.~+%-]))(?P<name>[\w.~+-]+)%3[Dd]"
    r"(?P<value>(?:(?!%26|%23|%3[Bb])[^&;#\s\"'<>])+)"
)
#: `scheme://user:password@host`: the password runs to the last `@` before the path.
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:\"'<>]*):(?P<password>[^\s/?#\"'<>]+)@"
)
#: `Authorization: Basic …`, `'Authorization': 'Bearer …'`, `authorization=…`.
_AUTHORIZATION = re.compile(
    r"(?P<head>\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:basic|bearer|token)\s+)?)"
    r"(?P<credential>[^\s\"',;}]+)",
    re.IGNORECASE,
)
#: Only text holding one of these can hold what the patterns above hide (a fast way out).
_CLUES = ("=", "%3D", "%3d", "@", "uthorization", "UTHORIZATION")


def is_sensitive_parameter(name: str) -> bool:
    """Whether a URL or form parameter called `name` carries a credential.

    `password`, `passwd`, `pwd`, `pass`, `token`, `access_token`, `api_key`, `apikey`,
    `secret`, `client_secret`, `X-Amz-Signature`, `sig`, `jsessionid` and the like, in any
    case, with `-`, `_` or `.` anywhere and percent-encoded or not.
    """
    plain = re.sub(r"[-_.]", "", unquote_plus(name).casefold())
    return plain in _SENSITIVE_NAMES or plain.endswith(_SENSITIVE_ENDINGS)


def _mask_value(match: re.Match[str]) -> str:
    if not is_sensitive_parameter(match["name"]):
        return match[0]
    return match[0][: match.start("value") - match.start()] + MASK


def redact(text: str) -> str:
    """`text` with every credential the module's rules know replaced by `***`.

    Query and form values of sensitive parameters (`?name=bob&password=***`), the same in a
    percent-encoded URL inside another, `user:***@` userinfo, and `Authorization` header
    credentials. Idempotent; text without a clue (`=`, `@`, "authorization") is returned as is.
    """
    if not any(clue in text for clue in _CLUES):
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = _PARAMETER.sub(_mask_value, text)
    text = _ENCODED_PARAMETER.sub(_mask_value, text)
    return _AUTHORIZATION.sub(lambda m: m["head"] + MASK, text)


def cut(text: str, limit: int) -> str:
    """`text` with each line longer than `limit` characters cut to `limit`, marker included.

    The marker says how many characters were hidden: `aaaa…[+4815 chars]`. Idempotent.
    """
    if len(text) <= limit:
        return text
    return "\n".join(_cut_line(line, limit) for line in text.split("\n"))


def _cut_line(line: str, limit: int) -> str:
    if len(line) <= limit:
        return line
    kept = limit
    while True:
        marker = f"…[+{len(line) - kept} chars]"
        if kept + len(marker) <= limit or kept == 0:
            return line[:kept] + marker
        kept = max(0, limit - len(marker))


def _cleaned(value: Any, limit: int) -> Any:
    """`value` itself if showing it hides nothing, else its text redacted and cut to `limit`."""
    if value is None or isinstance(value, int | float | complex):
        return value
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # the handler's formatting will report it, as without us
        return value
    shown = cut(redact(text), limit)
    return value if shown == text else shown


def _cleaned_arg(value: Any) -> Any:
    return _cleaned(value, VALUE_CHARS if isinstance(value, str) else LINE_CHARS)


def scrub_record(record: logging.LogRecord) -> None:
    """Rewrite a record in place so that no formatting of it shows a credential or a huge value.

    The arguments are cleaned one by one, keeping the message's template (and each argument
    that needs no change, with its type) for formatters that read them. A template that
    itself holds a credential or an over-long line is formatted once and replaced by its
    cleaned text. An exception's or stack's text is cleaned too when it holds something to
    hide.
    """
    if isinstance(record.args, Mapping):
        record.args = {key: _cleaned_arg(value) for key, value in record.args.items()}
    elif isinstance(record.args, tuple):
        record.args = tuple(_cleaned_arg(value) for value in record.args)
    if not record.args:
        record.msg = _cleaned(record.msg, LINE_CHARS)
    elif isinstance(record.msg, str) and _cleaned(record.msg, LINE_CHARS) is not record.msg:
        try:
            whole = record.getMessage()
        except Exception:  # left for the handler to report, as without us
            return
        record.msg, record.args = cut(redact(whole), LINE_CHARS), ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        shown = cut(redact(text), LINE_CHARS)
        if shown != text:
            record.exc_text = shown
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


_INSTALL_LOCK = threading.Lock()


def install_log_redaction() -> None:
    """Make every log record of the process pass through `scrub_record`, once.

    Wraps the current log record factory (so a factory installed earlier still runs first);
    calling it again does nothing. Records are made only for enabled levels, so a quiet
    logger costs nothing.
    """
    with _INSTALL_LOCK:
        current = logging.getLogRecordFactory()
        if getattr(current, "usersync_redaction", False):
            return
        logging.setLogRecordFactory(_redacting(current))


def _redacting(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        scrub_record(record)
        return record

    factory.usersync_redaction = True  # type: ignore[attr-defined]
    return factory
