"""The source side of the lifecycle test: a model of what slapd holds, kept in step with slapd.

`Directory` writes users and groups into a real slapd with ldap3 (add, delete, modrdn, modify)
and keeps `users` and `groups` as the test's own record of what it wrote. The oracle reads only
this record, never what usersync extracted. Users live under `ou=a` or `ou=b` below the user
base, so two entries can carry the same uid in different case (the case-insensitive username
clash usersync must reject). slapd runs without the refint overlay, so when a user is renamed or
deleted the test rewrites the member values of its groups itself, as refint would. groupOfNames
needs at least one member: every group also lists `PLACEHOLDER`, a DN outside the user base that
usersync leaves out (and notes), so a group can be empty of users.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ldap3 import LEVEL, MODIFY_REPLACE, Connection, Server
from ldap3.core.exceptions import LDAPCommunicationError, LDAPSessionTerminatedByServerError
from usersync_sandbox.slapd import SlapdServer, ldif_entry

BASE = "dc=example,dc=org"
PEOPLE = f"ou=people,{BASE}"
GROUPS = f"ou=groups,{BASE}"
OUS = ("a", "b")
PLACEHOLDER = f"cn=placeholder,{BASE}"
ENABLED, DISABLED = "staff", "inactive"
#: profile.yaml's disabled_filter: users with this employeeType are disabled in the source
DISABLED_FILTER = f"(employeeType={DISABLED})"


def initial_ldif() -> str:
    """The suffix, the user base with its two OUs, and the group base; no users or groups."""
    parts = [
        ldif_entry(
            BASE, {"objectClass": ["dcObject", "organization"], "o": "Example", "dc": "example"}
        ),
        ldif_entry(PEOPLE, {"objectClass": "organizationalUnit", "ou": "people"}),
        ldif_entry(GROUPS, {"objectClass": "organizationalUnit", "ou": "groups"}),
    ]
    parts += [
        ldif_entry(f"ou={ou},{PEOPLE}", {"objectClass": "organizationalUnit", "ou": ou})
        for ou in OUS
    ]
    return "".join(parts)


@dataclass
class SourceUser:
    """One user entry as the test wrote it. `ident` is new on every add (like entryUUID)."""

    ident: int
    ou: str
    uid: str
    mail: str | None
    cn: str
    enabled: bool

    @property
    def dn(self) -> str:
        return f"uid={self.uid},ou={self.ou},{PEOPLE}"

    @property
    def username(self) -> str:
        """What attributes.csv makes of the uid: lower case."""
        return self.uid.lower()

    def label(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"#{self.ident} {self.uid!r} in ou={self.ou} ({state}, mail={self.mail!r}, cn={self.cn!r})"


@dataclass
class SourceGroup:
    """One group entry; `ident` survives a rename (modrdn), like entryUUID."""

    ident: int
    name: str
    members: set[int] = field(default_factory=set)  # user idents

    @property
    def dn(self) -> str:
        return f"cn={self.name},{GROUPS}"


class Directory:
    """slapd plus the test's record of it. Every method changes both or neither."""

    def __init__(self, server: SlapdServer) -> None:
        self._server = server
        self._conn = self._connect()
        self.users: dict[int, SourceUser] = {}
        self.groups: dict[int, SourceGroup] = {}
        self._next_ident = 1

    def _connect(self) -> Connection:
        return Connection(
            Server(self._server.url),
            user=self._server.admin_dn,
            password=self._server.admin_password,
            auto_bind=True,
            raise_exceptions=True,
        )

    def _ldap(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        """One LDAP operation; once more on a new connection if slapd closed this one."""
        try:
            return getattr(self._conn, operation)(*args, **kwargs)
        except (LDAPSessionTerminatedByServerError, LDAPCommunicationError):
            self._conn = self._connect()
            return getattr(self._conn, operation)(*args, **kwargs)

    def close(self) -> None:
        self._conn.unbind()

    # -- state ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Delete every user and group entry; forget them."""
        for base in [*(f"ou={ou},{PEOPLE}" for ou in OUS), GROUPS]:
            self._ldap("search", base, "(objectClass=*)", search_scope=LEVEL, attributes=[])
            for entry in list(self._conn.entries):
                self._ldap("delete", entry.entry_dn)
        self.users.clear()
        self.groups.clear()

    def user_at(self, ou: str, uid: str) -> SourceUser | None:
        wanted = uid.casefold()
        return next(
            (u for u in self.users.values() if u.ou == ou and u.uid.casefold() == wanted), None
        )

    def group_named(self, name: str) -> SourceGroup | None:
        return next((g for g in self.groups.values() if g.name == name), None)

    def _ident(self) -> int:
        ident, self._next_ident = self._next_ident, self._next_ident + 1
        return ident

    # -- users ------------------------------------------------------------------------------

    def add_user(
        self, ou: str, uid: str, mail: str | None, cn: str, enabled: bool
    ) -> SourceUser | None:
        """Add a user entry; None (and no change) when the RDN is taken in that OU."""
        if self.user_at(ou, uid) is not None:
            return None
        user = SourceUser(self._ident(), ou, uid, mail, cn, enabled)
        attributes: dict[str, object] = {
            "uid": uid,
            "cn": cn,
            "sn": uid,
            "employeeType": ENABLED if enabled else DISABLED,
        }
        if mail is not None:
            attributes["mail"] = mail
        self._ldap("add", user.dn, ["inetOrgPerson"], attributes)
        self.users[user.ident] = user
        return user

    def delete_user(self, ident: int) -> SourceUser:
        user = self.users.pop(ident)
        self._ldap("delete", user.dn)
        for group in self.groups.values():
            if ident in group.members:
                group.members.discard(ident)
                self._write_members(group)
        return user

    def rename_user(self, ident: int, uid: str) -> bool:
        """modrdn to a new uid in the same OU (same entry, same entryUUID); False if taken."""
        user = self.users[ident]
        if uid.casefold() == user.uid.casefold() or self.user_at(user.ou, uid) is not None:
            return False
        self._ldap("modify_dn", user.dn, f"uid={uid}")
        user.uid = uid
        for group in self.groups.values():
            if ident in group.members:
                self._write_members(group)
        return True

    def set_enabled(self, ident: int, enabled: bool) -> None:
        user = self.users[ident]
        self._replace(user.dn, "employeeType", ENABLED if enabled else DISABLED)
        user.enabled = enabled

    def set_mail(self, ident: int, mail: str | None) -> None:
        user = self.users[ident]
        self._replace(user.dn, "mail", mail)
        user.mail = mail

    def set_cn(self, ident: int, cn: str) -> None:
        user = self.users[ident]
        self._replace(user.dn, "cn", cn)
        user.cn = cn

    # -- groups -----------------------------------------------------------------------------

    def add_group(self, name: str) -> SourceGroup | None:
        """Create an empty group; None when the name is taken."""
        if self.group_named(name) is not None:
            return None
        group = SourceGroup(self._ident(), name)
        self._ldap("add", group.dn, ["groupOfNames"], {"cn": name, "member": [PLACEHOLDER]})
        self.groups[group.ident] = group
        return group

    def rename_group(self, ident: int, name: str) -> bool:
        group = self.groups[ident]
        if self.group_named(name) is not None:
            return False
        self._ldap("modify_dn", group.dn, f"cn={name}")
        group.name = name
        return True

    def delete_group(self, ident: int) -> SourceGroup:
        group = self.groups.pop(ident)
        self._ldap("delete", group.dn)
        return group

    def set_members(self, ident: int, members: set[int]) -> None:
        group = self.groups[ident]
        group.members = set(members)
        self._write_members(group)

    # -- internals --------------------------------------------------------------------------

    def _write_members(self, group: SourceGroup) -> None:
        dns = [PLACEHOLDER, *sorted(self.users[i].dn for i in group.members)]
        self._replace(group.dn, "member", dns)

    def _replace(self, dn: str, attribute: str, value: str | list[str] | None) -> None:
        values = [] if value is None else [value] if isinstance(value, str) else value
        self._ldap("modify", dn, {attribute: [(MODIFY_REPLACE, values)]})
