"""``wulian derive [--once] [--job NAME ...]``: derived-data jobs (hourly values, AQI, classes, forecasts...)."""
from __future__ import annotations

import argparse
import asyncio
import json

from wulian.settings import get_settings


def run(args: argparse.Namespace) -> int:
    from wulian.ingest.derive_service import run_derive

    from wulian.cli.stop_signal import stop_event_on_signals

    async def main() -> dict:
        return await run_derive(get_settings(), set(args.job) if args.job else None, once=args.once,
                                stop=None if args.once else stop_event_on_signals())

    try:
        out = asyncio.run(main())
    except KeyboardInterrupt:  # a second signal, or Ctrl-C during --once
        return 0
    if args.once:
        print(json.dumps(out, default=str))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("derive", help="run the derived-data jobs (on a schedule, or --once)")
    p.add_argument("--once", action="store_true", help="run each job once and print its figures")
    p.add_argument("--job", action="append", help="only this job (repeatable)")
    p.set_defaults(func=run)
