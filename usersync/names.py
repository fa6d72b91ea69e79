"""Look-alike usernames: which desired names would pass for another account's name.

`аdmin` with a Cyrillic `а`, or `rοot` with a Greek omicron, is a different string from
`admin` and `root`, so the products create it as a second account that reads like the first
in every list, mention and permission screen. Unicode Technical Standard #39 defines the
*skeleton* of a string, equal for strings that look alike, from the Unicode consortium's
confusables data; this module computes it with ICU's spoof checker (the data ships inside
the `pyicu-wheels` package, nothing is fetched at run time), folded for case as the products
compare names, and decides which desired users to refuse: a name with a character outside
ASCII whose skeleton equals that of a different account the product holds, or of a different
desired name that is not already an account. A name of ASCII characters alone is never
refused here (`l`/`1`, `0`/`O`, `rn`/`m` are as old as the products), and names equal but
for case are the duplicate rule's business (`usersync.mapping`), not this one's.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from functools import cache

import icu
import pandas as pd

#: Folding for case and NFKC can bring out a character the confusables data maps again
#: (U+13B7 CHEROKEE LETTER ME becomes `m`, then `rn`); two more passes settle every single
#: code point, so this bound is never reached by a real name.
_MAX_PASSES = 8
#: At most this many look-alike characters are named in one reason.
_NAMED_CHARACTERS = 3


@cache
def _checker() -> icu.SpoofChecker:
    return icu.SpoofChecker()


def _folded_skeleton(text: str) -> str:
    """One pass: NFKC, case fold, the TS #39 skeleton, case fold again (prototypes may be
    capitals)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _checker().getSkeleton(0, folded).casefold()


def skeleton(name: str) -> str:
    """The TS #39 confusable skeleton of `name`, as the products compare names.

    Two names with the same skeleton look alike: `skeleton("аdmin") == skeleton("admin")`
    (both `adrnin`: the skeleton maps `m` to `rn`, so it is a key, not a name to show).
    Names equal but for case have the same skeleton, as the products take them for the same
    account; so do a name and its NFKC form (`ａｄｍｉｎ` and `admin`). Default-ignorable
    characters (zero-width space, soft hyphen) are dropped, as TS #39 says.
    """
    text = name.casefold()
    for _ in range(_MAX_PASSES):
        folded = _folded_skeleton(text)
        if folded == text:
            break
        text = folded
    return text


def _plain_form(name: str) -> str:
    """`name` case-folded with each character outside ASCII replaced by its TS #39 prototype:
    the name it most likely imitates (`аdmin` → `admin`; ASCII `m` stays `m`)."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    parts = [
        ch if ch.isascii() else _checker().getSkeleton(0, ch)
        for ch in unicodedata.normalize("NFD", folded)
    ]
    return unicodedata.normalize("NFC", "".join(parts)).casefold()


def skeleton_probes(usernames: Iterable[object]) -> list[str]:
    """Names of accounts to look for in a product before calling `lookalike_rejections`.

    A desired name outside ASCII may imitate an account the run would not otherwise read:
    `аdmin` imitates `admin`. The probe of such a name is its plain form: the name with each
    character outside ASCII replaced by what it looks like (`admin`), so a lookup by name
    finds the account it imitates. Names of ASCII characters alone, and names whose plain
    form is themselves (`jörg`), give none. Missing values are skipped.

    Returns:
        Distinct probes, case-folded, in the order of the names they come from.
    """
    probes: dict[str, None] = {}
    for value in pd.Series(list(usernames), dtype="string").dropna().unique():
        name = str(value)
        if name.isascii():
            continue
        plain = _plain_form(name)
        if plain != name.lower():
            probes.setdefault(plain, None)
    return list(probes)


def lookalike_rejections(users: pd.DataFrame, existing: Iterable[object]) -> pd.Series:
    """Why each desired user's name is refused as a look-alike; NA where it is not.

    The rule (names compared case-folded, skeletons per `skeleton`):

    - A name of ASCII characters alone is never refused.
    - Any other name is refused when its skeleton equals that of an account the product
      holds under a different name (`аdmin` while `admin` exists), whether or not the
      name is already an account itself.
    - Otherwise it is refused when its skeleton equals that of another desired user's
      different name, unless it is already an account the product holds (the established
      name keeps it; the newcomer is refused). Two such names that are both new and both
      outside ASCII are both refused; beside an ASCII one, only the other is.

    A refused user who is still active keeps the account it may have as it is (a rejection);
    one who is disabled is deprovisioned all the same.

    Args:
        users: desired users, with at least `source_id` and `username`.
        existing: usernames of accounts the product holds (those of the desired users
            themselves may be among them), e.g. the accounts read for the desired names and
            for `skeleton_probes` of them.

    Returns:
        A string series on `users.index`: the reason, or NA.
    """
    names = users["username"].astype("string")
    folded = names.str.casefold()
    held = pd.Series(list(existing), dtype="string").dropna().str.casefold().drop_duplicates()
    distinct = pd.Index(pd.concat([folded.dropna(), held], ignore_index=True).unique())
    key_of = dict(zip(distinct, (skeleton(str(n)) for n in distinct), strict=True))

    wanted = pd.DataFrame({"name": folded.dropna().drop_duplicates()})
    wanted["key"] = wanted["name"].map(key_of)
    candidates = wanted.loc[~wanted["name"].map(str.isascii)]
    if not len(candidates):
        return pd.Series(pd.NA, index=users.index, dtype="string")
    keys = set(candidates["key"])
    holders = pd.DataFrame({"name": held, "key": held.map(key_of)})
    held_by_key = _names_by_key(holders.loc[holders["key"].isin(keys)])
    wanted_by_key = _names_by_key(wanted.loc[wanted["key"].isin(keys)])
    held_names = set(held)

    reasons: dict[str, str] = {}
    for name, key in zip(candidates["name"], candidates["key"], strict=True):
        account = _another(held_by_key.get(key, ()), name)
        if account is not None:
            reasons[name] = (
                f"looks like the existing account {_shown(account)}: {_lookalikes(name)} "
                f"(same Unicode TS #39 confusable skeleton {key!r})"
            )
            continue
        other = None if name in held_names else _another(wanted_by_key.get(key, ()), name)
        if other is not None:
            reasons[name] = (
                f"looks like {_shown(other)}, the username of another source user: "
                f"{_lookalikes(name)} (same Unicode TS #39 confusable skeleton {key!r})"
            )
    return folded.map(reasons).astype("string")


def _names_by_key(frame: pd.DataFrame) -> dict[str, list[str]]:
    """The names of `frame` (columns `name`, `key`) per key, ASCII ones first, sorted."""
    out: dict[str, list[str]] = {}
    for name, key in zip(frame["name"], frame["key"], strict=True):
        out.setdefault(key, []).append(name)
    return {k: sorted(v, key=lambda n: (not n.isascii(), n)) for k, v in out.items()}


def _another(names: Iterable[str], name: str) -> str | None:
    """The first of `names` other than `name`, or None."""
    return next((n for n in names if n != name), None)


def _shown(name: str) -> str:
    """A name quoted, with its characters outside ASCII also spelled as escapes."""
    if name.isascii():
        return repr(name)
    return f"{name!r} ({name.encode('ascii', 'backslashreplace').decode()})"


def _lookalikes(name: str) -> str:
    """Which characters of `name` pass for others: `U+0430 CYRILLIC SMALL LETTER A looks
    like 'a'`."""
    found = []
    for ch in dict.fromkeys(unicodedata.normalize("NFKC", name)):
        if ch.isascii():
            continue
        plain = unicodedata.normalize("NFC", skeleton(ch))
        if plain != unicodedata.normalize("NFC", ch.casefold()):
            label = unicodedata.name(ch, "")
            found.append(f"U+{ord(ch):04X}{' ' + label if label else ''} looks like {plain!r}")
    if not found:
        return "its characters outside ASCII look like others"
    more = len(found) - _NAMED_CHARACTERS
    listed = "; ".join(found[:_NAMED_CHARACTERS])
    return listed + (f" and {more} more" if more > 0 else "")
