"""Connections to the directory: TLS or cleartext as the profile allows, bound, with clear errors.

`LdapConnections` opens the profile's connection on first use, a second one to the same
server for a search run beside the first's, and one per server a referral leads to. Each is
bound with the profile's DN and password: over LDAPS, or upgraded with StartTLS whenever the
profile uses TLS at all (a referral never lowers the protection of the password), and over
cleartext only with `allow_cleartext_bind`. Connect, TLS and bind failures become
`SourceUnreachableError`/`SourceAuthError` messages that say what to check.
"""

from __future__ import annotations

import math
import ssl
import threading
from typing import Any

from ldap3 import NONE, SIMPLE, SYNC, Connection, Server, Tls
from ldap3.core.exceptions import (
    LDAPCertificateError,
    LDAPCommunicationError,
    LDAPSSLConfigurationError,
    LDAPStartTLSError,
)

from usersync.config import LdapSourceConfig, Secret, reveal
from usersync.errors import ConfigError, SourceAuthError, SourceUnreachableError
from usersync.http import certificate_failure
from usersync.sources.ldap.decoding import discard
from usersync.sources.ldap.pager import describe_result

RESULT_INVALID_CREDENTIALS = 49


class LdapConnections:
    """The connections of an `LdapSource` (a mixin: the state lives in `LdapSource.__init__`)."""

    config: LdapSourceConfig
    _password: Secret
    _conn: Connection | None
    _conn2: Connection | None
    _opening: threading.Lock
    _referred: dict[str, Connection]
    _naming_contexts: dict[str, set[Any]]

    def _connection(self) -> Connection:
        with self._opening:
            if self._conn is None or self._conn.closed:
                self._conn = self._open(self.config.url)
            return self._conn

    def _second_connection(self) -> Connection:
        """Another connection to the profile's server, for a search run beside the first's."""
        with self._opening:
            if self._conn2 is None or self._conn2.closed:
                self._conn2 = self._open(self.config.url)
            return self._conn2

    def _referred_connection(self, server_url: str) -> Connection:
        """A bound connection to a server a referral names, opened like the profile's own."""
        key = server_url.lower()
        with self._opening:  # two searches may follow referrals to one server at once
            conn = self._referred.get(key)
            if conn is None or conn.closed:
                conn = self._referred[key] = self._open(server_url)
            return conn

    def _open(self, url: str) -> Connection:
        """Connect to `url` and bind with the profile's DN, password and TLS settings.

        `url` is the profile's own, or one a referral named: an ldaps:// URL is LDAPS; an
        ldap:// one is upgraded with StartTLS whenever the profile uses TLS at all, so a
        referral never lowers the protection of the password.
        """
        config = self.config
        mode = config.tls.mode
        if url.lower().startswith("ldaps://"):
            mode = "ldaps"
        elif mode == "ldaps":
            mode = "starttls"
        if mode == "none" and not config.allow_cleartext_bind:
            raise ConfigError(
                f"{url}: refusing to send the password of {config.bind_dn} over an "
                "unencrypted connection; use tls.mode ldaps (ldaps:// URL) or starttls, or set "
                "allow_cleartext_bind: true (lab directories only)"
            )
        if not reveal(self._password):
            # RFC 4513 5.1.2: a DN with an empty password is an unauthenticated bind, which
            # many servers accept as anonymous: refuse rather than read as nobody.
            raise ConfigError(
                f"{url}: the bind password for {config.bind_dn} "
                f"({config.bind_password.describe()}) is empty"
            )
        server = Server(
            url,
            use_ssl=mode == "ldaps",
            tls=self._tls() if mode != "none" else None,
            get_info=NONE,  # no schema read: one round trip less, and raw values stay raw
            connect_timeout=config.connect_timeout_seconds,
        )
        conn = Connection(
            server,
            user=config.bind_dn,
            password=reveal(self._password),  # to the bind, and nowhere else
            authentication=SIMPLE,
            client_strategy=SYNC,
            read_only=True,
            raise_exceptions=False,
            # ldap3 packs this into SO_RCVTIMEO as whole seconds: a float breaks struct.pack.
            receive_timeout=math.ceil(config.receive_timeout_seconds),
            # ldap3's auto_range stops silently when a ranged read fails, and with it off it
            # crashes on ranged keys unless empty attributes are off: `_read_ranges` does it.
            auto_range=False,
            return_empty_attributes=False,
            # ldap3 would follow a referral result on a connection of its own, with TLS
            # settings of its own (StartTLS without certificate validation); the pager
            # follows or refuses referrals itself (`_follow_references`).
            auto_referrals=False,
        )
        try:
            conn.open()
            if mode == "starttls":
                conn.start_tls()
            bound = conn.bind()
        except (LDAPCertificateError, LDAPStartTLSError, LDAPCommunicationError) as exc:
            discard(conn)
            raise self._connect_error(url, exc) from exc
        if not bound:
            result = conn.result
            discard(conn)
            if result["result"] == RESULT_INVALID_CREDENTIALS:
                raise SourceAuthError(
                    f"{url}: the directory refused the bind as {config.bind_dn} (invalid "
                    f"credentials); check bind_dn and the password in "
                    f"{config.bind_password.describe()}"
                )
            raise SourceAuthError(
                f"{url}: the bind as {config.bind_dn} failed: {describe_result(result)}"
                + (
                    "; the server may require an encrypted connection (tls.mode ldaps/starttls)"
                    if mode == "none"
                    else ""
                )
            )
        return conn

    def _tls(self) -> Tls:
        tls = self.config.tls
        try:
            return Tls(
                validate=ssl.CERT_REQUIRED if tls.validate_certificate else ssl.CERT_NONE,
                ca_certs_file=str(tls.ca_file) if tls.ca_file else None,
            )
        except LDAPSSLConfigurationError as exc:
            raise ConfigError(
                f"{self.config.url}: tls.ca_file {tls.ca_file} cannot be used ({exc}); give the "
                "path of a PEM file holding the CA that signed the directory's certificate"
            ) from exc

    def _connect_error(self, url: str, exc: Exception) -> SourceUnreachableError:
        config = self.config
        text = str(exc)
        lowered = text.lower()
        if "wrong_version_number" in lowered or "wrong version number" in lowered:
            return SourceUnreachableError(
                f"{url}: the TLS handshake failed ({text}): the port does not speak TLS "
                "right now; check that tls.mode matches the port (ldaps: 636, starttls: 389)"
            )
        if isinstance(exc, LDAPCertificateError) or "certificate" in lowered or "ssl" in lowered:
            ca = config.tls.ca_file or "the system CA store"
            return SourceUnreachableError(
                f"{url}: the server's TLS certificate could not be validated with CA file "
                f"{ca} ({text}); set tls.ca_file to the CA that signed the directory's "
                "certificate (and check the certificate names this host)",
                # no retry fixes a certificate that cannot be verified
                transient=certificate_failure(exc) is None,
            )
        return SourceUnreachableError(
            f"{url}: cannot connect ({text}); check the host and port, that the "
            f"directory is running, and connect_timeout_seconds ({config.connect_timeout_seconds:g})"
        )
