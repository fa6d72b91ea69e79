"""What the source contract suite (`test_contract.py`) needs from each source: one scenario,
seeded by every harness in its source's own way, and the `SourceEnv` each harness yields.

Every source kind has `tests/sources/harness_<name>.py` with a context manager
`environment(request)` that starts or reaches its server, writes `SCENARIO` into it the way
that server is written to (LDAP add, SCIM POST, the miniOrange emulator's state), and yields a
`SourceEnv`. The suite asserts only on what `Source.extract` hands the engine, so a fifth
source adds its harness and its name in `test_contract.SOURCES`, and the suite runs unchanged.

`CuttingProxy` is how a network source's read is made to fail part-way: a TCP relay that
closes every connection once it has passed a byte budget from the server, and refuses new
ones, as a server that goes away mid-read would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from usersync.sources.base import Source


@dataclass(frozen=True)
class ScenarioUser:
    login: str
    given: str
    family: str
    email: str
    active: bool = True


#: Users beside the special ones, so that a read at `PAGE_SIZE` spans several pages.
CROWD = tuple(
    ScenarioUser(f"member{n:02d}", "Member", f"Number{n:02d}", f"member{n:02d}@example.org")
    for n in range(1, 12)
)
# Logins unlike tests/ad's, whose users share the session's Samba DC (sAMAccountName is unique
# across a domain).
ANNA = ScenarioUser("anna", "Anna", "Example", "anna@example.org")
#: disabled in the source: must come back inactive
BOB = ScenarioUser("bob", "Bob", "Disabled", "bob@example.org", active=False)
#: non-ASCII names
ZOE = ScenarioUser("zmuller", "Zoë", "Müller", "zmuller@example.org")
#: a non-ASCII login too
SOREN = ScenarioUser("søren", "Søren", "Kierkegård", "soren@example.org")


@dataclass(frozen=True)
class Scenario:
    users: tuple[ScenarioUser, ...]
    #: group name -> member logins
    groups: dict[str, tuple[str, ...]]


SCENARIO = Scenario(
    users=(ANNA, BOB, ZOE, SOREN, *CROWD),
    groups={
        "engineering": (ANNA.login, ZOE.login, SOREN.login),
        "Équipe": (ZOE.login, SOREN.login),
        "everyone": tuple(u.login for u in (ANNA, BOB, ZOE, SOREN, *CROWD)),
    },
)
#: Entries per page a harness asks of its source: the scenario needs four pages.
PAGE_SIZE = 4


@dataclass
class SourceEnv:
    """One source holding `SCENARIO`, as a harness yields it."""

    name: str
    #: what the scenario's fields are called in this source: login, email, given, family
    fields: dict[str, str]
    #: a new client reading the scenario (`PAGE_SIZE` per page where the source pages)
    open_source: Callable[[], Source]
    #: a client whose next read fails part-way, given a `CUT_POINTS` share (through a
    #: `CuttingProxy`, or the source's own kind of damage where a read cannot stop part-way)
    failing_read: Callable[[float], AbstractContextManager[Source]]
    #: entries per page, or None for a source that reads in one go (the inbox's store)
    page_size: int | None = PAGE_SIZE
    #: False for a source that can list no groups (miniOrange REST): it must return none
    reads_groups: bool = True
    #: (login, given name): change one user's given name in the source, natively (only the
    #: harnesses of sources offering incremental reads need it)
    set_given_name: Callable[[str, str], None] | None = None
    #: `CUT_POINTS` name -> why this source does not yet raise a `SourceError` there; the
    #: test is then expected to fail (strictly: once fixed, the entry must go)
    known_gaps: dict[str, str] = field(default_factory=dict)

    @property
    def attributes(self) -> list[str]:
        return list(self.fields.values())


class CuttingProxy:
    """A TCP relay to `host:port` that, once armed, stops after `budget` bytes from the server.

    Stopping closes every open connection and every later one as soon as it is accepted, so
    retries meet a server that is gone rather than a fresh, complete answer.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._budget: int | None = None
        #: bytes relayed from the server so far
        self.relayed = 0
        self.cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, budget: int) -> None:
        """Relay `budget` more bytes from the server, then stop."""
        with self._lock:
            self._budget = self.relayed + budget

    def close(self) -> None:
        self._listener.close()
        self._stop()

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.cut:
                client.close()
                continue
            server = socket.create_connection(self._target, timeout=10)
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_server: bool) -> None:
        while True:
            try:
                data = source.recv(4096)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            if from_server:
                with self._lock:
                    if self._budget is not None:
                        data = data[: max(0, self._budget - self.relayed)]
                    self.relayed += len(data)
                    exhausted = self._budget is not None and self.relayed >= self._budget
                if exhausted:
                    with contextlib.suppress(OSError):
                        sink.sendall(data)
                    self._stop()
                    return
            try:
                sink.sendall(data)
            except OSError:
                return

    def _stop(self) -> None:
        with self._lock:
            self.cut = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


#: Where a read is cut, as the share of the bytes a whole read takes that still arrive (1.0:
#: all but the last `END_MARGIN` bytes).
CUT_POINTS = {"early": 0.1, "halfway": 0.5, "near-the-end": 0.97, "just-before-the-end": 1.0}
#: Bytes a cut at the end leaves out: more than two reads of the same data differ by (Samba's
#: answers vary by a few bytes), less than the last answer of a read.
END_MARGIN = 32


@contextlib.contextmanager
def read_cut_short(
    server: tuple[str, int],
    open_through: Callable[[int], Source],
    attributes: list[str],
    share: float,
) -> Iterator[Source]:
    """A client whose read stops after `share` of its bytes (at most all but `END_MARGIN`).

    Args:
        server: the host and port the source reads from.
        open_through: a new client for the same source, reading through 127.0.0.1:<port>.
        attributes: what the read asks for.
        share: a `CUT_POINTS` value.
    """
    with CuttingProxy(*server) as proxy:
        with open_through(proxy.port) as whole:  # how many bytes a whole read takes
            whole.extract(attributes)
            needed = proxy.relayed  # before closing: TLS sends a close_notify after the read
        source = open_through(proxy.port)
        try:
            proxy.arm(min(int(needed * share), needed - END_MARGIN))
            yield source
        finally:
            source.close()
        assert proxy.cut, f"the proxy never cut the read ({proxy.relayed} of {needed} bytes)"
