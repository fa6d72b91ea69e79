"""The README's main job: both demos end with every product matching its summary."""

from __future__ import annotations

import os

import pytest
from usersync_flows.demo import run_demo

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(autouse=True)
def restore_environment():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _free_ports(count: int) -> int:
    """The first of `count` consecutive free ports."""
    import socket

    for first in range(20000, 40000, 10):
        try:
            held = []
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return first
    raise AssertionError("no free ports")


def test_push_demo_matches_what_the_products_hold_on_pinned_ports_and_leaves_no_limits(
    tmp_path, capsys, monkeypatch
):
    from prefect.client.orchestration import get_client
    from usersync_tasks.instances import instance_limit_name

    first = _free_ports(4)
    monkeypatch.setenv("USERSYNC_DEMO_FIRST_PORT", str(first))
    monkeypatch.setenv("USERSYNC_DEMO_INBOX_PORT", str(first + 3))

    assert run_demo("push", store_dir=tmp_path) == 0

    out = capsys.readouterr().out
    assert "MISMATCH" not in out
    assert "[ok] bitbucket: run 2 planned nothing" in out
    assert f"SCIM inbox: http://127.0.0.1:{first + 3}/scim/v2/demo-push" in out
    for offset, product in enumerate(("bitbucket", "confluence", "jira")):
        assert f"{product}: http://127.0.0.1:{first + offset}/{product}" in out
    with get_client(sync_client=True) as client:
        names = [limit.name for limit in client.read_global_concurrency_limits(limit=200)]
    demo_limits = {
        instance_limit_name(f"http://127.0.0.1:{first + offset}/{product}")
        for offset, product in enumerate(("bitbucket", "confluence", "jira"))
    }
    assert demo_limits.isdisjoint(names), names  # the runs made them; the demo removed them


@pytest.mark.slapd
def test_ldap_demo_matches_what_the_products_hold_with_slapd_on_the_pinned_port(
    tmp_path, capsys, monkeypatch
):
    port = _free_ports(1)
    monkeypatch.setenv("USERSYNC_DEMO_LDAP_PORT", str(port))
    assert run_demo("ldap", store_dir=tmp_path) == 0
    out = capsys.readouterr().out
    assert f"directory: ldap://127.0.0.1:{port} (slapd, sample.ldif)" in out
    assert "[ok] jira: 'asmith' was adopted" in out
    assert "[ok] confluence: all 18 active source users exist" in out


@pytest.mark.slapd
def test_a_pinned_slapd_port_answers_ldap_and_a_taken_one_is_refused_by_name():
    import socket

    import ldap3
    from usersync_sandbox.slapd import SlapdError, SlapdServer

    port = _free_ports(1)
    with SlapdServer.for_demo(port=port) as directory:
        assert directory.url == f"ldap://127.0.0.1:{port}"
        connection = ldap3.Connection(
            ldap3.Server(f"127.0.0.1:{port}"),
            directory.admin_dn,
            directory.admin_password,
            auto_bind=True,
        )
        connection.search(directory.base_dn, "(uid=asmith)", attributes=["mail"])
        assert [str(e.mail) for e in connection.entries] == ["asmith@example.org"]
        connection.unbind()
    with socket.socket() as taken:
        # The connection just closed may leave the port in TIME_WAIT: a listener of our own
        # needs SO_REUSEADDR (slapd's would still be refused while this one listens).
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(SlapdError, match=f"pinned port 127.0.0.1:{port}: it is in use"):
            SlapdServer(port=port).start()
