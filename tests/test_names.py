"""Look-alike and invisible names: what every product refuses, and which desired users the
confusable-skeleton rule refuses beside the accounts a product holds.

Expectations are written from the rules (Unicode categories, NFKC, TS #39 prototypes), not
computed the way the code computes them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pandas as pd
import pytest

from usersync.http import ApiClient
from usersync.names import lookalike_rejections, skeleton, skeleton_probes
from usersync.targets.base import Target
from usersync.targets.bitbucket import BitbucketTarget
from usersync.targets.confluence import ConfluenceTarget
from usersync.targets.jira import JiraTarget

CYRILLIC_ADMIN = "\u0430dmin"  # а: U+0430 CYRILLIC SMALL LETTER A
GREEK_ROOT = "r\u03bfot"  # ο: U+03BF GREEK SMALL LETTER OMICRON
CYRILLIC_ROOT = "r\u043eot"  # о: U+043E CYRILLIC SMALL LETTER O
FULLWIDTH_ADMIN = "\uff41\uff44\uff4d\uff49\uff4e"  # ａｄｍｉｎ
LIGATURE_FINANCE = "\ufb01nance"  # ﬁ: U+FB01 LATIN SMALL LIGATURE FI


@pytest.fixture(params=["jira", "confluence", "bitbucket"])
def product(request) -> Iterator[Target]:
    """Each product's client (no request is made: names are refused before any)."""
    if request.param == "jira":
        target: Target = JiraTarget("jira", "https://jira.example", token="t")
    elif request.param == "confluence":
        target = ConfluenceTarget("wiki", "https://wiki.example", token="t")
    else:
        target = BitbucketTarget(
            "code", ApiClient("bitbucket", "https://code.example/rest/api/1.0")
        )
    with target:
        yield target


# -- what every product refuses ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (FULLWIDTH_ADMIN, "U+FF41 FULLWIDTH LATIN SMALL LETTER A"),
        (LIGATURE_FINANCE, "U+FB01 LATIN SMALL LIGATURE FI"),
        ("ad\u200bmin", "U+200B ZERO WIDTH SPACE"),
        ("ad\u2060min", "U+2060 WORD JOINER"),
        ("ad\u00admin", "U+00AD SOFT HYPHEN"),
        ("ad\u200dmin", "U+200D ZERO WIDTH JOINER"),
        ("\ufeffadmin", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
        ("ann\u00a0lee", "U+00A0 NO-BREAK SPACE"),
        ("jose\u0301", "composed form"),  # e + U+0301 COMBINING ACUTE ACCENT: looks like josé
    ],
)
@pytest.mark.parametrize("kind", ["user", "group"])
def test_invisible_and_compatibility_characters_are_refused_by_every_product(
    product: Target, kind: str, name: str, expected: str
) -> None:
    reason = product.refused_name(kind, name)
    assert reason is not None, name
    assert expected in reason
    assert reason.startswith(f"{kind} name")


def test_a_compatibility_character_is_named_with_its_plain_form(product: Target) -> None:
    reason = product.refused_name("user", FULLWIDTH_ADMIN) or ""
    assert "NFKC" in reason and "'a'" in reason and "plain form" in reason
    assert "format character" in (product.refused_name("user", "ad\u200bmin") or "")


@pytest.mark.parametrize("name", ["admin", "jörg.müller", "ana-maria_ok", "łukasz", "josé"])
def test_plain_and_composed_names_are_accepted(product: Target, name: str) -> None:
    assert product.refused_name("user", name) is None
    assert product.refused_name("group", name) is None


def test_a_look_alike_made_of_ordinary_letters_is_left_to_the_skeleton_rule(
    product: Target,
) -> None:
    # Cyrillic and Greek letters are ordinary letters, stable under NFKC: only comparing
    # with the other names (lookalike_rejections) tells that they imitate one.
    assert product.refused_name("user", CYRILLIC_ADMIN) is None
    assert product.refused_name("user", GREEK_ROOT) is None


# -- skeletons ----------------------------------------------------------------------------------


def test_names_that_look_alike_have_one_skeleton() -> None:
    admin = skeleton("admin")
    assert skeleton(CYRILLIC_ADMIN) == admin
    assert skeleton("Admin") == skeleton("ADMIN") == admin  # the products ignore case
    assert skeleton(FULLWIDTH_ADMIN) == admin
    assert skeleton("ad\u200bmin") == skeleton("ad\u2060min") == skeleton("ad\u00admin") == admin
    assert skeleton(GREEK_ROOT) == skeleton(CYRILLIC_ROOT) == skeleton("root") == "root"
    assert skeleton(LIGATURE_FINANCE) == skeleton("finance")
    # TS #39 maps m to rn: a skeleton is a key, not a name
    assert admin == "adrnin"


def test_names_that_differ_visibly_have_different_skeletons() -> None:
    assert skeleton("jörg") != skeleton("jorg")
    assert skeleton("josé") != skeleton("jose")
    assert skeleton("admin") != skeleton("admins")
    assert skeleton("иван") != skeleton("ivan")  # Cyrillic letters that look like no Latin ones


def test_probes_are_the_plain_forms_of_names_outside_ascii() -> None:
    names = [CYRILLIC_ADMIN, "alice", GREEK_ROOT, CYRILLIC_ROOT, "jörg", None, "ΑDMIN"]
    # ΑDMIN starts with U+0391 GREEK CAPITAL LETTER ALPHA; jörg imitates no other name
    assert skeleton_probes(names) == ["admin", "root"]
    assert skeleton_probes(pd.Series(["bob", "carol"], dtype="string")) == []


# -- which desired users are refused ------------------------------------------------------------


def desired(*names: str | None, index: list[int] | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {"source_id": [f"s{i}" for i in range(len(names))], "username": list(names)},
        index=index,
    ).astype({"username": "string"})


def reasons(users: pd.DataFrame, existing: list[str]) -> dict[str, str | None]:
    out = lookalike_rejections(users, pd.Series(existing, dtype="string"))
    assert out.index.equals(users.index)
    return {
        str(name): (None if pd.isna(why) else str(why))
        for name, why in zip(users["username"], out, strict=True)
    }


def test_a_look_alike_of_an_existing_account_is_refused_and_says_of_which() -> None:
    got = reasons(desired(CYRILLIC_ADMIN, GREEK_ROOT, "alice"), ["admin", "root", "alice"])
    assert got["alice"] is None
    assert got[CYRILLIC_ADMIN] is not None and got[GREEK_ROOT] is not None
    assert "looks like the existing account 'admin'" in got[CYRILLIC_ADMIN]
    assert "U+0430 CYRILLIC SMALL LETTER A looks like 'a'" in got[CYRILLIC_ADMIN]
    assert "looks like the existing account 'root'" in got[GREEK_ROOT]
    assert "U+03BF GREEK SMALL LETTER OMICRON" in got[GREEK_ROOT]


def test_invisible_characters_do_not_hide_a_look_alike() -> None:
    # refused_name refuses these first; the skeleton rule does not depend on it
    got = reasons(desired("ad\u200bmin", "ad\u2060min"), ["Admin"])
    assert all(why and "'admin'" in why for why in got.values())


def test_an_ascii_name_is_never_refused_as_a_look_alike() -> None:
    # beside an existing look-alike of itself, or an ASCII name that TS #39 also confuses
    # with it (1 and l), the plain name stays provisionable
    got = reasons(desired("admin", "bill1"), [CYRILLIC_ADMIN, "billl"])
    assert got == {"admin": None, "bill1": None}


def test_names_equal_but_for_case_are_not_look_alikes() -> None:
    # that is the duplicate rule's business (usersync.mapping), not this one's
    got = reasons(desired("Bob", "bob", "JÖRG"), ["BOB", "jörg"])
    assert got == {"Bob": None, "bob": None, "JÖRG": None}


def test_between_desired_users_the_one_outside_ascii_is_refused() -> None:
    got = reasons(desired("admin", CYRILLIC_ADMIN), [])
    assert got["admin"] is None
    assert got[CYRILLIC_ADMIN] is not None
    assert "looks like 'admin', the username of another source user" in got[CYRILLIC_ADMIN]


def test_two_new_look_alikes_outside_ascii_are_both_refused() -> None:
    got = reasons(desired(GREEK_ROOT, CYRILLIC_ROOT, "carol"), ["carol"])
    assert got["carol"] is None
    assert got[GREEK_ROOT] and "r\\u043eot" in got[GREEK_ROOT]  # names the other, escaped
    assert got[CYRILLIC_ROOT] and "r\\u03bfot" in got[CYRILLIC_ROOT]


def test_an_established_account_keeps_its_name_and_the_newcomer_is_refused() -> None:
    got = reasons(desired(GREEK_ROOT, CYRILLIC_ROOT), [CYRILLIC_ROOT])
    assert got[CYRILLIC_ROOT] is None
    assert got[GREEK_ROOT] and "existing account" in got[GREEK_ROOT]


def test_a_look_alike_that_is_already_an_account_is_refused_beside_the_one_it_imitates() -> None:
    # аdmin was created before this rule; admin exists too: аdmin is refused (its account is
    # left as it is while the user is active, and deprovisioned when the source disables it)
    got = reasons(desired(CYRILLIC_ADMIN), [CYRILLIC_ADMIN, "admin"])
    assert got[CYRILLIC_ADMIN] and "'admin'" in got[CYRILLIC_ADMIN]


def test_missing_usernames_and_any_index_are_kept() -> None:
    users = desired(None, CYRILLIC_ADMIN, "bob", index=[7, 3, 5])
    out = lookalike_rejections(users, ["admin"])
    assert out.index.tolist() == [7, 3, 5]
    assert pd.isna(out[7]) and pd.isna(out[5]) and not pd.isna(out[3])
    assert str(out.dtype) == "string"


def test_a_hundred_thousand_users_are_checked_without_comparing_every_pair() -> None:
    names = [f"user{i:06d}" for i in range(100_000)]
    names[50_000] = "\u0430lice"  # imitates the existing alice
    names[70_000] = "b\u043eb"  # imitates user 70_001, who is new as well
    names[70_001] = "bob"
    existing = ["alice", *names[:1000]]
    started = time.monotonic()
    out = lookalike_rejections(desired(*names), existing)
    elapsed = time.monotonic() - started
    assert out.notna().sum() == 2
    assert not pd.isna(out.iloc[50_000]) and not pd.isna(out.iloc[70_000])
    assert elapsed < 30, elapsed  # seconds on a busy 2-core machine; pairwise would be hours
