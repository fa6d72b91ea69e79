"""Test Connection: a wrong token, an unreachable URL and an account without admin rights are
three different, clear failures; a good target and a ready inbox pass; nothing is written."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from usersync_cli.main import main
from usersync_sandbox.confluence import ConfluenceEmulator
from usersync_sandbox.jira import JiraEmulator
from usersync_sandbox.server import serve

from usersync import sync
from usersync.connection import check_connections, connection_markdown
from usersync.inbox import issue_token
from usersync.store import Store

ADMIN_PASSWORD = "admin-pw"
PLAIN_PASSWORD = "plain-pw"
GOOD_TOKEN = "admin-pat"


def _write_profile(root: Path, name: str, jira_url: str, store_url: str) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    base = {"timeout_seconds": 5, "max_attempts": 1}
    profile = {
        "source": {"kind": "miniorange-push", "store_url": store_url},
        "targets": {
            "good": {
                "kind": "jira",
                "url": jira_url,
                **base,
                "auth": {"kind": "token", "token": {"env": "TC_GOOD_TOKEN"}},
            },
            "wrong-token": {
                "kind": "jira",
                "url": jira_url,
                **base,
                "auth": {"kind": "token", "token": {"env": "TC_WRONG_TOKEN"}},
            },
            "unreachable": {
                "kind": "jira",
                "url": "http://127.0.0.1:9",
                **base,
                "auth": {"kind": "token", "token": {"env": "TC_GOOD_TOKEN"}},
            },
            "not-admin": {
                "kind": "jira",
                "url": jira_url,
                **base,
                "auth": {
                    "kind": "basic",
                    "username": "plain",
                    "password": {"env": "TC_PLAIN_PASSWORD"},
                },
            },
        },
    }
    (folder / "profile.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
    (folder / "attributes.csv").write_text(
        "target,source,transform,regex,replacement,template,default\n"
        "username,userName,,,,,\nemail,email,,,,,\ndisplay_name,displayName,,,,,\n",
        encoding="utf-8",
    )
    (folder / "groups.csv").write_text("source_group,target_group,mode,targets\n", "utf-8")


@pytest.fixture
def checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    jira = JiraEmulator(admin=("admin", ADMIN_PASSWORD))
    jira.add_token(GOOD_TOKEN, "admin")
    jira.seed_user("plain", "plain@example.org", "Plain User", password=PLAIN_PASSWORD)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    with serve(jira.app) as url:
        _write_profile(tmp_path / "mappings", "tc", url, store_url)
        monkeypatch.setenv("USERSYNC_MAPPINGS_DIR", str(tmp_path / "mappings"))
        monkeypatch.setenv("TC_GOOD_TOKEN", GOOD_TOKEN)
        monkeypatch.setenv("TC_WRONG_TOKEN", "not-a-token")
        monkeypatch.setenv("TC_PLAIN_PASSWORD", PLAIN_PASSWORD)
        users_before = httpx.get(
            f"{url}/rest/api/2/user/search",
            params={"username": "."},
            auth=("admin", ADMIN_PASSWORD),
        ).json()
        yield jira, url, store_url, users_before


def test_three_failures_are_told_apart(checked, capsys) -> None:
    _, url, _, users_before = checked
    results = {r.part: r for r in check_connections(sync.prepare_profile("tc"))}

    assert results["target good"].ok
    assert "administrator 'admin'" in results["target good"].detail
    wrong = results["target wrong-token"]
    assert not wrong.ok and "refused the credentials (HTTP 401)" in wrong.detail
    unreachable = results["target unreachable"]
    assert not unreachable.ok and "is unreachable" in unreachable.detail
    not_admin = results["target not-admin"]
    assert not not_admin.ok and "'plain' is not a Jira administrator" in not_admin.detail
    details = {wrong.detail, unreachable.detail, not_admin.detail}
    assert len(details) == 3

    # the inbox has no token yet: the source check says how to make one
    source = results["source"]
    assert not source.ok and "usersync inbox token tc" in source.detail

    # nothing was written: the same users, no new ones
    after = httpx.get(
        f"{url}/rest/api/2/user/search", params={"username": "."}, auth=("admin", ADMIN_PASSWORD)
    ).json()
    assert after == users_before

    markdown = connection_markdown("tc", list(results.values()))
    assert (
        "4 of 5 checks FAILED" in markdown and "| target unreachable | jira | FAILED |" in markdown
    )

    assert main(["check", "tc"]) == 1
    out = capsys.readouterr().out
    assert "target not-admin: FAILED: " in out and "target good: OK: " in out


def test_inbox_source_passes_once_it_has_a_token(checked) -> None:
    _, _, store_url, _ = checked
    store = Store.open(store_url)
    issue_token(store.engine, "tc")
    store.close()
    source = check_connections(sync.prepare_profile("tc"))[0]
    assert source.ok and "0 user(s) and 0 group(s) pushed so far" in source.detail


def test_test_connection_names_the_groups_that_grant_administration(checked) -> None:
    jira, *_ = checked
    jira.seed_admin_group("ops-root", ["plain"])
    # Test Connection reads the privileged groups as a plan does: here the profile names
    # ops-root as an administrator group of its own.
    profile_file = sync.profile_dir("tc") / "profile.yaml"
    profile = yaml.safe_load(profile_file.read_text("utf-8"))
    profile["targets"]["good"]["admin_groups"] = ["ops-root"]
    profile_file.write_text(yaml.safe_dump(profile), encoding="utf-8")
    good = {r.part: r for r in check_connections(sync.prepare_profile("tc"))}["target good"]
    assert good.ok
    assert "2 administrator(s)" in good.detail  # admin, and plain through ops-root
    assert "the stock admin groups, ops-root" in good.detail


def test_test_connection_fails_when_administrators_cannot_be_established(
    checked, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Confluence older than 9.2 does not list its global permissions: who is an
    # administrator through another group, or directly, cannot be read.
    wiki = ConfluenceEmulator(version="9.1.0", admin=("admin", ADMIN_PASSWORD))
    with serve(wiki.app) as url:
        folder = tmp_path / "mappings" / "tc"
        profile = yaml.safe_load((folder / "profile.yaml").read_text("utf-8"))
        profile["targets"] = {
            "wiki": {
                "kind": "confluence",
                "url": url,
                "auth": {"kind": "basic", "username": "admin", "password": {"env": "TC_ADMIN"}},
            }
        }
        (folder / "profile.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
        monkeypatch.setenv("TC_ADMIN", ADMIN_PASSWORD)
        wiki_check = {r.part: r for r in check_connections(sync.prepare_profile("tc"))}[
            "target wiki"
        ]
    assert not wiki_check.ok
    assert "administrators cannot be established" in wiki_check.detail
    assert "adopts and relinks no existing account" in wiki_check.detail
