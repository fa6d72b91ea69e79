"""One suite over every envelope `usersync.paging` follows.

Each product's server is faked here from its documented envelope (Jira's PageBean, bare
array and cursor page; Confluence's `_links.next`; Bitbucket's `isLastPage`/`nextPageStart`;
SCIM's ListResponse; miniOrange's batches), independently of the pager. The oracle is the
item list the fake server holds: an honest server, whatever page size it caps to, must be read
whole and in order; a server that ends early, repeats a position, names no next page or lies
about its total must be refused, never read short.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usersync.paging import (
    BITBUCKET_PAGE,
    CONFLUENCE_PAGE,
    ENVELOPES,
    JIRA_CURSOR,
    JIRA_OFFSET,
    JIRA_WINDOW,
    MINIORANGE_BATCHES,
    SCIM_LIST,
    Envelope,
    PagedEndpoint,
    Pager,
)


class Malformed(Exception):
    pass


class Incomplete(Exception):
    pass


Page = Callable[[Mapping[str, Any]], Any]


class FakeServer:
    """A list served in one product's envelope, capping pages at `cap` items.

    `answer(start, size)` gives the body for items from `start`; `tamper` may rewrite each
    body (a misbehaving server), given the page number (0-based) and the body.
    """

    def __init__(
        self,
        envelope: Envelope,
        items: list[Any],
        cap: int,
        tamper: Callable[[int, Any], Any] | None = None,
    ) -> None:
        self.envelope = envelope
        self.items = items
        self.cap = cap
        self.tamper = tamper or (lambda _n, body: body)
        self.requests = 0

    def _answer(self, body: Any) -> Any:
        number = self.requests
        self.requests += 1
        if self.requests > 1000:
            raise AssertionError("the pager does not stop")
        return self.tamper(number, body)

    def fetch(self, params: Mapping[str, Any]) -> Any:
        env = self.envelope
        size = int(params[env.size_param])
        assert size >= 1, f"asked for a page of {size}"
        taken = min(size, self.cap)
        if env is JIRA_OFFSET:
            start = int(params["startAt"])
            values = self.items[start : start + taken]
            return self._answer(
                {
                    "startAt": start,
                    "maxResults": taken,
                    "total": len(self.items),
                    "isLast": start + len(values) >= len(self.items),
                    "values": values,
                }
            )
        if env is JIRA_WINDOW:
            start = int(params["startAt"])
            return self._answer(self.items[start : start + taken])
        if env is JIRA_CURSOR:
            start = int(params.get("cursor") or 0)
            values = self.items[start : start + taken]
            body: dict[str, Any] = {
                "maxResults": taken,
                "isLast": start + taken >= len(self.items),
                "values": values,
            }
            if not body["isLast"]:
                body["nextCursor"] = str(start + len(values))
            return self._answer(body)
        if env is CONFLUENCE_PAGE:
            return self._confluence(int(params["start"]), taken)
        if env is BITBUCKET_PAGE:
            start = int(params["start"])
            values = self.items[start : start + taken]
            last = start + len(values) >= len(self.items)
            body = {
                "start": start,
                "limit": taken,
                "size": len(values),
                "values": values,
                "isLastPage": last,
            }
            if not last:
                body["nextPageStart"] = start + len(values)
            return self._answer(body)
        if env is SCIM_LIST:
            index = int(params["startIndex"])
            resources = self.items[index - 1 : index - 1 + taken]
            return self._answer(
                {
                    "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                    "totalResults": len(self.items),
                    "startIndex": index,
                    "itemsPerPage": len(resources),
                    "Resources": resources,
                }
            )
        if env is MINIORANGE_BATCHES:
            # The server pages by its own batch size when it caps the one asked for.
            number = int(params["batchNo"])
            start = (number - 1) * taken
            return self._answer({"status": "SUCCESS", "users": self.items[start : start + taken]})
        raise AssertionError(f"no fake server for {env.name}")

    def _confluence(self, start: int, limit: int) -> Any:
        results = self.items[start : start + limit]
        links: dict[str, Any] = {"base": "https://wiki.example", "context": ""}
        if start + len(results) < len(self.items):
            links["next"] = f"/rest/api/group?start={start + len(results)}&limit={limit}"
        return self._answer(
            {
                "results": results,
                "start": start,
                "limit": limit,
                "size": len(results),
                "_links": links,
            }
        )

    def follow(self, link: str) -> Any:
        query = parse_qs(urlsplit(link).query)
        return self._confluence(int(query["start"][0]), int(query["limit"][0]))


def read(
    server: FakeServer,
    page_size: int,
    *,
    at_most: int | None = None,
    pager: Pager | None = None,
    identity: Callable[[Any], Any] | None = None,
) -> list[Any]:
    pager = pager or Pager("test", malformed=Malformed, incomplete=Incomplete)
    endpoint = PagedEndpoint("/list", server.envelope, page_size)
    pages = pager.pages(
        endpoint, server.fetch, follow=server.follow, at_most=at_most, identity=identity
    )
    return [item for page in pages for item in page]


def items_of(count: int) -> list[dict[str, str]]:
    return [{"id": f"u{n:03}"} for n in range(count)]


# -- honest servers, whatever they cap pages to, are read whole ------------------------------

HONEST = [e for e in ENVELOPES if e is not JIRA_WINDOW]


@pytest.mark.parametrize("envelope", HONEST, ids=lambda e: e.name)
@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(min_value=0, max_value=60),
    page_size=st.integers(min_value=1, max_value=20),
    cap=st.integers(min_value=1, max_value=25),
)
def test_every_item_is_read_once_in_order(
    envelope: Envelope, count: int, page_size: int, cap: int
) -> None:
    items = items_of(count)
    server = FakeServer(envelope, items, cap)
    assert read(server, page_size) == items


@settings(max_examples=80, deadline=None)
@given(
    count=st.integers(min_value=0, max_value=60),
    page_size=st.integers(min_value=1, max_value=20),
    cap=st.integers(min_value=1, max_value=25),
    window=st.integers(min_value=1, max_value=40),
)
def test_a_bare_array_is_read_up_to_the_window_through_a_silent_cap(
    count: int, page_size: int, cap: int, window: int
) -> None:
    items = items_of(count)
    server = FakeServer(JIRA_WINDOW, items[:window], cap)  # the server's result window
    assert read(server, page_size, at_most=window) == items[:window]


def test_a_bare_array_never_asks_past_the_window() -> None:
    asked: list[tuple[int, int]] = []
    server = FakeServer(JIRA_WINDOW, items_of(100), 100)
    fetch = server.fetch

    def recording(params: Mapping[str, Any]) -> Any:
        asked.append((params["startAt"], params["maxResults"]))
        return fetch(params)

    server.fetch = recording  # type: ignore[method-assign]
    assert len(read(server, 30, at_most=100)) == 100
    assert all(start + size <= 100 for start, size in asked), asked


def test_a_capped_bare_array_is_known_short_from_the_largest_page_it_sent() -> None:
    """Once the server has shown its cap, a shorter page ends the list without another ask."""
    pager = Pager("test", malformed=Malformed, incomplete=Incomplete)
    first = FakeServer(JIRA_WINDOW, items_of(25), cap=10)
    assert len(read(first, 50, at_most=1000, pager=pager)) == 25
    second = FakeServer(JIRA_WINDOW, items_of(7), cap=10)
    assert len(read(second, 50, at_most=1000, pager=pager)) == 7
    assert second.requests == 1


def test_jira_offset_without_isLast_or_total_ends_at_an_empty_page() -> None:
    def bare(_n: int, body: dict) -> dict:
        return {"values": body["values"]}

    items = items_of(12)
    assert read(FakeServer(JIRA_OFFSET, items, 5, bare), 5) == items


def test_jira_offset_without_isLast_ends_at_its_total() -> None:
    def no_flag(_n: int, body: dict) -> dict:
        return {k: v for k, v in body.items() if k != "isLast"}

    items = items_of(10)
    server = FakeServer(JIRA_OFFSET, items, 5, no_flag)
    assert read(server, 5) == items
    assert server.requests == 2


def test_bitbucket_page_without_isLastPage_is_the_last() -> None:
    def no_flag(_n: int, body: dict) -> dict:
        return {k: v for k, v in body.items() if k != "isLastPage"}

    assert read(FakeServer(BITBUCKET_PAGE, items_of(10), 4, no_flag), 4) == items_of(4)


# -- servers that would make a partial read are refused --------------------------------------


@pytest.mark.parametrize(
    ("envelope", "tamper", "message"),
    [
        (
            JIRA_OFFSET,
            lambda n, b: {**b, "values": [] if n else b["values"], "isLast": False},
            "startAt=3 held no values although isLast is false",
        ),
        (
            SCIM_LIST,
            lambda n, b: {**b, "Resources": [] if n else b["Resources"]},
            "startIndex=4 held no resources although totalResults=10",
        ),
    ],
    ids=["jira-offset", "scim"],
)
def test_an_empty_page_before_the_end_is_refused(envelope, tamper, message) -> None:
    with pytest.raises(Incomplete, match=message):
        read(FakeServer(envelope, items_of(10), 3, tamper), 3)


@pytest.mark.parametrize(
    ("envelope", "field"),
    [(JIRA_OFFSET, "total"), (SCIM_LIST, "totalResults")],
    ids=["jira-offset", "scim"],
)
def test_a_total_that_changes_during_the_listing_is_refused(envelope, field) -> None:
    def grows(n: int, body: dict) -> dict:
        return {**body, field: body[field] + n}

    with pytest.raises(Incomplete, match=f"{field} changed from 10 to 11"):
        read(FakeServer(envelope, items_of(10), 3, grows), 3)


@pytest.mark.parametrize(
    ("envelope", "field"),
    [(JIRA_OFFSET, "total"), (SCIM_LIST, "totalResults")],
    ids=["jira-offset", "scim"],
)
@pytest.mark.parametrize("lie", [-3, 4])
def test_a_total_the_items_do_not_add_up_to_is_refused(envelope, field, lie: int) -> None:
    def lies(_n: int, body: dict) -> dict:
        body = {**body, field: 10 + lie}
        body.pop("isLast", None)  # so that the total is what ends the list
        return body

    with pytest.raises(Incomplete):
        read(FakeServer(envelope, items_of(10), 3, lies), 3)


def test_scim_duplicates_across_shifted_pages_are_refused() -> None:
    """Offsets shift (a user removed meanwhile): a resource comes twice and one never."""
    items = items_of(6)

    def shifted(n: int, body: dict) -> dict:
        if n == 1:
            return {**body, "Resources": [items[2], items[4], items[5]]}
        return body

    with pytest.raises(Incomplete, match="5 distinct resources arrived but totalResults=6"):
        read(FakeServer(SCIM_LIST, items, 3, shifted), 3, identity=lambda r: r["id"])


@pytest.mark.parametrize(
    ("envelope", "tamper", "message"),
    [
        (
            JIRA_CURSOR,
            lambda n, b: {**b, "nextCursor": "3"} if "nextCursor" in b else b,
            "nextCursor '3' came back a second time",
        ),
        (
            CONFLUENCE_PAGE,
            lambda n, b: {**b, "_links": {"next": "/rest/api/group?start=3&limit=3"}},
            re.escape("_links.next '/rest/api/group?start=3&limit=3' came back a second time"),
        ),
        (
            BITBUCKET_PAGE,
            lambda n, b: {**b, "nextPageStart": 3} if "nextPageStart" in b else b,
            "start=3 is not the last but nextPageStart is 3",
        ),
    ],
    ids=["jira-cursor", "confluence", "bitbucket"],
)
def test_a_repeated_position_is_refused(envelope, tamper, message) -> None:
    with pytest.raises(Incomplete, match=message):
        read(FakeServer(envelope, items_of(10), 3, tamper), 3)


@pytest.mark.parametrize(
    ("envelope", "field", "value"),
    [
        (JIRA_CURSOR, "nextCursor", None),
        (JIRA_CURSOR, "nextCursor", ""),
        (BITBUCKET_PAGE, "nextPageStart", None),
        (BITBUCKET_PAGE, "nextPageStart", "6"),
        (BITBUCKET_PAGE, "nextPageStart", True),
    ],
    ids=["cursor-missing", "cursor-empty", "start-missing", "start-text", "start-bool"],
)
def test_a_page_that_is_not_the_last_without_a_next_position_is_refused(
    envelope, field: str, value
) -> None:
    def unnamed(_n: int, body: dict) -> dict:
        body = {k: v for k, v in body.items() if k != field}
        if value is not None:
            body[field] = value
        return body

    with pytest.raises(Incomplete, match=f"is not the last but {field} is"):
        read(FakeServer(envelope, items_of(10), 3, unnamed), 3)


def test_bitbucket_next_position_going_backwards_is_refused() -> None:
    def backwards(n: int, body: dict) -> dict:
        return {**body, "nextPageStart": 1} if n == 1 else body

    with pytest.raises(Incomplete, match="start=3 is not the last but nextPageStart is 1"):
        read(FakeServer(BITBUCKET_PAGE, items_of(10), 3, backwards), 3)


#: Envelopes in which a page without its items list is not the envelope at all (in the others
#: an object without `values` or `Resources` is an empty page, as SCIM allows for no results).
ITEMS_REQUIRED = [JIRA_WINDOW, CONFLUENCE_PAGE, MINIORANGE_BATCHES]


@pytest.mark.parametrize(
    ("envelope", "answer"),
    [(e, "<html>login</html>") for e in ENVELOPES]
    + [(e, {"errors": ["no"], "totalResults": 10}) for e in ITEMS_REQUIRED],
    ids=[f"{e.name}-text" for e in ENVELOPES] + [f"{e.name}-object" for e in ITEMS_REQUIRED],
)
def test_an_answer_that_is_not_the_envelope_is_refused(envelope: Envelope, answer) -> None:
    server = FakeServer(envelope, items_of(10), 3, lambda _n, _b: answer)
    with pytest.raises(Malformed):
        read(server, 3)


def test_scim_without_a_valid_total_is_refused() -> None:
    def no_total(_n: int, body: dict) -> dict:
        return {k: v for k, v in body.items() if k != "totalResults"}

    with pytest.raises(Malformed, match="no valid totalResults: None"):
        read(FakeServer(SCIM_LIST, items_of(4), 3, no_total), 3)


@pytest.mark.parametrize("envelope", HONEST, ids=lambda e: e.name)
def test_nothing_of_a_refused_listing_is_handed_over(envelope: Envelope) -> None:
    """The caller sees the error before any item of the doubtful page."""

    def broken(n: int, body: Any) -> Any:
        return "<html>" if n == 1 else body

    server = FakeServer(envelope, items_of(10), 3, broken)
    pager = Pager("test", malformed=Malformed, incomplete=Incomplete)
    pages = pager.pages(PagedEndpoint("/list", envelope, 3), server.fetch, follow=server.follow)
    assert next(pages) == items_of(3)
    with pytest.raises(Malformed):
        next(pages)


def test_the_connectors_error_types_carry_the_refusal() -> None:
    def refused(message: str) -> Exception:
        return RuntimeError(f"refused: {message}")

    pager = Pager("bitbucket 'prod'", malformed=refused, incomplete=refused)
    server = FakeServer(
        BITBUCKET_PAGE,
        items_of(10),
        3,
        lambda _n, b: {**b, "isLastPage": False, "nextPageStart": None},
    )
    with pytest.raises(
        RuntimeError, match=r"refused: bitbucket 'prod': GET /list: the page at start=0"
    ):
        read(server, 3, pager=pager)
