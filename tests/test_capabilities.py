"""What each client offers beyond its interface, as `usersync.capabilities.offers` says it.

The expectations come from the products: Bitbucket alone has a bulk add-users call; all three
targets list an account's groups; only LDAP checks attribute names, looks one user up and
reads incrementally. A wrapper that passes calls through (the progress counter) offers what
the client it wraps offers.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import pytest

from usersync.capabilities import (
    MEMBERS_PER_CALL,
    AccountGroupsReader,
    AttributeChecker,
    BulkMembershipWriter,
    IncrementalSource,
    UserLookup,
    members_per_call,
    offers,
)
from usersync.sources.ldap import LdapSource
from usersync.sources.miniorange import MiniorangeSource
from usersync.sources.miniorange_push import MiniorangePushSource
from usersync.sources.scim import ScimSource
from usersync.targets.base import Target
from usersync.targets.bitbucket import BitbucketTarget
from usersync.targets.confluence import ConfluenceTarget
from usersync.targets.jira import JiraTarget

TARGETS = {"jira": JiraTarget, "confluence": ConfluenceTarget, "bitbucket": BitbucketTarget}
SOURCES = {
    "ldap": LdapSource,
    "scim": ScimSource,
    "miniorange": MiniorangeSource,
    "miniorange-push": MiniorangePushSource,
}


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_every_product_lists_the_groups_of_an_account(kind: str) -> None:
    assert offers(TARGETS[kind], AccountGroupsReader)


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_only_bitbucket_adds_members_in_bulk(kind: str) -> None:
    assert offers(TARGETS[kind], BulkMembershipWriter) == (kind == "bitbucket")


@pytest.mark.parametrize(
    "capability", [AttributeChecker, UserLookup], ids=["check_attributes", "user_lookup"]
)
@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_only_ldap_checks_attributes_and_looks_users_up(kind: str, capability: type) -> None:
    assert offers(SOURCES[kind], capability) == (kind == "ldap")


class _Bare(Target):
    """A target with the interface only, nothing extra."""


def test_the_interfaces_own_declaration_is_not_a_capability() -> None:
    # Target.read_user_groups exists on every target but refuses: it must not count.
    assert not offers(_Bare, AccountGroupsReader)
    _Bare.__abstractmethods__ = frozenset()  # an instance without implementing the writes
    assert not offers(_Bare("t"), AccountGroupsReader)


class _Bulk:
    def add_members(self, group: str, usernames: Sequence[str]) -> None:
        pass


class _PassThrough:
    """Like tasks/progress.py's OperationCounter: attributes come from the wrapped client."""

    def __init__(self, wrapped: object) -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> object:
        return getattr(self._wrapped, name)


def test_a_wrapper_offers_what_it_wraps() -> None:
    assert offers(_PassThrough(_Bulk()), BulkMembershipWriter)
    assert not offers(_PassThrough(object()), BulkMembershipWriter)


def test_batch_size_is_the_targets_own_or_the_default() -> None:
    assert members_per_call(_Bulk()) == MEMBERS_PER_CALL
    sized = _Bulk()
    sized.max_members_per_call = 7  # type: ignore[attr-defined]
    assert members_per_call(sized) == 7
    assert members_per_call(BitbucketTarget) == BitbucketTarget.max_members_per_call


class _Incremental:
    def position(self) -> None: ...
    def read_snapshot(self, attributes: Sequence[str]) -> None: ...
    def search_changes(self, attributes: Sequence[str], **_: object) -> None: ...
    def resolve_changes(self, found: object, **_: pd.DataFrame) -> None: ...


def test_incremental_needs_its_settings_too() -> None:
    without_config = _Incremental()
    assert not offers(without_config, IncrementalSource)
    with_config = _Incremental()
    with_config.config = object()  # type: ignore[attr-defined]
    assert offers(with_config, IncrementalSource)


def test_an_unknown_capability_is_an_error() -> None:
    with pytest.raises(KeyError):
        offers(object(), int)
