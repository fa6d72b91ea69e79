"""A real OpenLDAP `slapd` in a temporary directory, for tests and the demo.

`SlapdServer` writes a minimal `slapd.conf` (back_mdb, the memberof overlay, the core/cosine/
inetorgperson/nis schemas), bulk-loads an LDIF offline with `slapadd` (fast, but no overlay
runs, so `memberOf` is not computed) or online with `ldapadd` after start (slower, overlays
run), and runs slapd in the foreground on 127.0.0.1 and a free port, optionally with an
`ldaps://` listener and StartTLS using a throw-away CA it generates. It needs the Debian
packages `slapd` and `ldap-utils`; without them it says to run `make setup`. It touches no
system service and removes its directory on `stop()`.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from usersync_sandbox.server import free_port

SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
DEFAULT_BASE_DN = "dc=example,dc=org"
DEFAULT_ADMIN_PASSWORD = "secret"
SAMPLE_LDIF = "sample.ldif"


class SlapdError(RuntimeError):
    """slapd (or slapadd/ldapadd) is missing, failed to start, or refused the data."""


@dataclass(frozen=True)
class TestCertificates:
    """PEM files of a throw-away CA and a server certificate for 127.0.0.1/localhost."""

    __test__ = False  # not a pytest test class despite the name

    ca_file: Path
    cert_file: Path
    key_file: Path


def find_binary(
    name: str,
    *,
    packages: str = "slapd and ldap-utils",
    error: type[RuntimeError] = SlapdError,
) -> str:
    """The path of a server program (OpenLDAP's by default; Samba's with other packages).

    Raises:
        error: not installed; the message says how to install it.
    """
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        raise error(f"{name} not found; run `make setup` (installs the Debian packages {packages})")
    return path


def stop_and_remove(
    process: subprocess.Popen[bytes] | None, directory: Path | None, *, timeout: float
) -> None:
    """Terminate a test server (kill it if it lingers) and delete its working directory."""
    if process is not None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def ldif_entry(dn: str, attributes: Mapping[str, str | Iterable[str]]) -> str:
    """One LDIF record; values that are not plain ASCII-safe strings are base64-encoded.

    Args:
        dn: the entry's DN, already escaped per RFC 4514 (e.g. `cn=Smith\\, John,ou=people,...`).
        attributes: attribute name to one value or several.

    Returns:
        The record followed by a blank line.
    """
    lines = [_ldif_line("dn", dn)]
    for name, values in attributes.items():
        for value in [values] if isinstance(values, str) else values:
            lines.append(_ldif_line(name, value))
    return "\n".join(lines) + "\n\n"


def _ldif_line(name: str, value: str) -> str:
    # RFC 2849 SAFE-STRING: ASCII, no NUL/CR/LF, not starting with space, colon or '<'.
    safe = (
        value.isascii()
        and not any(ch in value for ch in "\0\r\n")
        and not value.startswith((" ", ":", "<"))
        and not value.endswith(" ")
    )
    if safe:
        return f"{name}: {value}"
    return f"{name}:: {base64.b64encode(value.encode('utf-8')).decode('ascii')}"


def make_test_certificates(directory: Path, *, name: str = "usersync test CA") -> TestCertificates:
    """Generate a CA and a server certificate (SAN 127.0.0.1, localhost) signed by it.

    Uses the `cryptography` package (a dependency of Prefect, so present wherever usersync is).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    paths = TestCertificates(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
    )
    paths.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # slapd may drop privileges on some systems; the key must stay readable to it.
    paths.key_file.chmod(0o644)
    return paths


class SlapdServer:
    """OpenLDAP slapd on 127.0.0.1, in a temporary directory, loaded with an LDIF.

    Usage:

        with SlapdServer(ldif=text) as server:
            server.url, server.base_dn, server.admin_dn, server.admin_password

    Args:
        ldif: LDIF text or a path to an LDIF file; it must contain the suffix entry
            (`base_dn`) itself. None starts an empty database.
        load: "offline" runs `slapadd` before start (fast; `memberOf` is not computed, write
            it into the LDIF if needed); "online" runs `ldapadd` after start (overlays run).
        base_dn: the database suffix.
        admin_password: the rootdn's password (rootdn is `cn=admin,<base_dn>`).
        tls: also listen on ldaps:// and allow StartTLS, with a generated test CA
            (`certificates.ca_file`).
        certificates: with `tls`, serve these instead of generating new ones (so that two
            servers share one CA, as the servers of one directory do).
        database_config: extra lines for the database section (e.g. `limits ...`).
        syncprov: also run the syncprov overlay, which keeps the suffix entry's `contextCSN`
            (the newest entryCSN) current: what incremental reads tie their watermark to.
            entryCSN is indexed (eq) with it, which lets slapd answer `(entryCSN>=...)`
            from the index. objectClass is always indexed (eq), as OpenLDAP advises for any
            database: without it back-mdb scans every entry for any filtered subtree search,
            `(entryCSN>=...)` included (80 ms of the server's time for a change search of
            100k users that finds nothing, against 1 ms with the index).
        start_timeout: seconds to wait for slapd to accept connections.
        port: the `ldap://` port to listen on; 0 (default) picks a free one. A pinned port
            that is taken is an error (no other port is tried).
    """

    def __init__(
        self,
        ldif: str | Path | None = None,
        *,
        load: Literal["offline", "online"] = "offline",
        base_dn: str = DEFAULT_BASE_DN,
        admin_password: str = DEFAULT_ADMIN_PASSWORD,
        tls: bool = False,
        certificates: TestCertificates | None = None,
        database_config: Sequence[str] = (),
        syncprov: bool = False,
        start_timeout: float = 10.0,
        port: int = 0,
    ) -> None:
        self.base_dn = base_dn
        self.admin_dn = f"cn=admin,{base_dn}"
        self.admin_password = admin_password
        self.certificates: TestCertificates | None = certificates
        self._ldif = ldif
        self._load = load
        self._tls = tls
        self._database_config = tuple(database_config)
        self._syncprov = syncprov
        self._start_timeout = start_timeout
        self._pinned_port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self.port = 0
        self.ldaps_port = 0

    # -- public surface ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The plain `ldap://` URL (StartTLS available when started with `tls=True`)."""
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        """The `ldaps://` URL; only when started with `tls=True`."""
        if not self._tls:
            raise SlapdError("this SlapdServer was started without tls=True: no ldaps:// URL")
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @classmethod
    def for_demo(cls, **kwargs: object) -> SlapdServer:
        """A started server loaded online (so `memberOf` is maintained) with the sample directory.

        The caller stops it (`stop()` or a `with` block).
        """
        sample = resources.files("usersync_sandbox") / "data" / SAMPLE_LDIF
        server = cls(ldif=sample.read_text(encoding="utf-8"), load="online", **kwargs)  # type: ignore[arg-type]
        server.start()
        return server

    def start(self) -> SlapdServer:
        """Write the configuration, load the data and start slapd; wait until it answers.

        Raises:
            SlapdError: a program is missing, the LDIF was refused, or slapd did not start in
                time; the message includes slapd's own error output.
        """
        if self._process is not None:
            return self
        slapd = find_binary("slapd")
        self._dir = Path(tempfile.mkdtemp(prefix="usersync-slapd-"))
        try:
            (self._dir / "db").mkdir()
            if self._tls and self.certificates is None:
                self.certificates = make_test_certificates(self._dir / "tls")
            config = self._write_config()
            if self._ldif is not None and self._load == "offline":
                self._slapadd(config)
            self._launch(slapd, config)
            if self._ldif is not None and self._load == "online":
                self.add_ldif(self._ldif_text())
        except BaseException:
            self.stop()
            raise
        return self

    def add_ldif(self, ldif: str) -> None:
        """Add entries to the running server as the rootdn (`ldapadd`); overlays run.

        Raises:
            SlapdError: ldapadd is missing or the server refused an entry.
        """
        assert self._dir is not None, "start() the server first"
        path = self._dir / f"online-{time.monotonic_ns()}.ldif"
        path.write_text(ldif, encoding="utf-8")
        command = [find_binary("ldapadd"), "-x", "-H", self.url, "-D", self.admin_dn]
        command += ["-w", self.admin_password, "-f", str(path)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise SlapdError(f"ldapadd of {path} failed ({done.returncode}): {done.stderr.strip()}")

    def stop(self) -> None:
        """Stop slapd and remove its directory. Safe to call twice."""
        stop_and_remove(self._process, self._dir, timeout=10)
        self._process, self._dir = None, None

    def __enter__(self) -> SlapdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------

    def _ldif_text(self) -> str:
        if isinstance(self._ldif, Path):
            return self._ldif.read_text(encoding="utf-8")
        return self._ldif or ""

    def _write_config(self) -> Path:
        assert self._dir is not None
        lines = [f"include {SCHEMA_DIR / name}.schema" for name in SCHEMAS]
        lines += [f"modulepath {MODULE_DIR}", "moduleload back_mdb", "moduleload memberof"]
        if self._syncprov:
            lines.append("moduleload syncprov")
        lines.append(f"pidfile {self._dir / 'slapd.pid'}")
        if self.certificates is not None:
            lines += [
                f"TLSCACertificateFile {self.certificates.ca_file}",
                f"TLSCertificateFile {self.certificates.cert_file}",
                f"TLSCertificateKeyFile {self.certificates.key_file}",
            ]
        lines += [
            "database mdb",
            "maxsize 1073741824",
            f'suffix "{self.base_dn}"',
            f'rootdn "{self.admin_dn}"',
            f"rootpw {self.admin_password}",
            f"directory {self._dir / 'db'}",
            *self._database_config,
            "index objectClass eq",
            *(["index entryCSN eq"] if self._syncprov else []),
            "overlay memberof",
            *(["overlay syncprov"] if self._syncprov else []),
        ]
        path = self._dir / "slapd.conf"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def _slapadd(self, config: Path) -> None:
        assert self._dir is not None
        path = self._ldif if isinstance(self._ldif, Path) else self._dir / "data.ldif"
        if not isinstance(self._ldif, Path):
            path.write_text(self._ldif or "", encoding="utf-8")
        command = [find_binary("slapadd"), "-q", "-f", str(config), "-l", str(path)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise SlapdError(f"slapadd of {path} failed ({done.returncode}): {done.stderr.strip()}")

    def _launch(self, slapd: str, config: Path) -> None:
        assert self._dir is not None
        # The port is free when chosen but another process could take it before slapd binds;
        # a few attempts make that race harmless. A pinned port gets one attempt, and is
        # checked first: another program listening there would pass the readiness check.
        if self._pinned_port and _accepts(self._pinned_port):
            raise _pinned_port_taken(self._pinned_port)
        for _attempt in range(1 if self._pinned_port else 3):
            self.port = self._pinned_port or free_port()
            urls = [f"ldap://127.0.0.1:{self.port}/"]
            if self._tls:
                self.ldaps_port = free_port()
                urls.append(f"ldaps://127.0.0.1:{self.ldaps_port}/")
            stderr_path = self._dir / "slapd.stderr"
            with stderr_path.open("wb") as stderr:
                # `-d 0`: stay in the foreground (no fork), so we own the process and its output.
                self._process = subprocess.Popen(
                    [slapd, "-f", str(config), "-h", " ".join(urls), "-d", "0"],
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            if self._wait_ready(stderr_path):
                return
        if self._pinned_port:
            raise _pinned_port_taken(self._pinned_port)
        raise SlapdError(
            f"slapd did not start (config {config}): "
            f"{stderr_path.read_text(errors='replace').strip() or 'no output'}"
        )

    def _wait_ready(self, stderr_path: Path) -> bool:
        """True once every listener accepts connections; False if slapd exited (port taken).

        Raises:
            SlapdError: still not answering after `start_timeout` seconds.
        """
        assert self._process is not None
        ports = [self.port] + ([self.ldaps_port] if self._tls else [])
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                output = stderr_path.read_text(errors="replace")
                self._process = None
                if "Address already in use" in output:
                    return False
                raise SlapdError(
                    f"slapd exited at start with code {code}: {output.strip() or 'no output'}"
                )
            if all(_accepts(port) for port in ports):
                return True
            time.sleep(0.05)
        output = stderr_path.read_text(errors="replace")
        raise SlapdError(
            f"slapd did not accept connections on 127.0.0.1:{ports} within "
            f"{self._start_timeout:g} s: {output.strip() or 'no output'}"
        )


def _pinned_port_taken(port: int) -> SlapdError:
    return SlapdError(
        f"slapd cannot listen on the pinned port 127.0.0.1:{port}: it is in use; "
        "free it or pin another"
    )


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
