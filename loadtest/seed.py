"""Create load-test users and conversations in a node's store, and write the groups file the scenarios read.

    python -m loadtest.seed --data-dir D -n 10000 --group-size 10 --user 'r1u{i}' --out D/r1.json
    python -m loadtest.seed --data-dir D -n 1000 --group-size 1000 --user 'f{i}' --extra-member lt-pub --out D/f.json

Users `--user` with i in 0..n-1 are made active; conversation g has users g*G .. g*G+G-1 (plus every
`--extra-member`, made active too, e.g. the fanout publisher). Run it before the node starts (one SQLite
writer at a time). The groups file: {"group_size": G, "users": [...], "conversations": [ids]}.

This is the only part of the load generator that imports whispr (it writes the node's store directly,
as an operator's provisioning would); the scenarios themselves speak only the wire protocol.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import trio


async def seed(url: str, users: list[str], group_size: int, extra: list[str]) -> list[str]:
    from whispr.adapters import open_store
    from whispr.adapters.aio import open_bridge

    convs: list[str] = []
    async with open_bridge(), open_store(url) as store:
        for uid in [*users, *extra]:
            await store.upsert_user(uid, True)
        for g in range(0, len(users), group_size):
            convs.append(await store.create_conversation([*users[g : g + group_size], *extra]))
    return convs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.seed", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, help="the node's data dir (store = DATA_DIR/whispr.db)")
    p.add_argument("--store", help="store URL instead (sqlite:///PATH)")
    p.add_argument("-n", "--users", type=int, required=True)
    p.add_argument("--group-size", type=int, default=10)
    p.add_argument("--user", default="lt-u{i}", help="user id template ({i} = index), as the scenario's --user")
    p.add_argument("--extra-member", action="append", default=[], help="also a member of every conversation")
    p.add_argument("--out", required=True, help="the groups file to write")
    ns = p.parse_args(argv)
    if ns.store is None and ns.data_dir is None:
        p.error("--data-dir or --store is required")
    if ns.data_dir is not None:
        ns.data_dir.mkdir(parents=True, exist_ok=True)
    url = ns.store or f"sqlite:///{ns.data_dir / 'whispr.db'}"
    if ns.group_size < 1 or ns.users % ns.group_size:
        p.error("-n must be a multiple of --group-size")
    users = [ns.user.replace("{i}", str(i)) for i in range(ns.users)]
    t0 = time.monotonic()
    convs = trio.run(seed, url, users, ns.group_size, ns.extra_member)
    Path(ns.out).write_text(json.dumps({"group_size": ns.group_size, "users": users, "conversations": convs}))
    sys.stderr.write(f"seeded {len(users)} users, {len(convs)} conversations in {time.monotonic() - t0:.1f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
