"""LDAP referrals: where a directory says entries in scope live, and what to do about it.

A server holds part of the tree and refers clients elsewhere for the rest: a subtree search
answers, beside its entries, with search result references (searchResRef, RFC 4511 4.5.3) for
the subtrees held by other servers, and a search whose base lies in such a subtree ends with
result 10, referral (4.1.10). Either way, entries in scope were not returned; dropping the
references would read as if those users had left. So each reference is either followed (the
profile's `follow_referrals`, done by the pager) or refused as an incomplete read; this module
parses the URLs (RFC 4516) and words the refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ldap3 import BASE, LEVEL, SUBTREE

from usersync.errors import IncompleteSourceError

#: How many referrals deep one search may be followed before it counts as a loop.
MAX_REFERRAL_HOPS = 5
RESULT_REFERRAL = 10
#: URL scope names (RFC 4516) as ldap3's search scopes.
SCOPES = {"base": BASE, "one": LEVEL, "sub": SUBTREE}


@dataclass(frozen=True)
class Reference:
    """A referral or search reference URL: which server, and where in its tree to search.

    Attributes:
        url: as the server sent it (for messages).
        server_url: `ldap://host:port` or `ldaps://host:port` of the server to ask.
        dn: the base DN to search there.
        scope: ldap3's BASE, LEVEL or SUBTREE; None when the URL leaves it to the search.
    """

    url: str
    server_url: str
    dn: str
    scope: str | None


def parse_reference(url: str) -> Reference:
    """The parts of an LDAP URL (`ldap://host:port/dn??sub`) a search needs.

    Percent-escapes are decoded after the URL is split at `?`, so a DN may hold an escaped
    `?`. A URL that asks for something the pager cannot do as asked (its own filter or
    attribute list, a critical extension) is not guessed at.

    Raises:
        IncompleteSourceError: not an ldap:// or ldaps:// URL with a host and a DN, or one
            that needs what is described above.
    """
    scheme, separator, rest = url.strip().partition("://")
    address, _, path = rest.partition("/")
    parts = path.split("?")
    dn = unquote(parts[0])
    attributes, scope, search_filter, extensions = [*parts[1:], "", "", "", ""][:4]
    location = urlsplit(f"//{address}")
    try:
        location.port  # noqa: B018 - reading it raises for a port that is not a number
        host = location.hostname
    except ValueError:
        host = None
    problem = ""
    if separator != "://" or scheme.lower() not in ("ldap", "ldaps"):
        problem = "not an ldap:// or ldaps:// URL"
    elif not host or not dn:
        problem = "it names no host or no DN"
    elif attributes or search_filter:
        problem = "it sets its own attributes or filter"
    elif scope and scope.lower() not in SCOPES:
        problem = f"unknown scope {scope!r}"
    elif any(e.startswith("!") for e in unquote(extensions).split(",")):
        problem = "it has a critical extension"
    if problem:
        raise IncompleteSourceError(
            f"the directory referred to {url}, which usersync cannot follow ({problem}); the "
            "entries there were not read and nothing was used"
        )
    return Reference(
        url=url,
        server_url=f"{scheme.lower()}://{address}",
        dn=dn,
        scope=SCOPES[scope.lower()] if scope else None,
    )


def references_refused(where: str, urls: list[str], *, entries: int) -> IncompleteSourceError:
    """The error for references met while `follow_referrals` is off."""
    return IncompleteSourceError(
        f"{where}: the directory referred to {', '.join(dict.fromkeys(urls))} (after {entries} "
        "entries here) for entries in scope, which were not read, so the read is incomplete "
        "and nothing was used; set follow_referrals: true in the profile's source to read them "
        "from there (binding with the same DN, password and TLS settings), or set the base DN "
        "to a subtree this server holds"
    )
