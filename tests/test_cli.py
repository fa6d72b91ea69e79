"""The `usersync` command without Prefect: validate a profile, list runs, exit codes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from usersync_cli.main import main

from usersync.store import Store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mappings(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", root)
    monkeypatch.setenv("USERSYNC_MAPPINGS_DIR", str(root))
    return root


def test_validate_a_shipped_profile(mappings, capsys):
    assert main(["validate", "example-ldap"]) == 0
    out = capsys.readouterr().out
    assert "profile example-ldap: OK" in out
    assert "target jira: jira https://jira.example.com (token auth)" in out


def test_validate_the_active_directory_example(mappings, capsys):
    assert main(["validate", "example-ad"]) == 0
    out = capsys.readouterr().out
    assert "profile example-ad: OK" in out
    assert "source attributes read: sAMAccountName, mail, userPrincipalName" in out


def test_validate_reports_the_file_line_and_problem(mappings, capsys):
    (mappings / "demo" / "attributes.csv").write_text(
        "target,source,transform\nusername,uid,lowercase\n"
    )
    assert main(["validate", "demo"]) == 2
    err = capsys.readouterr().err
    assert "attributes.csv line 2: unknown transform 'lowercase'" in err


def test_unknown_setting_in_profile_is_named(mappings, capsys):
    path = mappings / "demo" / "profile.yaml"
    path.write_text(path.read_text().replace("  page_size: 100", "  page_sise: 100"))
    assert main(["validate", "demo"]) == 2
    err = capsys.readouterr().err
    assert "source.page_sise: unknown setting" in err


def test_unknown_profile_lists_the_known_ones(mappings, capsys):
    assert main(["validate", "nope"]) == 2
    assert "profiles there: " in capsys.readouterr().err


def test_unset_environment_variable_in_profile_is_named(mappings, capsys, monkeypatch):
    path = mappings / "demo" / "profile.yaml"
    path.write_text(
        path.read_text().replace("bind_dn: cn=admin", "bind_dn: ${NO_SUCH_VAR_X}cn=admin")
    )
    assert main(["validate", "demo"]) == 2
    assert "${NO_SUCH_VAR_X} is used but the variable is not set" in capsys.readouterr().err


def test_runs_lists_recorded_runs(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = Store.open(url)
    run = store.start_run("corp", "jira", dry_run=True)
    store.finish_run(run, "planned", {"planned": {"create_user": 2}})
    assert main(["runs", "corp", "--store-url", url]) == 0
    out = capsys.readouterr().out
    assert "corp" in out and "planned" in out


def _recorded(url: str) -> tuple[Store, list[int]]:
    """Two flow runs: a braked real run (rejected) and a sync of two targets with a failure."""
    import pandas as pd

    store = Store.open(url)
    braked = store.start_run("corp", "jira", dry_run=False, flow_run_id="1" * 8 + "-aaaa")
    store.finish_run(
        braked,
        "braked",
        {
            "planned": {"deactivate_user": 3},
            "approval": {"approved": False, "by": "Rita", "channel": "ui", "at": "t"},
        },
        "deactivations: 3 (limit max_deactivations=1) Not approved: Rita rejected it",
    )
    flow_run = "2" * 8 + "-bbbb"
    jira = store.start_run("corp", "jira", dry_run=False, flow_run_id=flow_run)
    plan = pd.DataFrame(
        {
            "seq": [1, 2],
            "op": ["create_user", "add_membership"],
            "source_id": ["s1", "s1"],
            "target_key": [None, None],
            "username": ["asmith", "asmith"],
            "group": [None, "developers"],
            "before": [None, None],
            "after": [None, None],
            "reason": [None, None],
        }
    )
    store.record_plan(jira, plan)
    store.record_outcomes(jira, [(1, "succeeded", None), (2, "failed", "HTTP 500 " + "x" * 200)])
    store.finish_run(
        jira,
        "partial",
        {
            "planned": {"create_user": 1, "add_membership": 1},
            "executed": {
                "create_user": {"succeeded": 1, "failed": 0, "skipped": 0},
                "add_membership": {"succeeded": 0, "failed": 1, "skipped": 0},
            },
            "conflicts": [{"username": "x", "reason": "y"}] * 50,
            "drift": {"nested": {"deep": list(range(100))}},
        },
        None,
    )
    wiki = store.start_run("corp", "wiki", dry_run=False, flow_run_id=flow_run)
    store.finish_run(wiki, "succeeded", {"planned": {}}, None)
    return store, [braked, jira, wiki]


def test_runs_is_a_narrow_table_one_group_per_flow_run_with_its_link(tmp_path, capsys, monkeypatch):
    url = f"sqlite:///{tmp_path / 's.db'}"
    _, (braked, jira, wiki) = _recorded(url)
    monkeypatch.setenv("PREFECT_UI_URL", "http://prefect.example:4200")

    assert main(["runs", "corp", "--store-url", url]) == 0
    out = capsys.readouterr().out

    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 120, out  # no nested dicts, no NaN
    assert "NaN" not in out and "{" not in out
    assert lines[0].split() == [
        "when", "(UTC)", "profile", "kind", "target", "outcome", "planned", "done", "failed", "id"
    ]  # fmt: skip
    newest = lines[1].split()
    assert newest[2:6] == ["corp", "sync", "jira", "partial"]
    assert newest[6:] == ["2", "1", "1", str(jira)]  # planned 2, done 1, failed 1
    assert lines[2].split() == ["wiki", "succeeded", "0", "0", "0", str(wiki)]
    assert lines[3].strip() == "↳ http://prefect.example:4200/runs/flow-run/22222222-bbbb"
    assert "braked (not approved: Rita)" in lines[4]
    assert lines[4].split()[-4:] == ["3", "0", "0", str(braked)]  # planned 3, nothing done


def test_runs_of_one_run_lists_its_operations(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    _, (braked, jira, wiki) = _recorded(url)

    assert main(["runs", "corp", "--run", "22222222", "--store-url", url]) == 0
    out = capsys.readouterr().out
    assert f"corp / jira: partial (sync, store run {jira}" in out
    assert f"corp / wiki: succeeded (sync, store run {wiki}" in out
    assert "1  create_user     asmith              succeeded" in out
    assert "2  add_membership  asmith  developers  failed     HTTP 500 xxx" in out
    assert max(len(line) for line in out.splitlines()) <= 140

    assert main(["runs", "corp", "--run", str(braked), "--store-url", url]) == 0
    out = capsys.readouterr().out
    assert "not approved by Rita (ui, t)" in out and "no operations" in out

    assert main(["runs", "corp", "--run", "99999", "--store-url", url]) == 2
    assert "no run 99999 of profile corp in the store" in capsys.readouterr().err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("validate", "sync", "check", "runs", "demo", "sandbox"):
        assert command in out


def test_a_profile_name_that_is_a_path_is_refused_before_it_touches_the_disk(
    mappings, tmp_path, capsys
):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "profile.yaml").write_text("source: {kind: scim}\n")
    assert main(["validate", "../outside"]) == 2
    assert main(["sync", "../outside"]) == 2
    err = capsys.readouterr().err
    assert "profile name '../outside' is not valid" in err
    assert "Traceback" not in err


def test_sync_of_a_missing_profile_is_one_line_and_no_traceback(mappings, capsys):
    assert main(["sync", "no-such-profile"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no profile 'no-such-profile'")
    assert main(["--debug", "sync", "no-such-profile"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_files_that_are_not_utf8_name_the_file_and_line(mappings, capsys):
    (mappings / "demo" / "groups.csv").write_bytes(
        b"source_group,target_group,mode,targets\nengineering,d\xe9veloppeurs,manual,\n"
    )
    assert main(["validate", "demo"]) == 2
    err = capsys.readouterr().err
    assert "groups.csv line 2: not UTF-8 text (byte 0xe9 at column 14)" in err
    profile = mappings / "demo" / "profile.yaml"
    profile.write_bytes(profile.read_bytes() + b"\n# caf\xe9\n")
    assert main(["validate", "demo"]) == 2
    assert "profile.yaml line" in capsys.readouterr().err


def test_tables_saved_by_excel_with_a_byte_order_mark_are_read(mappings, capsys):
    path = mappings / "demo" / "attributes.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    groups = mappings / "demo" / "groups.csv"
    groups.write_bytes(b"\xef\xbb\xbf" + groups.read_bytes())
    assert main(["validate", "demo"]) == 0


def test_validate_warns_about_patterns_at_risk_and_groups_that_look_like_patterns(mappings, capsys):
    (mappings / "demo" / "attributes.csv").write_text(
        "target,source,transform,regex,replacement\n"
        "username,uid,regex,^(\\w+\\s?)*$,\\1\n"
        "email,mail,,,\n"
    )
    (mappings / "demo" / "groups.csv").write_text(
        "source_group,target_group,mode,targets\neng-.*,developers,manual,\n"
    )
    assert main(["validate", "demo"]) == 0
    out = capsys.readouterr().out
    assert "attributes.csv line 2: the regex '^(\\\\w+\\\\s?)*$' has nested repetition" in out
    assert "groups.csv line 2: source_group 'eng-.*' looks like a regular expression" in out


def test_validate_warns_when_another_profile_syncs_the_same_instance_without_precedence(
    mappings, capsys
):
    shutil.copytree(mappings / "example-ldap", mappings / "contractors")
    assert main(["validate", "example-ldap"]) == 0
    out = capsys.readouterr().out
    assert "warning: profile contractors also syncs https://jira.example.com" in out
    assert "set settings.precedence in both" in out

    for name, rank in (("example-ldap", 1), ("contractors", 2)):
        path = mappings / name / "profile.yaml"
        path.write_text(path.read_text() + f"  precedence: {rank}\n")
    assert main(["validate", "example-ldap"]) == 0
    assert "also syncs" not in capsys.readouterr().out


def test_the_example_using_every_setting_validates_cleanly(mappings, capsys):
    assert main(["validate", "example-settings"]) == 0
    out = capsys.readouterr().out
    assert "profile example-settings: OK" in out
    assert "warning" not in out


@pytest.mark.parametrize(
    "command", [["demo"], ["sync", "demo-push"], ["approve", "x", "--name", "n"]]
)
def test_an_unreachable_prefect_api_is_one_line(mappings, command, capfd, monkeypatch):
    import socket

    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")

    assert main(command) == 1

    out, err = capfd.readouterr()
    # (this suite runs Prefect's loggers at DEBUG; a user's terminal shows none of those)
    lines = [line for line in err.splitlines() if "| DEBUG " not in line]
    assert len(lines) == 1, err  # one line
    assert lines[0].startswith(
        f"error: the Prefect API at http://127.0.0.1:{port}/api does not answer"
    )
    assert "Traceback" not in out + err


def test_inbox_push_sample_fills_a_running_inbox(tmp_path, capsys):
    from usersync_sandbox.server import serve

    from usersync.inbox import InboxApp, issue_token

    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    token = issue_token(store.engine, "demo-push").token
    with serve(InboxApp(store.engine)) as url:
        assert main(["inbox", "push-sample", "demo-push", "--url", url, "--token", token]) == 0
        assert "pushed 6 user(s) and their groups into" in capsys.readouterr().out
        assert main(["inbox", "push-sample", "demo-push", "--url", url, "--token", "wrong"]) == 1
        assert "refused the sample" in capsys.readouterr().err
    store.close()
