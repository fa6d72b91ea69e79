"""Benchmark: a miniOrange-style push into the SCIM inbox, and what another profile sees meanwhile.

Starts the inbox in a subprocess (uvicorn over a fresh SQLite store, no Prefect events), issues
tokens for two profiles, then pushes into profile `acme` what miniOrange sends when 4,000 users
are assigned to an app bound to one group: per user, `POST /Users` then a `PATCH /Groups/<id>`
adding that user to the group (one `add` of `members`), so the group grows to 4,000 members
one PATCH at a time. `--concurrency` clients push at once, each on its own keep-alive
connection. Meanwhile a separate process reads profile `other` (a `GET /Users/<id>` every
`--probe-interval` seconds) and records each answer's latency; it also probes for a few seconds
before the push, which gives the idle baseline.

Printed: requests/s over the whole push, the median PATCH latency of the first and the last
500 PATCHes (a PATCH that costs the group's size grows from one to the other), the median and
95th percentile of the other profile's latency idle and during the push, the members the group
ends with (checked), and the server process's peak RSS (VmHWM).

    .venv/bin/python bench/inbox_push.py [--users 4000] [--concurrency 4] [--probe-interval 0.02]

Figures are noisy on a 2-core machine, where the clients, the probe and the server share the
cores: compare within one run, or runs of the old and new code one after the other.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from usersync_sandbox.server import free_port, peak_rss_mb

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
TIMEOUT = httpx.Timeout(60.0)


def user_body(name: str) -> dict[str, Any]:
    return {
        "schemas": [USER_SCHEMA],
        "userName": name,
        "name": {"givenName": name.title(), "familyName": "Doe"},
        "emails": [{"value": f"{name}@example.org", "type": "work", "primary": True}],
        "displayName": f"{name.title()} Doe",
        "active": True,
    }


def add_member_body(user_id: str) -> dict[str, Any]:
    return {
        "schemas": [PATCH_SCHEMA],
        "Operations": [{"op": "add", "path": "members", "value": [{"value": user_id}]}],
    }


def serve(store_url: str, port: int) -> None:
    """The server process: the inbox app under uvicorn, as `usersync inbox serve` runs it."""
    import uvicorn

    from usersync.inbox import InboxApp
    from usersync.store import Store

    app = InboxApp(Store.open(store_url).engine)
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )


def wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the inbox exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/scim/v2/acme/ServiceProviderConfig").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("the inbox did not start within 60 s")


def probe(
    base: str, token: str, user_id: str, interval: float, stop: Any, out: Any, phase: Any
) -> None:
    """The other profile's client: one GET per interval; latencies (ms) by phase."""
    latencies: dict[str, list[float]] = {"idle": [], "push": []}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=TIMEOUT) as http:
        while not stop.is_set():
            started = time.perf_counter()
            answer = http.get(f"/Users/{user_id}")
            elapsed = (time.perf_counter() - started) * 1000
            if answer.status_code != 200:
                raise SystemExit(f"the other profile's GET answered {answer.status_code}")
            latencies["push" if phase.is_set() else "idle"].append(elapsed)
            time.sleep(interval)
    out.put(latencies)


def push(base: str, token: str, group_id: str, names: list[str], patches: list[tuple]) -> None:
    """One client: per user, create it, then add it to the group; PATCH (start, ms) recorded."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=TIMEOUT) as http:
        for name in names:
            created = http.post("/Users", json=user_body(name))
            if created.status_code != 201:
                raise SystemExit(f"POST /Users answered {created.status_code}: {created.text}")
            started = time.perf_counter()
            patched = http.patch(f"/Groups/{group_id}", json=add_member_body(created.json()["id"]))
            patches.append((started, (time.perf_counter() - started) * 1000))
            if patched.status_code not in (200, 204):
                raise SystemExit(f"PATCH /Groups answered {patched.status_code}: {patched.text}")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def run(args: argparse.Namespace) -> None:
    from usersync.inbox import issue_token
    from usersync.store import Store

    folder = Path(tempfile.mkdtemp(prefix="usersync-bench-inbox-"))
    store_url = f"sqlite:///{folder / 'store.db'}"
    store = Store.open(store_url)
    tokens = {name: issue_token(store.engine, name).token for name in ("acme", "other")}
    store.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, __file__, "serve", "--store-url", store_url, "--port", str(port)],
        env={**os.environ, "PREFECT_API_URL": ""},
    )
    try:
        wait_until_up(url, server)
        acme = f"{url}/scim/v2/acme"
        other = f"{url}/scim/v2/other"
        auth = {"Authorization": f"Bearer {tokens['other']}"}
        other_id = httpx.post(f"{other}/Users", headers=auth, json=user_body("probe")).json()["id"]
        auth = {"Authorization": f"Bearer {tokens['acme']}"}
        group = httpx.post(
            f"{acme}/Groups", headers=auth, json={"schemas": [GROUP_SCHEMA], "displayName": "app"}
        )
        group_id = group.json()["id"]
        print(f"inbox pid {server.pid}: peak RSS after start {peak_rss_mb(server.pid):.0f} MB")

        stop, phase = multiprocessing.Event(), multiprocessing.Event()
        out: multiprocessing.Queue = multiprocessing.Queue()
        prober = multiprocessing.Process(
            target=probe,
            args=(other, tokens["other"], other_id, args.probe_interval, stop, out, phase),
        )
        prober.start()
        time.sleep(args.idle_seconds)

        names = [f"user{i:05d}" for i in range(args.users)]
        patches: list[tuple[float, float]] = []
        workers = [
            threading.Thread(
                target=push,
                args=(acme, tokens["acme"], group_id, names[i :: args.concurrency], patches),
            )
            for i in range(args.concurrency)
        ]
        phase.set()
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - started
        stop.set()
        latencies = out.get(timeout=60)
        prober.join(timeout=10)

        members = httpx.get(f"{acme}/Groups/{group_id}", headers=auth, timeout=TIMEOUT).json()
        count = len(members.get("members") or [])
        ordered = [ms for _, ms in sorted(patches)]
        requests = 2 * args.users
        print(
            json.dumps(
                {
                    "users": args.users,
                    "concurrency": args.concurrency,
                    "requests": requests,
                    "seconds": round(elapsed, 1),
                    "requests_per_s": round(requests / elapsed, 1),
                    "patch_ms_median_first_500": round(statistics.median(ordered[:500]), 1),
                    "patch_ms_median_last_500": round(statistics.median(ordered[-500:]), 1),
                    "other_ms_median_idle": round(statistics.median(latencies["idle"]), 1),
                    "other_ms_p95_idle": round(percentile(latencies["idle"], 0.95), 1),
                    "other_ms_median_push": round(statistics.median(latencies["push"]), 1),
                    "other_ms_p95_push": round(percentile(latencies["push"], 0.95), 1),
                    "other_requests_during_push": len(latencies["push"]),
                    "group_members": count,
                    "server_peak_rss_mb": round(peak_rss_mb(server.pid)),
                },
                indent=1,
            )
        )
        if count != args.users:
            print(f"WARNING: the group has {count} members, not {args.users}")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    served = sub.add_parser("serve", help="(internal) the server process")
    served.add_argument("--store-url", required=True)
    served.add_argument("--port", type=int, required=True)
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--probe-interval", type=float, default=0.02)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args.store_url, args.port)
    else:
        run(args)


if __name__ == "__main__":
    main()
