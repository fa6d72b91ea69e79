"""Benchmark: the Bitbucket emulator's time per request when usersync reads or deactivates ONE
account of a large estate.

Builds `BitbucketEmulator` with `--users` accounts (seeded directly in memory, as
bench/steady_state.py does: `u0000000`..., each licensed by a direct LICENSED_USER grant, or with
`--licence group` by membership of the default group, which holds LICENSED_USER), `--groups`
groups and `--groups-per-user` memberships per account, serves it over real HTTP on loopback
(`usersync_sandbox.server.serve`) and drives usersync's own Bitbucket client
(`usersync.targets.bitbucket.BitbucketTarget`) against it, one operation after the other, for
one account in the middle of the estate:

- `read_state` of the account by name (with its groups and its key, as a run scoped to one user
  plans it), and by key alone (the key not found by name: an account renamed by hand);
- `privileges()`, `access_groups()`, `current_account()`, `read_leads()`, `licence_seats()`,
  `read_user_groups()`;
- `deactivate_user()` (revoke the direct licence, then check the licensing groups) and
  `reactivate_user()`;
- the query bench/offboarding.py's `inactive_everywhere` makes to Bitbucket
  (`GET /admin/permissions/users?filter=<name>`).

Every request is timed inside the server process, around the emulator's ASGI app (the
emulator's own work and serialisation, not the client's), and reported per operation and
endpoint: count, total, mean and max milliseconds. `--json FILE` also writes the figures.

    .venv/bin/python bench/bitbucket_emulator.py [--users 100000] [--groups 2000]
        [--groups-per-user 11] [--licence direct|group] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from usersync_sandbox.bitbucket import BitbucketEmulator
from usersync_sandbox.server import serve

from usersync.config import TargetConfig
from usersync.errors import TargetError
from usersync.http import RetryPolicy
from usersync.targets.bitbucket import BitbucketTarget

PASSWORD = "bench-admin-secret"
CONTEXT = "/bitbucket"
API = f"{CONTEXT}/rest/api/1.0"


def username(n: int) -> str:
    return f"u{n:07d}"


def group_name(g: int) -> str:
    return f"g{g:05d}"


def groups_of(n: int, groups: int, per_user: int) -> list[int]:
    """User `n`'s groups: `per_user` distinct ones spread over all (as bench/steady_state.py)."""
    step = max(1, groups // per_user)
    return [(n + k * step) % groups for k in range(per_user)]


class Timed:
    """An ASGI wrapper that times every request the wrapped app answers, by method and path."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.times: list[tuple[str, float]] = []

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        call = f"{scope['method']} {scope['path'].removeprefix(API)}"

        async def timed_send(message: dict) -> None:
            # Noted before the answer starts to leave (its body is rendered by then), so that
            # the client never sees an answer whose time is not recorded yet (a 204 is whole
            # with its headers).
            if message["type"] == "http.response.start":
                self.times.append((call, (time.perf_counter() - began) * 1000))
            await send(message)

        await self.app(scope, receive, timed_send)


def build(users: int, groups: int, per_user: int, licence: str) -> BitbucketEmulator:
    emulator = BitbucketEmulator(context_path=CONTEXT, admin=("admin", PASSWORD))
    members: dict[int, list[str]] = {g: [] for g in range(groups)}
    everyone = []
    for n in range(users):
        name = username(n)
        emulator.seed_user(name, f"{name}@example.org", f"Person {n}", active=licence == "direct")
        everyone.append(name)
        for g in groups_of(n, groups, per_user):
            members[g].append(name)
    for g, names in members.items():
        emulator.seed_group(group_name(g), names)
    if licence == "group":
        emulator.seed_group(emulator.default_group, everyone)
    return emulator


def target_for(url: str) -> BitbucketTarget:
    config = TargetConfig.model_validate(
        {
            "kind": "bitbucket",
            "url": url + CONTEXT,
            "auth": {"kind": "basic", "username": "admin", "password": {"prefect_secret": "pw"}},
            "timeout_seconds": 600,
        }
    )
    return BitbucketTarget.from_config(
        "bench", config, load_prefect_secret=lambda _name: PASSWORD, retry=RetryPolicy()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=2000)
    parser.add_argument("--groups-per-user", type=int, default=11)
    parser.add_argument("--licence", choices=("direct", "group"), default="direct")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    began = time.monotonic()
    emulator = build(args.users, args.groups, args.groups_per_user, args.licence)
    print(
        f"seeded {args.users} users, {args.groups} groups, {args.groups_per_user} per user "
        f"(licence: {args.licence}) in {time.monotonic() - began:.1f} s"
    )
    n = args.users // 2
    name = username(n)
    key = str(emulator.users[name.casefold()].id)
    its_groups = [group_name(g) for g in groups_of(n, args.groups, args.groups_per_user)]
    timed = Timed(emulator.app)

    with serve(timed) as url:
        target = target_for(url)
        http = httpx.Client(base_url=url + API, auth=("admin", PASSWORD), timeout=600)

        def inactive_check() -> Any:
            grants = http.get("/admin/permissions/users", params={"filter": name}).json()
            return not any(
                g["user"]["name"] == name and g["permission"] == "LICENSED_USER"
                for g in grants["values"]
            )

        operations: list[tuple[str, Callable[[], Any]]] = [
            ("server_version", target.server_version),
            (
                "read_state by name",
                lambda: target.read_state([name], its_groups, [key], custom=()),
            ),
            ("read_state by key", lambda: target.read_state([], [], [key], custom=())),
            ("privileges", target.privileges),
            ("access_groups", target.access_groups),
            ("current_account", target.current_account),
            ("read_leads", target.read_leads),
            ("licence_seats", target.licence_seats),
            ("read_user_groups", lambda: target.read_user_groups([name])),
            ("deactivate_user", lambda: target.deactivate_user(name)),
            ("inactive_everywhere (offboarding)", inactive_check),
            ("reactivate_user", lambda: target.reactivate_user(name)),
        ]
        report: list[dict[str, Any]] = []
        for label, operation in operations:
            timed.times.clear()
            start = time.perf_counter()
            try:
                outcome = operation()
            except TargetError as exc:  # with --licence group, deactivate_user is refused
                outcome = f"{type(exc).__name__}: {exc}"
            wall = (time.perf_counter() - start) * 1000
            by_call: dict[str, list[float]] = defaultdict(list)
            for call, ms in timed.times:
                by_call[call].append(ms)
            summary = _describe(outcome)
            print(
                f"\n{label}: {wall:.0f} ms of client wall, {len(timed.times)} request(s)"
                f" -> {summary}"
            )
            for call, times in by_call.items():
                print(
                    f"    {call:45s} n={len(times):4d}  total={sum(times):9.1f} ms  "
                    f"mean={sum(times) / len(times):8.1f} ms  max={max(times):8.1f} ms"
                )
            report.append(
                {
                    "operation": label,
                    "wall_ms": round(wall, 1),
                    "calls": {
                        call: {
                            "n": len(times),
                            "total_ms": round(sum(times), 1),
                            "mean_ms": round(sum(times) / len(times), 2),
                            "max_ms": round(max(times), 2),
                        }
                        for call, times in by_call.items()
                    },
                }
            )
        target.close()
        http.close()
    worst = max(
        (c["max_ms"], f"{r['operation']}: {call}")
        for r in report
        if r["operation"] != "read_state by key"
        for call, c in r["calls"].items()
    )
    print(f"\nslowest request outside the by-key read: {worst[0]:.1f} ms ({worst[1]})")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "operations": report}, indent=2
            )
        )


def _describe(outcome: Any) -> str:
    """A short, comparable account of what an operation returned."""
    if hasattr(outcome, "users"):
        return (
            f"{len(outcome.users)} user(s) {outcome.users.to_dict('records')}, "
            f"{len(outcome.groups)} group(s), {len(outcome.memberships)} membership(s)"
        )
    if hasattr(outcome, "administrators"):
        return f"admins {sorted(outcome.administrators)}, groups {sorted(outcome.groups)}"
    if hasattr(outcome, "to_dict"):
        return f"{len(outcome)} row(s)"
    return repr(outcome)[:200]


if __name__ == "__main__":
    main()
