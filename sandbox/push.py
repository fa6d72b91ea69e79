"""Push users and groups into a SCIM inbox over HTTP the way miniOrange's SCIM app does.

miniOrange's "SCIM Server (Destination)" app maps `userName`, `name.givenName`,
`name.familyName`, `emails[type eq "work"].value`, `displayName` and `active`, and maps a
group's name to `displayName` (reference: miniorange-and-peers.md §1.2). `ScimPusher` sends
exactly those: it looks a user up by `userName` filter, creates it with POST (or replaces it
with PUT), creates groups with POST, and changes memberships and `active` with PATCH.
`push_sample` pushes `data/scim-sample.json`, the demo's people; the demo and the end-to-end
test use it in place of a real miniOrange tenant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import httpx

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SAMPLE_FILE = "scim-sample.json"


@dataclass(frozen=True)
class SampleUser:
    """A person as the sample (and miniOrange's attribute mapping) describes them."""

    user_name: str
    given_name: str
    family_name: str
    email: str
    active: bool = True

    def resource(self) -> dict[str, Any]:
        """The SCIM User miniOrange would send for this person."""
        return {
            "schemas": [USER_SCHEMA],
            "userName": self.user_name,
            "name": {"givenName": self.given_name, "familyName": self.family_name},
            "emails": [{"value": self.email, "type": "work", "primary": True}],
            "displayName": f"{self.given_name} {self.family_name}",
            "active": self.active,
        }


@dataclass(frozen=True)
class Sample:
    """Users, and groups as {displayName: [userName, ...]}."""

    users: tuple[SampleUser, ...]
    groups: dict[str, tuple[str, ...]]


def load_sample() -> Sample:
    """The demo's people from `sandbox/data/scim-sample.json`."""
    text = (resources.files("usersync_sandbox") / "data" / SAMPLE_FILE).read_text("utf-8")
    raw = json.loads(text)
    users = tuple(
        SampleUser(
            u["userName"], u["givenName"], u["familyName"], u["email"], u.get("active", True)
        )
        for u in raw["users"]
    )
    groups = {g["displayName"]: tuple(g["members"]) for g in raw["groups"]}
    return Sample(users, groups)


class ScimPusher:
    """A SCIM client that provisions into one inbox as miniOrange does.

    Args:
        base_url: the inbox's SCIM base URL, e.g. http://127.0.0.1:8090/scim/v2/demo-push.
        token: the inbox's bearer token.
        timeout_seconds: per request.
    """

    def __init__(self, base_url: str, token: str, *, timeout_seconds: float = 10.0) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"},
            timeout=timeout_seconds,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ScimPusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(
                f"inbox {self._http.base_url}: {method} {path}: HTTP {response.status_code}: "
                f"{response.text[:300]}"
            )
        return response

    def _find(self, endpoint: str, attribute: str, value: str) -> dict[str, Any] | None:
        found = self._send("GET", endpoint, params={"filter": f'{attribute} eq "{value}"'}).json()
        return (found.get("Resources") or [None])[0]

    def user_id(self, user_name: str) -> str:
        """The inbox id of a user, by userName.

        Raises:
            LookupError: the inbox has no such user.
        """
        found = self._find("/Users", "userName", user_name)
        if found is None:
            raise LookupError(f"the inbox has no user {user_name!r}")
        return str(found["id"])

    def group_id(self, display_name: str) -> str:
        """The inbox id of a group, by displayName.

        Raises:
            LookupError: the inbox has no such group.
        """
        found = self._find("/Groups", "displayName", display_name)
        if found is None:
            raise LookupError(f"the inbox has no group {display_name!r}")
        return str(found["id"])

    def push_user(self, user: SampleUser) -> str:
        """Create the user, or replace it when its userName exists; return its id."""
        existing = self._find("/Users", "userName", user.user_name)
        if existing is None:
            return str(self._send("POST", "/Users", json=user.resource()).json()["id"])
        self._send("PUT", f"/Users/{existing['id']}", json=user.resource())
        return str(existing["id"])

    def push_group(self, display_name: str) -> str:
        """Create the group (without members) unless it exists; return its id."""
        existing = self._find("/Groups", "displayName", display_name)
        if existing is not None:
            return str(existing["id"])
        body = {"schemas": [GROUP_SCHEMA], "displayName": display_name, "members": []}
        return str(self._send("POST", "/Groups", json=body).json()["id"])

    def _patch(self, path: str, operations: list[dict[str, Any]]) -> None:
        self._send("PATCH", path, json={"schemas": [PATCH_SCHEMA], "Operations": operations})

    def add_members(self, display_name: str, user_names: list[str]) -> None:
        """PATCH add: put these users into the group."""
        if user_names:
            members = [{"value": self.user_id(name)} for name in user_names]
            self._patch(
                f"/Groups/{self.group_id(display_name)}",
                [{"op": "add", "path": "members", "value": members}],
            )

    def remove_member(self, display_name: str, user_name: str) -> None:
        """PATCH remove: take one user out of the group."""
        member = self.user_id(user_name)
        self._patch(
            f"/Groups/{self.group_id(display_name)}",
            [{"op": "remove", "path": f'members[value eq "{member}"]'}],
        )

    def set_active(self, user_name: str, active: bool) -> None:
        """PATCH replace `active` (how an IdP disables an account without deleting it)."""
        self.set_active_by_id(self.user_id(user_name), active)

    def set_active_by_id(self, user_id: str, active: bool) -> None:
        """`set_active` of the user with this inbox id (one request: no lookup first)."""
        self._patch(f"/Users/{user_id}", [{"op": "replace", "path": "active", "value": active}])

    def delete_user(self, user_name: str) -> None:
        """DELETE the user (miniOrange's "Delete Users" toggle)."""
        self._send("DELETE", f"/Users/{self.user_id(user_name)}")


def push_sample(base_url: str, token: str, sample: Sample | None = None) -> dict[str, str]:
    """Push every sample user, then each group and its members; return {userName: id}.

    Raises:
        RuntimeError: the inbox refused a request (the message quotes its answer).
    """
    sample = sample or load_sample()
    with ScimPusher(base_url, token) as pusher:
        ids = {user.user_name: pusher.push_user(user) for user in sample.users}
        for name, members in sample.groups.items():
            pusher.push_group(name)
            pusher.add_members(name, list(members))
    return ids
