"""The profile schema and its loading: one IdP connection with its targets and sync settings.

A profile lives in `mappings/<name>/`: `profile.yaml` (validated here with pydantic; unknown
keys are errors, not ignored), `attributes.csv` and `groups.csv` (validated by
`usersync.mapping`). Secrets never sit in these files: a `SecretRef` names an environment
variable or a Prefect Secret block, resolved at run time by whoever runs the sync.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit

import regex as bounded_re
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from usersync.errors import ConfigError

PROFILE_FILE = "profile.yaml"
PROFILE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
#: Longest profile, inbox or target name: a profile's name is a folder's, and file systems
#: refuse names past 255 bytes with a traceback rather than a sentence.
PROFILE_NAME_MAX_LENGTH = 100
#: Largest profile.yaml read (a real one is a few kilobytes).
MAX_PROFILE_BYTES = 1 << 20
#: Most values (mappings, lists, scalars) a profile.yaml may hold once its aliases are
#: expanded: nine anchors aliasing the previous one nine times ("billion laughs") make a few
#: hundred bytes into 387 million strings, minutes and gigabytes to expand.
MAX_PROFILE_VALUES = 100_000


class StrictModel(BaseModel):
    """Base of every profile section: unknown keys are refused, so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: C0 controls, space, DEL, C1 controls, and any other white space (no-break space, U+2028...).
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f-\x9f]|\s")


def _split_url(value: str) -> SplitResult:
    """The URL's parts, once it holds no character that could end a line or a header.

    The messages never repeat the URL: it may carry a password, or text meant for a log.
    """
    bad = _CONTROL_OR_SPACE.search(value)
    if bad:
        raise ValueError(
            f"contains a control character or white space (character {bad.start() + 1}, "
            f"U+{ord(bad.group()):04X}); remove it (check the quoting, and any ${{VARIABLE}} "
            "the URL is built from)"
        )
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - urlsplit checks the port only when asked for it
    except ValueError:
        raise ValueError(
            "is not a valid URL: the port must be a number from 0 to 65535, an IPv6 address "
            "goes in [brackets]"
        ) from None
    return parts


def _server_url(value: str) -> str:
    """A source's or a target's URL: a host, and no user name or password in it."""
    parts = _split_url(value)
    if "@" in parts.netloc:
        raise ValueError(
            "must not carry a user name or password (user:password@host): give the "
            "credentials as a secret reference in the settings for them (auth, token, "
            "bind_dn/bind_password, api_key), and the URL as scheme://host[:port]/path"
        )
    if not parts.hostname:
        raise ValueError("names no host: write scheme://host[:port]/path")
    return value


def _store_url(value: str | None) -> str | None:
    """A database URL: it may name the database user, never the password."""
    if value is not None and _split_url(value).password is not None:
        raise ValueError(
            "must not carry a password (user:password@host): a profile holds secret "
            "references, not secrets; leave store_url unset and give the URL in "
            "$USERSYNC_STORE_URL, or keep the password in the database client's own "
            "password file (e.g. ~/.pgpass)"
        )
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return _server_url(value).rstrip("/")


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine: localhost, 127.0.0.0/8 or ::1 (never resolved)."""
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse_cleartext(url: str, allowed: bool, what: str) -> None:
    """Refuse an http:// URL to another machine unless the section says allow_cleartext.

    Raises:
        ValueError: `what` (the credentials the requests carry) would cross the network
            unencrypted.
    """
    host = urlsplit(url).hostname or ""
    if url.startswith("http://") and not allowed and not is_loopback(host):
        raise ValueError(
            f"url: http:// would send {what} and the users' data unencrypted to {host}, "
            "readable by anyone on the way; use https://, or set allow_cleartext: true "
            "(a lab only)"
        )


#: What `allow_cleartext` says, for every section that has it.
_ALLOW_CLEARTEXT = (
    "Allow an http:// URL to another machine. Everything then crosses the network "
    "unencrypted: the credentials (password, token or signed requests), which anyone on the "
    "way can read and reuse, and every user's data. For a lab only; http:// to this machine "
    "(localhost, 127.0.0.0/8, ::1) needs no opt-in."
)


#: An http(s) base URL, kept without a trailing slash.
HttpUrl = Annotated[str, AfterValidator(_http_url)]


class SecretRef(StrictModel):
    """Where a secret comes from: an environment variable or a Prefect Secret block, by name."""

    env: str | None = Field(None, description="Name of an environment variable holding the secret.")
    prefect_secret: str | None = Field(
        None, description="Name of a Prefect Secret block holding the secret."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.prefect_secret is None):
            raise ValueError("give exactly one of 'env' or 'prefect_secret'")
        return self

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"prefect_secret:{self.prefect_secret}"


SecretLoader = Callable[[str], str]


#: A secret's value on its way to the one call that sends it: `SecretStr` shows as `**********`
#: in reprs, tracebacks and logs; `reveal` gives the value at the HTTP or LDAP call. A plain
#: `str` is accepted too (tests, embedding scripts).
Secret = SecretStr | str


def reveal(secret: Secret) -> str:
    """The plain value of a secret, for the call that sends it (and nothing else)."""
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def resolve_secret(ref: SecretRef, *, load_prefect_secret: SecretLoader | None = None) -> SecretStr:
    """The secret's value, wrapped so that it never shows by accident (`reveal` unwraps it).

    Args:
        ref: where the secret is.
        load_prefect_secret: reads a Prefect Secret block by name; the engine has no Prefect,
            so the caller supplies it.

    Raises:
        ConfigError: the variable is unset or empty, or a block was named but no loader given.
    """
    if ref.env is not None:
        value = os.environ.get(ref.env, "")
        if not value:
            raise ConfigError(f"environment variable {ref.env} is not set (needed for a secret)")
        return SecretStr(value)
    if load_prefect_secret is None:
        raise ConfigError(
            f"secret '{ref.prefect_secret}' is a Prefect Secret block; run the sync through "
            "Prefect or use an environment variable instead"
        )
    return SecretStr(load_prefect_secret(ref.prefect_secret or ""))


# -- sources --------------------------------------------------------------------------------


class LdapTls(StrictModel):
    """TLS for an LDAP connection. Certificates are validated unless explicitly turned off."""

    mode: Literal["none", "ldaps", "starttls"] = Field(
        "none", description="'ldaps' for ldaps:// URLs, 'starttls' to upgrade ldap://, or 'none'."
    )
    ca_file: Path | None = Field(None, description="PEM file of the CA that signed the server.")
    validate_certificate: bool = Field(True, description="Turn off only for a lab directory.")


class LdapIncremental(StrictModel):
    """Incremental extraction: read what changed since a watermark (AD and OpenLDAP).

    Between full reads, a run reads only the users and groups changed since the last
    successful run's watermark (Active Directory: `uSNChanged` past the DC's
    highestCommittedUSN; OpenLDAP: `entryCSN` past the database's `contextCSN`, which needs
    the syncprov overlay) and merges them into the snapshot kept in the store. Deletions are
    invisible to such a read, so a full read runs whenever the last one is older than
    `full_every_hours`, and catches them. An OpenLDAP server without contextCSN is read in
    full every run, with a note saying why.
    """

    enabled: bool = Field(
        False,
        description="Read only changes between full reads. Active Directory: by uSNChanged. "
        "OpenLDAP: by entryCSN against the suffix's contextCSN, which the syncprov overlay "
        "keeps (`overlay syncprov`; with `index entryCSN eq` and `index objectClass eq` the "
        "change search reads only the changed entries, without the latter slapd scans them all); "
        "without it every run is a full read, with a note saying so.",
    )
    full_every_hours: float = Field(
        24,
        gt=0,
        le=168,
        description="A full read (which catches deletions) when the last one is older than "
        "this; at most a week.",
    )


#: What `flavour: active_directory` changes in the LDAP defaults (a profile may still set any).
ACTIVE_DIRECTORY_DEFAULTS: dict[str, Any] = {
    "user_filter": "(&(objectCategory=person)(objectClass=user))",
    "group_filter": "(objectClass=group)",
    "id_attribute": "objectGUID",
    "member_attributes": ("member",),
}


class LdapSourceConfig(StrictModel):
    """An LDAP directory (OpenLDAP, 389-ds, Active Directory).

    With `flavour: active_directory` the filters, id and member attribute default to AD's
    (`ACTIVE_DIRECTORY_DEFAULTS`), users are inactive per `inactive_accounts`, and `member`
    is read in ranges of `member_range_size` values.
    """

    kind: Literal["ldap"]
    flavour: Literal["openldap", "active_directory"] = "openldap"
    url: str = Field(description="ldap://host:port or ldaps://host:port")
    bind_dn: str
    bind_password: SecretRef
    tls: LdapTls = LdapTls()
    allow_cleartext_bind: bool = Field(
        False,
        description="Allow a simple bind over an unencrypted connection (lab directories only).",
    )
    user_base_dn: str
    user_filter: str = "(objectClass=inetOrgPerson)"
    group_base_dn: str
    group_filter: str = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))"
    id_attribute: str = Field("entryUUID", description="Immutable user/group id attribute.")
    group_name_attribute: str = "cn"
    membership: Literal["group_member", "member_of"] = Field(
        "group_member",
        description="Read membership from the groups' member attributes or the users' memberOf.",
    )
    member_attributes: tuple[str, ...] = ("member", "uniqueMember")
    disabled_filter: str | None = Field(
        None, description="Users matching this filter are inactive, e.g. (pwdAccountLockedTime=*)."
    )
    page_size: int = Field(500, ge=1, le=1000)
    deref_aliases: Literal["never", "searching", "finding", "always"] = Field(
        "always",
        description="Alias entries dereferenced by the searches (RFC 4511 derefAliases). "
        "'always' follows aliases under the base DNs to their targets; 'never' (ldapsearch's "
        "default) reads no entry behind an alias but costs OpenLDAP far less: 100k users read "
        "in about a fifth of the time.",
    )
    connect_timeout_seconds: float = Field(10, gt=0)
    receive_timeout_seconds: float = Field(60, gt=0)
    nested_groups: Literal["direct", "in_chain", "flatten"] = Field(
        "direct",
        description="direct: members as the groups list them; in_chain: direct and indirect "
        "members via AD's LDAP_MATCHING_RULE_IN_CHAIN (flattened here where the server lacks "
        "it); flatten: resolve groups nested in groups here.",
    )
    inactive_accounts: Literal["disabled_or_expired", "disabled", "none"] = Field(
        "disabled_or_expired",
        description="active_directory: users inactive in the targets: disabled "
        "(userAccountControl bit 0x2) and/or expired (accountExpires in the past).",
    )
    member_range_size: int = Field(
        1500, ge=1, le=5000, description="active_directory: values per ranged read of member."
    )
    incremental: LdapIncremental = LdapIncremental()
    follow_referrals: bool = Field(
        False,
        description="Read entries the directory refers elsewhere (search references and "
        "referrals to other servers) from those servers, binding there with the same bind DN, "
        "password and TLS settings (so the password goes to them too). Off: a referral makes "
        "the read fail as incomplete, since the entries behind it would be missing.",
    )

    @model_validator(mode="before")
    @classmethod
    def _flavour_defaults(cls, data: Any) -> Any:
        # Fill AD's defaults only where the profile is silent, so explicit values always win.
        if isinstance(data, dict) and data.get("flavour") == "active_directory":
            return {**ACTIVE_DIRECTORY_DEFAULTS, **data}
        return data

    @field_validator("url")
    @classmethod
    def _ldap_url(cls, value: str) -> str:
        if not value.startswith(("ldap://", "ldaps://")):
            raise ValueError("must start with ldap:// or ldaps://")
        return _server_url(value)

    @model_validator(mode="after")
    def _tls_matches_url(self) -> LdapSourceConfig:
        if self.url.startswith("ldaps://") and self.tls.mode != "ldaps":
            raise ValueError("an ldaps:// URL needs tls.mode: ldaps")
        if self.url.startswith("ldap://") and self.tls.mode == "ldaps":
            raise ValueError("tls.mode ldaps needs an ldaps:// URL")
        return self


class ScimSourceConfig(StrictModel):
    """Any SCIM 2.0 server (miniOrange, another IdP), read with GET /Users and /Groups."""

    kind: Literal["scim"]
    url: HttpUrl = Field(description="SCIM base URL, e.g. https://idp.corp/scim/v2")
    token: SecretRef = Field(description="Bearer token sent as Authorization: Bearer.")
    page_size: int = Field(100, ge=1, le=1000, description="count asked per page.")
    timeout_seconds: float = Field(30, gt=0)
    max_attempts: int = Field(5, ge=1, le=20, description="Tries per call for 429/5xx/resets.")
    ca_file: Path | None = None
    verify_tls: bool = True
    allow_cleartext: bool = Field(False, description=_ALLOW_CLEARTEXT)

    @model_validator(mode="after")
    def _encrypted(self) -> ScimSourceConfig:
        _refuse_cleartext(self.url, self.allow_cleartext, "the bearer token")
        return self


class MiniorangePushSourceConfig(StrictModel):
    """What miniOrange pushed into usersync's SCIM inbox (`usersync inbox serve`)."""

    kind: Literal["miniorange-push"]
    inbox: str = Field(
        pattern=PROFILE_NAME_PATTERN,
        max_length=PROFILE_NAME_MAX_LENGTH,
        description="The inbox to read (its URL is /scim/v2/<inbox>); default: the profile's name.",
    )
    store_url: Annotated[str | None, AfterValidator(_store_url)] = Field(
        None,
        description="SQLAlchemy URL of the store; default $USERSYNC_STORE_URL or var/usersync.db. "
        "It may name the database user, not the password.",
    )


class MiniorangeSourceConfig(StrictModel):
    """miniOrange's admin REST API (signed requests with the customer key and API key)."""

    kind: Literal["miniorange"]
    url: HttpUrl = Field("https://login.xecurify.com", description="Host; paths are /moas/api/...")
    customer_key: str = Field(description="The account's customer key (not secret).")
    api_key: SecretRef
    experimental_getall: bool = Field(
        False,
        description="List users with /moas/api/admin/users/getall, an endpoint miniOrange does "
        "not document: only after checking it against your tenant.",
    )
    batch_size: int = Field(500, ge=1, le=1000, description="Users per getall batch.")
    timeout_seconds: float = Field(30, gt=0)
    max_attempts: int = Field(5, ge=1, le=20)
    allow_cleartext: bool = Field(False, description=_ALLOW_CLEARTEXT)

    @model_validator(mode="after")
    def _encrypted(self) -> MiniorangeSourceConfig:
        _refuse_cleartext(self.url, self.allow_cleartext, "the signed requests")
        return self


SourceConfig = Annotated[
    LdapSourceConfig | ScimSourceConfig | MiniorangePushSourceConfig | MiniorangeSourceConfig,
    Field(discriminator="kind"),
]


# -- targets --------------------------------------------------------------------------------


class BasicAuth(StrictModel):
    kind: Literal["basic"]
    username: str
    password: SecretRef


class TokenAuth(StrictModel):
    """A personal access token, sent as `Authorization: Bearer`."""

    kind: Literal["token"]
    token: SecretRef


TargetAuth = Annotated[BasicAuth | TokenAuth, Field(discriminator="kind")]


def instance_of(url: str) -> str:
    """A target instance's identity: its base URL normalised (scheme and host in lower case,
    default port and trailing slash dropped), so two profiles spelling one Jira differently
    still see each other's accounts."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    default_port = {"http": 80, "https": 443}.get(scheme)
    netloc = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


#: Requests usersync has in flight to one product instance at most, unless the profile says:
#: what one load sends at once (the loader's workers); a second run or task writing to the same
#: instance in the process shares these eight instead of adding its own.
DEFAULT_MAX_IN_FLIGHT = 8
MAX_IN_FLIGHT_LIMIT = 64
#: Highest `requests_per_second` accepted (beyond it the setting would pace nothing).
MAX_REQUESTS_PER_SECOND = 10_000.0


class TargetConfig(StrictModel):
    """One Atlassian Data Center instance."""

    kind: Literal["jira", "confluence", "bitbucket"]
    url: HttpUrl = Field(
        description="Base URL including the context path, e.g. https://jira.corp/jira"
    )
    auth: TargetAuth
    timeout_seconds: float = Field(30, gt=0, description="Connect/read timeout of every call.")
    admin_groups: tuple[str, ...] = Field(
        (),
        description="Jira and Confluence: more groups whose members are administrators, for "
        "sites that grant the administrator permissions to groups of their own (the shipped "
        "jira-administrators, jira-system-administrators and confluence-administrators are "
        "always included). usersync leaves administrators alone (see manage_admin_accounts).",
    )
    load_budget_seconds: float = Field(
        7200,
        gt=0,
        description="Time budget for loading this target in one run, waits for rate limits "
        "included; when it runs out the target stops cleanly and what is left is reported "
        "as skipped (the next run picks it up).",
    )
    max_attempts: int = Field(5, ge=1, le=20, description="Tries per call for 429/5xx/resets.")
    max_retry_wait_seconds: float = Field(120, gt=0, description="Cap on one Retry-After wait.")
    max_in_flight: int = Field(
        DEFAULT_MAX_IN_FLIGHT,
        description="Requests in flight to this instance at once, at most, shared by every run "
        "and task of the process that writes to it (its base URL; the strictest profile's "
        "figure holds). Default 8: what one load sends at once. usersync lowers it by itself "
        "on 429s and 5xx and raises it back up to this figure while answers are fast.",
    )
    requests_per_second: float | None = Field(
        None,
        description="Requests per second to this instance, at most, shared like max_in_flight. "
        "Default: no ceiling of usersync's own; the product paces it: Jira and Confluence Data "
        "Center's rate limiter answers 429 with Retry-After (usersync pauses every request to "
        "the instance that long) and announces its bucket in X-RateLimit headers (followed "
        "before a 429 comes). Set it when the instance has no limiter of its own, or to leave "
        "room for its users.",
    )
    ca_file: Path | None = None
    verify_tls: bool = True
    allow_cleartext: bool = Field(False, description=_ALLOW_CLEARTEXT)
    confluence_api: Literal["auto", "rest", "jsonrpc"] = Field(
        "auto",
        description="Confluence only: REST admin API (8.2+), JSON-RPC (older), or detect.",
    )
    default_project_lead: str | None = Field(
        None,
        description="Jira only: before deactivating an account that leads projects, make this "
        "account (which must exist and be active) their lead; Jira refuses to deactivate a "
        "project lead. Unset: such a deactivation is skipped and reported.",
    )
    default_component_lead: str | None = Field(
        None,
        description="Jira only: the lead given to components an account being deactivated "
        "leads before the deactivation, which Jira refuses for a component lead (default: "
        "default_project_lead; unset too: the component's project lead, when that account "
        "stays; else the leaver stays active and the conflict names the component).",
    )

    @field_validator("max_in_flight")
    @classmethod
    def _max_in_flight_in_range(cls, value: int) -> int:
        if not 1 <= value <= MAX_IN_FLIGHT_LIMIT:
            raise PydanticCustomError(
                "pacing",
                "{value} requests at once cannot be: give a whole number from 1 to {most} "
                "(default {default}), or leave max_in_flight out",
                {"value": value, "most": MAX_IN_FLIGHT_LIMIT, "default": DEFAULT_MAX_IN_FLIGHT},
            )
        return value

    @field_validator("requests_per_second")
    @classmethod
    def _rate_in_range(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= MAX_REQUESTS_PER_SECOND:
            raise PydanticCustomError(
                "pacing",
                "{value} requests per second cannot be: give a number above 0 and at most "
                "{most} (e.g. 0.5 for one request every two seconds), or leave "
                "requests_per_second out to let the product's own rate limiter pace usersync",
                {"value": value, "most": int(MAX_REQUESTS_PER_SECOND)},
            )
        return value

    @model_validator(mode="after")
    def _product_options(self) -> TargetConfig:
        if self.kind != "confluence" and self.confluence_api != "auto":
            raise ValueError("confluence_api applies to kind: confluence only")
        if self.kind != "jira" and (self.default_project_lead or self.default_component_lead):
            raise ValueError("default_project_lead/default_component_lead apply to kind: jira only")
        if self.kind == "bitbucket" and self.admin_groups:
            raise ValueError(
                "admin_groups applies to jira and confluence only (Bitbucket's administrators "
                "are read from its global permissions)"
            )
        return self

    @model_validator(mode="after")
    def _encrypted(self) -> TargetConfig:
        what = "the password" if self.auth.kind == "basic" else "the token"
        _refuse_cleartext(self.url, self.allow_cleartext, what)
        return self


# -- settings -------------------------------------------------------------------------------


def _check_pattern(value: str) -> str:
    try:
        bounded_re.compile(value)
    except bounded_re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


class GroupSyncSettings(StrictModel):
    """How source groups become target groups beyond the rows of groups.csv."""

    include: tuple[str, ...] = Field(
        (),
        description="Regular expressions; only source groups whose name matches one of them "
        "(searched, case-insensitively) are seen by any rule. Empty: every group.",
    )
    exclude: tuple[str, ...] = Field(
        (),
        description="Regular expressions; source groups whose name matches one of them are "
        "ignored by every rule (exclude wins over include).",
    )
    rename_pattern: str | None = Field(
        None,
        description="On-the-fly rules: a regular expression over the source group name; a "
        "name it matches becomes rename_to (e.g. '^APP-(.+)$' with rename_to '\\1'). Names it "
        "does not match keep their name.",
    )
    rename_to: str = Field("\\1", description="The replacement for rename_pattern (\\1: group 1).")
    create_missing: bool = Field(
        True,
        description="On-the-fly rules: create target groups that do not exist. Off: "
        "memberships in missing groups are reported and skipped.",
    )
    keep_existing_groups: bool = Field(
        True,
        description="Memberships a managed user has in target groups no rule maps: leave "
        "them alone (default), or remove them (each removal counts against the brake).",
    )

    allow_privileged_groups: tuple[str, ...] = Field(
        (),
        description="Groups that grant administration in a product (Jira's administrator "
        "groups, Confluence's administrators, Bitbucket groups holding ADMIN or SYS_ADMIN, and "
        "any group named in admin_groups) that the rules may create or add members to. "
        "Default: none; every rule that maps onto such a group is refused and listed as a "
        "conflict. Name a group here only if your IdP is the authority on who administers "
        "the product.",
    )

    _patterns = field_validator("include", "exclude")(
        classmethod(lambda cls, v: tuple(_check_pattern(p) for p in v))
    )
    _rename = field_validator("rename_pattern")(
        classmethod(lambda cls, v: v if v is None else _check_pattern(v))
    )


class SeatSettings(StrictModel):
    """What to do when a plan needs more licence seats than a product has free."""

    when_short: Literal["create_none", "by_priority"] = Field(
        "create_none",
        description="create_none: no account is created or reactivated in that target this "
        "run (all or nothing, never a silent half); by_priority: as many as there are free "
        "seats, in the order of priority_groups, then by username.",
    )
    priority_groups: tuple[str, ...] = Field(
        (),
        description="by_priority: target groups whose new members get seats first, in this "
        "order (e.g. [jira-admins-to-be, developers]).",
    )


class SyncSettings(StrictModel):
    """What a sync may do, and the guards that stop it before a mass change."""

    create_users: bool = True
    update_users: bool = True
    deactivate_missing_users: bool = Field(
        True, description="Deactivate managed accounts that left the source or are disabled there."
    )
    reactivate_users: bool = True
    remove_memberships: bool = Field(
        True, description="Remove managed users from managed groups the source no longer lists."
    )
    protected_usernames: tuple[str, ...] = Field(
        (), description="Accounts usersync never touches (admins, service accounts)."
    )
    adoption: Literal["username_and_email", "username", "never"] = Field(
        "username_and_email",
        description="When an account usersync does not manage has a source user's username: "
        "take it over only if the e-mail matches too (default), by username alone, or never.",
    )
    manage_admin_accounts: tuple[str, ...] = Field(
        (),
        description="Accounts with administrative rights in a product that usersync may "
        "adopt or relink (and then update and deactivate like any managed account); every "
        "other administrator it does not manage is left alone. An administrator usersync "
        "already manages is deprovisioned when its identity leaves, listed or not.",
    )
    max_deactivations: int = Field(
        500, ge=0, description="A plan that deactivates more accounts than this is refused."
    )
    max_deactivation_ratio: float = Field(
        0.2,
        ge=0,
        le=1,
        description="...or more than this share of the managed accounts (once 20 are managed).",
    )
    max_membership_removals: int = Field(
        500, ge=0, description="A plan that removes more memberships than this is refused."
    )
    max_group_removal_ratio: float = Field(
        0.5,
        ge=0,
        le=1,
        description="...or more than this share of one group's members (groups of 10 or more).",
    )
    memberships_of_deactivated: Literal["keep", "remove"] = Field(
        "keep",
        description="Group memberships of accounts usersync deactivates: keep them as they "
        "are (so a reactivation restores access as it was) or remove them from managed groups.",
    )
    min_source_users: int = Field(1, ge=1, description="A smaller source aborts the run.")
    approval: Literal["ask", "never"] = Field(
        "ask",
        description="A plan that trips the brake: ask for an approval (a deployment run "
        "pauses with a form in the Prefect UI; usersync sync asks on the terminal) or never "
        "(the braked target fails; allow_mass_changes releases it for one run).",
    )
    approval_timeout_seconds: float = Field(
        3600, gt=0, le=7 * 86400, description="How long a braked run waits; then it is rejected."
    )
    groups: GroupSyncSettings = GroupSyncSettings()
    seats: SeatSettings = SeatSettings()
    precedence: int | None = Field(
        None,
        ge=0,
        description="When several profiles sync the same target instance and more than one "
        "has a source user for an account: the profile with the lowest precedence owns it "
        "(first match wins), whichever ran first. Unset: such an account stays with the "
        "profile that took it first and the others report it as a conflict.",
    )
    reconcile_interval_hours: float = Field(
        24,
        gt=0,
        le=24 * 366,
        description="A delta run (which reads from the products only what changed) reads "
        "everything instead, as a reconcile run, when the last reconcile of the product is "
        "older than this: hand-made changes in the products are repaired at least this often.",
    )


class Profile(StrictModel):
    """One IdP connection: `mappings/<name>/profile.yaml`."""

    name: str = Field(pattern=PROFILE_NAME_PATTERN, max_length=PROFILE_NAME_MAX_LENGTH)
    description: str = ""
    source: SourceConfig
    targets: dict[str, TargetConfig] = Field(min_length=1)
    settings: SyncSettings = SyncSettings()

    @model_validator(mode="before")
    @classmethod
    def _inbox_defaults_to_profile(cls, raw: Any) -> Any:
        # A miniorange-push source reads the inbox named like its profile unless told otherwise.
        source = raw.get("source") if isinstance(raw, dict) else None
        if isinstance(source, dict) and source.get("kind") == "miniorange-push":
            raw = {**raw, "source": {"inbox": raw.get("name"), **source}}
        return raw

    @field_validator("targets")
    @classmethod
    def _target_names(cls, value: dict[str, TargetConfig]) -> dict[str, TargetConfig]:
        for name in value:
            if len(name) > PROFILE_NAME_MAX_LENGTH or not re.fullmatch(PROFILE_NAME_PATTERN, name):
                raise ValueError(
                    f"target name {name[:PROFILE_NAME_MAX_LENGTH]!r}: use lower-case letters, "
                    f"digits, dashes, at most {PROFILE_NAME_MAX_LENGTH} of them"
                )
        return value


def usersync_home() -> Path:
    """Where usersync keeps its profiles and its default store: $USERSYNC_HOME, else the
    checkout usersync runs from (a source install), else the working directory.

    A worker may start in any directory; deriving paths from this instead of the working
    directory keeps every run on the same store and the same profiles.
    """
    if os.environ.get("USERSYNC_HOME"):
        return Path(os.environ["USERSYNC_HOME"])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "mappings").is_dir():
        return checkout
    return Path.cwd()


def mappings_dir() -> Path:
    """Where profiles live: $USERSYNC_MAPPINGS_DIR, else `mappings/` under `usersync_home()`."""
    if os.environ.get("USERSYNC_MAPPINGS_DIR"):
        return Path(os.environ["USERSYNC_MAPPINGS_DIR"])
    return usersync_home() / "mappings"


def profile_dir(name: str, root: Path | None = None) -> Path:
    """The folder of profile `name`.

    Raises:
        ConfigError: no such profile; the message lists the profiles there are.
    """
    if len(name) > PROFILE_NAME_MAX_LENGTH:
        raise ConfigError(
            f"profile name {name[:20]!r}... is {len(name)} characters long: at most "
            f"{PROFILE_NAME_MAX_LENGTH} (it names a folder under mappings/)"
        )
    if not re.fullmatch(PROFILE_NAME_PATTERN, name):
        # Checked before the name touches a path: '../outside' must not reach the file system.
        raise ConfigError(
            f"profile name {name!r} is not valid: use lower-case letters, digits and dashes "
            "(it names a folder under mappings/)"
        )
    root = root or mappings_dir()
    folder = root / name
    if not (folder / PROFILE_FILE).is_file():
        known = sorted(p.parent.name for p in root.glob(f"*/{PROFILE_FILE}"))
        raise ConfigError(
            f"no profile '{name}' in {root}/ (expected {folder / PROFILE_FILE}); "
            f"profiles there: {', '.join(known) or 'none'}"
        )
    return folder


def read_text_file(path: Path) -> str:
    """A configuration file's text: UTF-8, with or without a byte-order mark (Excel writes one).

    Raises:
        ConfigError: the file is not UTF-8; the message gives the line and the byte.
    """
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{path} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column "
            f"{column}); save the file as UTF-8"
        ) from None


def load_profile(name: str, root: Path | None = None) -> Profile:
    """Read and validate `mappings/<name>/profile.yaml`.

    Raises:
        ConfigError: missing file, YAML syntax error, or a schema violation; every problem
            is listed with its path inside the file.
    """
    path = profile_dir(name, root) / PROFILE_FILE
    raw = read_profile_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    raw = expand_environment(raw, str(path))
    raw.setdefault("name", name)
    if raw["name"] != name:
        raise ConfigError(f"{path}: name '{raw['name']}' differs from its folder '{name}'")
    try:
        return Profile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid profile:\n{format_validation_error(exc, raw)}") from exc


def read_profile_yaml(path: Path) -> Any:
    """A profile.yaml's document, refused before it can cost much time or memory.

    A file over `MAX_PROFILE_BYTES` is not read; a document is composed (its aliases still
    shared, so cheap) and its size with every alias expanded counted before anything expands
    it, so an alias bomb in one profile cannot hold up the others that look at it
    (`usersync.sync.shared_instance_warnings` reads every profile of the folder).

    Raises:
        ConfigError: too large, too deeply nested, expanding past `MAX_PROFILE_VALUES`, an
            alias inside its own anchor, or not valid YAML; one line naming the file.
    """
    size = path.stat().st_size
    if size > MAX_PROFILE_BYTES:
        raise ConfigError(
            f"{path}: {size / (1 << 20):.1f} MiB, more than the {MAX_PROFILE_BYTES >> 20} MiB "
            "a profile may have (a real one is a few kilobytes)"
        )
    loader = yaml.SafeLoader(read_text_file(path))
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_expansion_past_limit(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(
            f"{path}: nested too deeply to read (lists or mappings inside one another hundreds "
            "of levels down); a profile needs a handful"
        ) from None
    finally:
        loader.dispose()


def _refuse_expansion_past_limit(root: yaml.Node, path: Path) -> None:
    """Count the values of the document as if every alias were expanded, without expanding:
    each node's count is kept, so a node aliased a million times is counted once.

    Raises:
        ConfigError: more than `MAX_PROFILE_VALUES`, or an alias inside its own anchor (an
            endless document).
    """

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return []

    counted: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the way from the root to the node being counted
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_counted = stack.pop()
        if children_counted:
            open_nodes.discard(id(node))
            total = 1 + sum(counted[id(child)] for child in children(node))
            if total > MAX_PROFILE_VALUES:
                raise ConfigError(
                    f"{path}: more than {MAX_PROFILE_VALUES} values once its aliases (*name) "
                    "are expanded, far more than any profile needs (an alias bomb?); alias only "
                    "small parts, such as an auth or a target"
                )
            counted[id(node)] = total
        elif id(node) in open_nodes:
            raise ConfigError(
                f"{path}: an alias (*name) refers to the anchor (&name) it is inside, which "
                "makes the document endless; alias only values defined before it"
            )
        elif id(node) not in counted:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children(node))


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_environment(value: Any, where: str) -> Any:
    """Replace `${NAME}` and `${NAME:-default}` in every string of a loaded YAML document.

    For values that differ between machines (URLs, ports), not for secrets: a secret belongs
    in a `SecretRef`, so it never lands in the validated profile or a log.

    Raises:
        ConfigError: a referenced variable is unset and has no default.
    """
    if isinstance(value, dict):
        return {k: expand_environment(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_environment(v, where) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is None and default is None:
            raise ConfigError(f"{where}: ${{{name}}} is used but the variable is not set")
        return found if found is not None else default

    return _ENV_REFERENCE.sub(replace, value)


def format_validation_error(exc: ValidationError, raw: Any = None) -> str:
    """One line per problem: `  source.page_size: Input should be less than or equal to 1000`.

    Given the raw document, the tags pydantic inserts for discriminated unions (the value of
    `kind`, as in `source.ldap.page_size`) are left out: they are not keys the admin wrote.
    """
    lines = []
    for error in exc.errors():
        parts, node = [], raw
        for part in error["loc"]:
            if isinstance(node, dict) and part not in node and node.get("kind") == part:
                continue  # a discriminator tag, not a key
            parts.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
        where = ".".join(parts) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling against the documented keys)"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)
