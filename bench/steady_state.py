"""Benchmark: the steady state of a big estate, a reconcile run against delta runs (issue 26 point 5).

Builds what a profile looks like after months of syncing, then measures, in one run:

(a) a **reconcile** run (everything read from each product: every account, its custom
    attributes, every managed group's members), here the first run of the profile over an
    estate that already holds every account (it adopts them all: no account is written);
(b) an **unchanged delta** run right after it (nothing moved: nothing should be read), through
    the engine's steps, and through the Prefect `sync` flow;
(c) a **delta** run after 1% of the users changed (new e-mail, new display name, new custom
    attribute values, and for a tenth of them a move to another group), whose requests are
    set against the writes it makes;
(d) **offboarding** latency: `usersync serve` of the profile, then `--pushes` users disabled
    over SCIM (`PATCH active=false`) into the inbox one after the other, each timed from the
    inbox's answer to the account inactive in every product, read over REST
    (bench/offboarding.py's `time_offboarding`).

The Prefect server of (b) and (d) is a temporary one on PostgreSQL (bench/prefect_server.py;
`--prefect-database sqlite`: Prefect's test harness); `--skip-flow` leaves both out.

The estate: `--users` users, `--groups` groups, each user in `--groups-per-user` of them
(1.1M memberships by default), two custom attributes (`custom:department`,
`custom:employee-id`, Jira user properties: the only product with custom attributes). The
products are the sandbox emulators, each seeded directly (no HTTP) in a child process of its
own and answering every request after `--latency-ms`; the source is the SCIM inbox of the
store (`miniorange-push`), its tables filled directly with bulk INSERTs (what a push of the
same users and groups would leave there, without 1.1M PATCHes). Everything the runs do is
usersync's own code: extract from the inbox, transform, plan, load, record.

Requests are counted from the emulators' logs (`/_sandbox/requests/summary`); wall is the time
of the run from the extract to the last target's record (the flow's: from its call to its
return, Prefect's own work included).

    .venv/bin/python bench/steady_state.py [--users 100000] [--groups 2000]
        [--groups-per-user 11] [--latency-ms 10] [--products jira,confluence,bitbucket]
        [--skip-flow] [--pushes 20] [--serve-log LOG] [--prefect-database postgresql]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from usersync import sync
from usersync.store import Store
from usersync.store.schema import inbox_generations, inbox_members, inbox_resources

PROFILE = "steady"
PASSWORD = "bench-admin-secret"
CONTEXT = {"jira": "/jira", "confluence": "/confluence", "bitbucket": "/bitbucket"}
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
ATTRIBUTES_CSV = f"""target,source,transform,regex,replacement,template,default,targets
username,userName,strip lower,,,,,
email,email,strip lower,,,,,
display_name,displayName,strip,,,,,
custom:department,{ENTERPRISE}:department,strip upper,,,,UNKNOWN,jira
custom:employee-id,{ENTERPRISE}:employeeNumber,strip,,,,,jira
"""


def groups_csv(groups: int) -> str:
    """A manual rule per group: the estate's groups exist in the products already, and a
    manual rule is how a profile takes charge of an existing group (an on-the-fly rule does
    not take one over)."""
    rows = "".join(f"{group_name(g)},{group_name(g)},manual,\n" for g in range(groups))
    return "source_group,target_group,mode,targets\n" + rows


# -- the estate, as the source holds it and as the products hold it ------------------------


def username(n: int) -> str:
    return f"u{n:07d}"


def user_id(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-{n:012x}"


def group_name(g: int) -> str:
    return f"g{g:05d}"


def groups_of(n: int, groups: int, per_user: int) -> list[int]:
    """The groups of user `n`: `per_user` distinct ones spread over all of them."""
    step = max(1, groups // per_user)
    return [(n + k * step) % groups for k in range(per_user)]


def person(n: int, changed: bool = False) -> dict[str, Any]:
    """User `n`'s values; `changed`: the values after the 1% change."""
    suffix = "-moved" if changed else ""
    return {
        "email": f"{username(n)}{suffix}@example.org",
        "display_name": f"Person {n}" + (" (moved)" if changed else ""),
        "department": f"DEPT{n % 40:02d}" + ("X" if changed else ""),
        "employee_id": f"E{n:07d}" + ("-2" if changed else ""),
    }


# -- the products, each in a process of its own --------------------------------------------


def _serve(product: str, users: int, groups: int, per_user: int, conn: Connection) -> None:
    """Build and seed one emulator, serve it, send its URL; serve until told to stop."""
    from usersync_sandbox.bitbucket import BitbucketEmulator
    from usersync_sandbox.confluence import ConfluenceEmulator
    from usersync_sandbox.jira import JiraEmulator
    from usersync_sandbox.server import ServedApp

    began = time.monotonic()
    if product == "jira":
        # 10.3+ has /user/list, the one enumeration without a result window
        emulator: Any = JiraEmulator(
            version="10.3.0", context_path="/jira", admin=("admin", PASSWORD)
        )
    elif product == "confluence":
        # The Remote API on, the one mode in which a client reads e-mails (JSON-RPC getUser):
        # without it an account is adopted only when its e-mail matches, so none would be
        emulator = ConfluenceEmulator(
            context_path="/confluence", admin=("admin", PASSWORD), remote_api_enabled=True
        )
    else:
        emulator = BitbucketEmulator(context_path="/bitbucket", admin=("admin", PASSWORD))
    members: dict[int, list[str]] = {g: [] for g in range(groups)}
    for n in range(users):
        values = person(n)
        key = emulator.seed_user(username(n), values["email"], values["display_name"])
        if product == "jira":
            properties = emulator._users[key].properties
            properties["department"] = values["department"]
            properties["employee-id"] = values["employee_id"]
        for g in groups_of(n, groups, per_user):
            members[g].append(username(n))
    for g, names in members.items():
        emulator.seed_group(group_name(g), names)
    app = ServedApp(emulator.app).start()
    conn.send((app.url + CONTEXT[product], time.monotonic() - began))
    conn.recv()
    app.stop()


class Emulator:
    """One product's emulator over HTTP: its latency and its request log."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._http = httpx.Client(base_url=url.rsplit("/", 1)[0] + "/_sandbox", timeout=300)

    def latency(self, seconds: float) -> None:
        self._http.put("/faults", json={"latency_seconds": seconds}).raise_for_status()

    def clear(self) -> None:
        self._http.delete("/requests").raise_for_status()

    def summary(self) -> dict[str, Any]:
        return self._http.get("/requests/summary").json()


#: Confluence's JSON-RPC calls that only read (a POST like every JSON-RPC call): not writes
RPC_READS = ("getUser", "hasUser", "hasGroup", "getGroups", "getUserGroups")


def writes_of(log: dict[str, Any]) -> int:
    """The write requests in an emulator's log summary, less JSON-RPC calls that only read."""
    return sum(
        n
        for call, n in log["writes_by_call"].items()
        if not ("/rpc/json-rpc/" in call and call.rsplit("/", 1)[-1] in RPC_READS)
    )


# -- the source: the inbox's tables, filled directly ---------------------------------------


def user_body(n: int, values: dict[str, Any]) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
        "id": user_id(n),
        "userName": username(n),
        "displayName": values["display_name"],
        "active": True,
        "emails": [{"value": values["email"], "type": "work", "primary": True}],
        ENTERPRISE: {"department": values["department"], "employeeNumber": values["employee_id"]},
        "meta": {"resourceType": "User"},
    }


def member_body(n: int) -> dict[str, Any]:
    return {"value": user_id(n), "type": "User", "display": username(n)}


def fill_inbox(store: Store, users: int, groups: int, per_user: int) -> None:
    now = datetime.now(UTC)
    user_rows = [
        {
            "profile": PROFILE,
            "resource_type": "User",
            "id": user_id(n),
            "body": user_body(n, person(n)),
            "updated_at": now,
        }
        for n in range(users)
    ]
    group_rows = [
        {
            "profile": PROFILE,
            "resource_type": "Group",
            "id": f"group-{g:05d}",
            "body": {
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "id": f"group-{g:05d}",
                "displayName": group_name(g),
                "meta": {"resourceType": "Group"},
            },
            "updated_at": now,
        }
        for g in range(groups)
    ]
    with store.engine.begin() as conn:
        conn.execute(inbox_resources.insert(), user_rows + group_rows)
        seq = 0
        batch: list[dict[str, Any]] = []
        for n in range(users):
            for g in groups_of(n, groups, per_user):
                seq += 1
                batch.append(
                    {
                        "profile": PROFILE,
                        "group_id": f"group-{g:05d}",
                        "member_id": user_id(n),
                        "seq": seq,
                        "body": member_body(n),
                    }
                )
            if len(batch) >= 200_000:
                conn.execute(inbox_members.insert(), batch)
                batch = []
        if batch:
            conn.execute(inbox_members.insert(), batch)
        # What the inbox counts of the changes it accepted (seeded here as one change).
        conn.execute(inbox_generations.insert().values(profile=PROFILE, generation=1))


def change_one_percent(store: Store, users: int, groups: int, per_user: int) -> dict[str, int]:
    """1% of the users get new values (e-mail, display name, both custom attributes); a
    tenth of those also leave their first group for the one after it."""
    changed = list(range(0, users, 100))
    movers = changed[::10]
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        for n in changed:
            conn.execute(
                inbox_resources.update()
                .where(
                    (inbox_resources.c.profile == PROFILE)
                    & (inbox_resources.c.resource_type == "User")
                    & (inbox_resources.c.id == user_id(n))
                )
                .values(body=user_body(n, person(n, changed=True)), updated_at=now)
            )
        seq = users * per_user + 1
        for n in movers:
            mine = groups_of(n, groups, per_user)
            leave = mine[0]
            join = next(g for g in range((leave + 1) % groups, groups) if g not in mine)
            conn.execute(
                inbox_members.delete().where(
                    (inbox_members.c.profile == PROFILE)
                    & (inbox_members.c.group_id == f"group-{leave:05d}")
                    & (inbox_members.c.member_id == user_id(n))
                )
            )
            conn.execute(
                inbox_members.insert(),
                [
                    {
                        "profile": PROFILE,
                        "group_id": f"group-{join:05d}",
                        "member_id": user_id(n),
                        "seq": seq,
                        "body": member_body(n),
                    }
                ],
            )
            seq += 1
        conn.execute(
            inbox_generations.update()
            .where(inbox_generations.c.profile == PROFILE)
            .values(generation=inbox_generations.c.generation + 1)
        )
    return {"changed": len(changed), "moved": len(movers)}


# -- the profile ---------------------------------------------------------------------------


def write_profile(root: Path, urls: dict[str, str], groups: int) -> None:
    folder = root / PROFILE
    folder.mkdir(parents=True)
    targets = "".join(
        f"""  {product}:
    kind: {product}
    url: {url}
    load_budget_seconds: 36000
    auth:
      kind: basic
      username: admin
      password: {{env: USERSYNC_BENCH_PASSWORD}}
"""
        for product, url in urls.items()
    )
    (folder / "profile.yaml").write_text(
        f"""description: bench/steady_state.py
source:
  kind: miniorange-push
targets:
{targets}settings:
  protected_usernames: [admin]
"""
    )
    (folder / "attributes.csv").write_text(ATTRIBUTES_CSV)
    (folder / "groups.csv").write_text(groups_csv(groups))


# -- one run through the engine's steps ----------------------------------------------------


def engine_run(
    store: Store, emulators: dict[str, Emulator], mode: str
) -> tuple[float, float, dict[str, dict[str, Any]]]:
    """One run of every product through the engine's steps (as `tests/e2e/products.py:sync_all`
    does, but every target at once, each in a thread, as the flow runs them); its wall, the extract's share, and per product: the
    requests, writes, plan counts, mode and reason, seconds."""
    for emulator in emulators.values():
        emulator.clear()
    began = time.monotonic()
    loaded = sync.prepare_profile(PROFILE)
    quiet = mode == "delta" and sync.unchanged_source(loaded, list(emulators), store)
    if quiet:  # what the flow's `unchanged-source` task finds: nothing to read
        wall = time.monotonic() - began
        print(f"  {quiet}")
        runs = {
            p: {"mode": "delta", "reason": None, "planned": {}, "status": "succeeded"}
            | {"seconds": 0.0, "plan_seconds": 0.0}
            | {"requests": (log := e.summary())["requests"], "writes": writes_of(log)}
            | {"by_call": log["by_call"]}
            for p, e in emulators.items()
        }
        return wall, wall, runs
    snapshot = sync.extract(loaded, store=store)
    extracted = time.monotonic() - began

    def one(product: str) -> dict[str, Any]:
        started = time.monotonic()
        desired = sync.transform(loaded, snapshot, product)
        with sync.open_target_for(loaded, product) as target:
            plan = sync.plan_target_sync(
                loaded, product, target, desired, store, allow_mass_changes=True, mode=mode
            )
            planned = time.monotonic() - started
            run_id = store.start_run(PROFILE, product, dry_run=False)
            store.record_plan(run_id, plan.plan)
            result = sync.load_target_sync(loaded, target, plan, store, run_id)
            store.finish_run(run_id, result.status, result.counts())
        return {
            "mode": plan.mode,
            "reason": plan.mode_reason,
            "planned": plan.counts(),
            "status": result.status,
            "seconds": time.monotonic() - started,
            "plan_seconds": planned,
        }

    with ThreadPoolExecutor(len(emulators)) as pool:  # every target at once, as the flow does
        out = dict(zip(emulators, pool.map(one, emulators), strict=True))
    wall = time.monotonic() - began
    for product, emulator in emulators.items():
        log = emulator.summary()
        out[product]["requests"] = log["requests"]
        out[product]["writes"] = writes_of(log)
        out[product]["by_call"] = log["by_call"]
    return wall, extracted, out


def flow_run(emulators: dict[str, Emulator]) -> tuple[float, dict[str, int]] | None:
    """The unchanged delta run through the Prefect `sync` flow (targets at once, as the flow
    runs them), on the Prefect server already started (its start is not counted); None when
    the flow has no `mode` parameter."""
    from usersync_flows.sync import sync as sync_flow

    if "mode" not in inspect.signature(sync_flow.fn).parameters:
        return None
    for emulator in emulators.values():
        emulator.clear()
    began = time.monotonic()
    result = sync_flow(profile=PROFILE, mode="delta")
    wall = time.monotonic() - began
    if not isinstance(result, list):
        raise RuntimeError(f"the sync flow did not succeed: {result}")
    return wall, {p: e.summary()["requests"] for p, e in emulators.items()}


def offboarding(
    store: Store, urls: dict[str, str], users: int, pushes: int, log: Path | None
) -> list[tuple[float, float, float]]:
    """(d): `usersync inbox serve` and `usersync serve` of the profile, each in a process of its
    own, then `pushes` users disabled in the inbox over SCIM one after the other (bench/offboarding.py's `time_offboarding`): users the 1% change
    left alone, spread over the estate."""
    from offboarding import inbox_process, time_offboarding

    from usersync.inbox import PREFIX, issue_token

    token = issue_token(store.engine, PROFILE).token
    step = max(1, users // pushes)
    leavers = {username(n): user_id(n) for n in range(step // 2 + 1, users, step)[:pushes]}
    with inbox_process() as inbox:
        return time_offboarding(
            PROFILE,
            urls,
            PASSWORD,
            f"{inbox}{PREFIX}/{PROFILE}",
            token,
            leavers,
            poll_seconds=0.5,
            log=log,
        )


def show(title: str, wall: float, extracted: float, runs: dict[str, dict[str, Any]]) -> None:
    total = sum(r["requests"] for r in runs.values())
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{title}: wall {wall:.1f} s (extract {extracted:.1f} s), {total} requests in all "
        f"(load average {load})"
    )
    for product, r in runs.items():
        print(
            f"  {product}: {r['mode']}{' (' + r['reason'] + ')' if r['reason'] else ''}; "
            f"{r['requests']} requests, {r['writes']} writes, {r['seconds']:.1f} s "
            f"(planning {r['plan_seconds']:.1f} s); planned {r['planned'] or 'nothing'}; "
            f"{r['status']}"
        )
        if r["requests"] <= 20 or os.environ.get("USERSYNC_BENCH_CALLS"):
            print(f"    calls: {json.dumps(r['by_call'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=2_000)
    parser.add_argument("--groups-per-user", type=int, default=11)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--products", default="jira,confluence,bitbucket")
    parser.add_argument(
        "--skip-flow",
        action="store_true",
        help="no Prefect: leaves out (b) through the flow and (d)",
    )
    parser.add_argument("--pushes", type=int, default=20, help="(d): disables pushed (0: no (d))")
    parser.add_argument(
        "--serve-log",
        metavar="LOG",
        help="(d): the serving process's log goes to LOG, and each run's tasks are printed",
    )
    parser.add_argument(
        "--prefect-database",
        choices=("postgresql", "sqlite"),
        default="postgresql",
        help="the temporary Prefect server's database (bench/prefect_server.py)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    products = args.products.split(",")

    began = time.monotonic()
    servers, urls = [], {}
    for product in products:
        parent, child = multiprocessing.Pipe()
        process = multiprocessing.Process(
            target=_serve,
            args=(product, args.users, args.groups, args.groups_per_user, child),
            daemon=True,
        )
        process.start()
        servers.append((process, parent))
    seeded = {}
    for product, (_, parent) in zip(products, servers, strict=True):
        urls[product], seeded[product] = parent.recv()
    emulators = {p: Emulator(u) for p, u in urls.items()}
    for emulator in emulators.values():
        emulator.latency(args.latency_ms / 1000)
    memberships = args.users * args.groups_per_user
    print(
        f"{args.users} users, {args.groups} groups, {memberships} memberships, 2 custom "
        f"attributes; {args.latency_ms:g} ms a request; products seeded in "
        + ", ".join(f"{p} {s:.0f} s" for p, s in seeded.items())
        + f" (all ready after {time.monotonic() - began:.0f} s)"
    )

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as prefect:
        os.environ["USERSYNC_MAPPINGS_DIR"] = str(Path(tmp) / "mappings")
        os.environ["USERSYNC_STORE_URL"] = f"sqlite:///{tmp}/store.db"
        os.environ["USERSYNC_BENCH_PASSWORD"] = PASSWORD
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        if not args.skip_flow:
            from prefect_server import prefect_server

            started = time.monotonic()
            api = prefect.enter_context(prefect_server(args.prefect_database))
            print(
                f"Prefect server ({args.prefect_database}) at {api}: {time.monotonic() - started:.0f} s"
            )
        write_profile(Path(tmp) / "mappings", urls, args.groups)
        store = Store.open()
        filled = time.monotonic()
        fill_inbox(store, args.users, args.groups, args.groups_per_user)
        print(f"inbox filled in {time.monotonic() - filled:.0f} s")

        show("(a) reconcile", *engine_run(store, emulators, "reconcile"))
        show("(b) unchanged delta, engine steps", *engine_run(store, emulators, "delta"))
        if not args.skip_flow:
            flown = flow_run(emulators)
            if flown is None:
                print("(b) through the flow: the sync flow has no `mode` parameter yet")
            else:
                wall, asked = flown
                print(
                    f"(b) unchanged delta, Prefect flow: wall {wall:.1f} s, "
                    f"{sum(asked.values())} requests in all ({asked})"
                )
        counts = change_one_percent(store, args.users, args.groups, args.groups_per_user)
        print(f"(c) changed in the inbox: {counts}")
        wall, extracted, runs = engine_run(store, emulators, "delta")
        show("(c) delta after 1% changed", wall, extracted, runs)
        for product, r in runs.items():
            ratio = r["requests"] / max(1, r["writes"])
            print(f"  {product}: {r['requests']} requests / {r['writes']} writes = {ratio:.2f}")
        show("(c') unchanged delta after it", *engine_run(store, emulators, "delta"))
        if not args.skip_flow and args.pushes:
            from offboarding import latency_line

            print(f"(d) offboarding, {args.pushes} pushes through `usersync serve`:", flush=True)
            rows = offboarding(
                store, urls, args.users, args.pushes, args.serve_log and Path(args.serve_log)
            )
            print(f"(d) offboarding: {latency_line(rows)}")
        store.close()
    for _, parent in servers:
        parent.send("stop")
    for process, _ in servers:
        process.join(10)


if __name__ == "__main__":
    main()
