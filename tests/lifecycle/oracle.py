"""The spec of an identity sync's lifecycle, checked against a product's real state after a sync.

Written independently of usersync's planner: the expectations come from the test's record of
the source (`directory.Directory`), the mapping tables below (which the test owns), the hand
edits, and what this oracle has seen each product do before (`Book`). It never calls
usersync.plan or usersync.mapping.

The rules, per target, after a clean sync (each broken rule raises its own exception class, so
that hypothesis reports each as a distinct failure):

1. A source user is live (present, enabled), disabled (present, disabled) or gone (absent). It
   is rejected (never created, reported, never written) if it has no e-mail or its username
   collides case-insensitively with another source user's.
2. Every live, non-rejected user has exactly one account with its username, e-mail (both
   case-insensitive), display name (trimmed), active, unless the username is protected (the
   profile's protected_usernames and the account usersync signs in as), which is never touched.
3. An existing account with the same username that usersync does not manage is adopted.
4. Accounts are linked to source identities by the product's immutable key: a rename on either
   side keeps the same account (renamed to the source's name where the product can rename),
   and no second account appears.
5. Deprovisioning wins over rejection: a managed account whose source user is disabled or gone
   is inactive, also when that user is now rejected.
6. A user deleted and re-created with the same username takes over the old account, if the
   account's e-mail is the new user's (otherwise, a person other than the account's: refused).
7. Managed groups are every target group a rule has mapped at some point. In a managed group,
   each managed active account is a member exactly when the source says so; memberships of
   unmanaged accounts and in unmanaged groups are never touched; deactivated managed accounts
   keep their memberships; groups are never deleted.
8. Hand-made accounts no source user maps to are never changed.
9. After a clean sync the next sync writes nothing and plans nothing, a delta run as well.
10. A sync that trips the brake writes nothing.

Delta runs (issue 26: `usersync.delta`) read only what moved since the last run wrote and take
the rest as written, so a hand edit of a value in a product may outlive them. What they must
leave, checked after every delta run of a clean sync:

- A hand edit in a product is repaired at the next reconcile at the latest: every clean sync
  of the machine is a reconcile run, checked against rules 1-8 whatever delta runs and hand
  edits came before it; a delta run that reconciles instead (and says why) is checked the same
  way; so is a delta run after which nothing was edited by hand since the last reconcile (it
  then had nothing to trust that is not so, and must leave what a reconcile would).
11. No leaver is left active after a delta run that saw them leave: a managed account whose
    source user was enabled at the last run and is disabled or gone now is inactive.
12. A delta run never undoes a reconcile's repair: it changes no account, and no account's
    groups, that neither the source (the facts of its user, or of a user with its name) nor a
    hand edit moved since the last run.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from tests.lifecycle.directory import Directory
from tests.lifecycle.products import Product, TargetSnapshot

# -- the mapping tables the test profile uses (the oracle applies them itself) ---------------

ATTRIBUTES_CSV = """target,source,transform,regex,replacement,template,default
username,uid,lower,,,,
email,mail,lower,,,,
display_name,cn,strip,,,,
"""
MANUAL_RULES = {"eng": "developers"}
DEFAULT_GROUP = "all-staff"
GROUPS_CSV = (
    "source_group,target_group,mode,targets\n"
    + "".join(f"{source},{target},manual,\n" for source, target in MANUAL_RULES.items())
    + f"*,,on-the-fly,\n,{DEFAULT_GROUP},default,\n"
)
#: profile.yaml's protected_usernames; also the account usersync signs in as
PROTECTED = frozenset({"admin"})

# -- switches: where the spec may still move, one place to move the oracle -------------------

#: Rule 3 may become "adopt only when the e-mail matches too".
ADOPT_ONLY_WITH_MATCHING_EMAIL = True
#: A disabled source user adopts a same-named unmanaged account too (and so deactivates it);
#: False: only a live user adopts (the account is needed to provision it, not to stop it).
ADOPT_FOR_DISABLED_SOURCE_USERS = False
#: The on-the-fly `*` rule also keeps the name of a group a manual rule maps. False, as the
#: README documents: a manual rule wins for its source group (an explicit on-the-fly row naming
#: the group would still copy it).
STAR_RULE_COVERS_MANUALLY_MAPPED_GROUPS = False
#: Rule 1's clash counts enabled users only: two enabled users sharing a username are both
#: rejected; a disabled user whose username an enabled one has is rejected ("shadowed");
#: disabled users sharing a username with each other only are not. False: any two share.
CLASH_AMONG_ENABLED_ONLY = True
#: Rule 4's renames (by the source or by hand) are carried to the accounts of disabled users
#: too; False: only live users' accounts must carry the source's username (a deprovisioned
#: account is deactivated, not otherwise updated).
RENAME_DISABLED_USERS_ACCOUNTS = False
#: Why a disabled user is rejected when an enabled one has its username; the enabled one
#: takes the disabled one's account over, as a re-created user does (rule 6).
SHADOWED = "disabled, and an enabled source user has its username"
#: Renames that trade names (a→b while b→a) still converge in one sync.
RENAME_CYCLES_CONVERGE = True


class RuleBroken(AssertionError):
    """A lifecycle rule does not hold after a clean sync."""


class Rule1Rejected(RuleBroken):
    """Rule 1: a rejected user was provisioned or written."""


class Rule2LiveAccount(RuleBroken):
    """Rule 2: a live user's account is missing, wrong, or inactive."""


class Rule2Protected(RuleBroken):
    """Rule 2: a protected account was touched."""


class Rule3Adoption(RuleBroken):
    """Rule 3: a same-named unmanaged account was not adopted."""


class Rule4Identity(RuleBroken):
    """Rule 4: an account is not the one the source identity is linked to, or a second one."""


class Rule5Deprovisioning(RuleBroken):
    """Rule 5: a managed account of a disabled or gone source user is active."""


class Rule6Recreated(RuleBroken):
    """Rule 6: a re-created user did not take over its old account."""


class Rule7Groups(RuleBroken):
    """Rule 7: a membership is wrong, or a group was deleted."""


class Rule8HandMade(RuleBroken):
    """Rule 8: an unmanaged hand-made account was changed."""


class Rule9Idempotence(RuleBroken):
    """Rule 9: the sync after a clean sync wrote or planned something."""


class Rule10Brake(RuleBroken):
    """Rule 10: a sync that trips the brake wrote something."""


class Rule11DeltaLeaver(RuleBroken):
    """Rule 11: a delta run left active the account of a user it saw leave."""


class Rule12DeltaUndid(RuleBroken):
    """Rule 12: a delta run changed an account that neither the source nor a hand edit moved."""


RULE_OF_HOW: dict[str, type[RuleBroken]] = {
    "linked": Rule4Identity,
    "adopted": Rule3Adoption,
    "taken over": Rule6Recreated,
    "created": Rule2LiveAccount,
}


# -- what the source says, through the mapping rules ----------------------------------------


@dataclass(frozen=True)
class Facts:
    """One present source user as the mapping rules see it."""

    ident: int
    username: str
    email: str | None
    display_name: str
    enabled: bool
    rejected: str | None  # why, or None
    groups: frozenset[str]  # target groups (case-folded) of the user, if live
    label: str

    @property
    def live(self) -> bool:
        return self.enabled and self.rejected is None


def source_facts(directory: Directory) -> dict[int, Facts]:
    users = list(directory.users.values())
    everyone = Counter(u.username.casefold() for u in users)
    enabled = Counter(u.username.casefold() for u in users if u.enabled)
    out = {}
    for user in users:
        name = user.username.casefold()
        rejected = None
        if user.mail is None or not user.mail.strip():
            rejected = "no e-mail"
        elif not CLASH_AMONG_ENABLED_ONLY and everyone[name] > 1:
            rejected = "username shared with another source user"
        elif CLASH_AMONG_ENABLED_ONLY and user.enabled and enabled[name] > 1:
            rejected = "username shared with another enabled source user"
        elif CLASH_AMONG_ENABLED_ONLY and not user.enabled and enabled[name]:
            rejected = SHADOWED
        groups = {DEFAULT_GROUP}
        for group in directory.groups.values():
            if user.ident not in group.members:
                continue
            manual = MANUAL_RULES.get(group.name)
            if manual:
                groups.add(manual)
            if manual is None or STAR_RULE_COVERS_MANUALLY_MAPPED_GROUPS:
                groups.add(group.name)
        out[user.ident] = Facts(
            ident=user.ident,
            username=user.username,
            email=user.mail.strip().lower() if user.mail else None,
            display_name=user.cn.strip(),
            enabled=user.enabled,
            rejected=rejected,
            groups=frozenset(g.casefold() for g in groups),
            label=user.label(),
        )
    return out


def moved_users(before: dict[int, Facts], now: dict[int, Facts]) -> tuple[set[int], set[str]]:
    """The source users whose facts differ between two syncs (new, gone or changed: a user
    whose name another user took is changed too, being rejected now), and every username
    (case-folded) they had or have."""
    moved = {i for i in before.keys() | now.keys() if before.get(i) != now.get(i)}
    names = {f.username.casefold() for i in moved for f in (before.get(i), now.get(i)) if f}
    return moved, names


def mapped_groups(directory: Directory) -> set[str]:
    """Target groups the rules map now: the manual and default targets, every source group."""
    names = {*MANUAL_RULES.values(), DEFAULT_GROUP}
    names |= {g.name for g in directory.groups.values()}
    return {n.casefold() for n in names}


# -- what the oracle knows of a product ----------------------------------------------------


@dataclass
class Book:
    """What the oracle has seen usersync do in one product."""

    product: Product
    #: source identity → the key of its account
    links: dict[int, str] = field(default_factory=dict)
    #: every key usersync has taken charge of (created, adopted, taken over)
    managed: set[str] = field(default_factory=set)
    #: keys of protected accounts
    protected: set[str] = field(default_factory=set)
    #: the product's state after the last checked sync and any hand edits since
    baseline: TargetSnapshot | None = None


@dataclass(frozen=True)
class Resolution:
    ident: int
    key: str | None  # None: a new account
    how: str  # linked | adopted | taken over | created


@dataclass
class Expected:
    """The product's state the spec demands after a clean sync from `pre`."""

    resolutions: dict[int, Resolution]
    #: idents whose account must carry the source's username
    names_checked: set[int]
    #: managed key → why it must be inactive
    inactive: dict[str, str]
    #: key → (rule, why) for accounts the sync must leave exactly as they were
    untouched: dict[str, tuple[type[RuleBroken], str]]
    #: managed keys of live users whose username is protected: nothing is demanded
    unconstrained: set[str]
    #: links after this sync, except those of accounts still to be created
    links: dict[int, str]
    managed: set[str]


def expect(
    facts: dict[int, Facts], book: Book, pre: TargetSnapshot, managed_groups: set[str]
) -> Expected:
    """Apply the rules to the source facts and the product's state before the sync."""
    can_rename = book.product.can_rename
    owner = {key: ident for ident, key in book.links.items()}

    def moves_away(holder: str, seen: frozenset[str]) -> bool:
        """Whether the managed account `holder` is to be renamed away from its current name."""
        if not can_rename or holder not in book.managed:
            return False
        f = facts.get(owner.get(holder, -1))
        if f is None or f.rejected or f.username in PROTECTED:
            return False
        if not f.enabled and not RENAME_DISABLED_USERS_ACCOUNTS:
            return False
        if f.username.casefold() == pre.accounts[holder].username.casefold():
            return False
        return name_free(f.username, holder, seen | {holder})

    def name_free(username: str, key: str, seen: frozenset[str] = frozenset()) -> bool:
        """Whether account `key` can carry `username` after the sync."""
        holder = pre.by_name(username)
        if holder is None or holder.key == key:
            return True
        if holder.key in seen:
            return RENAME_CYCLES_CONVERGE
        return moves_away(holder.key, seen)

    resolutions: dict[int, Resolution] = {}
    names_checked: set[int] = set()
    claimants = Counter(f.username.casefold() for f in facts.values() if not f.rejected)
    for f in sorted(facts.values(), key=lambda f: f.ident):
        if f.rejected or f.username in PROTECTED:
            continue
        if f.ident in book.links:
            key = book.links[f.ident]
            resolutions[f.ident] = Resolution(f.ident, key, "linked")
            renamed = f.enabled or RENAME_DISABLED_USERS_ACCOUNTS
            if can_rename and renamed and name_free(f.username, key):
                names_checked.add(f.ident)
            continue
        if claimants[f.username.casefold()] > 1:
            continue  # disabled users sharing a name: none of them may claim an account by it
        holder = pre.by_name(f.username)
        if holder is None:
            if f.enabled:
                resolutions[f.ident] = Resolution(f.ident, None, "created")
                names_checked.add(f.ident)
        elif holder.key in book.protected:
            continue
        elif holder.key not in book.managed:
            same_email = holder.email.casefold() == (f.email or "").casefold()
            if (f.enabled or ADOPT_FOR_DISABLED_SOURCE_USERS) and (
                same_email or not ADOPT_ONLY_WITH_MATCHING_EMAIL
            ):
                resolutions[f.ident] = Resolution(f.ident, holder.key, "adopted")
                names_checked.add(f.ident)
        elif (
            owner.get(holder.key) not in facts
            or (f.enabled and (facts[owner[holder.key]].rejected or "").startswith(SHADOWED))
        ) and (
            not ADOPT_ONLY_WITH_MATCHING_EMAIL
            or holder.email.casefold() == (f.email or "").casefold()
        ):
            # Gone, or disabled and shadowed by this user: a re-hire takes the account over, as
            # the adoption policy would let it take any account (a new person with the old
            # one's username and another e-mail is not them: the old account stays theirs).
            resolutions[f.ident] = Resolution(f.ident, holder.key, "taken over")
            names_checked.add(f.ident)
        elif f.enabled and moves_away(holder.key, frozenset()):
            resolutions[f.ident] = Resolution(f.ident, None, "created")
            names_checked.add(f.ident)

    links = dict(book.links)
    for r in resolutions.values():
        if r.key is None:
            continue
        if r.how == "taken over":
            links = {i: k for i, k in links.items() if k != r.key}
        links[r.ident] = r.key
    managed = book.managed | {r.key for r in resolutions.values() if r.key is not None}
    owner_after = {key: ident for ident, key in links.items()}

    inactive: dict[str, str] = {}
    untouched: dict[str, tuple[type[RuleBroken], str]] = {}
    unconstrained: set[str] = set()
    for key in managed:
        if key not in pre.accounts:
            continue
        f = facts.get(owner_after.get(key, -1))
        if f is None:
            inactive[key] = "its source user is gone"
        elif f.username in PROTECTED:
            unconstrained.add(key)
        elif not f.enabled:
            why = "rejected: " + f.rejected if f.rejected else "not rejected"
            inactive[key] = f"its source user is disabled ({why}): {f.label}"
        elif f.rejected:
            untouched[key] = (Rule1Rejected, f"its live source user is rejected: {f.label}")
    for key in pre.accounts:
        if key in book.protected:
            untouched[key] = (Rule2Protected, "a protected account")
        elif key not in managed:
            untouched[key] = (Rule8HandMade, "an account usersync does not manage")
    return Expected(resolutions, names_checked, inactive, untouched, unconstrained, links, managed)


# -- checking ------------------------------------------------------------------------------


class Oracle:
    """Per product: the book, the expectations of each clean sync and their check."""

    def __init__(self, products: dict[str, Product]) -> None:
        self.books = {name: Book(product) for name, product in products.items()}
        self.managed_groups: set[str] = set()

    def start(self) -> None:
        """Take the products as they are (seeded) as the first baseline."""
        for book in self.books.values():
            book.baseline = book.product.snapshot()
            book.protected = {
                a.key for a in book.baseline.accounts.values() if a.username in PROTECTED
            }

    def note_hand_edit(self, product: str) -> None:
        book = self.books[product]
        book.baseline = book.product.snapshot()

    def note_mapping(self, directory: Directory) -> None:
        """A sync read the source: every group the rules map now is managed from now on."""
        self.managed_groups |= mapped_groups(directory)

    def follow_delta(
        self,
        product: str,
        directory: Directory,
        synced: dict[int, Facts],
        last_run: TargetSnapshot,
        context: str,
    ) -> None:
        """Check a delta run that stayed one after hand edits (rules 11 and 12), then take
        what it did into the book as `check` does, without demanding the rest of the spec:
        what it took as written may be what a hand edit changed.

        Args:
            synced: the source's facts at the last run.
            last_run: the product after the last run, before the hand edits since.

        Raises:
            Rule11DeltaLeaver, Rule12DeltaUndid: with the evidence.
        """
        book = self.books[product]
        pre = book.baseline
        assert pre is not None, "start() the oracle first"
        post = book.product.snapshot()
        facts = source_facts(directory)
        expected = expect(facts, book, pre, self.managed_groups)
        check = _Check(product, book.product.can_rename, facts, pre, post, expected, context)
        for ident, before in synced.items():
            now = facts.get(ident)
            if not before.enabled or (now is not None and now.enabled):
                continue
            key = book.links.get(ident)
            if key in expected.inactive and key in post.accounts and post.accounts[key].active:
                raise check.fail(
                    Rule11DeltaLeaver,
                    f"{before.label} left ({expected.inactive[key]}); its account is active",
                    [key],
                )
        moved, names = moved_users(synced, facts)
        exempt = {book.links[i] for i in moved if i in book.links}
        for key in sorted(pre.accounts.keys() | post.accounts.keys()):
            named = {
                a.username.casefold() for a in (pre.accounts.get(key), post.accounts.get(key)) if a
            }
            if key in exempt or named & names:
                continue
            if key not in pre.accounts:
                raise check.fail(
                    Rule12DeltaUndid, "an account appeared that no moved source user needed", [key]
                )
            hand_edited = last_run.accounts.get(key) != pre.accounts[key] or (
                last_run.groups_of(key) != pre.groups_of(key)
            )
            if hand_edited:
                continue
            if post.accounts.get(key) != pre.accounts[key] or post.groups_of(key) != pre.groups_of(
                key
            ):
                raise check.fail(
                    Rule12DeltaUndid,
                    f"{key} changed although neither its source user nor a hand edit moved it "
                    "since the last run",
                    [key],
                )
        created = {}
        for r in expected.resolutions.values():
            if r.key is None:
                account = post.by_name(facts[r.ident].username)
                if account is not None and account.key not in pre.accounts:
                    created[r.ident] = account.key
        book.links = {**expected.links, **created}
        book.managed = expected.managed | set(created.values())
        book.baseline = post

    def brake_load(self, product: str, directory: Directory) -> tuple[list[str], list[str]]:
        """The deactivations and membership removals a sync from the current state must make."""
        book = self.books[product]
        now = book.product.snapshot()
        facts = source_facts(directory)
        groups = self.managed_groups | mapped_groups(directory)
        expected = expect(facts, book, now, groups)
        deactivations = [now.describe(k) for k in expected.inactive if now.accounts[k].active]
        removals = []
        for r in expected.resolutions.values():
            f = facts[r.ident]
            if r.key is None or not f.live:
                continue
            for group in now.groups_of(r.key):
                if group in groups and group not in f.groups:
                    removals.append(f"{now.describe(r.key)} from {group}")
        return deactivations, removals

    def check(self, product: str, directory: Directory, context: str) -> None:
        """Check every rule on the product after a clean sync; then remember what it did.

        Raises:
            RuleBroken: the first rule found broken, with the evidence.
        """
        book = self.books[product]
        pre = book.baseline
        assert pre is not None, "start() the oracle first"
        post = book.product.snapshot()
        facts = source_facts(directory)
        expected = expect(facts, book, pre, self.managed_groups)
        check = _Check(product, book.product.can_rename, facts, pre, post, expected, context)
        created = check.accounts()
        check.memberships(self.managed_groups, created)
        book.links = {**expected.links, **created}
        book.managed = expected.managed | set(created.values())
        book.baseline = post


@dataclass
class _Check:
    product: str
    can_rename: bool
    facts: dict[int, Facts]
    pre: TargetSnapshot
    post: TargetSnapshot
    expected: Expected
    context: str

    def fail(self, rule: type[RuleBroken], what: str, keys: list[str] = ()) -> RuleBroken:
        lines = [f"{self.product}: {rule.__doc__}", f"  {what}"]
        for key in keys:
            lines.append(f"  before: {self.pre.describe(key)}")
            lines.append(f"  after:  {self.post.describe(key)}")
        lines.append("  source now:")
        lines += [f"    {f.label} -> rejected: {f.rejected}" for f in self.facts.values()]
        lines.append(self.context)
        return rule("\n".join(lines))

    def accounts(self) -> dict[int, str]:
        """Check the accounts; return the links of the accounts created by this sync."""
        created: dict[int, str] = {}
        for r in self.expected.resolutions.values():
            f = self.facts[r.ident]
            rule = RULE_OF_HOW[r.how]
            if r.key is None:
                account = self.post.by_name(f.username)
                if account is None:
                    raise self.fail(Rule2LiveAccount, f"no account for live user {f.label}")
                if account.key in self.pre.accounts:
                    raise self.fail(
                        Rule4Identity,
                        f"live user {f.label} needs a new account; it got an existing one "
                        "that belongs to someone else",
                        [account.key],
                    )
                created[r.ident] = account.key
            else:
                account = self.post.accounts.get(r.key)
                if account is None:
                    raise self.fail(rule, f"account {r.key} ({r.how}) of {f.label} is gone")
            if r.ident in self.expected.names_checked and (
                account.username.casefold() != f.username.casefold()
            ):
                holder = self.post.by_name(f.username)
                raise self.fail(
                    rule,
                    f"the account {r.how} to {f.label} is named {account.username!r}, "
                    f"not {f.username!r}"
                    + (f"; that name is held by {holder.key}" if holder else ""),
                    [account.key] + ([holder.key] if holder else []),
                )
            if not f.enabled:
                if account.active:
                    raise self.fail(
                        Rule5Deprovisioning,
                        f"the account {r.how} to disabled user {f.label} is active",
                        [account.key],
                    )
                continue
            if not account.active:
                raise self.fail(
                    Rule6Recreated if r.how == "taken over" else Rule2LiveAccount,
                    f"the account {r.how} to live user {f.label} is inactive",
                    [account.key],
                )
            if account.email.casefold() != (f.email or "").casefold():
                raise self.fail(
                    Rule2LiveAccount,
                    f"the account {r.how} to {f.label} has e-mail {account.email!r}",
                    [account.key],
                )
            if account.display_name != f.display_name:
                raise self.fail(
                    Rule2LiveAccount,
                    f"the account {r.how} to {f.label} has display name "
                    f"{account.display_name!r}, not {f.display_name!r}",
                    [account.key],
                )
        explained = set(self.pre.accounts) | set(created.values())
        for key in set(self.post.accounts) - explained:
            raise self.fail(
                Rule4Identity, "an account appeared that no live source user needed", [key]
            )
        for key, why in self.expected.inactive.items():
            if self.post.accounts[key].active:
                raise self.fail(Rule5Deprovisioning, f"managed account is active: {why}", [key])
        for key, (rule, why) in self.expected.untouched.items():
            if self.post.accounts.get(key) != self.pre.accounts[key]:
                raise self.fail(rule, f"{why} was changed", [key])
        return created

    def memberships(self, managed_groups: set[str], created: dict[int, str]) -> None:
        for group in self.pre.groups:
            if group not in self.post.groups:
                raise self.fail(Rule7Groups, f"group {group!r} was deleted")
        live: dict[str, Facts] = {}
        for r in self.expected.resolutions.values():
            f = self.facts[r.ident]
            if f.enabled:
                live[r.key or created[r.ident]] = f
        new_keys = set(created.values())
        for key, f in live.items():
            for group in f.groups:
                if key not in self.post.groups.get(group, frozenset()):
                    raise self.fail(
                        Rule7Groups, f"{f.label} is not in {group!r}, the source says so", [key]
                    )
        for group in set(self.pre.groups) | set(self.post.groups):
            before = self.pre.groups.get(group, frozenset())
            after = self.post.groups.get(group, frozenset())
            for key in sorted(before | after):
                if key in self.expected.unconstrained:
                    continue
                if key in live and group in managed_groups:
                    if key in after and group not in live[key].groups:
                        raise self.fail(
                            Rule7Groups,
                            f"{live[key].label} is in managed group {group!r}; the source says not",
                            [key],
                        )
                elif key in new_keys:
                    continue  # a product's own default group for new accounts
                elif (key in before) != (key in after):
                    rule, why = self.expected.untouched.get(key, (Rule7Groups, ""))
                    if key in self.expected.inactive:
                        why = "a deactivated managed account keeps its memberships"
                    elif key in live:
                        why = f"group {group!r} is not managed"
                    change = "added to" if key in after else "removed from"
                    raise self.fail(rule, f"{key} was {change} {group!r}: {why}", [key])


def planned_changes(plan: pd.DataFrame | None, can_rename: bool) -> pd.DataFrame:
    """A plan's operations, less renames a product without a rename API cannot carry out."""
    if plan is None or not len(plan):
        return pd.DataFrame()
    if can_rename:
        return plan

    def only_rename(after: object) -> bool:
        try:
            return set(json.loads(str(after) or "{}")) == {"username"}
        except ValueError:
            return False

    rename_only = (plan["op"] == "update_user") & plan["after"].map(only_rename)
    return plan.loc[~rename_only]
