"""The demo: the sample directory into the sandbox products, through the real `sync` flow.

It starts a real OpenLDAP `slapd` loaded with `usersync/sandbox/data/sample.ldif`, the sandbox
emulators over HTTP, seeds the sandbox Jira with two accounts an admin would already have (one
that matches a directory user and is adopted, one that usersync must leave alone), then runs
the `sync` flow for the `demo` profile twice: the first run provisions, the second plans
nothing. It reads the result back through each product's REST API and checks it against the
summary. Run it with `make demo` (or `usersync demo`).
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from pathlib import Path

from usersync.sandbox.serve import ADMIN_USERNAME, Sandbox
from usersync.sandbox.slapd import SlapdServer
from usersync.sync import load as load_profile
from usersync.targets import open_target

DEMO_PROFILE = "demo"
#: Accounts the sandbox Jira has before the first sync.
PRE_EXISTING = (
    # (username, e-mail, display name): asmith is in the directory: adopted (not duplicated),
    # and her display name is brought in line with the directory's
    ("asmith", "asmith@example.org", "A. Smith (created by hand)"),
    # a local account the directory does not know: usersync never touches it
    ("contractor", "contractor@partner.example", "External Contractor"),
)


def _products(profile_targets: dict) -> list[str]:
    return sorted({t.kind for t in profile_targets.values()})


def run_demo(store_dir: Path | None = None) -> int:
    """Run the demo; return 0 when what the products hold matches the summary."""
    from flows.sync import sync

    loaded = load_profile(DEMO_PROFILE)
    products = _products(loaded.profile.targets)
    store_dir = store_dir or Path(tempfile.mkdtemp(prefix="usersync-demo-"))
    store_url = f"sqlite:///{store_dir / 'usersync.db'}"
    password = secrets.token_urlsafe(12)
    print(f"starting slapd with the sample directory and the sandbox ({', '.join(products)}) ...")
    with SlapdServer.for_demo() as directory, Sandbox(products, admin_password=password) as sandbox:
        os.environ.update(
            {
                "USERSYNC_DEMO_LDAP_URL": directory.url,
                "USERSYNC_DEMO_LDAP_PASSWORD": directory.admin_password,
                "USERSYNC_STORE_URL": store_url,
            }
        )
        for product in products:
            os.environ[f"USERSYNC_DEMO_{product.upper()}_URL"] = sandbox.url(product)
            os.environ[f"USERSYNC_DEMO_{product.upper()}_PASSWORD"] = password
        if "jira" in sandbox.emulators:
            for username, email, name in PRE_EXISTING:
                sandbox.emulators["jira"].seed_user(username, email, name)
        print(f"  directory: {directory.url}")
        for product in products:
            print(f"  {product}: {sandbox.url(product)} ({ADMIN_USERNAME} / {password})")

        print("\n== run 1: provision ==")
        first = sync(profile=DEMO_PROFILE, store_url=store_url)
        _print_outcomes(first)
        print("\n== run 2: same directory, nothing should change ==")
        second = sync(profile=DEMO_PROFILE, store_url=store_url)
        _print_outcomes(second)

        print("\n== read back through each product's REST API ==")
        loaded = load_profile(DEMO_PROFILE)  # URLs now come from the environment set above
        ok = _verify(loaded, first, second, tuple(p for p in products if p == "jira"))
    print(
        "\nRun history: the flow runs above are in Prefect's database under "
        f"{os.environ.get('PREFECT_HOME', '~/.prefect')}; browse them with "
        "`prefect server start` (then http://127.0.0.1:4200). Every operation is in the store: "
        f"`USERSYNC_STORE_URL={store_url} usersync runs demo`."
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
    from usersync import sync as engine

    ok = True

    def check(label: str, good: bool) -> None:
        nonlocal ok
        ok &= good
        print(f"  [{'ok' if good else 'MISMATCH'}] {label}")

    snapshot = engine.extract(loaded)
    for target_outcome, again in zip(first, second, strict=True):
        name = target_outcome["target"]
        desired = engine.transform(loaded, snapshot, name)
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
            f"{len(active_wanted)} active directory user(s)",
            created + adopted == len(active_wanted),
        )
        present = [u.casefold() in users.index for u in active_wanted["username"]]
        check(f"{name}: all {len(active_wanted)} active directory users exist", all(present))
        right_email = all(
            users.loc[u.casefold(), "email"].casefold() == (e or "").casefold()
            for u, e in zip(active_wanted["username"], active_wanted["email"], strict=True)
            if u.casefold() in users.index
        )
        check(f"{name}: each account carries the directory's e-mail", right_email)
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
            f"{name}: disabled directory users have no active account "
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
                "jira: 'asmith' was adopted and now shows the directory's display name",
                executed.get("adopt_user", 0) >= 1
                and local.loc["asmith", "display_name"] == "Alice Smith",
            )
        check(
            f"{name}: {len(desired.rejected)} directory user(s) reported as not provisionable "
            f"(e.g. no e-mail), as the summary says",
            target_outcome["rejected"] == len(desired.rejected),
        )
    return ok


if __name__ == "__main__":
    sys.exit(run_demo())
