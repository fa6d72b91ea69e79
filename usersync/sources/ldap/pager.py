"""The pager: every entry of a search, page by page (RFC 2696), or an error, never a partial read.

ldap3 only builds and sends each page's request; the answer is read from the socket and
decoded by `decoding.search` (flat and iterative, into DN and raw values). `PagedSearch`
checks the result code and the paged-results control of every page itself: ldap3 raises for
none of sizeLimitExceeded, timeLimitExceeded or a page without the control, so a partial read
would otherwise look complete. Any such page raises `IncompleteSourceError`. So does a
referral (a searchResRef beside the entries, or result 10): the entries it stands for are
read where it points only with `follow_referrals` (same bind and TLS settings; see
`referrals.py`), except a naming context the same server holds, read on the same connection.
Ranged values (Active Directory's `member;range=0-1499`) are completed after each search
(`active_directory.ActiveDirectoryReads`). After each page the running totals go to `PageProgress`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ldap3 import BASE, SUBTREE, Connection
from ldap3.core.exceptions import LDAPCommunicationError, LDAPInvalidFilterError

from usersync.config import LdapSourceConfig
from usersync.errors import (
    ConfigError,
    IncompleteSourceError,
    SourceError,
    SourceUnreachableError,
)
from usersync.sources.ldap.decoding import Entry, MalformedAnswerError, discard, search
from usersync.sources.ldap.dn import normalise_dn
from usersync.sources.ldap.progress import PageProgress
from usersync.sources.ldap.referrals import (
    MAX_REFERRAL_HOPS,
    RESULT_REFERRAL,
    Reference,
    parse_reference,
    references_refused,
)
from usersync.sources.ldap.schema import AttributeSchema

RESULT_NO_SUCH_OBJECT = 32


class PagedSearch:
    """The searches of an `LdapSource` (a mixin: connections and schema come from the others)."""

    config: LdapSourceConfig
    _naming_contexts: dict[str, set[Any]]
    _connection: Callable[[], Connection]
    _referred_connection: Callable[[str], Connection]
    _attribute_schema: Callable[[], AttributeSchema]
    _complete_ranges: Callable[[Connection, str, list[Entry]], list[Entry]]

    def _paged_search(
        self,
        base: str,
        search_filter: str,
        attributes: Sequence[str],
        *,
        what: str,
        progress: PageProgress | None = None,
        conn: Connection | None = None,
    ) -> list[Entry]:
        """Every entry of a subtree search, read page by page; raises rather than stop early.

        Entries the server refers elsewhere are read where it points (`_follow_references`)
        or the search fails as incomplete. `progress` hears each page; `conn` is the profile's
        connection unless another one to the same server is given.
        """
        return self._search(
            conn or self._connection(),
            self.config.url,
            base,
            search_filter,
            attributes,
            what=what,
            progress=progress,
        )

    def _search(
        self,
        conn: Connection,
        url: str,
        base: str,
        search_filter: str,
        attributes: Sequence[str],
        *,
        what: str,
        scope: str = SUBTREE,
        followed: tuple[tuple[str, Any], ...] = (),
        progress: PageProgress | None = None,
    ) -> list[Entry]:
        """`_search_pages` on `conn` (the server at `url`), ranges completed, references followed."""
        entries, references = self._search_pages(
            conn, url, base, search_filter, attributes, what=what, scope=scope, progress=progress
        )
        entries = self._complete_ranges(conn, url, entries)
        if references:
            where = f"{url}: {what} search under {base} with {search_filter}"
            trail = (*followed, (url.lower(), normalise_dn(base)))
            entries += self._follow_references(
                references,
                conn,
                url,
                search_filter,
                attributes,
                what=what,
                where=where,
                found=len(entries),
                followed=trail,
                progress=progress,
            )
        return entries

    def _search_pages(
        self,
        conn: Connection,
        url: str,
        base: str,
        search_filter: str,
        attributes: Sequence[str],
        *,
        what: str,
        scope: str,
        progress: PageProgress | None = None,
    ) -> tuple[list[Entry], list[list[str]]]:
        """The entries of one search read page by page, and the references the server made.

        Each reference is the list of its URLs (alternatives for one subtree).

        Every page must end with success and carry the paged-results control; its cookie
        says whether another page follows. A referral result (the base lies in a subtree held
        elsewhere) ends the search with its URLs and no entries.

        Raises:
            IncompleteSourceError: a page ended otherwise; the message says what to do.
            SourceUnreachableError: the connection failed in between.
            ConfigError: the filter is not valid LDAP.
        """
        entries: list[Entry] = []
        references: list[list[str]] = []
        cookie: bytes | None = None
        page = 0
        key = self._attribute_schema().key
        where = f"{url}: {what} search under {base} with {search_filter}"
        while True:
            page += 1
            try:
                answer = search(
                    conn,
                    base,
                    search_filter,
                    scope=scope,
                    attributes=attributes,
                    key=key,
                    page_size=self.config.page_size,
                    cookie=cookie,
                    deref_aliases=self.config.deref_aliases,
                )
            except LDAPInvalidFilterError as exc:
                raise ConfigError(f"{where}: the filter is not valid LDAP ({exc})") from exc
            except LDAPCommunicationError as exc:
                discard(conn)  # the next use opens a new one
                raise SourceUnreachableError(
                    f"{where}: the connection failed on page {page} after {len(entries)} entries "
                    f"({exc}); nothing was used"
                ) from exc
            except MalformedAnswerError as exc:
                discard(conn)  # the rest of its stream cannot be told apart from garbage
                raise IncompleteSourceError(
                    f"{where}: page {page} could not be decoded after {len(entries)} entries "
                    f"({exc}), so nothing was used"
                ) from exc
            result = answer.result
            if result["result"] == RESULT_REFERRAL and result.get("referrals"):
                return entries, [result["referrals"]]
            if result["result"] != 0:
                raise IncompleteSourceError(
                    f"{where}: page {page} ended with {describe_result(result)} after {len(entries)} "
                    f"entries, so the read may be partial and nothing was used; "
                    f"{result_advice(result['result'], what)}"
                )
            entries += answer.entries
            # Entries in scope held by another server (or naming context): each reference is
            # followed or refused once the search is done, never dropped.
            references += answer.references
            if progress is not None:
                progress.page(answer.entries)
            try:
                cookie = answer.paged_cookie()
            except MalformedAnswerError as exc:
                raise IncompleteSourceError(
                    f"{where}: page {page} ended after {len(entries)} entries with {exc}, so "
                    "the read may be partial and nothing was used"
                ) from exc
            if cookie is None:
                raise IncompleteSourceError(
                    f"{where}: page {page} came back without the paged-results control after "
                    f"{len(entries)} entries, so the read may be partial and nothing was used; "
                    "check that the server supports RFC 2696 paging"
                )
            if not cookie:
                return entries, references

    def _follow_references(
        self,
        references: list[list[str]],
        conn: Connection,
        url: str,
        search_filter: str,
        attributes: Sequence[str],
        *,
        what: str,
        where: str,
        found: int,
        followed: tuple[tuple[str, Any], ...],
        progress: PageProgress | None = None,
    ) -> list[Entry]:
        """The entries behind the references a search met, or an incomplete-read error.

        Each reference is a list of URLs, alternatives for one subtree (RFC 4511 4.5.3): one
        is read. A naming context the same server holds (AD's CN=Configuration under a
        forest's root domain, its DNS zones) is searched on the same connection: nothing
        leaves it, and reading it keeps the snapshot complete. Otherwise, with
        `follow_referrals`, the alternatives are tried in turn on their servers, binding as
        the profile does; without it the reference is refused.

        Raises:
            IncompleteSourceError: a reference is refused, unusable, loops, or no alternative
                could be read (the last failure is chained).
        """
        plans: list[tuple[list[Reference], bool]] = []
        refused: list[str] = []
        for alternatives in references:
            usable, unusable = [], []
            for text in alternatives:
                try:
                    usable.append(parse_reference(text))
                except IncompleteSourceError as exc:
                    unusable.append(exc)
            if not usable:
                raise unusable[0]
            held = [ref for ref in usable if self._holds_naming_context(conn, url, ref.dn)]
            if not held and not self.config.follow_referrals:
                refused += alternatives
            plans.append((held[:1], True) if held else (usable, False))
        if refused:
            raise references_refused(where, refused, entries=found)
        entries: list[Entry] = []
        for candidates, same_server in plans:
            failure: SourceError | ConfigError | None = None
            for ref in candidates:
                target_url = url if same_server else ref.server_url
                if (target_url.lower(), normalise_dn(ref.dn)) in followed:
                    raise IncompleteSourceError(
                        f"{where}: the reference {ref.url} leads back to a search already made "
                        "(a referral loop), so the read is incomplete and nothing was used; fix "
                        "the referral entries (their ref values) in the directory"
                    )
                if len(followed) > MAX_REFERRAL_HOPS:
                    raise IncompleteSourceError(
                        f"{where}: the reference {ref.url} is more than {MAX_REFERRAL_HOPS} "
                        "referrals deep, so the read is incomplete and nothing was used; set "
                        "the base DN nearer to the servers holding the entries"
                    )
                try:
                    target = conn if same_server else self._referred_connection(ref.server_url)
                    entries += self._search(
                        target,
                        target_url,
                        ref.dn,
                        search_filter,
                        attributes,
                        what=what,
                        scope=ref.scope or SUBTREE,
                        followed=followed,
                        progress=progress,
                    )
                    failure = None
                    break
                except (SourceError, ConfigError) as exc:
                    failure = exc
            if failure is not None:
                tried = ", ".join(ref.url for ref in candidates)
                raise IncompleteSourceError(
                    f"{where}: the directory referred to {tried} for entries in scope, and "
                    f"reading them there failed, so nothing was used: {failure}"
                ) from failure
        return entries

    def _holds_naming_context(self, conn: Connection, url: str, dn: str) -> bool:
        """Whether `dn` is a naming context the server at `url` lists in its rootDSE."""
        held = self._naming_contexts.get(url.lower())
        if held is None:
            conn.search("", "(objectClass=*)", search_scope=BASE, attributes=["namingContexts"])
            found = [i for i in conn.response or () if i.get("type") == "searchResEntry"]
            values = found[0]["raw_attributes"].get("namingContexts") or [] if found else []
            held = {normalise_dn(v.decode("utf-8", errors="replace")) for v in values}
            self._naming_contexts[url.lower()] = held
        key = normalise_dn(dn)
        return key is not None and key in held


def describe_result(result: dict[str, Any]) -> str:
    message = (result.get("message") or "").strip()
    text = f"result {result.get('result')} {result.get('description')}"
    return f"{text} ({message})" if message else text


def result_advice(code: int, what: str) -> str:
    if code in (3, 4, 11):  # timeLimitExceeded, sizeLimitExceeded, adminLimitExceeded
        return (
            "raise the size/time limits of the bind account on the server (OpenLDAP `limits`, "
            "AD MaxPageSize/MaxResultSetSize) or lower page_size"
        )
    if code == RESULT_NO_SUCH_OBJECT:
        return f"check the base DN of the {what} (it does not exist or is not visible)"
    if code == 12:  # unavailableCriticalExtension
        return "the server refused RFC 2696 paging; enable it for this account"
    return "check the server's log for this search"
