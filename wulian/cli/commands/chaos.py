"""``wulian chaos [--json] [--quick]``: inject faults while sources publish; count what was lost.

A throwaway PostgreSQL+TimescaleDB and Mosquitto (deploy/local/stack.sh in a private dir on free ports)
and ingest as a process; never the developer's stack. See ``ingest.chaos``."""
from __future__ import annotations

import argparse
import asyncio
import json


def run(args: argparse.Namespace) -> int:
    from wulian.ingest.chaos.faults import standard_faults
    from wulian.ingest.chaos.run import ChaosConfig, run_chaos

    base = ChaosConfig.quick() if args.quick else ChaosConfig()
    if args.rate:
        base.rate_msgs = args.rate
    if args.devices:
        base.devices = args.devices
    if args.field_devices is not None:
        base.field_devices = args.field_devices
    base.faults = standard_faults(args.quick, args.db_down)
    if args.only:
        wanted = set(args.only.split(","))
        base.faults = [f for f in base.faults if f.name in wanted]
    result = asyncio.run(run_chaos(base, keep_dir=args.keep))
    if args.json:
        print(json.dumps(result))
    else:
        for f in result["faults"]:
            print(f"{f['fault']:>16}: published {f['published']:>7} stored {f['stored']:>7} lost {f['lost']:>4}"
                  f" duplicates {f['duplicates']:>4} alerts {'ok' if f['alerts_consistent'] else 'INCONSISTENT'}")
            for proto, g in f["field"].items():
                print(f"{'via ' + proto:>16}: answered  {g['published']:>7} stored {g['stored']:>7} lost {g['lost']:>4}"
                      f" duplicates {g['duplicates']:>4}")
    return 0 if result["ok"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chaos", help="fault-injection run: kill ingest, restart broker, stop the database, restart gateways")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="short phases, database down 5 s")
    p.add_argument("--rate", type=float, default=0, help="messages/s per fault phase")
    p.add_argument("--devices", type=int, default=0, help="devices per fault phase")
    p.add_argument("--field-devices", type=int, default=None,
                   help="HJ 212 stations and JT/T 808 terminals through the gateways per fault (0: no gateways)")
    p.add_argument("--db-down", type=float, default=None, help="seconds PostgreSQL stays down")
    p.add_argument("--only", default="", help="comma-separated fault names")
    p.add_argument("--keep", action="store_true", help="keep the stack dir (logs) afterwards")
    p.set_defaults(func=run)
