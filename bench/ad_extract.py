"""Benchmark: extracting N Active Directory users with LdapSource vs `ldapsearch`, in one run.

Starts a Samba AD DC (`usersync_sandbox.samba.SambaDC`, needs root and `make setup`), creates
N users (default 10,000) over LDAPS, pipelined on one connection, then times the same paged
query (page size 1000, the same attributes, validated LDAPS) through `LdapSource.extract` and
through OpenLDAP's `ldapsearch -E pr=1000/noprompt`, and prints both.

    .venv/bin/python bench/ad_extract.py [--users 10000]
"""

from __future__ import annotations

import argparse
import os
import ssl
import subprocess
import time

from ldap3 import ASYNC, NONE, Connection, Server, Tls
from usersync_sandbox.samba import SambaDC

from usersync.config import LdapSourceConfig, LdapTls, SecretRef
from usersync.sources.ldap import LdapSource

ATTRIBUTES = ["sAMAccountName", "userPrincipalName", "mail", "displayName", "givenName", "sn"]
USER_FILTER = "(&(objectCategory=person)(objectClass=user))"
PAGE_SIZE = 1000


def create_users(dc: SambaDC, ou: str, count: int) -> float:
    """Add `count` users under `ou` (pipelined adds); return the seconds it took."""
    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(dc.ca_file))
    server = Server(dc.ldaps_url, use_ssl=True, tls=tls, get_info=NONE)
    conn = Connection(
        server, user=dc.admin_upn, password=dc.admin_password, client_strategy=ASYNC, auto_bind=True
    )
    began = time.monotonic()
    conn.get_response(conn.add(ou, ["top", "organizationalUnit"], {}))
    pending = []
    for number in range(count):
        sam = f"u{number:06d}"
        pending.append(
            conn.add(
                f"CN={sam},{ou}",
                ["top", "person", "organizationalPerson", "user"],
                {
                    "sAMAccountName": sam,
                    "userPrincipalName": f"{sam}@{dc.dns_domain}",
                    "mail": f"{sam}@{dc.dns_domain}",
                    "displayName": f"User {number}",
                    "givenName": "User",
                    "sn": str(number),
                    "userAccountControl": "544",
                },
            )
        )
        if len(pending) >= 500:  # bound what is in flight
            for message_id in pending:
                _, result = conn.get_response(message_id, timeout=120)
                if result["result"] != 0:
                    raise RuntimeError(f"add failed: {result}")
            pending.clear()
    for message_id in pending:
        conn.get_response(message_id, timeout=120)
    conn.unbind()
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    args = parser.parse_args()
    with SambaDC() as dc:
        print(f"DC: provisioned {dc.provision_seconds:.1f} s, started {dc.start_seconds:.1f} s")
        ou = f"OU=bench,{dc.base_dn}"
        print(f"created {args.users} users in {create_users(dc, ou, args.users):.1f} s")
        os.environ["USERSYNC_BENCH_AD_PASSWORD"] = dc.admin_password
        config = LdapSourceConfig(
            kind="ldap",
            flavour="active_directory",
            url=dc.ldaps_url,
            tls=LdapTls(mode="ldaps", ca_file=dc.ca_file),
            bind_dn=dc.admin_upn,
            bind_password=SecretRef(env="USERSYNC_BENCH_AD_PASSWORD"),
            user_base_dn=ou,
            group_base_dn=ou,
            page_size=PAGE_SIZE,
        )
        began = time.monotonic()
        with LdapSource.from_config(config) as source:
            snapshot = source.extract(ATTRIBUTES)
        ours = time.monotonic() - began
        command = [
            "ldapsearch", "-LLL", "-x", "-H", dc.ldaps_url, "-D", dc.admin_upn,
            "-w", dc.admin_password, "-b", ou, "-E", f"pr={PAGE_SIZE}/noprompt",
            USER_FILTER, "objectGUID", "userAccountControl", "accountExpires", *ATTRIBUTES,
        ]  # fmt: skip
        began = time.monotonic()
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "LDAPTLS_CACERT": str(dc.ca_file)},
        )
        theirs = time.monotonic() - began
        entries = done.stdout.count("\ndn: ") + done.stdout.startswith("dn: ")
        print(f"LdapSource.extract: {len(snapshot.users)} users in {ours:.2f} s")
        print(f"ldapsearch (same query, paged {PAGE_SIZE}): {entries} entries in {theirs:.2f} s")


if __name__ == "__main__":
    main()
