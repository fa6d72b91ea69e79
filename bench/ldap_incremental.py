"""Benchmark: an incremental OpenLDAP read (entryCSN past contextCSN) against a full read, in one run.

Writes the directory of `bench/ldap_extract.py` (default 100,000 users, 5,000 groups, 1,000,000
member values), loads it offline into a `SlapdServer` with the syncprov overlay (which keeps
the suffix's contextCSN; `index entryCSN eq` with it), and on that server:

1. a full read through `extract_with_watermark` (no watermark yet), whose checkpoint is saved
   as after a successful run;
2. changes `--changed` of the users (a new title and mail each) and the same share of the
   groups (one member removed, one added each), over one connection;
3. an incremental read through `extract_with_watermark` (store load, contextCSN, the change
   searches, merge), and the change searches alone (`LdapSource.read_changes`) once more;
4. a full read again (`full=True`), timed, whose snapshot the incremental one must equal.

It prints the seconds of each step and the ratio incremental / full. Figures are noisy
(2 cores shared with slapd): compare within one run.

    .venv/bin/python bench/ldap_incremental.py [--users 100000] [--groups 5000]
        [--members 1000000] [--changed 0.01] [--deref never|searching|finding|always]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import pandas as pd
from ldap3 import MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE, Connection, Server
from ldap_extract import ATTRIBUTES, BASE_DN, GROUPS, PEOPLE, source_config, write_ldif

from usersync.model import SourceSnapshot
from usersync.sandbox.slapd import SlapdServer
from usersync.sources.ldap import LdapSource
from usersync.sources.watermark import advance_watermark, extract_with_watermark, merge_changes
from usersync.store import Store

PROFILE = "bench-incremental"
SEED = 20261130


def change_directory(server: SlapdServer, users: int, groups: int, share: float) -> tuple[int, int]:
    """Change `share` of the users and of the groups; returns how many of each."""
    rng = random.Random(SEED)
    conn = Connection(Server(server.url), server.admin_dn, server.admin_password, auto_bind=True)
    changed_users = rng.sample(range(users), max(1, int(users * share)))
    for number in changed_users:
        uid = f"u{number:07d}"
        change = {
            "title": [(MODIFY_REPLACE, ["Changed"])],
            "mail": [(MODIFY_REPLACE, [f"{uid}.changed@example.org"])],
        }
        assert conn.modify(f"uid={uid},{PEOPLE}", change), conn.result
    changed_groups = rng.sample(range(groups), max(1, int(groups * share)))
    for number in changed_groups:
        dn = f"cn=g{number:05d},{GROUPS}"
        conn.search(dn, "(objectClass=*)", search_scope="BASE", attributes=["member"])
        members = conn.response[0]["raw_attributes"]["member"]
        present = {value.decode() for value in members}
        newcomer = next(
            f"uid=u{i:07d},{PEOPLE}"
            for i in iter(lambda: rng.randrange(users), None)
            if f"uid=u{i:07d},{PEOPLE}" not in present
        )
        change = {"member": [(MODIFY_ADD, [newcomer])]}
        if len(members) > 1:
            change = {"member": [(MODIFY_DELETE, [members[0].decode()]), (MODIFY_ADD, [newcomer])]}
        assert conn.modify(dn, change), conn.result
    conn.unbind()
    return len(changed_users), len(changed_groups)


def same_snapshot(one: SourceSnapshot, other: SourceSnapshot) -> bool:
    def rows(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
        return frame.sort_values(key).reset_index(drop=True)

    return rows(one.users, ["source_id"]).equals(rows(other.users, ["source_id"])) and rows(
        one.memberships, ["source_id", "source_group"]
    ).equals(rows(other.memberships, ["source_id", "source_group"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=5_000)
    parser.add_argument("--members", type=int, default=1_000_000, help="member values in all")
    parser.add_argument("--changed", type=float, default=0.01, help="share of users and groups")
    parser.add_argument(
        "--deref", choices=["never", "searching", "finding", "always"], default="never"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="usersync-bench-") as tmp:
        ldif = Path(tmp) / "data.ldif"
        began = time.monotonic()
        write_ldif(ldif, args.users, args.groups, args.members)
        print(f"LDIF written in {time.monotonic() - began:.1f} s")
        began = time.monotonic()
        with SlapdServer(ldif=ldif, load="offline", base_dn=BASE_DN, syncprov=True) as server:
            print(
                f"slapadd + start (syncprov, index entryCSN eq): {time.monotonic() - began:.1f} s"
            )
            ldif.unlink()
            config = source_config(server, args.deref, incremental={"enabled": True})
            store = Store.open(f"sqlite:///{Path(tmp) / 'store.db'}")

            with LdapSource.from_config(config) as source:
                began = time.monotonic()
                first = extract_with_watermark(source, PROFILE, ATTRIBUTES, store)
                first_full = time.monotonic() - began
            began = time.monotonic()
            advance_watermark(store, first, statuses=["succeeded"], dry_run=False)
            saved = time.monotonic() - began
            print(f"full read 1 (no watermark):     {first_full:6.2f} s; {first.notes[-1][:60]}")
            print(f"checkpoint saved (not a read):  {saved:6.2f} s")

            began = time.monotonic()
            users, groups = change_directory(server, args.users, args.groups, args.changed)
            print(f"changed {users} users and {groups} groups in {time.monotonic() - began:.1f} s")

            began = time.monotonic()
            _, parts = store.source_watermark(PROFILE)
            store_load = time.monotonic() - began
            with LdapSource.from_config(config) as source:
                began = time.monotonic()
                incremental = extract_with_watermark(source, PROFILE, ATTRIBUTES, store)
                incremental_total = time.monotonic() - began
                stored = store.source_watermark(PROFILE)[0]
                began = time.monotonic()
                source.position()
                changes = source.read_changes(
                    ATTRIBUTES,
                    since=stored.usn,
                    known_users=parts["users"],
                    known_groups=parts["groups"],
                )
                searches = time.monotonic() - began
                began = time.monotonic()
                merge_changes(parts["users"], parts["groups"], parts["memberships"], changes)
                merging = time.monotonic() - began
                began = time.monotonic()
                full = extract_with_watermark(source, PROFILE, ATTRIBUTES, store, full=True)
                second_full = time.monotonic() - began
            store.close()

            print(f"incremental, whole:             {incremental_total:6.2f} s; {incremental.notes[0][:44]}")  # fmt: skip
            print(f"  of which loading the cache:   {store_load:6.2f} s (measured apart)")
            print(
                f"  position + read_changes alone: {searches:5.2f} s "
                f"({len(changes.users)} users, {len(changes.groups)} groups read)"
            )
            print(f"  merge_changes alone:          {merging:6.2f} s")
            print(f"full read 2 (requested):        {second_full:6.2f} s")
            print(
                f"incremental / full read 2: whole {incremental_total / second_full:.1%}, "
                f"searches alone {searches / second_full:.1%} (target <= 10%)"
            )
            print(
                "incremental snapshot equals the full read: "
                + ("yes" if same_snapshot(incremental, full) else "NO (MISMATCH)")
            )


if __name__ == "__main__":
    main()
