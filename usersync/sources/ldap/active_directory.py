"""What is particular to Active Directory: account state, ranged values, IN_CHAIN, FILETIMEs.

AD marks a disabled account in userAccountControl (bit 0x2) and an expiring one in
accountExpires (a FILETIME, 0 or the largest value meaning never); it hands out big
multi-valued attributes in windows (`member;range=0-1499`), whose bounds `range_bounds`
reads; and it evaluates nesting itself with LDAP_MATCHING_RULE_IN_CHAIN, which servers that
announce AD DS or AD LDS capabilities implement.
"""

from __future__ import annotations

import time

from usersync.errors import IncompleteSourceError

#: LDAP_MATCHING_RULE_IN_CHAIN: transitive evaluation of a DN-valued attribute (AD only).
IN_CHAIN_RULE = "1.2.840.113556.1.4.1941"
#: rootDSE supportedCapabilities of AD DS and AD LDS, the servers that implement IN_CHAIN.
AD_CAPABILITIES = frozenset({"1.2.840.113556.1.4.800", "1.2.840.113556.1.4.1851"})
USER_ACCOUNT_CONTROL = "userAccountControl"
ACCOUNT_EXPIRES = "accountExpires"
#: userAccountControl ACCOUNTDISABLE.
UAC_ACCOUNT_DISABLE = 0x2
#: accountExpires values meaning "never": 0 and the largest FILETIME.
NEVER_EXPIRES = frozenset({0, 0x7FFFFFFFFFFFFFFF})
#: FILETIME counts 100 ns intervals since 1601-01-01; Unix time starts 11644473600 s later.
FILETIME_UNIX_OFFSET_SECONDS = 11_644_473_600


def range_bounds(key: str, dn: str) -> tuple[int, int | None]:
    """(low, high) of `attr;range=low-high`; high is None for `*` (the last window)."""
    window = key.partition(";range=")[2].partition(";")[0]
    low, _, high = window.partition("-")
    try:
        return int(low), None if high == "*" else int(high)
    except ValueError as exc:
        raise IncompleteSourceError(f"{dn}: unreadable range option in {key}") from exc


def filetime_now() -> int:
    return int((time.time() + FILETIME_UNIX_OFFSET_SECONDS) * 10_000_000)


def ad_inactive(attrs: dict[str, list[bytes]], which: str, now: int, dn: str) -> bool:
    """Whether an AD user is inactive: disabled (UAC 0x2), or past its accountExpires."""
    try:
        uac = int((attrs.get(USER_ACCOUNT_CONTROL.lower()) or [b"0"])[0])
        expires = int((attrs.get(ACCOUNT_EXPIRES.lower()) or [b"0"])[0])
    except ValueError as exc:
        raise IncompleteSourceError(
            f"{dn}: userAccountControl or accountExpires is not a number"
        ) from exc
    if uac & UAC_ACCOUNT_DISABLE:
        return True
    return which == "disabled_or_expired" and expires not in NEVER_EXPIRES and expires <= now
