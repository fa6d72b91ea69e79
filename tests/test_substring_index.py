"""The sandbox's substring index against a plain scan, through any sequence of changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule
from usersync_sandbox.substring_index import SubstringIndex, TrackedDict

TEXT = st.text(alphabet="abcAB\x01é", max_size=6)


@dataclass
class Account:
    edits: ClassVar[int] = 0
    name: str
    mail: str

    def rename(self, name: str) -> None:
        self.name = name
        Account.edits += 1


def searched(account: Account) -> str:
    return f"{account.name}\0{account.mail}".casefold()


class IndexAgainstScan(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.accounts = TrackedDict()
        self.index = SubstringIndex(self.accounts, searched, lambda: Account.edits)

    @rule(key=st.integers(0, 8), name=TEXT, mail=TEXT)
    def put(self, key: int, name: str, mail: str) -> None:
        self.accounts[key] = Account(name, mail)  # a new key, or one replaced

    @rule(key=st.integers(0, 8))
    def delete(self, key: int) -> None:
        self.accounts.pop(key, None)

    @rule(key=st.integers(0, 8), name=TEXT)
    def merge(self, key: int, name: str) -> None:
        self.accounts |= {key: Account(name, "")}

    @rule(key=st.integers(0, 8), name=TEXT)
    def rename(self, key: int, name: str) -> None:
        if key in self.accounts:
            self.accounts[key].rename(name)

    @rule(needle=TEXT.filter(bool))
    def search(self, needle: str) -> None:
        needle = needle.casefold()
        expected = [a for a in self.accounts.values() if needle in searched(a)]
        found = self.index.search(needle)
        assert sorted(map(id, found)) == sorted(map(id, expected)), (needle, self.accounts)


TestIndexAgainstScan = IndexAgainstScan.TestCase
TestIndexAgainstScan.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_a_needle_is_found_once_per_account_and_across_appends():
    accounts = TrackedDict()
    index = SubstringIndex(accounts, searched, lambda: 0)
    accounts["a"] = Account("anna", "anna@x")
    assert [a.name for a in index.search("an")] == ["anna"]  # two hits in one account: once
    accounts["b"] = Account("bob", "bob@anna.example")
    accounts["c"] = Account("carl", "c@x")
    assert [a.name for a in index.search("anna")] == ["anna", "bob"]
    assert index.search("@x") == [accounts["a"], accounts["c"]]
    assert index.search("zzz") == []
