"""A real Samba Active Directory domain controller in a temporary directory, for tests and benches.

`SambaDC` provisions a fresh domain with `samba-tool domain provision` (no DNS backend, bound
to the loopback interface only), points Samba's TLS at a throw-away CA and a certificate for
127.0.0.1/localhost that it generates (Samba's own self-signed certificate names the DC's
host name, which nothing here resolves, so a validating client could not accept it), and runs
`samba -i -M single` in the foreground with only its LDAP service. It is ready once an LDAPS
bind validated against that CA succeeds. AD listens on fixed ports (389, 636, 3268, 3269), so
only one DC can run per machine: `start` refuses clearly when the ports are taken. It needs
root and the Debian packages `samba`, `samba-ad-dc` and `samba-ad-provision` (installed by
`make setup`); `ldb:nosync` makes writes about three times faster, at the price of a DC that
would not survive a crash, which a test DC never needs to.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

from usersync_sandbox.slapd import (
    TestCertificates,
    find_binary,
    make_test_certificates,
    stop_and_remove,
)

DEFAULT_REALM = "EXAMPLE.TEST"
DEFAULT_DOMAIN = "EXAMPLE"
#: Meets AD's default complexity rules (three character classes, 7+ characters).
DEFAULT_ADMIN_PASSWORD = "Usersync!Admin1"
HOST = "127.0.0.1"
LDAP_PORT = 389
LDAPS_PORT = 636
#: Every TCP port the LDAP service binds; any of them taken makes samba fail at start.
AD_PORTS = (389, 636, 3268, 3269)
#: How much of samba's output an error quotes.
LOG_TAIL_CHARS = 3000


class SambaError(RuntimeError):
    """Samba is missing, could not be provisioned or started, or its ports are taken."""


def find_samba_program(name: str) -> str:
    """The path of a Samba program (`samba`, `samba-tool`).

    Raises:
        SambaError: not installed; the message says how to install it.
    """
    return find_binary(name, packages="samba, samba-ad-dc and samba-ad-provision", error=SambaError)


def samba_available() -> str | None:
    """None when a Samba DC can be started here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "a Samba AD DC needs root (it binds ports 389 and 636)"
    try:
        find_samba_program("samba")
        find_samba_program("samba-tool")
    except SambaError as exc:
        return str(exc)
    if not Path("/usr/share/samba/setup/ad-schema").is_dir():
        return "the AD schema files are missing; install the Debian package samba-ad-provision"
    return None


class SambaDC:
    """A Samba AD DC on 127.0.0.1 (ports 389/636), in a temporary directory.

    Usage:

        with SambaDC() as dc:
            dc.ldaps_url, dc.base_dn, dc.admin_upn, dc.admin_password, dc.ca_file

    Args:
        realm: the Kerberos realm; its lower-case form is the DNS domain (`example.test`),
            whose labels make the base DN (`DC=example,DC=test`).
        domain: the NetBIOS domain name.
        admin_password: the password of `Administrator`.
        start_timeout: seconds to wait for the DC to answer an LDAPS bind after start.
    """

    def __init__(
        self,
        *,
        realm: str = DEFAULT_REALM,
        domain: str = DEFAULT_DOMAIN,
        admin_password: str = DEFAULT_ADMIN_PASSWORD,
        start_timeout: float = 60.0,
    ) -> None:
        self.realm = realm.upper()
        self.domain = domain
        self.admin_password = admin_password
        self.dns_domain = realm.lower()
        self.base_dn = ",".join(f"DC={label}" for label in self.dns_domain.split("."))
        self.start_timeout = start_timeout
        self.certificates: TestCertificates | None = None
        #: Seconds spent in `samba-tool domain provision`, and from launch to a working bind.
        self.provision_seconds = 0.0
        self.start_seconds = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    # -- public surface ------------------------------------------------------------------

    @property
    def ldap_url(self) -> str:
        """Plain LDAP (StartTLS available; Samba refuses simple binds without TLS)."""
        return f"ldap://{HOST}:{LDAP_PORT}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{HOST}:{LDAPS_PORT}"

    @property
    def admin_dn(self) -> str:
        return f"CN=Administrator,CN=Users,{self.base_dn}"

    @property
    def admin_upn(self) -> str:
        """`Administrator@<dns domain>`: AD accepts a UPN as the bind name."""
        return f"Administrator@{self.dns_domain}"

    @property
    def ca_file(self) -> Path:
        """PEM of the CA that signed the DC's LDAPS/StartTLS certificate."""
        if self.certificates is None:
            raise SambaError("the DC is not started: no CA file yet")
        return self.certificates.ca_file

    def start(self) -> SambaDC:
        """Provision the domain and start samba; wait until an LDAPS bind succeeds.

        Raises:
            SambaError: not root, Samba missing, a port taken, provisioning failed, or the
                DC did not answer in time; the message quotes Samba's own output.
        """
        if self._process is not None:
            return self
        reason = samba_available()
        if reason:
            raise SambaError(reason)
        taken = [port for port in AD_PORTS if _accepts(port)]
        if taken:
            raise SambaError(
                f"port(s) {', '.join(map(str, taken))} on {HOST} are already in use (another "
                "Samba DC or LDAP server?); only one AD DC can run per machine: stop the other "
                "one, or share one DC per test session"
            )
        self._dir = Path(tempfile.mkdtemp(prefix="usersync-samba-"))
        try:
            self.certificates = make_test_certificates(
                self._dir / "tls", name="usersync test AD CA"
            )
            # Samba refuses a private key that others may read.
            self.certificates.key_file.chmod(0o600)
            self._provision()
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop samba and remove its directory. Safe to call twice."""
        stop_and_remove(self._process, self._dir, timeout=15)
        self._process, self._dir = None, None

    def __enter__(self) -> SambaDC:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------

    def _options(self) -> list[str]:
        assert self._dir is not None and self.certificates is not None
        options = {
            "interfaces": "lo",
            "bind interfaces only": "yes",
            # LDAP only: no SMB, Kerberos, RPC or DNS ports, and a faster start.
            "server services": "ldap",
            "tls enabled": "yes",
            "tls keyfile": str(self.certificates.key_file),
            "tls certfile": str(self.certificates.cert_file),
            "tls cafile": str(self.certificates.ca_file),
            "ldb:nosync": "true",
            "log file": str(self._dir / "samba.log"),
            "log level": "1",
        }
        return [f"--option={name}={value}" for name, value in options.items()]

    def _provision(self) -> None:
        assert self._dir is not None
        command = [
            find_samba_program("samba-tool"),
            "domain",
            "provision",
            f"--targetdir={self._dir / 'dc'}",
            f"--realm={self.realm}",
            f"--domain={self.domain}",
            "--server-role=dc",
            "--dns-backend=NONE",
            "--host-name=dc1",
            f"--adminpass={self.admin_password}",
            *self._options(),
        ]
        began = time.monotonic()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired as exc:
            raise SambaError(
                f"samba-tool domain provision did not finish in {exc.timeout} s"
            ) from exc
        self.provision_seconds = time.monotonic() - began
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()[-LOG_TAIL_CHARS:]
            raise SambaError(f"samba-tool domain provision failed ({done.returncode}): {output}")

    def _launch(self) -> None:
        assert self._dir is not None
        config = self._dir / "dc" / "etc" / "smb.conf"
        output_path = self._dir / "samba.out"
        began = time.monotonic()
        with output_path.open("wb") as output:
            # -i: foreground, logs to stdout; -M single: one process we own and can stop.
            self._process = subprocess.Popen(
                [find_samba_program("samba"), "-s", str(config), "-i", "-M", "single"],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait_ready(output_path)
        self.start_seconds = time.monotonic() - began

    def _wait_ready(self, output_path: Path) -> None:
        """Return once an LDAPS bind validated against the test CA succeeds.

        Raises:
            SambaError: samba exited, or did not answer within `start_timeout` seconds.
        """
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        last_error = "no connection yet"
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise SambaError(
                    f"samba exited at start with code {code}: {self._log_tail(output_path)}"
                )
            if _accepts(LDAPS_PORT):
                try:
                    self._bind_check()
                    return
                except (OSError, RuntimeError) as exc:
                    last_error = str(exc)
            time.sleep(0.2)
        raise SambaError(
            f"the Samba DC did not accept an LDAPS bind on {self.ldaps_url} within "
            f"{self.start_timeout:g} s (last error: {last_error}); samba's output: "
            f"{self._log_tail(output_path)}"
        )

    def _bind_check(self) -> None:
        from ldap3 import NONE, Connection, Server, Tls

        tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca_file))
        server = Server(self.ldaps_url, use_ssl=True, tls=tls, get_info=NONE, connect_timeout=5)
        conn = Connection(server, user=self.admin_upn, password=self.admin_password)
        try:
            if not conn.bind():
                raise RuntimeError(f"bind refused: {conn.result.get('message')}")
        except Exception as exc:  # ldap3 raises its own types for socket and TLS errors
            raise RuntimeError(str(exc)) from exc
        finally:
            conn.unbind()

    def _log_tail(self, output_path: Path) -> str:
        assert self._dir is not None
        parts = []
        for path in (output_path, self._dir / "samba.log"):
            if path.exists():
                parts.append(path.read_text(errors="replace").strip())
        return ("\n".join(parts) or "no output")[-LOG_TAIL_CHARS:]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False
