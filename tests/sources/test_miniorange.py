"""The miniOrange REST source against the sandbox emulator over HTTP: signature, skew, lookup,
the experimental listing, and the refusal of the unconfirmed listing by default."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from usersync_sandbox.miniorange import MiniorangeEmulator
from usersync_sandbox.server import serve

from usersync.config import MiniorangeSourceConfig, SecretRef
from usersync.errors import ConfigError, SourceAuthError
from usersync.sources.miniorange import MiniorangeSource, sign

CUSTOMER = "248762"
API_KEY = "api-key-of-248762"
NOW = 1_474_522_813.982  # the reference's example timestamp, in seconds


@pytest.fixture(scope="module")
def emulator() -> Iterator[tuple[MiniorangeEmulator, str]]:
    mo = MiniorangeEmulator({CUSTOMER: API_KEY, "999": "other-key"}, clock=lambda: NOW)
    for i in range(7):
        mo.seed_user(CUSTOMER, f"user{i}", email=f"user{i}@example.org", firstName=f"U{i}")
    mo.seed_user("999", "stranger", email="s@example.org")
    with serve(mo.app) as url:
        yield mo, url


def _source(url: str, *, api_key: str = API_KEY, clock=lambda: NOW, **extra) -> MiniorangeSource:
    config = MiniorangeSourceConfig(
        kind="miniorange",
        url=url,
        customer_key=CUSTOMER,
        api_key=SecretRef(env="UNUSED"),
        max_attempts=1,
        **extra,
    )
    return MiniorangeSource(config, api_key, clock=clock)


def test_signature_is_lower_hex_sha512_of_key_timestamp_api_key() -> None:
    expected = hashlib.sha512(b"2487621474522813982" + API_KEY.encode()).hexdigest()
    assert sign(CUSTOMER, "1474522813982", API_KEY) == expected
    assert expected == expected.lower() and len(expected) == 128


def test_lookup_of_one_user(emulator) -> None:
    _, url = emulator
    with _source(url) as source:
        found = source.find_user("USER3")
        assert found is not None and found["email"] == "user3@example.org"
        assert source.find_user("nobody") is None
        assert source.find_user("stranger") is None  # another customer's user


def test_wrong_key_and_stale_clock_are_auth_failures_with_reasons(emulator) -> None:
    _, url = emulator
    with _source(url, api_key="wrong") as source:
        result = source.check()
        assert not result.ok and "Invalid request signature" in result.detail
        with pytest.raises(
            SourceAuthError, match="customer key, the API key and the worker's clock"
        ):
            source.find_user("user1")
    with _source(url, clock=lambda: NOW - 3600) as source:
        stale = source.check()
    assert not stale.ok and "timestamp outside the allowed window" in stale.detail
    with _source(url) as source:
        assert source.check().ok


def test_listing_is_refused_unless_experimental_getall(emulator) -> None:
    _, url = emulator
    with _source(url) as source, pytest.raises(ConfigError, match="experimental_getall: true"):
        source.extract(["username", "email"])


def test_experimental_getall_reads_every_batch(emulator) -> None:
    _, url = emulator
    with _source(url, experimental_getall=True, batch_size=3) as source:
        snapshot = source.extract(["username", "email"])
    assert sorted(snapshot.users["username"]) == [f"user{i}" for i in range(7)]
    assert snapshot.users["source_id"].is_unique
    assert snapshot.groups.empty and "groups are not read" in snapshot.notes[0]
