"""What usersync relies on deliberately although no operation of the description declares it.

Each reliance names what it allows (product, method, path template, what kind of thing, the
parameter or field) and its source: why the real product does it all the same. The conformance
checks allow exactly these and nothing else; the README lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

from usersync_sandbox.faults import Exchange

from tests.conformance.descriptions import Violation


@dataclass(frozen=True)
class Reliance:
    name: str
    product: str
    method: str
    template: str
    kind: str
    #: the query parameter or field; "" for the whole of `kind` (e.g. a status)
    field: str
    source: str
    #: the status this reliance is about, for kind "status"
    status: int = 0

    def allows(self, violation: Violation, exchange: Exchange) -> bool:
        wanted = (self.product, self.method, self.template)
        got = (violation.product, violation.method, violation.template)
        if violation.kind != self.kind or any(
            w not in ("*", g) for w, g in zip(wanted, got, strict=True)
        ):
            return False
        if self.kind == "status":
            return exchange.status == self.status
        return violation.name == self.field


RELIANCES: tuple[Reliance, ...] = (
    Reliance(
        name="jira-user-expand-groups",
        product="jira",
        method="GET",
        template="/api/2/user",
        kind="query",
        field="expand",
        source=(
            "Jira REST's generic expand mechanism (atlassian-rest's @Expandable, applied by a "
            "response filter to every resource, so no operation declares it): UserBean's "
            '`expand` field lists "groups,applicationRoles", its `groups` field is declared in '
            "the 10.3/11.3 UserBean schema, and the 9.12 WADL's getUser example shows `groups` "
            "expanded. One call per account instead of reading every group's members"
        ),
    ),
    Reliance(
        name="confluence-membership-of-missing-404",
        product="confluence",
        method="*",
        template="/rest/api/user/{username}/group/{groupName}",
        kind="status",
        field="",
        status=404,
        source=(
            "adding or removing a membership of an account or group that does not exist "
            "(deleted since it was read) is refused with 404: Confluence's REST maps its "
            "NotFoundException to 404 on every resource, as the same descriptions declare for "
            "GET /rest/api/user, DELETE /rest/api/admin/user/{username}, its disable/enable "
            "and DELETE /rest/api/admin/group/{groupName}; these two declare 204 only. The "
            "client reads it as 'not found' (a 204 would say the membership was written)"
        ),
    ),
    Reliance(
        name="authentication-401",
        product="*",
        method="*",
        template="*",
        kind="status",
        field="",
        status=401,
        source=(
            "missing or wrong credentials are refused with 401 by the product's authentication "
            "filter (Seraph in Jira and Confluence, Bitbucket's own) before any resource runs, "
            "so no operation needs to declare it; Jira and Bitbucket declare it on most "
            "operations, Confluence's descriptions on none"
        ),
    ),
)


def allowed_by(violation: Violation, exchange: Exchange) -> str:
    """The name of the reliance that allows `violation`, or ""."""
    return next((r.name for r in RELIANCES if r.allows(violation, exchange)), "")
