"""Which accepted SCIM writes take a user's access away: the inbox's fast path for leavers.

A push that disables a user (`PATCH` replacing `active` with false, in either of the forms
SCIM allows; a `PUT` of the whole user with `active: false`) or deletes one (`DELETE
/Users/<id>`) is an offboarding. The inbox adds the user's SCIM id to the change it reports
(`change["offboarded"]`), so the caller can start a run scoped to that identity at once
instead of waiting for the coalesced sync of everything else (tasks/inbox_events.py). A /Bulk
request is not looked into: its changes reach the products with the next sync.
"""

from __future__ import annotations

import json
from typing import Any

#: What SCIM clients send for false (some send the string).
_FALSE = (False, "false", "False", "FALSE")


def offboarded_user(method: str, path: str, body: bytes) -> str | None:
    """The SCIM id of the user this accepted write disables or deletes, else None."""
    parts = path.strip("/").split("/")
    if len(parts) != 2 or parts[0] != "Users" or not parts[1]:
        return None
    method = method.upper()
    if method == "DELETE":
        return parts[1]
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if method == "PUT":
        return parts[1] if data.get("active") in _FALSE else None
    if method == "PATCH" and any(_disables(op) for op in data.get("Operations") or []):
        return parts[1]
    return None


def _disables(operation: Any) -> bool:
    """A PATCH operation setting `active` to false: `{"path": "active", "value": false}` or a
    path-less `{"value": {"active": false}}`."""
    if not isinstance(operation, dict) or str(operation.get("op", "")).lower() not in (
        "replace",
        "add",
    ):
        return False
    path = str(operation.get("path") or "").strip()
    value = operation.get("value")
    if path:
        return path.lower() in ("active", "urn:ietf:params:scim:schemas:core:2.0:user:active") and (
            value in _FALSE
        )
    return isinstance(value, dict) and any(
        k.lower() == "active" and v in _FALSE for k, v in value.items()
    )
