"""The target side of the lifecycle test: each product's emulator, read and edited in memory.

The emulator's own state is the truth the oracle checks against, so it is read here directly
(not through usersync's clients): `snapshot()` gives every account by its immutable key (Jira
key, Confluence userKey, Bitbucket id) and every group's members by key. Hand edits (an admin
creating, renaming, deactivating or reactivating an account, changing its e-mail, or adding
someone to a group or removing them in the product's UI) change that state directly, as the
product's UI would, without a request in the log.
`SwappableApp` lets one uvicorn server per product live for the whole module while each
example gets a fresh emulator behind it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from usersync_sandbox.bitbucket import BitbucketEmulator
from usersync_sandbox.confluence import ConfluenceEmulator
from usersync_sandbox.jira import JiraEmulator

ADMIN = "admin"


@dataclass(frozen=True)
class Account:
    key: str
    username: str
    email: str
    display_name: str
    active: bool


@dataclass(frozen=True)
class TargetSnapshot:
    """Accounts by key; groups by case-folded name → member keys."""

    accounts: dict[str, Account]
    groups: dict[str, frozenset[str]]
    _by_name: dict[str, Account] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({a.username.casefold(): a for a in self.accounts.values()})

    def by_name(self, username: str) -> Account | None:
        return self._by_name.get(username.casefold())

    def groups_of(self, key: str) -> frozenset[str]:
        return frozenset(g for g, members in self.groups.items() if key in members)

    def describe(self, key: str) -> str:
        account = self.accounts.get(key)
        if account is None:
            return f"{key} (no such account)"
        state = "active" if account.active else "inactive"
        groups = ", ".join(sorted(self.groups_of(key))) or "no groups"
        return (
            f"{key} {account.username!r} <{account.email}> {account.display_name!r} {state}; "
            f"groups: {groups}"
        )


class SwappableApp:
    """An ASGI app that forwards to whichever emulator app is current."""

    def __init__(self) -> None:
        self.current: Any = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.current(scope, receive, send)


class Product(ABC):
    """One product's emulator with the reads and hand edits the test needs."""

    name: ClassVar[str]
    context_path: ClassVar[str]
    #: whether the product has an API to rename an account (Confluence has none)
    can_rename: ClassVar[bool] = True

    def __init__(self, admin_password: str) -> None:
        self.emulator = self._build(admin_password)

    @property
    def app(self) -> Any:
        """The emulator's `Instrumented` app: request log and faults."""
        return self.emulator.app

    def writes(self) -> int:
        """How many write requests (POST, PUT, PATCH, DELETE) the emulator has received."""
        return len(self.app.writes())

    @abstractmethod
    def _build(self, admin_password: str) -> Any: ...

    @abstractmethod
    def snapshot(self) -> TargetSnapshot: ...

    @abstractmethod
    def create_account(self, username: str, email: str, display_name: str) -> None: ...

    @abstractmethod
    def rename(self, key: str, username: str) -> None: ...

    @abstractmethod
    def deactivate(self, key: str) -> None: ...

    @abstractmethod
    def reactivate(self, key: str) -> None: ...

    @abstractmethod
    def set_email(self, key: str, email: str) -> None: ...

    @abstractmethod
    def create_group(self, group: str) -> None: ...

    @abstractmethod
    def add_member(self, group: str, key: str) -> None: ...

    @abstractmethod
    def remove_member(self, group: str, key: str) -> None: ...


class JiraProduct(Product):
    name = "jira"
    context_path = "/jira"

    def _build(self, admin_password: str) -> JiraEmulator:
        return JiraEmulator(context_path=self.context_path, admin=(ADMIN, admin_password))

    def snapshot(self) -> TargetSnapshot:
        jira = self.emulator
        users = [jira.user(name) for name in jira.usernames]
        accounts = {
            u.key: Account(u.key, u.name, u.email, u.display_name, u.active) for u in users if u
        }
        keys = {a.username: a.key for a in accounts.values()}
        groups = {
            name: frozenset(keys[m] for m in jira.group_members(name) or ())
            for name in jira.group_names
        }
        return TargetSnapshot(accounts, groups)

    def create_account(self, username: str, email: str, display_name: str) -> None:
        self.emulator.seed_user(username, email, display_name)

    def rename(self, key: str, username: str) -> None:
        self.emulator.rename_user(self.snapshot().accounts[key].username, username)

    def deactivate(self, key: str) -> None:
        with self.emulator._lock:
            self.emulator._users[key].active = False

    def reactivate(self, key: str) -> None:
        with self.emulator._lock:
            self.emulator._users[key].active = True

    def set_email(self, key: str, email: str) -> None:
        with self.emulator._lock:
            self.emulator._users[key].email = email

    def create_group(self, group: str) -> None:
        self.emulator.seed_group(group)

    def add_member(self, group: str, key: str) -> None:
        self.emulator.seed_group(group, members=[self.snapshot().accounts[key].username])

    def remove_member(self, group: str, key: str) -> None:
        with self.emulator._lock:
            self.emulator._groups[group.lower()].member_keys.discard(key)


class ConfluenceProduct(Product):
    name = "confluence"
    context_path = "/confluence"
    can_rename = False

    #: JSON-RPC methods that only read (sent as POST, like every JSON-RPC call)
    RPC_READS: ClassVar[frozenset[str]] = frozenset(
        {"getUser", "hasUser", "hasGroup", "getGroups", "getUserGroups"}
    )

    def writes(self) -> int:
        """Write requests, less JSON-RPC calls that only read (getUser tells e-mails)."""
        return sum(1 for r in self.app.writes() if self._rpc_method(r) not in self.RPC_READS)

    @staticmethod
    def _rpc_method(request: Any) -> str | None:
        if "/rpc/json-rpc/" not in request.path:
            return None
        if isinstance(request.body, dict) and "method" in request.body:
            return str(request.body["method"])
        return request.path.rstrip("/").rsplit("/", 1)[-1]

    def _build(self, admin_password: str) -> ConfluenceEmulator:
        # The Remote API on: the one mode in which a client can read e-mails (JSON-RPC getUser),
        # so the oracle compares them.
        return ConfluenceEmulator(
            context_path=self.context_path,
            admin=(ADMIN, admin_password),
            remote_api_enabled=True,
        )

    def snapshot(self) -> TargetSnapshot:
        wiki = self.emulator
        users = dict(wiki.users)
        accounts = {
            u.user_key: Account(u.user_key, u.username, u.email, u.display_name, u.active)
            for u in users.values()
        }
        groups = {
            name: frozenset(users[m].user_key for m in g.members if m in users)
            for name, g in dict(wiki.groups).items()
        }
        return TargetSnapshot(accounts, groups)

    def _user(self, key: str) -> Any:
        return next(u for u in self.emulator.users.values() if u.user_key == key)

    def create_account(self, username: str, email: str, display_name: str) -> None:
        self.emulator.seed_user(username, email, display_name)

    def rename(self, key: str, username: str) -> None:
        self.emulator.rename_user(self._user(key).username, username)

    def deactivate(self, key: str) -> None:
        self._user(key).active = False

    def reactivate(self, key: str) -> None:
        self._user(key).active = True

    def set_email(self, key: str, email: str) -> None:
        self._user(key).email = email

    def create_group(self, group: str) -> None:
        self.emulator.seed_group(group)

    def add_member(self, group: str, key: str) -> None:
        self.emulator.seed_group(group, members=[self._user(key).username])

    def remove_member(self, group: str, key: str) -> None:
        self.emulator.groups[group.lower()].members.discard(self._user(key).username)


class BitbucketProduct(Product):
    """Bitbucket: `active` means licensed (a global permission, directly or by a group)."""

    name = "bitbucket"
    context_path = "/bitbucket"

    def _build(self, admin_password: str) -> BitbucketEmulator:
        return BitbucketEmulator(context_path=self.context_path, admin=(ADMIN, admin_password))

    def snapshot(self) -> TargetSnapshot:
        bb = self.emulator
        with bb._lock:
            accounts = {
                str(u.id): Account(
                    str(u.id),
                    u.name,
                    u.email,
                    u.display_name,
                    bb.effective_permission(u.name) is not None,
                )
                for u in bb.users.values()
            }
            groups = {
                key: frozenset(str(u.id) for u in bb.users.values() if key in u.groups)
                for key in bb.groups
            }
        return TargetSnapshot(accounts, groups)

    def _user(self, key: str) -> Any:
        return next(u for u in self.emulator.users.values() if str(u.id) == key)

    def create_account(self, username: str, email: str, display_name: str) -> None:
        self.emulator.seed_user(username, email, display_name)

    def rename(self, key: str, username: str) -> None:
        self.emulator.rename_user(self._user(key).name, username)

    def deactivate(self, key: str) -> None:
        with self.emulator._lock:
            self.emulator.user_permissions.pop(self._user(key).name.casefold(), None)

    def reactivate(self, key: str) -> None:
        """Licensed directly again, as an admin would under Global permissions."""
        with self.emulator._lock:
            name = self._user(key).name.casefold()
            self.emulator.user_permissions.setdefault(name, "LICENSED_USER")

    def set_email(self, key: str, email: str) -> None:
        with self.emulator._lock:
            self._user(key).email = email

    def create_group(self, group: str) -> None:
        self.emulator.seed_group(group)

    def add_member(self, group: str, key: str) -> None:
        self.emulator.seed_group(group, members=[self._user(key).name])

    def remove_member(self, group: str, key: str) -> None:
        with self.emulator._lock:
            self._user(key).groups.discard(group.casefold())


PRODUCTS: tuple[type[Product], ...] = (JiraProduct, ConfluenceProduct, BitbucketProduct)
