"""The README's main job: both demos end with every product matching its summary."""

from __future__ import annotations

import os

import pytest

from flows.demo import run_demo

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(autouse=True)
def restore_environment():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_push_demo_matches_what_the_products_hold(tmp_path, capsys):
    assert run_demo("push", store_dir=tmp_path) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out
    assert "[ok] bitbucket: run 2 planned nothing" in out


@pytest.mark.slapd
def test_ldap_demo_matches_what_the_products_hold(tmp_path, capsys):
    assert run_demo("ldap", store_dir=tmp_path) == 0
    out = capsys.readouterr().out
    assert "[ok] jira: 'asmith' was adopted" in out
    assert "[ok] confluence: all 18 active source users exist" in out
