"""The `usersync` command: validate profiles, sync, check connections, inspect runs, run the demo.

The CLI is the outermost layer: `sync` and `demo` start the Prefect flows (imported when the
command runs, so `validate` and `runs` work without a Prefect server); `alerts` creates
Prefect automations, and `check` and `test-sync` read Prefect Secret blocks when a profile
names one (from $PREFECT_API_URL); everything else calls the engine directly. Exit status: 0
success, 1 a sync or check failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from usersync import ConfigError, UsersyncError


class PrefectUnreachableError(UsersyncError):
    """PREFECT_API_URL names a server that does not answer."""


def _require_prefect_api() -> None:
    """Stop with one line when the configured Prefect API does not answer (before anything
    starts); without one, Prefect starts an ephemeral server itself.

    Raises:
        PrefectUnreachableError: no answer from PREFECT_API_URL within a few seconds.
    """
    import httpx
    from prefect.settings import Settings

    url = Settings().api.url
    if not url:
        return
    try:
        httpx.get(f"{str(url).rstrip('/')}/health", timeout=5.0)
    except httpx.HTTPError as exc:
        raise PrefectUnreachableError(
            f"the Prefect API at {url} does not answer ({type(exc).__name__}: {exc}): start "
            "that server (prefect server start), fix PREFECT_API_URL, or unset it to let "
            "Prefect start a temporary server for this command"
        ) from None


def _validate(args: argparse.Namespace) -> int:
    from usersync import prepare_profile, shared_instance_warnings

    loaded = prepare_profile(args.profile)
    profile = loaded.profile
    print(f"profile {profile.name}: OK")
    print(f"  source: {profile.source.kind} {getattr(profile.source, 'url', '')}")
    for name, target in profile.targets.items():
        print(f"  target {name}: {target.kind} {target.url} ({target.auth.kind} auth)")
    print(
        f"  attributes.csv: {len(loaded.tables.attributes)} rule(s); source attributes read: "
        f"{', '.join(loaded.tables.source_attributes())}"
    )
    print(f"  groups.csv: {len(loaded.tables.groups)} rule(s)")
    for warning in [*loaded.tables.warnings, *shared_instance_warnings(profile)]:
        print(f"  warning: {warning}")
    return 0


def _sync(args: argparse.Namespace) -> int:
    from usersync import prepare_profile

    # Validate before Prefect starts, so a bad profile is one line, not a flow run's traceback.
    prepare_profile(args.profile)
    _require_prefect_api()
    from usersync_flows.sync import SyncBraked, SyncFailed, sync

    try:
        outcomes = sync(
            profile=args.profile,
            targets=args.target or None,
            dry_run=args.dry_run,
            allow_mass_changes=args.allow_mass_changes,
            full=args.full,
            wait_seconds=args.wait,
            mode="delta" if args.delta else "reconcile",
            only=args.only,
        )
    except SyncBraked as exc:
        print(f"sync braked, nothing written there: {exc}", file=sys.stderr)
        return 1
    except SyncFailed as exc:
        print(f"sync failed: {exc}", file=sys.stderr)
        return 1
    for outcome in outcomes:
        print(f"{outcome['target']}: {outcome['status']} planned={outcome['planned']}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from usersync import prepare_profile

    for profile in args.profile:
        prepare_profile(profile)  # one line for a bad profile, before Prefect starts
    _require_prefect_api()
    from usersync_flows.served import serve_profiles

    serve_profiles(
        args.profile,
        limit=args.limit,
        poll_seconds=args.poll_seconds,
        leaver_poll_seconds=args.leaver_poll_seconds,
    )
    return 0


def _prefect_secret(name: str) -> str:
    """A Prefect Secret block's value, for `check` and `test-sync` (Prefect imported if needed)."""
    from usersync_tasks.secrets import load_prefect_secret_if_configured

    return load_prefect_secret_if_configured(name)


def _check(args: argparse.Namespace) -> int:
    from usersync import check_connections, prepare_profile

    results = check_connections(prepare_profile(args.profile), load_prefect_secret=_prefect_secret)
    for result in results:
        print(f"{result.part}: {'OK' if result.ok else 'FAILED'}: {result.detail}")
    return 0 if all(result.ok for result in results) else 1


def _test_sync(args: argparse.Namespace) -> int:
    from usersync import prepare_profile, run_test_sync

    report = run_test_sync(
        prepare_profile(args.profile),
        args.login,
        attribute=args.attribute,
        load_prefect_secret=_prefect_secret,
    )
    print(report.markdown())
    return 0 if report.matches == 1 else 1


def _alerts_install(args: argparse.Namespace) -> int:
    from usersync_tasks.alerts import install_alerts

    _require_prefect_api()
    for automation in install_alerts(args.block):
        print(f"automation '{automation.name}' ({automation.id}): notifies through {args.block}")
    return 0


def _answer(args: argparse.Namespace) -> int:
    from usersync_tasks.approval import answer, run_url

    _require_prefect_api()
    approve = args.command == "approve"
    run = answer(args.run, approve=approve, name=args.name, comment=args.comment)
    verb = "approved" if approve else "rejected"
    print(f"{verb}: flow run {run.name} ({run.id}) resumes with your decision, by {args.name}")
    url = run_url(run.id)
    if url:
        print(f"follow it: {url}")
    return 0


def _deployments_configure(args: argparse.Namespace) -> int:
    from usersync_tasks.instances import configure_deployments

    _require_prefect_api()
    lines, skipped = configure_deployments()
    for line in lines:
        print(line)
    return 1 if skipped else 0


def _drift(args: argparse.Namespace) -> int:
    from usersync import DRIFT_KINDS, Store

    store = Store.open(args.store_url)
    latest = [r for r in store.latest_runs(args.profile) if (r["counts"] or {}).get("drift")]
    if not latest:
        print("no drift recorded: run a sync (a dry run will do) first")
        return 0
    for run in sorted(latest, key=lambda r: (r["profile"], r["target"])):
        drift = run["counts"]["drift"]
        counts = ", ".join(f"{kind} {drift[kind]['count']}" for kind in DRIFT_KINDS)
        print(f"{run['profile']} / {run['target']} (run {run['id']}): {counts}")
        for kind in DRIFT_KINDS:
            for item in drift[kind]["items"]:
                print(f"  {kind}: {item['name']}: {item['why']}")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from usersync import Store, run_operations_text, runs_table

    store = Store.open(args.store_url)
    if args.run is None:
        # A flow run is one row per target: read enough rows for `limit` of them.
        frame = store.runs(args.profile, limit=args.limit * 20)
        print(runs_table(frame, args.limit, _prefect_run_url()))
        return 0
    frame = store.runs(args.profile, limit=1_000_000)
    wanted = args.run.strip().lower()
    chosen = frame.iloc[0:0]
    if not frame.empty and wanted.isdigit():  # a store run id: its flow run's targets too
        hit = frame.loc[frame["id"] == int(wanted)]
        flow_run = hit["flow_run_id"].iloc[0] if len(hit) else None
        chosen = frame.loc[frame["flow_run_id"] == flow_run] if flow_run else hit
    if not frame.empty and chosen.empty and len(wanted) >= 8:  # a flow run id, or its start
        chosen = frame.loc[frame["flow_run_id"].fillna("").str.lower().str.startswith(wanted)]
        if chosen["flow_run_id"].nunique() > 1:
            raise ConfigError(f"--run {args.run} fits several flow runs: give more of its id")
    if chosen.empty:
        raise ConfigError(
            f"no run {args.run}"
            + (f" of profile {args.profile}" if args.profile else "")
            + " in the store: give a store run id (column id of `usersync runs`) or a flow "
            "run id (at least its first 8 characters)"
        )
    operations = {int(i): store.operations(int(i)) for i in chosen["id"]}
    print(run_operations_text(chosen, operations))
    return 0


def _prefect_run_url():
    """A function from a flow run id to its Prefect UI page, when a UI URL is configured
    (PREFECT_UI_URL, or derived from PREFECT_API_URL); else None. No server is contacted."""
    try:
        from prefect.settings import Settings
    except ImportError:  # pragma: no cover - Prefect is a dependency
        return None
    ui_url = Settings().ui_url  # from the environment as it is now
    if not ui_url:
        return None
    return lambda flow_run_id: f"{str(ui_url).rstrip('/')}/runs/flow-run/{flow_run_id}"


def _conflicts(args: argparse.Namespace) -> int:
    from usersync import Store

    store = Store.open(args.store_url)
    frame = store.latest_conflicts(args.profile)
    if frame.empty:
        print("no conflicts in the latest runs")
        return 0
    for (profile, target, run), rows in frame.groupby(["profile", "target", "run"], sort=True):
        print(f"{profile} / {target} (run {run}, {len(rows)} conflict(s)):")
        for row in rows.itertuples():
            print(f"  {row.username or '-'}: {row.reason}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from usersync_flows.demo import run_demo

    _require_prefect_api()
    return run_demo(args.source)


def _sandbox(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from usersync_sandbox.serve import serve_forever

    with ExitStack() as stack:
        if args.ldap:
            from usersync_sandbox.slapd import SlapdServer

            directory = stack.enter_context(SlapdServer.for_demo(port=args.ldap_port))
            print(f"ldap: {directory.url}  (the sample directory, base {directory.base_dn})")
            print(f"  bind DN {directory.admin_dn}, password {directory.admin_password}")
            print(
                "  for profile demo: export "
                f"USERSYNC_DEMO_LDAP_URL={directory.url} "
                f"USERSYNC_DEMO_LDAP_PASSWORD={directory.admin_password}",
                flush=True,
            )
        return serve_forever(args.host, args.port)


def _inbox_push_sample(args: argparse.Namespace) -> int:
    import httpx
    from usersync_sandbox.push import push_sample

    from usersync import INBOX_PREFIX

    base = f"{args.url.rstrip('/')}{INBOX_PREFIX}/{args.profile}"
    try:
        pushed = push_sample(base, args.token)
    except RuntimeError as exc:
        raise UsersyncError(f"the inbox at {base} refused the sample: {exc}") from None
    except httpx.HTTPError as exc:  # connection refused, unknown host, timeout
        raise UsersyncError(f"no inbox answers at {base}: {exc}") from None
    print(f"pushed {len(pushed)} user(s) and their groups into {base}")
    return 0


def _inbox_serve(args: argparse.Namespace) -> int:
    import logging
    import os

    import uvicorn
    from usersync_tasks.inbox_events import inbox_event_callback

    from usersync import (
        INBOX_PREFIX,
        InboxApp,
        InboxLimits,
        Store,
        plain_http_warning,
        uvicorn_options,
    )

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together: give both, or neither")
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not os.path.isfile(path):
            raise ConfigError(f"{option} {path}: no such file")
    limits = InboxLimits(
        max_body_bytes=args.max_body_bytes,
        max_bulk_bytes=args.max_bulk_bytes,
        max_concurrent_requests=args.max_concurrent_requests,
        header_timeout_seconds=args.header_timeout_seconds,
        max_connections_per_client=args.max_connections_per_client,
        max_connections=args.max_connections,
    )
    store = Store.open(args.store_url)
    on_change, events_line = inbox_event_callback()
    app = InboxApp(store.engine, on_change=on_change, limits=limits)
    scheme = "https" if args.tls_cert else "http"
    print(f"SCIM inbox on {scheme}://{args.host}:{args.port}{INBOX_PREFIX}/<profile>", flush=True)
    print(events_line, flush=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:  %(name)s: %(message)s")
    warning = None if args.tls_cert else plain_http_warning(args.host)
    if warning:
        print(f"\n*** WARNING: {warning}\n", file=sys.stderr, flush=True)
        logging.getLogger("usersync.inbox").warning(warning)
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="info",
            lifespan="off",
            ssl_certfile=args.tls_cert,
            ssl_keyfile=args.tls_key,
            # Connections are bounded before their request head is complete (slow-loris).
            **uvicorn_options(limits),
        )
    finally:
        if on_change is not None:
            on_change.flush_all()
    return 0


def _inbox_token(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from usersync import INBOX_PREFIX, Store, issue_inbox_token, load_profile

    source = load_profile(args.profile).source
    if source.kind != "miniorange-push":
        raise ConfigError(
            f"profile {args.profile} reads its source with kind '{source.kind}', not from the "
            "inbox; set source.kind: miniorange-push to receive pushes"
        )
    store = Store.open(args.store_url or source.store_url)
    issued = issue_inbox_token(
        store.engine, source.inbox, rotate=args.rotate, grace=timedelta(hours=args.grace_hours)
    )
    print(f"SCIM base URL: https://<this host>{INBOX_PREFIX}/{source.inbox}")
    print(f"bearer token (shown once, paste it into miniOrange): {issued.token}")
    if issued.previous_valid_until:
        until = f"{issued.previous_valid_until:%Y-%m-%d %H:%M} UTC"
        print(f"the previous token stays valid until {until}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="usersync",
        description="Sync users and groups from an IdP (LDAP, Active Directory, miniOrange) "
        "into Jira, Confluence and Bitbucket Data Center.",
    )
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("validate", help="check a profile and its mapping tables; no I/O")
    p.add_argument("profile", help="folder name under mappings/ ($USERSYNC_MAPPINGS_DIR)")
    p.set_defaults(func=_validate)

    p = commands.add_parser(
        "sync", help="run the sync flow for a profile (on $PREFECT_API_URL or an ephemeral server)"
    )
    p.add_argument("profile", help="folder name under mappings/")
    p.add_argument(
        "--dry-run", action="store_true", help="plan and publish the plan; write nothing"
    )
    p.add_argument(
        "--target",
        action="append",
        metavar="NAME",
        help="sync only this target of the profile (repeatable; default: all)",
    )
    p.add_argument(
        "--allow-mass-changes",
        "--allow-mass-deactivation",
        dest="allow_mass_changes",
        action="store_true",
        help="release the brake on deactivations and membership removals for this run "
        "(check a dry run's plan first); without it, on a terminal a braked plan is shown "
        "and you are asked to approve it (settings.approval: never turns that off)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="if another run of this profile is under way, wait up to this long for it "
        "(default: stop at once with a message)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="read the whole source even where an incremental read is possible (AD)",
    )
    p.add_argument(
        "--delta",
        action="store_true",
        help="a delta run: read from the products only the accounts and groups whose source "
        "data changed since the last runs wrote them (default: a reconcile run, which reads "
        "everything and repairs hand-made changes); it reconciles instead, saying why, when "
        "it cannot trust what was written (README, Delta and reconcile runs)",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="USER",
        help="with --delta: plan only this identity (a source id or a user name; repeatable), "
        "as an offboarding push does",
    )
    p.set_defaults(func=_sync)

    p = commands.add_parser(
        "serve",
        help="serve each profile's offboarding deployment (sync/<profile>-offboarding) from this "
        "process: a push disabling or deleting a user (or, for an incremental LDAP source, a "
        "poll finding one disabled) starts a delta run scoped to it within seconds, without a "
        "worker; on $PREFECT_API_URL",
    )
    p.add_argument("profile", nargs="+", help="the profiles to serve")
    p.add_argument(
        "--limit",
        type=int,
        default=4,
        metavar="N",
        help="flow runs at once in this process (default 4)",
    )
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=1.0,
        metavar="S",
        help="how often to ask Prefect for runs to start (default 1; Prefect's own default, "
        "PREFECT_RUNNER_POLL_FREQUENCY, is 10: every triggered run would wait up to that long)",
    )
    p.add_argument(
        "--leaver-poll-seconds",
        type=float,
        default=15.0,
        metavar="S",
        help="for profiles whose LDAP source reads incrementally: how often to ask the "
        "directory for users disabled since the last run, each found starting an offboarding "
        "run (default 15; 0: no poll)",
    )
    p.set_defaults(func=_serve)

    p = commands.add_parser(
        "check",
        help="Test Connection: reach the source and each target, prove credentials "
        "and admin rights; writes nothing",
    )
    p.add_argument("profile")
    p.set_defaults(func=_check)

    p = commands.add_parser(
        "test-sync",
        help="Test Sync: find one user in the source, show its attributes and what each "
        "target would get; writes nothing",
    )
    p.add_argument("profile")
    p.add_argument("login", help="the value to look up, taken literally")
    p.add_argument(
        "--attribute", default=None, help="attribute to match (default: sAMAccountName on AD, uid)"
    )
    p.set_defaults(func=_test_sync)

    alerts = commands.add_parser(
        "alerts", help="Prefect automations that notify when a sync fails or is braked"
    ).add_subparsers(dest="alerts_command", required=True)
    p = alerts.add_parser(
        "install",
        help="create (or replace) the automations on $PREFECT_API_URL: a sync run Failed, "
        "Crashed or TimedOut; a guard stopped a sync (event usersync.sync.braked)",
    )
    p.add_argument(
        "--block",
        required=True,
        metavar="NAME",
        help="the notification block to send through (Slack, Teams, e-mail, webhook...): its "
        "name, or type-slug/name",
    )
    p.set_defaults(func=_alerts_install)

    for verb, text in (
        ("approve", "let a run paused by the brake make the destructive changes it shows"),
        ("reject", "refuse them: the braked targets of the paused run write nothing"),
    ):
        p = commands.add_parser(
            verb,
            help=f"{text} (as the run's Resume form in the Prefect UI; on $PREFECT_API_URL)",
        )
        p.add_argument(
            "run", help="the paused flow run: its id (in the approval notification) or its name"
        )
        p.add_argument("--name", required=True, help="your name, recorded with the decision")
        p.add_argument("--comment", default="", help="recorded with the decision")
        p.set_defaults(func=_answer)

    deployments = commands.add_parser(
        "deployments", help="finish what prefect deploy cannot express"
    ).add_subparsers(dest="deployments_command", required=True)
    p = deployments.add_parser(
        "configure",
        help="after `prefect deploy --all`: offer each sync deployment's targets as choices "
        "in its run form, and create one global concurrency limit per target instance "
        "(usersync-instance-<url>) so runs of different profiles queue per instance",
        description="Reads PREFECT_API_URL and the mappings folder (USERSYNC_MAPPINGS_DIR, else "
        "mappings/ under USERSYNC_HOME); run it again after adding a profile or a target.",
    )
    p.set_defaults(func=_deployments_configure)
    for name, func, text in (
        (
            "conflicts",
            _conflicts,
            "accounts the latest run of each profile and target planned nothing for, and why "
            "(claimed by another profile, adoption refused, renames onto a taken name, ...)",
        ),
        (
            "drift",
            _drift,
            "what the latest runs found that no source, rule or profile explains: unmanaged "
            "accounts in managed groups, leavers still active, accounts two profiles claim, "
            "managed groups no rule maps (read-only; from what the runs read)",
        ),
    ):
        p = commands.add_parser(name, help=text)
        p.add_argument("profile", nargs="?", help="only this profile (default: all)")
        p.add_argument(
            "--store-url",
            default=None,
            help="default: $USERSYNC_STORE_URL or the store under USERSYNC_HOME",
        )
        p.set_defaults(func=func)

    p = commands.add_parser(
        "runs",
        help="recorded runs from the store, newest first: when, profile, kind, each target's "
        "outcome and counts, the Prefect run; --run ID: that run's operations",
    )
    p.add_argument("profile", nargs="?", help="only this profile (default: all)")
    p.add_argument("--limit", type=int, default=20, help="flow runs shown (default 20)")
    p.add_argument(
        "--run",
        metavar="ID",
        default=None,
        help="show one run's operations: a store run id (column id) or a flow run id (or its "
        "first 8+ characters)",
    )
    p.add_argument(
        "--store-url", default=None, help="default: $USERSYNC_STORE_URL or var/usersync.db"
    )
    p.set_defaults(func=_runs)

    p = commands.add_parser(
        "demo",
        help="push the sample users into the SCIM inbox (or load them into slapd) and sync "
        "them into the sandbox products, twice",
    )
    p.add_argument(
        "--source",
        choices=["push", "ldap"],
        default="push",
        help="push: the SCIM inbox, as miniOrange would (default); ldap: a real slapd",
    )
    p.set_defaults(func=_demo)

    inbox = commands.add_parser(
        "inbox", help="the SCIM inbox miniOrange pushes users and groups into"
    ).add_subparsers(dest="inbox_command", required=True)
    p = inbox.add_parser("serve", help="serve every profile's inbox at /scim/v2/<profile>")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, behind a TLS reverse proxy); any other "
        "address without --tls-cert is warned about",
    )
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=1 << 20,
        help="largest request body accepted, /Bulk aside (default 1 MiB; 413 beyond)",
    )
    p.add_argument(
        "--max-bulk-bytes",
        type=int,
        default=1 << 20,
        help="largest /Bulk body, published as maxPayloadSize (default 1 MiB)",
    )
    p.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=32,
        help="requests served at once; more are answered 503 with Retry-After (default 32)",
    )
    p.add_argument(
        "--header-timeout-seconds",
        type=float,
        default=10.0,
        help="a request's headers must arrive within this time, or 408 and the connection "
        "is closed (default 10)",
    )
    p.add_argument(
        "--max-connections-per-client",
        type=int,
        default=32,
        help="open connections one client address may hold; more are answered 429 "
        "(default 32; behind a reverse proxy every client is the proxy)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open connections in all; more are answered 503 (default 256)",
    )
    p.add_argument(
        "--store-url", default=None, help="default: $USERSYNC_STORE_URL or var/usersync.db"
    )
    p.set_defaults(func=_inbox_serve)
    p = inbox.add_parser(
        "push-sample",
        help="push the sandbox's sample users and groups into a running inbox, as miniOrange "
        "would (for a deployment such as sync/demo-push to sync)",
    )
    p.add_argument("profile", help="the inbox's profile, e.g. demo-push")
    p.add_argument("--token", required=True, help="its bearer token (usersync inbox token)")
    p.add_argument(
        "--url",
        default="http://127.0.0.1:8090",
        help="where `usersync inbox serve` listens (default http://127.0.0.1:8090)",
    )
    p.set_defaults(func=_inbox_push_sample)
    p = inbox.add_parser("token", help="issue (or --rotate) a profile's inbox bearer token")
    p.add_argument("profile", help="a profile whose source is kind: miniorange-push")
    p.add_argument(
        "--rotate", action="store_true", help="issue a new token; the old one stays valid a while"
    )
    p.add_argument(
        "--grace-hours", type=float, default=24, help="how long the old token stays valid"
    )
    p.add_argument(
        "--store-url", default=None, help="default: $USERSYNC_STORE_URL or var/usersync.db"
    )
    p.set_defaults(func=_inbox_token)

    p = commands.add_parser("sandbox", help="serve the sandbox products until interrupted")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081, help="first port; one per product")
    p.add_argument(
        "--ldap",
        action="store_true",
        help="also serve the sample directory in a real slapd (installed by make setup); "
        "prints its URL and bind credentials",
    )
    p.add_argument(
        "--ldap-port",
        type=int,
        default=0,
        help="with --ldap: slapd's port (default: a free one)",
    )
    p.set_defaults(func=_sandbox)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader stopped (usersync runs ... | head): not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes it at exit
        return 0
    except UsersyncError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
