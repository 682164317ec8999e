"""``wulian ingest``: MQTT -> TimescaleDB, ack after commit."""
from __future__ import annotations

import argparse
import asyncio

from wulian.settings import get_settings


def run(args: argparse.Namespace) -> int:
    from wulian.cli.stop_signal import stop_event_on_signals
    from wulian.ingest.service import run_ingest

    async def main() -> None:
        await run_ingest(get_settings(), stop_event_on_signals())

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # a second signal
        pass
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="run the ingest service (MQTT -> TimescaleDB)")
    p.set_defaults(func=run)
