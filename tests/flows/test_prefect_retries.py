"""One retry layer: a dead target fails after the HTTP client's attempts, not attempts × retries.

The client below the tasks retries 429s, 5xx and dropped connections itself; a task retry on
top multiplied that (3 task tries × 5 requests, a minute of waiting). The emulator here
answers every request 503 and counts them. Only an LDAP source, with no retry of its own, is
retried by its task.
"""

from __future__ import annotations

import asyncio

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import Failed
from usersync_flows.sync import SyncFailed, sync
from usersync_sandbox.server import free_port
from usersync_tasks.retry import retry_transient

from usersync.config import LdapSourceConfig, ScimSourceConfig, SecretRef
from usersync.errors import SourceUnreachableError, TargetUnreachableError
from usersync.sources.ldap import LdapSource
from usersync.sources.scim import ScimSource

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]


def test_a_target_answering_503_fails_after_the_clients_attempts_only(make_profile, jira):
    emulator, url = jira
    make_profile(url)  # max_attempts: 2
    emulator.app.faults.error_every = 1
    emulator.app.faults.error_status = 503

    state = sync(profile="testprof", return_state=True)

    with pytest.raises(SyncFailed, match="HTTP 503 after 2 attempt"):
        state.result()
    assert len(emulator.app.requests) == 2  # was 6: three plan tries of two requests

    async def tasks():
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
                )
            )

    plan = next(t for t in asyncio.run(tasks()) if t.name == "plan-jira")
    assert plan.state.is_failed()
    assert plan.run_count == 1  # the task itself did not retry


def test_a_task_retries_only_an_unreachable_source_whose_client_did_not_retry():
    ldap = LdapSourceConfig.model_validate(
        {
            "kind": "ldap",
            "url": f"ldap://127.0.0.1:{free_port()}",
            "bind_dn": "cn=sync,dc=example,dc=org",
            "bind_password": {"env": "UNUSED"},
            "user_base_dn": "ou=people,dc=example,dc=org",
            "group_base_dn": "ou=groups,dc=example,dc=org",
            "allow_cleartext_bind": True,
        }
    )
    with LdapSource(ldap, "secret") as source, pytest.raises(SourceUnreachableError) as caught:
        source.extract([])
    ldap_down = caught.value  # the directory may answer a minute later: the task retries
    scim = ScimSourceConfig(
        kind="scim", url=f"http://127.0.0.1:{free_port()}/scim/v2", token=SecretRef(env="UNUSED")
    )
    with ScimSource(scim, "token") as source, pytest.raises(SourceUnreachableError) as caught:
        source.extract([])
    scim_down = caught.value  # its HTTP client retried already: the task does not

    assert retry_transient(None, None, Failed(data=ldap_down)) is True
    assert retry_transient(None, None, Failed(data=scim_down)) is False
    assert retry_transient(None, None, Failed(data=TargetUnreachableError("x"))) is False
