"""How a product's licence figures are read, in every form the products are known to write them.

The three products report a user limit each in its own way, and none documents every case:
Jira's application roles say `numberOfSeats: -1` (and `hasUnlimitedSeats`) for unlimited,
Confluence's licence resource answers Integer.MAX_VALUE where others see -1, Bitbucket has
`unlimitedNumberOfUsers` beside `maximumNumberOfUsers`. Whatever product a figure comes from,
it is read here the same way: a negative number, Java's Integer or Long MAX_VALUE, or any of
the "unlimited" flags mean unlimited; a number written as a string is a number; anything else
(a boolean, null, text) is not understood, and a figure that is not understood is never taken
as 0: the caller reports the licence as unknown, and the seat guard holds nothing back on a
guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Java's Integer.MAX_VALUE and Long.MAX_VALUE, which licence code uses for "no limit".
UNLIMITED_VALUES = frozenset({2**31 - 1, 2**63 - 1})
#: Fields that say "unlimited" outright, as the products and their clients spell them.
UNLIMITED_FLAGS = ("unlimited", "hasUnlimitedSeats", "unlimitedNumberOfUsers", "unlimitedUsers")


@dataclass(frozen=True)
class Limit:
    """A licence figure as read: `unlimited`, or a `value`, or neither (not understood)."""

    value: int | None = None
    unlimited: bool = False
    raw: Any = None

    @property
    def understood(self) -> bool:
        return self.unlimited or self.value is not None


def read_limit(raw: Any) -> Limit:
    """A user limit in any plausible form (see the module's docstring)."""
    number = _number(raw)
    if number is None:
        if isinstance(raw, str) and raw.strip().lower() in ("unlimited", "infinite", "none"):
            return Limit(unlimited=True, raw=raw)
        return Limit(raw=raw)
    if number < 0 or number in UNLIMITED_VALUES:
        return Limit(unlimited=True, raw=raw)
    return Limit(value=number, raw=raw)


def read_number(raw: Any) -> int | None:
    """A whole number however it is written (a string of digits too), or None."""
    return _number(raw)


def read_count(raw: Any) -> int | None:
    """A count of users (never negative), or None when it is not one."""
    number = _number(raw)
    return number if number is not None and number >= 0 else None


def says_unlimited(body: Mapping[str, Any]) -> bool:
    """Whether any of the "unlimited" flags is set in a licence answer (true or "true")."""
    return any(
        body.get(flag) is True or str(body.get(flag)).strip().lower() == "true"
        for flag in UNLIMITED_FLAGS
    )


def _number(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if text.lstrip("-").isdigit():
            return int(text)
    return None
