"""Profiles written to hurt: credentials sent in clear, URLs carrying passwords or control
characters, absurd names, YAML alias bombs. Each is refused in one line naming where, before
anything connects, and none of them slows down or breaks the validation of another profile."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from usersync_cli.main import main

from usersync.config import TargetConfig

REPO = Path(__file__).resolve().parents[1]
GROUPS_HEADER = "source_group,target_group,mode,targets\n"

SOURCE = "source: {kind: miniorange-push}\n"
JIRA = "targets:\n  jira:\n    kind: jira\n    url: {url}\n    auth: {{kind: {auth}}}\n"
AUTH = {
    "basic": "basic, username: svc, password: {env: JIRA_PASSWORD}",
    "token": "token, token: {prefect_secret: jira-pat}",
}


@pytest.fixture
def mappings(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "mappings"
    root.mkdir()
    monkeypatch.setenv("USERSYNC_MAPPINGS_DIR", str(root))
    return root


def write_profile(root: Path, name: str, text: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "groups.csv").write_text(GROUPS_HEADER)
    (folder / "profile.yaml").write_text(text)
    return folder / "profile.yaml"


def jira_profile(url: str, auth: str = "basic", extra: str = "") -> str:
    return SOURCE + JIRA.format(url=url, auth=AUTH[auth]) + extra


def refused(name: str, capsys) -> str:
    """Validate `name`, expect it refused as bad input, return what was printed (stderr)."""
    assert main(["validate", name]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    return err


# -- 1. credentials over cleartext ----------------------------------------------------------


@pytest.mark.parametrize("auth", ["basic", "token"])
def test_a_cleartext_target_on_another_host_is_refused_unless_allowed(mappings, capsys, auth):
    write_profile(mappings, "corp", jira_profile("http://jira.corp.example.com/jira", auth))
    err = refused("corp", capsys)
    problem = err.splitlines()[-1]
    assert problem.startswith("  targets.jira: ")
    assert "http:// would send the" in problem and "jira.corp.example.com" in problem
    assert "use https://, or set allow_cleartext: true" in problem

    (mappings / "corp" / "profile.yaml").write_text(
        jira_profile("http://jira.corp.example.com/jira", auth, "    allow_cleartext: true\n")
    )
    assert main(["validate", "corp"]) == 0
    assert "target jira: jira http://jira.corp.example.com/jira" in capsys.readouterr().out


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8081/jira",
        "http://127.45.6.7/jira",
        "http://localhost:8081",
        "http://LOCALHOST./jira",
        "http://[::1]:8081/jira",
        "https://jira.corp.example.com",
    ],
)
def test_loopback_and_https_targets_need_no_opt_in(url):
    config = TargetConfig.model_validate(
        {"kind": "jira", "url": url, "auth": {"kind": "token", "token": {"env": "T"}}}
    )
    assert config.allow_cleartext is False


@pytest.mark.parametrize(
    "source",
    [
        "{kind: scim, url: 'http://idp.corp.example.com/scim/v2', token: {env: SCIM_TOKEN}}",
        "{kind: miniorange, url: 'http://login.example.com', customer_key: c, api_key: {env: K}}",
    ],
)
def test_a_cleartext_source_on_another_host_is_refused_unless_allowed(mappings, capsys, source):
    target = JIRA.format(url="https://jira.example.com", auth=AUTH["token"])
    write_profile(mappings, "idp", f"source: {source}\n{target}")
    problem = refused("idp", capsys).splitlines()[-1]
    assert problem.startswith("  source: ") and "use https://, or set allow_cleartext" in problem

    allowed = source.replace("{kind:", "{allow_cleartext: true, kind:")
    (mappings / "idp" / "profile.yaml").write_text(f"source: {allowed}\n{target}")
    assert main(["validate", "idp"]) == 0


def test_the_shipped_profiles_need_no_opt_in(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("USERSYNC_MAPPINGS_DIR", str(REPO / "mappings"))
    for folder in sorted((REPO / "mappings").iterdir()):
        assert main(["validate", folder.name]) == 0, capsys.readouterr().err
    assert "allow_cleartext:" not in "".join(
        p.read_text() for p in (REPO / "mappings").glob("*/profile.yaml")
    )


# -- 2. URLs with a password or control characters ------------------------------------------

SECRET = "Sup3rS3cret"

#: (where in the profile, the profile) for a URL with a user name and password in it.
URLS_WITH_PASSWORDS = [
    ("targets.jira.url", jira_profile(f"'https://svc:{SECRET}@jira.example.com'")),
    (
        "source.url",
        f"source: {{kind: scim, url: 'https://svc:{SECRET}@idp.example.com/scim/v2', "
        "token: {env: T}}\n" + JIRA.format(url="https://jira.example.com", auth=AUTH["token"]),
    ),
    (
        "source.url",
        f"source: {{kind: miniorange, url: 'https://a:{SECRET}@login.example.com', "
        "customer_key: c, api_key: {env: K}}\n"
        + JIRA.format(url="https://jira.example.com", auth=AUTH["token"]),
    ),
    (
        "source.url",
        f"source: {{kind: ldap, url: 'ldaps://cn=admin:{SECRET}@ldap.example.com', "
        "tls: {mode: ldaps}, bind_dn: cn=x, bind_password: {env: P}, user_base_dn: dc=x, "
        "group_base_dn: dc=x}\n" + JIRA.format(url="https://jira.example.com", auth=AUTH["token"]),
    ),
    (
        "source.store_url",
        f"source: {{kind: miniorange-push, store_url: 'postgresql://usersync:{SECRET}@db/sync'}}\n"
        + JIRA.format(url="https://jira.example.com", auth=AUTH["token"]),
    ),
]


@pytest.mark.parametrize(("where", "text"), URLS_WITH_PASSWORDS)
def test_a_password_in_a_url_is_refused_without_being_echoed(mappings, capsys, where, text):
    write_profile(mappings, "leaky", text)
    err = refused("leaky", capsys)
    assert SECRET not in err
    problems = err.splitlines()[1:]
    assert len(problems) == 1 and problems[0].startswith(f"  {where}: ")
    assert "password" in problems[0] and "secret reference" in problems[0]


def test_a_store_url_may_name_its_database_user(mappings, capsys):
    write_profile(
        mappings,
        "push",
        "source: {kind: miniorange-push, store_url: 'postgresql://usersync@db.example.com/s'}\n"
        + JIRA.format(url="https://jira.example.com", auth=AUTH["token"]),
    )
    assert main(["validate", "push"]) == 0


def test_a_user_name_alone_in_a_target_url_is_refused_too(mappings, capsys):
    write_profile(mappings, "corp", jira_profile("'https://svc@jira.example.com'"))
    problem = refused("corp", capsys).splitlines()[-1]
    assert problem.startswith("  targets.jira.url: ") and "user name" in problem


@pytest.mark.parametrize(
    "escaped",
    ["\\n", "\\r", "\\t", "\\x00", "\\x1b", "\\x7f", "\\x85", "\\x9b", " ", "\\u00a0", "\\u2028"],
)
def test_a_control_character_or_space_in_a_url_is_refused_on_one_line(mappings, capsys, escaped):
    # Double-quoted YAML, so the escape becomes the character itself.
    write_profile(mappings, "corp", jira_profile(f'"https://jira.example.com/{escaped}evil"'))
    err = refused("corp", capsys)
    lines = err.splitlines()
    assert len(lines) == 2 and "evil" not in err
    assert lines[1].startswith("  targets.jira.url: ")
    assert "control character or white space (character 26" in lines[1]


def test_a_control_character_from_an_environment_variable_is_refused(mappings, capsys, monkeypatch):
    monkeypatch.setenv("SCIM_URL", "https://idp.example.com/scim\r\nX-Injected: 1")
    write_profile(
        mappings,
        "idp",
        "source: {kind: scim, url: '${SCIM_URL}', token: {env: T}}\n"
        + JIRA.format(url="https://jira.example.com", auth=AUTH["token"]),
    )
    err = refused("idp", capsys)
    assert "X-Injected" not in err and err.splitlines()[-1].startswith("  source.url: ")


def test_a_url_with_a_port_that_is_not_a_number_is_refused(mappings, capsys):
    write_profile(mappings, "corp", jira_profile("https://jira.example.com:http/jira"))
    assert "port" in refused("corp", capsys).splitlines()[-1]


# -- 3. names too long for a folder ---------------------------------------------------------


@pytest.mark.parametrize("command", [["validate"], ["inbox", "token"], ["check"]])
def test_a_300_character_profile_name_is_one_line(mappings, capsys, command):
    assert main([*command, "a" * 300]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "is 300 characters long: at most 100" in err


def test_a_profile_name_with_a_trailing_newline_is_refused(mappings, capsys):
    assert main(["validate", "demo\n"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "profile name 'demo\\n' is not valid" in err


# -- 4. YAML alias bombs --------------------------------------------------------------------


def alias_bomb(levels: int, width: int = 9) -> str:
    """`levels` anchored lists, each aliasing the previous `width` times: width**levels strings
    from a file of a few hundred bytes ("billion laughs")."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + f"\nsettings: {{protected_usernames: *l{levels - 1}}}\n"


def run_cli(root: Path, *args: str, timeout: float = 10) -> tuple[int, str, float, float]:
    """Run `usersync` in a child process (killed after `timeout`): exit status, stderr,
    seconds taken, and the child's peak resident memory in MB. The peak is the process's own
    (VmHWM): getrusage's ru_maxrss keeps the high-water mark of the address space the child
    was forked from, so a test session grown past 900 MB failed these checks."""
    code = (
        "import sys\n"
        "from usersync_cli.main import main\n"
        "status = main(sys.argv[1:])\n"
        "status_lines = open('/proc/self/status').read().splitlines()\n"
        "peak = next(line.split()[1] for line in status_lines if line.startswith('VmHWM:'))\n"
        "print(f'peak_kb={peak}', file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    env = {**os.environ, "USERSYNC_MAPPINGS_DIR": str(root)}
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    elapsed = time.monotonic() - began
    err, _, peak = done.stderr.rpartition("peak_kb=")
    return done.returncode, err, elapsed, int(peak) / 1024


def test_an_alias_bomb_beside_a_profile_does_not_hold_up_its_validation(mappings):
    # 9**9 (387 million) strings once expanded: unbounded, this takes minutes and gigabytes.
    write_profile(mappings, "bomb", jira_profile("https://jira.example.com") + alias_bomb(9))
    write_profile(mappings, "good", jira_profile("https://jira.example.com"))
    status, err, seconds, peak_mb = run_cli(mappings, "validate", "good")
    assert (status, err) == (0, "")
    assert seconds < 10 and peak_mb < 900  # the bomb expanded is gigabytes


def test_an_alias_bomb_is_refused_in_one_line_naming_the_file(mappings):
    path = write_profile(mappings, "bomb", jira_profile("https://jira.example.com") + alias_bomb(9))
    status, err, _, peak_mb = run_cli(mappings, "validate", "bomb")
    assert status == 2 and peak_mb < 900
    assert err.count("\n") == 1
    assert err.startswith(f"error: {path}: more than 100000 values once its aliases (*name) are")


def test_an_alias_that_contains_itself_is_refused(mappings, capsys):
    path = write_profile(
        mappings, "loop", jira_profile("https://jira.example.com") + "loop: &loop [*loop]\n"
    )
    err = refused("loop", capsys)
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: an alias (*name) refers to")


def test_nesting_too_deep_for_the_parser_is_refused(mappings, capsys):
    path = write_profile(
        mappings, "deep", jira_profile("https://jira.example.com") + "x: " + "[" * 5000 + "]" * 5000
    )
    err = refused("deep", capsys)
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: nested too deeply")


def test_an_oversized_profile_is_refused_before_it_is_parsed(mappings, capsys):
    path = write_profile(
        mappings, "huge", jira_profile("https://jira.example.com") + "#" * (2 << 20) + "\n"
    )
    err = refused("huge", capsys)
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: 2.0 MiB, more than")


def test_anchors_and_merge_keys_of_an_ordinary_profile_still_work(mappings, capsys):
    write_profile(
        mappings,
        "anchors",
        SOURCE + "targets:\n"
        "  jira: &product\n"
        "    kind: jira\n"
        "    url: https://jira.example.com\n"
        "    auth: &auth {kind: token, token: {prefect_secret: pat}}\n"
        "  jira2:\n"
        "    <<: *product\n"
        "    url: https://jira2.example.com\n"
        "  wiki: {kind: confluence, url: 'https://wiki.example.com', auth: *auth}\n",
    )
    assert main(["validate", "anchors"]) == 0
    assert "target jira2: jira https://jira2.example.com (token auth)" in capsys.readouterr().out
