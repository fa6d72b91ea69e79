"""Substring search over an emulator's accounts without a Python loop over every account.

Bitbucket's `filter` parameter finds the accounts whose name, e-mail or display name contains
a text, and a client that creates an account reads it back that way: a load of 10k creations
makes 10k lookups, each of which scanned every account in Python (most of the emulator's time
in `bench/load.py`). `SubstringIndex` keeps the searched text of every account in one string
and finds a needle with `str.find`; `TrackedDict` tells it what changed, so an account created
since the last lookup is appended and anything else (a deletion, a replacement, an edited
field) rebuilds the text once. `CountedDict` is a dict that counts its changes, for caches kept
over one (the Bitbucket emulator's sorted list of directly licensed accounts).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Hashable
from typing import Any

#: Between two accounts' texts (and a needle holding it is searched the slow way).
SEPARATOR = "\x01"


class TrackedDict(dict):
    """A dict that counts the changes an index cannot follow by appending: a key replaced or
    removed bumps `reshaped`; a new key is noted in `appended` until an index takes it."""

    def __init__(self) -> None:
        super().__init__()
        self.appended: list[Hashable] = []
        self.reshaped = 0

    def __setitem__(self, key: Hashable, value: Any) -> None:
        if key in self:
            self.reshaped += 1
        else:
            self.appended.append(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: Hashable) -> None:
        self.reshaped += 1
        super().__delitem__(key)

    def pop(self, key: Hashable, *default: Any) -> Any:
        self.reshaped += 1
        return super().pop(key, *default)

    def popitem(self) -> tuple[Hashable, Any]:
        self.reshaped += 1
        return super().popitem()

    def clear(self) -> None:
        self.reshaped += 1
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.reshaped += 1
        super().update(*args, **kwargs)

    def setdefault(self, key: Hashable, default: Any = None) -> Any:
        self.reshaped += 1
        return super().setdefault(key, default)

    def __ior__(self, other: Any) -> TrackedDict:
        self.update(other)
        return self


class CountedDict(dict):
    """A dict whose `changes` moves with every change made through it (for caches kept over
    it: the Bitbucket emulator's global permission lists)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changes = 0

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self.changes += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Hashable) -> None:
        self.changes += 1
        super().__delitem__(key)

    def pop(self, key: Hashable, *default: Any) -> Any:
        self.changes += 1
        return super().pop(key, *default)

    def popitem(self) -> tuple[Hashable, Any]:
        self.changes += 1
        return super().popitem()

    def clear(self) -> None:
        self.changes += 1
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.changes += 1
        super().update(*args, **kwargs)

    def setdefault(self, key: Hashable, default: Any = None) -> Any:
        self.changes += 1
        return super().setdefault(key, default)

    def __ior__(self, other: Any) -> CountedDict:
        self.update(other)
        return self


class SubstringIndex:
    """The values of `accounts` whose `text(value)` contains a needle.

    Args:
        accounts: the accounts, by key.
        text: an account's searched text (casefolded fields joined by NUL, say).
        edits: a counter that moves whenever a searched field of an existing account changes.
    """

    def __init__(
        self, accounts: TrackedDict, text: Callable[[Any], str], edits: Callable[[], int]
    ) -> None:
        self._accounts = accounts
        self._text_of = text
        self._edits = edits
        self._seen: tuple[int, int] | None = None
        self._text = ""
        self._starts: list[int] = []
        self._keys: list[Hashable] = []

    def search(self, needle: str) -> list[Any]:
        """The accounts whose text contains `needle` (which should be casefolded already), in
        the index's order (creation order)."""
        if "\0" in needle or SEPARATOR in needle:
            return [a for a in self._accounts.values() if needle in self._text_of(a)]
        self._refresh()
        text, starts, keys = self._text, self._starts, self._keys
        found = []
        at = text.find(needle)
        while at != -1:
            position = bisect_right(starts, at) - 1
            found.append(self._accounts[keys[position]])
            following = position + 1
            at = text.find(needle, starts[following]) if following < len(starts) else -1
        return found

    def _refresh(self) -> None:
        accounts = self._accounts
        seen = (accounts.reshaped, self._edits())
        if seen != self._seen:
            accounts.appended.clear()
            self._keys = list(accounts)
            texts = [self._text_of(accounts[key]) for key in self._keys]
            self._starts = []
            offset = 0
            for piece in texts:
                self._starts.append(offset)
                offset += len(piece) + 1
            self._text = SEPARATOR.join(texts)
            self._seen = seen
        elif accounts.appended:
            for key in accounts.appended:
                piece = self._text_of(accounts[key])
                if self._keys:
                    self._text += SEPARATOR
                self._starts.append(len(self._text))
                self._text += piece
                self._keys.append(key)
            accounts.appended.clear()
