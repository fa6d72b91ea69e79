"""The demo: sample users into the sandbox products, through the real `sync` flow.

Two sources, one story. By default (`make demo`, `usersync demo`) it needs no system package:
it starts the SCIM inbox, issues the `demo-push` profile's token and pushes the sample users
and groups into it over HTTP exactly as miniOrange would. With `--source ldap` (`make
demo-ldap`) it starts a real OpenLDAP `slapd` loaded with `sandbox/data/sample.ldif`
instead (profile `demo`). Either way it starts the sandbox emulators over HTTP, seeds the
sandbox Jira with two accounts an admin would already have (one matching a source user, which
is adopted; one usersync must leave alone), runs the `sync` flow twice (the first run
provisions, the second plans nothing), then reads every product back through its REST API and
checks it against the summary.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import pandas as pd
from usersync_sandbox.serve import ADMIN_USERNAME, Sandbox

from usersync import open_target, prepare_profile

#: profile of each demo source
PROFILES = {"push": "demo-push", "ldap": "demo"}
#: Accounts the sandbox Jira has before the first sync.
PRE_EXISTING = (
    # (username, e-mail, display name): asmith is in both samples: adopted (not duplicated),
    # and her display name is brought in line with the source's
    ("asmith", "asmith@example.org", "A. Smith (created by hand)"),
    # a local account the source does not know: usersync never touches it
    ("contractor", "contractor@partner.example", "External Contractor"),
)


def _products(profile_targets: dict) -> list[str]:
    return sorted({t.kind for t in profile_targets.values()})


@contextmanager
def _ldap_source() -> Iterator[str]:
    """A slapd with the sample directory; the environment points the `demo` profile at it."""
    from usersync_sandbox.slapd import SlapdServer

    with SlapdServer.for_demo(port=_pinned_port("USERSYNC_DEMO_LDAP_PORT")) as directory:
        os.environ["USERSYNC_DEMO_LDAP_URL"] = directory.url
        os.environ["USERSYNC_DEMO_LDAP_PASSWORD"] = directory.admin_password
        yield f"directory: {directory.url} (slapd, sample.ldif)"


@contextmanager
def _push_source(store_url: str) -> Iterator[str]:
    """The SCIM inbox, with the sample pushed into the `demo-push` inbox as miniOrange would."""
    from usersync_sandbox.push import push_sample
    from usersync_sandbox.server import serve

    from usersync import INBOX_PREFIX, InboxApp, Store, issue_inbox_token

    store = Store.open(store_url)
    issued = issue_inbox_token(store.engine, PROFILES["push"])
    try:
        with serve(InboxApp(store.engine), port=_pinned_port("USERSYNC_DEMO_INBOX_PORT")) as url:
            base = f"{url}{INBOX_PREFIX}/{PROFILES['push']}"
            pushed = push_sample(base, issued.token)
            yield (
                f"SCIM inbox: {base} (bearer token {issued.token[:6]}…, what you would paste "
                f"into miniOrange's SCIM app); pushed {len(pushed)} resource(s)"
            )
    finally:
        store.close()


def _pinned_port(variable: str) -> int:
    """The port the environment pins (`variable`), or 0: any free one.

    Raises:
        ConfigError: the variable is set to something else than a port number.
    """
    from usersync import ConfigError

    value = os.environ.get(variable, "").strip()
    if not value:
        return 0
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"{variable}={value}: not a port number (1-65535)")
    return int(value)


def _remove_instance_limits(urls: list[str]) -> None:
    """Delete the global concurrency limits of the sandbox's instances (usersync-instance-…,
    created by the runs), so a demo against a real Prefect server leaves none behind."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from usersync_tasks.instances import instance_limit_name

    with get_client(sync_client=True) as client:
        for url in urls:
            with suppress(ObjectNotFound):
                client.delete_global_concurrency_limit_by_name(instance_limit_name(url))


def run_demo(source: str = "push", store_dir: Path | None = None) -> int:
    """Run the demo; return 0 when what the products hold matches the summary.

    Args:
        source: "push" (SCIM inbox, no system package) or "ldap" (a real slapd).
        store_dir: where the demo's store goes (default: a new temporary folder).
    """
    # A temporary Prefect server's telemetry heartbeat only prints a traceback when its
    # SQLite database is busy; the demo has nothing to report to Prefect's analytics.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from usersync_flows.sync import sync

    profile = PROFILES[source]
    loaded = prepare_profile(profile)
    products = _products(loaded.profile.targets)
    store_dir = store_dir or Path(tempfile.mkdtemp(prefix="usersync-demo-"))
    store_url = f"sqlite:///{store_dir / 'usersync.db'}"
    os.environ["USERSYNC_STORE_URL"] = store_url
    password = secrets.token_urlsafe(12)
    print(f"starting the {source} source and the sandbox ({', '.join(products)}) ...")
    with ExitStack() as stack:
        described = stack.enter_context(
            _ldap_source() if source == "ldap" else _push_source(store_url)
        )
        sandbox = stack.enter_context(
            Sandbox(
                products,
                admin_password=password,
                first_port=_pinned_port("USERSYNC_DEMO_FIRST_PORT"),
            )
        )
        # The instance limits the runs create are named after these ports: remove them after.
        stack.callback(_remove_instance_limits, [sandbox.url(p) for p in products])
        for product in products:
            os.environ[f"USERSYNC_DEMO_{product.upper()}_URL"] = sandbox.url(product)
            os.environ[f"USERSYNC_DEMO_{product.upper()}_PASSWORD"] = password
        if "jira" in sandbox.emulators:
            for username, email, name in PRE_EXISTING:
                sandbox.emulators["jira"].seed_user(username, email, name)
        print(f"  {described}")
        for product in products:
            print(f"  {product}: {sandbox.url(product)} ({ADMIN_USERNAME} / {password})")

        print("\n== run 1: provision ==")
        first = sync(profile=profile)
        _print_outcomes(first)
        print("\n== run 2: same source, nothing should change ==")
        second = sync(profile=profile)
        _print_outcomes(second)

        print("\n== read back through each product's REST API ==")
        loaded = prepare_profile(profile)  # URLs now come from the environment set above
        ok = _verify(loaded, first, second, tuple(p for p in products if p == "jira"))
    where = (
        f"on the Prefect server {os.environ['PREFECT_API_URL']}"
        if os.environ.get("PREFECT_API_URL")
        else f"in Prefect's database under {os.environ.get('PREFECT_HOME', '~/.prefect')}; "
        "browse them with `prefect server start` (then http://127.0.0.1:4200)"
    )
    print(
        f"\nRun history: the flow runs above are {where}. Every operation is in the store: "
        f"`USERSYNC_STORE_URL={store_url} usersync runs {profile}`."
    )
    print("demo: OK" if ok else "demo: MISMATCH between the summary and the products")
    return 0 if ok else 1


def _print_outcomes(outcomes: list[dict]) -> None:
    for outcome in outcomes:
        executed = outcome["executed"]
        done = {op: c["succeeded"] for op, c in executed.items()} if executed else {}
        print(
            f"  {outcome['target']}: {outcome['status']}; executed {done or 'nothing'}; "
            f"rejected {outcome['rejected']}"
        )


def _verify(
    loaded, first: list[dict], second: list[dict], products_seeded: tuple[str, ...] = ()
) -> bool:
    """Compare the summary with what each product reports over REST; print each check."""
    from usersync import extract, transform

    ok = True

    def check(label: str, good: bool) -> None:
        nonlocal ok
        ok &= good
        print(f"  [{'ok' if good else 'MISMATCH'}] {label}")

    snapshot = extract(loaded)
    for target_outcome, again in zip(first, second, strict=True):
        name = target_outcome["target"]
        desired = transform(loaded, snapshot, name)
        with open_target(name, loaded.profile.targets[name]) as client:
            state = client.read_state(
                list(desired.users["username"]), list(desired.groups["group"])
            )
        users = state.users.set_index(state.users["username"].str.casefold())
        active_wanted = desired.users[desired.users["active"].fillna(False)]
        inactive_wanted = desired.users[~desired.users["active"].fillna(False)]
        executed = {op: c["succeeded"] for op, c in target_outcome["executed"].items()}
        created = executed.get("create_user", 0)
        adopted = executed.get("adopt_user", 0)
        check(
            f"{name}: run 1 created {created} and adopted {adopted} account(s) for the "
            f"{len(active_wanted)} active source user(s)",
            created + adopted == len(active_wanted),
        )
        present = [u.casefold() in users.index for u in active_wanted["username"]]
        check(f"{name}: all {len(active_wanted)} active source users exist", all(present))
        readable = [
            (u, e)
            for u, e in zip(active_wanted["username"], active_wanted["email"], strict=True)
            if u.casefold() in users.index and not pd.isna(users.loc[u.casefold(), "email"])
        ]
        right_email = all(
            users.loc[u.casefold(), "email"].casefold() == (e or "").casefold() for u, e in readable
        )
        unreadable = len(active_wanted) - len(readable)
        check(
            f"{name}: each account carries the source's e-mail"
            + (f" ({unreadable} not readable with these credentials)" if unreadable else ""),
            right_email,
        )
        active_ok = all(
            bool(users.loc[u.casefold(), "active"])
            for u in active_wanted["username"]
            if u.casefold() in users.index
        )
        check(f"{name}: those accounts are active", active_ok)
        created_inactive = [
            u
            for u in inactive_wanted["username"]
            if u.casefold() in users.index and users.loc[u.casefold(), "active"]
        ]
        check(
            f"{name}: disabled source users have no active account "
            f"({len(inactive_wanted)} disabled)",
            not created_inactive,
        )
        groups = {g.casefold() for g in state.groups["group"]}
        wanted_groups = {g.casefold() for g in desired.groups["group"]}
        check(f"{name}: all {len(wanted_groups)} mapped groups exist", wanted_groups <= groups)
        have = {
            (u.casefold(), g.casefold())
            for u, g in zip(state.memberships["username"], state.memberships["group"], strict=True)
        }
        want = {
            (u.casefold(), g.casefold())
            for u, g in zip(
                desired.memberships["username"], desired.memberships["group"], strict=True
            )
        }
        check(f"{name}: all {len(want)} memberships are in place", want <= have)
        check(f"{name}: run 2 planned nothing", not again["planned"])
        if name == "jira" and "jira" in products_seeded:
            with open_target(name, loaded.profile.targets[name]) as client:
                local = client.read_users([u for u, _, _ in PRE_EXISTING])
            local = local.set_index(local["username"].str.casefold())
            check(
                "jira: the hand-made account 'contractor' is untouched (active, same e-mail)",
                bool(local.loc["contractor", "active"])
                and local.loc["contractor", "email"] == PRE_EXISTING[1][1],
            )
            check(
                "jira: 'asmith' was adopted and now shows the source's display name",
                executed.get("adopt_user", 0) >= 1
                and local.loc["asmith", "display_name"] == "Alice Smith",
            )
        check(
            f"{name}: {len(desired.rejected)} source user(s) reported as not provisionable "
            f"(e.g. no e-mail), as the summary says",
            target_outcome["rejected"] == len(desired.rejected),
        )
    return ok


if __name__ == "__main__":
    sys.exit(run_demo(*sys.argv[1:2]))
