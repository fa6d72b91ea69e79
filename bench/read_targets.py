"""Benchmark: reading every user and every group's members from each sandbox product, in requests.

Seeds each emulator (in a child process, so the client does not share its interpreter) with
`--users` users and `--groups` groups, each user in `--groups-per-user` of them, then reads them
back the way a sync's planning does: `read_users` with every username and `read_groups` with
every group. It counts the requests in the emulator's log by call and sets them against what
the products' page caps allow: one request per page of the user list (Jira `/user/list`
2,000, Confluence `/user/list` 200, Bitbucket `/admin/users` 1,000 in the emulator: the
product's own cap is UNCONFIRMED), one per page of each group's members (Jira 50, Confluence
200, Bitbucket 1,000), and for Bitbucket one per page of the direct licences
(`/admin/permissions/users`, how `active` is read) and of its group list (`/admin/groups`,
how a read of many groups finds which exist). Everything else is listed as "other".

    .venv/bin/python bench/read_targets.py [--users 100000] [--groups 1000]
        [--groups-per-user 3] [--products jira,confluence,bitbucket]
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import re
import time
from multiprocessing.connection import Connection
from typing import Any

import httpx

from usersync.config import TargetConfig
from usersync.targets import open_target

PASSWORD = "bench-admin-secret"
CONTEXT = {"jira": "/jira", "confluence": "/confluence", "bitbucket": "/bitbucket"}
#: (call pattern, what it lists, page cap) per product: the listings a full read needs.
LISTINGS: dict[str, list[tuple[str, str, int]]] = {
    "jira": [
        (r"GET /jira/rest/api/2/user/list$", "users", 2000),
        (r"GET /jira/rest/api/2/group/member$", "members", 50),
    ],
    "confluence": [
        (r"GET /confluence/rest/api/user/list$", "users", 200),
        (r"GET /confluence/rest/api/group/[^/]+/member$", "members", 200),
    ],
    "bitbucket": [
        (r"GET /bitbucket/rest/api/1.0/admin/users$", "users", 1000),
        (r"GET /bitbucket/rest/api/1.0/admin/groups$", "groups", 1000),
        (r"GET /bitbucket/rest/api/1.0/admin/permissions/users$", "licences", 1000),
        (r"GET /bitbucket/rest/api/1.0/admin/groups/more-members$", "members", 1000),
    ],
}


def username(n: int) -> str:
    return f"u{n:07d}"


def group_of(n: int, k: int, groups: int) -> str:
    return f"g{(n * 7 + k * 131) % groups:05d}"


def _serve(products: list[str], users: int, groups: int, per_user: int, conn: Connection) -> None:
    """Build, seed and serve the emulators; send their URLs; serve until told to stop."""
    from usersync_sandbox.bitbucket import BitbucketEmulator
    from usersync_sandbox.confluence import ConfluenceEmulator
    from usersync_sandbox.jira import JiraEmulator
    from usersync_sandbox.server import ServedApp

    built = {
        # 10.3+ has /user/list, the one enumeration without a result window.
        "jira": lambda: JiraEmulator(
            version="10.3.0", context_path="/jira", admin=("admin", PASSWORD)
        ),
        "confluence": lambda: ConfluenceEmulator(
            context_path="/confluence", admin=("admin", PASSWORD)
        ),
        "bitbucket": lambda: BitbucketEmulator(
            context_path="/bitbucket", admin=("admin", PASSWORD)
        ),
    }
    served = []
    urls = {}
    for product in products:
        emulator = built[product]()
        members: dict[str, list[str]] = {}
        for n in range(users):
            emulator.seed_user(username(n), f"{username(n)}@example.org", f"Person {n}")
            for k in range(per_user):
                members.setdefault(group_of(n, k, groups), []).append(username(n))
        for name in sorted(members):
            emulator.seed_group(name, sorted(set(members[name])))
        app = ServedApp(emulator.app).start()
        served.append(app)
        urls[product] = app.url + CONTEXT[product]
    conn.send(urls)
    conn.recv()
    for app in served:
        app.stop()


def expected_members(users: int, groups: int, per_user: int) -> dict[str, int]:
    members: dict[str, set[int]] = {}
    for n in range(users):
        for k in range(per_user):
            members.setdefault(group_of(n, k, groups), set()).add(n)
    return {g: len(m) for g, m in members.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=1_000)
    parser.add_argument("--groups-per-user", type=int, default=3)
    parser.add_argument("--products", default="jira,confluence,bitbucket")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    products = args.products.split(",")
    sizes = expected_members(args.users, args.groups, args.groups_per_user)
    names = [username(n) for n in range(args.users)]

    began = time.monotonic()
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(
        target=_serve,
        args=(products, args.users, args.groups, args.groups_per_user, child),
        daemon=True,
    )
    server.start()
    urls = parent.recv()
    print(
        f"{args.users} users, {len(sizes)} groups, {sum(sizes.values())} memberships per product "
        f"(seeded in {time.monotonic() - began:.0f} s)"
    )
    for product in products:
        control = httpx.Client(base_url=urls[product].rsplit("/", 1)[0] + "/_sandbox", timeout=120)
        config = TargetConfig.model_validate(
            {
                "kind": product,
                "url": urls[product],
                "auth": {
                    "kind": "basic",
                    "username": "admin",
                    "password": {"prefect_secret": "bench"},
                },
            }
        )
        target = open_target(product, config, load_prefect_secret=lambda _name: PASSWORD)
        control.delete("/requests")
        began = time.monotonic()
        users = target.read_users(names)
        found, members = target.read_groups(sorted(sizes))
        seconds = time.monotonic() - began
        target.close()
        summary = control.get("/requests/summary").json()
        report(product, summary, seconds, len(users), len(found), len(members), args, sizes)
    parent.send("stop")
    server.join(10)


def report(
    product: str,
    summary: dict[str, Any],
    seconds: float,
    users: int,
    groups: int,
    members: int,
    args: argparse.Namespace,
    sizes: dict[str, int],
) -> None:
    counted = dict.fromkeys(("users", "groups", "licences", "members", "other"), 0)
    for call, n in summary["by_call"].items():
        kind = next(
            (what for pattern, what, _ in LISTINGS[product] if re.match(pattern, call)), "other"
        )
        counted[kind] += n
    allowed = 0
    parts = []
    for _pattern, what, cap in LISTINGS[product]:
        if what == "members":
            pages = sum(max(1, math.ceil(m / cap)) for m in sizes.values())
        elif what == "groups":
            pages = math.ceil((len(sizes) + 1) / cap)  # Bitbucket's default group too
        else:
            pages = math.ceil((args.users + 1) / cap)  # the admin account too
        allowed += pages
        parts.append(f"{what} {counted[what]} (caps allow {pages})")
    print(
        f"{product}: {users} users, {groups} groups, {members} memberships read in {seconds:.1f} s; "
        f"{summary['requests']} requests: {', '.join(parts)}, other {counted['other']}; "
        f"listings {summary['requests'] - counted['other']} vs {allowed} allowed"
    )


if __name__ == "__main__":
    main()
