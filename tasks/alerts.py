"""The automations that tell someone when a sync goes wrong: `usersync alerts install`.

prefect.yaml can only hold triggers that start a deployment, so the alerts are created over
the Prefect API, each sending a notification through a block the administrator names (Slack,
Microsoft Teams, e-mail over SMTP, a custom webhook, ...):

- "usersync: sync failed": a `sync` flow run ended Failed, Crashed or TimedOut (a target
  unreachable or refusing the credentials, a load that failed or was partial, a source that
  could not be read, a brake);
- "usersync: sync braked": the event `usersync.sync.braked` (tasks/report.py), once per run:
  a guard stopped targets or the whole run before any write (a dry run: would stop a real
  run); the message says why and how to go on. Such a run ends Failed named Braked (a dry
  run Completed), so "sync failed" does not fire as well;
- "usersync: approval requested": the event `usersync.approval.requested`: a run paused
  with its braked plan until someone approves or rejects it (UI or `usersync approve`);
- "usersync: security": the event `usersync.sync.security`: a plan refused what IdP data
  must never do (fill or create a group that grants administration, take over an existing
  group) or held back what it cannot do safely (a protected leaver left active, nobody adopted
  while the administrators cannot be established).

Installing again replaces them (same names), e.g. to switch to another block.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture
from usersync_tasks.report import APPROVAL_EVENT, BRAKED_EVENT, SEATS_EVENT, SECURITY_EVENT

from usersync import ConfigError

FAILED = "usersync: sync failed"
BRAKED = "usersync: sync braked"
SEATS = "usersync: licence seats short"
SECURITY = "usersync: security"
APPROVAL = "usersync: approval requested"
#: Flow-run states that mean a sync did not do all it should have.
FAILED_STATES = ("Failed", "Crashed", "TimedOut")

FAILED_SUBJECT = "usersync: {{ flow_run.name }} ended {{ event.resource['prefect.state-name'] }}"
FAILED_BODY = """\
The usersync run {{ flow_run.name }} ended {{ event.resource['prefect.state-name'] }}.

{{ event.resource['prefect.state-message'] }}

Parameters: {{ flow_run.parameters }}
{% if flow_run|ui_url %}Run: {{ flow_run|ui_url }}
{% endif %}Each target's outcome (failed operations, rejected users, conflicts) is in the run's artifact \
summary-<profile>; every operation is in the store (usersync runs <profile>).
"""
BRAKED_SUBJECT = (
    "usersync: the brake stopped profile {{ event.resource['prefect.resource.name'] }}"
    "{% if event.payload.dry_run %} (dry run){% endif %}"
)
BRAKED_BODY = """\
{% if event.payload.dry_run %}A dry run of profile {{ event.resource['prefect.resource.name'] }} \
found plans a real run would stop at (nothing was written; the plans are published):\
{% else %}A guard stopped profile {{ event.resource['prefect.resource.name'] }} before any write \
(nothing was written there):{% endif %}
{% for t in event.payload.targets %}
- {% if t.target %}target {{ t.target }}{% else %}the whole run (source){% endif %}: {{ t.reason }}\
{% endfor %}

To see what a run would do: a dry run publishes every target's plan (artifact \
plan-{{ event.resource['prefect.resource.name'] }}-<target>) and writes nothing; once it is \
checked, run with allow_mass_changes (usersync sync --allow-mass-changes), or answer the \
approval of a deployment run (usersync approve).
"""


SEATS_SUBJECT = (
    "usersync: {{ event.resource['prefect.resource.name'] }} is short of licence seats in "
    "{{ event.payload.target }}"
)
SEATS_BODY = """\
Profile {{ event.resource['prefect.resource.name'] }} needs {{ event.payload.needed }} licence \
seat(s) in {{ event.payload.target }} but {{ event.payload.free }} are free\
{% if event.payload.dry_run %} (in a dry run: a real run would hold them back too){% endif %}.
{{ event.payload.held_back }} creation(s) or reactivation(s) were held back; nobody was half \
provisioned. Free seats (or raise the licence) and the next run goes on. The held-back accounts \
are listed in the run's summary-<profile> artifact and by usersync conflicts.
"""


SECURITY_SUBJECT = (
    "usersync: {{ event.resource['prefect.resource.name'] }} needs a person in "
    "{{ event.payload.target }}"
)
SECURITY_BODY = """\
Profile {{ event.resource['prefect.resource.name'] }}, target {{ event.payload.target }}\
{% if event.payload.dry_run %} (dry run){% endif %}: the plan refused or held back what needs \
a person:
{% for line in event.payload.alerts %}
- {{ line }}{% endfor %}

Nothing of this was written. The run's summary-<profile> artifact and usersync conflicts list \
them too.
"""


APPROVAL_SUBJECT = (
    "usersync: {{ event.resource['prefect.resource.name'] }} waits for an approval "
    "(run {{ event.payload.flow_run_name }})"
)
APPROVAL_BODY = """\
The run {{ event.payload.flow_run_name }} of profile {{ event.resource['prefect.resource.name'] }} \
is paused: its plan exceeds the brake{% if event.payload.round > 1 %} (the plan changed after \
an approval: this is the new one){% endif %}. Nothing is written to these targets until someone \
approves; without an answer by {{ event.payload.deadline }} (UTC) it counts as a rejection.
{% for t in event.payload.targets %}
{{ t.target }}: {{ t.destructive }} destructive operation(s), every one in the artifact \
{{ t.plan_artifact }}{% for l in t.limits %}
- {{ l.what }}: {{ l.count }} (limit {{ l.limit }}){% endfor %}
{% endfor %}
{% if event.payload.url %}Review and answer: {{ event.payload.url }} (Resume)
{% endif %}From a shell:
  usersync approve {{ event.payload.flow_run_id }} --name "<your name>" [--comment "..."]
  usersync reject {{ event.payload.flow_run_id }} --name "<your name>" [--comment "..."]
"""


def notification_block_id(block: str) -> UUID:
    """The id of the notification block named `block` ("name", or "type-slug/name").

    Raises:
        ConfigError: no such block, the name is ambiguous, or the block cannot notify.
    """
    slug, _, name = block.rpartition("/")
    with get_client(sync_client=True) as client:
        documents = [
            d
            for d in client.read_block_documents(include_secrets=False)
            if d.name == name and (not slug or (d.block_type and d.block_type.slug == slug))
        ]
    notifying = [d for d in documents if d.block_schema and "notify" in d.block_schema.capabilities]
    if not notifying:
        kinds = ", ".join(sorted(d.block_type.slug for d in documents if d.block_type))
        raise ConfigError(
            f"no notification block named '{block}'"
            + (f" (a block of that name is a {kinds}, which cannot notify)" if kinds else "")
            + ": create one in the UI (Blocks → Slack Webhook, Microsoft Teams Webhook, "
            "Custom Webhook, ...) and give its name"
        )
    if len(notifying) > 1:
        kinds = ", ".join(sorted(f"{d.block_type.slug}/{name}" for d in notifying if d.block_type))
        raise ConfigError(f"'{block}' names several notification blocks: give one of {kinds}")
    return notifying[0].id


def alert_automations(block_id: UUID) -> list[Automation]:
    """The automations usersync ships, each notifying through the block `block_id`."""
    return [
        Automation(
            name=FAILED,
            description="A sync flow run ended Failed, Crashed or TimedOut.",
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.role": "flow", "prefect.resource.name": "sync"},
                expect={f"prefect.flow-run.{state}" for state in FAILED_STATES},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[
                SendNotification(
                    block_document_id=block_id, subject=FAILED_SUBJECT, body=FAILED_BODY
                )
            ],
        ),
        _on_usersync_event(
            BRAKED,
            "A guard stopped a sync before any write (event usersync.sync.braked).",
            BRAKED_EVENT,
            block_id,
            BRAKED_SUBJECT,
            BRAKED_BODY,
        ),
        _on_usersync_event(
            APPROVAL,
            "A run paused until someone approves or rejects its braked plan "
            "(event usersync.approval.requested).",
            APPROVAL_EVENT,
            block_id,
            APPROVAL_SUBJECT,
            APPROVAL_BODY,
        ),
        _on_usersync_event(
            SEATS,
            "Creations or reactivations were held back for want of licence seats "
            "(event usersync.licence.short).",
            SEATS_EVENT,
            block_id,
            SEATS_SUBJECT,
            SEATS_BODY,
        ),
        _on_usersync_event(
            SECURITY,
            "A plan refused what IdP data must never do, or held back what it cannot do "
            "safely (event usersync.sync.security).",
            SECURITY_EVENT,
            block_id,
            SECURITY_SUBJECT,
            SECURITY_BODY,
        ),
    ]


def _on_usersync_event(
    name: str, description: str, event: str, block_id: UUID, subject: str, body: str
) -> Automation:
    """An automation that notifies through `block_id` when any profile emits `event`."""
    return Automation(
        name=name,
        description=description,
        trigger=EventTrigger(
            match={"prefect.resource.id": "usersync.profile.*"},
            expect={event},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block_id, subject=subject, body=body)],
    )


def install_alerts(block: str) -> list[Automation]:
    """Create (or replace) usersync's automations, notifying through the block `block`.

    Returns:
        The automations as created.
    """
    block_id = notification_block_id(block)
    wanted = alert_automations(block_id)
    with get_client(sync_client=True) as client:
        for automation in wanted:
            for existing in client.read_automations_by_name(automation.name):
                client.delete_automation(existing.id)
    return [automation.create() for automation in wanted]
