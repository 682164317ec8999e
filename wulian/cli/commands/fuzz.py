"""``wulian fuzz --packets N [--json]``: mutated and hostile packets of every topic kind through the real
decode + commit path into a throwaway database on the local stack; prints packets tried per codec and
rejections by reason, and fails on any crash or unaccounted packet. See ``ingest.chaos.fuzz``."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
import uuid


async def fuzz(args: argparse.Namespace) -> dict:
    import asyncpg

    from wulian.ingest.batch_writer import init_connection
    from wulian.ingest.chaos.fuzz import FuzzFailure, FuzzRunner, fuzz_batch
    from wulian.ingest.migrations import migrate
    from wulian.settings import get_settings

    dsn = args.dsn or get_settings().db.dsn
    admin_dsn = dsn.rsplit("/", 1)[0] + "/postgres"
    db = f"wulian_fuzz_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{db}"')
    rng = random.Random(args.seed)
    failure = None
    t0 = time.monotonic()
    try:
        async with asyncpg.create_pool(dsn.rsplit("/", 1)[0] + f"/{db}", min_size=1, max_size=2,
                                       init=init_connection) as pool:
            async with pool.acquire() as con:
                await migrate(con)
            runner = FuzzRunner(pool)
            done = 0
            last = time.monotonic()
            while done < args.packets:
                n = min(args.batch, args.packets - done)
                try:
                    await runner.run_batch(fuzz_batch(rng, n))
                except FuzzFailure as exc:
                    failure = str(exc)
                    break
                done += n
                if time.monotonic() - last > 5:
                    last = time.monotonic()
                    print(f"[fuzz] {done}/{args.packets} packets", file=sys.stderr, flush=True)
            report = runner.report.as_dict()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()
    return {**report, "seed": args.seed, "seconds": round(time.monotonic() - t0, 1),
            "failure": failure, "ok": failure is None and report["codec_crashes"] == 0}


def run(args: argparse.Namespace) -> int:
    logging.getLogger("wulian.ingest.pipeline").setLevel(logging.WARNING)  # one INFO line per dead letter
    result = asyncio.run(fuzz(args))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['packets']} packets in {result['batches']} batches, {result['seconds']} s")
        for codec, n in sorted(result["tried"].items()):
            print(f"  {codec:>15}: {n:>7} tried, {result['stored'].get(codec, 0):>7} stored")
        for reason, n in result["rejected_by_reason"].items():
            print(f"  rejected {reason:>22}: {n}")
        if result["failure"] or result["codec_crashes"]:
            print(f"FAILED: {result['failure'] or result['crash_examples']}")
    return 0 if result["ok"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fuzz", help="fuzz every topic kind through decode + commit (throwaway database)")
    p.add_argument("--packets", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=200, help="packets per ingest batch")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dsn", default="", help="server to create the throwaway database on (default: settings)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
