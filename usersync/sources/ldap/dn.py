"""Distinguished names compared as LDAP compares them (RFC 4514), not as strings.

Member values (`member`, `memberOf`) name entries by DN, and a directory may spell one DN in
several ways: `cn=Smith\\, John,ou=People` and `CN=smith\\2c john, ou=people` are the same
entry. `normalise_dn` gives a comparable form; `DnIndex` looks values up by DN with an exact
lower-case match first (nearly every member value) and normalises only on a miss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence


class DnIndex:
    """Look values up by DN, comparing DNs as LDAP does rather than as strings.

    `cn=Smith\\, John,ou=People` and `CN=smith\\2c john, ou=people` are the same entry. An exact
    lower-case match is tried first because it is cheap and covers nearly every member value;
    only the rest are parsed, and the stored DNs are normalised on the first such miss, not
    before (parsing 100k DNs that no lookup needs was most of building an index). The
    lower-case index too is built on first use: member values as the server spells them
    (`get_many_raw`) rarely need it, and an incremental read resolves a few thousand values
    against 100k known entries.
    """

    def __init__(
        self, items: Iterable[tuple[str, str]], *, whole: Callable[[], DnIndex] | None = None
    ) -> None:
        """Args:
        items: (DN, value) pairs; of two equal DNs, the later one's value is found.
        whole: when `items` are only the entries some member values spell byte for byte
            (and, after them, any other entries those values could name), the index of
            every entry, built on the first value not found byte for byte among `items`:
            `get`, `get_many` and such values are looked up there. The answers are those of
            the index of every entry.
        """
        self._items = list(items)
        self._whole = whole
        self._whole_index: DnIndex | None = None
        self._lowered: dict[str, str] | None = None
        self._raw: dict[bytes, str] | None = None
        self._normalised: dict[tuple[tuple[tuple[str, str], ...], ...], str] | None = None

    def get(self, dn: str) -> str | None:
        """The value stored under an equivalent DN, or None."""
        if self._whole is not None:
            if self._whole_index is None:
                self._whole_index = self._whole()
            return self._whole_index.get(dn)
        found = self._exact().get(dn.lower())
        if found is not None:
            return found
        key = normalise_dn(dn)
        return None if key is None else self._normalised_index().get(key)

    def get_many(self, dns: Sequence[str]) -> list[str | None]:
        """`get` of each DN, in order (one pass over the exact index first)."""
        if self._whole is not None:
            return [self.get(dn) for dn in dns]
        exact = self._exact()
        found = [exact.get(dn.lower()) for dn in dns]
        if None not in found:
            return found
        return [
            self.get(dn) if value is None else value for dn, value in zip(dns, found, strict=True)
        ]

    def get_many_raw(self, values: Sequence[bytes]) -> tuple[list[str | None], list[str]]:
        """`get` of each DN as the server sent it (UTF-8 bytes), and the DNs found under none.

        A value byte for byte equal to a stored DN (a member value as the server spells the
        entry's own DN: nearly all of them) is found without being decoded; the rest are
        decoded and looked up as `get` does.
        """
        raw = self._raw
        if raw is None:
            raw = self._raw = {dn.encode("utf-8"): value for dn, value in self._items}
        found = [raw.get(value) for value in values]
        if None not in found:
            return found, []
        missing: list[str] = []
        for position, value in enumerate(values):
            if found[position] is None:
                text = value.decode("utf-8", errors="replace")
                found[position] = self.get(text)
                if found[position] is None:
                    missing.append(text)
        return found, missing

    def _exact(self) -> dict[str, str]:
        if self._lowered is None:
            self._lowered = {dn.lower(): value for dn, value in self._items}
        return self._lowered

    def _normalised_index(self) -> dict[tuple[tuple[tuple[str, str], ...], ...], str]:
        if self._normalised is None:
            self._normalised = {}
            for dn, value in self._items:
                key = normalise_dn(dn)
                if key is not None:
                    self._normalised[key] = value
        return self._normalised


def normalise_dn(dn: str) -> tuple[tuple[tuple[str, str], ...], ...] | None:
    """A comparable form of a DN (RFC 4514), or None when it is not a valid DN.

    Attribute types and values are compared case-insensitively, whitespace around `,` `+` `=`
    is ignored, escapes (`\\,` or `\\2C`) are decoded, and the parts of a multi-valued RDN are
    sorted. Each RDN becomes a tuple of (type, value) pairs.
    """
    rdns: list[tuple[tuple[str, str], ...]] = []
    for rdn in _split_unescaped(dn, ",;"):
        parts: list[tuple[str, str]] = []
        for ava in _split_unescaped(rdn, "+"):
            # Attribute types never contain a backslash: the first '=' ends the type.
            name, equals, value = ava.partition("=")
            name = name.strip().lower()
            if not equals or not name:
                return None
            try:
                parts.append((name, _unescape_dn_value(_strip_unescaped(value)).casefold()))
            except ValueError:
                return None
        rdns.append(tuple(sorted(parts)))
    return tuple(rdns) if rdns else None


def _strip_unescaped(value: str) -> str:
    """Strip surrounding whitespace, but keep a trailing space escaped as `\\ `."""
    value = value.lstrip()
    while value.endswith(" "):
        body = value[:-1]
        if (len(body) - len(body.rstrip("\\"))) % 2 == 1:
            break  # an odd run of backslashes escapes this space: it is part of the value
        value = body
    return value


def _split_unescaped(text: str, separators: str) -> list[str]:
    if "\\" not in text:
        # Without escapes every separator separates: split in C (the common case, 1M values).
        for separator in separators[1:]:
            text = text.replace(separator, separators[0])
        return text.split(separators[0])
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char in separators:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape_dn_value(value: str) -> str:
    """Decode RFC 4514 escapes: `\\` + special character, or `\\` + two hex digits (UTF-8)."""
    if "\\" not in value:
        return value
    out = bytearray()
    index = 0
    while index < len(value):
        char = value[index]
        if char != "\\":
            out += char.encode("utf-8")
            index += 1
            continue
        pair = value[index + 1 : index + 3]
        if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
            out.append(int(pair, 16))
            index += 3
        elif index + 1 < len(value):
            out += value[index + 1].encode("utf-8")
            index += 2
        else:
            raise ValueError("DN value ends with a lone backslash")
    return out.decode("utf-8")
