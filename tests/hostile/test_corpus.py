"""Every row of the hostile-input corpus (`corpus.py`), end to end, from each source.

SCIM: every row is pushed over HTTP into a real inbox, as miniOrange would. LDAP: the same
rows (those the corpus gives to LDAP) are loaded into one real slapd. Each source then gets one
sync of all three sandbox products through the engine's steps, on a site seeded as a customer's
would be (a hand-made account `root`, a hand-made group `finance`, Jira's licensing group,
a Bitbucket group granted ADMIN), and a second sync. Each row's expectation is then read back
over the products' REST APIs (the account with the row's e-mail, its name and display name;
group existence and members) and from the run's rejected users and conflicts.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from usersync_sandbox.serve import Sandbox
from usersync_sandbox.server import serve
from usersync_sandbox.slapd import SlapdServer, ldif_entry

from tests.hostile.corpus import (
    BITBUCKET_ADMIN_GROUP,
    GROUP_MEMBER,
    HANDMADE_GROUP,
    HANDMADE_USER,
    PRODUCTS,
    ROWS,
    Created,
    GroupCreated,
    GroupRefused,
    Outcome,
    Rejected,
    RejectedOrTruncated,
    Row,
    rows_for,
)
from usersync import sync
from usersync.inbox import InboxApp, issue_token
from usersync.load import LoadResult
from usersync.store import Store

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "corpus-admin-pw"
BASE_DN = "dc=example,dc=org"
PEOPLE = f"ou=people,{BASE_DN}"
GROUPS = f"ou=groups,{BASE_DN}"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ROOTS = {"jira": "/rest/api/2", "confluence": "/rest/api", "bitbucket": "/rest/api/1.0"}
#: The only group rule: every source group under its own name (as demo and demo-push have).
GROUP_RULES = "source_group,target_group,mode,targets\n*,,on-the-fly,\n"

PROFILE_TARGETS = """targets:
  jira:
    kind: jira
    url: {jira}
    auth: {{kind: basic, username: admin, password: {{env: CORPUS_PASSWORD}}}}
  confluence:
    kind: confluence
    url: {confluence}
    auth: {{kind: basic, username: admin, password: {{env: CORPUS_PASSWORD}}}}
  bitbucket:
    kind: bitbucket
    url: {bitbucket}
    auth: {{kind: basic, username: admin, password: {{env: CORPUS_PASSWORD}}}}
settings:
  protected_usernames: [admin]
"""


@dataclass
class World:
    """One source's corpus, synced twice into a fresh sandbox."""

    source: str
    sandbox: Sandbox
    rows: tuple[Row, ...]
    #: row key → the source id of its user (group rows have none)
    source_ids: dict[str, str]
    #: (product, group) → members before the sync (None: the group did not exist)
    groups_before: dict[tuple[str, str], frozenset[str] | None]
    plans: dict[str, sync.TargetPlan]
    results: dict[str, LoadResult]
    rerun: dict[str, sync.TargetPlan]
    rerun_results: dict[str, LoadResult]


# -- reading the products back over REST ----------------------------------------------------


def _get(sandbox: Sandbox, product: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(
        sandbox.url(product) + ROOTS[product] + path,
        params=params,
        auth=("admin", PASSWORD),
        timeout=30,
    )


def accounts(sandbox: Sandbox, product: str) -> list[dict[str, str]]:
    """Every account of the product as {username, email, display_name}, read over REST."""
    if product == "jira":
        found = _get(
            sandbox, "jira", "/user/search", username=".", maxResults=1000, includeInactive="true"
        ).raise_for_status()
        return [
            {"username": u["name"], "email": u["emailAddress"], "display_name": u["displayName"]}
            for u in found.json()
        ]
    out: list[dict[str, str]] = []
    start = 0
    while True:
        if product == "confluence":
            page = (
                _get(
                    sandbox,
                    "confluence",
                    "/user/list",
                    start=start,
                    limit=200,
                    expand="details.personal",
                )
                .raise_for_status()
                .json()
            )
            out += [
                {
                    "username": u["username"],
                    "email": u["details"]["personal"]["email"],
                    "display_name": u["displayName"],
                }
                for u in page["results"]
            ]
            if "next" not in page.get("_links", {}):
                return out
            start += len(page["results"])
        else:
            page = (
                _get(sandbox, "bitbucket", "/admin/users", start=start, limit=500)
                .raise_for_status()
                .json()
            )
            out += [
                {
                    "username": u["name"],
                    "email": u["emailAddress"],
                    "display_name": u["displayName"],
                }
                for u in page["values"]
            ]
            if page["isLastPage"]:
                return out
            start = page["nextPageStart"]


def account_by_name(sandbox: Sandbox, product: str, name: str) -> dict[str, Any] | None:
    """The product's own lookup by username (the name travels encoded in the request)."""
    if product == "bitbucket":
        found = _get(sandbox, product, "/admin/users", filter=name, limit=1000).json()["values"]
        return next((u for u in found if u["name"] == name), None)
    response = _get(sandbox, product, "/user", username=name)
    return response.json() if response.status_code == 200 else None


def group_members(sandbox: Sandbox, product: str, group: str) -> frozenset[str] | None:
    """The group's members, or None when the product has no such group (exact name)."""
    if product == "jira":
        response = _get(
            sandbox, "jira", "/group/member", groupname=group, includeInactiveUsers="true"
        )
        if response.status_code == 404:
            return None
        return frozenset(m["name"] for m in response.raise_for_status().json()["values"])
    if product == "confluence":
        if _get(sandbox, "confluence", f"/group/{group}").status_code == 404:
            return None
        response = _get(sandbox, "confluence", f"/group/{group}/member", limit=200)
        return frozenset(m["username"] for m in response.raise_for_status().json()["results"])
    found = _get(sandbox, "bitbucket", "/admin/groups", filter=group, limit=1000).json()["values"]
    if not any(g["name"] == group for g in found):
        return None
    members = _get(sandbox, "bitbucket", "/admin/groups/more-members", context=group, limit=1000)
    return frozenset(m["name"] for m in members.raise_for_status().json()["values"])


# -- the worlds -----------------------------------------------------------------------------


def _seed(sandbox: Sandbox) -> None:
    """What a customer's site holds before usersync first runs."""
    jira, confluence, bitbucket = (sandbox.emulators[p] for p in PRODUCTS)
    confluence.rest_email = True  # so e-mails can be read back over REST
    for emulator in (jira, confluence, bitbucket):
        emulator.seed_user(HANDMADE_USER, "root@handmade.example", "Root Handmade")
        emulator.seed_group(HANDMADE_GROUP, [HANDMADE_USER])
    jira.seed_group("jira-software-users", [HANDMADE_USER])  # as on a stock Jira Software site
    bitbucket.seed_admin_group(BITBUCKET_ADMIN_GROUP, [HANDMADE_USER])


#: The shipped profile whose attribute mapping each source's corpus profile uses.
SHIPPED_MAPPING = {"scim": "demo-push", "ldap": "demo"}


def _write_profile(folder: Path, source: str, source_yaml: str, sandbox: Sandbox) -> None:
    folder.mkdir(parents=True)
    urls = {p: sandbox.url(p) for p in PRODUCTS}
    (folder / "profile.yaml").write_text(
        source_yaml + PROFILE_TARGETS.format(**urls), encoding="utf-8"
    )
    shipped = REPO / "mappings" / SHIPPED_MAPPING[source] / "attributes.csv"
    shutil.copy(shipped, folder / "attributes.csv")
    (folder / "groups.csv").write_text(GROUP_RULES, encoding="utf-8")


def _sync(profile: str, store: Store) -> tuple[dict[str, sync.TargetPlan], dict[str, LoadResult]]:
    """One sync of every product through the engine's steps: the plans and what loading did."""
    loaded = sync.prepare_profile(profile)
    snapshot = sync.extract(loaded)
    plans, results = {}, {}
    for name in PRODUCTS:
        desired = sync.transform(loaded, snapshot, name)
        with sync.open_target_for(loaded, name) as target:
            plan = sync.plan_target_sync(loaded, name, target, desired, store)
            run_id = store.start_run(profile, name, dry_run=False)
            store.record_plan(run_id, plan.plan)
            results[name] = sync.load_target_sync(loaded, target, plan, store, run_id)
        plans[name] = plan
    return plans, results


def _push(inbox: str, token: str, rows: tuple[Row, ...]) -> dict[str, str]:
    """POST every row's user, then every row's group with `GROUP_MEMBER`, as miniOrange does."""
    ids: dict[str, str] = {}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}
    with httpx.Client(base_url=inbox, headers=headers, timeout=30) as client:
        for row in rows:
            if row.group is not None:
                continue
            body = {
                "schemas": [USER_SCHEMA],
                "userName": row.username,
                "displayName": row.shown_display_name(),
                "emails": [{"value": row.email, "type": "work", "primary": True}],
                "active": True,
            }
            response = client.post("/Users", json=body)
            assert response.status_code == 201, (row.key, response.text[:300])
            ids[row.key] = response.json()["id"]
        member = next(ids[r.key] for r in rows if r.username == GROUP_MEMBER)
        for row in rows:
            if row.group is None:
                continue
            body = {
                "schemas": [GROUP_SCHEMA],
                "displayName": row.group,
                "members": [{"value": member}],
            }
            response = client.post("/Groups", json=body)
            assert response.status_code == 201, (row.key, response.text[:300])
    return ids


def _ldif(rows: tuple[Row, ...]) -> str:
    """The directory: one person per user row (RDN cn=<key>), one groupOfNames per group row
    (RDN ou=<key>)."""
    parts = [
        ldif_entry(
            BASE_DN, {"objectClass": ["dcObject", "organization"], "o": "Corpus", "dc": "example"}
        ),
        ldif_entry(PEOPLE, {"objectClass": "organizationalUnit", "ou": "people"}),
        ldif_entry(GROUPS, {"objectClass": "organizationalUnit", "ou": "groups"}),
    ]
    member = next(f"cn={r.key},{PEOPLE}" for r in rows if r.username == GROUP_MEMBER)
    for row in rows:
        if row.group is None:
            attributes = {
                "objectClass": "inetOrgPerson",
                "cn": row.key,
                "sn": row.key,
                "uid": row.username,
                "mail": row.email,
                "displayName": row.shown_display_name(),
            }
            parts.append(ldif_entry(f"cn={row.key},{PEOPLE}", attributes))
        else:
            # RDN ou=<key>: slapd compares DNs after string preparation (RFC 4518), which
            # drops U+200B and folds fullwidth letters, so cn=<name> would clash.
            attributes = {
                "objectClass": "groupOfNames",
                "ou": row.key,
                "cn": row.group,
                "member": member,
            }
            parts.append(ldif_entry(f"ou={row.key},{GROUPS}", attributes))
    return "".join(parts)


def _build(
    source: str,
    root: Path,
    source_yaml: str,
    load: Callable[[str, Store], dict[str, str]],
) -> Iterator[World]:
    """Seed a sandbox, load the rows into the source (`load(profile, store)` → source ids),
    sync twice; the world with everything the tests read."""
    rows = rows_for(source)
    profile = f"corpus-{source}"
    store_url = f"sqlite:///{root / 'store.db'}"
    store = Store.open(store_url)
    with pytest.MonkeyPatch.context() as env, Sandbox(admin_password=PASSWORD) as sandbox:
        env.setenv("USERSYNC_MAPPINGS_DIR", str(root / "mappings"))
        env.setenv("USERSYNC_STORE_URL", store_url)
        env.setenv("CORPUS_PASSWORD", PASSWORD)
        _seed(sandbox)
        _write_profile(root / "mappings" / profile, source, source_yaml, sandbox)
        source_ids = load(profile, store)
        before = {
            (p, r.group): group_members(sandbox, p, r.group)
            for p in PRODUCTS
            for r in rows
            if r.group is not None
        }
        plans, results = _sync(profile, store)
        rerun, rerun_results = _sync(profile, store)
        yield World(source, sandbox, rows, source_ids, before, plans, results, rerun, rerun_results)
    store.close()


@pytest.fixture(scope="module")
def scim_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("corpus-scim")
    rows = rows_for("scim")

    def load(profile: str, store: Store) -> dict[str, str]:
        token = issue_token(store.engine, profile).token
        with serve(InboxApp(store.engine)) as inbox:
            return _push(f"{inbox}/scim/v2/{profile}", token, rows)

    yield from _build("scim", root, "source:\n  kind: miniorange-push\n", load)


@pytest.fixture(scope="module")
def ldap_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("corpus-ldap")
    rows = rows_for("ldap")
    with SlapdServer(_ldif(rows)) as directory:
        source_yaml = f"""source:
  kind: ldap
  url: {directory.url}
  bind_dn: {directory.admin_dn}
  bind_password: {{env: CORPUS_LDAP_PASSWORD}}
  allow_cleartext_bind: true
  user_base_dn: {PEOPLE}
  group_base_dn: {GROUPS}
  page_size: 50
"""

        def load(profile: str, store: Store) -> dict[str, str]:
            """The entryUUIDs slapd gave the rows' entries (the locator is the DN cn=<key>,...)."""
            users = sync.extract(sync.prepare_profile(profile)).users
            rdns = users["locator"].astype(str).str.split(",").str[0].str.casefold()
            return dict(
                zip(rdns.str.removeprefix("cn="), users["source_id"].astype(str), strict=True)
            )

        with pytest.MonkeyPatch.context() as env:
            env.setenv("CORPUS_LDAP_PASSWORD", directory.admin_password)
            yield from _build("ldap", root, source_yaml, load)


@pytest.fixture
def world(request: pytest.FixtureRequest) -> World:
    return request.getfixturevalue(f"{request.param}_world")


# -- the checks -----------------------------------------------------------------------------


def _reasons_for(world: World, product: str, row: Row) -> list[str]:
    """Why the run did not provision the row's user in the product (rejections, conflicts)."""
    plan = world.plans[product]
    ids = {world.source_ids[row.key]}
    rejected = plan.desired.rejected
    conflicts = plan.conflicts
    reasons = list(rejected.loc[rejected["source_id"].isin(ids), "reason"].astype(str))
    if len(conflicts):
        reasons += list(conflicts.loc[conflicts["source_id"].isin(ids), "reason"].astype(str))
    return reasons


def _group_reasons(world: World, product: str) -> list[str]:
    """Every conflict and rejection reason of the run in the product."""
    plan = world.plans[product]
    frames = [plan.conflicts, plan.desired.rejected]
    return [str(r) for f in frames if len(f) and "reason" in f for r in f["reason"]]


def _mine(world: World, product: str, row: Row) -> list[dict[str, str]]:
    return [a for a in accounts(world.sandbox, product) if a["email"] == row.email]


def check_created(world: World, product: str, row: Row, outcome: Created) -> None:
    name = outcome.username or row.username
    mine = _mine(world, product, row)
    assert [a["username"] for a in mine] == [name], _reasons_for(world, product, row)
    assert mine[0]["display_name"] == row.shown_display_name()
    found = account_by_name(world.sandbox, product, name)
    assert found is not None, f"{product} does not find {name!r} by name"


def check_rejected(world: World, product: str, row: Row, outcome: Rejected) -> None:
    assert _mine(world, product, row) == []
    reasons = _reasons_for(world, product, row)
    assert reasons, f"{row.key} is not listed as rejected in {product}"
    assert all(outcome.mentions.casefold() in r.casefold() for r in reasons), reasons


def check_rejected_or_truncated(
    world: World, product: str, row: Row, outcome: RejectedOrTruncated
) -> None:
    mine = _mine(world, product, row)
    if not mine:
        reasons = _reasons_for(world, product, row)
        assert any(outcome.mentions.casefold() in r.casefold() for r in reasons), reasons
        return
    (account,) = mine
    shown = row.shown_display_name()
    stored = account["display_name"]
    assert 0 < len(stored) < len(shown) and shown.startswith(stored), (
        f"display name stored with {len(stored)} characters (neither refused nor truncated)"
    )


def check_group_created(world: World, product: str, row: Row, outcome: GroupCreated) -> None:
    assert row.group is not None
    assert group_members(world.sandbox, product, row.group) == {GROUP_MEMBER}


#: Groups the product itself puts every account it creates in (Jira: the default group of its
#: default application role; Confluence: its default user group): they gain the run's new
#: accounts whatever the rules say.
PRODUCT_JOINS_NEW_ACCOUNTS = {"jira": "jira-software-users", "confluence": "confluence-users"}


def _created_by_run(world: World, product: str) -> set[str]:
    plan = world.plans[product].plan
    return set(plan.loc[plan["op"] == "create_user", "username"].astype(str))


def check_group_refused(world: World, product: str, row: Row, outcome: GroupRefused) -> None:
    assert row.group is not None
    before = world.groups_before[(product, row.group)]
    after = group_members(world.sandbox, product, row.group)
    if before is None or PRODUCT_JOINS_NEW_ACCOUNTS.get(product) != row.group:
        assert after == before
    else:
        assert after is not None and after - before <= _created_by_run(world, product)
    for plan in (world.plans[product], world.rerun[product]):
        names = plan.plan["group"].fillna("").str.casefold()
        ops = plan.plan.loc[names == row.group.casefold(), "op"]
        assert list(ops) == [], f"the plan writes to {row.group!r}"
    wanted = ["group", *outcome.mentions, *([f"'{row.group}'"] if outcome.named else [])]
    listed = [
        r
        for r in _group_reasons(world, product)
        if all(w.casefold() in r.casefold() for w in wanted)
    ]
    assert listed, f"no conflict or rejection mentions {wanted}"


CHECKS = {
    Created: check_created,
    Rejected: check_rejected,
    RejectedOrTruncated: check_rejected_or_truncated,
    GroupCreated: check_group_created,
    GroupRefused: check_group_refused,
}

SOURCE_MARKS = {"scim": (), "ldap": (pytest.mark.slapd,)}


def _cases() -> list[Any]:
    cases = []
    for source, marks in SOURCE_MARKS.items():
        for row in rows_for(source):
            for product in PRODUCTS:
                defect = row.defect(source, product)
                extra = [pytest.mark.xfail(strict=True, reason=defect)] if defect else []
                cases.append(
                    pytest.param(
                        source,
                        row,
                        product,
                        row.expect[product],
                        id=f"{source}-{row.key}-{product}",
                        marks=[*marks, *extra],
                    )
                )
    return cases


@pytest.mark.parametrize(("world", "row", "product", "outcome"), _cases(), indirect=["world"])
def test_row(world: World, row: Row, product: str, outcome: Outcome) -> None:
    CHECKS[type(outcome)](world, product, row, outcome)  # type: ignore[operator]


SOURCES = [pytest.param(s, marks=m, id=s) for s, m in SOURCE_MARKS.items()]


@pytest.mark.parametrize("world", SOURCES, indirect=True)
def test_no_row_fails_the_run_and_the_rerun_plans_nothing(world: World) -> None:
    """One bad user is a listed rejection, never a failed run: every operation of the first
    run succeeds, and the rerun plans nothing — but for the rows whose defect in that product
    the corpus records (their own cases are xfail)."""
    by_username = {r.username.strip().lower(): r for r in world.rows if r.group is None}

    def unexplained(product: str, plan: pd.DataFrame) -> pd.DataFrame:
        """The plan's operations that no recorded defect explains."""
        rows = plan["username"].astype(str).str.lower().map(by_username)
        known = rows.map(lambda r: isinstance(r, Row) and r.defect(world.source, product))
        return plan.loc[~known.fillna(False).astype(bool)]

    for product in PRODUCTS:
        first = set(unexplained(product, world.plans[product].plan)["seq"])
        failed = [
            (o.op, o.error)
            for o in world.results[product].outcomes
            if o.seq in first and o.status != "succeeded"
        ]
        assert failed == [], product
        rerun = unexplained(product, world.rerun[product].plan)
        assert list(zip(rerun["op"], rerun["username"], strict=True)) == [], product


@pytest.mark.parametrize("world", SOURCES, indirect=True)
def test_no_corpus_account_is_an_administrator(world: World) -> None:
    """Whatever the rows, no account the corpus names holds administration in any product,
    as the products themselves decide it (group grants included)."""
    jira, confluence, bitbucket = (world.sandbox.emulators[p] for p in PRODUCTS)
    corpus_emails = {r.email for r in world.rows}

    def made_admin(product: str) -> list[str]:
        names = [
            a["username"] for a in accounts(world.sandbox, product) if a["email"] in corpus_emails
        ]
        if product == "jira":
            return [n for n in names if jira.is_admin(n)]
        if product == "confluence":
            return [n for n in names if confluence.is_admin(confluence.users[n.lower()])]
        return [n for n in names if bitbucket.effective_permission(n) in ("ADMIN", "SYS_ADMIN")]

    assert {p: made_admin(p) for p in PRODUCTS} == {p: [] for p in PRODUCTS}


def test_the_inbox_refuses_a_username_equal_but_for_case(tmp_path: Path) -> None:
    """SCIM userName is unique case-insensitively (RFC 7643 §4.1.1): `dup` after `Dup` is a
    409 at the inbox, so case-folded twins reach usersync only from LDAP (rows dup-*)."""
    store = Store.open(f"sqlite:///{tmp_path / 'inbox.db'}")
    token = issue_token(store.engine, "twins").token
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}
    with (
        serve(InboxApp(store.engine)) as inbox,
        httpx.Client(base_url=f"{inbox}/scim/v2/twins", headers=headers, timeout=30) as client,
    ):
        statuses = [
            client.post(
                "/Users",
                json={
                    "schemas": [USER_SCHEMA],
                    "userName": name,
                    "emails": [{"value": f"{i}@corpus.example", "primary": True}],
                },
            ).status_code
            for i, name in enumerate(("Dup", "dup"))
        ]
    store.close()
    assert statuses == [201, 409]


def test_the_corpus_is_well_formed() -> None:
    keys = [r.key for r in ROWS]
    assert len(keys) == len(set(keys))
    assert all(k.isascii() and k == k.lower() and " " not in k for k in keys)
    assert all(set(r.expect) == set(PRODUCTS) for r in ROWS)
    assert sum(r.username == GROUP_MEMBER for r in ROWS) == 1
    assert pd.Series([r.category for r in ROWS]).nunique() >= 10
