"""Attribute names as the directory's schema defines them: aliases, OIDs and case resolved.

An attribute type has an OID and any number of names (`( 2.5.4.4 NAME ( 'sn' 'surname' ) ...`);
a server answers a request for `surname` or `2.5.4.4` with the values under its primary name,
`sn`. So a name from a profile is compared with the names in an answer only after both are
mapped to one key: the type's primary name in lower case, options (`;range=0-1499`,
`;lang-de`) kept. The types come from the subschema subentry the rootDSE names (RFC 4512
4.2 and 5.1; AD and Samba publish theirs the same way, at CN=Aggregate,CN=Schema,...).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

#: The head of an AttributeTypeDescription: its OID, then its names, one or a list in quotes.
#: NAME can only follow the OID (RFC 4512 4.1.2), so a NAME inside a DESC is never read.
_DEFINITION_HEAD = re.compile(
    r"^\s*\(\s*(?P<oid>[^\s()']+)(?:\s+NAME\s+(?:'(?P<one>[^']*)'|\((?P<many>[^)]*)\)))?"
)
_QUOTED = re.compile(r"'([^']*)'")


@dataclass(frozen=True)
class AttributeSchema:
    """Every name and OID of the server's attribute types, mapped to the type's primary name.

    Attributes:
        primary: lower-case name or OID -> lower-case primary name (the OID where the type
            has no name).
        written: lower-case name -> the name as the schema writes it (for messages).
        source: where the definitions were read, for messages.
    """

    primary: dict[str, str]
    written: dict[str, str]
    source: str

    @classmethod
    def parse(cls, definitions: Iterable[str], *, source: str) -> AttributeSchema:
        """The schema of `attributeTypes` values (RFC 4512 AttributeTypeDescription).

        Definitions that do not parse are skipped: a name they define is then unknown, which
        is reported where a profile uses it, never guessed.
        """
        primary: dict[str, str] = {}
        written: dict[str, str] = {}
        for definition in definitions:
            head = _DEFINITION_HEAD.match(definition)
            if head is None:
                continue
            oid = head["oid"].lower()
            if head["one"] is not None:
                names = [head["one"]]
            else:
                names = _QUOTED.findall(head["many"] or "")
            names = [name for name in names if name]
            key = names[0].lower() if names else oid
            for spelling in [oid, *names]:
                primary.setdefault(spelling.lower(), key)
                written.setdefault(spelling.lower(), spelling)
        return cls(primary, written, source)

    def canonical(self, description: str) -> str | None:
        """The key of an attribute description (`surname`, `2.5.4.4;lang-de`), None if unknown.

        The key is the primary name in lower case followed by the options, lower-cased.
        """
        name, separator, options = description.partition(";")
        found = self.primary.get(name.strip().lower())
        if found is None:
            return None
        return found + separator + options.lower()

    def key(self, description: str) -> str:
        """`canonical`, or the description in lower case where the schema lacks it.

        For names in a server's answer: a server may return what it does not publish (AD's
        constructed attributes in some versions), and such a name still matches itself.
        """
        return self.canonical(description) or description.lower()

    def unknown(self, descriptions: Iterable[str]) -> list[str]:
        """The descriptions whose attribute type the schema does not define, in order."""
        return [d for d in dict.fromkeys(descriptions) if self.canonical(d) is None]

    def suggestions(self, description: str) -> list[str]:
        """Up to three known names spelt like `description` (for an error message)."""
        name = description.partition(";")[0].lower()
        names = [n for n in self.primary if n[0].isalpha()]
        return [self.written[n] for n in difflib.get_close_matches(name, names, n=3, cutoff=0.8)]
