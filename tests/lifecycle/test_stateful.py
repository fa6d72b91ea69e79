"""The lifecycle test: random histories of source changes, hand edits, faults and syncs.

A hypothesis `RuleBasedStateMachine` drives a real slapd and the Jira, Confluence and Bitbucket
emulators over HTTP through sequences of: source changes (add, delete, re-create with the same
uid, disable/enable, rename by modrdn, change or clear the e-mail, change the name; create,
rename, empty and delete groups, add and remove members), hand edits in a product (an account
made by hand, a managed account renamed or deactivated, a managed account added to a group),
and syncs: clean ones, ones under injected faults (429 storms, 5xx, dropped connections,
writes applied whose answer is lost) or killed in the middle of the load, each followed by a
clean one, and one against a closed brake. Every history starts from a synced population
(`populate`) and ends with a checked sync. After every clean sync `oracle.Oracle` checks every
lifecycle rule on all three products, then a second sync must write and plan nothing, and so
must a delta run after it. Names come from small pools, so collisions, re-creations and reuse
of names happen often.

Delta runs (issue 26) come in between, interleaved with the reconcile runs and with hand edits
in the products (an account deactivated, reactivated, renamed, its e-mail changed, added to or
removed from a group by hand): each is checked as the oracle's docstring says (rules 11 and 12,
and rules 1-8 when it reconciled instead or when nothing was edited by hand since the last
reconcile). Every clean sync is a reconcile run: a hand edit is repaired by the next one.

CI runs EXAMPLES x STEPS with a fixed seed and does not shrink a failure (it prints the history
as found; USERSYNC_LIFECYCLE_SHRINK=1 replays the same examples and shrinks). `make soak` sets
USERSYNC_SOAK_EXAMPLES and USERSYNC_SOAK_STEPS (USERSYNC_SOAK_SEED repeats a run) for a long
random run that shrinks what it finds.
"""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
from hypothesis import HealthCheck, Phase, event, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from usersync_sandbox.faults import Faults

from tests.lifecycle.conftest import World
from tests.lifecycle.directory import OUS
from tests.lifecycle.driver import TargetRun
from tests.lifecycle.oracle import (
    MANUAL_RULES,
    Facts,
    Oracle,
    Rule9Idempotence,
    Rule10Brake,
    planned_changes,
    source_facts,
)
from tests.lifecycle.products import PRODUCTS
from usersync.errors import GuardError

#: A soak run: many random examples (USERSYNC_SOAK_SEED makes them repeatable).
SOAK = bool(os.environ.get("USERSYNC_SOAK_EXAMPLES"))
EXAMPLES = int(os.environ.get("USERSYNC_SOAK_EXAMPLES") or 16)
STEPS = int(os.environ.get("USERSYNC_SOAK_STEPS") or 25)
SEED = os.environ.get("USERSYNC_SOAK_SEED")
#: Shrink a failure to a minimal history. Off in CI, where a sync costs about half a second
#: and shrinking would run for many minutes: CI prints the failing history as found, and
#: USERSYNC_LIFECYCLE_SHRINK=1 replays the same fixed examples and shrinks it.
SHRINK = SOAK or os.environ.get("USERSYNC_LIFECYCLE_SHRINK") == "1"

#: The fixed short run takes about 250-330 s on the 2-core CI machine, more when it is busy:
#: the limit is there to stop a hang, not to time it.
pytestmark = [pytest.mark.slapd, pytest.mark.timeout(0 if SHRINK else 900)]

#: usernames of the source; "admin" is protected, "frank" also exists as a hand-made account
USERNAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "admin")
GROUP_NAMES = ("eng", "ops", "qa", "sales")
HAND_MADE_GROUP = "hand-made"
#: a hand-made account no source user ever has
STRANGER = "zed"
PRODUCT_NAMES = tuple(cls.name for cls in PRODUCTS)

MAILS = st.sampled_from(["plain", "capitals", "new", "none"])
CNS = st.sampled_from(["plain", "padded", "new"])
GROUPS = st.sampled_from(GROUP_NAMES)
PEOPLE = st.lists(
    st.tuples(st.sampled_from(USERNAMES), st.sampled_from(OUS), MAILS, st.booleans()),
    min_size=1,
    max_size=5,
)
MEMBERSHIPS = st.lists(st.tuples(GROUPS, st.integers(0, 4)), max_size=6)
#: "lost answers": the product applies a write, then the answer is a 500 or a dropped connection
FAULTS = st.sampled_from(
    [
        "429 storm",
        "503s",
        "500s",
        "dropped connections",
        "lost answers (500)",
        "lost answers (drop)",
    ]
)
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def mail_for(name: str, variant: str) -> str | None:
    """The e-mail a variant stands for: "capitals" equals "plain" case-insensitively."""
    return {
        "plain": f"{name}@example.org",
        "capitals": f"{name.capitalize()}@Example.ORG",
        "new": f"{name}.new@example.org",
        "none": None,
    }[variant]


def cn_for(name: str, variant: str) -> str:
    """The cn a variant stands for: "padded" equals "plain" once trimmed."""
    return {
        "plain": f"{name.capitalize()} Smith",
        "padded": f"  {name.capitalize()} Smith ",
        "new": f"{name.capitalize()} Jones",
    }[variant]


def seed_products(world: World) -> None:
    """What an admin made by hand before usersync arrived, in every product."""
    for product in world.products.values():
        product.create_group(HAND_MADE_GROUP)
        product.create_group(MANUAL_RULES["eng"])
        product.create_account(STRANGER, f"{STRANGER}@example.org", "Zed Hand")
        product.create_account("frank", "frank@example.org", "Frank by hand")
        keys = {a.username: a.key for a in product.snapshot().accounts.values()}
        product.add_member(HAND_MADE_GROUP, keys[STRANGER])
        product.add_member(MANUAL_RULES["eng"], keys[STRANGER])
        product.add_member(MANUAL_RULES["eng"], keys["admin"])
        product.add_member(HAND_MADE_GROUP, keys["frank"])


def describe_runs(runs: dict[str, TargetRun]) -> str:
    lines = []
    for name, run in runs.items():
        lines.append(f"  {name}: {run.status}" + (f" ({run.error})" if run.error else ""))
        if run.plan is not None and len(run.plan):
            for row in run.plan.itertuples():
                lines.append(
                    f"    {row.op} {row.username or ''} {row.group or ''} "
                    f"{row.before or ''} -> {row.after or ''}".rstrip()
                )
    return "\n".join(lines)


class LifecycleMachine(RuleBasedStateMachine):
    users = Bundle("users")

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        world.reset()
        seed_products(world)
        self.directory = world.directory
        self.products = world.products
        self.oracle = Oracle(world.products)
        self.oracle.start()
        #: whether anything changed since the last checked sync (else a sync is a known no-op)
        self.dirty = True
        #: the source's facts at the last checked run, and each product after it
        self.synced: dict[int, Facts] | None = None
        self.last_run = {name: p.snapshot() for name, p in world.products.items()}
        #: products edited by hand since their last reconcile
        self.hand_edited: set[str] = set()

    @initialize(target=users, people=PEOPLE, memberships=MEMBERSHIPS)
    def populate(self, people: list[tuple], memberships: list[tuple[str, int]]) -> object:
        """Where every history starts: a few users (name, OU, mail, enabled) and groups, synced."""
        added = []
        for name, ou, mail, enabled in people:
            user = self.directory.add_user(
                ou, name, mail_for(name, mail), cn_for(name, "plain"), enabled
            )
            if user is not None:
                added.append(user.ident)
        for group, index in memberships:
            self.set_membership(group, added[index % len(added)], True)
        self.clean_sync_and_check()
        return multiple(*added)

    # -- the source: users -------------------------------------------------------------------

    @rule(
        target=users,
        name=st.sampled_from(USERNAMES),
        ou=st.sampled_from(OUS),
        capitalised=st.booleans(),
        mail=MAILS,
        cn=CNS,
        enabled=st.booleans(),
    )
    def add_user(
        self, name: str, ou: str, capitalised: bool, mail: str, cn: str, enabled: bool
    ) -> object:
        self.dirty = True
        uid = name.capitalize() if capitalised else name
        user = self.directory.add_user(ou, uid, mail_for(name, mail), cn_for(name, cn), enabled)
        return multiple() if user is None else user.ident

    @rule(user=consumes(users))
    def delete_user(self, user: int) -> None:
        self.dirty = True
        self.directory.delete_user(user)

    @rule(target=users, user=consumes(users), mail=MAILS, cn=CNS)
    def recreate_user(self, user: int, mail: str, cn: str) -> object:
        """Delete and add again with the same uid and OU: a new entryUUID."""
        self.dirty = True
        old = self.directory.delete_user(user)
        name = old.username
        new = self.directory.add_user(old.ou, old.uid, mail_for(name, mail), cn_for(name, cn), True)
        assert new is not None
        return new.ident

    @rule(
        user=users,
        change=st.one_of(
            st.just(("disable",)),
            st.just(("enable",)),
            st.tuples(st.just("rename"), st.sampled_from(USERNAMES), st.booleans()),
            st.tuples(st.just("mail"), MAILS),
            st.tuples(st.just("cn"), CNS),
        ),
    )
    def change_user(self, user: int, change: tuple) -> None:
        self.dirty = True
        kind, *args = change
        if kind in ("disable", "enable"):
            self.directory.set_enabled(user, kind == "enable")
        elif kind == "rename":
            name, capitalised = args
            self.directory.rename_user(user, name.capitalize() if capitalised else name)
        elif kind == "mail":
            self.directory.set_mail(user, mail_for(self.directory.users[user].username, args[0]))
        else:
            self.directory.set_cn(user, cn_for(self.directory.users[user].username, args[0]))

    # -- the source: groups (by name: a rule on a missing group does nothing) ---------------

    @rule(name=GROUPS)
    def create_group(self, name: str) -> None:
        self.dirty = True
        self.directory.add_group(name)

    @rule(
        name=GROUPS,
        change=st.one_of(
            st.tuples(st.just("rename"), GROUPS), st.just(("empty",)), st.just(("delete",))
        ),
    )
    def change_group(self, name: str, change: tuple) -> None:
        self.dirty = True
        group = self.directory.group_named(name)
        if group is None:
            return
        if change[0] == "rename":
            self.directory.rename_group(group.ident, change[1])
        elif change[0] == "empty":
            self.directory.set_members(group.ident, set())
        else:
            self.directory.delete_group(group.ident)

    @rule(group=GROUPS, user=users, member=st.booleans())
    def set_membership(self, group: str, user: int, member: bool) -> None:
        """Add `user` to `group` (made if missing) or remove it."""
        self.dirty = True
        found = self.directory.group_named(group)
        if found is None:
            if not member:
                return
            found = self.directory.add_group(group)
            assert found is not None
        members = set(found.members)
        if member:
            members.add(user)
        else:
            members.discard(user)
        self.directory.set_members(found.ident, members)

    # -- hand edits in a product -------------------------------------------------------------

    @rule(
        product=st.sampled_from(PRODUCT_NAMES),
        user=users,
        edit=st.sampled_from(
            [
                "rename",
                "deactivate",
                "reactivate",
                "e-mail",
                *(f"join {g}" for g in ("developers", HAND_MADE_GROUP, "eng")),
                *(f"leave {g}" for g in ("developers", "all-staff", "eng", "ops")),
            ]
        ),
    )
    def hand_edit(self, product: str, user: int, edit: str) -> None:
        """An admin changes the account usersync linked to `user` (nothing if there is none)."""
        key = self.oracle.books[product].links.get(user)
        target = self.products[product]
        if key is None:
            return
        now = target.snapshot()
        if key not in now.accounts:
            return
        if edit == "rename":
            new_name = f"{now.accounts[key].username}-hand"
            if now.by_name(new_name) is None:
                target.rename(key, new_name)
        elif edit == "deactivate":
            target.deactivate(key)
        elif edit == "reactivate":
            target.reactivate(key)
        elif edit == "e-mail":
            target.set_email(key, f"{now.accounts[key].username}.by-hand@example.org")
        elif edit.startswith("join "):
            group = edit.removeprefix("join ")
            if group in now.groups:
                target.add_member(group, key)
        else:
            group = edit.removeprefix("leave ")
            if key in now.groups.get(group, frozenset()):
                target.remove_member(group, key)
        self.oracle.note_hand_edit(product)
        self.hand_edited.add(product)
        self.dirty = True

    @rule(
        product=st.sampled_from(PRODUCT_NAMES),
        name=st.sampled_from([n for n in USERNAMES if n != "admin"]),
        mail=MAILS.filter(lambda m: m != "none"),
        cn=CNS,
    )
    def hand_made_account(self, product: str, name: str, mail: str, cn: str) -> None:
        """An admin makes an account by hand (nothing if the name is taken)."""
        target = self.products[product]
        if target.snapshot().by_name(name) is None:
            target.create_account(name, mail_for(name, mail) or "", f"{cn_for(name, cn)} (hand)")
            self.oracle.note_hand_edit(product)
            self.hand_edited.add(product)
            self.dirty = True

    # -- syncs -------------------------------------------------------------------------------

    def has_users(self) -> bool:
        return bool(self.directory.users)

    @rule()
    def sync(self) -> None:
        if self.dirty:  # else the last check's second sync already showed this one is a no-op
            self.clean_sync_and_check()

    def moved_since_checked(self) -> bool:
        """Whether the source or a product changed since the last checked sync (else a delta
        run is the no-op the check's own delta run already showed)."""
        return self.dirty and self.has_users()

    @precondition(moved_since_checked)
    @rule()
    def delta_sync(self) -> None:
        """A delta run of every product, checked: as a reconcile when it reconciled instead
        or had no hand edit to take as written, else rules 11 and 12 (`Oracle.follow_delta`)."""
        self.oracle.note_mapping(self.directory)
        if self.synced is not None:
            now = source_facts(self.directory)
            moved = sum(now.get(i) != f for i, f in self.synced.items()) + len(
                now.keys() - self.synced.keys()
            )
            left = sum(
                f.enabled and not getattr(now.get(i), "enabled", False)
                for i, f in self.synced.items()
            )
            _note(
                f"delta run: {'some' if moved else 'no'} source change, {'a' if left else 'no'} leaver"
            )
        runs = self.world.sync(mode="delta")
        context = "delta run:\n" + describe_runs(runs)
        for name, run in runs.items():
            _note(
                f"delta run of a product: {run.mode}"
                + (" instead" if run.mode_reason else "")
                + (", after hand edits" if name in self.hand_edited else "")
            )
            if run.status != "succeeded":
                raise AssertionError(
                    f"{name}: a delta run without faults did not succeed\n{context}"
                )
            if run.mode == "reconcile" or name not in self.hand_edited:
                self.oracle.check(name, self.directory, context)
                self.hand_edited.discard(name)
            else:
                assert self.synced is not None
                self.oracle.follow_delta(
                    name, self.directory, self.synced, self.last_run[name], context
                )
            self.last_run[name] = self.products[name].snapshot()
        self.synced = source_facts(self.directory)

    @precondition(has_users)
    @rule(
        product=st.sampled_from(PRODUCT_NAMES),
        fault=FAULTS,
        every=st.integers(1, 4),
        writes_only=st.booleans(),
    )
    def sync_with_faults(self, product: str, fault: str, every: int, writes_only: bool) -> None:
        """A sync under injected faults, then a clean one, which must converge."""
        app = self.products[product].app
        faults = Faults(retry_after_seconds=0.01)
        if writes_only:
            faults.only_methods = WRITES
        if fault.startswith("lost answers"):
            faults.only_methods = WRITES
            lost = "applied-500" if "500" in fault else "applied-drop"
            faults.script.extend([lost] * every)
        elif fault == "429 storm":
            faults.script.extend(["429"] * (every + 2))
        elif fault == "dropped connections":
            faults.drop_every = every + 1
        else:
            faults.error_every = every + 1
            faults.error_status = int(fault[:3])
        self.oracle.note_mapping(self.directory)
        app.faults = faults
        try:
            self.world.sync()
        finally:
            app.faults = Faults()
        self.clean_sync_and_check()

    @precondition(has_users)
    @rule(product=st.sampled_from(PRODUCT_NAMES), after=st.integers(0, 6))
    def sync_killed_midway(self, product: str, after: int) -> None:
        """The sync process dies after `after` operations of a load, then a clean sync."""
        self.oracle.note_mapping(self.directory)
        self.world.sync(kill={product: after})
        self.clean_sync_and_check()

    @precondition(has_users)
    @rule()
    def sync_against_brake(self) -> None:
        """With every brake limit at 0, a sync that must deactivate or remove writes nothing.

        Then the same sync with the brake released must do all of it.
        """
        load = {name: self.oracle.brake_load(name, self.directory) for name in self.products}
        self.oracle.note_mapping(self.directory)
        self.world.write_profile(brake=0)
        try:
            before = {name: p.writes() for name, p in self.products.items()}
            runs = self.world.sync()
            for name, (deactivations, removals) in load.items():
                written = self.products[name].writes() - before[name]
                if (deactivations or removals) and written:
                    raise Rule10Brake(
                        f"{name}: {Rule10Brake.__doc__}\n  {written} write request(s) although "
                        f"the sync had to deactivate {deactivations or 'nobody'} and remove "
                        f"{removals or 'no membership'}\n{describe_runs({name: runs[name]})}"
                    )
            self.clean_sync_and_check(release_brake=True)
        finally:
            self.world.write_profile()

    def clean_sync_and_check(self, *, release_brake: bool = False) -> None:
        """Sync without faults, check every rule on every product, then sync again: no-op."""
        before = {name: p.writes() for name, p in self.products.items()}
        if not self.has_users():
            with pytest.raises(GuardError):
                self.world.sync()
            written = {n: p.writes() - before[n] for n, p in self.products.items()}
            assert not any(written.values()), f"an empty source wrote to {written}"
            return
        self.oracle.note_mapping(self.directory)
        runs = self.world.sync(release_brake=release_brake)
        context = "clean sync:\n" + describe_runs(runs)
        for name in self.products:
            self.oracle.check(name, self.directory, context)
        before = {name: p.writes() for name, p in self.products.items()}
        again = self.world.sync()
        self.check_no_op(runs, again, before, "sync")
        before = {name: p.writes() for name, p in self.products.items()}
        delta = self.world.sync(mode="delta")
        self.check_no_op(runs, delta, before, "delta run")
        for name in self.products:
            self.oracle.note_hand_edit(name)  # the baseline is the state now
            self.last_run[name] = self.products[name].snapshot()
        self.synced = source_facts(self.directory)
        self.hand_edited.clear()
        self.dirty = False

    def check_no_op(
        self,
        runs: dict[str, TargetRun],
        again: dict[str, TargetRun],
        before: dict[str, int],
        what: str,
    ) -> None:
        """Rule 9: the run `again` after the clean sync `runs` wrote and planned nothing."""
        for name, product in self.products.items():
            written = product.writes() - before[name]
            planned = planned_changes(again[name].plan, product.can_rename)
            if written or len(planned) or again[name].status == "failed":
                raise Rule9Idempotence(
                    f"{name}: {Rule9Idempotence.__doc__}\n  {written} write request(s); "
                    f"the sync before:\n{describe_runs({name: runs[name]})}\n"
                    f"the {what} after:\n{describe_runs({name: again[name]})}"
                )

    def teardown(self) -> None:
        """Every history ends with a checked sync, unless a step already failed."""
        try:
            if sys.exc_info()[0] is None and self.dirty:
                self.clean_sync_and_check()
        finally:
            self.world.close_store()


def test_lifecycle_rules_hold_through_random_histories(world: World) -> None:
    def machine() -> LifecycleMachine:
        return LifecycleMachine(world)

    if SEED is not None:
        machine = seed(int(SEED))(machine)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            derandomize=not SOAK and SEED is None,
            database=None,
            phases=[p for p in Phase if SHRINK or p not in (Phase.shrink, Phase.explain)],
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
            ],
        ),
    )


def _note(text: str) -> None:
    """A hypothesis event in a random history; nothing in a fixed one (no test to record in)."""
    with contextlib.suppress(InvalidArgument):
        event(text)
