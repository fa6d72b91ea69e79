"""Benchmark: an incremental OpenLDAP read (entryCSN past contextCSN) against a full read, in one run.

Writes the directory of `bench/ldap_extract.py` (default 100,000 users, 5,000 groups, 1,000,000
member values), loads it offline into a `SlapdServer` with the syncprov overlay (which keeps
the suffix's contextCSN; `index entryCSN eq` with it), and on that server:

1. a full read through `extract_with_watermark` (no watermark yet), whose checkpoint is saved
   as after a successful run;
2. changes `--changed` of the users (a new title and mail each) and the same share of the
   groups (one member removed, one added each), over one connection;
3. `--repeat` incremental reads through `extract_with_watermark` (the stored snapshot fetched
   and decoded while the change searches run, contextCSN, the searches, the merge; none saves
   a checkpoint, so each reads the same changes): the first is the cold one a scheduled run
   makes in a fresh process; then its parts apart: the stored snapshot decoded, the change
   searches and their resolution (`search_changes`, `resolve_changes`), the merge; and
   `ldapsearch` on the same two change queries, the server's own time for them;
4. a full read again (`full=True`), timed, whose snapshot the incremental one must equal;
5. the mapping step (`desired_state`, every group on the fly) on each snapshot: the
   incremental one hands its memberships over as categoricals (codes), the full read as
   strings; the desired states must be equal, and the time shows nothing was pushed
   downstream.

It prints the seconds of each step and the ratios incremental / full. Figures are noisy
(2 cores shared with slapd): compare within one run.

    .venv/bin/python bench/ldap_incremental.py [--users 100000] [--groups 5000]
        [--members 1000000] [--changed 0.01] [--repeat 3] [--deref never|searching|finding|always]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import pandas as pd
from ldap3 import MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE, Connection, Server
from ldap_extract import (
    ATTRIBUTES,
    BASE_DN,
    GROUPS,
    PEOPLE,
    ldapsearch,
    source_config,
    write_ldif,
)
from usersync_sandbox.slapd import SlapdServer

from usersync.mapping import (
    DEFAULT_ATTRIBUTES_CSV,
    MappingTables,
    desired_state,
    parse_attributes,
    parse_groups,
)
from usersync.model import SourceSnapshot
from usersync.sources.ldap import LdapSource
from usersync.sources.ldap.context_csn import lowest_csn_at
from usersync.sources.ldap.values import and_filters
from usersync.sources.watermark import (
    MEMBERSHIP_CATEGORICAL,
    advance_watermark,
    extract_with_watermark,
    merge_changes,
)
from usersync.store import Store

PROFILE = "bench-incremental"
GROUPS_CSV = "source_group,target_group,mode,targets\n*,,on-the-fly,\n"
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


def rows(frame: pd.DataFrame, key: list[str] | None = None) -> pd.DataFrame:
    """`frame` sorted by `key` (default: every column), with a fresh index, to compare row
    sets; categorical columns (an incremental read's memberships) as their strings."""
    coded = [name for name in frame if isinstance(frame[name].dtype, pd.CategoricalDtype)]
    frame = frame.astype(dict.fromkeys(coded, "string"))
    return frame.sort_values(key or list(frame.columns)).reset_index(drop=True)


def same_snapshot(one: SourceSnapshot, other: SourceSnapshot) -> bool:
    return rows(one.users, ["source_id"]).equals(rows(other.users, ["source_id"])) and rows(
        one.memberships, ["source_id", "source_group"]
    ).equals(rows(other.memberships, ["source_id", "source_group"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=5_000)
    parser.add_argument("--members", type=int, default=1_000_000, help="member values in all")
    parser.add_argument("--changed", type=float, default=0.01, help="share of users and groups")
    parser.add_argument("--repeat", type=int, default=3, help="incremental reads timed")
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
            saving = time.monotonic() - began
            print(f"full read 1 (no watermark):     {first_full:6.2f} s; {first.notes[-1][:60]}")
            print(f"checkpoint saved (not a read):  {saving:6.2f} s")

            began = time.monotonic()
            users, groups = change_directory(server, args.users, args.groups, args.changed)
            print(f"changed {users} users and {groups} groups in {time.monotonic() - began:.1f} s")

            with LdapSource.from_config(config) as source:
                wholes = []
                for _ in range(args.repeat):
                    began = time.monotonic()
                    incremental = extract_with_watermark(source, PROFILE, ATTRIBUTES, store)
                    wholes.append(time.monotonic() - began)
                stored, saved = store.source_checkpoint(PROFILE)
                began = time.monotonic()
                parts = saved.parts(categorical=MEMBERSHIP_CATEGORICAL)
                decoding = time.monotonic() - began
                began = time.monotonic()
                source.position()
                found = source.search_changes(ATTRIBUTES, since=stored.usn)
                searches = time.monotonic() - began
                began = time.monotonic()
                changes = source.resolve_changes(
                    found, known_users=parts["users"], known_groups=parts["groups"]
                )
                resolving = time.monotonic() - began
                began = time.monotonic()
                merge_changes(parts["users"], parts["groups"], parts["memberships"], changes)
                merging = time.monotonic() - began
                since = f"(entryCSN>={lowest_csn_at(stored.usn)})"
                theirs = [
                    ldapsearch(server, base, and_filters(search_filter, since), attrs, args.deref)
                    for base, search_filter, attrs in (
                        (PEOPLE, config.user_filter, [config.id_attribute, *ATTRIBUTES]),
                        (
                            GROUPS,
                            config.group_filter,
                            [
                                config.id_attribute,
                                config.group_name_attribute,
                                *config.member_attributes,
                            ],
                        ),
                    )
                ]
                began = time.monotonic()
                full = extract_with_watermark(source, PROFILE, ATTRIBUTES, store, full=True)
                second_full = time.monotonic() - began
            store.close()
            tables = MappingTables(
                parse_attributes(DEFAULT_ATTRIBUTES_CSV),
                parse_groups(GROUPS_CSV, target_names=["jira"]),
            )
            mapped = {}
            for name, snapshot in (("incremental", incremental), ("full", full)):
                began = time.monotonic()
                mapped[name] = desired_state(snapshot, tables, "jira")
                mapped[name + " seconds"] = time.monotonic() - began

            cold, median = wholes[0], sorted(wholes)[len(wholes) // 2]
            print(
                f"incremental, whole:             {cold:6.2f} s cold, then "
                + ", ".join(f"{w:.2f}" for w in wholes[1:])
                + f" s (median {median:.2f} s); {incremental.notes[0][:40]}"
            )
            print(f"  stored snapshot decoded apart: {decoding:5.2f} s (runs during the searches)")
            print(
                f"  position + search_changes:     {searches:5.2f} s "
                f"({len(found.users)} users, {len(found.groups)} groups read); "
                f"ldapsearch on the same queries {sum(theirs):.2f} s"
            )
            print(f"  resolve_changes apart:         {resolving:5.2f} s")
            print(f"  merge_changes apart:           {merging:5.2f} s")
            print(f"full read 2 (requested):        {second_full:6.2f} s")
            print(
                f"incremental / full read 2: whole {cold / second_full:.1%} cold, "
                f"{median / second_full:.1%} median; searches alone "
                f"{searches / second_full:.1%} (target <= 10%)"
            )
            print(
                "incremental snapshot equals the full read: "
                + ("yes" if same_snapshot(incremental, full) else "NO (MISMATCH)")
            )
            one, other = mapped["incremental"], mapped["full"]
            alike = all(
                rows(getattr(one, part)).equals(rows(getattr(other, part)))
                for part in ("users", "groups", "memberships")
            )
            print(
                f"desired_state on the incremental snapshot {mapped['incremental seconds']:.2f} s, "
                f"on the full read's {mapped['full seconds']:.2f} s; "
                + ("equal" if alike else "NOT EQUAL (MISMATCH)")
            )


if __name__ == "__main__":
    main()
