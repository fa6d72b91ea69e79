"""The `demo` flow: the whole demo as one flow run, runnable from the UI with nothing set up.

It does what `usersync demo` does (flows/demo.py): starts the sandbox products and either the
SCIM inbox with the sample pushed into it (`source: push`, no system package) or a real slapd
loaded with the sample directory (`source: ldap`, needs OpenLDAP's slapd on the worker host,
`make demo-ldap` installs it); runs the `sync` flow twice as subflows; reads every product back
and checks it against the summary. The products and the demo's store live for the length of
the run; its output is the run log, and the subflows' artifacts. The run fails on a mismatch.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow
from usersync_flows.demo import run_demo
from usersync_flows.parameters import form_field

from usersync import UsersyncError


class DemoMismatch(UsersyncError):
    """What the sandbox products hold does not match the sync's summary."""


@flow(name="demo", flow_run_name="demo-from-{source}", log_prints=True)
def demo(
    source: Literal["push", "ldap"] = form_field(
        "Source",
        "push: the sample is pushed into the SCIM inbox as miniOrange would (no system "
        "package); ldap: a real OpenLDAP slapd with the sample directory (slapd must be "
        "installed on the worker's host).",
        "push",
    ),
) -> None:
    """Run the demo against throw-away sandbox products; fail if they disagree with the summary."""
    if run_demo(source) != 0:
        raise DemoMismatch("the sandbox products do not match the summary; see the run log")
