"""Benchmark: a full OpenLDAP read with LdapSource vs `ldapsearch`, in one run.

Writes an LDIF (default 100,000 inetOrgPerson users with 8 attributes, 5,000 groupOfNames
holding 1,000,000 member values in all), loads it offline with `slapadd` into a
`usersync_sandbox.slapd.SlapdServer` (needs `make setup`), then times on the same server:

- `ldapsearch -E pr=1000/noprompt` on the users query and on the groups query (the filters,
  attributes and alias dereferencing LdapSource asks for, output to /dev/null);
- `LdapSource.extract` (page size 1000, membership from the groups' `member` values), whole;
- with `--profile`, `LdapSource.extract` again under cProfile, and prints where the time goes.

It prints users/s, seconds, the ratio to ldapsearch and the process's peak RSS before and
after the extract. Figures are noisy: compare within one run.

    .venv/bin/python bench/ldap_extract.py [--users 100000] [--groups 5000]
        [--members 1000000] [--deref never|searching|finding|always] [--profile]

`--deref` is the profile's `deref_aliases` and ldapsearch's `-a` alike; it defaults to
ldapsearch's own default, never (the profile's default, always, costs slapd about five times
more on this data, on both sides).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from usersync_sandbox.server import peak_rss_mb
from usersync_sandbox.slapd import SlapdServer, find_binary, ldif_entry

from usersync.config import LdapSourceConfig, SecretRef
from usersync.sources.ldap import LdapSource

BASE_DN = "dc=example,dc=org"
PEOPLE = f"ou=people,{BASE_DN}"
GROUPS = f"ou=groups,{BASE_DN}"
#: The 8 user attributes written and read (besides entryUUID, the id).
ATTRIBUTES = [
    "uid",
    "cn",
    "sn",
    "givenName",
    "mail",
    "displayName",
    "employeeNumber",
    "title",
]
PAGE_SIZE = 1000
PASSWORD_ENV = "USERSYNC_BENCH_LDAP_PASSWORD"
SEED = 20240611
#: The profile's `deref_aliases` as ldapsearch's `-a` names it.
LDAPSEARCH_DEREF = {"never": "never", "searching": "search", "finding": "find", "always": "always"}


def write_ldif(path: Path, users: int, groups: int, members: int) -> None:
    """Write the directory to `path`, streaming (the process keeps no copy of it)."""
    rng = random.Random(SEED)
    titles = ["Engineer", "Manager", "Analyst", "Designer", "Director", "Support"]
    with path.open("w", encoding="utf-8") as out:
        out.write(ldif_entry(BASE_DN, {"objectClass": ["dcObject", "organization"], "dc": "example", "o": "Example"}))  # fmt: skip
        for ou in ("people", "groups"):
            out.write(ldif_entry(f"ou={ou},{BASE_DN}", {"objectClass": "organizationalUnit", "ou": ou}))  # fmt: skip
        for number in range(users):
            uid = f"u{number:07d}"
            given, family = f"Given{number % 997}", f"Family{number}"
            out.write(
                ldif_entry(
                    f"uid={uid},{PEOPLE}",
                    {
                        "objectClass": "inetOrgPerson",
                        "uid": uid,
                        "cn": f"{given} {family}",
                        "sn": family,
                        "givenName": given,
                        "mail": f"{uid}@example.org",
                        "displayName": f"{given} {family}",
                        "employeeNumber": str(100000 + number),
                        "title": titles[number % len(titles)],
                    },
                )
            )
        # Member counts: `members` spread evenly over the groups (remainder to the first ones),
        # each group a random sample of distinct users.
        share, extra = divmod(members, groups) if groups else (0, 0)
        for number in range(groups):
            size = min(users, share + (1 if number < extra else 0))
            chosen = sorted(rng.sample(range(users), size))
            out.write(
                ldif_entry(
                    f"cn=g{number:05d},{GROUPS}",
                    {
                        "objectClass": "groupOfNames",
                        "cn": f"g{number:05d}",
                        # groupOfNames requires a member: an empty group lists the admin.
                        "member": [f"uid=u{i:07d},{PEOPLE}" for i in chosen]
                        or [f"cn=admin,{BASE_DN}"],
                    },
                )
            )


def ldapsearch(
    server: SlapdServer, base: str, search_filter: str, attributes: list[str], deref: str
) -> float:
    """Seconds for one paged `ldapsearch` of `base`, output discarded."""
    command = [
        find_binary("ldapsearch"), "-LLL", "-x", "-H", server.url, "-D", server.admin_dn,
        "-w", server.admin_password, "-b", base, "-E", f"pr={PAGE_SIZE}/noprompt",
        "-a", LDAPSEARCH_DEREF[deref], search_filter, *attributes,
    ]  # fmt: skip
    began = time.monotonic()
    with open(os.devnull, "wb") as sink:
        subprocess.run(command, stdout=sink, stderr=subprocess.PIPE, check=True)
    return time.monotonic() - began


def source_config(server: SlapdServer, deref: str, **settings: Any) -> LdapSourceConfig:
    """The benchmarks' OpenLDAP source on `server`, bound as its rootdn over cleartext (as
    ldapsearch is); sets the password's environment variable."""
    os.environ[PASSWORD_ENV] = server.admin_password
    return LdapSourceConfig(
        kind="ldap",
        url=server.url,
        allow_cleartext_bind=True,
        bind_dn=server.admin_dn,
        bind_password=SecretRef(env=PASSWORD_ENV),
        user_base_dn=PEOPLE,
        group_base_dn=GROUPS,
        page_size=PAGE_SIZE,
        membership="group_member",
        deref_aliases=deref,
        **settings,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=5_000)
    parser.add_argument("--members", type=int, default=1_000_000, help="member values in all")
    parser.add_argument("--deref", choices=sorted(LDAPSEARCH_DEREF), default="never")
    parser.add_argument("--profile", action="store_true", help="profile a second extract")
    parser.add_argument("--top", type=int, default=25, help="profile lines to print")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="usersync-bench-") as tmp:
        ldif = Path(tmp) / "data.ldif"
        began = time.monotonic()
        write_ldif(ldif, args.users, args.groups, args.members)
        print(
            f"LDIF: {args.users} users, {args.groups} groups, {args.members} member values, "
            f"{ldif.stat().st_size / 1e6:.0f} MB written in {time.monotonic() - began:.1f} s"
        )
        began = time.monotonic()
        with SlapdServer(ldif=ldif, load="offline", base_dn=BASE_DN) as server:
            print(f"slapadd + start: {time.monotonic() - began:.1f} s")
            ldif.unlink()
            config = source_config(server, args.deref)
            user_attrs = [config.id_attribute, *ATTRIBUTES]
            group_attrs = [
                config.id_attribute,
                config.group_name_attribute,
                *config.member_attributes,
            ]
            # Warm slapd's cache (and the page cache) once, so neither side pays for it.
            ldapsearch(server, PEOPLE, config.user_filter, user_attrs, args.deref)
            ldapsearch(server, GROUPS, config.group_filter, group_attrs, args.deref)
            theirs_users = ldapsearch(server, PEOPLE, config.user_filter, user_attrs, args.deref)
            theirs_groups = ldapsearch(server, GROUPS, config.group_filter, group_attrs, args.deref)
            theirs = theirs_users + theirs_groups

            rss_before = peak_rss_mb()
            began = time.monotonic()
            with LdapSource.from_config(config) as source:
                snapshot = source.extract(ATTRIBUTES)
            ours = time.monotonic() - began
            rss_after = peak_rss_mb()
            counts = snapshot.counts

            print(
                f"ldapsearch users  (paged {PAGE_SIZE}): {theirs_users:6.2f} s "
                f"({args.users / theirs_users:,.0f} users/s)"
            )
            print(f"ldapsearch groups (paged {PAGE_SIZE}): {theirs_groups:6.2f} s")
            print(f"ldapsearch total:                  {theirs:6.2f} s (aliases: {args.deref})")
            print(
                f"LdapSource.extract:                {ours:6.2f} s "
                f"({counts['users'] / ours:,.0f} users/s), {ours / theirs:.1f}x ldapsearch; "
                f"{counts['users']} users, {counts['groups']} groups, "
                f"{counts['memberships']} memberships"
            )
            print(f"peak RSS: {rss_before:.0f} MB before the extract, {rss_after:.0f} MB after")
            del snapshot

            if args.profile:
                profiler = cProfile.Profile()
                began = time.monotonic()
                with LdapSource.from_config(config) as source:
                    profiler.enable()
                    source.extract(ATTRIBUTES)
                    profiler.disable()
                print(f"\nprofiled extract: {time.monotonic() - began:.2f} s (cProfile overhead)")
                for order in ("tottime", "cumulative"):
                    text = io.StringIO()
                    stats = pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(order)
                    stats.print_stats(args.top)
                    print(f"-- by {order} --")
                    print(text.getvalue().split("\n", 6)[-1].rstrip())


if __name__ == "__main__":
    main()
