"""One pager for every paged list usersync reads over HTTP: Jira, Confluence, Bitbucket, SCIM, miniOrange.

Each product wraps a list in its own envelope. An `Envelope` says, as data, where a page's
items are, which query parameters ask for a page, how the next page is found (by counting
items, by page number, by a field naming the next position, by a link), what says a page is
the last and where a total is. A connector's table maps its endpoints to envelopes
(`PagedEndpoint`), and `Pager.pages` is the one loop that follows any of them. What makes a
listing trustworthy is decided here, once, and a doubtful listing is refused (with the
connector's own error types), never returned shorter: an answer that is not the envelope, a
page that is not the last but names no next position, a position that comes back (a
repeated cursor or link, an empty page that leaves the offset where it was), a total that
changes during the listing or that the items read do not add up to. Servers that cap the
page size silently are followed by what each page holds, not by what was asked; where only
a short page can end the list (bare arrays, batches), a page counts as short against the
largest page that endpoint has ever sent, since a server never caps below what it has sent.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: How the position of the next page is found: `items` adds the items a page held (offsets
#: that follow a silent cap), `page` adds one (page numbers), `field` reads it from the page
#: (`next_field`), `link` follows the URL the page names (`next_field`).
Advance = Literal["items", "page", "field", "link"]


@dataclass(frozen=True)
class Envelope:
    """How one product's list answers page, as data.

    Attributes:
        name: the envelope's name in messages.
        items: the key holding a page's items; None when the answer is the bare array.
        size_param: the query parameter asking for a page size.
        position_param: the query parameter naming the page asked for.
        first_position: the first page's position; None: the first page is asked without one
            (cursors). An integer position must grow from page to page.
        advance: how the next position is found (see `Advance`).
        next_field: where a page names the next position, a dotted path (`_links.next`).
        last_flag: the field saying a page is the last.
        no_flag_means_last: a page without `last_flag` is the last (else the other signals
            decide).
        total_field: the field giving the number of items in the whole list.
        total_required: every page must carry a valid `total_field`.
        short_page_is_last: a page shorter than the server's page (see the module) ends the
            list; for envelopes that have no other end signal.
        items_required: a page without an `items` list is not the envelope (else it is empty).
        item_noun: what the items are called in messages.
    """

    name: str
    items: str | None
    size_param: str
    position_param: str
    first_position: int | None = 0
    advance: Advance = "items"
    next_field: str | None = None
    last_flag: str | None = None
    no_flag_means_last: bool = False
    total_field: str | None = None
    total_required: bool = False
    short_page_is_last: bool = False
    items_required: bool = False
    item_noun: str = "values"


#: Jira REST v2 `PageBean`: `{startAt, maxResults, total, isLast, values}` (`/group/member`).
#: isLast decides; without it the total; with neither, only an empty page ends the list.
JIRA_OFFSET = Envelope(
    "Jira offset",
    items="values",
    size_param="maxResults",
    position_param="startAt",
    last_flag="isLast",
    total_field="total",
)
#: Jira's bare JSON array paged by `startAt` (`/user/search`): nothing says more pages exist,
#: and the server truncates the whole answer at a result window (`Pager.pages(at_most=)`).
JIRA_WINDOW = Envelope(
    "Jira array",
    items=None,
    size_param="maxResults",
    position_param="startAt",
    short_page_is_last=True,
)
#: Jira's cursor page `{values, isLast, nextCursor}` (`/user/list`, 10.3+).
JIRA_CURSOR = Envelope(
    "Jira cursor",
    items="values",
    size_param="maxResults",
    position_param="cursor",
    first_position=None,
    advance="field",
    next_field="nextCursor",
    last_flag="isLast",
)
#: Confluence REST `{results, start, limit, size, _links.next}`: `limit` may come back lower
#: than asked, and `_links.next` (relative to the site's base URL) is absent on the last page.
CONFLUENCE_PAGE = Envelope(
    "Confluence",
    items="results",
    size_param="limit",
    position_param="start",
    advance="link",
    next_field="_links.next",
    items_required=True,
    item_noun="results",
)
#: Bitbucket REST 1.0 `{start, limit, size, values, isLastPage, nextPageStart}`.
BITBUCKET_PAGE = Envelope(
    "Bitbucket",
    items="values",
    size_param="limit",
    position_param="start",
    advance="field",
    next_field="nextPageStart",
    last_flag="isLastPage",
    no_flag_means_last=True,
)
#: SCIM 2.0 ListResponse `{totalResults, startIndex, itemsPerPage, Resources}` (RFC 7644
#: §3.4.2.4): 1-based, pages may hold fewer than `count`, offsets are not stable.
SCIM_LIST = Envelope(
    "SCIM ListResponse",
    items="Resources",
    size_param="count",
    position_param="startIndex",
    first_position=1,
    total_field="totalResults",
    total_required=True,
    item_noun="resources",
)
#: miniOrange's (UNCONFIRMED) `users/getall` batches `{users}` by `batchNo`, 1-based: no
#: total and no flag, so only a short batch ends the list.
MINIORANGE_BATCHES = Envelope(
    "miniOrange batch",
    items="users",
    size_param="batchSize",
    position_param="batchNo",
    first_position=1,
    advance="page",
    short_page_is_last=True,
    items_required=True,
    item_noun="users",
)

ENVELOPES: tuple[Envelope, ...] = (
    JIRA_OFFSET,
    JIRA_WINDOW,
    JIRA_CURSOR,
    CONFLUENCE_PAGE,
    BITBUCKET_PAGE,
    SCIM_LIST,
    MINIORANGE_BATCHES,
)


@dataclass(frozen=True)
class PagedEndpoint:
    """A row of a connector's table: a list call, its envelope and the page size asked for."""

    path: str
    envelope: Envelope
    page_size: int


#: Asks for one page: receives the paging query parameters, returns the parsed answer.
FetchPage = Callable[[Mapping[str, Any]], Any]
#: Follows a link a page named (`advance="link"`), returns the parsed answer.
FollowLink = Callable[[str], Any]


class Pager:
    """Follows the envelopes of one client, refusing partial reads with its error types.

    Args:
        where: names the client in messages, e.g. "bitbucket 'prod'".
        malformed: builds the error for an answer that is not the envelope.
        incomplete: builds the error for a listing that would be partial.
    """

    def __init__(
        self,
        where: str,
        *,
        malformed: Callable[[str], Exception],
        incomplete: Callable[[str], Exception],
    ) -> None:
        self.where = where
        self._malformed = malformed
        self._incomplete = incomplete
        #: the largest page each endpoint ever sent: the server's page cap is at least that
        self._largest: dict[str, int] = {}

    def pages(
        self,
        endpoint: PagedEndpoint,
        fetch: FetchPage,
        *,
        follow: FollowLink | None = None,
        at_most: int | None = None,
        identity: Callable[[Any], Hashable] | None = None,
    ) -> Iterator[list[Any]]:
        """Yield the non-empty pages of a list, in order, until the last one.

        A page is yielded only once it is known to be sound, and the total (where the
        envelope has one) is checked before the last page is yielded.

        Args:
            endpoint: the call and its envelope.
            fetch: asks for a page with the paging parameters (merged into the caller's own).
            follow: fetches a link a page names; required for `advance="link"` envelopes.
            at_most: the server answers no more than this many items in all (Jira's search
                window): paging stops there, and the caller tells complete from truncated.
            identity: an item's id; with it, the total is checked against distinct ids.

        Raises:
            the `malformed` or `incomplete` error of this pager (see the module docstring),
            and whatever `fetch` and `follow` raise.
        """
        envelope = endpoint.envelope
        where = f"{self.where}: GET {endpoint.path}"
        position: Any = envelope.first_position
        link: str | None = None
        followed: set[Any] = set()
        ids: set[Hashable] = set()
        consumed = 0
        total: int | None = None
        while True:
            asked = endpoint.page_size
            if at_most is not None:
                asked = min(asked, at_most - consumed)
            if link is not None:
                if follow is None:
                    raise ValueError(f"{where}: a {envelope.name} envelope needs `follow`")
                body = follow(link)
                page_at = f"the page {link}"
            else:
                params: dict[str, Any] = {envelope.size_param: asked}
                if position is not None:
                    params[envelope.position_param] = position
                body = fetch(params)
                page_at = f"the page at {envelope.position_param}={position}"
                if position is None:
                    page_at = "the first page"
            items = self._items(envelope, body, where)
            total = self._total(envelope, body, total, where)
            consumed += len(items)
            if identity is not None:
                ids.update(identity(item) for item in items)
            flag = _flag(envelope, body)
            last = self._is_last(
                envelope, endpoint, body, flag, items, asked, consumed, total, at_most
            )
            if last:
                if total is not None:
                    got = len(ids) if identity is not None else consumed
                    if got != total:
                        distinct = "distinct " if identity is not None else ""
                        raise self._incomplete(
                            f"{where}: {got} {distinct}{envelope.item_noun} arrived but "
                            f"{envelope.total_field}={total} (the pages shifted during the "
                            "listing); refused, the next run reads again"
                        )
                if items:
                    yield items
                return
            if envelope.advance == "items":
                if not items:
                    because = (
                        f"{envelope.last_flag} is false"
                        if flag is False
                        else f"{envelope.total_field}={total}"
                    )
                    raise self._incomplete(
                        f"{where}: {page_at} held no {envelope.item_noun} although {because}; "
                        "refusing a partial read"
                    )
                position += len(items)
            elif envelope.advance == "page":
                position += 1
            else:
                following = _dig(body, envelope.next_field)
                self._check_next(envelope, where, page_at, position, following, followed)
                followed.add(following)
                if envelope.advance == "link":
                    link = following
                else:
                    position = following
            if items:
                yield items

    def _items(self, envelope: Envelope, body: Any, where: str) -> list[Any]:
        if envelope.items is None:
            found = body
            shape = "a JSON array"
        else:
            found = body.get(envelope.items) if isinstance(body, dict) else body
            if found is None and isinstance(body, dict) and not envelope.items_required:
                return []
            shape = f"'{envelope.items}' list"
        if not isinstance(found, list):
            raise self._malformed(
                f"{where}: answered something other than a {envelope.name} list page "
                f"(no {shape}): {str(body)[:200]}"
            )
        return found

    def _total(self, envelope: Envelope, body: Any, before: int | None, where: str) -> int | None:
        if envelope.total_field is None:
            return None
        reported = body.get(envelope.total_field)
        if reported is None and not envelope.total_required:
            return before
        if not isinstance(reported, int) or isinstance(reported, bool) or reported < 0:
            raise self._malformed(
                f"{where}: the answer has no valid {envelope.total_field}: {reported!r}"
            )
        if before is not None and reported != before:
            raise self._incomplete(
                f"{where}: {envelope.total_field} changed from {before} to {reported} during "
                "the listing (entries were added or removed meanwhile); refused, the next run "
                "reads again"
            )
        return reported

    def _is_last(
        self,
        envelope: Envelope,
        endpoint: PagedEndpoint,
        body: Any,
        flag: bool | None,
        items: list[Any],
        asked: int,
        consumed: int,
        total: int | None,
        at_most: int | None,
    ) -> bool:
        """Whether this page ends the list, from the strongest signal the envelope has."""
        largest = self._largest.get(endpoint.path, 0)
        self._largest[endpoint.path] = max(largest, len(items))
        if flag is not None:
            return flag
        if envelope.last_flag is not None and envelope.no_flag_means_last:
            return True
        if total is not None:
            return consumed >= total
        if at_most is not None and consumed >= at_most:
            return True
        if envelope.advance in ("field", "link"):
            return not _dig(body, envelope.next_field)
        if envelope.short_page_is_last:
            return not items or len(items) < min(asked, largest)
        return not items

    def _check_next(
        self,
        envelope: Envelope,
        where: str,
        page_at: str,
        position: Any,
        following: Any,
        followed: set[Any],
    ) -> None:
        """Refuse a next position that is missing, does not move forward, or came back."""
        if envelope.advance == "field" and envelope.first_position is not None:
            usable = (
                isinstance(following, int)
                and not isinstance(following, bool)
                and following > position
            )
        else:
            usable = isinstance(following, str) and bool(following)
        if not usable:
            raise self._incomplete(
                f"{where}: {page_at} is not the last but {envelope.next_field} is "
                f"{following!r}; refusing a partial read"
            )
        if following in followed:
            raise self._incomplete(
                f"{where}: {envelope.next_field} {following!r} came back a second time; the "
                "listing would be incomplete, refusing a partial read"
            )


def _flag(envelope: Envelope, body: Any) -> bool | None:
    """The page's own word on being the last, or None when it says nothing."""
    if envelope.last_flag is None or not isinstance(body, dict):
        return None
    value = body.get(envelope.last_flag)
    return None if value is None else bool(value)


def _dig(body: Any, path: str | None) -> Any:
    """`body["a"]["b"]` for the dotted path "a.b"; None where any step is missing."""
    node = body
    for part in (path or "").split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


__all__ = [
    "BITBUCKET_PAGE",
    "CONFLUENCE_PAGE",
    "ENVELOPES",
    "JIRA_CURSOR",
    "JIRA_OFFSET",
    "JIRA_WINDOW",
    "MINIORANGE_BATCHES",
    "SCIM_LIST",
    "Envelope",
    "FetchPage",
    "FollowLink",
    "PagedEndpoint",
    "Pager",
]
