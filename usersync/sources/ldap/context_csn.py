"""OpenLDAP's change sequence numbers: where a database stands (contextCSN) and what changed after.

Every write gives the entry it touches a new `entryCSN` (`20261130015812.862685Z#000000#000#000000`:
a UTC time in microseconds, a counter, the writing server's id, a modifier count), and the
syncprov overlay keeps the newest CSN of each server id as `contextCSN` on the database's
suffix entry. So `contextCSN`, read before a read, is a watermark: every entry written later
has an entryCSN above it. OpenLDAP compares CSNs as text (CSNOrderingMatch), so a filter
`(entryCSN>=<watermark>)` finds them. modifyTimestamp would do the same with whole seconds only,
and does not say which server wrote. A change to a group's member list changes the group's
entryCSN; the memberOf values the memberof overlay derives change no entryCSN of the users.

The watermark is kept as an integer (microseconds since the Unix epoch of the oldest contextCSN
value: with several providers, an entry another server wrote may arrive later than newer local
writes), and read back as the lowest CSN of that microsecond, so an entry written in the same
microsecond is read again rather than missed.
"""

from __future__ import annotations

from datetime import UTC, datetime

from usersync.errors import SourceError

#: The parts of a CSN after its time: counter, server id and modifier count, all zero here.
_CSN_LOWEST_TAIL = "#000000#000#000000"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def csn_micros(csn: str, *, where: str) -> int:
    """The time of a CSN (`YYYYmmddHHMMSS.ffffffZ#...`) in microseconds since the Unix epoch.

    Raises:
        SourceError: the value is not a CSN.
    """
    stamp = csn.partition("#")[0]
    try:
        moment = datetime.strptime(stamp, "%Y%m%d%H%M%S.%fZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise SourceError(f"{where}: {csn!r} is not a CSN (YYYYmmddHHMMSS.ffffffZ#...)") from exc
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def csn_server_id(csn: str) -> str:
    """The server id of a CSN (its third part), e.g. `000`."""
    parts = csn.split("#")
    return parts[2] if len(parts) > 2 else ""


def lowest_csn_at(micros: int) -> str:
    """The lowest CSN of the microsecond `micros`: the bound of `(entryCSN>=...)`."""
    moment = datetime.fromtimestamp(micros // 1_000_000, tz=UTC).replace(
        microsecond=micros % 1_000_000
    )
    return moment.strftime("%Y%m%d%H%M%S.%fZ") + _CSN_LOWEST_TAIL


def describe_csn_mark(micros: int) -> str:
    """A watermark as people read it: `contextCSN 2026-11-30 01:58:12.862685 UTC`."""
    moment = datetime.fromtimestamp(micros // 1_000_000, tz=UTC).replace(
        microsecond=micros % 1_000_000
    )
    return f"contextCSN {moment:%Y-%m-%d %H:%M:%S.%f} UTC"
