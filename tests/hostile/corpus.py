"""The hostile-input corpus: odd and hostile identities, each with what every product must do.

One `Row` per input: a source user (a hostile username, or a plain one with a hostile display
name) or a source group (a hostile group name, with the plain member `gina`). `expect` says,
per product, what the documented rule gives — written from README ("Safety rules", the mapping
and rejected users), `usersync/targets/*.py` `refused_name` docstrings and
`../shared/reference/atlassian-rest.md`, never from what the code happens to do.
`tests/hostile/test_corpus.py` pushes every row into the SCIM inbox (and, unless `sources`
says otherwise, loads it into a slapd), syncs all three sandbox products once per source, and
reads each expectation back over the products' REST APIs and from the run's rejected and
conflict lists.

To add a row (one line per future defect): append `Row(...)` to `ROWS` with a new unique `key`
(ASCII, used as the e-mail `<key>@corpus.example` and the LDAP RDN), the category, the input
and `expect` (`everywhere(...)` or `per_product(...)`). Where the code disagrees with the rule,
keep the rule as the expectation and add `defects={"<product>" or "<source>:<product>": "what
is wrong"}`: that case becomes `xfail(strict=True)`, so fixing the defect turns it red until
the entry is removed.

The mapping is the shipped demo's (`username ← userName|uid`, `strip lower`; `email`, `strip
lower`; `display_name ← displayName`), and the only group rule is on-the-fly `*`: expected
usernames are the mapped ones. Licensing groups are protected in the product they license
(elsewhere they are ordinary names); the stock administrator group names are protected in every
product (`usersync.targets.base.STOCK_ADMIN_GROUPS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

PRODUCTS = ("jira", "confluence", "bitbucket")
SOURCES = ("scim", "ldap")
#: Every group row's source group has this one member (a plain user, created everywhere).
GROUP_MEMBER = "gina"
#: The hand-made group every product holds before the sync (a source group may not take it).
HANDMADE_GROUP = "finance"
#: A hand-made account every product holds (what `rοot` imitates; member of `HANDMADE_GROUP`).
HANDMADE_USER = "root"
#: A Bitbucket group granted ADMIN by hand.
BITBUCKET_ADMIN_GROUP = "bb-admins"


@dataclass(frozen=True)
class Created:
    """The account exists with exactly this username, the row's e-mail and display name.

    `username` None: the row's username as mapped (it is written lower-case, unpadded)."""

    username: str | None = None


@dataclass(frozen=True)
class Rejected:
    """No account carries the row's e-mail, and the run lists the source user as rejected with a
    reason mentioning `mentions` (case-insensitive)."""

    mentions: str


@dataclass(frozen=True)
class RejectedOrTruncated:
    """No rule is documented: either `Rejected(mentions)`, or the account exists with a display
    name that is a shorter prefix of the input (truncated). Never a failed run."""

    mentions: str


@dataclass(frozen=True)
class GroupCreated:
    """The group exists under exactly the source group's name with `GROUP_MEMBER` in it."""


@dataclass(frozen=True)
class GroupRefused:
    """No group is created and the members of an existing one are unchanged (but for the
    accounts a product itself puts in its default group), no plan operation names it, and the
    run lists a conflict (or rejection) whose reason is about a group and mentions the group and
    each of `mentions`."""

    mentions: tuple[str, ...] = ()
    #: how the reason names the group ("" when it need not, e.g. an invisible character)
    named: bool = True


Outcome = Created | Rejected | RejectedOrTruncated | GroupCreated | GroupRefused


@dataclass(frozen=True)
class Row:
    """One hostile or odd input and its expected outcome in each product."""

    key: str
    category: str
    expect: Mapping[str, Outcome]
    username: str = ""
    display_name: str = ""
    group: str | None = None
    sources: tuple[str, ...] = SOURCES
    #: "<product>" or "<source>:<product>" → the defect that makes the code disagree (xfail)
    defects: Mapping[str, str] = field(default_factory=dict)

    @property
    def email(self) -> str:
        return f"{self.key}@corpus.example"

    def shown_display_name(self) -> str:
        return self.display_name or f"Corpus {self.key}"

    def defect(self, source: str, product: str) -> str | None:
        return self.defects.get(f"{source}:{product}") or self.defects.get(product)


def everywhere(outcome: Outcome) -> Mapping[str, Outcome]:
    return MappingProxyType(dict.fromkeys(PRODUCTS, outcome))


def per_product(*, jira: Outcome, confluence: Outcome, bitbucket: Outcome) -> Mapping[str, Outcome]:
    return MappingProxyType({"jira": jira, "confluence": confluence, "bitbucket": bitbucket})


def user(key: str, category: str, username: str, expect: Mapping[str, Outcome], **kw) -> Row:
    """A row whose hostile value is the username."""
    return Row(key, category, expect, username=username, **kw)


def display(key: str, category: str, display_name: str, expect: Mapping[str, Outcome], **kw) -> Row:
    """A row whose hostile value is the display name (the username is the plain key)."""
    return Row(key, category, expect, username=key, display_name=display_name, **kw)


def group(key: str, category: str, name: str, expect: Mapping[str, Outcome], **kw) -> Row:
    """A row whose hostile value is a source group's name (its member is `GROUP_MEMBER`)."""
    return Row(key, category, expect, group=name, **kw)


CREATED = everywhere(Created())
#: Confluence's REST API cannot carry `/` or `\` in a path (Tomcat refuses %2F, reference
#: §5.10): such a name needs JSON-RPC, which the sandbox's Confluence has off, so it is refused
#: with a reason (`ConfluenceTarget.refused_name`); Jira and Bitbucket take it encoded.
SLASH_OUTSIDE_CONFLUENCE = per_product(
    jira=Created(), confluence=Rejected("/"), bitbucket=Created()
)
LONG_VALUE = "x" * 10_000
ADMIN_REFUSED = everywhere(GroupRefused(("administration",)))
# Confluence usernames: lower case, no whitespace, none of \ , + < > ' ", not "anonymous"
# (reference §2.3); Jira usernames: no < > & (§1.8); Bitbucket: the common rules only.
CONFLUENCE_ONLY_REFUSES = {"jira": Created(), "bitbucket": Created()}

ROWS: tuple[Row, ...] = (
    # -- controls: plain rows that must go through (a test that cannot fail is a defect) --------
    user("plain-member", "control", GROUP_MEMBER, CREATED),
    user("plain-paul", "control", "paul", CREATED),
    user("plain-umlaut", "control", "zoë", CREATED),  # outside ASCII, imitates nobody
    user("plain-255", "control", "b" * 255, CREATED),
    display("plain-display-255", "control", "D" * 255, CREATED),
    group("group-new", "control", "corpus-team", everywhere(GroupCreated())),
    # -- look-alikes (Unicode TS #39 skeleton equal to another account's) -------------------
    user("lookalike-cyrillic-admin", "look-alike", "аdmin", everywhere(Rejected("'admin'"))),
    user("lookalike-greek-root", "look-alike", "rοot", everywhere(Rejected("'root'"))),
    user("lookalike-source-paul", "look-alike", "pаul", everywhere(Rejected("'paul'"))),
    # -- names NFKC changes ------------------------------------------------------------------
    user("fullwidth-admin", "fullwidth/NFKC", "ａｄｍｉｎ", everywhere(Rejected("U+FF41"))),
    user("ligature-fi", "fullwidth/NFKC", "ﬁnn", everywhere(Rejected("U+FB01"))),
    user("decomposed-accent", "fullwidth/NFKC", "zoe\u0308y", everywhere(Rejected("NFKC"))),
    # -- invisible characters (Unicode format characters, category Cf) ----------------------
    user("zero-width-space", "invisible", "ad\u200bmin", everywhere(Rejected("U+200B"))),
    user("word-joiner", "invisible", "ro\u2060ot", everywhere(Rejected("U+2060"))),
    user("soft-hyphen", "invisible", "ad\u00admin", everywhere(Rejected("U+00AD"))),
    user("bidi-rlo", "invisible", "\u202enimda", everywhere(Rejected("U+202E"))),
    # -- path-like and URL-like names: created under exactly that name (the client encodes) --
    # -- or refused with a reason where the product's API cannot carry them -------------------
    user("path-dotdot", "path/URL-like", "../x", SLASH_OUTSIDE_CONFLUENCE),
    user("url-query-fragment", "path/URL-like", "a?b#c", CREATED),
    user("url-percent-slash", "path/URL-like", "a%2fb", CREATED),
    user("path-slash", "path/URL-like", "a/b", SLASH_OUTSIDE_CONFLUENCE),
    user("url-absolute", "path/URL-like", "https://evil.example/x", SLASH_OUTSIDE_CONFLUENCE),
    # -- LDAP-filter-like values -------------------------------------------------------------
    user("ldap-filter-star", "LDAP-filter-like", "*)(uid=*", CREATED),
    user("ldap-filter-or", "LDAP-filter-like", "admin)(|(x=*", CREATED),
    display("ldap-filter-dn-star", "LDAP-filter-like", "*)(uid=*", CREATED),
    display("ldap-filter-dn-or", "LDAP-filter-like", "admin)(|(x=*", CREATED),
    # -- formula-like display names: stored verbatim ----------------------------------------
    display("formula-cmd", "formula-like", "=cmd|' /C calc'!A0", CREATED),
    display("formula-plus", "formula-like", "+1", CREATED),
    display("formula-at", "formula-like", "@SUM(1)", CREATED),
    display("formula-minus", "formula-like", "-2+3", CREATED),
    display("formula-hyperlink", "formula-like", '=HYPERLINK("http://evil.example","x")', CREATED),
    # -- characters one product refuses in usernames ----------------------------------------
    user(
        "chars-space",
        "product-specific characters",
        "john smith",
        per_product(**CONFLUENCE_ONLY_REFUSES, confluence=Rejected("whitespace")),
    ),
    user(
        "chars-apostrophe",
        "product-specific characters",
        "o'brien",
        per_product(**CONFLUENCE_ONLY_REFUSES, confluence=Rejected("'")),
    ),
    user(
        "chars-plus",
        "product-specific characters",
        "a+b",
        per_product(**CONFLUENCE_ONLY_REFUSES, confluence=Rejected("+")),
    ),
    user(
        "chars-comma",
        "product-specific characters",
        "doe,john",
        per_product(**CONFLUENCE_ONLY_REFUSES, confluence=Rejected(",")),
    ),
    user(
        "chars-backslash",
        "product-specific characters",
        "corp\\jdoe",
        per_product(**CONFLUENCE_ONLY_REFUSES, confluence=Rejected("\\")),
    ),
    user(
        "chars-quote",
        "product-specific characters",
        'a"b',
        per_product(**CONFLUENCE_ONLY_REFUSES, confluence=Rejected('"')),
    ),
    user(
        "chars-anonymous",
        "product-specific characters",
        "anonymous",
        per_product(**CONFLUENCE_ONLY_REFUSES, confluence=Rejected("anonymous")),
    ),
    user(
        "chars-ampersand",
        "product-specific characters",
        "tom&jerry",
        per_product(jira=Rejected("&"), confluence=Created(), bitbucket=Created()),
    ),
    user(
        "chars-angle",
        "product-specific characters",
        "<b>",
        per_product(jira=Rejected("<"), confluence=Rejected("<"), bitbucket=Created()),
    ),
    user("chars-at", "product-specific characters", "jane@corp", CREATED),
    # Confluence full names: no < or >, not "anonymous" (reference §2.3); Jira and Bitbucket
    # document no rule for display names.
    display(
        "chars-dn-markup",
        "product-specific characters",
        "<script>alert(1)</script>",
        per_product(jira=Created(), confluence=Rejected("<"), bitbucket=Created()),
    ),
    display(
        "chars-dn-anonymous",
        "product-specific characters",
        "anonymous",
        per_product(jira=Created(), confluence=Rejected("anonymous"), bitbucket=Created()),
    ),
    # -- control characters in usernames (inside the name: `strip` would trim the ends) ------
    user("control-tab", "control characters", "a\tb", everywhere(Rejected("U+0009"))),
    user("control-newline", "control characters", "a\nb", everywhere(Rejected("U+000A"))),
    user("control-cr", "control characters", "a\rb", everywhere(Rejected("U+000D"))),
    user("control-nul", "control characters", "a\x00b", everywhere(Rejected("U+0000"))),
    user("control-del", "control characters", "a\x7fb", everywhere(Rejected("U+007F"))),
    # display names: no product stores control characters (`Target.refused_value`)
    display("control-dn-tab", "control characters", "Ann\tLee", everywhere(Rejected("U+0009"))),
    display("control-dn-newline", "control characters", "Ann\nLee", everywhere(Rejected("U+000A"))),
    # -- emoji -------------------------------------------------------------------------------
    user("emoji-username", "emoji", "unicorn🦄", CREATED),
    # a ZWJ sequence holds U+200D ZERO WIDTH JOINER, a format character: refused in a name
    user("emoji-zwj-username", "emoji", "dev👩\u200d💻", everywhere(Rejected("U+200D"))),
    display("emoji-display-name", "emoji", "Ana 🦄 López", CREATED),
    display("emoji-zwj-display-name", "emoji", "Dev 👩\u200d💻", CREATED),
    # -- 10,000-character values -------------------------------------------------------------
    user("long-username", "10k values", "a" * 10_000, everywhere(Rejected("255"))),
    user("long-username-256", "10k values", "c" * 256, everywhere(Rejected("255"))),
    display(
        "long-display-name", "10k values", LONG_VALUE, everywhere(RejectedOrTruncated("display"))
    ),
    # -- duplicates: a username two active source users share is nobody's ------------------
    # SCIM: the inbox itself refuses a second userName equal but for case (409 uniqueness,
    # tested apart), so case-folded and exact twins can only come from LDAP.
    user("dup-upper", "duplicates", "Dup", everywhere(Rejected("duplicate")), sources=("ldap",)),
    user("dup-lower", "duplicates", "dup", everywhere(Rejected("duplicate")), sources=("ldap",)),
    user("dup-exact-a", "duplicates", "same", everywhere(Rejected("duplicate")), sources=("ldap",)),
    user("dup-exact-b", "duplicates", "same", everywhere(Rejected("duplicate")), sources=("ldap",)),
    # names equal once the mapping has trimmed them: the inbox holds both
    user("dup-padded-a", "duplicates", "twin", everywhere(Rejected("duplicate"))),
    user("dup-padded-b", "duplicates", " twin", everywhere(Rejected("duplicate"))),
    # -- administrator and licensing group names, via the on-the-fly `*` rule ---------------
    group("admin-jira", "admin/licensing groups", "jira-administrators", ADMIN_REFUSED),
    group("admin-jira-sys", "admin/licensing groups", "jira-system-administrators", ADMIN_REFUSED),
    group("admin-confluence", "admin/licensing groups", "confluence-administrators", ADMIN_REFUSED),
    group("admin-system", "admin/licensing groups", "system-administrators", ADMIN_REFUSED),
    group("admin-plain", "admin/licensing groups", "administrators", ADMIN_REFUSED),
    group(
        "admin-bitbucket",
        "admin/licensing groups",
        BITBUCKET_ADMIN_GROUP,
        per_product(
            jira=GroupCreated(),
            confluence=GroupCreated(),
            bitbucket=GroupRefused(("administration",)),
        ),
    ),
    group(
        "licence-jira",
        "admin/licensing groups",
        "jira-software-users",
        per_product(jira=GroupRefused(), confluence=GroupCreated(), bitbucket=GroupCreated()),
    ),
    group(
        "licence-confluence",
        "admin/licensing groups",
        "confluence-users",
        per_product(jira=GroupCreated(), confluence=GroupRefused(), bitbucket=GroupCreated()),
    ),
    group(
        "licence-bitbucket",
        "admin/licensing groups",
        "stash-users",
        per_product(jira=GroupCreated(), confluence=GroupCreated(), bitbucket=GroupRefused()),
    ),
    # -- a source group named like a hand-made group: not taken over ------------------------
    group(
        "handmade-group",
        "hand-made group",
        HANDMADE_GROUP,
        everywhere(GroupRefused(("did not create",))),
    ),
    # -- group names that display as an administrator group ---------------------------------
    group(
        "group-zero-width",
        "invisible",
        "jira-\u200badministrators",
        everywhere(GroupRefused(("U+200B",), named=False)),
    ),
    group(
        "group-fullwidth",
        "fullwidth/NFKC",
        "ｊｉｒａ-administrators",
        everywhere(GroupRefused(("NFKC",), named=False)),
    ),
)


def rows_for(source: str) -> tuple[Row, ...]:
    return tuple(row for row in ROWS if source in row.sources)
