"""``wulian soak --minutes N [--rate R] [--json]``: steady load at half the measured maximum throughput on
a throwaway stack; RSS growth of ingest, p99 alert and commit latency at the start and the end, lost and
duplicated counts. Progress every 30 s on stderr. See ``ingest.chaos.soak``."""
from __future__ import annotations

import argparse
import asyncio
import json


def run(args: argparse.Namespace) -> int:
    from wulian.ingest.chaos.soak import SoakConfig, run_soak

    cfg = SoakConfig(minutes=args.minutes, rate_msgs=args.rate, devices=args.devices)
    if args.window:
        cfg.window_s = args.window
    result = asyncio.run(run_soak(cfg))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>28}: {v}")
    return 0 if result["ok"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("soak", help="long run at half the maximum throughput: RSS growth, latency drift, loss")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=0.0, help="messages/s (default: half the measured maximum)")
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--window", type=float, default=0.0, help="seconds of the start/end latency windows (120)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
